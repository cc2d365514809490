"""Chaos: the SMTP server and Slack are down for a while; everything arrives afterwards.

Real processes: redis-server, ``mtbbs-collector run``, two ``mtbbs-alerter
worker``; local stand-ins for an SMTP server and Slack that are not
listening at first. ``--hosts`` hosts report a broken database, spread over
the outage, so that one mail and one Slack notification per host are due
while nothing can be delivered. After ``--down`` seconds both endpoints come
up. Deliveries are retried on ``[alerter] retry_intervals`` (here 1, 2, 4,
8, 8, ... seconds, ``retry_max`` 30, so the retries outlast the outage).

Printed: notifications expected (one per firing alert and channel) against
accepted, duplicates, deliveries given up as failed, and how long after the
endpoints came back the last one arrived.

    python chaos/notify_endpoints_down.py --hosts 5 --down 60
"""

from __future__ import annotations

import json
import sys
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


def broken_report(host: str) -> Report:
    return Report(host=host, agent_version="chaos", epoch=1, seq=1, observed_at=time.time(),
                  interval=3600.0,
                  checks={"database": {"healthy": False, "error": "Database file not found"}})


def scenario(workdir: Path, *, hosts_count: int, down: float, settle: float) -> dict[str, Any]:
    keys = KeySpace()
    hosts = [f"bbs-{i:02d}" for i in range(hosts_count)]
    smtp, slack = SmtpSink(), HttpSink()  # not started: down
    try:
        with processes(workdir / "logs") as group:
            server = group.redis_server(aof=False)
            config = write_toml(workdir / "mtbbs.toml", {
                "redis": {"url": server.url},
                "mail": {"host": "127.0.0.1", "port": smtp.port, "security": "plain",
                         "to": ["ops@example.org"], "from_addr": "monitor@example.org",
                         "timeout": 2.0},
                "slack": {"webhook_url": slack.url, "timeout": 2.0},
                "alerter": {"retry_intervals": ["1", "2", "4", "8"], "retry_max": 30,
                            "maintenance_interval": 1.0, "digest_window": 0.5},
                # Each host's stream appears with its first report, after the
                # collector started: found within half a second, the alerts
                # fire while the endpoints are still down.
                "collector": {"discovery_interval_s": 0.5},
            })
            env = clean_env()
            collector = group.spawn("collector", [command("mtbbs-collector"), "run",
                                                  "--config", str(config)], env)
            workers = [group.spawn(f"worker-{i}", [command("mtbbs-alerter"), "worker",
                                                   "--config", str(config), "--name", f"w{i}"],
                                   env) for i in (1, 2)]
            alive = [collector, *workers]
            client: Any = server.client()
            down_at = time.monotonic()
            # The alerts fire during the first half of the outage.
            for host in hosts:
                client.xadd(keys.reports_stream(host), {"m": encode(broken_report(host))})
                time.sleep(down / 2 / len(hosts))
            wait_until(lambda: all(client.hget(keys.alert(h, "database"), "state") == b"firing"
                                   for h in hosts), 60, what="every alert firing", alive=alive)
            remaining = down - (time.monotonic() - down_at)
            if remaining > 0:
                time.sleep(remaining)
            outcomes = [json.loads(line).get("outcome")
                        for line in client.lrange(keys.notification_log(), 0, -1)]
            retries_while_down = outcomes.count("retrying")
            smtp.start()
            slack.start()
            up_at = time.monotonic()
            expected = len(hosts)
            wait_until(lambda: len(set(smtp.notification_ids())) >= expected
                       and len(set(slack.notification_ids())) >= expected,
                       max(120.0, down * 2), what="every notification delivered", alive=alive)
            last_arrival_s = time.monotonic() - up_at
            time.sleep(settle)
            failed = client.hlen(keys.notifications_failed())
            stopping = time.monotonic()
            worker_exits = [terminate(child, timeout=15) for child in workers]
            worker_stop_s = time.monotonic() - stopping
            terminate(collector)
    finally:
        smtp.stop()
        slack.stop()
    mail_ids, slack_ids = smtp.notification_ids(), slack.notification_ids()
    return {
        "hosts_alerting": hosts_count,
        "endpoints_down_s": round(up_at - down_at, 1),
        "mail_expected": hosts_count,
        "mail_accepted": len(set(mail_ids)),
        "mail_messages": len(smtp.accepted),
        "mail_duplicates": len(mail_ids) - len(set(mail_ids)),
        "slack_expected": hosts_count,
        "slack_accepted": len(set(slack_ids)),
        "slack_messages": len(slack.accepted),
        "slack_duplicates": len(slack_ids) - len(set(slack_ids)),
        "deliveries_given_up": failed,
        "retries_logged_while_down": retries_while_down,
        "up_to_last_delivery_s": round(last_arrival_s, 1),
        "worker_exits_on_sigterm": worker_exits,
        "workers_stop_s": round(worker_stop_s, 1),
    }


def main() -> int:
    parser = harness.scenario_parser(__doc__)
    parser.add_argument("--hosts", type=int, default=5, help="hosts alerting (default 5)")
    parser.add_argument("--down", type=float, default=60.0,
                        help="seconds the endpoints stay down (default 60)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to watch for duplicates after delivery (default 5)")
    args = parser.parse_args()
    result = harness.run_and_report(
        args, "SMTP and Slack down, then back", "chaos-endpoints-",
        lambda workdir: scenario(workdir, hosts_count=args.hosts, down=args.down,
                                 settle=args.settle))
    ok = all(result[f"{c}_accepted"] == result[f"{c}_expected"]
             and result[f"{c}_duplicates"] == 0 for c in ("mail", "slack"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
