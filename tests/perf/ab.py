"""Simultaneous A/B of the bare proxy path: this working tree against a git revision.

    /work/main/.venv/bin/python tests/perf/ab.py [--baseline REV] [--rounds N] [--naive]

Both gateways run from a source directory (`git archive REV` and a copy of this tree's
`gateway/`), are pinned to the same core and are loaded at the same time (perfkit's
`simultaneous`), so the machine's other load hits both alike. Prints each round, the
median rps and CPU us/req of each side, and the paired per-round CPU differences
candidate - baseline with their median. `--baseline HEAD` on a clean tree is an A/A run:
its median difference is the method's own resolution. Measured here (load ~170 us/req,
9 x 3 s): A/A medians of +1.8 and -3.4 us/req, so one run resolves ~4 us/req, not less;
the two processes of a pair differ on their own by that much, so repeat the whole run
(new processes) before believing a smaller difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.perf.perfkit import (
    LAYOUT,
    Lab,
    checkout,
    gateway_config,
    paired,
    say,
    simultaneous,
    snapshot,
)

# The same string hashing in both processes: with random seeds two runs of the same code
# differed by a few us/req (dict and set layouts), as much as the changes measured here.
SAME = {"PYTHONHASHSEED": "0"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections each")
    parser.add_argument("--naive", action="store_true",
                        help="also load tests/perf/naive_proxy.py at the same time")
    args = parser.parse_args()
    say(LAYOUT.describe())
    with Lab() as lab:
        up = lab.upstream()
        services = {
            "candidate": lab.gateway(gateway_config(up.url), name="candidate",
                                     source=snapshot(lab.dir), env=SAME),
            "baseline": lab.gateway(gateway_config(up.url), name="baseline",
                                    source=checkout(args.baseline, lab.dir), env=SAME),
        }
        if args.naive:
            services["naive"] = lab.naive_proxy(up.url)
        results = simultaneous(services, rounds=args.rounds, duration=args.duration,
                               connections=args.connections)
    for name, runs in results.items():
        print(f"median {name}: {statistics.median(r.rps for r in runs):,.0f} rps, "
              f"{statistics.median(r.extra['cpu_us'] for r in runs):.1f} cpu us/req")
    for other in list(results)[1:]:
        diffs = paired(results, "candidate", other)
        print(f"cpu us/req candidate - {other} per round: "
              + " ".join(f"{d:+.1f}" for d in diffs)
              + f"; median {statistics.median(diffs):+.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
