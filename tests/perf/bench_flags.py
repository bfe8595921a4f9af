"""Flag engine speed. A script, not collected by pytest:

    /work/main/.venv/bin/python tests/perf/bench_flags.py [--seconds 5] [--instructions 300] [--baseline REV]

1. The pure evaluator over the reference config's flags (../shared/spec/gateway.yaml) for
   varied contexts: microseconds per flag evaluation (target <= 3 us).
2. The gateway's requests per second with `flags: all` and with no flags on otherwise
   identical routes of the same gateway process, measured in the same run with wrk,
   alternating (none, all, none, all) so drift hits both alike (target: all >= 95% of none),
   in a gateway with the access log off and in one with it on (the default, and the
   performance issue's condition for every target).
3. With --instructions N: the same two routes' instructions per request under callgrind,
   a count that does not move with the neighbours' load.
4. With --simultaneous ROUNDS: the two routes loaded at the same time, on two gateways
   sharing one core, compared round by round; the gateways swap routes every other round
   (ROUNDS: a multiple of 4).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway.config import load_config
from gateway.context import RequestContext
from gateway.flags.engine import FlagEngine
from gateway.flags.evaluate import evaluate, today_utc
from gateway.metrictally import TALLY
from tests.harness import SPEC_DIR

if TYPE_CHECKING:
    from tests.perf.perfkit import LoadResult, Service

WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local tiers = {"free", "business", "enterprise"}
  return wrk.format(nil, nil, {["X-User-Id"] = "user-" .. (n % 50000),
                               ["X-Tenant-Id"] = (n % 7 == 0) and "acme" or "tenant-" .. (n % 97),
                               ["X-Subscription-Tier"] = tiers[(n % 3) + 1],
                               ["X-App-Version"] = "2." .. (n % 12) .. ".0"})
end
"""


def contexts(count: int) -> list[RequestContext]:
    tiers = ("free", "professional", "business", "enterprise")
    return [RequestContext(
        client_ip=f"10.{20 + i % 3}.{i % 250}.{i % 200}", user_id=f"user-{i}",
        tenant_id="acme" if i % 9 == 0 else f"tenant-{i % 97}",
        subscription_tier=tiers[i % 4], attributes={"app_version": f"2.{i % 12}.{i % 3}"},
        environment="production") for i in range(count)]


def bench_evaluator() -> None:
    config = load_config(str(SPEC_DIR / "gateway.yaml"))
    engine = FlagEngine(config)
    flags = list(engine.compiled.values())
    compiled = engine.compiled
    ctxs = contexts(2000)
    today = today_utc(time.time())
    rounds = 25
    started = time.perf_counter()
    for _ in range(rounds):
        for ctx in ctxs:
            memo: dict = {}  # type: ignore[type-arg]
            for flag in flags:
                evaluate(flag, ctx, compiled, today, memo)
    spent = time.perf_counter() - started
    evaluations = rounds * len(ctxs) * len(flags)
    per_flag = spent / evaluations * 1e6
    print(f"pure evaluator: {len(flags)} reference flags, {evaluations} evaluations, "
          f"{evaluations / spent:,.0f}/s, {per_flag:.2f} us per flag (target <= 3 us)")
    route = config.routes[-1]  # flags: all
    started = time.perf_counter()
    for _ in range(rounds):
        for ctx in ctxs:
            decided = engine.decide(route, ctx)  # counted by the plan's code, as served
            assert decided is not None
    spent = time.perf_counter() - started
    TALLY.flush()
    print(f"stage (the route's plan: evaluate, headers, summary, counting; {len(flags)} "
          f"flags): {spent / (rounds * len(ctxs)) * 1e6:.2f} us per request")


def _request(route: str, n: int) -> bytes:
    """What WRK_SCRIPT sends as its n-th request."""
    tenant = "acme" if n % 7 == 0 else f"tenant-{n % 97}"
    tier = ("free", "business", "enterprise")[n % 3]
    return (f"GET /{route}/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: user-{n % 50000}\r\n"
            f"X-Tenant-Id: {tenant}\r\nX-Subscription-Tier: {tier}\r\n"
            f"X-App-Version: 2.{n % 12}.0\r\n\r\n").encode()


def _drive(port: int, route: str, count: int, first: int) -> None:
    from tests.perf.perfkit import drive_keepalive

    drive_keepalive(port, lambda n: _request(route, n), count, first)


def bench_instructions(requests: int, baseline: str | None = None) -> None:
    """Instructions per request of the gateway process on both routes, under callgrind;
    with `baseline`, for that git revision too."""
    import tempfile

    from tests.perf.perfkit import Lab, checkout, instructions_per_request, snapshot

    reference = yaml.safe_load((SPEC_DIR / "gateway.yaml").read_text())
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        up = lab.upstream()
        config = _config(up.url, reference)
        port = config["listen"]["port"]
        # Beside a baseline, both run from a source directory (perfkit.snapshot says why).
        sources: dict[str, Path | None] = {"this tree": None}
        if baseline:
            sources = {"this tree": snapshot(Path(tmp)),
                       baseline[:12]: checkout(baseline, Path(tmp))}
        for name, source in sources.items():
            try:
                counts = instructions_per_request(
                    config, lambda route, count, first: _drive(port, route, count, first),
                    ("none", "all"), requests, source=source)
            except RuntimeError as exc:
                print(f"instructions: {exc}, skipped")
                return
            none, all_ = counts["none"], counts["all"]
            print(f"instructions per request, {name} (callgrind, {requests} requests per "
                  f"route, best of 2): none {none:,.0f}, all {all_:,.0f}: flags add "
                  f"{all_ - none:,.0f} ({all_ / none - 1:.1%}); none/all {none / all_:.1%} "
                  f"(the target, >= 95%, is for rps: a guide)")


def _config(upstream_url: str, reference: dict[str, Any]) -> dict[str, Any]:
    from tests.perf.perfkit import gateway_config

    config = gateway_config(upstream_url, flags=reference["flags"], routes=[
        {"name": "none", "match": {"path_prefix": "/none/"}, "upstream": "api"},
        {"name": "all", "match": {"path_prefix": "/all/"}, "upstream": "api",
         "flags": "all"},
    ])
    config["context"] = {k: reference["context"][k] for k in (
        "trusted_proxies", "user_id", "tenant_id", "subscription_tier", "attributes")}
    return config


def _load(gw: Service, route: str, seconds: int) -> Callable[[], LoadResult]:
    """One wrk run on one of a gateway's two routes, with its CPU per request."""
    from tests.perf.perfkit import with_cpu, wrk

    return lambda: with_cpu(gw.pid, lambda: wrk(
        f"{gw.url}/{route}/x", duration=seconds, connections=32, lua=WRK_SCRIPT))


def bench_gateway(seconds: int, repeat: int) -> None:
    """`flags: all` vs no flags on two routes of one gateway, pinned, interleaved (perfkit):
    in a gateway with the access log off (the flags' share of a request at its largest) and
    in one with it on (as production runs, the performance issue's condition)."""
    from tests.harness import free_port
    from tests.perf.perfkit import Lab, interleaved, medians, rps_ratios, say, table

    reference = yaml.safe_load((SPEC_DIR / "gateway.yaml").read_text())
    with Lab() as lab:
        up = lab.upstream()
        gateways = {}
        for log in (False, True):
            config = _config(up.url, reference)
            config["logging"]["access_log"] = log
            config["listen"]["port"], config["admin"]["port"] = free_port(), free_port()
            gateways[log] = lab.gateway(config, name=f"gateway-log-{'on' if log else 'off'}")

        runs_of = {"none": _load(gateways[False], "none", seconds),
                   "all": _load(gateways[False], "all", seconds),
                   "none-log": _load(gateways[True], "none", seconds),
                   "all-log": _load(gateways[True], "all", seconds)}
        runs = interleaved(runs_of, repeat=repeat, warmup=lambda name: say(
            f"warm-up {name}: {runs_of[name]().rps:,.0f} rps"))
        rows = medians(runs)
        print(table(rows, ratios=[("all", "none"), ("all-log", "none-log")], runs=runs,
                    title=f"gateway, 1 worker, wrk -c32 -d{seconds}s, 50,000 users, "
                          f"{len(reference['flags'])} reference flags, medians of {repeat}; "
                          f"-log: the access log on"))
        for state, (on, off) in (("off", ("all", "none")), ("on", ("all-log", "none-log"))):
            share = rows[on].rps / rows[off].rps
            print(f"flags, access log {state}: all keeps {share:.1%} of the no-flag rps (target "
                  f">= 95%); median of the per-round ratios "
                  f"{statistics.median(rps_ratios(runs, on, off)):.1%}")


def bench_simultaneous(seconds: int, rounds: int, log: bool) -> None:
    """The same comparison with both routes loaded at the same time: two gateway processes
    of the same config pinned to the same core, one loaded on /none/, the other on /all/
    (perfkit.simultaneous), so a neighbour's burst hits both alike; every other round the
    two swap routes, so what differs between the processes themselves cancels out."""
    from tests.harness import free_port
    from tests.perf.perfkit import Lab, medians, rps_ratios, simultaneous, table

    reference = yaml.safe_load((SPEC_DIR / "gateway.yaml").read_text())
    with Lab() as lab:
        up = lab.upstream()
        config = _config(up.url, reference)
        config["logging"]["access_log"] = log
        gateways = []
        for name in ("a", "b"):
            config["listen"]["port"], config["admin"]["port"] = free_port(), free_port()
            gateways.append(lab.gateway(config, name=f"gateway-{name}"))

        def serving(*routes: str) -> dict[str, Service]:
            return {route: dataclasses.replace(gw, url=f"{gw.url}/{route}")
                    for route, gw in zip(routes, gateways, strict=True)}

        runs = simultaneous(serving("none", "all"), rounds=rounds, duration=seconds,
                            path="/x", lua=WRK_SCRIPT, alternate=serving("all", "none"))
        state = "on" if log else "off"
        print(table(medians(runs), ratios=[("all", "none")], runs=runs,
                    title=f"simultaneous: two gateways sharing one core, access log {state}, "
                          f"wrk -c32 -d{seconds}s on each, medians of {rounds}"))
        ratios = rps_ratios(runs, "all", "none")
        print(f"flags, simultaneous, access log {state}: all keeps "
              f"{statistics.median(ratios):.1%} of the no-flag rps, median of the per-round "
              f"ratios ({min(ratios):.1%}-{max(ratios):.1%}; target >= 95%)")


def bench_baseline(seconds: int, repeat: int, rev: str) -> None:
    """Item 5 of the module's docstring."""
    import tempfile

    from tests.harness import free_port
    from tests.perf.perfkit import (
        Lab,
        checkout,
        interleaved,
        medians,
        paired,
        rps_ratios,
        say,
        snapshot,
        table,
    )

    reference = yaml.safe_load((SPEC_DIR / "gateway.yaml").read_text())
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        up = lab.upstream()
        gateways = {}
        # Both started from a source directory, as perfkit.snapshot says they must be.
        for name, source in ((rev[:12], checkout(rev, Path(tmp))),
                             ("now", snapshot(Path(tmp)))):
            config = _config(up.url, reference)
            config["logging"]["access_log"] = True
            config["listen"]["port"], config["admin"]["port"] = free_port(), free_port()
            gateways[name] = lab.gateway(config, name=f"gateway-{name}", source=source)

        runs_of = {f"{name} {route}": _load(gw, route, seconds)
                   for name, gw in gateways.items() for route in ("none", "all")}
        runs = interleaved(runs_of, repeat=repeat, warmup=lambda label: say(
            f"warm-up {label}: {runs_of[label]().rps:,.0f} rps"))
        print(table(medians(runs), ratios=[(f"{name} all", f"{name} none") for name in gateways],
                    runs=runs, title=f"{rev} and this tree, access log on, 1 worker each, "
                                     f"wrk -c32 -d{seconds}s, medians of {repeat}"))
        for name in gateways:
            on, off = f"{name} all", f"{name} none"
            added = paired(runs, on, off)
            base = statistics.median(r.extra["cpu_us"] for r in runs[off])
            print(f"{name}: the flags add {statistics.median(added):.1f} us of gateway CPU per "
                  f"request (median of the per-round differences, {min(added):.1f} to "
                  f"{max(added):.1f}) to {base:.0f}; all keeps "
                  f"{statistics.median(rps_ratios(runs, on, off)):.1%} of the no-flag rps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved gateway rounds")
    parser.add_argument("--no-gateway", action="store_true")
    parser.add_argument("--simultaneous", type=int, default=0, metavar="ROUNDS",
                        help="also the simultaneous comparison (two gateways on one core)")
    parser.add_argument("--instructions", type=int, default=0, metavar="N",
                        help="also count instructions per request under callgrind, N requests "
                             "per route (300 takes about a minute)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also the flags' added CPU per request at REV and now (item 5); "
                             "with --instructions, REV's counts too")
    args = parser.parse_args()
    bench_evaluator()
    if args.instructions:
        bench_instructions(args.instructions, args.baseline)
    if not args.no_gateway:
        bench_gateway(args.seconds, args.repeat)
    if args.simultaneous:
        for log in (False, True):
            bench_simultaneous(args.seconds, args.simultaneous, log)
    if args.baseline:
        bench_baseline(args.seconds, args.repeat, args.baseline)


if __name__ == "__main__":
    main()
