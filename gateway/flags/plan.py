"""A route's flags compiled into one Python function per day.

`evaluate` (the reference, also used by the admin API) walks a flag with a memo dict per
request. A route's plan does the same work in generated code: what cannot depend on the
request (status, kill switch, expiry, environment override) is settled once per day and
environment; each remaining flag becomes a few inline statements (tier check, prerequisites,
targeting tests, one murmur3 hash); and only the context fields those statements read are
read, straight from the header section when the route builds no context for anything else.
The outcomes of one request form a tuple; every distinct tuple is turned once into what the
upstream gets (one header per flag and the RFC 8941 summary, serialized) and into one group
of metric counters, so a request with several flags ends with one dict lookup.

Why generated code: the gateway's throughput with `flags: all` must stay within 5% of the
same route without flags. The interpreted walk (a method call per flag, rule and
getter, plus a whole context) added 47,600 instructions to a 420,000-instruction request;
this code adds ~11,000-12,000 (callgrind: tests/perf/bench_flags.py --instructions), most
of it the header reads, the hashes and its one call. Run once per request among everything
else, each bytecode also costs the CPU's caches and branch predictors more than it does in
a loop, so the code is kept short: ~128 bytecodes per request for the reference flags.
`FlagPlan.source` holds the code of the current day, for reading and debugging.

tests/unit/test_flag_plan.py checks plan and `evaluate` give the same outcomes, and count
the same evaluations, over generated flag sets, contexts and header sections.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import mmh3
from multidict import MultiMapping

from gateway.config.model import ContextSettings
from gateway.context import Memo, RequestContext, field_source
from gateway.flagd.operators import v3_shorthand_input
from gateway.flags.evaluate import (
    HASH_SPACE,
    IN_PROGRESS,
    CompiledFlag,
    Evaluation,
    Reason,
    today_utc,
)
from gateway.flags.operators import test_code
from gateway.metrictally import TALLY, CounterGroup
from gateway.proxy import AddedFields
from gateway.stages import FlagResult

COMBOS_MAX = 4096  # distinct outcome tuples remembered per plan before starting afresh
INLINE_MAX = 400  # lines of code with every prerequisite inlined; beyond, one function each
# Up to this many comparisons, a split's outcome is picked by comparisons written out in the
# code (a rollout: one), cheaper than a call of bisect; past it, by bisect.
_COMPARED_MAX = 3
_DAY = 86400.0

Outcome = tuple[Evaluation | None, ...]
# A route's flags for one request, from its context or straight from its header section
# (headers, peer address, peer trusted?), at a time; None when the route has no flag now.
ContextDecider = Callable[[RequestContext, float], "FlagResult | None"]
HeadersDecider = Callable[[MultiMapping[str], str, bool, float], "FlagResult | None"]


class Versioned(Protocol):
    """What a plan watches for run-time flag changes (FlagOverrides)."""

    version: int


class FlagPlan:
    """One route's flags, decided by generated code (see the module's docstring).

    `decide(ctx, now)` and `decide_headers(headers, peer, trusted, now)` generate the code
    when it is missing or out of date, then call it; afterwards `from_context` and
    `from_headers` are the generated functions themselves, which callers may keep and call
    directly (the engine does): each checks it is still current (same day, environment and,
    with `overrides`, the same run-time flag version) and otherwise calls `stale_context` /
    `stale_headers` (by default `decide` / `decide_headers`; the engine puts its own, which
    rebuild the plans first when flags changed). Every decision is noted in TALLY.noted.
    """

    def __init__(self, shown: Sequence[CompiledFlag], compiled: Mapping[str, CompiledFlag],
                 summary: str | None, settings: ContextSettings | None = None,
                 environment: str = "", overrides: Versioned | None = None,
                 version: int = 0, experiment_flags: frozenset[str] = frozenset()) -> None:
        # The route's flags first, in its order; then every prerequisite they reach, which
        # is evaluated (and counted) only when a flag needs it, as `evaluate` does.
        order = list(shown)
        position = {flag.key: i for i, flag in enumerate(order)}
        for flag in order:  # grows while walked
            for key in flag.prerequisites:
                other = compiled.get(key)
                if other is not None and key not in position:
                    position[key] = len(order)
                    order.append(other)
        self.flags = tuple(order)
        self.shown = len(shown)
        # -1: a prerequisite missing from the flag set, which fails the flag (fail closed).
        self.prerequisites = tuple(tuple(position.get(key, -1) for key in flag.prerequisites)
                                   for flag in order)
        self.summary = summary
        # Flags some experiment measures, in plan order: their split decisions are reported
        # in FlagResult.split, each with the position of its unit in FlagResult.units.
        self.unit_positions = {key: n for n, key in enumerate(
            flag.key for flag in order if flag.key in experiment_flags)}
        self.settings = settings if settings is not None else ContextSettings()
        self.environment = environment  # what a decision from the headers is made in
        self.overrides, self.version = overrides, version
        self.source = ""  # the generated code of the day settled for
        self._since = self._until = 0.0
        self._settled_for: str | None = None  # the environment settled for
        self.stale_context: ContextDecider = self.decide
        self.stale_headers: HeadersDecider = self.decide_headers
        self.published: Callable[[FlagPlan], None] | None = None
        self.from_context: ContextDecider = self.decide
        self.from_headers: HeadersDecider = self.decide_headers

    def decide(self, ctx: RequestContext, now: float) -> FlagResult | None:
        """The route's flag headers for this request, and the evaluations to count."""
        if not (self._since <= now < self._until and ctx.environment == self._settled_for):
            self._settle(now, ctx.environment)
        return self.from_context(ctx, now)

    def decide_headers(self, headers: MultiMapping[str], peer: str, trusted: bool,
                       now: float) -> FlagResult | None:
        """`decide` without a context: the fields the flags read come straight from the
        header section (believed only when `trusted`, as `build_context` does)."""
        if not (self._since <= now < self._until and self.environment == self._settled_for):
            self._settle(now, self.environment)
        return self.from_headers(headers, peer, trusted, now)

    def _settle(self, now: float, environment: str) -> None:
        today = today_utc(now)
        settled = tuple(flag.settled(today, environment) for flag in self.flags)
        # The FlagResult of each combination of outcomes met so far, by outcome tuple.
        combos = Memo(self._combine, COMBOS_MAX)
        constants = {"_since": today * _DAY, "_until": (today + 1) * _DAY,
                     "_environment": environment, "_found": combos.__getitem__,
                     "_note": TALLY.noted.append, "_overrides": self.overrides,
                     "_version": self.version, "_stale_context": self.stale_context,
                     "_stale_headers": self.stale_headers}
        try:
            source, namespace = _Generator(self, settled, inline=True).module(constants)
        except _TooLong:
            source, namespace = _Generator(self, settled, inline=False).module(constants)
        exec(compile(source, f"<flag plan of {', '.join(f.key for f in self.flags)}>",  # noqa: S102
                     "exec"), namespace)
        self.source = source
        self.from_context = namespace["from_context"]
        self.from_headers = namespace["from_headers"]
        self._since, self._until = today * _DAY, (today + 1) * _DAY
        self._settled_for = environment
        if self.published is not None:
            self.published(self)

    def _combine(self, outcome: Outcome) -> FlagResult:
        shown = outcome[:self.shown]
        pairs = [result.pair for result in shown if result is not None]
        members = [result.member for result in shown
                   if result is not None and result.member is not None]
        if self.summary and members:
            pairs.append((self.summary, ", ".join(members)))
        counters = [result.counter for result in outcome
                    if result is not None and result.counter is not None]
        positions = self.unit_positions
        split = tuple((result.flag, result.variant, positions[result.flag])
                      for result in outcome
                      if result is not None and result.reason is Reason.SPLIT
                      and result.flag in positions)
        return FlagResult(AddedFields(pairs), CounterGroup(counters), split)


class _TooLong(Exception):
    """The inlined code would pass INLINE_MAX lines (a dense prerequisite graph)."""


class _Generator:
    """Writes the plan's module for one settled day and environment: `from_context(ctx, now)`
    and `from_headers(headers, peer, trusted, now)`, which differ only in how they read the
    context fields (context.field_source).

    A flag's code is a `while True:` block left with `break` at its first decisive step,
    inside `try:` so that an internal error serves the default with reason ERROR, as
    `evaluate` does. A prerequisite is evaluated where a flag first needs it.

    Inline (the usual case): results are locals `r0, r1...`; every prerequisite's code is
    inlined where needed, and `decided`/`maybe` track which results are surely / possibly
    known at each point, so no check is written that cannot be needed. A dense prerequisite
    graph would make inlined code grow exponentially: past INLINE_MAX lines the generator
    starts again in the other mode, where results live in a list `r`, each prerequisite is
    one function, and a flag marks itself IN_PROGRESS while evaluated, as `evaluate` does, so
    a cycle (possible only through runtime changes) reads as a falsy prerequisite.
    """

    def __init__(self, plan: FlagPlan, settled: tuple[Evaluation | None, ...],
                 inline: bool) -> None:
        self.plan = plan
        self.settled = settled
        self.inline = inline
        # What CompiledFlag.targeted calls, called directly: `_hash(text, 0, False)` is
        # evaluate.murmur3_32 (flagd's murmur3, seed 0, unsigned).
        self.constants: dict[str, Any] = {"_bisect": bisect_right, "_hash": mmh3.hash,
                                          "_v3": v3_shorthand_input,
                                          "_IN_PROGRESS": IN_PROGRESS}
        self._names: dict[int, str] = {}  # id(value) -> constant name
        self.reads: dict[str, None] = {}  # context fields read, in first-read order
        self.functions: dict[int, list[str]] = {}  # list mode: prerequisite -> function
        self.tested: set[str] = set()  # results the code asks `is None` (inline mode)
        self.lines = 0

    def const(self, value: Any) -> str:
        name = self._names.get(id(value))
        if name is None:
            name = self._names[id(value)] = f"_k{len(self._names)}"
            self.constants[name] = value
        return name

    def field(self, name: str) -> str:
        """The variable holding a context field; its reading goes in the prologue."""
        self.reads[name] = None
        return f"<{name}>"  # replaced once every field read is known (see `module`)

    def result(self, i: int) -> str:
        if not self.inline:
            return f"r[{i}]"
        if i < self.plan.shown and self.settled[i] is not None:
            return self.const(self.settled[i])  # known before the request, never assigned
        return f"r{i}"

    # ------------------------------------------------------------------ one flag
    def flag(self, i: int, stack: tuple[int, ...], decided: set[int], maybe: set[int],
             sure: set[int] | None = None) -> list[str]:
        """Statements that set result i. `stack`: the flags being evaluated, outermost first;
        `decided`/`maybe`: results surely/possibly set before these statements run (`maybe`
        grows by whatever these statements may set); `sure`, if given, receives the
        prerequisites these statements surely set (those evaluated before any step that
        can end the flag: each sets its result whatever happens, its own errors included)."""
        plan, flag, r = self.plan, self.plan.flags[i], self.result(i)
        maybe.add(i)
        settled = self.settled[i]
        if settled is not None:
            return [f"{r} = {self.const(settled)}"]
        steps: list[str] = [] if self.inline else [f"{r} = _IN_PROGRESS"]
        decided = set(decided)  # what is surely set further down this flag's own path

        def decisive(condition: str, outcome: Evaluation) -> None:
            steps.extend([f"if {condition}:", f"    {r} = {self.const(outcome)}", "    break"])

        if flag.tiers is not None:
            decisive(f"{self.field('subscription_tier')} not in {self.const(flag.tiers)}",
                     flag.r_tier)
        for j in plan.prerequisites[i]:
            if j < 0 or (self.inline and j in stack):
                steps.extend([f"{r} = {self.const(flag.r_prereq)}", "break"])
                return self._wrap(i, flag, steps)
            if sure is not None and self.inline and not steps:
                sure.add(j)  # evaluated first, or already
            if j not in decided:
                guard = j in maybe or not self.inline
                code = (self.flag(j, (*stack, j), decided, maybe) if self.inline
                        else [f"_prerequisite_{j}(r, <fields>)"])
                if not self.inline:
                    self.prerequisite_function(j)
                if guard:
                    self.tested.add(self.result(j))
                    steps.append(f"if {self.result(j)} is None:")
                    code = ["    " + line for line in code]
                steps.extend(code)
                decided.add(j)
            decisive(f"not {self.result(j)}.value", flag.r_prereq)
        if flag.targets:
            tests = []
            for attribute, test in flag.targets:
                value = self.field(attribute)
                tests.append(f"({value} and {test_code(test, value, self.const)})")
            decisive(f"not ({' or '.join(tests)})", flag.r_targeting)
        if flag.cuts is None:
            steps.extend([f"{r} = {self.const(flag.static)}", "break"])
            return self._wrap(i, flag, steps)
        # bucket_by, else user_id, then tenant_id, then the client IP.
        names = [flag.flag.bucket_by] if flag.flag.bucket_by else [
            "user_id", "tenant_id", "client_ip"]
        steps.append(f"b = {' or '.join(self.field(name) for name in names)}")
        # An explicit bucket_by the request does not carry: nothing to stick to.
        decisive("not b", flag.r_excluded)
        if self.inline and flag.key in plan.unit_positions:
            steps.append(f"u{i} = b")  # the experiment's unit, handed out with the result
        hashed = f"_v3({self.const(flag.key)}, b)" if flag.v3 else f"{self.const(flag.key)} + b"
        hash_ = f"_hash({hashed}, 0, False)"
        cuts, outcomes = flag.cuts, flag.outcomes
        if len(cuts) - 1 > _COMPARED_MAX or cuts[-1] != HASH_SPACE:
            steps.append(f"{r} = {self.const(outcomes)}[_bisect({self.const(cuts)}, {hash_})]")
        else:  # bisect_right written out: the outcome of the first cut above the hash (the
            # last cut is above every hash)
            picks = [f"{self.const(outcome)} if h < {cut} else "
                     for outcome, cut in zip(outcomes[:-1], cuts[:-1], strict=True)]
            steps.extend([f"h = {hash_}", f"{r} = {''.join(picks)}{self.const(outcomes[-1])}"])
        steps.append("break")
        return self._wrap(i, flag, steps)

    def _wrap(self, i: int, flag: CompiledFlag, steps: list[str]) -> list[str]:
        code = ["try:", "    while True:", *("        " + step for step in steps),
                "except Exception:", f"    {self.result(i)} = {self.const(flag.failed)}()"]
        self.lines += len(code)
        if self.inline and self.lines > INLINE_MAX:
            raise _TooLong
        return code

    def prerequisite_function(self, j: int) -> None:
        """List mode: `_prerequisite_j(r, fields...)` sets r[j], assuming nothing known."""
        if j not in self.functions:
            self.functions[j] = []  # reserved: a cycle back to j calls it, not recurses here
            self.functions[j] = self.flag(j, (j,), set(), set(range(len(self.plan.flags))))

    # ------------------------------------------------------------------ the module
    def module(self, constants: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        plan, settled = self.plan, self.settled
        count = len(plan.flags)
        outcome = [self.result(i) for i in range(count)]
        body: list[str] = []
        decided = {i for i in range(plan.shown) if settled[i] is not None}
        maybe = set(decided)
        for i in range(plan.shown):
            if i in decided:
                continue
            guard = i in maybe or not self.inline  # possibly decided as a prerequisite
            sure: set[int] = set()
            code = self.flag(i, (i,), decided, maybe, None if guard else sure)
            if guard:
                self.tested.add(self.result(i))
                body.append(f"if {self.result(i)} is None:")
                code = ["    " + line for line in code]
            body.extend(code)
            decided.add(i)
            decided |= sure
        if self.inline:  # None where a result may be left unset, or is tested before
            unset = [r for i, r in enumerate(outcome)
                     if r[0] == "r" and (i not in decided or r in self.tested)]
            body[:0] = [f"{' = '.join(unset)} = None"] if unset else []
        else:
            start = [s if i < plan.shown else None for i, s in enumerate(settled)]
            body[:0] = [f"r = {self.const(start)}.copy()"]
        body += [f"found = _found(({', '.join(outcome)},))",
                 "_note(found.counted)"]  # TALLY.noted
        measured = [i for i, flag in enumerate(plan.flags)
                    if flag.key in plan.unit_positions] if self.inline else []
        if measured:
            # Only a request that an experiment records gets a result of its own, carrying
            # the units its experiment flags were bucketed by (in unit_positions' order).
            # It is made as tuple.__new__(FlagResult, ...), without the NamedTuple's
            # Python-level __new__: ~2,700 instructions a request instead of ~9,000 with
            # it and a zip (callgrind).
            body[:0] = [f"{' = '.join(f'u{i}' for i in measured)} = None"]
            body += ["if found.split:",
                     "    return _hand_out(_FlagResult, (found[0], found[1], found[2], "
                     f"({', '.join(f'u{i}' for i in measured)},)))"]
            self.constants.update(_hand_out=tuple.__new__, _FlagResult=FlagResult)
        body.append("return found")
        self.constants.update(constants)

        # Every field is read loosely (context.field_source): the code above tests a field's
        # truth before using it, but in a tier test, where None and "" are alike not among
        # the tiers (non-empty strings, gateway/config/reader.py string_list).
        source = field_source(plan.settings, self.reads, loose=self.reads)
        self.constants.update(source.constants)
        variables = source.variables
        arguments = ", ".join(variables[name] for name in self.reads)

        def fill(lines: list[str]) -> list[str]:
            out = []
            for line in lines:
                for name, variable in variables.items():
                    line = line.replace(f"<{name}>", variable)
                out.append("    " + line.replace("<fields>", arguments))
            return out

        text: list[str] = []
        for j, code in self.functions.items():
            text += [f"def _prerequisite_{j}(r, {arguments}):", *fill(code), ""]
        current = "_since <= now < _until"
        if plan.overrides is not None:
            current += " and _overrides.version == _version"
        text += ["def from_context(ctx, now):",
                 f"    if not ({current} and ctx.environment == _environment):",
                 "        return _stale_context(ctx, now)",
                 *fill(source.from_context), *fill(body), "",
                 "def from_headers(headers, peer, trusted, now):"]
        if constants["_environment"] == plan.environment:
            text += [f"    if not ({current}):",
                     "        return _stale_headers(headers, peer, trusted, now)",
                     *fill(source.from_headers), *fill(body), ""]
        else:  # settled for another environment than the one decisions from headers are in
            text += ["    return _stale_headers(headers, peer, trusted, now)", ""]
        return "\n".join(text), dict(self.constants)
