"""redis-py's connection internals under the request-path pipe (gateway/redispipe.py).

The pipe borrows one connection from RedisLink's pool (so AUTH, SELECT, TLS and the client
name stay redis-py's) and then writes commands to the connection's stream and feeds what
comes back to its own hiredis reader. That needs four things redis-py does not promise:

* `get_connection` of the asyncio pools: redis-py before 5.3 requires a command name, later
  releases take none and warn when given one (`checkout` adapts to the installed one);
* the connected Connection's `_reader` and `_writer` streams, and the reader's `_buffer`
  (bytes Redis sent that redis-py has not read: none, after the connection's handshake);
* `BaseParser.parse_error`, which turns an error reply into redis-py's exception class
  (NoScriptError for NOSCRIPT, which the pipe answers by loading the script again);
* hiredis's Reader with `notEnoughData` (hiredis 2.1 and later).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import BlockingConnectionPool, Connection, ConnectionPool
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

from gateway.wire import need

MORE = object()  # hiredis: no complete reply buffered yet


def _takes_command_name(pool_class: Any) -> bool:
    """Whether the pool's get_connection requires a command name (redis-py before 5.3)."""
    parameters = list(inspect.signature(pool_class.get_connection).parameters.values())[1:]
    return bool(parameters) and parameters[0].default is inspect.Parameter.empty and \
        parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                               inspect.Parameter.POSITIONAL_OR_KEYWORD)


_NAMED: dict[Any, bool] = {}


async def checkout(pool: Any) -> Any:
    """A connected connection of `pool`, for the caller alone until `give_back`."""
    kind = type(pool)
    named = _NAMED.get(kind)
    if named is None:
        named = _NAMED[kind] = _takes_command_name(kind)
    return await (pool.get_connection("EVALSHA") if named else pool.get_connection())


def streams(conn: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The connected connection's reader and writer."""
    reader, writer = conn._reader, conn._writer
    if reader is None or writer is None:
        raise ConnectionError("the pool lent a connection that is not connected")
    return reader, writer


def take_over(conn: Any, protocol: Any) -> asyncio.StreamWriter:
    """Make `protocol` the receiver of what the connection's socket reads from now on, and
    return the connection's writer.

    What arrives goes straight to `protocol.data_received` instead of through the stream
    reader and a task awaiting it: one event-loop step less per reply batch. `protocol`
    hands `connection_lost` (and flow control) on to the stream's own protocol
    (`StreamBridge`), so redis-py's `disconnect` still sees the connection end.
    """
    reader, writer = streams(conn)
    buffered: bytearray = getattr(reader, "_buffer")  # noqa: B009 (private, untyped)
    pending = bytes(buffered)
    buffered.clear()
    transport = writer.transport
    protocol.own = transport.get_protocol()
    transport.set_protocol(protocol)
    if pending:
        protocol.data_received(pending)
    return writer


class StreamBridge(asyncio.Protocol):
    """The base of a protocol given to `take_over`: the connection's end and flow control
    go on to the stream protocol it replaced."""

    own: Any = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.own is not None:
            self.own.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.own.eof_received() if self.own is not None else None

    def pause_writing(self) -> None:
        if self.own is not None:
            self.own.pause_writing()

    def resume_writing(self) -> None:
        if self.own is not None:
            self.own.resume_writing()


async def give_back(pool: Any, conn: Any) -> None:
    """Close a connection the pipe used and return it to the pool (which reconnects it
    when it is next lent): its stream may hold replies nobody will read."""
    try:
        await conn.disconnect()
    finally:
        await pool.release(conn)


def reply_reader() -> Any:
    """A hiredis reader that gives redis-py's exceptions for error replies and MORE when
    no complete reply is buffered."""
    return hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error,
                          notEnoughData=MORE)


# ---------------------------------------------------------------------------- probes
@need("redis", "redis.asyncio pools' get_connection() or get_connection(command_name)")
def _get_connection_shape() -> None:
    for pool_class in (ConnectionPool, BlockingConnectionPool):
        if not inspect.iscoroutinefunction(pool_class.get_connection):
            raise TypeError(f"{pool_class.__name__}.get_connection is not a coroutine function")
        parameters = list(inspect.signature(pool_class.get_connection).parameters.values())[1:]
        required = [p.name for p in parameters if p.default is inspect.Parameter.empty
                    and p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                       inspect.Parameter.VAR_KEYWORD)]
        if len(required) > 1:
            raise TypeError(f"{pool_class.__name__}.get_connection requires {required}")


@need("redis", "redis.asyncio.Connection._reader/_writer (the connected streams) and "
               "disconnect(), pool.release()")
def _connection_streams() -> None:
    conn = Connection()
    if not hasattr(conn, "_reader") or not hasattr(conn, "_writer"):
        raise AttributeError("Connection has no _reader/_writer")
    if not inspect.iscoroutinefunction(Connection.disconnect):
        raise TypeError("Connection.disconnect is not a coroutine function")
    if not inspect.iscoroutinefunction(ConnectionPool.release):
        raise TypeError("ConnectionPool.release is not a coroutine function")


@need("redis", "asyncio.StreamReader._buffer (a bytearray of unread bytes), read by take_over")
def _stream_buffer() -> None:
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(loop=loop)
        reader.feed_data(b"+OK\r\n")
        buffered = getattr(reader, "_buffer", None)
        if not isinstance(buffered, bytearray) or bytes(buffered) != b"+OK\r\n":
            raise TypeError("StreamReader keeps its unread bytes elsewhere than _buffer")
    finally:
        loop.close()


@need("redis", "redis._parsers.base.BaseParser.parse_error(message) -> the reply's exception")
def _error_replies() -> None:
    parse: Any = BaseParser.parse_error  # untyped in redis-py
    missing = parse("NOSCRIPT No matching script. Please use EVAL.")
    if not isinstance(missing, NoScriptError):
        raise TypeError(f"NOSCRIPT parsed as {type(missing).__name__}")
    other = parse("ERR something")
    if not isinstance(other, ResponseError):
        raise TypeError(f"ERR parsed as {type(other).__name__}")


@need("hiredis", "hiredis.Reader(protocolError, replyError, notEnoughData)")
def _reader_shape() -> None:
    reader = reply_reader()
    reader.feed(b"-NOSCRIPT No matching script.\r\n:4")
    if not isinstance(reader.gets(), NoScriptError):
        raise TypeError("an error reply did not come back as NoScriptError")
    if reader.gets() is not MORE:
        raise TypeError("an incomplete reply did not come back as notEnoughData")


__all__ = ["MORE", "StreamBridge", "checkout", "give_back", "reply_reader", "streams",
           "take_over"]
