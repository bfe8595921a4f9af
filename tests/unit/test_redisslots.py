"""Redis Cluster addressing per the Cluster specification: key slots with hash tags, the
CLUSTER SLOTS map, and the redirections a client must follow."""

from __future__ import annotations

from redis.exceptions import AskError, MovedError, ResponseError, TryAgainError

from gateway.redisslots import Redirect, key_slot, parse_cluster_slots, redirect_of


def test_key_slots_match_the_specification_examples() -> None:
    assert key_slot("123456789") == 12739  # the spec's CRC16 check value 0x31C3 mod 16384
    assert key_slot("foo") == 12182
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == \
        key_slot("user1000")


def test_an_empty_or_unclosed_tag_hashes_the_whole_key() -> None:
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("{unclosed") != key_slot("unclosed")


def test_the_slot_map_names_each_ranges_master_and_fills_in_an_unknown_host() -> None:
    reply = [[10923, 16383, [b"", 7002, b"id3"], [b"127.0.0.1", 7005, b"id6"]],
             [0, 5460, [b"10.0.0.1", 7000, b"id1"]],
             [5461, 10922, [b"10.0.0.2", 7001, b"id2"]]]
    slots = parse_cluster_slots(reply, ("10.0.0.9", 7009))
    assert slots.owner(0) == ("10.0.0.1", 7000)
    assert slots.owner(5461) == ("10.0.0.2", 7001)
    assert slots.owner(16383) == ("10.0.0.9", 7002)
    assert len(slots.masters) == 3
    assert parse_cluster_slots([[0, 99, [b"h", 1]]], ("h", 1)).owner(100) is None


def test_redirections_are_read_from_redis_py_errors_and_from_plain_text() -> None:
    assert redirect_of(MovedError("3999 127.0.0.1:6381")) == Redirect("MOVED", ("127.0.0.1", 6381))
    assert redirect_of(AskError("3999 127.0.0.1:6381")) == Redirect("ASK", ("127.0.0.1", 6381))
    assert redirect_of(TryAgainError("Multiple keys")) == Redirect("TRYAGAIN")
    assert redirect_of(ResponseError("ASK 1 ::1:7000")) == Redirect("ASK", ("::1", 7000))
    assert redirect_of(ResponseError("ERR unknown command")) is None
