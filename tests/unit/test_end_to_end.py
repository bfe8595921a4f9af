"""RFC 9110 §7.6.1: hop-by-hop fields, and every field Connection names, stop at the proxy."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy import end_to_end


def fields(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_hop_by_hop_and_connection_named_fields_are_dropped_order_and_repeats_kept() -> None:
    got = end_to_end(fields(
        ("Host", "a"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
        ("Set-Cookie", "a=1"), ("Keep-Alive", "300"), ("TE", "trailers"),
        ("Set-Cookie", "b=2"), ("Transfer-Encoding", "chunked"), ("x-stay", "1"),
    ))
    assert list(got.items()) == [("Host", "a"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                 ("x-stay", "1")]


def test_connection_named_field_in_any_case_and_repeated_connection_headers() -> None:
    got = end_to_end(fields(("connection", "X-One"), ("Connection", " x-two ,"),
                            ("x-one", "1"), ("X-TWO", "2"), ("X-Three", "3")))
    assert list(got.items()) == [("X-Three", "3")]


def test_websocket_handshake_keeps_upgrade_and_connection_but_not_other_hops() -> None:
    got = end_to_end(fields(("Connection", "Upgrade, X-Hop"), ("Upgrade", "websocket"),
                            ("X-Hop", "1"), ("Keep-Alive", "5"), ("Sec-WebSocket-Key", "k")),
                     keep_upgrade=True)
    assert list(got.items()) == [("Connection", "Upgrade, X-Hop"), ("Upgrade", "websocket"),
                                 ("Sec-WebSocket-Key", "k")]


def test_the_copy_is_independent_of_the_original() -> None:
    original = CIMultiDict([("X-A", "1")])
    got = end_to_end(CIMultiDictProxy(original))
    got["X-B"] = "2"
    assert "X-B" not in original
