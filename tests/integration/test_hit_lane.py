"""The lane of repeated requests (gateway/hitlane.py) through the real gateway, over raw
sockets: a repeat is answered as the pipeline answers it, and nothing is repeated that a
stage, the cache, the configuration or the connection would answer differently.

Which path answered is told by counting the lane's answers (a wrapper around the lane the
listener's connections call), never by the answer itself: that must be the same.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway import hitlane
from gateway.accesslog import AccessLog
from tests.harness import InProcessGateway, Upstream, base_config, client_session
from tests.integration.test_experiments import experiment_config

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
GET = b"GET /lane/a HTTP/1.1\r\nHost: gw.test\r\nAccept: */*\r\n\r\n"


def lane_config(upstream_url: str, **route: Any) -> dict[str, Any]:
    config = base_config(upstream_url)
    config["cache"] = {"memory_max": "4MiB", "max_object_size": "64KiB"}
    config["routes"] = [{"name": "lane", "match": {"path_prefix": "/lane/"},
                         "upstream": "api", "cache": {"ttl": "30s"}, **route}]
    return config


def counting(cache_control: str = "max-age=60", **headers: str) -> Callable[..., Any]:
    """Answers "payload-N" for the N-th request."""
    state = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        state["n"] += 1
        return web.Response(body=b"payload-%d" % state["n"],
                            headers={"Cache-Control": cache_control, **headers})

    return handler


class Counted:
    """The listener's lane, with its answers counted."""

    def __init__(self, gateway: InProcessGateway) -> None:
        guard = gateway.process.guard
        self.lane = guard.lane
        assert self.lane is not None
        self.max_bytes = self.lane.max_bytes
        self.seen = self.lane.seen
        self.answered = 0
        guard.lane = self

    def answer(self, data: bytes, peer: str, scheme: str, write: Callable[[bytes], None]
               ) -> bool:
        assert self.lane is not None
        done = self.lane.answer(data, peer, scheme, write)
        self.answered += done
        return done


async def started(factory: Callable[..., Any], upstream: Upstream,
                  config: dict[str, Any] | None = None) -> tuple[InProcessGateway, Counted]:
    """A gateway on `config` (lane_config's by default) with its lane's answers counted;
    the upstream answers /lane/a with `counting()` unless the test set it already."""
    if "/lane/a" not in upstream.handlers:
        upstream.on("/lane/a", counting())
    gw = await factory(config or lane_config(upstream.url))
    return gw, Counted(gw)


async def slow(request: web.Request) -> web.StreamResponse:
    """An upstream answer that keeps its request in progress for a while."""
    await asyncio.sleep(0.5)
    return web.Response(body=b"slow", headers={"Cache-Control": "no-store"})


async def connect(gateway: InProcessGateway) -> Conn:
    return await asyncio.open_connection("127.0.0.1", gateway.config.listen.port)


async def response(reader: asyncio.StreamReader, head_only: bool = False) -> bytes:
    """One whole final response as it came (head and Content-Length body), after any
    interim ones."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    while head.startswith(b"HTTP/1.1 1"):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    length = int(found[1]) if found and not head_only else 0
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def ask(conn: Conn, data: bytes = GET) -> bytes:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    return await response(reader, head_only=data.startswith(b"HEAD "))


async def warmed(conn: Conn, data: bytes = GET) -> bytes:
    """Stored (a miss), then answered by the pipeline twice (its bytes noted, then
    remembered): the next of the same bytes is the lane's. The last hit is returned."""
    first = await ask(conn, data)
    assert field(first, "X-Cache") == "MISS"
    await ask(conn, data)
    return await ask(conn, data)


def normalised(answer: bytes) -> bytes:
    """The answer without what differs between any two hits: the request id and Age."""
    answer = re.sub(rb"\r\nX-Request-Id: [0-9a-f]{32}", b"\r\nX-Request-Id: *", answer)
    answer = re.sub(rb"\r\nAge: \d+", b"\r\nAge: *", answer)
    return re.sub(rb"; ttl=\d+", b"; ttl=*", answer)


def undated(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: *", answer)


def field(answer: bytes, name: str) -> str | None:
    found = re.search(rb"\r\n" + name.encode() + rb": ([^\r]*)", answer, re.IGNORECASE)
    return found[1].decode() if found else None


async def metric_lines(gateway: InProcessGateway, route: str) -> list[str]:
    async with client_session() as s, s.get(f"{gateway.admin_url}/metrics") as r:
        text = await r.text()
    return sorted(line for line in text.splitlines()
                  if f'route="{route}"' in line and not line.startswith("#")
                  and ("_total" in line or "_count" in line))


def cache_hits(lines: list[str]) -> float:
    """The cache's hits counted in metric lines (metric_lines')."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("gateway_cache_lookups_total") and 'result="hit"' in line)


def logged_to(gateway: InProcessGateway, path: Path) -> Path:
    """The gateway's access log, to a file of the test's."""
    gateway.process.pipeline.access_log = AccessLog(os.open(path, os.O_WRONLY | os.O_CREAT))
    return path


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# ---------------------------------------------------------------- the same answer

async def test_a_repeat_is_answered_by_the_lane_as_the_pipeline_answers_it(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path) -> None:
    gw, counted = await started(gateway_factory, upstream)
    log = logged_to(gw, tmp_path / "access.log")
    conn = await connect(gw)
    by_pipeline = await warmed(conn)
    assert counted.answered == 0
    before = await metric_lines(gw, "lane")
    by_lane = await ask(conn)
    assert counted.answered == 1
    after = await metric_lines(gw, "lane")

    assert field(by_lane, "X-Cache") == "HIT"
    assert normalised(by_lane) == normalised(by_pipeline)
    assert field(by_lane, "X-Request-Id") != field(by_pipeline, "X-Request-Id")
    assert upstream.count("/lane/a") == 1
    # Counted as a hit and as a request, as the pipeline counts one.
    changed = [line for line in after if line not in before]
    assert any(line.startswith("gateway_cache_lookups_total") and 'result="hit"' in line
               for line in changed), changed
    assert any(line.startswith("gateway_requests_total") and 'status="200"' in line
               for line in changed), changed
    assert any(line.startswith("gateway_request_duration_seconds_count") for line in changed)

    await asyncio.sleep(0.05)  # the log is written once per loop turn
    lines = log_lines(log)
    assert len(lines) == 4
    pipeline_line, lane_line = lines[2], lines[3]
    assert lane_line["request_id"] == field(by_lane, "X-Request-Id")
    for line in (pipeline_line, lane_line):
        del line["request_id"], line["duration"], line["time"]
    assert lane_line == pipeline_line
    conn[1].close()


async def test_a_request_id_the_client_sends_is_kept_by_the_lane(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw, counted = await started(gateway_factory, upstream)
    sent = GET.replace(b"\r\n\r\n", b"\r\nX-Request-Id: trace-17\r\n\r\n")
    conn = await connect(gw)
    answers = [await ask(conn, sent) for _ in range(5)]
    assert counted.answered == 2
    assert [field(a, "X-Request-Id") for a in answers] == ["trace-17"] * 5
    conn[1].close()


async def test_the_lane_serves_every_connection_that_sends_the_same_bytes(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw, counted = await started(gateway_factory, upstream)
    conn = await connect(gw)
    by_pipeline = await warmed(conn)
    conn[1].close()
    others = [await connect(gw) for _ in range(3)]
    answers = [await ask(c) for c in others]
    assert counted.answered == 3
    assert {normalised(a) for a in answers} == {normalised(by_pipeline)}
    for c in others:
        c[1].close()


# ---------------------------------------------------------------- what is never repeated

async def test_a_purge_or_an_expiry_sends_a_repeat_down_the_usual_path(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    config = lane_config(upstream.url)
    # Two seconds, not one: the upstream's Date has whole seconds, so an entry of one
    # second can go stale at the next tick of the clock, between two asks below.
    config["routes"][0]["cache"] = {"ttl": "2s"}
    upstream.on("/lane/a", counting("max-age=2"))
    gw, counted = await started(gateway_factory, upstream, config)
    conn = await connect(gw)
    await warmed(conn)
    await ask(conn)
    assert counted.answered == 1

    async with client_session() as s, s.post(f"{gw.admin_url}/admin/cache/purge",
                                             json={"all": True}) as r:
        assert r.status == 200, await r.text()
    purged = await ask(conn)
    assert field(purged, "X-Cache") == "MISS" and purged.endswith(b"payload-2")
    assert counted.answered == 1
    # What the lane remembered is the request, not the entry: the new one is repeated.
    assert field(await ask(conn), "X-Cache") == "HIT"
    assert counted.answered == 2

    await asyncio.sleep(2.3)  # the entry is stale now: the usual path goes upstream
    stale = await ask(conn)
    assert field(stale, "X-Cache") != "HIT" and stale.endswith(b"payload-3")
    assert counted.answered == 2
    assert (await ask(conn)).endswith(b"payload-3")
    assert counted.answered == 3
    assert upstream.count("/lane/a") == 3
    conn[1].close()


async def test_a_reload_forgets_everything_the_lane_remembered(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    gw, counted = await started(gateway_factory, upstream)
    conn = await connect(gw)
    await warmed(conn)
    await ask(conn)
    assert counted.answered == 1
    async with client_session() as s, s.post(f"{gw.admin_url}/admin/reload") as r:
        assert r.status == 200, await r.text()
    assert not gw.process.pipeline.lane.seen  # nothing keeps the old runtime alive
    # Under the new runtime the bytes are new: answered twice by the pipeline first.
    for expected in (1, 1, 2):
        assert field(await ask(conn), "X-Cache") == "HIT"
        assert counted.answered == expected
    assert upstream.count("/lane/a") == 1
    conn[1].close()


async def test_a_new_entry_the_lane_cannot_write_is_counted_once(
        gateway_factory: Callable[..., Any]) -> None:
    # An upstream that sends no Date: a stored head aiohttp must complete per answer,
    # which the lane does not write. After a purge the remembered request meets such an
    # entry: the pipeline answers it, and the hit is counted once, not by both.
    dated = [True]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            date = f"Date: {formatdate(usegmt=True)}\r\n".encode() if dated[0] else b""
            writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n" + date +
                         b"Content-Length: 7\r\n\r\npayload")

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await gateway_factory(lane_config(f"http://127.0.0.1:{port}"))
        counted = Counted(gw)
        conn = await connect(gw)
        await warmed(conn)
        await ask(conn)
        assert counted.answered == 1
        dated[0] = False
        async with client_session() as s, s.post(f"{gw.admin_url}/admin/cache/purge",
                                                 json={"all": True}) as r:
            assert r.status == 200
        assert field(await ask(conn), "X-Cache") == "MISS"
        before = await metric_lines(gw, "lane")
        for _ in range(3):
            assert field(await ask(conn), "X-Cache") == "HIT"
        after = await metric_lines(gw, "lane")
        assert counted.answered == 1
        assert cache_hits(after) - cache_hits(before) == 3
        conn[1].close()
    finally:
        server.close()


# ---------------------------------------------------------------- a compressing route

DOCUMENT = b"".join(b'{"item": %d, "name": "a repeated document"}\n' % i for i in range(80))


async def document(request: web.Request) -> web.StreamResponse:
    return web.Response(body=DOCUMENT, headers={"Cache-Control": "max-age=60",
                                                "Content-Type": "application/json"})


def compressing(upstream_url: str) -> dict[str, Any]:
    config = lane_config(upstream_url)
    config["compression"] = {"encodings": ["br", "gzip"], "min_size": "256B"}
    return config


def coded_hits(lines: list[str]) -> tuple[float, float]:
    """(cache hits, gzip bytes out) from lines_of's lines."""
    out = sum(float(line.rsplit(" ", 1)[1]) for line in lines
              if line.startswith("gateway_compression_bytes_total")
              and 'encoding="gzip"' in line and 'stage="out"' in line)
    return cache_hits(lines), out


async def lines_of(gw: InProcessGateway) -> list[str]:
    async with client_session() as s, s.get(f"{gw.admin_url}/metrics") as r:
        text = await r.text()
    return [line for line in text.splitlines() if not line.startswith("#") and (
        'route="lane"' in line or line.startswith("gateway_compression_bytes_total"))]


async def ask_counted(gw: InProcessGateway, conn: Conn, sent: bytes
                      ) -> tuple[bytes, tuple[float, float]]:
    """One answer, and coded_hits once it is in."""
    answer = await ask(conn, sent)
    return answer, coded_hits(await lines_of(gw))


@pytest.mark.parametrize("accept", [b"gzip, br;q=0.5", None], ids=["gzip", "identity"])
async def test_a_compressing_route_repeats_what_its_stage_worked_out(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path,
        accept: bytes | None) -> None:
    upstream.on("/lane/a", document)
    gw, counted = await started(gateway_factory, upstream, compressing(upstream.url))
    log = logged_to(gw, tmp_path / "access.log")
    sent = GET if accept is None else GET.replace(
        b"\r\n\r\n", b"\r\nAccept-Encoding: " + accept + b"\r\n\r\n")
    conn = await connect(gw)
    await ask(conn, sent)
    await ask(conn, sent)
    metrics_0 = coded_hits(await lines_of(gw))
    by_pipeline, metrics_1 = await ask_counted(gw, conn, sent)
    assert counted.answered == 0
    by_lane, metrics_2 = await ask_counted(gw, conn, sent)
    assert counted.answered == 1

    assert normalised(by_lane) == normalised(by_pipeline)
    if accept is None:
        assert field(by_lane, "Content-Encoding") is None
        assert by_lane.endswith(DOCUMENT)
    else:
        assert field(by_lane, "Content-Encoding") == "gzip"
        assert "encoding=gzip" in (field(by_lane, "Cache-Status") or "")
        assert gzip.decompress(by_lane.split(b"\r\n\r\n", 1)[1]) == DOCUMENT
    # A hit counted, and the coded bytes, as the pipeline counts them for its hit.
    assert metrics_2[0] - metrics_1[0] == metrics_1[0] - metrics_0[0] == 1
    assert metrics_2[1] - metrics_1[1] == metrics_1[1] - metrics_0[1]
    assert (metrics_2[1] > metrics_1[1]) == (accept is not None)
    assert upstream.count("/lane/a") == 1

    await asyncio.sleep(0.05)  # the log is written once per loop turn
    pipeline_line, lane_line = log_lines(log)[2:4]
    for line in (pipeline_line, lane_line):
        del line["request_id"], line["duration"], line["time"]
    assert lane_line == pipeline_line
    assert lane_line.get("encoding") == (None if accept is None else "gzip")
    conn[1].close()


async def test_a_coding_not_worked_out_for_a_new_entry_goes_down_the_usual_path(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    # A purge, then the new entry fetched by a request of another kind (no
    # Accept-Encoding): the remembered gzip request finds no gzip answer worked out for
    # it; the pipeline works it out (one hit counted, not two), then the lane repeats it.
    upstream.on("/lane/a", document)
    gw, counted = await started(gateway_factory, upstream, compressing(upstream.url))
    sent = GET.replace(b"\r\n\r\n", b"\r\nAccept-Encoding: gzip\r\n\r\n")
    conn = await connect(gw)
    await warmed(conn, sent)
    by_lane = await ask(conn, sent)
    assert counted.answered == 1
    async with client_session() as s:
        async with s.post(f"{gw.admin_url}/admin/cache/purge", json={"all": True}) as r:
            assert r.status == 200, await r.text()
        other = await connect(gw)
        assert field(await ask(other), "X-Cache") == "MISS"  # stored, identity
        other[1].close()
    before = coded_hits(await lines_of(gw))
    worked_out, middle = await ask_counted(gw, conn, sent)
    assert counted.answered == 1
    again, after = await ask_counted(gw, conn, sent)
    assert counted.answered == 2
    # The new entry is the upstream's second answer: its Date may be a second past the
    # first entry's, so that one field is compared between the two hits on the new entry.
    assert normalised(again) == normalised(worked_out)
    assert undated(normalised(worked_out)) == undated(normalised(by_lane))
    assert middle[0] - before[0] == after[0] - middle[0] == 1
    assert middle[1] - before[1] == after[1] - middle[1] > 0
    conn[1].close()


@pytest.mark.parametrize("route", [
    {"rate_limits": ["few"]},
    {"flags": ["lane_flag"]},
], ids=["rate-limited", "flagged"])
async def test_a_route_with_limits_or_flags_is_never_repeated(
        gateway_factory: Callable[..., Any], upstream: Upstream, route: dict[str, Any]
        ) -> None:
    upstream.on("/lane/a", counting())
    config = lane_config(upstream.url, **route)
    config["rate_limits"] = {"few": {"algorithm": "sliding_window", "scope": "ip", "limit": 3,
                                     "window": "60s"}}
    config["flags"] = {"lane_flag": {"type": "boolean", "default": True, "status": "active"}}
    gw, counted = await started(gateway_factory, upstream, config)
    conn = await connect(gw)
    statuses = [int((await ask(conn)).split(b" ", 2)[1]) for _ in range(5)]
    assert counted.answered == 0
    if "rate_limits" in route:  # every request counted against the limit
        assert statuses == [200, 200, 200, 429, 429]
    else:
        assert statuses == [200] * 5
    conn[1].close()


@pytest.mark.parametrize(("metric_route", "repeated"), [("lane", False), ("other", True)])
async def test_an_experiment_that_counts_on_the_route_keeps_it_out_of_the_lane(
        gateway_factory: Callable[..., Any], upstream: Upstream, metric_route: str,
        repeated: bool) -> None:
    # A metric counted on the route observes every request there: the lane would skip it.
    config = experiment_config(upstream)
    config["experiments"]["checkout_test"]["metrics"][2]["route"] = metric_route
    config["cache"] = lane_config(upstream.url)["cache"]
    config["routes"] = [*lane_config(upstream.url)["routes"],
                        {**config["routes"][1], "name": "other"}]
    gw, counted = await started(gateway_factory, upstream, config)
    conn = await connect(gw)
    await warmed(conn)
    assert field(await ask(conn), "X-Cache") == "HIT"
    assert counted.answered == (1 if repeated else 0)
    conn[1].close()


@pytest.mark.parametrize("data", [
    b"GET /lane/a HTTP/1.1\r\nHost: gw.test\r\nRange: bytes=0-2\r\n\r\n",
    b"GET /lane/a HTTP/1.1\r\nHost: gw.test\r\nCache-Control: no-cache\r\n\r\n",
    b"GET /lane/a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2\r\n\r\nab",
    b"GET /lane/a HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\n\r\n",
    b"GET /lane/a HTTP/1.0\r\nHost: gw.test\r\n\r\n",
    b"GET /lane/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
], ids=["range", "no-cache", "body", "expect", "http/1.0", "connection-close"])
async def test_requests_other_than_a_plain_bodiless_get_are_never_repeated(
        gateway_factory: Callable[..., Any], upstream: Upstream, data: bytes) -> None:
    gw, counted = await started(gateway_factory, upstream)
    conn = await connect(gw)
    await ask(conn)  # stored by a plain GET
    conn[1].close()
    answers = []
    for _ in range(4):  # each on a connection of its own (some close after the answer)
        conn = await connect(gw)
        answers.append(await ask(conn, data))
        conn[1].close()
    assert counted.answered == 0
    assert {a.split(b" ", 2)[1] for a in answers} == {b"206" if b"Range" in data else b"200"}


async def test_a_head_is_repeated_with_the_head_a_get_gets(
        gateway_factory: Callable[..., Any], upstream: Upstream, tmp_path: Path) -> None:
    gw, counted = await started(gateway_factory, upstream)
    log = logged_to(gw, tmp_path / "access.log")
    conn = await connect(gw)
    await ask(conn)  # stored (a HEAD answer has no body to store)
    by_get = await ask(conn)  # a hit
    head = GET.replace(b"GET ", b"HEAD ", 1)
    by_pipeline = [await ask(conn, head) for _ in range(2)][-1]
    assert counted.answered == 0
    before = await metric_lines(gw, "lane")
    by_lane = await ask(conn, head)
    assert counted.answered == 1
    after = await metric_lines(gw, "lane")
    assert normalised(by_lane) == normalised(by_pipeline)
    assert by_lane.endswith(b"\r\n\r\n") and field(by_lane, "Content-Length") == "9"
    assert normalised(by_lane) == normalised(by_get[:by_get.index(b"\r\n\r\n") + 4])
    # Nothing followed the head: the next answer on the connection is whole and right.
    after_head = await ask(conn)
    assert after_head.startswith(b"HTTP/1.1 200 OK\r\n") and after_head.endswith(b"payload-1")
    assert upstream.count("/lane/a") == 1
    changed = [line for line in after if line not in before]
    assert any(line.startswith("gateway_requests_total") and 'method="HEAD"' in line
               for line in changed), changed
    await asyncio.sleep(0.05)
    lines = log_lines(log)
    pipeline_line, lane_line = lines[2], lines[3]
    assert lane_line["method"] == "HEAD" and lane_line["bytes"] == len(by_lane)
    for line in (pipeline_line, lane_line):
        del line["request_id"], line["duration"], line["time"]
    assert lane_line == pipeline_line
    conn[1].close()


async def test_a_variant_is_repeated_as_the_pipeline_picks_it(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    # A Vary on a field the client sends as it is: the same bytes pick the same variant,
    # whichever peer sends them; other bytes are other requests (noted, then remembered).
    upstream.on("/lane/a", counting(Vary="Accept-Encoding, Accept-Language"))
    gw, counted = await started(gateway_factory, upstream)
    conn = await connect(gw)
    english = GET.replace(b"\r\n\r\n", b"\r\nAccept-Language: en\r\n\r\n")
    by_pipeline = await warmed(conn, english)
    assert counted.answered == 0
    by_lane = await ask(conn, english)
    assert counted.answered == 1
    assert normalised(by_lane) == normalised(by_pipeline) and by_lane.endswith(b"payload-1")
    other = await asyncio.open_connection("127.0.0.1", gw.config.listen.port,
                                          local_addr=("127.0.0.2", 0))
    assert (await ask(other, english)).endswith(b"payload-1") and counted.answered == 2

    german = GET.replace(b"\r\n\r\n", b"\r\naccept-language:  de\r\n\r\n")
    answers = [await ask(conn, german) for _ in range(4)]
    assert [field(a, "X-Cache") for a in answers] == ["MISS", "HIT", "HIT", "HIT"]
    assert {a[-9:] for a in answers} == {b"payload-2"} and counted.answered == 3
    # The URL's newer variant is not the English one's: the lane picks as the cache does.
    assert (await ask(conn, english)).endswith(b"payload-1") and counted.answered == 4
    assert upstream.count("/lane/a") == 2
    conn[1].close()
    other[1].close()


@pytest.mark.parametrize("vary", ["X-Forwarded-For", "X-User-Id"])
async def test_a_url_whose_answer_varies_on_the_peer_is_not_repeated(
        gateway_factory: Callable[..., Any], upstream: Upstream, vary: str) -> None:
    # What the cache matches a Vary against is what the upstream would get, which holds
    # fields made from the peer: its address (X-Forwarded-For), and identity fields, kept
    # only from a trusted proxy. The same bytes from another address are another variant,
    # which the lane must not answer with this one.
    upstream.on("/lane/a", counting(Vary=vary))
    config = lane_config(upstream.url)
    config["context"]["trusted_proxies"] = ["127.0.0.1/32"]
    gw, counted = await started(gateway_factory, upstream, config)
    sent = GET.replace(b"\r\n\r\n", b"\r\nX-User-Id: u1\r\n\r\n")
    conn = await connect(gw)
    answers = [await ask(conn, sent) for _ in range(3)]
    assert [field(a, "X-Cache") for a in answers] == ["MISS", "HIT", "HIT"]
    other = await asyncio.open_connection("127.0.0.1", gw.config.listen.port,
                                          local_addr=("127.0.0.2", 0))
    answer = await ask(other, sent)
    assert field(answer, "X-Cache") == "MISS" and answer.endswith(b"payload-2")
    assert counted.answered == 0
    conn[1].close()
    other[1].close()


async def test_the_lane_forgets_what_does_not_fit(
        gateway_factory: Callable[..., Any], upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hitlane, "MEMO", 4)
    upstream.on("/lane/*", counting())
    gw = await gateway_factory(lane_config(upstream.url))
    lane = gw.process.pipeline.lane
    conn = await connect(gw)
    for n in range(10):
        data = GET.replace(b"/lane/a", b"/lane/%d" % n)
        for _ in range(3):
            await ask(conn, data)
        assert 0 < len(lane.seen) <= 4 and 0 < len(lane.once) <= 4
    long = GET.replace(b"Accept: */*", b"Accept: " + b"a" * hitlane.MAX_BYTES)
    for _ in range(3):
        await ask(conn, long)
    assert long not in lane.seen
    conn[1].close()


# ---------------------------------------------------------------- the connection

HALF = len(b"GET /lane/a HT")
# What a connection sends before a whole GET alone (each part a write of its own), and how
# many answers that makes.
MIXES = {
    "pipelined": ([GET + GET], 2),
    "a head in two reads": ([GET[:20], GET[20:]], 1),
    "a head and the start of the next": ([GET + GET[:HALF], GET[HALF:]], 2),
    "a body": ([b"POST /lane/post HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2\r\n\r\n",
                b"ab"], 1),
}


@pytest.mark.parametrize(("mix", "answers"), MIXES.values(), ids=MIXES.keys())
async def test_a_connection_that_sent_anything_but_whole_heads_is_never_repeated(
        gateway_factory: Callable[..., Any], upstream: Upstream, mix: list[bytes],
        answers: int) -> None:
    # After any of these the parser may hold part of a request (it does not here: the
    # rule is kept simple), so the lane leaves the connection to it from then on.
    gw, counted = await started(gateway_factory, upstream)
    by_pipeline = await warmed(await connect(gw))  # remembered: a whole GET is the lane's
    reader, writer = await connect(gw)
    for part in mix:  # apart enough to be read apart, even on a loaded machine
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.2)
    for _ in range(answers):
        await response(reader)
    writer.write(GET)
    assert normalised(await response(reader)) == normalised(by_pipeline)
    assert counted.answered == 0
    other = await connect(gw)  # another connection: the lane's
    writer.write(GET)
    assert normalised(await ask(other)) == normalised(by_pipeline)
    assert counted.answered == 1
    assert normalised(await response(reader)) == normalised(by_pipeline)
    writer.close()
    other[1].close()


async def test_a_head_begun_behind_a_queued_request_is_finished_by_the_parser(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    # The start of a head that arrives while a request is queued stays in the parser; a
    # read that then equals a remembered request is the rest of that head, not a request
    # of its own. Answering it from the lane would add a response to the stream.
    upstream.on("/lane/slow", slow)
    upstream.on("/lane/b", counting())
    gw, counted = await started(gateway_factory, upstream)
    await warmed(await connect(gw))
    reader, writer = await connect(gw)
    for part in (GET.replace(b"/lane/a", b"/lane/slow"), GET,
                 b"GET /lane/b HTTP/1.1\r\nX-Pad: "):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)
    assert (await response(reader)).endswith(b"slow")
    assert field(await response(reader), "X-Cache") == "HIT"  # the queued GET, in its turn
    writer.write(GET)  # ends the /lane/b head (X-Pad holds the GET's request line)
    answer = await response(reader)
    assert counted.answered == 0
    assert answer.endswith(b"payload-1") and upstream.count("/lane/b") == 1
    with pytest.raises(asyncio.TimeoutError):  # and nothing else
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
    writer.close()


async def test_a_repeat_sent_while_a_request_is_in_progress_waits_its_turn(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    upstream.on("/lane/slow", slow)
    gw, counted = await started(gateway_factory, upstream)
    reader, writer = conn = await connect(gw)
    by_pipeline = await warmed(conn)
    writer.write(GET.replace(b"/lane/a", b"/lane/slow"))
    await writer.drain()
    await asyncio.sleep(0.1)  # the slow one is upstream now
    writer.write(GET)
    first, second = await response(reader), await response(reader)
    assert first.endswith(b"slow") and normalised(second) == normalised(by_pipeline)
    assert counted.answered == 0  # answered by the pipeline, in its turn
    assert normalised(await ask(conn)) == normalised(by_pipeline)
    assert counted.answered == 1  # the connection is between messages again
    writer.close()


async def test_lane_answers_keep_the_connection_alive_and_its_idle_deadline(
        gateway_factory: Callable[..., Any], upstream: Upstream) -> None:
    # aiohttp's own keep-alive timer is a backstop set past the header and idle deadlines
    # (here 0.4 + 0.4 + 1 s) from the last request it saw: the lane's answers count as
    # requests for it too, else it would close a connection the lane keeps busy.
    upstream.on("/lane/a", counting())
    config = lane_config(upstream.url)
    config["listen"].update({"header_timeout": "0.4s", "idle_timeout": "0.4s"})
    gw, counted = await started(gateway_factory, upstream, config)
    reader, writer = conn = await connect(gw)
    await warmed(conn)
    began = time.monotonic()
    while True:
        assert field(await ask(conn), "X-Cache") == "HIT"
        answered = time.monotonic()
        if answered - began > 3.0:
            break
        await asyncio.sleep(0.1)  # well inside the 0.4 s idle deadline, even on a busy machine
    assert counted.answered >= 5
    # Then idle: closed by the idle deadline, counted from the last answer.
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert 0.2 < time.monotonic() - answered < 1.5
    writer.close()
