"""Flag engine speed (issue 5). A script, not collected by pytest:

    /work/main/.venv/bin/python tests/perf/bench_flags.py [--seconds 5]

1. The pure evaluator over the reference config's flags (../shared/spec/gateway.yaml) for
   varied contexts: microseconds per flag evaluation (target <= 3 us).
2. The gateway's requests per second with `flags: all` and with no flags on otherwise
   identical routes of the same gateway process, measured in the same run with wrk,
   alternating (none, all, none, all) so drift hits both alike (target: all >= 95% of none).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway.config import load_config
from gateway.context import RequestContext
from gateway.flags.engine import FlagEngine
from gateway.flags.evaluate import evaluate, today_utc
from tests.harness import SPEC_DIR, free_port, wait_for_port

UPSTREAM = """
import sys
from aiohttp import web
async def ok(request):
    return web.Response(body=b"ok")
app = web.Application()
app.router.add_route("*", "/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

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
            engine.headers(route, ctx)
    spent = time.perf_counter() - started
    print(f"stage (evaluate + headers + summary + metrics, {len(flags)} flags): "
          f"{spent / (rounds * len(ctxs)) * 1e6:.2f} us per request")


def wrk(url: str, seconds: int, script: str) -> float:
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert errors is None, out
    return float(match.group(1))


def bench_gateway(seconds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-flags-"))
    reference = yaml.safe_load((SPEC_DIR / "gateway.yaml").read_text())
    up_port, gw_port, admin_port = free_port(), free_port(), free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": gw_port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "logging": {"level": "warning", "access_log": False},
        "context": {k: reference["context"][k] for k in (
            "trusted_proxies", "user_id", "tenant_id", "subscription_tier", "attributes")},
        "upstreams": {"api": {"url": f"http://127.0.0.1:{up_port}"}},
        "flags": reference["flags"],
        "routes": [
            {"name": "none", "match": {"path_prefix": "/none/"}, "upstream": "api"},
            {"name": "all", "match": {"path_prefix": "/all/"}, "upstream": "api",
             "flags": "all"},
        ],
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    (tmp / "wrk.lua").write_text(WRK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)], env=env)
    log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 - closed below
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config",
                                str(tmp / "gateway.yaml")], env=env, cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(up_port)
        wait_for_port(gw_port)
        base = f"http://127.0.0.1:{gw_port}"
        wrk(f"{base}/none/x", 1, str(tmp / "wrk.lua"))  # warm up
        results: dict[str, list[float]] = {"none": [], "all": []}
        for name in ("none", "all", "none", "all"):
            results[name].append(wrk(f"{base}/{name}/x", seconds, str(tmp / "wrk.lua")))
        none, every = (sum(v) / len(v) for v in (results["none"], results["all"]))
        print(f"gateway, 1 worker, wrk -t1 -c32, {seconds}s x2 each, alternating: "
              f"no flags {none:,.0f} rps {results['none']}, "
              f"flags: all ({len(config['flags'])} flags) {every:,.0f} rps {results['all']}: "
              f"{every / none:.1%} (target >= 95%)")
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            proc.wait(timeout=20)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--no-gateway", action="store_true")
    args = parser.parse_args()
    bench_evaluator()
    if not args.no_gateway:
        bench_gateway(args.seconds)


if __name__ == "__main__":
    main()
