"""Response compression: throughput per coding against nginx `gzip on`, compressed hits
against identity hits, and what compression costs a client that does not accept it.

    .venv/bin/python tests/perf/bench_compression.py [--duration 5] [--repeat 3]
        [--requests 2000] [--skip-instructions]

1. Coding throughput: a 100 KB JSON body through an uncached route, so every request is
   coded, at the configured levels (gzip 6, br 5, zstd 3); MB/s of input (rps x body size)
   and the ratio (coded / original), beside nginx (1 worker, `gzip on; gzip_comp_level 6`)
   proxying the same upstream, in the same run, interleaved.
2. Hit path: a 4 KB JSON body cached, hit as identity and as each coding (the coded variant
   made once, then served from the entry); target: every coded hit >= 0.95x the identity
   hit's rps, same run.
3. The route with compression on, a client with no Accept-Encoding: instructions per
   request (callgrind, perfkit.instructions_per_request) against the same config without
   the compression block, for a cached hit and for an uncached pass-through; target
   within 2%.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import brotli
import orjson
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.harness import free_port
from tests.perf.perfkit import (
    Lab,
    drive_keepalive,
    gateway_config,
    instructions_per_request,
    interleaved,
    medians,
    say,
    table,
    tools,
    wrk,
)

LEVELS = {"gzip": 6, "br": 5, "zstd": 3}


def json_body(size: int, seed: int = 7) -> bytes:
    """A realistic API answer: records of ids, names, prices, flags and timestamps."""
    rng = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    rows: list[dict[str, Any]] = []
    while len(orjson.dumps(rows)) < size:
        rows.append({"id": rng.randrange(10**9), "name": " ".join(rng.choices(words, k=3)),
                     "price": round(rng.random() * 1000, 2), "active": rng.random() < 0.5,
                     "updated": f"2026-11-{rng.randrange(1, 29):02d}T12:{rng.randrange(60):02d}Z",
                     "tags": rng.sample(words, 2)})
    return orjson.dumps(rows)


def decode(coding: str, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    return zstandard.ZstdDecompressor().decompressobj().decompress(body)


def fetch(url: str, accept: str | None) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept-Encoding": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as r:
        return dict(r.headers), r.read()


def site_upstream(lab: Lab, site: Path) -> str:
    port = free_port()
    block = f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ root {site}; types {{ application/json json; }} }}
    }}
"""
    return lab._nginx("site", block, port, lab.layout.load).url


def nginx_gzip(lab: Lab, upstream_url: str) -> str:
    port = free_port()
    target = upstream_url.removeprefix("http://").rstrip("/")
    block = f"""    upstream backend {{ server {target}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        gzip on; gzip_comp_level 6; gzip_types application/json; gzip_min_length 1024;
        gzip_proxied any; gzip_vary on;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""
    return lab._nginx("nginx-gzip", block, port, lab.layout.server).url


def compressing(config: dict[str, Any]) -> dict[str, Any]:
    config["compression"] = {"encodings": ["zstd", "br", "gzip"], "min_size": "1KiB",
                             "level": dict(LEVELS)}
    return config


def throughput(lab: Lab, upstream: str, doc: bytes, duration: float, repeat: int) -> None:
    gw = lab.gateway(compressing(gateway_config(upstream)))
    ngx = nginx_gzip(lab, upstream)
    ratio: dict[str, float] = {}
    for coding in LEVELS:
        headers, body = fetch(f"{gw.url}/doc.json", coding)
        assert headers.get("Content-Encoding") == coding and decode(coding, body) == doc
        ratio[f"gw {coding}"] = len(body) / len(doc)
    headers, body = fetch(f"{ngx}/doc.json", "gzip")
    assert headers.get("Content-Encoding") == "gzip" and gzip.decompress(body) == doc
    ratio["nginx gzip"] = len(body) / len(doc)
    runs = {f"gw {c}": (lambda c=c: wrk(f"{gw.url}/doc.json", duration=duration,
                                         connections=8, headers={"Accept-Encoding": c}))
            for c in LEVELS}
    runs["gw identity"] = lambda: wrk(f"{gw.url}/doc.json", duration=duration, connections=8,
                                      headers={"Accept-Encoding": "identity"})
    runs["nginx gzip"] = lambda: wrk(f"{ngx}/doc.json", duration=duration, connections=8,
                                     headers={"Accept-Encoding": "gzip"})
    results = interleaved(runs, repeat)
    rows = medians(results)
    print(table(rows, ratios=[("gw gzip", "nginx gzip")], runs=results,
                title=f"1. coding a {len(doc) / 1000:.0f} KB JSON body per request "
                      f"(levels {LEVELS}; nginx gzip_comp_level 6)"))
    print(f"{'':<12} {'MB/s in':>10} {'ratio':>8}")
    for name, r in rows.items():
        print(f"{name:<12} {r.rps * len(doc) / 1e6:>10.1f} {ratio.get(name, 1.0):>8.3f}")
    print()


def hits(lab: Lab, upstream: str, small: bytes, duration: float, repeat: int) -> None:
    config = compressing(gateway_config(upstream))
    config["cache"] = {"memory_max": "64MiB"}
    config["routes"] = [{"name": "hit", "match": {"path_prefix": "/"}, "upstream": "api",
                         "cache": {"ttl": "1h"}}]
    gw = lab.gateway(config)
    for coding in (*LEVELS, "identity"):
        for _ in range(3):
            headers, body = fetch(f"{gw.url}/small.json", coding)
        assert headers.get("X-Cache") == "HIT", headers
        assert (body if coding == "identity" else decode(coding, body)) == small
    runs = {c: (lambda c=c: wrk(f"{gw.url}/small.json", duration=duration, connections=32,
                                headers={"Accept-Encoding": c}))
            for c in ("identity", *LEVELS)}
    results = interleaved(runs, repeat)
    rows = medians(results)
    print(table(rows, ratios=[(c, "identity") for c in LEVELS], runs=results,
                title=f"2. cache hits of a {len(small) / 1000:.0f} KB JSON body, identity "
                      "and each stored coding (target: each >= 0.95x identity)"))
    print()


def instructions(upstream: str, requests: int) -> None:
    """Callgrind: the same route with and without the compression block, no Accept-Encoding."""
    def request(accept: str | None) -> bytes:
        field = f"Accept-Encoding: {accept}\r\n" if accept else ""
        return f"GET /small.json HTTP/1.1\r\nHost: 127.0.0.1\r\n{field}\r\n".encode()

    figures: dict[str, float] = {}
    for cached in (True, False):
        for on in (False, True):
            config = gateway_config(upstream)
            config["listen"]["port"] = port = free_port()
            if on:
                compressing(config)
            config["cache"] = {"memory_max": "16MiB"}
            route: dict[str, Any] = {"name": "r", "match": {"path_prefix": "/"},
                                     "upstream": "api"}
            if cached:
                route["cache"] = {"ttl": "1h"}
            config["routes"] = [route]

            def drive(label: str, count: int, first: int, port: int = port) -> None:
                sent = request(None if label == "none" else label)
                drive_keepalive(port, lambda _n: sent, count, first)

            name = f"{'hit' if cached else 'pass'} {'on' if on else 'off'}"
            # With compression on, a cached route's hits are also counted per coding.
            labels = ("none", "identity", *LEVELS) if cached and on else ("none",)
            counted = instructions_per_request(config, drive, labels, requests)
            figures[name] = counted["none"]
            for label in labels[1:]:
                figures[f"hit {label}"] = counted[label]
            say(f"{name}: {counted}")
    print("3. instructions per request, no Accept-Encoding (callgrind; target: on within 2%"
          " of off)")
    for kind in ("hit", "pass"):
        off, on = figures[f"{kind} off"], figures[f"{kind} on"]
        print(f"   {kind:<5} off {off:>12,.0f}   on {on:>12,.0f}   on/off {on / off:.4f}")
    print("   hits of each stored coding against the identity hit (Accept-Encoding: identity)")
    identity = figures["hit identity"]
    for coding in LEVELS:
        print(f"   {coding:<5} {figures[f'hit {coding}']:>12,.0f}   identity {identity:>12,.0f}"
              f"   ratio {figures[f'hit {coding}'] / identity:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--skip-instructions", action="store_true")
    parser.add_argument("--only", choices=("throughput", "hits", "instructions"))
    args = parser.parse_args()
    if tools().nginx is None:
        print("nginx is needed (the upstream and the gzip reference)")
        return 1
    doc, small = json_body(100_000), json_body(4_000)
    with tempfile.TemporaryDirectory(prefix="gw-compress-") as tmp, Lab() as lab:
        site = Path(tmp) / "site"
        site.mkdir()
        site.chmod(0o755)
        (site / "doc.json").write_bytes(doc)
        (site / "small.json").write_bytes(small)
        upstream = site_upstream(lab, site)
        if args.only in (None, "throughput"):
            throughput(lab, upstream, doc, args.duration, args.repeat)
        if args.only in (None, "hits"):
            hits(lab, upstream, small, args.duration, args.repeat)
        if args.only in (None, "instructions") and not args.skip_instructions:
            instructions(upstream, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
