"""Every target of the performance issue in one command. A script, not collected by pytest:

    .venv/bin/python tests/perf/bench_targets.py [--quick]

Runs, one after the other (never side by side: each pins its processes to the machine's
two cores), the benchmarks that between them measure every target, prints their whole
output as it comes, then the lines that state a target, each under the benchmark it came
from:

- bench_cpu.py: instructions per request (bare, full, the access log) against the naive
  proxy, rps at 64 connections and added latency at c=1 against the naive proxy and nginx;
- bench_redis.py: round trips per request by concurrency, L2 miss and cold-L1 hit against
  the naive proxy, Redis CPU per 3-rule decision, instructions on the Redis routes;
- bench_cache.py, bench_flags.py, bench_ratelimit.py: the ratios that must not get worse
  (cache hit against miss, all flags against none, 3 rules against none); the flags also
  with both routes loaded at the same time and by instructions, since on this machine the
  interleaved rounds alone cannot resolve a few percent.

`--quick`: shorter wrk runs and fewer rounds, for a first look (about half the time);
the figures to quote come from a full run on a quiet machine. The exit status is 0 even
when a target is not met: a benchmark informs, it does not gate.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def runs(quick: bool) -> list[tuple[str, list[str]]]:
    seconds, rounds = ("2", "2") if quick else ("4", "3")
    together = "4" if quick else "8"  # bench_flags' simultaneous rounds (a multiple of 4)
    return [
        ("bench_cpu.py", ["--requests", "300", "--duration", seconds, "--repeat", rounds]),
        ("bench_redis.py", ["--duration", seconds, "--repeat", rounds,
                            "--instructions", "300"]),
        ("bench_cache.py", ["--duration", seconds, "--repeat", rounds]),
        ("bench_flags.py", ["--seconds", seconds, "--repeat", rounds, "--simultaneous",
                            together, "--instructions", "300"]),
        ("bench_ratelimit.py", ["--seconds", seconds, "--rounds", rounds, "--only", "gateway"]),
    ]


def run(script: str, args: list[str]) -> list[str]:
    """The script's output, echoed as it comes; its lines that name a target."""
    command = [sys.executable, str(HERE / script), *args]
    print(f"\n===== {' '.join([script, *args])}", flush=True)
    found: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if "target" in line.lower() and not line.lstrip().startswith("["):
                found.append(line.rstrip())
    if proc.returncode != 0:
        found.append(f"(exited with {proc.returncode}: see its output above)")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer rounds")
    args = parser.parse_args()
    began = time.monotonic()
    summary = [(script, run(script, script_args)) for script, script_args in runs(args.quick)]
    print(f"\n===== targets ({(time.monotonic() - began) / 60:.1f} min)")
    for script, lines in summary:
        print(script)
        for line in lines or ["(no target line)"]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
