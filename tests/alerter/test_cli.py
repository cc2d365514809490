"""``mtbbs-alerter`` commands other than the worker, run in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue

from alerter import dispatch
from alerter.cli import main
from alerter.evaluate import evaluate_hosts
from wire.keys import RQ_SERIALIZER, KeySpace


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_rules_check(alerter_config: Any, tmp_path: Path, sink: Any,
                     capsys: pytest.CaptureFixture[str]) -> None:
    config = alerter_config({"slack": {"webhook_url": sink.url}})
    code, out, _ = run(capsys, "rules", "check", "--config", str(config))
    assert code == 0
    assert "rules OK" in out and "disk_space: disk_space.percent_used >= 90" in out
    assert "channels configured: slack" in out
    good = tmp_path / "rules.toml"
    good.write_text('[[rules.routes]]\nchannels = ["slack"]\n', encoding="utf-8")
    assert run(capsys, "rules", "check", str(good), "--config", str(config))[0] == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[rules.disk_space]\nwhen = ["disk_space.percent_used => 90"]\n',
                   encoding="utf-8")
    code, _, err = run(capsys, "rules", "check", str(bad), "--config", str(config))
    assert code == 1 and "rules.disk_space.when[0]" in err
    unrouted = tmp_path / "unrouted.toml"
    unrouted.write_text('[[rules.routes]]\nchannels = ["mail"]\n', encoding="utf-8")
    code, _, err = run(capsys, "rules", "check", str(unrouted), "--config", str(config))
    assert code == 1 and "channel mail is not configured" in err
    # The configured rules file is what the worker uses.
    uses_file = alerter_config({"alerter": {"rules_file": str(bad)}}, name="uses.toml")
    code, _, err = run(capsys, "rules", "check", "--config", str(uses_file))
    assert code == 1 and "rules.disk_space.when[0]" in err
    with pytest.raises(SystemExit) as usage:
        main(["rules", "check", "--bogus"])
    assert usage.value.code == 3


def test_silences_from_the_command_line(alerter_config: Any, redis_client: redis.Redis,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = str(alerter_config())
    code, out, _ = run(capsys, "silence", "add", "--host", "bbs-*", "--check", "disk_space",
                       "--duration", "2h", "--reason", "ディスク交換 <!channel>", "--author",
                       "sysop", "--config", config)
    assert code == 0
    silence_id = out.strip()
    assert len(silence_id) == 8
    code, out, _ = run(capsys, "silence", "list", "--config", config)
    assert code == 0 and silence_id in out and "ディスク交換" in out and "by sysop" in out
    code, out, _ = run(capsys, "silence", "list", "--json", "--config", config)
    [listed] = json.loads(out)
    assert listed["host"] == "bbs-*" and listed["ends_ms"] - listed["starts_ms"] == 7_200_000
    code, _, err = run(capsys, "silence", "add", "--host", "bbs-01", "--duration", "soon",
                       "--reason", "x", "--config", config)
    assert code == 3 and "not a duration" in err
    code, _, err = run(capsys, "silence", "add", "--host", "bbs-01", "--reason", "x",
                       "--config", config)
    assert code == 3 and "--duration" in err
    code, out, _ = run(capsys, "silence", "add", "--host", "bbs-01", "--daily", "02:00-03:00",
                       "--reason", "nightly backup", "--config", config)
    assert code == 0
    assert run(capsys, "silence", "remove", silence_id, "--config", config)[0] == 0
    code, _, err = run(capsys, "silence", "remove", silence_id, "--config", config)
    assert code == 1 and "no silence" in err
    code, out, _ = run(capsys, "silence", "list", "--config", config)
    assert "nightly backup" in out and "02:00-03:00" in out


def test_failed_deliveries_list_and_retry(alerter_config: Any, make_context: Any, sink: Any,
                                          hosts: Any, redis_client: redis.Redis,
                                          keys: KeySpace,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = str(alerter_config({"slack": {"webhook_url": sink.url}}))
    ctx = make_context({"slack": {"webhook_url": sink.url}})
    hosts.write("bbs-01", database=False)
    evaluate_hosts(ctx, ["bbs-01"], drain_channels=False)
    notes = [json.loads(x) for x in redis_client.lrange(keys.digest_buffer("slack"), 0, -1)]
    sink.default = type(sink.default)(status=404, body="no_service")
    for index in range(2):
        delivery = {"id": f"{1000 + index}-abcdef", "notifications": notes}
        dispatch.run_delivery(ctx, "slack", delivery, token=f"t{index}", attempt=1)
    code, out, _ = run(capsys, "failed", "--config", config)
    assert code == 0 and "1000-abcdef  slack" in out and "permanent after 1 attempt" in out
    assert "HTTP 404 no_service" in out and "firing bbs-01 database" in out
    assert "secret-token" not in out
    code, out, _ = run(capsys, "failed", "--retry", "1000-abcdef", "--config", config)
    assert code == 0 and "re-enqueued 1000-abcdef" in out
    queue = Queue(keys.notify_queue(), connection=redis_client, serializer=RQ_SERIALIZER)
    [job] = queue.get_jobs()
    assert job.args[0] == "slack" and job.args[1]["notifications"] == notes
    assert run(capsys, "failed", "--retry", "1000-abcdef", "--config", config)[0] == 1
    assert run(capsys, "failed", "--retry-all", "--config", config)[0] == 0
    assert len(queue.get_jobs()) == 2
    code, out, _ = run(capsys, "failed", "--config", config)
    assert "no failed deliveries" in out


def test_test_notify(alerter_config: Any, sink: Any, smtp: Any,
                     capsys: pytest.CaptureFixture[str]) -> None:
    config = str(alerter_config({
        "slack": {"webhook_url": sink.url},
        "mail": {"host": "127.0.0.1", "port": smtp.port, "security": "plain",
                 "to": ["ops@example.org"]},
    }))
    code, out, _ = run(capsys, "test-notify", "--channel", "slack", "--config", config)
    assert code == 0 and "sent a test message by slack webhook at 127.0.0.1" in out
    assert "secret-token" not in out
    assert sink.all_requests()[0]["json"]["attachments"][0]["title"].startswith("TEST ")
    code, out, _ = run(capsys, "test-notify", "--channel", "mail", "--config", config)
    assert code == 0 and len(smtp.messages) == 1
    assert f"sent a test message by mail via 127.0.0.1:{smtp.port} (plain)" in out
    assert "via mail via" not in out
    assert smtp.parsed()[0]["Subject"].startswith("[MTBBS] TEST ")
    sink.default = type(sink.default)(status=404, body="no_service")
    code, _, err = run(capsys, "test-notify", "--channel", "slack", "--config", config)
    assert code == 1 and "failed (permanent): HTTP 404 no_service" in err
    code, _, err = run(capsys, "test-notify", "--channel", "webhook", "--config", config)
    assert code == 1 and "webhook is not configured" in err
    bad = alerter_config({"slack": {"webhook_url": "not a url"}}, name="bad.toml")
    code, _, err = run(capsys, "test-notify", "--channel", "slack", "--config", str(bad))
    assert code == 3 and "slack.webhook_url" in err and "not a url" not in err


def test_alerts_and_log(alerter_config: Any, make_context: Any, sink: Any, hosts: Any,
                        capsys: pytest.CaptureFixture[str]) -> None:
    config = str(alerter_config({"slack": {"webhook_url": sink.url}}))
    ctx = make_context({"slack": {"webhook_url": sink.url}})
    hosts.write("bbs-01", disk=95.0)
    hosts.write("bbs-02", disk=95.0)
    evaluate_hosts(ctx, ["bbs-01", "bbs-02"], drain_channels=False)
    hosts.write("bbs-02", disk=10.0)
    evaluate_hosts(ctx, ["bbs-02"], drain_channels=False)
    code, out, _ = run(capsys, "alerts", "--config", config)
    assert code == 0 and "bbs-01" in out and "firing" in out and "bbs-02" not in out
    code, out, _ = run(capsys, "alerts", "--all", "--json", "--config", config)
    assert {(a["host"], a["state"]) for a in json.loads(out)} == \
        {("bbs-01", "firing"), ("bbs-02", "resolved")}
    code, out, _ = run(capsys, "log", "--config", config)
    assert code == 0 and out.count("queued") == 3 and "resolved" in out
