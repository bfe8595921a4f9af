"""The Redis Cluster store: a request's rules decided per slot, all or nothing.

Rules whose keys share a slot (every rule counting per the same user, say) are decided by
one call of `lua/ratelimit.lua` on that slot's master, atomically, exactly as on a single
Redis. A request whose rules span slots (a user rule and a global rule) is decided by one
call per slot, in parallel, and made all-or-nothing by reserve-and-return:

1. each slot's call decides its rules and, if they all admit, commits them (a reservation:
   ARGV[2] "2", whose reply also carries the script's clock);
2. if every slot admitted, the request is admitted;
3. otherwise the request is refused, and every slot that admitted is sent
   `lua/ratelimit_return.lua` with the reservation's clock, giving back exactly the units
   it took (a sliding window's running totals are lowered past the entry, so
   later admissions stay counted right), before the refusal is answered.

No interleaving admits more than a rule's limit: units are only ever taken inside one
atomic script that checks the limit, and a reservation counts against the limit from the
moment it is made until it is returned. What concurrency can cost is the opposite: a request
may be refused because units are held, for one round trip, by a request that will give them
back. A sidecar that dies (or loses its connection) between steps 1 and 3 leaves its
reservation in place: that request's cost stays counted as if it had been admitted, and
leaves with the rule's window (token and leaky buckets: it drains at the rule's rate), so
the damage is bounded by the cost of the requests in flight and expires by itself. The
README's rate-limit section lists these cases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from gateway.luascripts import load_script
from gateway.ratelimit.decision import Decision, RuleResult
from gateway.ratelimit.plan import Prepared
from gateway.ratelimit.redis_store import pack_evalsha, script_call
from gateway.ratelimit.rules import ALGORITHM_CODE, Check
from gateway.ratelimit.slotrouter import SlotRouter
from gateway.redisconn import RedisLink, RedisUnavailable
from gateway.redispipe import Command, load_command, pack_command, script_command
from gateway.redisslots import key_slot

log = logging.getLogger("gateway.redis")

RESERVE = b"2"

# One slot's share of a request: (slot, indexes of its checks, the encoded EVALSHA).
Part = tuple[int, tuple[int, ...], Command]


def slot_groups(checks: Sequence[Check]) -> list[tuple[int, tuple[int, ...]]]:
    """The checks' indexes grouped by the slot of their keys, in order of first appearance
    (every key of one check shares its hash tag, so its first key speaks for all)."""
    groups: dict[int, list[int]] = {}
    for i, check in enumerate(checks):
        groups.setdefault(key_slot(check.keys[0]), []).append(i)
    return [(slot, tuple(indexes)) for slot, indexes in groups.items()]


class ClusterStore:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.script = load_script("ratelimit")
        self.giveback = load_script("ratelimit_return")
        self._sha = self.script.sha.encode()
        self._reload = load_command(self.script.source)
        self._giveback_reload = load_command(self.giveback.source)
        self.router = SlotRouter(link)

    def parts(self, checks: Sequence[Check], now_us: int | None, commit: bool) -> list[Part]:
        groups = slot_groups(checks)
        out = []
        for slot, indexes in groups:
            keys, args = script_call([checks[i] for i in indexes], now_us, commit)
            if commit and len(groups) > 1:
                args = (args[0], RESERVE, *args[2:])
            out.append((slot, indexes, Command(pack_evalsha(self._sha, keys, args), keys[0],
                                               self._reload)))
        return out

    async def decide(self, checks: Sequence[Check], now_us: int | None = None,
                     commit: bool = True) -> Decision:
        return await self._decide(checks, self.parts(checks, now_us, commit))

    async def decide_prepared(self, prepared: Prepared) -> Decision:
        parts = prepared.wire
        if parts is None:  # first request of this combination: group and encode it once
            parts = prepared.wire = self.parts(prepared.checks, None, True)
        return await self._decide(prepared.checks, parts)

    async def _decide(self, checks: Sequence[Check], parts: list[Part]) -> Decision:
        if len(parts) == 1:
            slot, _, command = parts[0]
            return Decision.from_flat(await self.router.call(slot, command))
        router = self.router
        if router.map is None:
            await router.first_map()
        sent = [router.send(slot, command) for slot, _, command in parts]  # all in flight
        replies: list[Any] = []
        for (slot, _, command), future in zip(parts, sent, strict=True):
            try:
                replies.append(await router.settle(slot, command, future))
            except RedisUnavailable as exc:
                replies.append(exc)
        results: list[RuleResult | None] = [None] * len(checks)
        admitted, failure = True, None
        held: list[tuple[int, list[Check], int]] = []  # slots to give back
        for (slot, indexes, _), reply in zip(parts, replies, strict=True):
            if isinstance(reply, BaseException):
                failure = reply
                continue
            size = 1 + 4 * len(indexes)
            decision = Decision.from_flat(reply[:size])
            if len(reply) > size:  # a reservation: its clock appended
                held.append((slot, [checks[i] for i, r in zip(
                    indexes, decision.results, strict=True) if r.allowed], int(reply[size])))
            admitted = admitted and decision.admitted
            for i, result in zip(indexes, decision.results, strict=True):
                results[i] = result
        if failure is None and admitted:
            return Decision(True, tuple(results))  # type: ignore[arg-type]
        await asyncio.gather(*(self._give_back(slot, taken, clock)
                               for slot, taken, clock in held))
        if failure is not None:
            if isinstance(failure, RedisUnavailable):
                raise failure
            raise RedisUnavailable(f"{type(failure).__name__}: {failure}") from failure
        return Decision(False, tuple(results))  # type: ignore[arg-type]

    async def _give_back(self, slot: int, taken: Sequence[Check], clock: int) -> None:
        """Return a reservation (the checks that took units); if that fails, the units stay
        counted until they expire."""
        if not taken:
            return
        keys = tuple(key for c in taken for key in c.keys)
        args = [str(clock).encode()]
        for c in taken:
            args += [str(v).encode() for v in (ALGORITHM_CODE[c.rule.algorithm], c.limit,
                                               c.window_us, c.cost)]
        command = script_command(self.giveback.sha, keys, tuple(args), self._giveback_reload)
        try:
            await self.router.call(slot, command)
        except RedisUnavailable as exc:
            log.warning("could not return reserved rate-limit units (they expire with "
                        "their window): %s", exc)

    async def reset(self, keys: Sequence[str]) -> None:
        by_slot: dict[int, list[bytes]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key), []).append(key.encode("utf-8",
                                                                    "surrogateescape"))
        await asyncio.gather(*(self.router.call(slot, Command(pack_command(b"DEL", *slot_keys)))
                               for slot, slot_keys in by_slot.items()))

    async def close(self) -> None:
        await self.router.close()


