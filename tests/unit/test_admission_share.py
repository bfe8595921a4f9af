"""The ledger through which the workers of one instance lend each other admission permits:
real shared memory, two leases in one process standing for two workers."""

from __future__ import annotations

from pathlib import Path

from gateway.admission.share import Ledger, base_share


def test_shares_split_the_limit_and_give_the_remainder_to_the_first_workers() -> None:
    assert [base_share(20, 3, slot) for slot in range(3)] == [7, 7, 6]
    assert [base_share(4, 2, slot) for slot in range(2)] == [2, 2]


def test_quotas_never_sum_past_the_limit_and_spare_permits_move_to_who_waits(
        tmp_path: Path) -> None:
    one, two = (Ledger(str(tmp_path), slot, 2).lease("api", 4) for slot in range(2))
    assert (one.quota, two.quota, one.free()) == (2, 2, 0)
    assert one.borrow(1) == 0  # both shares are held
    two.give(2)  # worker two is idle and worker one has waiters
    assert one.borrow(3) == 2 and (one.quota, two.quota) == (4, 0)
    assert two.borrow(1) == 0  # nothing is left over: the sum stays at the limit
    two.wanting(1)
    assert one.peers_waiting() == (True, True)  # a worker below its share waits
    one.give(2)
    assert two.borrow(5) == 2 and one.quota + two.quota == 4


def test_a_replacement_worker_clears_its_slot_and_claims_its_share_again(
        tmp_path: Path) -> None:
    one, two = (Ledger(str(tmp_path), slot, 2).lease("api", 4) for slot in range(2))
    two.give(2)
    one.borrow(2)
    # Worker one dies holding 4; its replacement finds its slot and starts from nothing.
    again = Ledger(str(tmp_path), 0, 2).lease("api", 4)
    assert again.quota == 2 and two.borrow(2) == 2


def test_each_upstream_and_limit_has_its_own_ledger(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path), 0, 2)
    assert ledger.lease("api", 4).quota == 2
    assert ledger.lease("other", 4).quota == 2
    assert ledger.lease("api", 6).quota == 3


def test_an_upstream_whose_admission_is_removed_leaves_the_ledger(tmp_path: Path) -> None:
    from gateway.admission import Gates
    from gateway.config.model import Admission, Upstream

    gates = Gates(2, Ledger(str(tmp_path), 0, 2))
    api = {"api": Upstream("api", "http://127.0.0.1:1", admission=Admission(max_concurrency=4))}
    gate = gates.adopt(api)["api"]
    assert gate.lease is not None and gate.control.limit == 2
    gates.adopt({})
    assert gate.lease is None
    other = Ledger(str(tmp_path), 1, 2).lease("api", 4)
    assert other.borrow(4) == 2  # worker 0's share is free again: it holds none
    # Configured again: the same slot, claimed afresh, with what is left.
    again = gates.adopt(api)["api"]
    assert again.lease is not None and again.lease.quota == 0 and other.quota == 4
