"""Chaos: an alerter worker SIGKILLed in the middle of a notification.

Real processes: redis-server, ``mtbbs-collector run``, ``mtbbs-alerter
worker``; local stand-ins for an SMTP server and Slack. A host reports a
broken database (the built-in ``database`` rule: CRITICAL at once), so one
mail and one Slack message are due. Both endpoints hold their first
conversation (``--hold mail``: SMTP before accepting the recipient;
``--hold slack``: Slack before answering) and the worker is SIGKILLed,
process group and all, while it is held. The
endpoints are released, a second worker starts, rq's abandoned-job handling
runs the delivery again.

Printed: notifications expected and accepted per channel, attempts cut off
by the kill, duplicates. Expected: each endpoint accepts each notification
exactly once. (An endpoint that acts on a message *before* answering, then
loses its answer to the kill, would see it twice: delivery is at least once
from the endpoint's side; the held conversations here are the case the
alerter can make exactly-once.)

    python chaos/notify_worker_kill.py --hold mail
    python chaos/notify_worker_kill.py --hold slack
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import harness
from harness import (
    HttpSink,
    SmtpSink,
    clean_env,
    command,
    processes,
    terminate,
    wait_until,
    write_toml,
)

from wire.keys import KeySpace
from wire.messages import Report, encode

HOST = "bbs-kill"


def broken_report(seq: int) -> Report:
    return Report(host=HOST, agent_version="chaos", epoch=1, seq=seq, observed_at=time.time(),
                  interval=60.0,
                  checks={"database": {"healthy": False, "error": "Database file not found"}})


def scenario(workdir: Path, *, settle: float, hold: str) -> dict[str, Any]:
    keys = KeySpace()
    smtp, slack = SmtpSink(), HttpSink()
    hold_mail, hold_slack = threading.Event(), threading.Event()
    if hold == "mail":
        smtp.stall_next = hold_mail
    else:
        slack.stall_next = hold_slack
    smtp.start()
    slack.start()
    try:
        with processes(workdir / "logs") as group:
            server = group.redis_server(aof=False)
            config = write_toml(workdir / "mtbbs.toml", {
                "redis": {"url": server.url},
                "mail": {"host": "127.0.0.1", "port": smtp.port, "security": "plain",
                         "to": ["ops@example.org"], "from_addr": "monitor@example.org"},
                "slack": {"webhook_url": slack.url},
                "alerter": {"delivery_timeout": 3, "abandoned_grace": 1.0,
                            "maintenance_interval": 0.5, "retry_intervals": ["1", "2"],
                            "digest_window": 0.5},
                # The host's stream appears with its report, after the collector
                # started: found soon rather than at the default 5 s.
                "collector": {"discovery_interval_s": 0.5},
            })
            env = clean_env()
            collector = group.spawn("collector", [command("mtbbs-collector"), "run",
                                                  "--config", str(config)], env)
            first = group.spawn("worker-1", [command("mtbbs-alerter"), "worker", "--config",
                                             str(config), "--name", "w1"], env)
            client: Any = server.client()
            client.xadd(keys.reports_stream(HOST), {"m": encode(broken_report(1))})
            held_sink: Any = smtp if hold == "mail" else slack
            wait_until(lambda: held_sink.arrivals, 60,
                       what=f"the {hold} notification in progress", alive=[collector, first])
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
            killed_at = time.monotonic()
            hold_mail.set()
            hold_slack.set()
            second = group.spawn("worker-2", [command("mtbbs-alerter"), "worker", "--config",
                                              str(config), "--name", "w2"], env)
            wait_until(lambda: smtp.notification_ids() and slack.notification_ids(), 90,
                       what="both notifications accepted", alive=[collector, second])
            recovered_s = time.monotonic() - killed_at
            time.sleep(settle)  # room for a duplicate to show up
            state = client.hget(keys.alert(HOST, "database"), "state")
            stopping = time.monotonic()
            worker_exit = terminate(second, timeout=15)
            worker_stop_s = time.monotonic() - stopping
            terminate(collector)
    finally:
        smtp.stop()
        slack.stop()
    mail_ids, slack_ids = smtp.notification_ids(), slack.notification_ids()
    return {
        "alert_state": state.decode() if state else None,
        "killed_during": hold,
        "mail_expected": 1,
        "mail_accepted": len(mail_ids),
        "mail_duplicates": len(mail_ids) - len(set(mail_ids)),
        "slack_expected": 1,
        "slack_accepted": len(slack_ids),
        "slack_duplicates": len(slack_ids) - len(set(slack_ids)),
        "smtp_conversations": smtp.arrivals,
        "slack_requests": slack.arrivals,
        "slack_answers_cut_off_by_the_kill": slack.cut_off,
        "kill_to_both_delivered_s": round(recovered_s, 1),
        # SIGTERM should end a worker in a moment; -9 means it had to be killed.
        "worker_exit_on_sigterm": worker_exit,
        "worker_stop_s": round(worker_stop_s, 1),
    }


def main() -> int:
    parser = harness.scenario_parser(__doc__)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to watch for duplicates after delivery (default 5)")
    parser.add_argument("--hold", choices=("mail", "slack"), default="mail",
                        help="the endpoint held when the worker is killed (default mail)")
    args = parser.parse_args()
    result = harness.run_and_report(
        args, "alerter worker SIGKILLed during a notification", "chaos-notify-kill-",
        lambda workdir: scenario(workdir, settle=args.settle, hold=args.hold))
    ok = result["mail_accepted"] == 1 and result["slack_accepted"] == 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
