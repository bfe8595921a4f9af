"""`gateway run | check | demo` (and `worker`, which the supervisor starts)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway.config import Config, ConfigError, load_config


def _load(path: str, checking: bool) -> Config | None:
    try:
        return load_config(path, os.environ)
    except ConfigError as exc:
        out = sys.stdout if checking else sys.stderr
        for issue in exc.issues:
            print(issue, file=out)
        verdict = "invalid" if checking else "the gateway was not started"
        print(f"{path}: {len(exc.issues)} error(s); {verdict}", file=out)
        return None


def _dependencies_fit(checking: bool) -> bool:
    """Run the probes of gateway.wire: a dependency whose internals the gateway relies on
    must have them, else nothing starts (and `check` says why)."""
    from gateway.wire import DependencyMismatch, verify

    try:
        verify()
    except DependencyMismatch as exc:
        out = sys.stdout if checking else sys.stderr
        print(f"{exc}\n" + ("invalid installation" if checking else "the gateway was not started"),
              file=out)
        return False
    return True


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=os.environ.get("GATEWAY_CONFIG"),
        help="the YAML configuration (default: $GATEWAY_CONFIG)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve")
    _config_arg(run)
    run.add_argument("--workers", type=int, help="processes sharing the port (overrides config)")
    check = commands.add_parser("check", help="validate a configuration and exit")
    _config_arg(check)
    demo = commands.add_parser("demo", help="serve in front of a built-in demo upstream")
    _config_arg(demo)
    worker = commands.add_parser("worker", help=argparse.SUPPRESS)
    _config_arg(worker)
    worker.add_argument("--control", required=True)
    args = parser.parse_args(argv)

    if not args.config:
        parser.error("--config FILE is required (or set GATEWAY_CONFIG)")
    if not _dependencies_fit(checking=args.command == "check"):
        return 1
    config = _load(args.config, checking=args.command == "check")
    if config is None:
        return 1

    if args.command == "check":
        print(f"{args.config}: OK: {config.summary()}")
        return 0
    if args.command == "worker":
        from gateway.server import run_process

        return run_process(args.config, config, control_path=args.control, reuse_port=True)
    if args.command == "demo":
        from gateway.demo import run_demo

        return run_demo(args.config, config)
    workers = args.workers if args.workers is not None else config.workers
    if workers < 1:
        parser.error("--workers must be at least 1")
    if workers == 1:
        from gateway.server import run_process

        return run_process(args.config, config)
    from gateway.supervisor import run_supervisor

    return run_supervisor(args.config, config, workers)


if __name__ == "__main__":
    raise SystemExit(main())
