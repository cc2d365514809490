"""The real components, each logged in as its role's ACL user, can do their job.

The default user is switched off, so a component that fell back to it (or
needed more than its role grants) would fail here. What each role must not
be able to do is in test_acl_rules.py.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from wire.keys import KeySpace
from wire.messages import Report, SessionEvent, SessionInfo, encode

KEYS = KeySpace()
NOW = time.time()


@pytest.fixture
def locked(acl_redis: Any) -> redis.Redis:
    """Default user off; an admin client (user ``admin``) for the test's own checks."""
    admin_password = "admin-password-0123"
    acl_redis.admin.execute_command("ACL", "SETUSER", "admin", "reset", "on",
                                    f">{admin_password}", "~*", "&*", "+@all")
    acl_redis.admin.execute_command("ACL", "SETUSER", "default", "off")
    acl_redis.admin = redis.Redis(port=acl_redis.port, username="admin",
                                  password=admin_password)
    return acl_redis.admin


@pytest.fixture
def as_user(acl_redis: Any, password_file: Any, clean_env: dict[str, str],
            command: Any, tmp_path: Path) -> Any:
    """``as_user(user, script, *argv)`` runs a console command logged in as ``user``."""

    def run(user: str, script: str, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        name, password = acl_redis.credentials(user)
        env = dict(clean_env, MTBBS_REDIS_URL=acl_redis.url(), MTBBS_REDIS_USERNAME=name,
                   MTBBS_REDIS_PASSWORD_FILE=str(password_file(password)), **extra)
        result = subprocess.run([command(script), *argv], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr, result.stderr
        assert password not in result.stdout + result.stderr
        return result

    return run


def publish_fleet(acl_redis: Any) -> None:
    """A report and a snapshot of bbs-a, appended as its agent and reporter would."""
    agent = acl_redis.client("mtbbs-agent-bbs-a")
    agent.xadd(KEYS.reports_stream("bbs-a"), {"m": encode(Report(
        host="bbs-a", agent_version="test", epoch=1, seq=1, observed_at=NOW,
        checks={"disk_space": {"healthy": True, "percent_used": 42.0},
                "sessions": {"healthy": True, "active_sessions": 1}}))})
    reporter = acl_redis.client("mtbbs-reporter-bbs-a")
    reporter.xadd(KEYS.sessions_stream("bbs-a"), {"m": encode(SessionEvent(
        "bbs-a", 1, 1, NOW, "snapshot",
        sessions=(SessionInfo("10.0.0.1:4000", "guest", "logged_in", NOW),)))})


@pytest.mark.e2e
def test_collector_and_readonly_commands(locked: redis.Redis, acl_redis: Any,
                                         as_user: Any) -> None:
    publish_fleet(acl_redis)
    ingest = as_user("mtbbs-collector", "mtbbs-collector", "run", "--once", "--name", "c1")
    assert ingest.returncode == 0, ingest.stderr
    assert locked.hget(KEYS.host("bbs-a"), "disk_space.percent_used") == b"42.0"
    assert locked.hexists(KEYS.host_sessions("bbs-a"), "10.0.0.1:4000")

    # The collector ran with --once and said "stopped" in its heartbeat, so
    # the plugin may warn about it; what matters is that it read the state.
    status = as_user("mtbbs-readonly", "mtbbs-collector", "status", "--host", "bbs-a")
    assert status.returncode in (0, 1), status.stdout + status.stderr
    assert "UNKNOWN" not in status.stdout and "disk 42%" in status.stdout
    fleet = as_user("mtbbs-readonly", "mtbbs-collector", "status", "--json")
    assert fleet.returncode in (0, 1), fleet.stdout + fleet.stderr
    assert json.loads(fleet.stdout)
    for argv in (["hosts"], ["sessions", "--host", "bbs-a"], ["history", "--host", "bbs-a"],
                 ["dead-letters"]):
        result = as_user("mtbbs-readonly", "mtbbs-collector", *argv)
        assert result.returncode == 0, (argv, result.stderr)
    assert "bbs-a" in as_user("mtbbs-readonly", "mtbbs-collector", "hosts").stdout
    watch = as_user("mtbbs-readonly", "mtbbs-monitor", "watch", "--once")
    assert watch.returncode == 0, watch.stderr
    assert "bbs-a" in watch.stdout

    # Writing is not the read-only user's job: forget is refused, state intact.
    forget = as_user("mtbbs-readonly", "mtbbs-collector", "forget", "--host", "bbs-a")
    assert forget.returncode != 0
    assert locked.exists(KEYS.host("bbs-a"))


@pytest.mark.e2e
def test_exporter_as_the_readonly_user(locked: redis.Redis, acl_redis: Any, as_user: Any,
                                       password_file: Any, clean_env: dict[str, str],
                                       command: Any, tmp_path: Path) -> None:
    publish_fleet(acl_redis)
    assert as_user("mtbbs-collector", "mtbbs-collector", "run", "--once").returncode == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    name, password = acl_redis.credentials("mtbbs-readonly")
    env = dict(clean_env, MTBBS_REDIS_URL=acl_redis.url(), MTBBS_REDIS_USERNAME=name,
               MTBBS_REDIS_PASSWORD_FILE=str(password_file(password)))
    exporter = subprocess.Popen([command("mtbbs-collector"), "exporter", "--port", str(port),
                                 "--host-series"],
                                env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        body = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "bbs-a" not in body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.1)
        assert 'host="bbs-a"' in body
        # The web page reads the fleet with the same read-only user.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet", timeout=5) as reply:
            assert reply.status == 200 and "bbs-a" in reply.read().decode()
    finally:
        exporter.terminate()
        _, stderr = exporter.communicate(timeout=20)
    assert "Traceback" not in stderr
    assert password not in stderr


def bbs_a_with_one_session(locked: redis.Redis, tmp_path: Path) -> Path:
    """A BBS database for host bbs-a, and one logged-in session in its hash;
    the database's path."""
    db = tmp_path / "mtbbs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    locked.hset(KEYS.host_sessions("bbs-a"), "10.0.0.9:1", json.dumps(
        {"client_id": "10.0.0.9:1", "user_id": "guest", "state": "logged_in",
         "connected_at": "2026-01-01T00:00:00.000Z"}))
    return db


@pytest.mark.e2e
def test_agent_once_as_its_host_user(locked: redis.Redis, acl_redis: Any, as_user: Any,
                                     tmp_path: Path) -> None:
    db = bbs_a_with_one_session(locked, tmp_path)
    result = as_user("mtbbs-agent-bbs-a", "mtbbs-agent", "run", "--once", "--no-probe",
                     "--host", "bbs-a", "--db", str(db), "--data-dir", str(tmp_path),
                     "--spool", str(tmp_path / "spool.db"))
    assert result.returncode in (0, 1), result.stderr
    entries = locked.xrange(KEYS.reports_stream("bbs-a"))
    assert len(entries) == 1
    from wire.messages import decode_entry

    report = decode_entry(entries[0][1])
    assert isinstance(report, Report)
    # The sessions check read its own host's hash through the ACL.
    assert report.checks["sessions"]["active_sessions"] == 1
    # The same user pointed at another host's id is refused its sessions hash
    # and its reports stream.
    other = as_user("mtbbs-agent-bbs-a", "mtbbs-agent", "run", "--once", "--no-probe",
                    "--host", "bbs-b", "--db", str(db), "--data-dir", str(tmp_path),
                    "--spool", str(tmp_path / "spool-b.db"))
    assert other.returncode in (0, 1, 2, 3)
    assert len(locked.xrange(KEYS.reports_stream("bbs-a"))) == 1
    assert not locked.exists(KEYS.reports_stream("bbs-b"))


@pytest.mark.e2e
def test_alerter_worker_and_admin_commands_as_their_users(locked: redis.Redis, acl_redis: Any,
                                                          as_user: Any, webhook: Any,
                                                          tmp_path: Path) -> None:
    config = tmp_path / "alerter.toml"
    config.write_text(f'[slack]\nwebhook_url = "{webhook.url}"\n'
                      '[alerter]\ndigest_window = 0.0\n')
    acl_redis.client("mtbbs-agent-bbs-a").xadd(KEYS.reports_stream("bbs-a"), {"m": encode(Report(
        host="bbs-a", agent_version="test", epoch=1, seq=1, observed_at=NOW,
        checks={"database": {"healthy": False, "error": "Database file not found"}}))})
    assert as_user("mtbbs-collector", "mtbbs-collector", "run", "--once").returncode == 0
    assert locked.llen(f"rq:queue:{KEYS.evaluate_queue()}") == 1
    # The worker runs the evaluation the collector enqueued, then the delivery.
    deadline = time.monotonic() + 30
    while not webhook.bodies and time.monotonic() < deadline:
        worker = as_user("mtbbs-alerter", "mtbbs-alerter", "worker", "--burst",
                         "--config", str(config))
        assert worker.returncode == 0, worker.stderr
    assert locked.hget(KEYS.alert("bbs-a", "database"), "state") == b"firing"
    [body] = webhook.bodies
    assert body["attachments"][0]["title"] == "CRITICAL bbs-a database"

    silence = as_user("mtbbs-alerter", "mtbbs-alerter", "silence", "add", "--host", "bbs-a",
                      "--reason", "maintenance", "--duration", "1h", "--config", str(config))
    assert silence.returncode == 0, silence.stderr
    assert locked.hlen(KEYS.silences()) == 1
    for argv in (["silence", "list"], ["failed"], ["alerts"], ["log"]):
        result = as_user("mtbbs-alerter", "mtbbs-alerter", *argv, "--config", str(config))
        assert result.returncode == 0, (argv, result.stderr)
    # Reading alerts is read-only work.
    alerts = as_user("mtbbs-readonly", "mtbbs-alerter", "alerts", "--json")
    assert alerts.returncode == 0, alerts.stderr
    assert json.loads(alerts.stdout)[0]["state"] == "firing"


@pytest.mark.e2e
def test_health_check_reads_sessions_as_the_agent_user(locked: redis.Redis, acl_redis: Any,
                                                       as_user: Any, tmp_path: Path) -> None:
    db = bbs_a_with_one_session(locked, tmp_path)
    result = as_user("mtbbs-agent-bbs-a", "mtbbs-health-check", "--json", "--host", "bbs-a",
                     "--db", str(db), "--data-dir", str(tmp_path))
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    assert document["health"]["sessions"]["active_sessions"] == 1
