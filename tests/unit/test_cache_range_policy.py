"""Ranges of a stored response as pure functions (gateway/cache/policy.py), named after the
RFC 9110 clauses they check."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.cache.policy import (
    ByteRange,
    NotSatisfiable,
    byte_range,
    if_range_holds,
    requested_range,
)

LM = "Tue, 01 Dec 2026 10:00:00 GMT"
STORED = CIMultiDict({"ETag": '"v1"', "Last-Modified": LM,
                      "Date": "Tue, 01 Dec 2026 10:00:01 GMT"})


@pytest.mark.parametrize(("value", "first", "last"), [
    ("bytes=0-499", 0, 499),                 # §14.1.2's examples, on a 10000-byte whole
    ("bytes=500-999", 500, 999),
    ("bytes=-500", 9500, 9999),
    ("bytes=9500-", 9500, 9999),
    ("bytes=0-0", 0, 0),
    ("bytes=-1", 9999, 9999),
    ("bytes=9000-20000", 9000, 9999),        # last-pos past the end: to the end
    ("bytes=-20000", 0, 9999),               # suffix longer than the whole: the whole
    ("Bytes=1-2", 1, 2),                     # range units are case-insensitive (§14.1)
    ("bytes = 1 - 2", 1, 2),
    ("bytes=,1-2,", 1, 2),                   # empty list elements (§5.6.1)
    ("bytes=5-" + "9" * 40, 5, 9999),        # a huge last-pos, without a huge int()
])
def test_rfc9110_14_1_2_byte_range_of_a_single_range(value: str, first: int, last: int
                                                     ) -> None:
    assert byte_range(value, 10000) == ByteRange(first, last, 10000)


def test_rfc9110_14_4_content_range_of_a_part_and_of_a_refusal() -> None:
    assert ByteRange(0, 499, 1234).content_range == "bytes 0-499/1234"
    assert NotSatisfiable(1234).content_range == "bytes */1234"


@pytest.mark.parametrize("value", [
    "bytes=10000-", "bytes=10000-10001", "bytes=-0", "bytes=20000-,-0", "bytes=" + "9" * 40 + "-"])
def test_rfc9110_14_1_2_unsatisfiable_ranges(value: str) -> None:
    assert byte_range(value, 10000) == NotSatisfiable(10000)


@pytest.mark.parametrize("value", [
    "bytes=5-4",          # last-pos before first-pos: invalid (§14.1.2)
    "bytes=a-b", "bytes=1-2x", "bytes=-", "bytes=--1", "bytes=1", "bytes=",
    "bytes 0-1", "items=0-1", "=0-1", "bytes=\u0661-\u0662",  # Arabic-Indic digits
    "bytes=0-1,5-4",      # one invalid spec invalidates the set
])
def test_rfc9110_14_2_invalid_range_is_ignored(value: str) -> None:
    assert byte_range(value, 10000) is None


def test_rfc9110_14_2_several_ranges_are_answered_whole_unless_none_is_satisfiable() -> None:
    assert byte_range("bytes=0-1,5-6", 10000) is None
    assert byte_range("bytes=0-1,20000-", 10000) is None
    assert byte_range("bytes=20000-,30000-", 10000) == NotSatisfiable(10000)


def test_an_empty_representation_is_answered_whole() -> None:
    assert byte_range("bytes=0-", 0) is None
    assert byte_range("bytes=-5", 0) is None


@pytest.mark.parametrize(("if_range", "holds"), [
    (None, True),
    ('"v1"', True),
    ('"v2"', False),
    ('W/"v1"', False),     # §13.1.5: strong comparison, a weak tag never matches
    (LM, True),            # the stored Last-Modified, a second before Date: strong
    ("Tue, 01 Dec 2026 10:00:00 +0000", False),  # not the field value exactly
    ("Tue, 01 Dec 2026 09:00:00 GMT", False),
    ("garbage", False),
])
def test_rfc9110_13_1_5_if_range(if_range: str | None, holds: bool) -> None:
    assert if_range_holds(if_range, STORED) is holds


def test_rfc9110_13_1_5_if_range_against_a_weak_stored_etag_or_last_modified() -> None:
    assert not if_range_holds('W/"v1"', CIMultiDict({"ETag": 'W/"v1"'}))
    assert not if_range_holds('"v1"', CIMultiDict({"ETag": 'W/"v1"'}))
    same_second = CIMultiDict({"Last-Modified": LM, "Date": LM})  # §8.8.2.2: weak
    assert not if_range_holds(LM, same_second)
    assert not if_range_holds(LM, CIMultiDict({"Last-Modified": LM}))  # no Date to tell


def test_rfc9110_14_2_requested_range_only_for_get_of_a_stored_200() -> None:
    asked = CIMultiDict({"Range": "bytes=0-1"})
    assert requested_range("GET", asked, 200, STORED, 10) == ByteRange(0, 1, 10)
    assert requested_range("HEAD", asked, 200, STORED, 10) is None
    assert requested_range("GET", asked, 404, STORED, 10) is None
    assert requested_range("GET", CIMultiDict(), 200, STORED, 10) is None
    two = CIMultiDict([("Range", "bytes=0-1"), ("Range", "bytes=2-3")])
    assert requested_range("GET", two, 200, STORED, 10) is None
    failing = CIMultiDict({"Range": "bytes=0-1", "If-Range": '"v0"'})
    assert requested_range("GET", failing, 200, STORED, 10) is None
    holding = CIMultiDict({"Range": "bytes=20-", "If-Range": '"v1"'})
    assert requested_range("GET", holding, 200, STORED, 10) == NotSatisfiable(10)
