"""gateway.wire's start check: every probe passes on the installed (pinned) dependencies,
and each one fails, naming the package and its version, when what it relies on changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp.http_writer
import aiohttp.streams
import hiredis
import prometheus_client.metrics
import pytest
import redis._parsers.base
import redis.asyncio
import redis.exceptions
from aiohttp import web

import gateway.wire as wire
import gateway.wire.aiohttp_io as aiohttp_io
import gateway.wire.framing as framing
import gateway.wire.redis_pipe as redis_pipe


def test_every_probe_passes_on_the_installed_dependencies() -> None:
    assert wire.problems() == []


def test_every_wire_module_registers_probes_of_the_packages_it_reaches_into() -> None:
    wire.problems()  # imports every module of gateway.wire
    by_module: dict[str, set[str]] = {}
    for item in wire._NEEDS:
        by_module.setdefault(item.probe.__module__, set()).add(item.distribution)
    assert by_module["gateway.wire.aiohttp_io"] == {"aiohttp"}
    assert by_module["gateway.wire.h1client"] == {"aiohttp"}
    assert by_module["gateway.wire.prometheus"] == {"prometheus-client"}
    assert by_module["gateway.wire.redis_pipe"] == {"redis", "hiredis"}
    assert by_module["gateway.wire.request"] == {"aiohttp"}


def test_a_failed_probe_refuses_with_package_version_and_need(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def gone() -> None:
        raise AttributeError("no such thing")

    monkeypatch.setattr(wire, "_NEEDS", [wire.Need("aiohttp", "the thing", gone)])
    with pytest.raises(wire.DependencyMismatch) as caught:
        wire.verify()
    version = aiohttp.__version__
    assert f"aiohttp {version}: the thing is missing or has another shape " \
           "(AttributeError: no such thing)" in str(caught.value)


def _old_write_eof() -> Callable[..., Any]:
    """StreamWriter.write_eof as aiohttp 3.11 had it: a pending head is not written."""
    async def write_eof(self: Any, chunk: bytes = b"") -> None:
        if chunk:
            self._write(chunk)
        self._eof = True
    return write_eof


async def _two_args(self: Any, command_name: str, key: str) -> None:
    raise AssertionError("not called")


def _without_sum(original: Callable[..., Any]) -> Callable[..., Any]:
    def init(self: Any) -> None:
        original(self)
        if hasattr(self, "_sum"):
            del self._sum
    return init


def _no_streams(original: Callable[..., Any]) -> Callable[..., Any]:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._reader
    return init


def _parser_without(keyword: str) -> Callable[..., Any]:
    """aiohttp's response parser as a release that dropped one of its keywords would be."""
    real = framing.HttpResponseParser

    def make(*args: Any, **kwargs: Any) -> Any:
        if keyword in kwargs:
            raise TypeError(f"unexpected keyword argument {keyword!r}")
        return real(*args, **kwargs)
    return make


def _reader_without_not_enough_data(**kwargs: Any) -> Any:
    kwargs.pop("notEnoughData", None)
    return hiredis.Reader(**kwargs)


async def _prepare_again(self: Any, request: Any) -> Any:
    return object()


def _log_always(self: Any, request: Any, response: Any, time: Any) -> None:
    self.access_logger.log(request, response, time)


async def _start_keeping_the_task(self: Any) -> None:
    """RequestHandler.start as a release that kept the handler's task would have it."""
    loop, coro = self._loop, self._handle_request(None, None, None)
    task = loop.create_task(coro)
    self._handler_task = task
    resp, reset = await task  # noqa: RUF059 - the line the probe looks for


# (what changes, how, the package the refusal must name)
BREAKAGES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "serializer writes other bytes": (lambda mp: mp.setattr(
        aiohttp_io, "_serialize_headers", lambda line, fields: line.encode() + b"\r\n\r\n"),
        "aiohttp"),
    "web.Response sends its head at once": (lambda mp: mp.delattr(
        web.Response, "_send_headers_immediately"), "aiohttp"),
    "StreamWriter ignores a pending head (aiohttp 3.11)": (lambda mp: mp.setattr(
        aiohttp.http_writer.StreamWriter, "write_eof", _old_write_eof()), "aiohttp"),
    "the response parser lost a keyword": (lambda mp: mp.setattr(
        framing, "HttpResponseParser", _parser_without("read_until_eof")), "aiohttp"),
    "no StreamReader.read_nowait": (lambda mp: mp.delattr(
        aiohttp.streams.StreamReader, "read_nowait"), "aiohttp"),
    "BaseRequest computes keep_alive another way": (lambda mp: mp.setattr(
        web.BaseRequest, "keep_alive", property(lambda self: True)), "aiohttp"),
    "BaseRequest.remote is a plain attribute": (lambda mp: mp.setattr(
        web.BaseRequest, "remote", None), "aiohttp"),
    "prepare of a finished response does something": (lambda mp: mp.setattr(
        web.StreamResponse, "prepare", _prepare_again), "aiohttp"),
    "log_access logs whatever _logging_enabled says": (lambda mp: mp.setattr(
        web.RequestHandler, "log_access", _log_always), "aiohttp"),
    "start() keeps the request's task": (lambda mp: mp.setattr(
        web.RequestHandler, "start", _start_keeping_the_task), "aiohttp"),
    "histogram child without _sum": (lambda mp: mp.setattr(
        prometheus_client.metrics.Histogram, "_metric_init",
        _without_sum(prometheus_client.metrics.Histogram._metric_init)), "prometheus-client"),
    "get_connection needs two arguments": (lambda mp: mp.setattr(
        redis.asyncio.BlockingConnectionPool, "get_connection", _two_args), "redis"),
    "Connection without _reader": (lambda mp: mp.setattr(
        redis.asyncio.Connection, "__init__", _no_streams(redis.asyncio.Connection.__init__)),
        "redis"),
    "NOSCRIPT parsed as a plain error": (lambda mp: mp.setattr(
        redis._parsers.base.BaseParser, "parse_error",
        classmethod(lambda cls, message: redis.exceptions.ResponseError(message))), "redis"),
    "hiredis without notEnoughData": (lambda mp: mp.setattr(
        redis_pipe.hiredis, "Reader", _reader_without_not_enough_data), "hiredis"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_probe_notices_its_dependency_changing(monkeypatch: pytest.MonkeyPatch,
                                                     breakage: str) -> None:
    wire.problems()  # register every probe before anything is broken
    change, distribution = BREAKAGES[breakage]
    change(monkeypatch)
    found = wire.problems()
    assert found, f"{breakage}: no probe noticed"
    version = wire.installed_version(distribution)
    assert any(line.startswith(f"{distribution} {version}: ") for line in found), found


class _OldPool:
    async def get_connection(self, command_name: str, *keys: Any, **options: Any) -> Any:
        return command_name


class _NewPool:
    async def get_connection(self, command_name: str | None = None, *keys: Any,
                             **options: Any) -> Any:
        return command_name


async def test_checkout_names_a_command_only_for_pools_that_require_one() -> None:
    # redis-py before 5.3 requires a command name; later releases warn when given one.
    assert await redis_pipe.checkout(_OldPool()) == "EVALSHA"
    assert await redis_pipe.checkout(_NewPool()) is None
