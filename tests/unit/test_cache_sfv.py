"""RFC 8941 Dictionary parsing (what CDN-Cache-Control is, RFC 9213 §2.1), pure."""

from __future__ import annotations

from gateway.cache.sfv import Token, parse_dictionary


def test_rfc8941_4_2_2_dictionary_members_and_bare_items() -> None:
    parsed = parse_dictionary(['a=1, b=-2, c=1.5, d="x \\"y\\" \\\\", e=tok/en:1, f=:YWJj:, '
                               "g=?0, h, i=(1 \"two\" three);p=1, j=()"])
    assert parsed == {"a": 1, "b": -2, "c": 1.5, "d": 'x "y" \\', "e": "tok/en:1",
                      "f": b"abc", "g": False, "h": True, "i": (1, "two", "three"), "j": ()}
    assert parsed is not None and isinstance(parsed["e"], Token)
    assert not isinstance(parsed["d"], Token)


def test_rfc8941_4_2_lines_combined_spaces_and_repeated_keys() -> None:
    assert parse_dictionary(["a=1", "b=2"]) == {"a": 1, "b": 2}
    assert parse_dictionary(["  a=1 ,\tb;x=?1;y=\"z\""]) == {"a": 1, "b": True}
    assert parse_dictionary(["a=1, a=2"]) == {"a": 2}  # the last value wins (§4.2.2)
    assert parse_dictionary([""]) == {}
    assert parse_dictionary(["f=:YWJj:"]) == {"f": b"abc"}
    assert parse_dictionary(["f=:YQ:"]) == {"f": b"a"}  # unpadded base64 tolerated (§4.2.7)


def test_rfc8941_4_2_any_failure_fails_the_whole_field() -> None:
    for text in ("a=1, &&&&&", "A=1", "a =1", "a= 1", "a=1,", "a=1,,b", "a=1 b", "1a=2",
                 "a=1234567890123456", "a=1234567890123.5", "a=1.2345", "a=1.", "a=-",
                 'a="unterminated', 'a="\\x"', 'a="é"', "a=?2", "a=:not base64:", "a=(1 2",
                 "a=(1,2)", "a=1;B=2", "a=1;", "a=\x00", "a=#"):
        assert parse_dictionary([text]) is None, text
