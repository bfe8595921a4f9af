"""From rules and a request context to the checks one decision makes (pure, no I/O);
`plan` compiles them per route and caches them per combination of scope values.

Keys: `{key_prefix}{rl:<tag>}:<rule>:<kind>:<scope value>`, e.g.
`gw:{rl:1f3a09c2}:user_requests:sw3:u42`.

* The hash tag `{rl:<tag>}` spreads the keys over Redis Cluster's slots: `<tag>` is eight hex
  digits of the CRC-32 of the scope value (of `*<rule>` for a global rule, whose value is
  always `*`; `#<n>` is appended for shard n of a sharded rule). So different users,
  tenants, addresses land on different slots, while every rule of one user (every rule
  counting per the same value) shares a slot and is decided by one script call. A request
  whose rules span slots (a user rule and a global rule) is decided per slot and made
  all-or-nothing by the store (`gateway/ratelimit/cluster_store.py`). The tag is fixed
  length and rule names cannot contain ':', so keys stay unambiguous whatever the value.
* `<kind>` names the algorithm and the layout of its state (`tb2`, `lb2`, `sw3`, `fw2`: packed
  doubles, see `lua/ratelimit.lua`), so changing a rule's algorithm on reload, or upgrading
  from a release that stored another layout, starts a fresh counter instead of misreading
  one.
* The scope value comes last: rule names cannot contain ':', so no user id can forge the key
  of another rule or part. API keys arrive hashed (`RequestContext.api_key`).
* A rule whose scope value is absent from the request (no user id for a `user` rule, no such
  attribute for `attribute:<name>`) does what its `when_absent` says: `skip` (the rule does
  not apply), `reject` (the stage refuses the request), or `ip`: the rule counts per client
  address under `{key_prefix}{rl:<tag>}:<rule>:@ip:<kind>:<address>`. The `@ip` part sits where
  the algorithm part of every other key is, and no algorithm part starts with `@`, so an
  address counter can never share a key with the counter of a user (or tenant...) whose id
  happens to be that address, nor with an ip-scoped rule (whose keys carry its own name).
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

from gateway.config.model import Action, Algorithm, RateLimitRule, Scope
from gateway.context import RequestContext

GLOBAL_VALUE = "*"
BY_IP = "@ip:"  # the key part of a rule counting per address for want of its own value
SHARD = "#"  # the key part naming a shard of a sharded rule: no algorithm part starts so

ALGORITHM_CODE = {
    Algorithm.TOKEN_BUCKET: 1, Algorithm.LEAKY_BUCKET: 2,
    Algorithm.SLIDING_WINDOW: 3, Algorithm.FIXED_WINDOW: 4,
}
_KEY_PARTS = {
    Algorithm.TOKEN_BUCKET: ("tb2",), Algorithm.LEAKY_BUCKET: ("lb2",),
    Algorithm.SLIDING_WINDOW: ("sw3",), Algorithm.FIXED_WINDOW: ("fw2",),
}

_SCOPE_READERS: dict[str, Callable[[RequestContext, Scope], str | None]] = {
    "global": lambda ctx, scope: GLOBAL_VALUE,
    "tenant": lambda ctx, scope: ctx.tenant_id,
    "user": lambda ctx, scope: ctx.user_id,
    "ip": lambda ctx, scope: ctx.client_ip or None,
    "api_key": lambda ctx, scope: ctx.api_key,
    "attribute": lambda ctx, scope: ctx.attributes.get(scope.attribute or ""),
}


def scope_value(scope: Scope, ctx: RequestContext) -> str | None:
    """The value a rule counts per, or None when the request does not carry it."""
    return _SCOPE_READERS[scope.kind](ctx, scope) or None


def soft(rule: RateLimitRule) -> bool:
    """Reported but never blocking: shadow rules, and degrade (forwarded anyway)."""
    return rule.shadow or rule.action is Action.DEGRADE


def key_bases(rule_name: str, algorithm: Algorithm, by_ip: bool = False,
              shard: int | None = None) -> tuple[str, ...]:
    """The keys of a rule between the hash tag and the scope value; `by_ip`: the keys of its
    `when_absent: ip` counters; `shard`: the keys of one shard of a sharded rule."""
    middle = BY_IP if by_ip else ""
    if shard is not None:
        middle += f"{SHARD}{shard}:"
    return tuple(f":{rule_name}:{middle}{part}:" for part in _KEY_PARTS[algorithm])


def tag_source(rule_name: str, value: str, shard: int | None = None) -> str:
    """What the hash tag of a rule's keys is made from (see the module docstring)."""
    source = f"{GLOBAL_VALUE}{rule_name}" if value == GLOBAL_VALUE else value
    return source if shard is None else f"{source}{SHARD}{shard}"


def hash_tag(prefix: str, source: str) -> str:
    return f"{prefix}{{rl:{zlib.crc32(source.encode('utf-8', 'surrogateescape')):08x}}}"


def rule_keys(prefix: str, rule_name: str, algorithm: Algorithm, value: str,
              by_ip: bool = False, shard: int | None = None) -> tuple[str, ...]:
    head = hash_tag(prefix, tag_source(rule_name, value, shard))
    return tuple(head + base + value for base in key_bases(rule_name, algorithm, by_ip, shard))


class Check(NamedTuple):
    """One rule applied to one request: what the store decides (a tuple: cheap to build)."""

    rule: RateLimitRule
    keys: tuple[str, ...]
    limit: int
    burst: int
    window_us: int
    cost: int

    @property
    def quota(self) -> int:
        return self.limit + self.burst

    @property
    def soft(self) -> bool:
        return soft(self.rule)

    def script_args(self) -> bytes:
        """This rule's part of lua/ratelimit.lua's ARGV[3] (its six numbers packed as
        little-endian doubles, which the script unpacks in one call instead of parsing six
        decimals), encoded once per rule and tier."""
        return _script_args(ALGORITHM_CODE[self.rule.algorithm], self.limit, self.burst,
                            self.window_us, self.cost, self.soft)


@functools.lru_cache(maxsize=4096)
def _script_args(*values: int) -> bytes:
    return _RULE_ARGS.pack(*values)


_RULE_ARGS = struct.Struct("<6d")  # exact: every value is an integer below 2^53


def window_us(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1_000_000 - 1e-6))


def tier_params(rule: RateLimitRule, tier: str | None) -> tuple[int, int, int]:
    """(limit, burst, window_us) with the tier's overrides (unset fields keep the rule's)."""
    override = rule.tiers.get(tier) if tier is not None else None
    limit, burst, window = rule.limit, rule.burst, rule.window
    if override is not None:
        limit = override.limit if override.limit is not None else limit
        burst = override.burst if override.burst is not None else burst
        window = override.window if override.window is not None else window
    return limit, burst, window_us(window)


def _share(units: int, shards: int, shard: int) -> int:
    return units // shards + (1 if shard < units % shards else 0)


def shard_params(algorithm: Algorithm, limit: int, burst: int, shards: int, shard: int
                 ) -> tuple[int, int]:
    """(limit, burst) of one shard: the rule's units dealt out so the shards add up to the
    rule exactly. Rate and capacity are split alike; a leaky bucket's capacity is burst + 1,
    so its shards share burst + 1 (the config asks for at least one unit per shard)."""
    if shards == 1:
        return limit, burst
    if algorithm is Algorithm.LEAKY_BUCKET:
        return _share(limit, shards, shard), _share(burst + 1, shards, shard) - 1
    return _share(limit, shards, shard), _share(burst, shards, shard)


def make_check(rule: RateLimitRule, prefix: str, value: str, tier: str | None,
               cost: int, by_ip: bool = False, shard: int | None = None) -> Check:
    limit, burst, window = tier_params(rule, tier)
    if shard is not None:
        limit, burst = shard_params(rule.algorithm, limit, burst, rule.shards, shard)
    return Check(rule, rule_keys(prefix, rule.name, rule.algorithm, value, by_ip, shard),
                 limit, burst, window, cost)
