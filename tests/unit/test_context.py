from __future__ import annotations

import ipaddress
import random

from multidict import CIMultiDict

from gateway.config.model import CONTEXT_FIELDS, ContextSettings, HeaderSource
from gateway.context import (
    RequestContext,
    build_context,
    classify,
    client_address,
    field_source,
    hash_api_key,
    resolve_client_ip,
)

TRUSTED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))
SETTINGS = ContextSettings(
    trusted_proxies=TRUSTED,
    fields={"user_id": HeaderSource("X-User-Id"), "tenant_id": HeaderSource("X-Tenant-Id"),
            "subscription_tier": HeaderSource("X-Tier", default="free"),
            "api_key": HeaderSource("X-Api-Key")},
    attributes={"app_version": HeaderSource("X-App-Version")},
)


def test_client_ip_is_rightmost_untrusted_hop() -> None:
    assert resolve_client_ip("127.0.0.1", ["203.0.113.5", "198.51.100.7", "10.0.0.3"],
                             TRUSTED) == "198.51.100.7"


def test_client_ip_from_untrusted_peer_is_the_peer() -> None:
    assert resolve_client_ip("198.51.100.1", ["203.0.113.5"], TRUSTED) == "198.51.100.1"


def test_all_hops_trusted_gives_leftmost_trusted() -> None:
    assert resolve_client_ip("127.0.0.1", ["10.0.0.9"], TRUSTED) == "10.0.0.9"
    assert resolve_client_ip("127.0.0.1", [], TRUSTED) == "127.0.0.1"


def test_garbage_hop_stops_the_walk() -> None:
    assert resolve_client_ip("127.0.0.1", ["1.2.3.4", "not-an-ip", "10.0.0.2"],
                             TRUSTED) == "10.0.0.2"


def test_ipv6_and_ports() -> None:
    assert resolve_client_ip("127.0.0.1", ["[2001:db8::1]:443"], TRUSTED) == "2001:db8::1"
    assert resolve_client_ip("127.0.0.1", ["203.0.113.5:5000"], TRUSTED) == "203.0.113.5"


def test_identity_from_trusted_peer() -> None:
    headers = CIMultiDict({"x-user-id": "u1", "X-Tenant-Id": "acme", "X-Api-Key": "secret",
                           "X-App-Version": "2.7.1"})
    ctx, trusted = build_context(SETTINGS, "127.0.0.1", headers, ["203.0.113.5"])
    assert trusted
    assert (ctx.client_ip, ctx.user_id, ctx.tenant_id) == ("203.0.113.5", "u1", "acme")
    assert ctx.subscription_tier == "free"  # the default
    assert ctx.api_key == hash_api_key("secret") and "secret" not in ctx.api_key
    assert ctx.get("attributes.app_version") == "2.7.1"
    assert ctx.get("user_id") == "u1" and ctx.get("attributes.nope") is None


def test_identity_from_untrusted_peer_is_ignored() -> None:
    headers = CIMultiDict({"X-User-Id": "admin", "X-Tier": "enterprise"})
    ctx, trusted = build_context(SETTINGS, "198.51.100.1", headers, ["1.1.1.1"])
    assert not trusted
    assert ctx.user_id is None and ctx.subscription_tier == "free"
    assert ctx.client_ip == "198.51.100.1"


def test_memoised_trust_verdict_belongs_to_its_trusted_set() -> None:
    # The same address asked twice, and under another config's trusted set (a reload).
    assert classify("10.1.2.3", TRUSTED) == ("10.1.2.3", True)
    assert classify("10.1.2.3", TRUSTED) == ("10.1.2.3", True)
    other = (ipaddress.ip_network("192.0.2.0/24"),)
    assert classify("10.1.2.3", other) == ("10.1.2.3", False)
    assert classify("[2001:db8::1]:443", other) == ("2001:db8::1", False)
    assert classify("not-an-ip", TRUSTED) == (None, False)


def test_context_follows_every_input() -> None:
    def ctx_of(peer: str, env: str = "", forwarded: tuple[str, ...] = (),
               **headers: str) -> RequestContext:
        hdrs = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
        return build_context(SETTINGS, peer, hdrs, forwarded, env)[0]

    first = ctx_of("127.0.0.1", X_User_Id="u1")
    assert ctx_of("127.0.0.1", X_User_Id="u1") == first
    assert ctx_of("127.0.0.1", X_User_Id="u2").user_id == "u2"
    assert ctx_of("127.0.0.1", X_User_Id="u1", X_Tier="pro").subscription_tier == "pro"
    assert ctx_of("127.0.0.1", "staging", X_User_Id="u1").environment == "staging"
    assert ctx_of("127.0.0.1", "", ("203.0.113.9",), X_User_Id="u1").client_ip == "203.0.113.9"
    # The same header values from an untrusted peer are not believed.
    assert ctx_of("198.51.100.1", X_User_Id="u1").user_id is None
    # Values come as the HTTP parser gives them, the whitespace around them removed (RFC
    # 9110 §5.5; the parser's side: tests/integration/test_header_hygiene.py): a blank one
    # is "", which falls back to the default, and nothing more is removed, so the context
    # reads what the upstream gets.
    assert ctx_of("127.0.0.1", X_Tier="").subscription_tier == "free"
    assert ctx_of("127.0.0.1", X_User_Id="u3\u00a0", X_App_Version="\u30002.1.0") == \
        RequestContext(client_ip="127.0.0.1", user_id="u3\u00a0", subscription_tier="free",
                       attributes={"app_version": "\u30002.1.0"})
    assert ctx_of("127.0.0.1", X_App_Version="").attributes == {}  # blank: no attribute
    assert ctx_of("127.0.0.1", X_Api_Key="k2").api_key == hash_api_key("k2")


def test_settings_without_attributes_or_fields() -> None:
    bare = ContextSettings(trusted_proxies=TRUSTED)
    ctx, trusted = build_context(bare, "127.0.0.1", CIMultiDict({"X-User-Id": "u1"}))
    assert trusted and ctx == RequestContext(client_ip="127.0.0.1")
    assert dict(ctx.attributes) == {} and ctx.get("attributes.x") is None


def test_forwarded_for_read_from_the_headers_only_for_a_trusted_peer() -> None:
    headers = CIMultiDict([("X-Forwarded-For", "203.0.113.5, 10.0.0.2"),
                           ("X-Forwarded-For", "10.0.0.3"), ("X-User-Id", "u1")])
    ctx, trusted = build_context(SETTINGS, "127.0.0.1", headers)
    assert trusted and ctx.client_ip == "203.0.113.5" and ctx.user_id == "u1"
    ctx, trusted = build_context(SETTINGS, "198.51.100.1", headers)
    assert not trusted and ctx.client_ip == "198.51.100.1" and ctx.user_id is None


def random_headers(rng: random.Random) -> CIMultiDict[str]:
    """Identity headers present, absent, blank or holding spaces that are not the ones
    around a field value (the parser removes those); sometimes a forwarding chain."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, values in (("X-User-Id", ["u1", "u2\u00a0", "user-3"]), ("X-Tenant-Id", ["acme"]),
                         ("X-Tier", ["gold", "\u2003business"]), ("X-Api-Key", ["k1", "k 2"]),
                         ("X-App-Version", ["2.7.0", "3.0.0\u3000"]), ("X-Seats", ["12"]),
                         ("X-Forwarded-For", ["203.0.113.5", "10.0.0.2, 198.51.100.7"])):
        roll = rng.random()
        if roll < 0.5:
            headers[name] = rng.choice(values)
        elif roll < 0.65:
            headers[name] = ""  # blank (the parser removed what surrounded nothing)
    return headers


def test_generated_field_reading_gives_what_build_context_gives() -> None:
    """field_source's statements (flag plans run them instead of building a context) read
    every field exactly as build_context does: trust, blanks, defaults, API key hashing."""
    settings = ContextSettings(
        trusted_proxies=TRUSTED, fields=SETTINGS.fields,
        attributes={"app_version": HeaderSource("X-App-Version"),
                    "seats": HeaderSource("X-Seats", default="5")})
    names = [*CONTEXT_FIELDS, "environment", "attributes.app_version", "attributes.seats",
             "attributes.undeclared"]
    source = field_source(settings, names)
    code = "\n".join(["def from_headers(headers, peer, trusted):",
                      *("    " + line for line in source.from_headers),
                      f"    return {', '.join(source.variables[n] for n in names)}",
                      "def from_context(ctx):",
                      *("    " + line for line in source.from_context),
                      f"    return {', '.join(source.variables[n] for n in names)}"])
    namespace = {**source.constants, "_environment": "staging"}
    exec(code, namespace)  # noqa: S102
    rng = random.Random(7)
    for _ in range(500):
        headers = random_headers(rng)
        peer = rng.choice(["127.0.0.1", "10.1.2.3", "198.51.100.1"])
        ctx, trusted = build_context(settings, peer, headers, environment="staging")
        want = tuple(ctx.get(n) if n != "environment" else ctx.environment for n in names)
        client_ip, peer_trusted = client_address(settings, peer, headers)
        assert (client_ip, peer_trusted) == (ctx.client_ip, trusted)
        got = namespace["from_headers"](headers, peer, classify(peer, TRUSTED)[1])
        assert got == want, (headers, peer)
        assert namespace["from_context"](ctx) == want
