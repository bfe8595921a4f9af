"""Header fields settled on arrival (gateway/hygiene.py)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.hygiene import drop_underscored, first_values_only


def test_underscored_names_are_dropped_and_the_rest_kept_in_order() -> None:
    headers = CIMultiDictProxy(CIMultiDict([
        ("Host", "h"), ("X_User_Id", "admin"), ("X-User-Id", "u1"), ("a_", "1"),
        ("Accept", "a"), ("Accept", "b")]))
    kept = drop_underscored(headers)
    assert list(kept.items()) == [("Host", "h"), ("X-User-Id", "u1"), ("Accept", "a"),
                                  ("Accept", "b")]


def test_a_section_without_underscores_is_returned_as_it_is() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("Host", "h"), ("X-A", "1")]))
    assert drop_underscored(headers) is headers


def test_repeated_identity_fields_keep_their_first_value_only() -> None:
    headers = CIMultiDict([("X-User-Id", "alice"), ("Accept", "a"), ("x-user-id", "bob"),
                           ("X-Tenant-Id", "t"), ("Accept", "b")])
    first_values_only(headers, ("x-user-id", "x-tenant-id", "x-api-key"))
    assert headers.getall("X-User-Id") == ["alice"]
    assert headers.getall("X-Tenant-Id") == ["t"]
    assert headers.getall("Accept") == ["a", "b"]  # not an identity field: untouched
