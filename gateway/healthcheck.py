"""`python -m gateway.healthcheck [--config FILE]`: exit 0 when the gateway answers /healthz.

For a container's HEALTHCHECK, which cannot see the gateway's arguments: the admin address
comes from the configuration the gateway runs with (its `--config`: given here, else read
from the container's main process, /proc/1/cmdline, else $GATEWAY_CONFIG), so the check
follows `admin.port` and `admin.host` instead of assuming 127.0.0.1:9901. Exit 1 with one line
saying why otherwise (not answering, not 200, no or invalid configuration).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.config.model import Admin

# Where the admin listener binds "anywhere", the check asks over loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104


def config_path(given: str | None, main_cmdline: Sequence[str],
                environ: Mapping[str, str]) -> str | None:
    """The configuration file: `given`, else the main process's --config, else the env."""
    if given:
        return given
    for i, arg in enumerate(main_cmdline):
        if arg == "--config" and i + 1 < len(main_cmdline):
            return main_cmdline[i + 1]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
    return environ.get("GATEWAY_CONFIG") or None


def healthz_url(admin: Admin) -> str:
    host = _LOOPBACK.get(admin.host, admin.host)
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"http://{host}:{admin.port}/healthz"


def _main_cmdline() -> list[str]:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.healthcheck",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the gateway's YAML configuration")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    path = config_path(args.config, _main_cmdline(), os.environ)
    if path is None:
        print("unhealthy: no configuration (--config, the main process's --config or "
              "GATEWAY_CONFIG)", file=sys.stderr)
        return 1
    try:
        config = load_config(path, os.environ)
    except ConfigError as exc:
        more = f" (and {len(exc.issues) - 1} more)" if len(exc.issues) > 1 else ""
        print(f"unhealthy: {exc.issues[0]}{more}", file=sys.stderr)
        return 1
    url = healthz_url(config.admin)
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
