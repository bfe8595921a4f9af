"""Instructions per fresh L1 cache hit, this working tree against a git revision (callgrind).

    .venv/bin/python tests/perf/count_cache_hit.py [--baseline REV] [--candidate REV]
        [--requests 2000] [--range] [--varied] [--vary] [--head]

wrk's figures on the shared 2-core machine moved by +-30% between rounds (bench_cache.py's
rps ranges), more than a change to the hit path can; an instruction count does not move
with the neighbours. Each gateway (`python -m gateway run` from a copy of its `gateway`
package, as perfkit's `snapshot` / `checkout`) runs under perfkit's callgrind counter; a
plain GET fills the entry, 400 hits warm it, then the hits counted are driven one at a
time over 4 keep-alive connections, twice; the lower count of the two is printed. It
leaves out the kernel and cache misses: a guide to the hit path's own work, not a
throughput. `--range` also counts this tree's hits that ask for `Range: bytes=0-99` (206).
The hits repeat the same bytes, which the lane of repeated requests answers
(gateway/hitlane.py) where the revision has one; `--varied` also counts hits whose bytes
differ every time (an `X-Seq: n` field), which go through the whole pipeline. `--vary`:
the upstream answers with `Vary: Accept-Encoding` (as most servers do for text), and the
hits send an Accept-Encoding the route does not compress for. `--head`: the hits are HEADs.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.harness import free_port
from tests.perf.perfkit import (
    PYTHON,
    checkout,
    drive_keepalive,
    gateway_config,
    instructions_per_request,
    snapshot,
)

BODY = b"x" * 512
# http.server, every answer with a Vary (argv: port, directory).
VARY_SERVER = """
import functools, http.server, sys
class Varying(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Vary", "Accept-Encoding")
        super().end_headers()
handler = functools.partial(Varying, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
"""


def _count(source: Path, upstream_url: str, requests: int, extra: bytes,
           varied: bool = False, accept: bytes = b"", method: bytes = b"GET") -> float:
    config = gateway_config(upstream_url)
    config["listen"]["port"] = port = free_port()
    config["cache"] = {"memory_max": "16MiB"}
    config["routes"] = [{"name": "hit", "match": {"path_prefix": "/"}, "upstream": "api",
                         "cache": {"ttl": "1h"}}]
    plain = b"GET /hit HTTP/1.1\r\nHost: 127.0.0.1\r\n" + accept + b"\r\n"
    hit = method + b" /hit HTTP/1.1\r\nHost: 127.0.0.1\r\n" + accept + extra + b"\r\n"

    def drive(_label: str, count: int, first: int) -> None:
        if first == 0:  # the fill: a plain GET (a Range miss stores nothing)
            drive_keepalive(port, lambda _n: plain, 4, 0)
        ask = (lambda n: hit[:-2] + b"X-Seq: %d\r\n\r\n" % n) if varied else (lambda _n: hit)
        drive_keepalive(port, ask, count, first, statuses=(b"200", b"206"))

    return instructions_per_request(config, drive, ("hit",), requests, source=source)["hit"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--candidate", default=None,
                        help="a git revision instead of this working tree (both sides then "
                             "start from `git archive`: the A/A run of snapshot vs checkout "
                             "of the same code read +0.65%%)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--range", action="store_true", help="also count 206 hits")
    parser.add_argument("--varied", action="store_true",
                        help="also count hits whose bytes differ every request")
    parser.add_argument("--head", action="store_true", help="the hits are HEADs")
    parser.add_argument("--vary", action="store_true",
                        help="an upstream that answers with Vary: Accept-Encoding")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return 1
    with tempfile.TemporaryDirectory(prefix="gw-count-") as tmp:
        work = Path(tmp)
        site = work / "site"
        site.mkdir()
        (site / "hit").write_bytes(BODY)
        up_port = free_port()
        command = ([PYTHON, "-c", VARY_SERVER, str(up_port), str(site)] if args.vary else
                   [PYTHON, "-m", "http.server", str(up_port), "--bind", "127.0.0.1",
                    "--directory", str(site)])
        upstream = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        accept = b"Accept-Encoding: gzip\r\n" if args.vary else b""
        try:
            time.sleep(1)
            url = f"http://127.0.0.1:{up_port}"
            sources = {"candidate": (checkout(args.candidate, work) if args.candidate
                                     else snapshot(work)),
                       args.baseline: checkout(args.baseline, work)}
            method = b"HEAD" if args.head else b"GET"
            found = {name: _count(source, url, args.requests, b"", accept=accept, method=method)
                     for name, source in sources.items()}
            base = found[args.baseline]
            print(f"hit: instructions per request (callgrind, best of 2 x {args.requests}): "
                  f"candidate {found['candidate']:,.0f}, {args.baseline} {base:,.0f} "
                  f"({found['candidate'] / base - 1:+.2%})")
            if args.varied:
                varied = {name: _count(source, url, args.requests, b"", varied=True,
                                       accept=accept, method=method)
                          for name, source in sources.items()}
                print(f"hit with bytes never repeated: candidate {varied['candidate']:,.0f}, "
                      f"{args.baseline} {varied[args.baseline]:,.0f} "
                      f"({varied['candidate'] / varied[args.baseline] - 1:+.2%})")
            if args.range:  # the baseline may forward Range upstream: the candidate alone
                ranged = _count(sources["candidate"], url, args.requests,
                                b"Range: bytes=0-99\r\n", accept=accept)
                print(f"range hit (206): candidate {ranged:,.0f} instructions per request")
        finally:
            upstream.terminate()
            upstream.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
