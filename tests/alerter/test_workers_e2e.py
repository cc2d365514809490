"""End to end: ``mtbbs-alerter worker`` processes, redis-server, aiosmtpd and an HTTP sink.

Host state is written and evaluations enqueued exactly as the collector does
(``hosts`` fixture), so these tests exercise the contract, rq's workers and
scheduler, the channels and crash recovery for real.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus

from alerter.worker import PUBSUB_STOP_WAIT_S, SCHEDULER_STOP_WAIT_S, STOP_CHECK_INTERVAL_S
from wire.keys import RQ_SERIALIZER, KeySpace

pytestmark = pytest.mark.e2e


def channels(sink: Any, smtp: Any | None = None, **alerter: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"slack": {"webhook_url": sink.url}}
    if smtp is not None:
        document["mail"] = {"host": "127.0.0.1", "port": smtp.port, "security": "plain",
                            "to": ["ops@example.org"], "from_addr": "monitor@example.org"}
    if alerter:
        document["alerter"] = alerter
    return document


def slack_notes(sink: Any) -> list[dict[str, Any]]:
    """(title, footer id) of every delivered Slack attachment, in arrival order."""
    return sink.attachments()


def titles(sink: Any) -> list[str]:
    return [a["title"] for a in slack_notes(sink)]


def test_a_threshold_crossing_sends_one_mail_and_one_slack_message(
        alerter_config: Any, workers: Any, hosts: Any, sink: Any, smtp: Any, wait_for: Any,
        settled: Any, redis_client: redis.Redis, keys: KeySpace) -> None:
    config = alerter_config(channels(sink, smtp))
    workers(config)
    workers(config)  # several workers may run; nothing is sent twice
    hosts.report("bbs-01")
    hosts.report("bbs-01", disk=93.5)
    wait_for(lambda: smtp.messages and sink.ok_requests(), message="mail and slack")
    for _ in range(3):  # still breaching: no new message
        hosts.report("bbs-01", disk=94.0)
        settled()
    [mail] = smtp.parsed()
    assert mail["Subject"] == "[MTBBS] WARNING bbs-01 disk_space"
    assert mail["From"] == "monitor@example.org" and mail["To"] == "ops@example.org"
    body = mail.get_content()
    assert "MTBBS Health Alert" in body
    assert "disk_space.percent_used = 93.5 (>= 90)" in body
    assert "RETENTION_DAYS" in body  # the seed's troubleshooting hint
    [request] = sink.ok_requests()
    [attachment] = request["json"]["attachments"]
    assert attachment["title"] == "WARNING bbs-01 disk_space"
    assert attachment["color"] == "#f9a825"
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields["Host"] == "bbs-01" and fields["Check"] == "disk_space"
    assert "disk_space.percent_used: 93.5" in fields["Figures"]
    assert "logrotate" in attachment["text"]

    hosts.report("bbs-01", disk=40.0)
    wait_for(lambda: len(smtp.messages) == 2 and len(sink.ok_requests()) == 2,
             message="the resolved notices")
    settled()
    assert smtp.parsed()[1]["Subject"] == "[MTBBS] RESOLVED bbs-01 disk_space"
    assert titles(sink) == ["WARNING bbs-01 disk_space", "RESOLVED bbs-01 disk_space"]
    assert slack_notes(sink)[1]["color"] == "#2e7d32"
    assert len(smtp.messages) == 2 and len(sink.all_requests()) == 2


def test_repeats_follow_the_interval(alerter_config: Any, workers: Any, hosts: Any, sink: Any,
                                     wait_for: Any) -> None:
    config = alerter_config({**channels(sink), "rules": {"database": {"repeat": "2s"}}})
    workers(config)
    hosts.report("bbs-01", database=False)
    # No further reports: the periodic re-evaluation drives the reminders.
    wait_for(lambda: len(sink.ok_requests()) >= 4, timeout=20, message="three reminders")
    requests = sink.ok_requests()[:4]
    assert [r["json"]["attachments"][0]["title"] for r in requests] == [
        "CRITICAL bbs-01 database",
        "CRITICAL bbs-01 database (still firing, reminder 1)",
        "CRITICAL bbs-01 database (still firing, reminder 2)",
        "CRITICAL bbs-01 database (still firing, reminder 3)",
    ]
    gaps = [b["arrived"] - a["arrived"] for a, b in zip(requests, requests[1:], strict=False)]
    assert all(1.8 <= gap <= 6.0 for gap in gaps), gaps


def test_flapping_sends_one_notice_not_a_storm(alerter_config: Any, workers: Any, hosts: Any,
                                               sink: Any, settled: Any, wait_for: Any,
                                               redis_client: redis.Redis, keys: KeySpace
                                               ) -> None:
    config = alerter_config({**channels(sink, rate_limit=1000)})
    workers(config)
    for index in range(16):
        seen = hosts.report("bbs-01", disk=95.0 if index % 2 == 0 else 40.0)
        wait_for(lambda seen=seen: hosts.judged("bbs-01", "disk_space", seen),
                 message=f"report {index} to be judged")
    settled()
    got = titles(sink)
    assert got.count("FLAPPING bbs-01 disk_space") == 1
    flap = got.index("FLAPPING bbs-01 disk_space")
    assert flap <= 6 and got[flap + 1:] == []
    assert set(got[:flap]) <= {"WARNING bbs-01 disk_space", "RESOLVED bbs-01 disk_space"}
    state = redis_client.hgetall(keys.alert("bbs-01", "disk_space"))
    assert state[b"flapping"] == b"yes" and float(state[b"flap_percent"]) >= 20


def test_silences_suppress(alerter_config: Any, workers: Any, hosts: Any, sink: Any,
                           smtp: Any, settled: Any, wait_for: Any, command: Any,
                           clean_env: dict[str, str], redis_client: redis.Redis,
                           keys: KeySpace) -> None:
    config = alerter_config(channels(sink, smtp))
    cli = [command("mtbbs-alerter")]
    added = subprocess.run([*cli, "silence", "add", "--host", "bbs-0*", "--duration", "1h",
                            "--reason", "planned maintenance", "--config", str(config)],
                           capture_output=True, text=True, env=clean_env, timeout=30)
    assert added.returncode == 0, added.stderr
    silence_id = added.stdout.strip()
    workers(config)
    seen = hosts.report("bbs-01", database=False)
    wait_for(lambda: hosts.judged("bbs-01", "database", seen), message="the report judged")
    # Then a tick (the re-evaluation of active alerts), which the worker
    # starts by setting this key.
    redis_client.delete(keys.alerter_tick())
    wait_for(lambda: redis_client.exists(keys.alerter_tick()), message="a tick")
    # The worker runs jobs between its maintenance rounds, notification jobs
    # before evaluations: once a report enqueued now is judged, the tick and
    # whatever it had to send are done.
    seen = hosts.report("bbs-01", database=False)
    wait_for(lambda: hosts.judged("bbs-01", "database", seen), message="a later report judged")
    settled()
    assert sink.all_requests() == [] and smtp.messages == []
    log = [json.loads(x) for x in redis_client.lrange(keys.notification_log(), 0, -1)]
    assert [(e["outcome"], e["check"]) for e in log] == [("suppressed", "database")]
    assert log[0]["detail"] == f"silence {silence_id}"
    removed = subprocess.run([*cli, "silence", "remove", silence_id, "--config", str(config)],
                             capture_output=True, text=True, env=clean_env, timeout=30)
    assert removed.returncode == 0
    # The alert still fires: the channels hear of it now (the tick re-evaluates it).
    wait_for(lambda: sink.ok_requests() and smtp.messages, message="the unsilenced alert")
    assert titles(sink) == ["CRITICAL bbs-01 database"]


def test_mail_waits_for_a_server_that_comes_back(alerter_config: Any, workers: Any,
                                                 hosts: Any, sink: Any, smtp_down: Any,
                                                 wait_for: Any, redis_client: redis.Redis,
                                                 keys: KeySpace) -> None:
    config = alerter_config(channels(sink, smtp_down, retry_max=20, retry_intervals=["1"]))
    workers(config)
    hosts.report("bbs-01", database=False)
    wait_for(lambda: sink.ok_requests(), message="the slack message")

    def retrying() -> bool:
        log = [json.loads(x) for x in redis_client.lrange(keys.notification_log(), 0, -1)]
        return any(e["outcome"] == "retrying" and e["channel"] == "mail" for e in log)

    wait_for(retrying, message="a failed mail attempt")
    smtp_down.start()
    wait_for(lambda: smtp_down.messages, timeout=15, message="the mail after a retry")
    assert smtp_down.parsed()[0]["Subject"] == "[MTBBS] CRITICAL bbs-01 database"
    assert redis_client.hlen(keys.notifications_failed()) == 0


def test_slack_500_is_retried_and_404_is_not(alerter_config: Any, workers: Any, hosts: Any,
                                             sink: Any, settled: Any, wait_for: Any,
                                             redis_client: redis.Redis, keys: KeySpace) -> None:
    reply = type(sink.default)
    sink.replies.extend([reply(status=500, body="boom"), reply(status=502)])
    config = alerter_config(channels(sink, retry_max=5, retry_intervals=["1"]))
    workers(config)
    hosts.report("bbs-01", database=False)
    wait_for(lambda: sink.ok_requests(), timeout=15, message="the message after two 5xx")
    assert [r["status"] for r in sink.all_requests()] == [500, 502, 200]
    bodies = {json.dumps(r["json"]["attachments"][0]["title"]) for r in sink.all_requests()}
    assert len(bodies) == 1  # the same message each time

    sink.default = reply(status=404, body="no_service")
    hosts.report("bbs-02", database=False)
    wait_for(lambda: redis_client.hlen(keys.notifications_failed()), message="the failure")
    [record] = [json.loads(v) for v in redis_client.hvals(keys.notifications_failed())]
    assert record["permanent"] and record["attempts"] == 1 and "404" in record["error"]
    # No second attempt comes: the delivery job ended as finished (a job that
    # returns rq's Retry is scheduled instead), and nothing is left to run.
    job = Job.fetch(f"slack-{record['id']}", connection=redis_client, serializer=RQ_SERIALIZER)
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED,
             message="the delivery job to finish")
    assert job.return_value() == {"delivery": record["id"], "failed": 1,
                                  "error": record["error"], "permanent": True}
    settled()
    assert [r["status"] for r in sink.all_requests()] == [500, 502, 200, 404]


def test_a_retry_never_runs_before_its_delay(alerter_config: Any, workers: Any, hosts: Any,
                                            sink: Any, wait_for: Any) -> None:
    """rq keeps scheduled times in whole seconds; a 1 s retry must still wait 1 s."""
    reply = type(sink.default)
    sink.replies.extend([reply(status=500), reply(status=500), reply(status=500)])
    config = alerter_config(channels(sink, retry_max=5, retry_intervals=["1"]))
    workers(config)
    hosts.report("bbs-01", database=False)
    wait_for(lambda: sink.ok_requests(), timeout=20, message="the message after three 500s")
    arrivals = sorted(sink.arrivals)
    assert len(arrivals) == 4
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) >= 1.0, gaps


def test_a_worker_killed_mid_delivery_does_not_lose_the_notice(
        alerter_config: Any, workers: Any, hosts: Any, sink: Any, wait_for: Any,
        redis_client: redis.Redis, keys: KeySpace) -> None:
    stall = threading.Event()
    sink.replies.append(type(sink.default)(stall=stall))
    config = alerter_config(channels(sink, delivery_timeout=3, abandoned_grace=1.0))
    # The same fixed name twice, as a supervisor restarting a unit does: the
    # dead worker's registration must not lock its successor out.
    first = workers(config, "--name", "alerter-unit-1")
    hosts.report("bbs-01", database=False)
    wait_for(lambda: sink.arrivals, message="the first (stalled) request")
    first.kill()
    stall.set()
    workers(config, "--name", "alerter-unit-1")
    delivered = wait_for(lambda: sink.ok_requests(), timeout=20,
                         message="the delivery re-run by another worker")
    titles_seen = [r["json"]["attachments"][0]["title"] for r in delivered]
    assert titles_seen == ["CRITICAL bbs-01 database"]
    note_id = delivered[0]["json"]["attachments"][0]["footer"]
    # The worker records the delivery once Slack's answer is in: a moment after
    # the sink has sent it.
    sent = wait_for(lambda: (redis_client.get(keys.notification_sent(f"slack/{note_id}"))
                             or b"").startswith(b"sent:")
                    and redis_client.get(keys.notification_sent(f"slack/{note_id}")),
                    message="the delivery recorded as sent")
    # It was rq's abandoned-job handling that ran it again: one retry spent.
    delivery_id = sent.decode().rsplit(":", 1)[1]
    job = Job.fetch(f"slack-{delivery_id}", connection=redis_client, serializer=RQ_SERIALIZER)
    assert job.retries_left == 2


def test_japanese_and_hostile_text_arrive_safely(alerter_config: Any, workers: Any,
                                                 hosts: Any, sink: Any, smtp: Any,
                                                 wait_for: Any, settled: Any) -> None:
    hostile = "破損しています\r\nBcc: victim@example.org\r\n<!channel> & <@U0001>"
    config = alerter_config({
        **channels(sink, smtp),
        "rules": {"database": {"hint": "サーバーを停止し、バックアップから復元してください。"}},
    })
    workers(config)
    # A job argument no collector would send: refused, and the worker carries on.
    hosts.enqueue("bbs-01\r\nBcc: victim@example.org")
    hosts.report("bbs-01", database=False, extra={"database": {"error": hostile}})
    wait_for(lambda: smtp.messages and sink.ok_requests(), message="mail and slack")
    settled()
    [envelope] = smtp.messages
    assert envelope["to"] == ["ops@example.org"]
    [mail] = smtp.parsed()
    assert mail["Subject"] == "[MTBBS] CRITICAL bbs-01 database" and mail["Bcc"] is None
    body = mail.get_content()
    assert "サーバーを停止し、バックアップから復元してください。" in body
    assert "database.error: 破損しています Bcc: victim@example.org <!channel>" in body
    headers = envelope["data"].split(b"\r\n\r\n", 1)[0]
    assert b"victim" not in headers
    [attachment] = sink.ok_requests()[0]["json"]["attachments"]
    everything = json.dumps(attachment, ensure_ascii=False)
    assert "<!channel>" not in everything and "<@U0001>" not in everything
    assert "&lt;!channel&gt; &amp; &lt;@U0001&gt;" in everything
    assert "サーバーを停止し" in attachment["text"]


def test_a_storm_becomes_one_digest(alerter_config: Any, workers: Any, hosts: Any, sink: Any,
                                    wait_for: Any, settled: Any) -> None:
    config = alerter_config(channels(sink, digest_window=1.0))
    workers(config)
    for index in range(25):
        hosts.report(f"bbs-{index:02d}", stale="critical")
    wait_for(lambda: len(sink.attachments()) == 25, timeout=15, message="all 25 notices")
    settled()
    requests = sink.ok_requests()
    assert 2 <= len(requests) <= 4, [len(r["json"]["attachments"]) for r in requests]
    assert sorted(a["title"] for a in sink.attachments()) == \
        sorted(f"CRITICAL bbs-{i:02d} stale" for i in range(25))


def test_jobs_that_are_not_the_alerters_are_refused(alerter_config: Any, workers: Any,
                                                    hosts: Any, sink: Any, wait_for: Any,
                                                    tmp_path: Any, redis_client: redis.Redis,
                                                    keys: KeySpace) -> None:
    from rq import Queue
    from rq.registry import FailedJobRegistry

    config = alerter_config(channels(sink))
    workers(config)
    trap = tmp_path / "should-not-exist"
    queue = Queue(keys.evaluate_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    job = queue.enqueue("os.makedirs", str(trap))
    hosts.report("bbs-01", database=False)
    wait_for(lambda: sink.ok_requests(), message="the alert after the refused job")
    failed = FailedJobRegistry(keys.evaluate_queue(), connection=redis_client,
                               serializer=RQ_SERIALIZER)
    wait_for(lambda: job.id in failed.get_job_ids(), message="the refused job to fail")
    assert not trap.exists()


def test_the_forking_worker_class_works_too(alerter_config: Any, workers: Any, hosts: Any,
                                            sink: Any, wait_for: Any, settled: Any) -> None:
    config = alerter_config(channels(sink))
    workers(config, "--worker-class", "fork")
    hosts.report("bbs-01", disk=95.0)
    wait_for(lambda: sink.ok_requests(), message="the firing notice")
    hosts.report("bbs-01", disk=10.0)
    wait_for(lambda: len(sink.ok_requests()) == 2, message="the resolved notice")
    settled()
    assert titles(sink) == ["WARNING bbs-01 disk_space", "RESOLVED bbs-01 disk_space"]


def registered(client: redis.Redis, name: str) -> bool:
    return client.sismember("rq:workers", f"rq:worker:{name}") == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stop_signal_ends_an_idle_worker_with_exit_0(alerter_config: Any, workers: Any,
                                                       sink: Any, wait_for: Any,
                                                       redis_client: redis.Redis,
                                                       signum: int) -> None:
    """The worker stops at its next stop point, a second at most away, then tears down
    (each part of that has a bounded wait); rq's idle-stop exception, lost in a
    finalizer, once left it running until killed."""
    config = alerter_config(channels(sink))
    worker = workers(config, "--name", "stop-me", "--log-level", "INFO")
    wait_for(lambda: registered(redis_client, "stop-me"), message="the worker's registration")
    # To the worker alone (as `kill PID` or `docker stop`), not its process group.
    worker.process.send_signal(signum)
    bound = STOP_CHECK_INTERVAL_S + SCHEDULER_STOP_WAIT_S + PUBSUB_STOP_WAIT_S + 2
    assert worker.process.wait(bound) == 0
    output = worker.output()
    assert "unexpectedly" not in output and "Traceback" not in output
    assert "alerter worker stopped" in output
    assert not registered(redis_client, "stop-me")


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_sigterm_during_a_delivery_finishes_it_first(alerter_config: Any, workers: Any,
                                                     hosts: Any, sink: Any, wait_for: Any,
                                                     redis_client: redis.Redis,
                                                     keys: KeySpace, worker_class: str) -> None:
    """rq's warm shutdown: the Slack request in progress is answered and recorded
    as sent, then the worker exits 0, and nothing is sent twice."""
    stall = threading.Event()
    sink.replies.append(type(sink.default)(stall=stall))
    config = alerter_config(channels(sink, delivery_timeout=10))
    worker = workers(config, "--name", "warm-stop", "--worker-class", worker_class)
    hosts.report("bbs-01", database=False)
    wait_for(lambda: sink.arrivals, message="the (stalled) Slack request")
    worker.process.send_signal(signal.SIGTERM)
    # The worker is mid-job: it waits for the answer rather than leaving.
    wait_for(lambda: redis_client.hget("rq:worker:warm-stop", "shutdown_requested_date"),
             message="rq to note the warm shutdown")
    assert worker.process.poll() is None
    stall.set()
    assert worker.process.wait(15) == 0
    [request] = sink.all_requests()
    note_id = request["json"]["attachments"][0]["footer"]
    sent = redis_client.get(keys.notification_sent(f"slack/{note_id}"))
    assert sent is not None and sent.startswith(b"sent:")
    assert "unexpectedly" not in worker.output()
    assert not registered(redis_client, "warm-stop")
