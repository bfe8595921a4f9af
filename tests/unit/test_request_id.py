"""Generated request ids: well-formed, distinct, and never shared with a forked child."""

from __future__ import annotations

import os
import re

from gateway.pipeline import _ID_BATCH, new_request_id


def test_ids_are_32_hex_digits_and_distinct_across_batches() -> None:
    ids = [new_request_id() for _ in range(3 * _ID_BATCH + 5)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_reuse_the_parents_batch() -> None:
    new_request_id()  # the parent now holds a partly used batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        try:
            os.write(write, ",".join(new_request_id() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [new_request_id() for _ in range(_ID_BATCH)]
    assert len(child) == 5
    assert not set(child) & set(parent)
