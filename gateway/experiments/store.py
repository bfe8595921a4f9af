"""Where an experiment's records add up: Redis (shared by every worker and sidecar) or the
process's memory (no Redis configured).

Both stores apply a batch of records with the same arithmetic (lua/experiments.lua is the
Redis side); tests/integration/test_experiment_stores.py runs one suite against both.

Records:
- Exposures(variant, units): each unit's first exposure fixes its variant for good, however
  often and wherever it is exposed again; units are counted once each. One record carries
  every unit a process exposed to a variant since its last flush, so that a unit costs no
  object of its own on the way (a record per unit made the flush cost more than the
  request's own exposure work; tests/perf/bench_experiments.py).
- Event(metric, unit, value, event_id): added to the unit's sum for the metric; a unit never
  exposed is counted apart (per metric), never mixed in; an event id already seen within
  EVENT_ID_TTL is a retry and changes nothing.
- Guardrail(variant, requests, errors, latency sum and square sum, histogram): the
  experiment's flagged requests, summed per variant in the process before being sent.

Per metric and variant the store keeps the units with at least one event (`c`), the sum of
the per-unit sums (`s`) and the sum of their squares (`q`): enough for a conversion rate,
a mean per unit and its variance, without reading a unit back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from gateway.luascripts import load_script
from gateway.redisconn import RedisLink
from gateway.redispipe import Command, load_command, pack_command, script_command

EVENT_ID_TTL = 7 * 86400  # a retry later than a week is counted again
SNAPSHOTS_KEPT = 500


class Exposures(NamedTuple):
    variant: str
    units: Sequence[str]


class Event(NamedTuple):
    metric: str
    unit: str
    value: float
    event_id: str | None = None


class Guardrail(NamedTuple):
    variant: str
    requests: int
    errors: int
    latency_sum: float
    latency_squares: float
    histogram: tuple[tuple[int, int], ...]  # (bucket, count) of the buckets hit


Record = Exposures | Event | Guardrail
# The aggregates' names of Guardrail's requests, errors, latency_sum and latency_squares.
_GUARDRAIL_SUMS = ("n", "e", "ls", "lq")


@dataclass(frozen=True, slots=True)
class Applied:
    new_units: int = 0
    counted: int = 0
    duplicates: int = 0
    unexposed: int = 0


@dataclass(slots=True)
class Tallies:
    """What an experiment's report is computed from."""

    units: dict[str, int] = field(default_factory=dict)  # variant -> exposed units
    unexposed: dict[str, int] = field(default_factory=dict)  # metric -> events of no unit
    aggregates: dict[str, float] = field(default_factory=dict)  # see the module docstring
    state: dict[str, str] = field(default_factory=dict)  # status, started, ended...

    def get(self, name: str) -> float:
        return self.aggregates.get(name, 0.0)


class ExperimentStore(Protocol):
    async def apply(self, experiment: str, metrics: Sequence[str],
                    records: Sequence[Record]) -> Applied: ...

    async def read(self, experiment: str) -> Tallies: ...

    async def set_state(self, experiment: str, state: dict[str, str]) -> None: ...

    async def add_snapshot(self, experiment: str, snapshot: dict[str, Any]) -> None: ...

    async def snapshots(self, experiment: str) -> list[dict[str, Any]]: ...


class LocalExperimentStore:
    """The process's own tallies (one gateway process: with several workers and no Redis,
    each worker counts its own share)."""

    def __init__(self) -> None:
        self._units: dict[str, dict[str, str]] = {}
        self._sums: dict[tuple[str, str], dict[str, float]] = {}
        self._seen: set[tuple[str, str]] = set()
        self._tallies: dict[str, Tallies] = {}
        self._snapshots: dict[str, list[dict[str, Any]]] = {}

    def _of(self, experiment: str) -> Tallies:
        found = self._tallies.get(experiment)
        if found is None:  # not setdefault: a Tallies (four dicts) made per call costs more
            found = self._tallies[experiment] = Tallies()
        return found

    async def apply(self, experiment: str, metrics: Sequence[str],
                    records: Sequence[Record]) -> Applied:
        units = self._units.setdefault(experiment, {})
        tallies = self._of(experiment)
        agg = tallies.aggregates
        new_units = counted = duplicates = unexposed = 0
        for record in records:
            if isinstance(record, Exposures):
                to, fresh = record.variant, 0
                for unit in record.units:
                    if unit not in units:
                        units[unit] = to
                        fresh += 1
                if fresh:
                    tallies.units[to] = tallies.units.get(to, 0) + fresh
                    new_units += fresh
            elif isinstance(record, Event):
                if record.event_id is not None:
                    seen = (experiment, record.event_id)
                    if seen in self._seen:
                        duplicates += 1
                        continue
                    self._seen.add(seen)
                variant = units.get(record.unit)
                if variant is None:
                    tallies.unexposed[record.metric] = tallies.unexposed.get(record.metric,
                                                                             0) + 1
                    unexposed += 1
                    continue
                sums = self._sums.setdefault((experiment, record.metric), {})
                old = sums.get(record.unit)
                new = (old or 0.0) + record.value
                sums[record.unit] = new
                prefix = f"{record.metric}|{variant}|"
                if old is None:
                    agg[prefix + "c"] = agg.get(prefix + "c", 0) + 1
                    old = 0.0
                agg[prefix + "s"] = agg.get(prefix + "s", 0.0) + record.value
                agg[prefix + "q"] = agg.get(prefix + "q", 0.0) + new * new - old * old
                counted += 1
            else:
                prefix = f"g|{record.variant}|"
                for name, amount in zip(_GUARDRAIL_SUMS, record[1:5], strict=True):
                    agg[prefix + name] = agg.get(prefix + name, 0) + amount
                for i, n in record.histogram:
                    name = f"{prefix}h{i}"
                    agg[name] = agg.get(name, 0) + n
        return Applied(new_units, counted, duplicates, unexposed)

    async def read(self, experiment: str) -> Tallies:
        tallies = self._of(experiment)
        return Tallies(dict(tallies.units), dict(tallies.unexposed), dict(tallies.aggregates),
                       dict(tallies.state))

    async def set_state(self, experiment: str, state: dict[str, str]) -> None:
        self._of(experiment).state.update(state)

    async def add_snapshot(self, experiment: str, snapshot: dict[str, Any]) -> None:
        kept = self._snapshots.setdefault(experiment, [])
        kept.append(snapshot)
        del kept[:-SNAPSHOTS_KEPT]

    async def snapshots(self, experiment: str) -> list[dict[str, Any]]:
        return list(self._snapshots.get(experiment, []))


class RedisExperimentStore:
    """The tallies in Redis: every key of one experiment shares a hash tag, so a batch is one
    script call on one node, on a cluster too.

    What runs every flush or every look (apply, read, set_state) goes over the link's
    pipelined connection (gateway/redispipe.py) when there is one: a script call through
    redis-py costs 50-90 us of CPU, and a flush carries only the few requests since the last
    one, so the call weighed more than the requests' own exposure work
    (tests/perf/bench_experiments.py --redis). The pipe keeps redis.timeout and the circuit
    breaker, and reloads the script after NOSCRIPT. A cluster client has no single
    connection, so there they are redis-py calls; so are the snapshots (a push a minute, and
    a list read for an admin report), which nothing calls often."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.prefix = link.prefix
        script = load_script("experiments")
        self._script = link.client.register_script(script.source)
        self._sha, self._reload = script.sha, load_command(script.source)
        self._pipe = link.pipe

    def _key(self, experiment: str, part: str) -> str:
        return f"{self.prefix}x:{{{experiment}}}:{part}"

    async def apply(self, experiment: str, metrics: Sequence[str],
                    records: Sequence[Record]) -> Applied:
        index = {name: i + 1 for i, name in enumerate(metrics)}
        event_keys: list[str] = []
        wire: list[list[Any]] = []
        for record in records:
            if isinstance(record, Exposures):
                wire.append(["x", record.variant, record.units])
            elif isinstance(record, Event):
                slot = 0
                if record.event_id is not None:
                    event_keys.append(self._key(experiment, f"ev:{record.event_id}"))
                    slot = len(event_keys)
                wire.append(["e", index[record.metric], record.unit, record.value, slot,
                             record.metric])
            else:
                wire.append(["g", record.variant, record.requests, record.errors,
                             record.latency_sum, record.latency_squares,
                             [list(pair) for pair in record.histogram]])
        keys = (self._key(experiment, "units"), self._key(experiment, "counts"),
                self._key(experiment, "agg"),
                *(self._key(experiment, f"m:{name}") for name in metrics), *event_keys)
        args = (orjson.dumps(wire), b"%d" % EVENT_ID_TTL, b"%d" % len(metrics))
        if self._pipe is not None:
            result = await self._pipe.submit(script_command(self._sha, keys, args,
                                                            self._reload))
        else:
            result = await self.link.call(lambda: self._script(keys=keys, args=args))
        return Applied(*(int(n) for n in result))

    async def read(self, experiment: str) -> Tallies:
        names = (self._key(experiment, "counts"), self._key(experiment, "agg"),
                 self._key(experiment, "state"))
        if self._pipe is not None:
            # Submitted in one loop iteration: the three leave in one write.
            found = [self._pipe.submit(Command(pack_command(b"HGETALL", _encode(name)), name))
                     for name in names]
            counts, agg, state = (_fields(reply) for reply in await asyncio.gather(*found))
        else:
            client = self.link.client

            async def fetch() -> list[Any]:
                async with client.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.hgetall(name)
                    return list(await pipe.execute())

            counts, agg, state = await self.link.call(fetch)
        tallies = Tallies(state={k.decode(): v.decode() for k, v in state.items()})
        for key, value in counts.items():
            name = key.decode()
            if name.startswith("unexposed|"):
                tallies.unexposed[name.split("|", 1)[1]] = int(value)
            else:
                tallies.units[name] = int(value)
        tallies.aggregates = {k.decode(): float(v) for k, v in agg.items()}
        return tallies

    async def set_state(self, experiment: str, state: dict[str, str]) -> None:
        key = self._key(experiment, "state")
        if self._pipe is not None:
            pairs = [part.encode() for item in state.items() for part in item]
            await self._pipe.submit(Command(pack_command(b"HSET", _encode(key), *pairs), key))
            return
        await self.link.call(lambda: self.link.client.hset(key, mapping=state))

    async def add_snapshot(self, experiment: str, snapshot: dict[str, Any]) -> None:
        key = self._key(experiment, "snapshots")
        client = self.link.client

        async def push() -> None:
            # Not a MULTI: redis-py's cluster pipeline refuses transactions before 6.x. A
            # reader between the two commands sees one snapshot too many, nothing worse.
            async with client.pipeline(transaction=False) as pipe:
                pipe.rpush(key, orjson.dumps(snapshot))
                pipe.ltrim(key, -SNAPSHOTS_KEPT, -1)
                await pipe.execute()

        await self.link.call(push)

    async def snapshots(self, experiment: str) -> list[dict[str, Any]]:
        key = self._key(experiment, "snapshots")
        found = await self.link.call(lambda: self.link.client.lrange(key, 0, -1))
        return [orjson.loads(item) for item in found]


def _encode(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _fields(reply: dict[bytes, bytes] | list[bytes]) -> dict[bytes, bytes]:
    """An HGETALL reply off the pipe: a map in RESP3, field, value... in RESP2."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))
