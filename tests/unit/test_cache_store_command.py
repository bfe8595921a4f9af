"""The L2 store's hand-packed EVALSHA is byte for byte what redispipe.script_command packs."""

from gateway.cache.redisstore import MAX_VARIANTS, store_command, store_head
from gateway.redispipe import script_command


def test_the_store_command_matches_the_generic_packing() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    data = b"\x00\r\n$*binary entry\xff" * 40
    for key, variant, keep in (("p:cache:0:u:{ab12}", "-", 3660),
                               ("p:cache:7:u:{\udcff}", "c0ffee", 0)):
        ours = store_command(store_head(sha), key, variant, data, keep, b"LOAD")
        generic = script_command(sha, (key,), (variant.encode(), data, b"%d" % keep,
                                               b"%d" % MAX_VARIANTS), b"LOAD")
        assert ours == generic
