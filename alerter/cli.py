"""``mtbbs-alerter``: the worker, rule checking, silences, failed deliveries, tests.

Exit codes: 0 success; 1 the thing asked about is not right (rules invalid,
a test message not delivered, no such silence or failed delivery); 3 usage
or configuration errors (the project's convention for every command).
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alerter import silences as silence_store
from alerter.context import build_context, build_notifiers, load_channel_settings
from alerter.dispatch import enqueue_delivery, now_ms
from alerter.notify import DeliveryError, Notification
from alerter.rules import Policy, load_policy, load_rules, rules_table
from alerter.settings import CHANNELS, WORKER_CLASSES, AlerterSettings
from alerter.text import line_text, parse_duration
from wire.cli import ArgumentParser, add_common_options, guarded, load_config, setup_logging
from wire.config import RedisSettings, connect, load_section
from wire.errors import ConfigError
from wire.keys import valid_host_id
from wire.replies import text as _text
from wire.state import iso_from_ms, plural

EXIT_OK = 0
EXIT_FAILED = 1


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mtbbs-alerter",
                            description="Alert evaluation and notification workers for MTBBS "
                            "hosts (rq), and their administration.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=ArgumentParser)

    worker = commands.add_parser("worker", help="run an rq worker on the evaluate and notify "
                                 "queues (several may run)")
    add_common_options(worker)
    worker.add_argument("--burst", action="store_true",
                        help="quit when the queues are empty")
    worker.add_argument("--name", help="worker name (default alerter.<host>.<pid>)")
    worker.add_argument("--queue", action="append", choices=("notify", "evaluate"),
                        help="only this queue (repeatable; default both, notify first)")
    worker.add_argument("--worker-class", choices=WORKER_CLASSES,
                        help="override [alerter] worker_class")

    rules = commands.add_parser("rules", help="rule files")
    rules_commands = rules.add_subparsers(dest="rules_command", metavar="ACTION", required=True,
                                          parser_class=ArgumentParser)
    check = rules_commands.add_parser("check", help="validate the rules (exit 0 valid, 1 not)")
    add_common_options(check)
    check.add_argument("file", nargs="?", type=Path,
                       help="a rules file to check (default: the configured rules)")
    check.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    silence = commands.add_parser("silence", help="hold notifications back for a while")
    silence_commands = silence.add_subparsers(dest="silence_command", metavar="ACTION",
                                              required=True, parser_class=ArgumentParser)
    add = silence_commands.add_parser("add", help="add a silence; prints its id")
    add_common_options(add)
    add.add_argument("--host", required=True, help="host id or glob pattern (bbs-*)")
    add.add_argument("--check", help="only this check (default: every check)")
    add.add_argument("--duration", help="how long, e.g. 30m, 2h, 1d")
    add.add_argument("--daily", metavar="HH:MM-HH:MM",
                     help="recur every day in this window ([alerter] timezone)")
    add.add_argument("--starts-in", default="0s", help="start later, e.g. 10m (default now)")
    add.add_argument("--reason", required=True, help="why (shown in listings and logs)")
    add.add_argument("--author", default="", help="who (default: nobody named)")
    listing = silence_commands.add_parser("list", help="list silences (expired ones vanish)")
    add_common_options(listing)
    listing.add_argument("--json", action="store_true", help="JSON output")
    remove = silence_commands.add_parser("remove", help="remove a silence")
    add_common_options(remove)
    remove.add_argument("id", help="the silence id")

    failed = commands.add_parser("failed", help="list failed deliveries, retry them")
    add_common_options(failed)
    action = failed.add_mutually_exclusive_group()
    action.add_argument("--retry", metavar="ID", help="enqueue this failed delivery again")
    action.add_argument("--retry-all", action="store_true",
                        help="enqueue every failed delivery again")
    action.add_argument("--forget", metavar="ID", help="drop this failed delivery")
    failed.add_argument("--json", action="store_true", help="JSON output")

    test = commands.add_parser("test-notify", help="send a test message through a channel "
                               "(exit 0 delivered, 1 not)")
    add_common_options(test)
    test.add_argument("--channel", required=True, choices=CHANNELS)

    alerts = commands.add_parser("alerts", help="list alert states")
    add_common_options(alerts)
    alerts.add_argument("--host", default="*", help="host id or glob (default all)")
    alerts.add_argument("--all", action="store_true", help="also ok and resolved alerts")
    alerts.add_argument("--json", action="store_true", help="JSON output")

    log = commands.add_parser("log", help="recent notifications: queued, sent, suppressed, "
                              "failed")
    add_common_options(log)
    log.add_argument("-n", "--lines", type=int, default=30, help="how many (default 30)")
    log.add_argument("--json", action="store_true", help="JSON lines")
    return parser


def _alerter_settings(document: Mapping[str, Any]) -> AlerterSettings:
    return load_section(AlerterSettings, document, "alerter")


# -- worker ------------------------------------------------------------------------


def _worker(args: argparse.Namespace, document: Mapping[str, Any],
            redis_settings: RedisSettings) -> int:
    from alerter.worker import run_worker

    ctx = build_context(document, redis_settings)
    names = None
    if args.queue:
        names = [ctx.keys.notify_queue() if q == "notify" else ctx.keys.evaluate_queue()
                 for q in dict.fromkeys(args.queue)]
    return run_worker(ctx, burst=args.burst, name=args.name, queues=names,
                      worker_class=args.worker_class)


# -- rules check ---------------------------------------------------------------------


def _configured_channels(document: Mapping[str, Any]) -> list[str]:
    mail, slack, webhook = load_channel_settings(document, None)
    return [name for name, section in (("mail", mail), ("slack", slack), ("webhook", webhook))
            if section.enabled]


def _rules_check(args: argparse.Namespace, document: Mapping[str, Any]) -> int:
    try:
        if args.file is not None:
            table, where = rules_table({}, args.file)
            policy: Policy = load_policy(table, where)
            source = str(args.file)
        else:
            settings = _alerter_settings(document)
            policy = load_rules(document, settings.rules_file)
            source = str(settings.rules_file) if settings.rules_file else \
                "the [rules] tables of the configuration"
        channels = _configured_channels(document)
        policy.check_channels(channels)
    except ConfigError as exc:
        print(f"rules are not valid: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        print(f"rules OK ({source}): {plural(len(policy.rules), 'rule')}, "
              f"{plural(len(policy.overrides), 'override')}, "
              f"{plural(len(policy.routes), 'route')}; channels configured: "
              f"{', '.join(channels) or 'none'}")
        for rule in policy.rules:
            print(f"  {rule.describe()}")
        if not policy.routes:
            print("  routes: every notification goes to every configured channel")
    return EXIT_OK


# -- silences ------------------------------------------------------------------------


def _silence(args: argparse.Namespace, document: Mapping[str, Any],
             redis_settings: RedisSettings) -> int:
    client = connect(redis_settings)
    keys = redis_settings.keys
    now = now_ms(client)
    if args.silence_command == "add":
        settings = _alerter_settings(document)
        try:
            duration = parse_duration(args.duration) if args.duration is not None else None
            starts_in = parse_duration(args.starts_in)
            silence = silence_store.make_silence(
                host=args.host, check=args.check, now_ms=now, duration_s=duration,
                reason=args.reason, author=args.author, daily=args.daily,
                timezone=settings.timezone, starts_in_s=starts_in)
        except ValueError as exc:
            print(f"mtbbs-alerter silence add: {exc}", file=sys.stderr)
            return 3
        silence_store.add(client, keys, silence)
        print(silence.id)
        return EXIT_OK
    if args.silence_command == "remove":
        if silence_store.remove(client, keys, args.id):
            print(f"removed silence {args.id}")
            return EXIT_OK
        print(f"no silence {line_text(args.id, 40)}", file=sys.stderr)
        return EXIT_FAILED
    found = silence_store.load(client, keys, now)
    if args.json:
        print(json.dumps([json.loads(s.to_json()) for s in found], ensure_ascii=False,
                         indent=2))
        return EXIT_OK
    if not found:
        print("no silences")
        return EXIT_OK
    print(f"{'ID':<9} {'HOST':<16} {'CHECK':<12} {'FROM':<20} {'UNTIL':<20} {'DAILY':<11} "
          "REASON")
    for s in found:
        state = "" if s.active(now) else " (inactive now)"
        print(f"{s.id:<9} {line_text(s.host, 16):<16} {s.check or '*':<12} "
              f"{iso_from_ms(s.starts_ms):<20} "
              f"{iso_from_ms(s.ends_ms) if s.ends_ms else 'never':<20} {s.daily or '-':<11} "
              f"{line_text(s.reason, 60)}{' by ' + line_text(s.author, 30) if s.author else ''}"
              f"{state}")
    return EXIT_OK


# -- failed deliveries ------------------------------------------------------------------


def _failed(args: argparse.Namespace, document: Mapping[str, Any],
            redis_settings: RedisSettings) -> int:
    client = connect(redis_settings)
    key = redis_settings.keys.notifications_failed()
    raw = {(k.decode() if isinstance(k, bytes) else str(k)): v
           for k, v in client.hgetall(key).items()}
    records: dict[str, dict[str, Any]] = {}
    for failure_id, text in sorted(raw.items()):
        try:
            records[failure_id] = json.loads(text)
        except ValueError:
            records[failure_id] = {"id": failure_id, "error": "unreadable record",
                                   "notifications": []}
    if args.forget:
        if client.hdel(key, args.forget):
            print(f"forgot failed delivery {args.forget}")
            return EXIT_OK
        print(f"no failed delivery {line_text(args.forget, 40)}", file=sys.stderr)
        return EXIT_FAILED
    if args.retry or args.retry_all:
        wanted = list(records) if args.retry_all else [args.retry]
        if args.retry and args.retry not in records:
            print(f"no failed delivery {line_text(args.retry, 40)}", file=sys.stderr)
            return EXIT_FAILED
        ctx = build_context(document, redis_settings)
        for failure_id in wanted:
            record = records[failure_id]
            channel = str(record.get("channel", ""))
            if channel not in ctx.notifiers:
                print(f"{failure_id}: channel {channel or '(none)'} is not configured; kept",
                      file=sys.stderr)
                continue
            delivery = {"id": failure_id, "notifications": record.get("notifications", [])}
            job = enqueue_delivery(ctx, channel, delivery,
                                   job_id=f"{channel}-{failure_id}-retry-{secrets.token_hex(3)}")
            client.hdel(key, failure_id)
            print(f"re-enqueued {failure_id} on {channel} (job {job.id})")
        return EXIT_OK
    if args.json:
        print(json.dumps(list(records.values()), ensure_ascii=False, indent=2))
        return EXIT_OK
    if not records:
        print("no failed deliveries")
        return EXIT_OK
    for failure_id, record in records.items():
        kind = "permanent" if record.get("permanent") else "temporary"
        attempts = record.get("attempts")
        tries = plural(attempts, "attempt") if isinstance(attempts, int) else "unknown attempts"
        print(f"{failure_id}  {record.get('channel', '-')}  {record.get('failed_at', '-')}  "
              f"{kind} after {tries}: "
              f"{line_text(record.get('error', ''), 120)}")
        for note in record.get("notifications", []):
            title = f"{str(note.get('kind', '-'))} {note.get('host', '-')} {note.get('check', '-')}"
            print(f"    {line_text(title, 100)}  ({line_text(note.get('id', ''), 100)})")
    return EXIT_OK


# -- test-notify ---------------------------------------------------------------------------


def _test_host() -> str:
    name = socket.gethostname().split(".")[0]
    return name if valid_host_id(name) else "mtbbs-alerter"


def _test_notify(args: argparse.Namespace, document: Mapping[str, Any]) -> int:
    mail, slack, webhook = load_channel_settings(document, None)
    notifiers = build_notifiers(mail, slack, webhook)
    notifier = notifiers.get(args.channel)
    if notifier is None:
        needs = {"mail": "[mail] host and to", "slack": "[slack] webhook_url",
                 "webhook": "[webhook] url"}[args.channel]
        print(f"{args.channel} is not configured (set {needs})", file=sys.stderr)
        return EXIT_FAILED
    at = int(time.time() * 1000)
    note = Notification(id=f"test/{at}", kind="test", host=_test_host(), check="test",
                        severity="warning",
                        summary="a test message from mtbbs-alerter test-notify",
                        since_ms=at, at_ms=at,
                        figures={"sent_by": "mtbbs-alerter test-notify"},
                        hint="Nothing to do: this channel works.")
    try:
        detail = notifier.send([note])
    except DeliveryError as exc:
        kind = "permanent" if exc.permanent else "temporary"
        print(f"test message by {notifier.describe()} failed ({kind}): {exc.message}",
              file=sys.stderr)
        return EXIT_FAILED
    # describe() names the channel first ("mail via HOST:PORT ...", "slack webhook at HOST").
    print(f"sent a test message by {notifier.describe()}: {detail}")
    return EXIT_OK


# -- alerts and log ------------------------------------------------------------------------


def _alerts(args: argparse.Namespace, redis_settings: RedisSettings) -> int:
    from fnmatch import fnmatchcase

    client = connect(redis_settings)
    keys = redis_settings.keys
    members = sorted(_text(m) for m in client.smembers(keys.alerts_index()))
    pipe = client.pipeline(transaction=False)
    chosen = []
    for member in members:
        host, _, check = member.partition("/")
        if fnmatchcase(host, args.host):
            chosen.append((host, check))
            pipe.hgetall(keys.alert(host, check))
    rows = []
    for (host, check), raw in zip(chosen, pipe.execute(), strict=True):
        fields = {_text(k): _text(v) for k, v in raw.items()}
        if not fields:
            continue
        active = fields.get("state") in ("pending", "firing") or fields.get("flapping") == "yes"
        if args.all or active:
            rows.append(fields | {"host": host, "check": check})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return EXIT_OK
    if not rows:
        print("no active alerts" if not args.all else "no alert states")
        return EXIT_OK
    print(f"{'HOST':<18} {'CHECK':<12} {'STATE':<9} {'SEVERITY':<9} {'SINCE':<21} "
          f"{'FLAP%':>6}  SUMMARY")
    for row in rows:
        flap = row.get("flap_percent", "0") + ("*" if row.get("flapping") == "yes" else "")
        print(f"{row['host']:<18} {row['check']:<12} {row.get('state', '-'):<9} "
              f"{row.get('severity', ''):<9} {row.get('since', ''):<21} {flap:>6}  "
              f"{line_text(row.get('summary', ''), 80)}")
    return EXIT_OK


def _log(args: argparse.Namespace, redis_settings: RedisSettings) -> int:
    client = connect(redis_settings)
    lines = client.lrange(redis_settings.keys.notification_log(), 0, max(args.lines, 1) - 1)
    for raw in reversed(lines):
        text = _text(raw)
        if args.json:
            print(text)
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        print(f"{entry.get('at', '-')}  {entry.get('outcome', '-'):<10} "
              f"{entry.get('channel', '-'):<8} {entry.get('kind', ''):<16} "
              f"{entry.get('host', '')} {entry.get('check', '')}  "
              f"{line_text(entry.get('detail', ''), 100)}")
    return EXIT_OK


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mtbbs-alerter``."""
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    document, redis_settings = load_config(args)
    if args.command == "worker":
        return _worker(args, document, redis_settings)
    if args.command == "rules":
        return _rules_check(args, document)
    if args.command == "silence":
        return _silence(args, document, redis_settings)
    if args.command == "failed":
        return _failed(args, document, redis_settings)
    if args.command == "test-notify":
        return _test_notify(args, document)
    if args.command == "alerts":
        return _alerts(args, redis_settings)
    return _log(args, redis_settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(None))
