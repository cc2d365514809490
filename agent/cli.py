"""``mtbbs-agent``: the agent daemon of a BBS host, and a look into its spool.

``mtbbs-agent run`` checks the host every ``[agent] interval`` seconds and
publishes one report per cycle on the reports stream, spooling to disk while
Redis is unreachable. It stays in the foreground, logs to stderr, tells
systemd when it is ready (``Type=notify``, ``WatchdogSec=`` work), and exits
0 on SIGTERM or SIGINT after a last delivery attempt. With ``--once`` it runs
one cycle and exits with the health check's codes (0 healthy, 1 warning,
2 critical, 3 the agent itself failed).

``mtbbs-agent spool`` shows what waits in the spool, without changing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.backoff import NoBackoff
from redis.retry import Retry

from agent.checks import CheckSettings
from agent.checks.settings import SECTION as CHECKS_SECTION
from agent.checks.settings import add_check_options, check_overrides
from agent.daemon import Daemon, HostChecks, Notify, exit_status
from agent.publisher import Backoff, Publisher
from agent.settings import (
    SPOOL_DEFAULT_DOC,
    AgentSettings,
    ProbeSettings,
    default_spool_path,
)
from agent.spool import Spool, SpoolError, SpoolStatus, inspect
from wire.auth import key_for, load_host_keys
from wire.cli import (
    EXIT_SCRIPT_ERROR,
    ArgumentParser,
    add_common_options,
    guarded,
    load_config,
    setup_logging,
)
from wire.config import RedisSettings, connect, load_section
from wire.errors import ConfigError
from wire.keys import KeySpace

SPOOL_HELP = f"spool file (default {SPOOL_DEFAULT_DOC})"


def spool_path(settings: AgentSettings, env: Mapping[str, str]) -> Path:
    """The configured spool, else the default one for this user (always absolute)."""
    if settings.spool_path is not None:
        return settings.spool_path
    try:
        return default_spool_path(env)
    except ValueError as exc:
        raise ConfigError("agent.spool_path", str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """``run`` and ``spool``, each with the common options."""
    parser = ArgumentParser(prog="mtbbs-agent",
                            description="The MTBBS monitoring agent of one BBS host.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="check the host on a schedule and publish reports",
                              description="Run the checks every interval and publish one "
                              "report per cycle on the reports stream; spool while Redis is "
                              "unreachable. SIGTERM/SIGINT: flush, exit 0.")
    schedule = run.add_argument_group("schedule and delivery ([agent] settings)")
    schedule.add_argument("--interval", type=float, metavar="SECONDS",
                          help="seconds between cycles (default 60)")
    schedule.add_argument("--integrity-interval", type=float, metavar="SECONDS",
                          help="seconds between database quick_checks, 0 every cycle "
                          "(default 300)")
    schedule.add_argument("--metrics-interval", type=float, metavar="SECONDS",
                          help="seconds between uptime metrics, 0 every report (default 0)")
    schedule.add_argument("--spool", metavar="PATH", help=SPOOL_HELP)
    schedule.add_argument("--once", action="store_true",
                          help="run one cycle, try to deliver it, exit 0/1/2 like "
                          "mtbbs-health-check")
    probe = run.add_argument_group("telnet probe ([probe] settings)")
    probe.add_argument("--no-probe", action="store_true", help="do not probe the telnet port")
    probe.add_argument("--probe-host", metavar="ADDR", help="address to probe (default "
                       "127.0.0.1)")
    probe.add_argument("--probe-port", type=int, metavar="PORT",
                       help="telnet port to probe (default 2323)")
    probe.add_argument("--probe-slow-ms", type=float, metavar="MS",
                       help="a slower banner is unhealthy (default 2000)")
    add_check_options(run, host_help="host id of the reports (default: short host name)",
                      omit=("--db-timeout", "--max-same-ip"))
    add_common_options(run)

    spool = commands.add_parser("spool", help="show the reports waiting in the spool",
                                description="Show the spool's size, sequence and dropped "
                                "reports without changing it.")
    spool.add_argument("--spool", metavar="PATH", help=SPOOL_HELP)
    spool.add_argument("--json", action="store_true", help="print one JSON document")
    add_common_options(spool)
    return parser


def _agent_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "interval": getattr(args, "interval", None),
        "integrity_interval": getattr(args, "integrity_interval", None),
        "metrics_interval": getattr(args, "metrics_interval", None),
        "spool_path": args.spool,
    }


def _probe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "enabled": False if args.no_probe else None,
        "host": args.probe_host,
        "port": args.probe_port,
        "slow_ms": args.probe_slow_ms,
    }


def host_key(settings: AgentSettings, host: str) -> bytes | None:
    """This host's signing key from ``host_key_file``, or None when none is configured."""
    if settings.host_key_file is None:
        return None
    key = key_for(load_host_keys(settings.host_key_file), host)
    if key is None:
        raise ConfigError("agent.host_key_file",
                          f"{settings.host_key_file} has no key for host {host}")
    return key


def setup_summary(redis_settings: RedisSettings, checks: CheckSettings,
                  signed: bool) -> str:
    """The configuration a sysop checks first, for the start-up line (no secrets)."""
    if checks.bbs_pid is not None:
        process = f"pid {checks.bbs_pid}"
    elif checks.bbs_pidfile is not None:
        process = f"pidfile {checks.bbs_pidfile}"
    elif checks.bbs_port and checks.bbs_match:
        process = (f"process listening on port {checks.bbs_port}, else matching "
                   f"{checks.bbs_match!r}")
    elif checks.bbs_port:
        process = f"process listening on port {checks.bbs_port}"
    else:
        process = f"process matching {checks.bbs_match!r}"
    return (f"redis={redis_settings.redacted_url()} prefix={redis_settings.prefix}"
            f"{' (signed)' if signed else ''}, db={checks.db}, data_dir={checks.data_dir}, "
            f"BBS {process}; limits: disk {checks.disk_percent:g}%, "
            f"RSS {checks.process_rss_mb:g} MB, system memory "
            f"{checks.system_memory_percent:g}%, {checks.max_sessions} sessions, "
            f"{checks.max_same_ip} per IP")


def systemd_notifier(env: Mapping[str, str]) -> Notify | None:
    """A sender of sd_notify messages when systemd gave us a socket."""
    address = env.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return None
    target = "\0" + address[1:] if address.startswith("@") else address
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def notify(message: str) -> None:
        try:
            sock.sendto(message.encode("ascii"), target)
        except OSError:
            pass  # systemd gone or not listening: nothing to tell

    return notify


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``mtbbs-agent run``."""
    document, redis_settings = load_config(args, env)
    settings = load_section(AgentSettings, document, "agent", env, _agent_overrides(args))
    probe = load_section(ProbeSettings, document, "probe", env, _probe_overrides(args))
    check_settings = load_section(CheckSettings, document, CHECKS_SECTION, env,
                                  check_overrides(args))
    if check_settings.bbs_port is None:
        # The port the probe calls is the BBS's: its listener is the BBS process.
        check_settings = dataclasses.replace(check_settings, bbs_port=probe.port)
    host = check_settings.host
    key = host_key(settings, host)
    keys: KeySpace = redis_settings.keys
    # Our own backoff paces the retries; redis-py's would stall a cycle.
    client = connect(redis_settings, retry=Retry(NoBackoff(), 0))
    checks = HostChecks(check_settings, redis_client=client, keys=keys)

    with Spool(spool_path(settings, env), max_reports=settings.spool_max_reports,
               synchronous=settings.spool_sync) as spool:
        publisher = Publisher(client, keys, spool, host=host, maxlen=settings.stream_maxlen,
                              batch=settings.replay_batch, host_key=key,
                              backoff=Backoff(settings.backoff_initial, settings.backoff_max,
                                              settings.backoff_jitter))
        daemon = Daemon(settings, probe, host=host, spool=spool, publisher=publisher,
                        run_checks=checks, notify=systemd_notifier(env),
                        setup=setup_summary(redis_settings, check_settings, key is not None))
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda _signum, _frame: daemon.stop())
        report = daemon.run(once=args.once)
    client.close()
    return int(exit_status(report)) if args.once else 0


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_status(status: SpoolStatus) -> str:
    """The spool's status for a terminal."""
    lines = [
        f"Spool:          {status.path}",
        f"Epoch:          {status.epoch}",
        f"Last seq:       {status.last_seq}",
        f"Waiting:        {status.pending} of at most {status.max_reports}",
    ]
    if status.pending:
        lines.append(f"Oldest waiting: seq {status.oldest_seq}, observed "
                     f"{_iso(status.oldest_observed_at)}")
    lines.append(f"Dropped:        {status.dropped_total} in total, {status.dropped_pending} "
                 "not yet reported")
    return "\n".join(lines)


def show_spool(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``mtbbs-agent spool``."""
    document, _redis = load_config(args, env)
    settings = load_section(AgentSettings, document, "agent", env, {"spool_path": args.spool})
    status = inspect(spool_path(settings, env), settings.spool_max_reports)
    if args.json:
        doc = dict(status.__dict__, oldest_observed_at=_iso(status.oldest_observed_at))
        print(json.dumps(doc, indent=2))
    else:
        print(format_status(status))
    return 0


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mtbbs-agent``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("a command is required: run or spool")
    env = os.environ
    setup_logging(args.log_level, env)
    try:
        if args.command == "run":
            return run(args, env)
        return show_spool(args, env)
    except SpoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SCRIPT_ERROR


if __name__ == "__main__":
    sys.exit(main(None))
