"""The canonical request target (gateway/target.py), against RFC 3986 §5.2.4, §5.4, §6.2.2
and RFC 9112 §3.2."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from gateway.cache.key import url_key
from gateway.config import ConfigError, load_config
from gateway.target import (
    _PLAIN,
    BadTarget,
    Target,
    TargetReader,
    TargetRules,
    canonical_path,
    parse_target,
    without_params,
)

KEEP_SLASHES = TargetRules(merge_slashes=False)

# RFC 3986 §5.4.1 "normal examples", base "http://a/b/c/d;p?q": each reference merged with
# the base path (§5.2.3) is "/b/c/" + reference, and remove_dot_segments of that is the path
# of the RFC's answer.
RFC3986_5_4_1 = [
    ("g", "/b/c/g"), ("./g", "/b/c/g"), ("g/", "/b/c/g/"), (";x", "/b/c/;x"),
    ("g;x", "/b/c/g;x"), (".", "/b/c/"), ("./", "/b/c/"), ("..", "/b/"), ("../", "/b/"),
    ("../g", "/b/g"), ("../..", "/"), ("../../", "/"), ("../../g", "/g"),
]

# RFC 3986 §5.4.2 "abnormal examples" that stay below the root.
RFC3986_5_4_2 = [
    ("g.", "/b/c/g."), (".g", "/b/c/.g"), ("g..", "/b/c/g.."), ("..g", "/b/c/..g"),
    ("./../g", "/b/g"), ("./g/.", "/b/c/g/"), ("g/./h", "/b/c/g/h"), ("g/../h", "/b/c/h"),
    ("g;x=1/./y", "/b/c/g;x=1/y"), ("g;x=1/../y", "/b/c/y"),
]


@pytest.mark.parametrize(("reference", "path"), RFC3986_5_4_1 + RFC3986_5_4_2)
def test_rfc3986_5_4_dot_segments_resolve_as_the_rfc_examples(reference: str, path: str
                                                              ) -> None:
    assert canonical_path("/b/c/" + reference, KEEP_SLASHES) == path
    assert canonical_path("/b/c/" + reference) == path


@pytest.mark.parametrize("reference", ["../../../g", "../../../../g"])
def test_rfc3986_5_4_2_climbing_above_the_root_is_refused_not_clamped(reference: str) -> None:
    # The RFC resolves these to "/g"; a client of a reverse proxy has no reason to send
    # them, and an upstream that clamps differently would see another path.
    with pytest.raises(BadTarget, match="above the root"):
        canonical_path("/b/c/" + reference)


def test_rfc3986_5_2_4_remove_dot_segments_examples() -> None:
    assert canonical_path("/a/b/c/./../../g") == "/a/g"
    assert canonical_path("/mid/content=5/../6") == "/mid/6"


@pytest.mark.parametrize("path", ["/..", "/../g", "/a/../..", "/./.."])
def test_rfc3986_5_4_2_dot_dot_at_the_root_is_refused(path: str) -> None:
    with pytest.raises(BadTarget):
        canonical_path(path)


@pytest.mark.parametrize("path", ["/public/..;/admin", "/public/.;x/admin", "/a/%2e%2e;/b",
                                  "/a/..;jsessionid=1"])
def test_dot_segments_with_parameters_are_refused(path: str) -> None:
    # RFC 3986 keeps "..;" as a segment; Tomcat strips ";..." and resolves "..".
    with pytest.raises(BadTarget, match="parameters"):
        canonical_path(path)
    assert canonical_path("/a/..b;/c;x/.a;") == "/a/..b;/c;x/.a;"


def test_rfc3986_6_2_2_example_normalises_case_escapes_and_dot_segments() -> None:
    # "eXAMPLE://a/./b/../b/%63/%7bfoo%7d" is equivalent to "example://a/b/c/%7Bfoo%7D".
    assert canonical_path("/./b/../b/%63/%7bfoo%7d") == "/b/c/%7Bfoo%7D"
    target = parse_target("HTTP://www.Example.COM/./b/../b/%63/%7bfoo%7d", ["ignored"])
    assert target == Target("/b/c/%7Bfoo%7D", "", "www.example.com", absolute=True)


def test_rfc3986_6_2_2_1_escapes_are_upper_cased() -> None:
    assert canonical_path("/a%3ab/%e2%82%ac") == "/a%3Ab/%E2%82%AC"


@pytest.mark.parametrize(("path", "canonical"), [
    ("/%7Euser", "/~user"), ("/%41%5a%61%7A%30%39", "/AZaz09"), ("/%2D%2E%5F%7E", "/-._~"),
    ("/x/%2e%2e/auth", "/auth"), ("/x/%2E/y", "/x/y"), ("/%69nternal/admin", "/internal/admin"),
])
def test_rfc3986_6_2_2_2_escapes_of_unreserved_characters_are_decoded(
        path: str, canonical: str) -> None:
    assert canonical_path(path) == canonical


@pytest.mark.parametrize(("path", "canonical"), [
    ("/a%2fb", "/a%2Fb"), ("/a%2Fb", "/a%2Fb"), ("/a%5cb", "/a%5Cb")])
def test_escaped_slashes_are_kept_encoded_and_never_separate(path: str, canonical: str
                                                             ) -> None:
    assert canonical_path(path) == canonical
    assert canonical_path("/x/..%2F..%2Fetc") == "/x/..%2F..%2Fetc"  # one segment


def test_escaped_slashes_reject_refuses_them() -> None:
    rules = TargetRules(reject_escaped_slashes=True)
    for path in ("/a%2fb", "/a%5Cb", "/a\\b"):
        with pytest.raises(BadTarget, match="escaped_slashes"):
            canonical_path(path, rules)
    assert canonical_path("/a%2Db", rules) == "/a-b"


@pytest.mark.parametrize("path", ["/a%zz", "/a%", "/a%4", "/%g0"])
def test_invalid_percent_encoding_is_refused(path: str) -> None:
    with pytest.raises(BadTarget, match="two hex digits"):
        canonical_path(path)


def test_encoded_nul_is_refused() -> None:
    with pytest.raises(BadTarget, match="NUL"):
        canonical_path("/a%00b")


@pytest.mark.parametrize("path", ["/a\x00b", "/a\x01", "/a\tb", "/a b", "/a\x7f", "/a\r\nb"])
def test_control_bytes_and_spaces_are_refused(path: str) -> None:
    with pytest.raises(BadTarget, match="byte 0x"):
        canonical_path(path)


def test_rfc9112_3_2_a_fragment_is_refused() -> None:
    for raw in ("/a#b", "/a?b#c"):
        with pytest.raises(BadTarget, match="fragment"):
            parse_target(raw, ["h"])


def test_characters_outside_the_uri_grammar_are_percent_encoded_as_utf8() -> None:
    assert canonical_path("/caf\u00e9") == "/caf%C3%A9"
    assert canonical_path('/a"<>^`{|}') == "/a%22%3C%3E%5E%60%7B%7C%7D"
    assert canonical_path("/a\\b") == "/a%5Cb"


def test_merge_slashes_merges_repeated_slashes_before_dot_segments() -> None:
    assert canonical_path("//internal//admin///") == "/internal/admin/"
    assert canonical_path("/a//../b") == "/b"  # as nginx: merged while parsed
    assert canonical_path("//") == "/"


def test_merge_slashes_off_keeps_empty_segments() -> None:
    assert canonical_path("//internal//admin", KEEP_SLASHES) == "//internal//admin"
    assert canonical_path("/a//../b", KEEP_SLASHES) == "/a/b"  # RFC 3986 §5.2.4 as written


def test_a_canonical_target_comes_back_unchanged() -> None:
    for raw in ("/", "/a", "/a/b/", "/api/v1/market/x.json?b=2&a=1", "/a:b@c/d;e=f,g",
                "/.well-known/x", "/a..b/...", "/?", "/a?x=%zz&y=/?"):
        target = parse_target(raw, ["Example.com:8080"])
        assert target.path_qs == raw
        assert target.authority == "example.com:8080"
        assert not target.absolute


def test_the_query_is_kept_as_received() -> None:
    target = parse_target("/a/../b?x=%2e%2e&y=%zz&z=a//b", ["h"])
    assert target == Target("/b", "?x=%2e%2e&y=%zz&z=a//b", "h")


def test_rfc9112_3_2_2_absolute_form_authority_replaces_host() -> None:
    target = parse_target("http://API.internal.example:8080/internal/../x?q=1",
                          ["other.example"])
    assert target == Target("/x", "?q=1", "api.internal.example:8080", absolute=True)
    assert parse_target("https://h?q", []) == Target("/", "?q", "h", absolute=True)


@pytest.mark.parametrize(("raw", "why"), [
    ("ftp://h/x", "http or https"), ("http://user@h/x", "userinfo"),
    ("http://h:99999999/", "host"), ("http:///x", "host"), ("*", "absolute path"),
    ("h:443", "absolute path"), ("x/y", "absolute path"),
])
def test_rfc9112_3_2_other_target_forms_are_refused(raw: str, why: str) -> None:
    with pytest.raises(BadTarget, match=why):
        parse_target(raw, ["h"])


def test_rfc9112_3_2_host_must_be_one_valid_field() -> None:
    with pytest.raises(BadTarget, match="more than one Host"):
        parse_target("/a", ["a.example", "b.example"])
    with pytest.raises(BadTarget, match="needs a Host"):
        parse_target("/a", [])
    assert parse_target("/a", [], http11=False) == Target("/a", "", "")
    for host in ("victim.example/y", "a b", "a@b", "a?b", "a#b", ""):
        with pytest.raises(BadTarget, match="Host field"):
            parse_target("/a", [host])
    assert parse_target("/a", ["[::1]:8080"]).authority == "[::1]:8080"


def test_without_params_drops_what_the_cache_key_drops() -> None:
    ignore = frozenset({"utm_source", "utm_campaign"})
    cases = ["?utm_source=%3Cscript%3E&id=7", "?id=7&utm_campaign=x&utm_source",
             "?utm_source=a", "?id=7&id=8", "", "?utm_source=a&&b=", "?Utm_source=a"]
    for qs in cases:
        kept = without_params(qs, ignore)
        assert "utm_" not in kept
        assert url_key(f"http://h/p{qs}", ignore) == url_key(f"http://h/p{kept}", ignore)
    assert without_params("?utm_source=a&id=7&b", ignore) == "?id=7&b"
    assert without_params("?utm_source=a", ignore) == ""
    assert without_params("?a=1", frozenset()) == "?a=1"


def test_route_paths_must_be_written_in_canonical_form(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("""\
upstreams:
  api: {url: "http://127.0.0.1:8000"}
routes:
  - name: a
    match: {path_prefix: "/caf\u00e9/"}
    upstream: api
  - name: b
    match: {path: /a/./b}
    upstream: api
    strip_prefix: /x%2fy
  - name: c
    match: {path_prefix: /a/../../b}
    upstream: api
  - name: ok
    match: {path_prefix: "/a%2Fb/~x//y"}
    upstream: api
    strip_prefix: /a%2Fb
""")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    issues = [str(issue) for issue in caught.value.issues]
    assert len(issues) == 4, issues
    assert "routes[0].match.path_prefix: requests are matched in canonical form" in issues[0]
    assert "write '/caf%C3%A9/'" in issues[0]
    assert "routes[1].match.path:" in issues[1] and "write '/a/b'" in issues[1]
    assert "routes[1].strip_prefix:" in issues[2] and "write '/x%2Fy'" in issues[2]
    assert "routes[2].match.path_prefix:" in issues[3] and "above the root" in issues[3]


def test_target_reader_remembers_answers_but_never_refusals_and_stays_bounded() -> None:
    reader = TargetReader(TargetRules(reject_escaped_slashes=True))
    assert reader.read("/a/./b", ["H"]) == parse_target("/a/./b", ["H"])
    assert reader.read("/a/./b", ["H"]) is reader.read("/a/./b", ["H"])
    for _ in range(2):  # the rules hold for a remembered target too
        with pytest.raises(BadTarget, match="escaped_slashes"):
            reader.read("/a%2Fb", ["h"])
    with pytest.raises(BadTarget, match="more than one Host"):
        reader.read("/a", ["h", "h"])
    for n in range(TargetReader.MEMO_MAX + 10):
        reader.read(f"/n/{n}", ["h"])
    assert len(reader._memo) <= TargetReader.MEMO_MAX
    long = "/" + "x" * TargetReader.MEMO_TARGET
    assert reader.read(long, ["h"]).path == long
    assert (long, "h") not in reader._memo


def test_canonical_paths_are_fixed_points_and_the_fast_path_agrees() -> None:
    """Random paths over the characters that matter: every answer is canonical (a second
    pass changes nothing, no dot or empty segment, no lower-case or unreserved escape), and
    whatever the one-regex fast path lets through unchanged is what the full walk gives."""
    rng = random.Random(3986)
    pieces = ["/", "/", "a", "B", ".", "..", "%2e", "%2E", "%2f", "%5C", "%41", "%7e", "%e2",
              "%", "~", ";", "=", "@", ":", "\\", "\u00e9", "?", "x=1", "&"]
    refused = 0
    for _ in range(5000):
        raw = "/" + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        try:
            target = parse_target(raw, ["h"])
        except BadTarget:
            refused += 1
            continue
        path = target.path
        assert canonical_path(path) == path, raw
        segments = path.split("/")[1:]
        assert "" not in segments[:-1] and "." not in segments and ".." not in segments, raw
        assert not re.search(r"%(?:[0-9A-F][a-f]|[a-f][0-9A-Fa-f]|2[DdEe]|5[Ff]|7[Ee]|"
                             r"[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9])", path), raw
        if _PLAIN.fullmatch(raw) and "//" not in raw and "/." not in raw:
            assert target.path_qs == raw, raw
    assert 0 < refused < 5000
