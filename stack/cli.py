"""``mtbbs-monitor``: the one-machine stack (``up``), the live view (``watch``)
and the Redis ACL users of each role (``acl``, from :mod:`stack.acl`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from stack.acl import add_acl_command
from stack.settings import StackSettings
from wire.cli import ArgumentParser, add_common_options, guarded, load_config, setup_logging
from wire.config import connect, load_section


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mtbbs-monitor``."""
    parser = ArgumentParser(
        prog="mtbbs-monitor",
        description="Run the whole mtbbs-monitor stack on this machine, watch a fleet, or "
        "print the Redis ACL users of each role.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=ArgumentParser)

    up = commands.add_parser(
        "up", help="start Redis, the collector, an alerter worker and an agent here",
        description="Start an embedded Redis (unless --redis-url names one), the collector, "
        "an alerter worker, an agent and, with --demo, the demo BBS, as child processes. "
        "Their output is shown here, prefixed, and kept in DATA_DIR/logs/. 'is up' is "
        "printed once every component runs; one that dies during start-up is named with its "
        "last lines (exit 1). Ctrl-C stops everything; if a component dies later, the others "
        "are stopped too (exit 1), except the demo BBS, which is restarted after a back-off "
        "while the monitor shows it down.")
    up.add_argument("--demo", action="store_true",
                    help="also run the demo BBS and point the agent's checks at it")
    up.add_argument("--data-dir", metavar="DIR",
                    help="where Redis, the demo BBS, the spool and the logs keep their files "
                    "(default ./var, [stack] data_dir)")
    up.add_argument("--host", metavar="ID",
                    help="host id of the local agent and demo BBS (default: this machine's "
                    "name)")
    up.add_argument("--bbs-port", type=int, metavar="PORT",
                    help="telnet port of the demo BBS; an error if taken (default 2323, or a "
                    "free one when 2323 is taken)")
    up.add_argument("--web-port", type=int, metavar="PORT",
                    help="port of the web page and /metrics on 127.0.0.1; an error if taken "
                    "(default 9100, or a free one when 9100 is taken)")
    up.add_argument("--redis-port", type=int, metavar="PORT",
                    help="port of the embedded Redis; an error if taken (default 6379, or a "
                    "free one when 6379 is taken)")
    up.add_argument("--demo-restart-delay", type=_seconds, metavar="S",
                    help="seconds before a demo BBS that died is started again, doubling "
                    "while it keeps dying (default: three agent intervals, at least 15)")
    up.add_argument("--agent-interval", type=float, metavar="S",
                    help="seconds between the agent's reports (default 5)")
    up.add_argument("--integrity-interval", type=float, metavar="S",
                    help="seconds between the agent's SQLite quick_checks of the BBS database "
                    "(default 300; the first runs at start)")
    up.add_argument("--no-worker", action="store_true", help="do not start an alerter worker")
    up.add_argument("--no-agent", action="store_true", help="do not start an agent")
    add_common_options(up)

    watch = commands.add_parser(
        "watch", help="live view of hosts, sessions, alerts and collectors",
        description="Show every host with its status, sessions, disk and memory figures and "
        "sparklines of recent history, the firing alerts and the collectors' heartbeats, "
        "refreshing in place. When output is not a terminal, print plain-text snapshots.")
    watch.add_argument("--interval", type=float, metavar="S",
                       help="seconds between refreshes (default 2, [stack] watch_interval)")
    watch.add_argument("--once", action="store_true", help="print one snapshot and exit")
    add_common_options(watch)

    add_acl_command(commands)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _stack_settings(args: argparse.Namespace, document: dict[str, Any]) -> StackSettings:
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "host": getattr(args, "host", None),
        "bbs_port": getattr(args, "bbs_port", None),
        "redis_port": getattr(args, "redis_port", None),
        "web_port": getattr(args, "web_port", None),
        "agent_interval": getattr(args, "agent_interval", None),
        "integrity_interval": getattr(args, "integrity_interval", None),
        "watch_interval": getattr(args, "interval", None),
    }
    return load_section(StackSettings, document, "stack", overrides=overrides)


def _up(args: argparse.Namespace) -> int:
    from stack import up

    document, redis_settings = load_config(args)
    stack_settings = _stack_settings(args, document)
    try:
        plan = up.make_plan(
            stack_settings, redis_settings, demo=args.demo, worker=not args.no_worker,
            agent=not args.no_agent, existing_redis=args.redis_url is not None,
            config_file=args.config, log_level=args.log_level, base_env=os.environ,
            # Only a port named on the command line is the sysop's firm choice;
            # the [stack] settings are documented as falling back when taken.
            given_ports=frozenset(name for name in ("redis_port", "bbs_port", "web_port")
                                  if getattr(args, name) is not None),
            restart_delay=args.demo_restart_delay)
        return up.run(plan, redis_settings, stack_settings, sys.stdout)
    except up.UpError as exc:
        print(f"mtbbs-monitor up: {exc}", file=sys.stderr)
        return 1


def _watch(args: argparse.Namespace) -> int:
    from stack import watch

    document, redis_settings = load_config(args)
    stack_settings = _stack_settings(args, document)
    client = connect(redis_settings)
    source = f"{redis_settings.redacted_url()} prefix {redis_settings.prefix}"
    try:
        return watch.run(client, redis_settings.keys, source,
                         interval=stack_settings.watch_interval, once=args.once,
                         history_points=stack_settings.watch_history)
    finally:
        client.close()


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mtbbs-monitor``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.command == "up":
        return _up(args)
    if args.command == "watch":
        return _watch(args)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main(None))
