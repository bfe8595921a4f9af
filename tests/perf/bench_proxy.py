"""The proxy benchmark: the gateway's bare proxy path against nginx and a naive proxy.

    /work/main/.venv/bin/python tests/perf/bench_proxy.py [--duration S] [--repeat N]

Measured in one run, interleaved (A B C D A B C D ...), medians printed:
- direct:  the upstream itself (nginx answering a fixed small body): the ceiling;
- nginx:   nginx as a plain reverse proxy (1 worker, keep-alive upstream pool);
- naive:   tests/perf/naive_proxy.py, ~60 lines of aiohttp + uvloop;
- gateway: `python -m gateway run`, 1 worker, one catch-all route, no limits/cache/flags.
Then latency at a fixed rate below saturation (open loop) for nginx, naive and gateway.

Target: gateway rps >= naive rps. The exit status is 0 either way: a benchmark on a
shared machine informs, it does not gate.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.perf.perfkit import (
    LAYOUT,
    Lab,
    LoadResult,
    Service,
    checkout,
    gateway_config,
    interleaved,
    medians,
    open_loop,
    say,
    table,
    tools,
    with_cpu,
    wrk,
)

BODY = "hello from the upstream\n"


def check(name: str, url: str) -> None:
    """Every contender must really proxy before it is measured."""
    with urllib.request.urlopen(f"{url}/bench/check?x=1", timeout=5) as response:
        got = response.read().decode()
    if response.status != 200 or got != BODY:
        raise SystemExit(f"{name} at {url} answered {response.status} {got!r}, not the upstream")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--rate", type=float, default=0,
                        help="fixed rate for the latency test (default: 40%% of the slower "
                             "of naive/gateway throughput; negative: skip it)")
    parser.add_argument("--only", nargs="*", help="measure only these contenders")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure the gateway of git revision REV ('baseline')")
    args = parser.parse_args()

    found = tools()
    print(f"wrk: {found.wrk}  nginx: {found.nginx or '(none: responder.py upstream)'}")
    print(LAYOUT.describe())
    with Lab() as lab:
        up = lab.upstream(BODY)
        servers = {"direct": up}
        nginx = lab.nginx_proxy(up.url)
        if nginx is not None:
            servers["nginx"] = nginx
        servers["naive"] = lab.naive_proxy(up.url)
        servers["gateway"] = lab.gateway(gateway_config(up.url))
        if args.baseline:
            servers["baseline"] = lab.gateway(gateway_config(up.url), name="baseline",
                                              source=checkout(args.baseline, lab.dir))
        if args.only:
            servers = {k: v for k, v in servers.items() if k in args.only}
        contenders = {name: service.url for name, service in servers.items()}
        for name, url in contenders.items():
            check(name, url)

        def closed(service: Service) -> LoadResult:
            return with_cpu(service.pid, partial(
                wrk, f"{service.url}/bench", duration=args.duration,
                connections=args.connections))

        runs = interleaved(
            {name: partial(closed, service) for name, service in servers.items()},
            args.repeat,
            warmup=lambda name: say(f"warm-up {name}: {wrk(contenders[name], duration=1).rps:,.0f}"
                                    " rps"),
        )
        rows = medians(runs)
        print()
        print(table(rows, [("gateway", "nginx"), ("gateway", "naive"), ("naive", "nginx"),
                           ("gateway", "direct"), ("gateway", "baseline")], runs,
                    title=f"closed loop: wrk -t1 -c{args.connections} -d{args.duration:g}s, "
                          f"medians of {args.repeat} interleaved rounds"))

        pythons = [n for n in ("naive", "gateway") if n in rows]
        rate = args.rate or max(100.0, round(0.4 * min(rows[n].rps for n in pythons), -2)
                                if pythons else 1000.0)
        fixed = {n: contenders[n] for n in ("nginx", "naive", "gateway", "baseline")
                 if n in contenders}
        latency = interleaved(
            {name: partial(with_cpu, servers[name].pid,
                           partial(open_loop, f"{url}/bench", rate, duration=args.duration))
             for name, url in fixed.items()},
            args.repeat,
        ) if rate > 0 else {}
        if latency:
            print()
            print(table(medians(latency), [("gateway", "nginx"), ("gateway", "naive"),
                                           ("gateway", "baseline")], latency,
                        title=f"open loop at a fixed {rate:g} requests/s for {args.duration:g}s"
                              f" (latency from the scheduled send time), medians of "
                              f"{args.repeat}"))
        if "gateway" in rows and "naive" in rows:
            verdict = "MET" if rows["gateway"].rps >= rows["naive"].rps else "NOT MET"
            print(f"\ntarget (gateway rps >= naive rps): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
