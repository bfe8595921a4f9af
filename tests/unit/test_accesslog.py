"""The access log writer: whole lines, atomic-sized writes, nothing lost at close."""

from __future__ import annotations

import asyncio
import os

import orjson

from gateway.accesslog import ATOMIC_WRITE, AccessLog, AccessRecord


class Recording(AccessLog):
    """Keeps each write() it would make, to check where the writer cuts."""

    def __init__(self) -> None:
        super().__init__(fd=-1, clock=lambda: 1700000000.0)
        self.writes: list[bytes] = []

    def _write_all(self, data: bytes) -> None:
        self.writes.append(data)


def record(i: int, path_length: int = 40) -> AccessRecord:
    r = AccessRecord(request_id=f"id-{i}", method="GET", path="/" + "p" * path_length,
                     client_ip="127.0.0.1")
    r.route, r.status, r.bytes, r.duration = "default", 200, 12, 0.0012345678
    return r


def test_a_line_holds_the_documented_fields_and_leaves_absent_ones_out() -> None:
    r = record(1)
    line = orjson.loads(r.to_json())
    assert line["request_id"] == "id-1" and line["route"] == "default"
    assert line["status"] == 200 and line["bytes"] == 12 and line["duration"] == 0.001235
    assert "time" in line and line["client_ip"] == "127.0.0.1"
    assert not {"upstream", "upstream_duration", "cache", "ratelimit", "error"} & set(line)
    r.upstream, r.upstream_duration, r.cache, r.ratelimit = "api", 0.5, "MISS", "allowed"
    line = orjson.loads(r.to_json())
    assert (line["upstream"], line["upstream_duration"], line["cache"],
            line["ratelimit"]) == ("api", 0.5, "MISS", "allowed")


def test_every_write_is_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    log = Recording()
    for i in range(500):
        log._pending.append(orjson.dumps(record(i, i % 300).fields(0.0),
                                         option=orjson.OPT_APPEND_NEWLINE))
    log.flush()
    assert len(log.writes) > 1
    for data in log.writes:
        assert len(data) <= ATOMIC_WRITE and data.endswith(b"\n")
    lines = b"".join(log.writes).splitlines()
    assert [orjson.loads(x)["request_id"] for x in lines] == [f"id-{i}" for i in range(500)]


def test_a_line_longer_than_pipe_buf_is_written_alone_and_whole() -> None:
    log = Recording()
    for i, length in enumerate((10, ATOMIC_WRITE * 2, 10)):
        log._pending.append(orjson.dumps(record(i, length).fields(0.0),
                                         option=orjson.OPT_APPEND_NEWLINE))
    log.flush()
    assert [len(orjson.loads(w)["path"]) for w in log.writes] == [11, ATOMIC_WRITE * 2 + 1, 11]


async def test_lines_of_one_loop_turn_leave_in_one_write_through_a_real_pipe() -> None:
    read_end, write_end = os.pipe()
    try:
        log = Recording()
        log.fd = write_end
        for i in range(5):
            log.write(record(i))
        assert log.writes == []  # held until the loop turns
        await asyncio.sleep(0)
        assert len(log.writes) == 1
        AccessLog._write_all(log, log.writes[0])  # the real write, to a real pipe
        assert os.read(read_end, 65536).count(b"\n") == 5
    finally:
        os.close(read_end)
        os.close(write_end)


def test_close_writes_what_is_pending() -> None:
    read_end, write_end = os.pipe()
    try:
        log = AccessLog(write_end)
        log._pending.append(b'{"request_id":"last"}\n')
        log.close()
        assert os.read(read_end, 65536) == b'{"request_id":"last"}\n'
    finally:
        os.close(read_end)
        os.close(write_end)
