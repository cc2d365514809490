"""``mtbbs-collector``: the collector daemon and the sysop's view of the fleet.

Subcommands: ``run`` (the consumer-group daemon), ``status`` (a Nagios/Icinga
plugin), ``hosts``, ``sessions``, ``history``, ``dead-letters``, ``forget``
and ``exporter`` (Prometheus). Every usage error and every failure exits 3
with one line, never a traceback; ``status`` prints its UNKNOWN line on
stdout, where Nagios looks for it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any, NoReturn

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from collector import status as check
from collector.fleet import FleetView, read_fleet
from collector.nagios import NagiosRange, RangeError, format_number
from collector.settings import CollectorSettings, ExporterSettings
from collector.tables import text_table
from wire import auth
from wire.cli import (
    USAGE_STDOUT,
    ArgumentParser,
    add_common_options,
    guarded,
    load_config,
    setup_logging,
)
from wire.config import RedisSettings, connect, load_section
from wire.errors import ConfigError
from wire.keys import EVALUATE_JOB, RQ_SERIALIZER, KeySpace, valid_host_id
from wire.state import age_text, iso_from_ms
from wire.status import Status

logger = logging.getLogger(__name__)

EXIT_ERROR = int(Status.UNKNOWN)
# How long `forget` waits for an alerter worker to drop the host's alert states.
FORGET_WAIT_S = 10.0
DEFAULT_TIMEOUT_S = 10.0


class _Timeout(BaseException):
    """The status check ran out of time.

    A BaseException, so that no ``except Exception`` inside redis-py turns it
    into a connection error on its way out.
    """


def _safe(text: Any) -> str:
    """User-supplied text for a terminal: control characters escaped."""
    value = str(text)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in value)


STATUS = "status"


def plugin_usage_error(message: str) -> NoReturn:
    """End a ``status`` run that cannot start as a Nagios plugin does: the
    ``MTBBS UNKNOWN`` line on stdout, where Nagios reads the reason, exit 3."""
    print(check.unknown(f"usage error: {message} (see mtbbs-collector status --help)")
          .first_line())
    sys.stdout.flush()
    print(f"mtbbs-collector status: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_ERROR)


class CollectorParser(ArgumentParser):
    """The parser of ``mtbbs-collector``: usage errors of ``status`` are
    plugin results; those of the other commands stay one line on stderr."""

    def error(self, message: str) -> NoReturn:
        if self.prog.endswith(f" {STATUS}"):
            plugin_usage_error(message)
        super().error(message)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if getattr(parsed, "command", None) == STATUS:
            if extra:
                plugin_usage_error(f"unrecognized arguments: {' '.join(extra)}")
            level = parsed.log_level
            if level is not None and not isinstance(logging.getLevelName(level.upper()), int):
                plugin_usage_error(f"--log-level {level!r} is not a logging level")
        elif extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def build_parser() -> ArgumentParser:
    """The argument parser of ``mtbbs-collector``."""
    parser = CollectorParser(prog="mtbbs-collector",
                            description="Consume MTBBS agent reports and session events into "
                            "per-host state in Redis, and show that state.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=CollectorParser)
    commands.required = True

    run = commands.add_parser("run", help="consume the streams (the collector daemon)")
    run.add_argument("--name", help="consumer name (default [collector] name, else "
                     "<hostname>-<pid>)")
    run.add_argument("--once", action="store_true",
                     help="work off what is in the streams now, sweep once, and exit")
    add_common_options(run)

    status = commands.add_parser(
        STATUS, help="Nagios/Icinga check of the fleet or of one host",
        description="Nagios plugin: prints 'MTBBS <STATE> - summary | perfdata' and exits "
        "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.")
    status.add_argument("--host", metavar="H", help="check this host only (default: the fleet)")
    status.add_argument("-v", "--verbose", action="store_true",
                        help="long output: one line per host and check, and the collectors")
    status.add_argument("--json", action="store_true", help="print a JSON document instead")
    status.add_argument("-w", "--warning", metavar="RANGE",
                        help="Nagios range for WARNING on --metric (e.g. 80, 10:, ~:90, @0:5)")
    status.add_argument("-c", "--critical", metavar="RANGE",
                        help="Nagios range for CRITICAL on --metric")
    status.add_argument("--metric", choices=sorted(check.METRICS), default="disk_percent",
                        help="the figure -w/-c apply to (default disk_percent); they replace "
                        "the agent's verdict for that check, 'age' replaces staleness")
    status.add_argument("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"give up with UNKNOWN after S seconds (default "
                        f"{DEFAULT_TIMEOUT_S:.0f})")
    add_common_options(status)
    # Nagios shows stdout: a usage error is an UNKNOWN line there too.
    status.set_defaults(**{USAGE_STDOUT: lambda message: check.unknown(
        f"usage error: {' '.join(message.split())}").text(False)})

    hosts = commands.add_parser("hosts", help="table of every host")
    hosts.add_argument("--json", action="store_true", help="print JSON instead")
    add_common_options(hosts)

    sessions = commands.add_parser("sessions", help="table of one host's sessions")
    sessions.add_argument("--host", required=True, metavar="H")
    sessions.add_argument("--json", action="store_true", help="print JSON instead")
    add_common_options(sessions)

    history = commands.add_parser("history", help="one host's history of key figures")
    history.add_argument("--host", required=True, metavar="H")
    history.add_argument("--csv", action="store_true", help="the seed's metrics CSV: "
                         "timestamp,sessions,disk_percent,memory_mb (oldest first, no header)")
    history.add_argument("--header", action="store_true", help="with --csv, print a header line")
    history.add_argument("--iso", action="store_true", help="with --csv, timestamps as stored "
                         "(ISO 8601 UTC, 2026-12-05T21:46:08Z) instead of the seed's local "
                         "'2026-12-05 21:46:08'")
    history.add_argument("--limit", type=int, metavar="N", help="only the newest N lines")
    add_common_options(history)

    dead = commands.add_parser("dead-letters", help="entries the collector could not use")
    dead.add_argument("--limit", type=int, default=20, metavar="N",
                      help="newest N (default 20)")
    dead.add_argument("--json", action="store_true", help="print JSON instead")
    add_common_options(dead)

    forget = commands.add_parser("forget", help="delete a decommissioned host's state")
    forget.add_argument("--host", required=True, metavar="H")
    forget.add_argument("--wait", type=float, default=FORGET_WAIT_S, metavar="S",
                        help="seconds to wait for an alerter worker to drop the host's "
                        f"alert states (default {FORGET_WAIT_S:g}; 0: do not wait)")
    add_common_options(forget)

    exporter = commands.add_parser("exporter", help="serve Prometheus metrics of the fleet")
    exporter.add_argument("--port", type=int, help="TCP port (default [exporter] port, 9100)")
    exporter.add_argument("--bind", metavar="ADDR",
                          help="address to listen on (default [exporter] bind, 127.0.0.1)")
    exporter.add_argument("--host-series", action="store_true", default=None,
                          help="also export every host's own series (default [exporter] "
                          "host_series; without it, fleet aggregates only)")
    exporter.add_argument("--password-file", metavar="FILE",
                          help="require HTTP basic auth with the password on the file's first "
                          "line (any user name); needed to bind beyond loopback")
    exporter.add_argument("--open", action="store_true", default=None,
                          help="serve on a non-loopback --bind without a password, on purpose")
    add_common_options(exporter)
    return parser


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], RedisSettings,
                                                 CollectorSettings]:
    document, redis_settings = load_config(args)
    settings = load_section(CollectorSettings, document, "collector",
                            overrides={"name": getattr(args, "name", None)})
    return document, redis_settings, settings


def _query_client(redis_settings: RedisSettings, **extra: Any) -> Any:
    """A client for one-shot queries: no silent retries, a down Redis is reported at once."""
    return connect(redis_settings, retry=Retry(NoBackoff(), 0), **extra)


def _check_host(host: str) -> None:
    if not valid_host_id(host):
        raise ConfigError("--host", f"{_safe(host)!r} is not a valid host id")


# -- run -----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the query commands need neither rq nor the ingest code.
    from collector.ingest import Collector, tune_garbage_collector
    from collector.selfmon import STOPPED

    _, redis_settings, settings = _settings(args)
    host_keys = None
    if settings.host_keys_file is not None:
        host_keys = auth.load_host_keys(settings.host_keys_file)
        logger.info("verifying signatures with the keys of %s host(s)", len(host_keys))
    client = connect(redis_settings)
    max_block = max(1, int(redis_settings.socket_timeout * 1000) - 500)
    collector = Collector(client, redis_settings.keys, settings, host_keys=host_keys,
                          max_block_ms=max_block)
    tune_garbage_collector()
    if args.once:
        collector.setup()
        collector.reclaim()
        collector.drain()
        collector.caught_up = True
        collector.sweep()
        collector.heartbeat(STOPPED)
        print(f"processed {collector.counters.processed} entries "
              f"({collector.counters.dead_lettered} dead-lettered)")
        return 0
    stop = _stop_on_signals()
    logger.info("collector %s consuming the host streams %s from %s", collector.name,
                redis_settings.keys.host_streams_pattern(), redis_settings.redacted_url())
    collector.run(stop)
    logger.info("collector %s stopped after %s entries", collector.name,
                collector.counters.processed)
    return 0


# -- status --------------------------------------------------------------------


def _status_result(args: argparse.Namespace) -> check.CheckResult:
    try:
        warning = NagiosRange.parse(args.warning) if args.warning is not None else None
        critical = NagiosRange.parse(args.critical) if args.critical is not None else None
    except RangeError as exc:
        return check.unknown(f"invalid threshold: {exc}")
    if args.timeout <= 0:
        return check.unknown("invalid timeout: -t must be greater than 0")
    try:
        _, redis_settings, settings = _settings(args)
        if args.host is not None:
            _check_host(args.host)
    except ConfigError as exc:
        return check.unknown(f"configuration error: {exc}")
    thresholds = check.Thresholds(args.metric, warning, critical)
    # A second beyond -t, so that the alarm (a clear "timed out") fires first.
    timeout = min(redis_settings.socket_timeout, args.timeout + 1)
    client = _query_client(redis_settings, socket_timeout=timeout,
                           socket_connect_timeout=timeout)
    # Every figure of every host only where the output shows them all.
    detail = args.verbose or args.json
    try:
        fleet = read_fleet(client, redis_settings.keys, settings,
                           [args.host] if args.host is not None else None,
                           whole=detail or args.host is not None)
    except redis.AuthenticationError as exc:
        return check.unknown(f"Redis refused our credentials at "
                             f"{redis_settings.redacted_url()} ({exc})")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return check.unknown(f"cannot reach Redis at {redis_settings.redacted_url()} "
                             f"({type(exc).__name__})")
    except redis.RedisError as exc:
        return check.unknown(f"Redis error: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    if args.host is not None:
        return check.host_result(fleet, thresholds, settings)
    return check.fleet_result(fleet, thresholds, settings, detail)


def cmd_status(args: argparse.Namespace) -> int:
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # The timer is armed and disarmed inside the try that catches _Timeout: a
    # tiny -t may fire on the very next bytecode, and an alarm that comes due
    # while the inner finally disarms it still lands in the except below. The
    # timer is one-shot, so once disarmed or fired it cannot fire again.
    try:
        try:
            if args.timeout > 0:
                signal.setitimer(signal.ITIMER_REAL, args.timeout)
            result = _status_result(args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        result = check.unknown(f"timed out after {format_number(args.timeout)} s")
    except Exception as exc:  # a plugin answers UNKNOWN, whatever happened
        if args.debug:
            raise
        result = check.unknown(f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                               if str(exc) else type(exc).__name__)
    finally:
        signal.signal(signal.SIGALRM, previous)
    if args.json:
        print(json.dumps(result.document(), indent=2, ensure_ascii=False))
    else:
        print(result.text(args.verbose))
    return int(result.status)


# -- tables --------------------------------------------------------------------


def _fleet(args: argparse.Namespace) -> tuple[FleetView, RedisSettings, CollectorSettings]:
    _, redis_settings, settings = _settings(args)
    client = _query_client(redis_settings)
    return (read_fleet(client, redis_settings.keys, settings, whole=False), redis_settings,
            settings)


def cmd_hosts(args: argparse.Namespace) -> int:
    fleet, _, _ = _fleet(args)
    if args.json:
        print(json.dumps([{"host": v.host, "status": v.status.name,
                           "last_seen": iso_from_ms(v.state.last_seen_ms),
                           "last_seen_age_s": v.age_s, "stale": v.stale, "sessions": v.sessions}
                          for v in fleet.hosts], indent=2))
        return 0
    if not fleet.hosts:
        print("no host has reported yet")
        return 0
    rows = [[v.host, v.status.name,
             iso_from_ms(v.state.last_seen_ms) if v.state.last_seen_ms else "-",
             age_text(v.age_s) if v.state.last_seen_ms else "-", v.stale,
             "-" if v.sessions is None else str(v.sessions)] for v in fleet.hosts]
    print(text_table(["HOST", "STATUS", "LAST SEEN", "AGE", "STALE", "SESSIONS"], rows))
    return 0


def _sessions_of(client: Any, keys: KeySpace, host: str) -> list[dict[str, Any]]:
    raw = client.hgetall(keys.host_sessions(host))
    sessions = []
    for client_id, text in sorted(raw.items()):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        doc.setdefault("client_id", client_id.decode("utf-8", "replace"))
        sessions.append(doc)
    return sessions


def cmd_sessions(args: argparse.Namespace) -> int:
    _check_host(args.host)
    _, redis_settings, _ = _settings(args)
    client = _query_client(redis_settings)
    keys = redis_settings.keys
    if not (client.exists(keys.host(args.host)) or client.exists(keys.host_sessions(args.host))
            or client.exists(keys.host_sessions_order(args.host))):
        print(f"error: host {args.host} has never reported", file=sys.stderr)
        return EXIT_ERROR
    sessions = _sessions_of(client, keys, args.host)
    if args.json:
        print(json.dumps(sessions, indent=2, ensure_ascii=False))
        return 0
    if not sessions:
        print(f"{args.host}: no active sessions")
        return 0
    rows = [[_safe(s.get("client_id", "")), _safe(s.get("user_id") or "-"),
             _safe(s.get("state") or "-"), _safe(s.get("connected_at") or "-")]
            for s in sessions]
    print(text_table(["CLIENT", "USER", "STATE", "CONNECTED AT"], rows))
    return 0


def seed_timestamp(stored: str) -> str:
    """A stored history time (``2026-12-05T21:46:08Z``) as the seed's metrics CSV
    writes it: ``date '+%Y-%m-%d %H:%M:%S'``, local time. Text that is not a
    stored time is left as it is."""
    try:
        moment = datetime.strptime(stored, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return stored
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cmd_history(args: argparse.Namespace) -> int:
    _check_host(args.host)
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit", "must be 1 or more")
    _, redis_settings, _ = _settings(args)
    client = _query_client(redis_settings)
    keys = redis_settings.keys
    end = -1 if args.limit is None else args.limit - 1
    lines = [line.decode("utf-8", "replace")
             for line in client.lrange(keys.host_history(args.host), 0, end)]
    if not lines and not client.exists(keys.host(args.host)):
        print(f"error: host {args.host} has never reported", file=sys.stderr)
        return EXIT_ERROR
    lines.reverse()  # stored newest first; the seed's CSV grows at the end
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        if args.header:
            writer.writerow(["timestamp", "sessions", "disk_percent", "memory_mb"])
        for line in lines:
            row = line.split(",")
            if not args.iso:
                row[0] = seed_timestamp(row[0])
            writer.writerow(row)
        return 0
    # A figure the agent could not measure is stored empty; people read "-".
    rows = [[cell or "-" for cell in (line.split(",") + ["", "", "", ""])[:4]]
            for line in lines]
    print(text_table(["TIMESTAMP", "SESSIONS", "DISK %", "MEMORY MB"], rows))
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError("--limit", "must be 1 or more")
    _, redis_settings, _ = _settings(args)
    client = _query_client(redis_settings)
    entries = client.xrevrange(redis_settings.keys.dead_letter_stream(), count=args.limit)
    letters = []
    for entry_id, fields in entries:
        doc = {k.decode(): v.decode("utf-8", "backslashreplace") for k, v in fields.items()
               if k != b"payload"}
        doc["dead_letter_id"] = entry_id.decode()
        payload = fields.get(b"payload", b"")
        doc["payload_hex"] = payload[:64].hex()
        letters.append(doc)
    if args.json:
        print(json.dumps(letters, indent=2, ensure_ascii=False))
        return 0
    total = client.xlen(redis_settings.keys.dead_letter_stream())
    print(f"{check.plural(total, 'dead letter')}; newest {len(letters)}:")
    for doc in letters:
        print(f"{doc['dead_letter_id']}  {_safe(doc.get('stream', '-'))} "
              f"{_safe(doc.get('id', '-'))}  {_safe(doc.get('reason', '-'))}")
    return 0


def _drop_alert_states(client: Any, keys: KeySpace, host: str, wait_s: float) -> str:
    """Have the alerter drop the alert states of a forgotten host; what happened, as text.

    The alert states are the alerter's keys (the collector's Redis user may
    not touch them): an evaluation of a host without state deletes them. It
    is enqueued the way every report's is, and waited for up to ``wait_s``.
    """
    from rq import Queue
    from rq.job import JobStatus

    queue = Queue(keys.evaluate_queue(), connection=client, serializer=RQ_SERIALIZER)
    job = queue.enqueue_call(EVALUATE_JOB, args=(host,), result_ttl=600, failure_ttl=86_400,
                             description=f"drop the alert states of forgotten host {host}")
    deadline = time.monotonic() + max(wait_s, 0.0)
    while True:
        status = job.get_status(refresh=True)
        if status == JobStatus.FINISHED:
            try:
                result = job.return_value(refresh=True)
            except redis.ResponseError:  # rq's results are not the collector user's to read
                return "its alert states dropped by the alerter"
            dropped = result.get("dropped", 0) if isinstance(result, dict) else 0
            return f"{check.plural(dropped, 'alert state')} dropped by the alerter"
        if status == JobStatus.FAILED:
            return "the alerter failed to drop its alert states (see rq's failed jobs)"
        if time.monotonic() >= deadline:
            return ("no alerter worker took the job yet; its alert states are dropped "
                    "when one does")
        time.sleep(0.05)


def cmd_forget(args: argparse.Namespace) -> int:
    _check_host(args.host)
    _, redis_settings, _ = _settings(args)
    client = _query_client(redis_settings)
    keys = redis_settings.keys
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.host(args.host), keys.host_sessions(args.host),
                keys.host_sessions_order(args.host), keys.host_history(args.host),
                keys.evaluation_pending(args.host), *keys.host_streams(args.host))
    pipe.zrem(keys.hosts_index(), args.host)
    pipe.zrem(keys.hosts_due(), args.host)
    deleted, _, _ = pipe.execute()
    alerts = _drop_alert_states(client, keys, args.host, args.wait)
    print(f"forgot host {args.host} ({check.plural(deleted, 'key')} deleted; {alerts}); "
          "it reappears with its next report")
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    from collector.exporter import serve

    document, redis_settings, settings = _settings(args)
    from collector.web.server import ExposureError, check_exposure, read_password

    exporter = load_section(ExporterSettings, document, "exporter",
                            overrides={"port": args.port, "bind": args.bind,
                                       "host_series": args.host_series,
                                       "password_file": args.password_file,
                                       "open": args.open})
    password = (read_password(exporter.password_file)
                if exporter.password_file is not None else None)
    try:
        check_exposure(exporter.bind, password, exporter.open)
    except ExposureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    client = _query_client(redis_settings)
    stop = _stop_on_signals()
    try:
        serve(client, redis_settings.keys, settings, exporter.bind, exporter.port, stop,
              exporter.host_series, password)
    except OSError as exc:
        print(f"error: cannot listen on {exporter.bind}:{exporter.port} ({exc.strerror or exc})",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "hosts": cmd_hosts,
    "sessions": cmd_sessions,
    "history": cmd_history,
    "dead-letters": cmd_dead_letters,
    "forget": cmd_forget,
    "exporter": cmd_exporter,
}


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mtbbs-collector``."""
    args = build_parser().parse_args(argv)
    level = args.log_level
    if level is None and args.command not in ("run", "exporter"):
        level = os.environ.get("MTBBS_LOG_LEVEL") or "WARNING"
    setup_logging(level)
    try:
        return COMMANDS[args.command](args)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"error: cannot reach Redis ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''})", file=sys.stderr)
        return EXIT_ERROR

