"""The connection rules as pure functions: deadlines, refusals, the log budget, the cap."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser

from gateway.edge import (
    CONTINUE_SIZE,
    BadRequestLog,
    ConnectionRules,
    Expiry,
    LineBudget,
    Reason,
    brief,
    response_started,
    timeout_answer,
    version_refusal,
    waiting_deadline,
)
from gateway.wire import problems
from gateway.wire.listener import connection_cap
from gateway.wire.server import classify

RULES = ConnectionRules(header_timeout=10.0, idle_timeout=60.0, body_timeout=30.0)


def test_new_connection_has_header_timeout_from_accept_and_closes_silently_if_empty() -> None:
    assert waiting_deadline(RULES, 100.0, None, fresh=True) == (110.0, Expiry.CLOSE)


def test_new_connection_with_a_partial_head_gets_408_at_the_same_deadline() -> None:
    """Connecting early and sending late buys no time."""
    assert waiting_deadline(RULES, 100.0, 109.0, fresh=True) == (110.0, Expiry.HEAD)


def test_kept_alive_connection_waits_idle_timeout_then_closes_silently() -> None:
    assert waiting_deadline(RULES, 100.0, None, fresh=False) == (160.0, Expiry.CLOSE)


def test_kept_alive_connection_gets_header_timeout_from_first_byte_of_next_head() -> None:
    assert waiting_deadline(RULES, 100.0, 150.0, fresh=False) == (160.0, Expiry.HEAD)


def test_pipelined_bytes_before_the_response_ended_count_from_its_end() -> None:
    assert waiting_deadline(RULES, 100.0, 90.0, fresh=False) == (110.0, Expiry.HEAD)


@pytest.mark.parametrize("version", [(1, 0), (1, 1)])
def test_http_1_0_and_1_1_are_served(version: tuple[int, int]) -> None:
    assert version_refusal(version) is None


@pytest.mark.parametrize(("version", "status"), [((0, 9), 400), ((1, 2), 505), ((2, 0), 505),
                                                 ((3, 0), 505)])
def test_other_versions_are_refused(version: tuple[int, int], status: int) -> None:
    refusal = version_refusal(version)
    assert refusal is not None
    assert (refusal.status, refusal.reason) == (status, Reason.VERSION)


def _refusal_for(data: bytes) -> tuple[int, Reason]:
    parser = HttpRequestParser(None, None, 2**16, max_line_size=100,  # type: ignore[arg-type]
                               max_field_size=200, max_headers=16)
    with pytest.raises(HttpProcessingError) as caught:
        parser.feed_data(data)
    refusal = classify(caught.value, 100, 200)
    return refusal.status, refusal.reason


@pytest.mark.parametrize(("data", "expected"), [
    (b"GET / HTTP/1.2\r\n\r\n", (505, Reason.VERSION)),
    (b"GET /" + b"a" * 150 + b" HTTP/1.1\r\n\r\n", (414, Reason.URI_TOO_LONG)),
    (b"GET / HTTP/1.1\r\nX: " + b"v" * 250 + b"\r\n\r\n", (431, Reason.HEADER_TOO_LARGE)),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(20)) + b"\r\n",
     (431, Reason.HEADER_TOO_LARGE)),
    (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", (400, Reason.HEADER)),
    (b"G\x00T / HTTP/1.1\r\n\r\n", (400, Reason.METHOD)),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", (400, Reason.TLS)),
    (b"GET / HTTQ/1.1\r\n\r\n", (400, Reason.REQUEST_LINE)),
])
def test_parser_errors_map_to_status_and_reason(data: bytes, expected: tuple[int, Reason]
                                                ) -> None:
    assert _refusal_for(data) == expected


def test_refusal_details_never_echo_the_request() -> None:
    parser = HttpRequestParser(None, None, 2**16)  # type: ignore[arg-type]
    with pytest.raises(HttpProcessingError) as caught:
        parser.feed_data(b"GET / HTTP/1.1\r\n<script> x\r\n\r\n")
    assert "script" not in classify(caught.value, 8190, 8192).detail


def test_dependency_probes_of_the_protocol_pass() -> None:
    assert problems() == []


def test_line_budget_allows_per_second_lines_and_counts_the_rest() -> None:
    budget = LineBudget(2)
    assert [budget.take(10.0 + i * 0.1) for i in range(5)] == [0, 0, None, None, None]
    assert budget.take(11.05) == 3  # a new window; the line says how many were held back
    assert budget.take(11.1) == 0


def test_zero_lines_per_second_writes_none() -> None:
    budget = LineBudget(0)
    assert {budget.take(float(t)) for t in range(5)} == {None}


def test_bad_request_log_counts_all_and_writes_within_budget(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    reporter = BadRequestLog(per_second=1, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="gateway.edge")
    for _ in range(4):
        reporter.report(Reason.HEADER, 400, "192.0.2.1", "Invalid header token:\n\n  b'x'")
    now[0] = 1.5
    reporter.report(Reason.HEADER, 400, "192.0.2.1", "again")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "\n" not in messages[0]
    assert "+3 not logged" in messages[1]
    assert all(r.exc_info is None for r in caplog.records)


def test_brief_drops_the_quoted_request_escapes_and_truncates() -> None:
    assert brief("Invalid header token:\n\n  b'X-Bad\\x7f: 1'\n       ^") == \
        "Invalid header token"
    assert brief("Bad status line:\n  Invalid HTTP version:\n\n  b'GET / HTTP/1.2'") == \
        "Invalid HTTP version"
    assert brief("a\x1b[31mb\r\nc") == "a\\x1b[31mb c"
    assert brief("x" * 200, limit=10) == "x" * 10 + "..."


def test_timeout_answer_is_a_complete_closing_problem_response() -> None:
    answer = timeout_answer("slow")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head
    assert b"application/problem+json" in head


def test_only_a_final_response_counts_as_started() -> None:
    """RFC 9110 §15.2: a 100 Continue is interim; a 408 may still follow it."""
    assert not response_started(0)
    assert not response_started(CONTINUE_SIZE)
    assert response_started(120)


@pytest.mark.parametrize(("configured", "files", "reserved", "cap"), [
    (10_000, 1_048_576, 400, 10_000),  # plenty of files: the configured cap
    (10_000, 4096, 400, 3696),  # the pools keep their files
    (10_000, 1024, 900, 512),  # at least half the files are for clients
    (10_000, 0, 400, 10_000),  # unknown limit
])
def test_connection_cap(configured: int, files: int, reserved: int, cap: int) -> None:
    assert connection_cap(configured, files, reserved) == cap
