"""``mtbbs-health-check``: the seed's stand-alone health check, installed.

Runs the four checks once and prints them as the seed specifies (standard,
``--verbose`` or ``--json``; ``--quiet`` prints only problems), exiting with
the seed's codes: 0 healthy, 1 warning (disk, memory, sessions), 2 a
database problem, 3 a failure of the check itself (one line on stderr).
Cron jobs, Nagios plugins and Zabbix user parameters script against this
output, so its layout and field names do not change.

The sessions figures come from the central Redis when one is configured
(``--redis-url``, ``$MTBBS_REDIS_URL``, or ``url`` or ``sentinels`` in the
file's ``[redis]`` section, ``$MTBBS_REDIS_SENTINELS``). Without one the
command neither imports nor connects a Redis client, so a cron job on a BBS
host costs no more than the seed's script. When sessions cannot be read that
is shown plainly but never raises the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.checks import CHECK_ORDER, CheckSettings, run_checks
from agent.checks.settings import SECTION, add_check_options, check_overrides
from wire.cli import ArgumentParser, add_common_options, guarded, load_config, setup_logging
from wire.config import connect, env_name, load_section
from wire.state import check_status, report_status
from wire.status import Status

if TYPE_CHECKING:  # types only: a run needs no message codec
    from wire.messages import FieldValue

BANNER = "=" * 60
TITLES = {
    "database": "Database",
    "sessions": "Sessions",
    "disk_space": "Disk Space",
    "memory": "Memory",
}
LABELS = {Status.OK: "✅ OK", Status.WARNING: "⚠️ WARNING", Status.CRITICAL: "❌ CRITICAL"}
UNAVAILABLE = "❔ UNAVAILABLE"
SUMMARY = {
    Status.OK: "✅ System Status: HEALTHY",
    Status.WARNING: "⚠️ System Status: WARNING",
    Status.CRITICAL: "❌ System Status: CRITICAL",
}
# The session list of --verbose stops here; the count above it is exact.
MAX_SESSIONS_SHOWN = 200

Checks = Mapping[str, Mapping[str, "FieldValue"]]


def build_parser() -> argparse.ArgumentParser:
    """The seed's flags, plus the host id, Redis and threshold overrides."""
    # The seed's script shows argparse's usage block before the error line.
    parser = ArgumentParser(
        prog="mtbbs-health-check", usage_on_error=True,
        description="Check the MTBBS database, sessions, disk space and memory once. "
        "Exit 0 healthy, 1 warning, 2 critical (database), 3 the check itself failed.",
    )
    mode = parser.add_argument_group("output")
    mode.add_argument("-v", "--verbose", action="store_true",
                      help="show the figures of every check and each session")
    mode.add_argument("--json", action="store_true",
                      help="print one JSON document (for monitoring tools)")
    mode.add_argument("-q", "--quiet", action="store_true",
                      help="print nothing when all is well, only the problems otherwise")
    add_check_options(parser, host_help="host id whose sessions are read "
                      "(default: short host name)")
    add_common_options(parser)
    return parser


# -- presentation ------------------------------------------------------------


def _number(value: FieldValue, spec: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return "n/a"


def label(name: str, fields: Mapping[str, FieldValue]) -> str:
    """``✅ OK``, ``⚠️ WARNING``, ``❌ CRITICAL`` or, for unread sessions, UNAVAILABLE."""
    if name == "sessions" and fields.get("available") is False:
        return UNAVAILABLE
    return LABELS[check_status(name, bool(fields.get("healthy")))]


def _database_lines(fields: Mapping[str, FieldValue], verbose: bool) -> list[str]:
    lines = []
    if verbose and fields.get("integrity") is not None:
        lines.append(f"  - Integrity: {fields['integrity']}")
        lines.append(f"  - Size: {_number(fields.get('size_mb'), '.2f')} MB")
        lines.append(f"  - Tables: {fields.get('table_count')}")
    return lines


def _sessions_lines(fields: Mapping[str, FieldValue], verbose: bool) -> list[str]:
    if fields.get("available") is False:
        return []
    active = fields.get("active_sessions")
    lines = [f"  - Active: {active}"]
    listed = fields.get("sessions")
    if verbose and isinstance(listed, tuple | list):
        for item in listed[:MAX_SESSIONS_SHOWN]:
            user = item.get("user_id")
            lines.append(f"    - {item.get('client_id')}: user={user if user is not None else '-'}"
                         f", state={item.get('state')}")
        if isinstance(active, int) and active > min(len(listed), MAX_SESSIONS_SHOWN):
            lines.append(f"    - ... and {active - min(len(listed), MAX_SESSIONS_SHOWN)} more")
    if not fields.get("healthy"):
        limit = fields.get("max_sessions")
        if isinstance(active, int) and isinstance(limit, int) and active > limit:
            lines.append(f"  - Over the limit of {limit} sessions")
        top, count, same = (fields.get("top_ip"), fields.get("top_ip_sessions"),
                            fields.get("max_same_ip"))
        if isinstance(count, int) and isinstance(same, int) and count > same:
            lines.append(f"  - Most from one IP: {top} ({count}, limit {same})")
    return lines


def _disk_lines(fields: Mapping[str, FieldValue], verbose: bool) -> list[str]:
    if fields.get("percent_used") is None or not (verbose or not fields.get("healthy")):
        return []
    lines = [
        f"  - Total: {_number(fields.get('total_gb'), '.1f')} GB",
        f"  - Used: {_number(fields.get('used_gb'), '.1f')} GB "
        f"({_number(fields.get('percent_used'), '.1f')}%)",
        f"  - Free: {_number(fields.get('free_gb'), '.1f')} GB",
    ]
    if not fields.get("healthy"):
        lines.append(f"  - Threshold: {fields.get('warning_threshold')}%")
    return lines


def _memory_lines(fields: Mapping[str, FieldValue], verbose: bool) -> list[str]:
    if not (verbose or not fields.get("healthy")):
        return []
    lines = []
    if fields.get("process_rss_mb") is not None:
        lines.append(f"  - Process RSS: {_number(fields.get('process_rss_mb'), '.1f')} MB")
    if fields.get("system_percent") is not None:
        lines.append(f"  - System Usage: {_number(fields.get('system_percent'), '.1f')}%")
    if not fields.get("healthy"):
        lines.append(f"  - Thresholds: process {fields.get('warning_threshold_process_mb')} MB,"
                     f" system {fields.get('warning_threshold_system_percent')}%")
    return lines


DETAILS = {
    "database": _database_lines,
    "sessions": _sessions_lines,
    "disk_space": _disk_lines,
    "memory": _memory_lines,
}


def section_lines(name: str, fields: Mapping[str, FieldValue], verbose: bool) -> list[str]:
    """One check's heading and detail lines."""
    lines = [f"{TITLES.get(name, name)}: {label(name, fields)}"]
    lines.extend(DETAILS[name](fields, verbose) if name in DETAILS else [])
    if fields.get("error"):
        lines.append(f"  - Error: {fields['error']}")
    return lines


def render_text(checks: Checks, timestamp: str, status: Status, *, verbose: bool) -> str:
    """The seed's standard (or verbose) report."""
    lines = [BANNER, "MTBBS Health Check Report", BANNER, f"Timestamp: {timestamp}", ""]
    for name in _ordered(checks):
        lines.extend(section_lines(name, checks[name], verbose))
        lines.append("")
    lines.extend([BANNER, SUMMARY[status]])
    return "\n".join(lines)


def render_problems(checks: Checks, timestamp: str, status: Status) -> str:
    """The --quiet report: only the checks that are not healthy."""
    lines = [f"Timestamp: {timestamp}"]
    for name in _ordered(checks):
        if not checks[name].get("healthy"):
            lines.extend(section_lines(name, checks[name], verbose=False))
    lines.append(SUMMARY[status])
    return "\n".join(lines)


def json_document(checks: Checks, timestamp: str, status: Status) -> dict[str, Any]:
    """The seed's JSON document."""
    health: dict[str, Any] = {name: dict(checks[name]) for name in _ordered(checks)}
    health["timestamp"] = timestamp
    return {"health": health, "exit_code": int(status), "status": status.name}


def render(checks: Checks, timestamp: str, *, verbose: bool = False, as_json: bool = False,
           quiet: bool = False) -> tuple[str, Status]:
    """The text to print (possibly empty) and the status that is the exit code."""
    status = report_status(checks)
    if quiet and status is Status.OK:
        return "", status
    if as_json:
        return json.dumps(json_document(checks, timestamp, status), indent=2,
                          ensure_ascii=False), status
    if quiet:
        return render_problems(checks, timestamp, status), status
    return render_text(checks, timestamp, status, verbose=verbose), status


def _ordered(checks: Checks) -> list[str]:
    return [n for n in CHECK_ORDER if n in checks] + [n for n in checks if n not in CHECK_ORDER]


# -- entry point -----------------------------------------------------------------

# The [redis] settings that name a server; a prefix or a timeout alone does not.
SESSION_SOURCE_SETTINGS = ("url", "sentinels")


def session_source_configured(args: argparse.Namespace, document: Mapping[str, Any],
                              env: Mapping[str, str] | None = None) -> bool:
    """Whether this run names a Redis to read the sessions from.

    Only then is a client made: the built-in default URL alone is no reason
    to import redis-py and try the network on every run.
    """
    env = os.environ if env is None else env
    if getattr(args, "redis_url", None):
        return True
    section = document.get("redis")
    named = isinstance(section, Mapping) and any(
        section.get(name) for name in SESSION_SOURCE_SETTINGS)
    return named or any(env.get(env_name("redis", name)) for name in SESSION_SOURCE_SETTINGS)



@guarded
def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks once, print them, return the seed's exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    document, redis_settings = load_config(args)
    settings = load_section(CheckSettings, document, SECTION, overrides=check_overrides(args))
    client = connect(redis_settings) if session_source_configured(args, document) else None
    try:
        checks = run_checks(settings, redis_client=client, keys=redis_settings.keys)
    finally:
        if client is not None:
            client.close()
    timestamp = datetime.now().isoformat(timespec="microseconds")
    text, status = render(checks, timestamp, verbose=args.verbose, as_json=args.json,
                          quiet=args.quiet)
    if text:
        # A cron job's locale may not speak UTF-8: degrade the marks, do not fail.
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(errors="replace")
        print(text)
        sys.stdout.flush()
    return int(status)


if __name__ == "__main__":
    sys.exit(main(None))
