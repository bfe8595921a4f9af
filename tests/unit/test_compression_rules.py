"""gateway.compression.rules, pure: each test is named after the RFC rule it checks
(RFC 9110 §12.5.3 Accept-Encoding, §8.8 validators, RFC 9111 §5.2.2.6 no-transform)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.compression import rules
from gateway.config.model import Compression, Encoding

OFFERED = (Encoding.ZSTD, Encoding.BR, Encoding.GZIP)
SETTINGS = Compression()


def chosen(field: str | None) -> Encoding | None:
    return rules.choose(rules.preferences(field), OFFERED)


def test_12_5_3_no_field_gets_identity() -> None:
    assert chosen(None) is None


def test_12_5_3_an_empty_field_wants_no_coding() -> None:
    assert chosen("") is None


def test_12_5_3_highest_qvalue_wins_and_ties_go_to_the_configured_order() -> None:
    assert chosen("gzip;q=0.9, br;q=0.3") is Encoding.GZIP
    assert chosen("gzip, br") is Encoding.BR
    assert chosen("gzip, br, zstd") is Encoding.ZSTD


def test_12_5_3_star_matches_codings_not_listed() -> None:
    assert chosen("*") is Encoding.ZSTD
    assert chosen("zstd;q=0, *") is Encoding.BR
    assert chosen("zstd;q=0, br;q=0, *;q=0.1") is Encoding.GZIP


def test_12_5_3_q_zero_means_not_acceptable() -> None:
    assert chosen("gzip;q=0") is None
    assert chosen("gzip;q=0.000") is None


def test_12_5_3_identity_with_a_higher_q_is_preferred_over_a_coding() -> None:
    assert chosen("gzip;q=0.5, identity") is None
    assert chosen("gzip, identity;q=0.5") is Encoding.GZIP


def test_12_5_3_nothing_acceptable_still_answers_identity() -> None:
    prefs = rules.preferences("identity;q=0")
    assert rules.choose(prefs, OFFERED) is None
    assert rules.accepts(prefs, "identity")  # what goes out when nothing else may


def test_8_4_1_3_x_gzip_is_gzip_and_codings_are_case_insensitive() -> None:
    assert chosen("x-gzip") is Encoding.GZIP
    assert chosen("GZIP") is Encoding.GZIP


def test_12_4_2_a_malformed_qvalue_drops_that_member_only() -> None:
    assert chosen("br;q=1.5, gzip") is Encoding.GZIP
    assert chosen("br;q=abc, gzip;q=0.2") is Encoding.GZIP
    assert chosen("br;q=0.1234") is None


def test_upstream_coding_the_client_accepts_passes() -> None:
    prefs = rules.preferences("gzip, br")
    assert rules.accepts(prefs, "gzip")
    assert not rules.accepts(prefs, "zstd")
    assert not rules.accepts(rules.NO_FIELD, "gzip")


def _reason(response: dict[str, str], request: dict[str, str] | None = None,
            status: int = 200, length: int | None = 5000, secrets: bool = False
            ) -> str | None:
    fields = {"Content-Type": "application/json", **response}
    return rules.skip_reason(status, CIMultiDict(fields), CIMultiDict(request or {}),
                             SETTINGS, secrets, length)


def test_eligible_response() -> None:
    assert _reason({}) is None
    assert _reason({}, length=None) is None  # unknown length: a stream, compressed


@pytest.mark.parametrize(("status", "reason"), [(204, "status"), (206, "status"),
                                                (304, "status"), (101, "status")])
def test_15_no_content_and_partial_content_are_never_coded(status: int, reason: str) -> None:
    assert _reason({}, status=status) == reason


def test_8_4_an_encoded_body_is_not_coded_again() -> None:
    assert _reason({"Content-Encoding": "gzip"}) == "encoded"
    assert _reason({"Content-Encoding": "identity"}) is None


def test_rfc9111_5_2_2_6_no_transform_forbids_coding() -> None:
    assert _reason({"Cache-Control": "public, no-transform"}) == "no-transform"


def test_types_and_min_size() -> None:
    assert _reason({"Content-Type": "image/png"}) == "type"
    assert _reason({"Content-Type": "text/html; charset=utf-8"}) is None
    assert _reason({}, length=100) == "small"
    assert _reason({"Content-Type": ""}) == "type"


def test_breach_set_cookie_and_request_credentials_unless_the_route_opts_in() -> None:
    assert _reason({"Set-Cookie": "a=b"}) == "set-cookie"
    assert _reason({}, {"Cookie": "a=b"}) == "credentials"
    assert _reason({}, {"Authorization": "Bearer t"}) == "credentials"
    assert _reason({"Set-Cookie": "a=b"}, {"Cookie": "a=b"}, secrets=True) is None


def test_8_8_1_strong_etag_is_distinct_per_coding_weak_stays() -> None:
    assert rules.coded_etag('"v1"', "br") == '"v1-br"'
    assert rules.coded_etag('W/"v1"', "br") == 'W/"v1"'


def test_13_1_2_if_none_match_with_coded_tags_is_validated_as_the_plain_tag() -> None:
    found = rules.plain_validators('"a-br", "b", W/"c-gzip"', None, ("zstd", "br", "gzip"))
    assert found is not None
    assert found.if_none_match == '"a", "b", W/"c"'
    assert found.coded == {"br": '"a-br"', "gzip": 'W/"c-gzip"'}
    assert not found.drop_range
    assert rules.plain_validators('"a", "b"', None, ("br",)) is None
    assert rules.plain_validators("*", None, ("br",)) is None


def test_13_1_5_if_range_with_a_coded_tag_never_holds() -> None:
    found = rules.plain_validators(None, '"a-br"', ("br",))
    assert found is not None and found.drop_range and found.if_none_match is None


def test_12_5_5_vary_gains_accept_encoding_once() -> None:
    assert rules.with_vary([]) == "Accept-Encoding"
    assert rules.with_vary(["Cookie"]) == "Cookie, Accept-Encoding"
    assert rules.with_vary(["accept-encoding"]) is None
    assert rules.with_vary(["*"]) is None


def test_route_compression_always_without_the_block_is_warned_about() -> None:
    from gateway.config.lint import compression_warnings
    from gateway.config.model import Config as Whole
    from gateway.config.model import Match, Route, RouteCompression, UpstreamRef

    route = Route("r", Match(path_prefix="/"), UpstreamRef("a", "a"),
                  compression=RouteCompression.ALWAYS)
    [warning] = compression_warnings(Whole(source="x", routes=(route,)))
    assert warning.startswith("routes[0] (r).compression: 'always' compresses nothing")
    assert compression_warnings(Whole(source="x", routes=(route,),
                                      compression=Compression())) == []
