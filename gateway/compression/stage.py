"""The compression stage: shapes an answer for the client's Accept-Encoding, after the cache
and before the relay. It asks gateway.compression.rules what to do and does it.

- A streamed body is coded chunk by chunk as it arrives (memory: the codec's window).
  Chunks of OFFLOAD_AT bytes or more are coded in a worker thread: zlib at level 6 codes
  ~58 MB/s of the benchmark's JSON here, so 64 KiB would hold the loop ~1.1 ms.
- A stored response (a cache hit: `Exchange.origin` is its Entry) is coded once per coding
  and kept with the entry (`Entry.encoded`, counted in memory_max, written to L2), with its
  head built and serialized once per coding, so a compressed hit costs ~2% more
  instructions than an identity hit (tests/perf/bench_compression.py).
- A body the upstream coded in a way the client does not accept is decoded (and coded again
  if the client accepts one of ours). The first decoded bytes are read before the head goes
  out, so a corrupt body is a 502, not a 200 with garbage; later corruption cuts the response.
- A HEAD answer gets the fields the GET for the same request would get (RFC 9110 §9.3.2: a
  cache after us freshens its stored GET answer with them, RFC 9111 §4.3.5), and nothing is
  coded for it: its Content-Length is the coded length when that variant is kept with the
  entry already, else absent, as a streamed coded GET's is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway import metrics
from gateway.compression import codecs
from gateway.compression import rules as rfc
from gateway.config.model import Compression, Config, Encoding, RouteCompression
from gateway.context import remember
from gateway.metrictally import TALLY
from gateway.proxy import Exchange, StoredHead, field_lines
from gateway.wire.h1client import UpstreamError

if TYPE_CHECKING:
    from gateway.accesslog import AccessRecord
    from gateway.cache.entry import Entry
    from gateway.cache.service import CacheService

OFFLOAD_AT = 64 * 1024  # bytes of one chunk coded off the event loop (module docstring)
PREFERENCES_MEMO = 256  # distinct Accept-Encoding values remembered (browsers send a few)
HEADS_PER_ENTRY = 64  # answers an entry remembers, by base head, Accept-Encoding and secrets
IDENTITY = rfc.IDENTITY
# Looked up on every answer of a compressing route. `get` with an istr, not `in`: on a
# CIMultiDictProxy `name in headers` measured ~1.3 us against ~0.16 us (multidict 7.2).
_ACCEPT_ENCODING = istr("Accept-Encoding")
CONTENT_ENCODING = istr("Content-Encoding")
_CACHE_STATUS = istr("Cache-Status")
_COOKIE = istr("Cookie")
_AUTHORIZATION = istr("Authorization")
IF_NONE_MATCH = istr("If-None-Match")
IF_RANGE = istr("If-Range")


class Compressor:
    """One per runtime: the config's compression block and the routes that use it."""

    def __init__(self, settings: Compression, config: Config,
                 cache: CacheService | None = None) -> None:
        self.settings = settings
        self.offered = settings.encodings
        self.codings = tuple(str(e) for e in Encoding)
        # Route name -> whether it compresses beside secrets (absent: compression off).
        self.routes = {r.name: r.compression is RouteCompression.ALWAYS
                       for r in config.routes if r.compression is not RouteCompression.OFF}
        self.cache = cache
        self._prefs: dict[str | None, tuple[rfc.Preferences, Encoding | None]] = {}
        self._bytes = {(str(e), stage): metrics.COMPRESSION_BYTES.labels(str(e), stage)
                       for e in Encoding for stage in ("in", "out")}  # at load (STYLE)
        self._pairs = {str(e): (self._bytes[(str(e), "in")], self._bytes[(str(e), "out")])
                       for e in Encoding}

    # ------------------------------------------------------------ request
    def plain_request(self, headers: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
        """The request with coded validators made plain (rules.plain_validators): what the
        cache and the upstream see. Called only when it has IF_NONE_MATCH or IF_RANGE."""
        found = rfc.plain_validators(headers.get("If-None-Match"), headers.get("If-Range"),
                                     self.codings)
        if found is None:
            return headers
        copy = CIMultiDict(headers)
        if found.if_none_match is not None:
            copy["If-None-Match"] = found.if_none_match
        if found.drop_range:
            copy.popall("Range", None)
            copy.popall("If-Range", None)
        return CIMultiDictProxy(copy)

    def _negotiate(self, accept_encoding: str | None
                   ) -> tuple[rfc.Preferences, Encoding | None]:
        known = self._prefs.get(accept_encoding)
        if known is None:
            prefs = rfc.preferences(accept_encoding)
            known = remember(self._prefs, accept_encoding,
                             (prefs, rfc.choose(prefs, self.offered)), PREFERENCES_MEMO)
        return known

    # ------------------------------------------------------------ response
    def shape(self, route: str, method: str, asked: Mapping[str, str], exchange: Exchange,
              record: AccessRecord) -> Exchange | Awaitable[Exchange]:
        """The exchange as this client gets it (itself when nothing applies), or an
        awaitable of it when coding must wait (a large first variant, a body to check)."""
        accept = asked.get(_ACCEPT_ENCODING)
        stored = exchange.stored
        if accept is None and (stored.fields if stored is not None else exchange.headers
                               ).get(CONTENT_ENCODING) is None:
            # No Accept-Encoding: the answer as the upstream wrote it, with no Vary added
            # (README): the usual API client pays two lookups here, nothing more.
            return exchange
        secrets_allowed = self.routes.get(route)
        if secrets_allowed is None:
            return exchange
        if method == "HEAD":
            return self._head_only(exchange, asked, accept, secrets_allowed, record)
        entry: Entry | None = exchange.origin  # type: ignore[assignment]
        if entry is not None and stored is not None:
            # A hit: what this kind of request gets was worked out by an earlier one.
            key = _coded_key(stored, accept, secrets_allowed, asked)
            known = entry.coded_heads.get(key)
            if known is not None:
                label = self._reuse(entry, exchange, known)
                if label is not None:
                    record.encoding = label
                return exchange
            prefs, target = self._negotiate(accept)
            return self._stored(entry, exchange, key, asked, prefs, target, secrets_allowed,
                                record)
        prefs, target = self._negotiate(accept)
        if exchange.status == 304:
            return self._not_modified(exchange, asked, target)
        return self._passing(exchange, asked, prefs, target, secrets_allowed, record)

    def known(self, route: str, accept: str | None, asked: Mapping[str, str],
              exchange: Exchange) -> tuple[Exchange, str | None] | None:
        """`shape`'s answer to a GET on a route that compresses, answered with a plain hit
        (`exchange`), for a request that sent Accept-Encoding or an entry coded upstream
        (without either `shape` leaves the hit as it is, which the caller tells itself):
        the hit with the head and body an earlier request of the same kind got, and the
        coding that went out (None: as stored). None when `shape` would still have that
        to work out, or when the head it would reuse is not serialized whole. For the lane
        of repeated requests (gateway.hitlane), which answers such a request without the
        pipeline; `accept`: the request's Accept-Encoding, which it reads once per request
        it remembers."""
        stored = exchange.stored
        entry: Entry | None = exchange.origin  # type: ignore[assignment]
        if stored is None or entry is None:
            return None
        known = entry.coded_heads.get(_coded_key(stored, accept, self.routes[route], asked))
        if known is None or known[0].raw is None:  # the latter: aiohttp completes its head
            return None
        return exchange, self._reuse(entry, exchange, known)

    def _reuse(self, entry: Entry, exchange: Exchange,
               known: tuple[StoredHead, bytes, str | None]) -> str | None:
        """The hit with the head and body worked out for its kind of request, counted and
        marked as `_served` does (this is every coded hit: tests/perf/bench_compression.py);
        the coding that went out."""
        head, body, label = known
        exchange.stored, exchange.body = head, body
        if label is None:
            return None
        pair = self._pairs.get(label)
        if pair is not None and body is not entry.body:
            sums = TALLY.sums  # applied by the flush this request schedules anyway
            sums[pair[0]] = sums.get(pair[0], 0) + len(entry.body)
            sums[pair[1]] = sums.get(pair[1], 0) + len(body)
        headers = exchange.headers
        status = headers.get(_CACHE_STATUS)
        if status is not None:
            headers[_CACHE_STATUS] = f"{status}; encoding={label}"
        return label

    def _head_only(self, exchange: Exchange, asked: Mapping[str, str], accept: str | None,
                   secrets_allowed: bool, record: AccessRecord
                   ) -> Exchange | Awaitable[Exchange]:
        """A HEAD answer: the head the GET would get (module docstring), no body coded, and
        nothing counted in gateway_compression_bytes (no bytes were coded)."""
        stored = exchange.stored
        entry: Entry | None = exchange.origin  # type: ignore[assignment]
        prefs, target = self._negotiate(accept)
        if entry is not None and stored is not None:
            # The key of `shape`'s hits, so a HEAD finds the answer its GET worked out, and
            # the reverse.
            key = _coded_key(stored, accept, secrets_allowed, asked)
            known = entry.coded_heads.get(key)
            if known is None:
                return self._stored(entry, exchange, key, asked, prefs, target,
                                    secrets_allowed, record, head_only=True)
            exchange.stored, exchange.body = known[0], b""
            self._label(exchange, known[2], record)
            return exchange
        if exchange.status == 304:
            return self._not_modified(exchange, asked, target)
        headers = exchange.headers
        # Not the body's size: an upstream's HEAD answer has none, and names the GET's.
        text = headers.get("Content-Length", "")
        plan = self._plan(exchange.status, headers, asked, prefs, target, secrets_allowed,
                          int(text) if text.isdigit() else None)
        if plan.unchanged:
            if plan.label is not None:
                record.encoding = plan.label
            return exchange
        _apply(headers, plan, None)
        if plan.decode is not None or plan.output is not None:
            headers.popall("Content-Length", None)  # the coded length: known by coding only
        self._label(exchange, plan.label, record)
        return exchange

    def _not_modified(self, exchange: Exchange, asked: Mapping[str, str],
                      target: Encoding | None) -> Exchange:
        """A 304 names the validator of what the client would get (RFC 9110 §15.4.5): the
        coded tag when the client holds that coding's copy."""
        etag = exchange.headers.get("ETag")
        inm = asked.get("If-None-Match")
        if etag is None or inm is None or target is None:
            return exchange
        found = rfc.plain_validators(inm, None, self.codings)
        if found is not None and target in found.coded:
            exchange.headers["ETag"] = rfc.coded_etag(etag, target)
            _add_vary(exchange.headers)
        return exchange

    # ------------------------------------------------------------ stored responses
    def _stored(self, entry: Entry, exchange: Exchange, key: tuple[Any, ...],
                asked: Mapping[str, str], prefs: rfc.Preferences, target: Encoding | None,
                secrets_allowed: bool, record: AccessRecord, head_only: bool = False
                ) -> Exchange | Awaitable[Exchange]:
        """The first hit of its kind (base head, Accept-Encoding value, secrets) on `entry`:
        decide, code if needed, and keep the answer for the next ones. `head_only`: a HEAD,
        which codes nothing and keeps only an answer a GET would keep too."""
        stored = exchange.stored
        assert stored is not None
        if len(entry.coded_heads) >= HEADS_PER_ENTRY:
            entry.coded_heads.clear()  # Accept-Encoding values are many only when forged
        plan = self._plan(exchange.status, stored.fields, asked, prefs, target,
                          secrets_allowed, len(entry.body))
        name = str(plan.output) if plan.output else IDENTITY
        if plan.unchanged:
            known = entry.coded_heads[key] = (stored, entry.body, plan.label)
        elif plan.decode is None and plan.output is None:  # the same bytes, with Vary
            known = entry.coded_heads[key] = (
                _head(stored, plan, len(entry.body)), entry.body, plan.label)
        elif name in entry.encoded:
            known = entry.coded_heads[key] = (
                _head(stored, plan, len(entry.encoded[name])), entry.encoded[name],
                plan.label)
        elif head_only:
            # Coding the body to learn its length would be all of a GET's work for none of
            # its bytes: the head goes without a length, as a streamed coded GET's does.
            exchange.stored, exchange.body = _head(stored, plan, None), b""
            self._label(exchange, plan.label, record)
            return exchange
        elif len(entry.body) >= OFFLOAD_AT:
            return self._stored_later(entry, exchange, key, plan, record)
        else:
            known = self._keep(entry, key, stored, plan,
                               self._code_whole(plan, entry.body))
        head, body, label = known
        if head_only:
            exchange.stored, exchange.body = head, b""
            self._label(exchange, label, record)
            return exchange
        exchange.stored, exchange.body = head, body
        return self._served(exchange, label, len(entry.body), len(body), record)

    async def _stored_later(self, entry: Entry, exchange: Exchange, key: tuple[Any, ...],
                            plan: Plan, record: AccessRecord) -> Exchange:
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, self._code_whole, plan, entry.body)
        assert exchange.stored is not None
        head, body, label = self._keep(entry, key, exchange.stored, plan, body)
        exchange.stored, exchange.body = head, body
        return self._served(exchange, label, len(entry.body), len(body), record)

    def _code_whole(self, plan: Plan, body: bytes) -> bytes:
        try:
            if plan.decode is not None:
                body = codecs.decompress(plan.decode, body)
        except codecs.CorruptBody as exc:
            raise UpstreamError(502, f"the stored response's body does not decode: {exc}"
                                ) from None
        if plan.output is not None:
            return codecs.compress(plan.output, self.settings.level[plan.output], body)
        return body

    def _keep(self, entry: Entry, key: tuple[Any, ...], stored: StoredHead, plan: Plan,
              body: bytes) -> tuple[StoredHead, bytes, str | None]:
        """The variant kept with the entry (and its head, per base head and request kind)."""
        name = str(plan.output) if plan.output else IDENTITY
        if self.cache is not None:
            self.cache.add_encoding(entry, name, body)
        else:
            entry.encoded.setdefault(name, body)
        known = entry.coded_heads[key] = (_head(stored, plan, len(body)), body, plan.label)
        return known

    # ------------------------------------------------------------ passing responses
    def _passing(self, exchange: Exchange, asked: Mapping[str, str],
                 prefs: rfc.Preferences, target: Encoding | None, secrets_allowed: bool,
                 record: AccessRecord) -> Exchange | Awaitable[Exchange]:
        headers = exchange.headers
        body = exchange.body
        length: int | None
        if isinstance(body, bytes):
            length = len(body)
        else:
            text = headers.get("Content-Length", "")
            length = int(text) if text.isdigit() else None
        plan = self._plan(exchange.status, headers, asked, prefs, target, secrets_allowed,
                          length)
        if plan.unchanged:
            if plan.label is not None:
                record.encoding = plan.label
            return exchange
        _apply(headers, plan, None)
        if plan.decode is None and plan.output is None:  # Vary only: the body as it is
            return exchange
        # A small body is coded at once; one to decode streams whatever its size, as a few
        # KB may decode to gigabytes (codecs.PIECE)
        if isinstance(body, bytes) and len(body) < OFFLOAD_AT and plan.decode is None:
            coded = self._code_whole(plan, body)
            headers["Content-Length"] = str(len(coded))
            exchange.body = coded
            return self._served(exchange, plan.label, len(body), len(coded), record)
        headers.popall("Content-Length", None)  # the coded length is known at the end only
        stream = self._stream(body, plan, rfc.media_type(headers.get("Content-Type", "")))
        self._label(exchange, plan.label, record)
        if plan.decode is None:
            exchange.body = stream
            return exchange
        return _primed(exchange, stream)

    async def _stream(self, body: AsyncIterator[bytes] | bytes, plan: Plan, media: str
                      ) -> AsyncIterator[bytes]:
        decoder = codecs.decoder(plan.decode) if plan.decode is not None else None
        output = plan.output
        encoder = codecs.encoder(output, self.settings.level[output]) if output else None
        # An event stream's events must reach the client as they happen, not when the
        # codec's buffer fills: flush after each chunk (at some cost in ratio).
        eager = media == "text/event-stream"
        counted_in = self._bytes[(output, "in")] if output else None
        counted_out = self._bytes[(output, "out")] if output else None
        loop = asyncio.get_running_loop()

        def step(pieces: Iterator[bytes]) -> tuple[bytes, int] | None:
            """The next decoded piece coded for the client, with the piece's own size; None
            when the chunk is done."""
            piece = next(pieces, None)
            if piece is None or encoder is None:
                return None if piece is None else (piece, len(piece))
            if counted_in is not None:
                TALLY.add(counted_in, len(piece))
            out = encoder.compress(piece)
            return (out + encoder.flush() if eager else out), len(piece)

        try:
            async for chunk in _chunks(body):
                pieces = iter((chunk,)) if decoder is None else decoder.decompress(chunk)
                offload = len(chunk) >= OFFLOAD_AT
                while True:
                    done = (await loop.run_in_executor(None, step, pieces) if offload
                            else step(pieces))
                    if done is None:
                        break
                    out, size = done
                    if out:
                        if counted_out is not None:
                            TALLY.add(counted_out, len(out))
                        yield out
                    if decoder is None:
                        break  # the chunk was the one piece
                    # a small chunk that decodes large (a high ratio, or a bomb) is coded
                    # off the loop from its second piece on
                    offload = offload or size >= OFFLOAD_AT
            tail = decoder.finish() if decoder is not None else b""
            if encoder is not None:
                tail = (encoder.compress(tail) if tail else b"") + encoder.finish()
                if counted_out is not None:
                    TALLY.add(counted_out, len(tail))
            if tail:
                yield tail
        except codecs.CorruptBody as exc:
            raise UpstreamError(502, f"the upstream's {plan.decode} body does not decode: "
                                f"{exc}") from None

    # ------------------------------------------------------------ shared
    def _plan(self, status: int, fields: Mapping[str, str],
              asked: Mapping[str, str], prefs: rfc.Preferences, target: Encoding | None,
              secrets_allowed: bool, length: int | None) -> Plan:
        source = rfc.upstream_coding(fields)
        decode: Encoding | None = None
        if source is not None:
            if rfc.accepts(prefs, source) or rfc.no_transform(fields):
                return Plan(label=source)
            decode = rfc.decodable(source)
            if decode is None:
                return Plan(label=source)  # a coding we cannot undo: it goes as it came
            fields = _without_coding(fields)
            length = None
        reason = rfc.skip_reason(status, fields, asked, self.settings, secrets_allowed,
                                 length)
        # The answer depends on Accept-Encoding whenever it could have been coded for
        # some client: say so (RFC 9110 §12.5.5) so no cache after us mixes them up.
        vary = reason is None or reason == "credentials"
        if reason is not None or target is None:
            if decode is None:
                return Plan(vary=vary, unchanged=not vary)
            return Plan(decode=decode, vary=vary, label=IDENTITY)
        return Plan(decode=decode, output=target, vary=True, label=str(target))

    def _served(self, exchange: Exchange, label: str | None, size_in: int, size_out: int,
                record: AccessRecord) -> Exchange:
        if label is not None and label != IDENTITY and size_in != size_out:
            TALLY.add(self._bytes[(label, "in")], size_in)  # applied once a second
            TALLY.add(self._bytes[(label, "out")], size_out)
        self._label(exchange, label, record)
        return exchange

    @staticmethod
    def _label(exchange: Exchange, label: str | None, record: AccessRecord) -> None:
        """Cache-Status and the access log say which coding went out (RFC 9211 §2 allows
        parameters beyond its own; `encoding` is this cache's)."""
        if label is None:
            return
        record.encoding = label
        status = exchange.headers.get("Cache-Status")
        if status is not None:
            exchange.headers["Cache-Status"] = f"{status}; encoding={label}"


def _coded_key(stored: StoredHead, accept: str | None, secrets_allowed: bool,
               asked: Mapping[str, str]) -> tuple[Any, ...]:
    """What a stored entry's answer to a request depends on: its head, the request's
    Accept-Encoding, and whether a secret rules coding out (without Accept-Encoding secrets
    change nothing: identity either way)."""
    return (id(stored), accept, accept is not None and not secrets_allowed and (
        asked.get(_COOKIE) is not None or asked.get(_AUTHORIZATION) is not None))


class Plan:
    """What to do to one response: decode the upstream's coding, code with ours, add Vary."""

    __slots__ = ("decode", "label", "output", "unchanged", "vary")

    def __init__(self, decode: Encoding | None = None, output: Encoding | None = None,
                 vary: bool = False, label: str | None = None, unchanged: bool = False
                 ) -> None:
        self.decode, self.output, self.vary = decode, output, vary
        self.label = label
        self.unchanged = unchanged or (decode is None and output is None and not vary)


def _apply(headers: CIMultiDict[str], plan: Plan, length: int | None) -> None:
    """The head of the coded answer: coding, length, validator, Vary."""
    etag = headers.get("ETag")
    if plan.decode is not None:
        headers.popall("Content-Encoding", None)
        if etag is not None and not etag.startswith("W/"):
            # The upstream's strong tag names its coded bytes, not the decoded ones.
            headers.popall("ETag", None)
            etag = None
    if plan.output is not None:
        headers["Content-Encoding"] = str(plan.output)
        if etag is not None:
            headers["ETag"] = rfc.coded_etag(etag, plan.output)
    if plan.vary:
        _add_vary(headers)
    if length is not None:
        headers["Content-Length"] = str(length)


def _head(stored: StoredHead, plan: Plan, length: int | None) -> StoredHead:
    """The stored head as `plan` makes it; `length` None: the coded length is not known."""
    fields = stored.fields.copy()
    _apply(fields, plan, length)
    if length is None:
        fields.popall("Content-Length", None)
    raw = None
    if stored.raw is not None:
        try:
            raw = field_lines(fields)
        except ValueError:
            raw = None
    return StoredHead(fields, raw)


def _add_vary(headers: CIMultiDict[str]) -> None:
    vary = rfc.with_vary(headers.getall("Vary", []))
    if vary is not None:
        headers.popall("Vary", None)
        headers["Vary"] = vary


def _without_coding(fields: Mapping[str, str]) -> CIMultiDict[str]:
    view = CIMultiDict(fields)
    view.popall("Content-Encoding", None)
    return view


async def _chunks(body: AsyncIterator[bytes] | bytes) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        if body:
            yield body
        return
    async for chunk in body:
        yield chunk


async def _primed(exchange: Exchange, stream: AsyncIterator[bytes]) -> Exchange:
    """Read the first decoded bytes before the head goes out: a body that is corrupt from
    its start becomes a 502 (UpstreamError) instead of a 200 with nothing readable."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        exchange.body = b""
        return exchange
    except BaseException:
        exchange.release()
        raise

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for chunk in stream:
            yield chunk

    exchange.body = rest()
    return exchange

