"""The sidecar gateway: routing, rate limits, an RFC 9111 cache and feature flags in front
of one service."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway.config import Config, ConfigError, load_config
from gateway.config.lint import config_warnings

# What `--help` lists; `worker` (a process the supervisor starts) stays out of it.


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


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"a TCP port is 1-65535, got {text}")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve")
    _config_arg(run)
    run.add_argument("--workers", type=int, help="processes sharing the port (overrides config)")
    check = commands.add_parser("check", help="validate a configuration and exit")
    _config_arg(check)
    demo = commands.add_parser("demo", help="serve in front of a built-in demo upstream")
    _config_arg(demo)
    demo.add_argument("--port", type=_port, help="the gateway's port (overrides listen.port)")
    demo.add_argument("--admin-port", type=_port,
                      help="the admin listener's port (overrides admin.port)")
    commands.add_parser("schema", help="print the configuration's JSON Schema (for editors)")
    experiment = commands.add_parser("experiment", help="read an experiment's report")
    experiment_commands = experiment.add_subparsers(dest="action", required=True)
    report = experiment_commands.add_parser("report", help="print the report as a table")
    report.add_argument("name")
    report.add_argument("--admin", default="http://127.0.0.1:9901",
                        help="the gateway's admin URL (default: http://127.0.0.1:9901)")
    report.add_argument("--token-env", help="variable holding the admin token, if one is set")
    # The usage line lists what a person runs; `worker` is the supervisor's (added after).
    commands.metavar = "{" + ",".join(commands.choices) + "}"
    worker = commands.add_parser("worker")
    _config_arg(worker)
    worker.add_argument("--control", required=True)
    worker.add_argument("--of", type=int, default=1, dest="of",
                        help="how many workers the instance has (admission limits are split)")
    worker.add_argument("--slot", type=int, default=0,
                        help="this worker's place among them (0 to --of - 1)")
    worker.add_argument("--ledger", default=None,
                        help="the directory where the workers lend each other admission "
                        "permits")
    return parser


def _check(path: str, config: Config) -> int:
    if config.flag_sources:
        print(f"{path}: {len(config.flagd_flags)} flagd flags from "
              f"{', '.join(source.file for source in config.flag_sources)}")
    print(f"{path}: OK: {config.summary()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "schema":
        import json

        from gateway.config.schema import schema

        print(json.dumps(schema(), indent=2))
        return 0

    if args.command == "experiment":
        from gateway.experiments.table import main as report_main

        return report_main(args.name, args.admin,
                           os.environ.get(args.token_env) if args.token_env else None)
    if not args.config:
        parser.error("--config FILE is required (or set GATEWAY_CONFIG)")
    if not _dependencies_fit(checking=args.command == "check"):
        return 1
    config = _load(args.config, checking=args.command == "check")
    if config is None:
        return 1

    if args.command != "worker":  # the supervisor that started a worker has said it already
        for warning in config_warnings(config, os.environ):
            print(f"{args.config}: warning: {warning}",
                  file=sys.stdout if args.command == "check" else sys.stderr)
    if args.command == "check":
        return _check(args.config, config)
    if args.command == "worker":
        from gateway.admission.share import Ledger
        from gateway.server import run_process

        ledger = Ledger(args.ledger, args.slot, args.of) if args.ledger else None
        return run_process(args.config, config, control_path=args.control, reuse_port=True,
                           workers=args.of, ledger=ledger)
    if args.command == "demo":
        from gateway.demo import run_demo

        return run_demo(args.config, config, port=args.port, admin_port=args.admin_port)
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
