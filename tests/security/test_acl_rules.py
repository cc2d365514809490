"""The ACL rules: built from the real key names, and enforced by a real Redis.

Each role is exercised with the Redis commands its component issues, then
with commands it must not be able to run. The components themselves run as
these users in test_acl_components.py.
"""

from __future__ import annotations

import fnmatch
import hashlib
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import rq

from alerter.worker import BoundedPubsubTeardown
from wire.acl import (
    HOST_ROLES,
    ROLES,
    aclfile_line,
    glob_escape,
    password_rule,
    role_rule,
    setuser_line,
)
from wire.keys import RQ_SERIALIZER, XADD_EVENTS, KeySpace

KEYS = KeySpace()
SHARED_ROLES = tuple(role for role in ROLES if role not in HOST_ROLES)


def matches(patterns: tuple[str, ...], key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def denied(call: Any, *args: Any) -> bool:
    """True when Redis refuses the call for lack of permission."""
    try:
        call(*args)
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:
        return "NOPERM" in str(exc)
    return False


# -- the rules as data --------------------------------------------------------


def test_agent_patterns_follow_the_key_space() -> None:
    rule = role_rule("agent", host="bbs-a")
    for key in (*KEYS.host_streams("bbs-a"), KEYS.host_sessions("bbs-a")):
        assert matches(rule.key_patterns, key), key
    for other in (*KEYS.host_streams("bbs-b"), KEYS.host("bbs-a"), KEYS.host_sessions("bbs-b"),
                  KEYS.host_history("bbs-a"), KEYS.hosts_index(), KEYS.dead_letter_stream(),
                  KEYS.alert("bbs-a", "disk_space"), KEYS.collector_ring(),
                  "rq:queue:" + KEYS.evaluate_queue()):
        assert not matches(rule.key_patterns, other), other
    assert not any(c.startswith(("+eval", "+script", "+function", "+@")) for c in rule.commands)


def test_reporter_patterns_are_its_hosts_sessions_stream_only() -> None:
    rule = role_rule("reporter", host="bbs-a")
    assert rule.key_patterns == (KEYS.sessions_stream("bbs-a"),)
    assert rule.user == "mtbbs-reporter-bbs-a"


def test_collector_patterns_cover_its_keys_and_not_the_alerters() -> None:
    rule = role_rule("collector")
    for key in (*KEYS.host_streams("h"), *KEYS.host_streams("bbs-b"), KEYS.dead_letter_stream(),
                KEYS.hosts_index(), KEYS.host("h"), KEYS.host_sessions("h"),
                KEYS.host_history("h"), KEYS.collectors_index(), KEYS.collector_ring(),
                KEYS.collector("c1"), KEYS.evaluation_pending("h"),
                "rq:queue:" + KEYS.evaluate_queue(), "rq:queues", "rq:job:abc"):
        assert matches(rule.key_patterns, key), key
    for key in (KEYS.alert("h", "memory"), KEYS.alerts_index(), KEYS.silences(),
                KEYS.notifications_failed(), "rq:queue:" + KEYS.notify_queue(),
                "rq:worker:w1"):
        assert not matches(rule.key_patterns, key), key
    assert XADD_EVENTS in rule.channels
    assert "+scan" in rule.commands


def test_alerter_and_readonly_patterns() -> None:
    alerter = role_rule("alerter")
    for key in (KEYS.alert("h", "memory"), KEYS.alerts_index(), KEYS.silences(),
                KEYS.notifications_failed(), KEYS.notification_sent("n1"),
                KEYS.channel_rate("mail"), KEYS.digest_buffer("slack"), KEYS.host("h"),
                KEYS.evaluation_pending("h"), "rq:worker:w1", "rq:queue:mtbbs:notify"):
        assert matches(alerter.key_patterns, key), key
    for stream in KEYS.host_streams("bbs-a"):
        assert not matches(alerter.key_patterns, stream), stream
    readonly = role_rule("readonly")
    assert matches(readonly.key_patterns, KEYS.host("h"))
    for stream in KEYS.host_streams("bbs-a"):
        assert matches(readonly.key_patterns, stream), stream
    assert not matches(readonly.key_patterns, "rq:job:abc")


def test_prefix_is_escaped_and_followed() -> None:
    rule = role_rule("agent", "fleet[1]*:", host="bbs-a")
    keys = KeySpace("fleet[1]*:")
    assert rule.key_patterns[0] == glob_escape("fleet[1]*:") + "{bbs-a}:reports"
    # The escaped pattern matches the literal key only (Redis glob semantics,
    # which fnmatch does not share for backslashes: check through the text).
    assert rule.key_patterns[0].replace("\\", "") == keys.reports_stream("bbs-a")
    assert glob_escape("a*b?c[d]\\") == "a\\*b\\?c\\[d\\]\\\\"
    collector = role_rule("collector", "fleet[1]*:")
    assert collector.key_patterns[0] == glob_escape("fleet[1]*:") + "{*}:*"


def test_passwords_are_hashed_never_printed() -> None:
    rule = role_rule("collector")
    line = setuser_line(rule, "s3cret-pa55word")
    assert "s3cret-pa55word" not in line
    assert "#" + hashlib.sha256(b"s3cret-pa55word").hexdigest() in line
    assert password_rule(None) == "resetpass"
    assert aclfile_line(rule, "x" * 20).startswith("user mtbbs-collector on #")


def test_redis7_form_splits_read_and_write() -> None:
    rule = role_rule("agent", host="bbs-a")
    tokens = rule.rules(redis7=True)
    assert f"%W~{KEYS.reports_stream('bbs-a')}" in tokens
    assert f"%R~{KEYS.host_sessions('bbs-a')}" in tokens
    assert all(not t.startswith("%") for t in rule.rules())


def test_bad_role_host_or_user_refused() -> None:
    with pytest.raises(ValueError):
        role_rule("root")
    with pytest.raises(ValueError):
        role_rule("agent", host="bad host")
    with pytest.raises(ValueError):
        role_rule("agent", host="bbs-a", user="two words")
    # Braces or glob characters in a host id would widen its key patterns.
    for host in ("bbs-*", "bbs}a", "{bbs-a}", "bbs?", "bbs[a]"):
        with pytest.raises(ValueError):
            role_rule("agent", host=host)


@pytest.mark.parametrize("role", HOST_ROLES)
def test_host_roles_exist_per_host_only(role: str) -> None:
    with pytest.raises(ValueError, match=f"the {role} role is per host: give a host id"):
        role_rule(role)


@pytest.mark.parametrize("role", SHARED_ROLES)
def test_shared_roles_take_no_host(role: str) -> None:
    with pytest.raises(ValueError, match="shared"):
        role_rule(role, host="bbs-a")


# -- the rules on a real redis-server ------------------------------------------


def test_every_rule_is_accepted_by_redis(acl_redis: Any) -> None:
    listed = {line.split()[1].decode() for line in acl_redis.admin.execute_command("ACL", "LIST")}
    for role in SHARED_ROLES:
        assert f"mtbbs-{role}" in listed
    for host in ("bbs-a", "bbs-b"):
        assert {f"mtbbs-agent-{host}", f"mtbbs-reporter-{host}"} <= listed
    assert "mtbbs-agent" not in listed and "mtbbs-reporter" not in listed


def test_user_without_password_cannot_log_in(acl_redis: Any) -> None:
    rule = role_rule("readonly", user="nopass-user")
    acl_redis.admin.execute_command("ACL", "SETUSER", rule.user, "reset", "on",
                                    password_rule(None), *rule.rules())
    client = redis.Redis(port=acl_redis.port, username="nopass-user", password="")
    with pytest.raises(redis.exceptions.AuthenticationError):
        client.ping()


def test_agent_appends_and_reads_its_own_sessions_only(acl_redis: Any) -> None:
    acl_redis.admin.hset(KEYS.host_sessions("bbs-a"), "10.0.0.1:2323", "{}")
    acl_redis.admin.hset(KEYS.host_sessions("bbs-b"), "10.0.0.2:2323", "{}")
    acl_redis.admin.hset(KEYS.host("bbs-a"), "status", "OK")
    agent = acl_redis.client("mtbbs-agent-bbs-a")
    reports, sessions = KEYS.host_streams("bbs-a")
    assert agent.ping()
    agent.xadd(reports, {"m": b"x"}, maxlen=1000, approximate=True)
    agent.xadd(sessions, {"m": b"x"})
    assert agent.hgetall(KEYS.host_sessions("bbs-a"))
    with agent.pipeline() as pipe:
        pipe.xadd(reports, {"m": b"y"})
        pipe.execute()
    assert denied(agent.hgetall, KEYS.host_sessions("bbs-b"))
    assert denied(agent.hset, KEYS.host("bbs-b"), "status", "OK")
    assert denied(agent.hset, KEYS.host("bbs-a"), "status", "OK")
    assert denied(agent.hgetall, KEYS.host("bbs-a"))
    assert denied(agent.xreadgroup, "collectors", "x", {reports: ">"})
    assert denied(agent.config_set, "appendonly", "no")
    assert denied(agent.zadd, KEYS.hosts_index(), {"bbs-b": 1})
    assert denied(agent.execute_command, "SUBSCRIBE", "rq:pubsub:x")
    assert denied(agent.execute_command, "SUBSCRIBE", "__keyevent@0__:xadd")
    # More of what it must not do, against another host's stream, is in
    # test_acl_isolation.py.


def test_reporter_only_appends_session_events(acl_redis: Any) -> None:
    reporter = acl_redis.client("mtbbs-reporter-bbs-a")
    reporter.xadd(KEYS.sessions_stream("bbs-a"), {"m": b"x"}, maxlen=100, approximate=True)
    assert denied(reporter.xadd, KEYS.reports_stream("bbs-a"), {"m": b"x"})
    assert denied(reporter.xadd, KEYS.sessions_stream("bbs-b"), {"m": b"x"})
    assert denied(reporter.hgetall, KEYS.host_sessions("bbs-a"))
    assert denied(reporter.xrange, KEYS.sessions_stream("bbs-a"))


def test_collector_consumes_writes_state_and_enqueues(acl_redis: Any) -> None:
    admin = acl_redis.admin
    reports, sessions = KEYS.host_streams("bbs-a")
    admin.xadd(reports, {"m": b"x"})
    admin.xadd(KEYS.sessions_stream("bbs-b"), {"m": b"x"})
    admin.hset(f"{KEYS.prefix}not-a-stream", "a", "b")
    collector = acl_redis.client("mtbbs-collector")
    found = set(collector.scan_iter(match=KEYS.host_streams_pattern(), count=100,
                                    _type="stream"))
    assert found == {reports.encode(), KEYS.sessions_stream("bbs-b").encode()}
    collector.xgroup_create(reports, "collectors", id="0", mkstream=True)
    collector.xgroup_create(sessions, "collectors", id="0", mkstream=True)
    entries = collector.xreadgroup("collectors", "c1", {reports: ">", sessions: ">"},
                                   count=10)
    entry_id = entries[0][1][0][0]
    assert collector.xpending(reports, "collectors")["pending"] == 1
    collector.xautoclaim(reports, "collectors", "c2", 0)
    collector.xinfo_groups(reports)
    with collector.pipeline() as pipe:
        pipe.hset(KEYS.host("bbs-a"), mapping={"status": "OK"})
        pipe.zadd(KEYS.hosts_index(), {"bbs-a": 1})
        pipe.lpush(KEYS.host_history("bbs-a"), "line")
        pipe.ltrim(KEYS.host_history("bbs-a"), 0, 9)
        pipe.hset(KEYS.host_sessions("bbs-a"), "10.0.0.1:1", "{}")
        pipe.hset(KEYS.collector("c1"), "lag", "0")
        pipe.zadd(KEYS.collectors_index(), {"c1": 1})
        pipe.zadd(KEYS.collector_ring(), {"c1": 1})
        pipe.xadd(KEYS.dead_letter_stream(), {"reason": "test"})
        pipe.xack(reports, "collectors", entry_id)
        pipe.execute()
    # It trims what it has applied.
    collector.execute_command("XTRIM", reports, "MINID", "~", entry_id)
    collector.xtrim(reports, 0)
    assert admin.xlen(reports) == 0
    assert collector.set(KEYS.evaluation_pending("bbs-a"), 1, nx=True, ex=60)
    queue = rq.Queue(KEYS.evaluate_queue(), connection=collector, serializer=RQ_SERIALIZER)
    job = queue.enqueue("alerter.jobs.evaluate_host", "bbs-a")
    assert admin.llen(f"rq:queue:{KEYS.evaluate_queue()}") == 1
    assert admin.exists(job.key)
    assert denied(collector.hset, KEYS.alert("bbs-a", "memory"), "state", "firing")
    assert denied(collector.hset, KEYS.silences(), "s1", "{}")
    assert denied(collector.lpush, f"rq:queue:{KEYS.notify_queue()}", "job")
    assert denied(collector.hset, "rq:worker:x", "a", "b")
    assert denied(collector.flushall)
    assert denied(collector.flushdb)
    assert denied(collector.keys, "*")
    assert denied(collector.config_get, "*")
    assert denied(collector.execute_command, "SCRIPT", "FLUSH")
    assert denied(collector.execute_command, "ACL", "LIST")


def test_collector_subscribes_to_the_xadd_events_only(acl_redis: Any) -> None:
    collector = acl_redis.client("mtbbs-collector")
    pubsub = collector.pubsub()
    try:
        pubsub.subscribe("__keyevent@0__:xadd")
        pubsub.psubscribe(XADD_EVENTS)
        assert [pubsub.get_message(timeout=5)["type"] for _ in range(2)] == [
            "subscribe", "psubscribe"]
    finally:
        pubsub.close()
    assert denied(collector.execute_command, "SUBSCRIBE", "__keyevent@0__:del")
    assert denied(collector.execute_command, "PSUBSCRIBE", "__keyevent@*__:*")
    assert denied(collector.execute_command, "SUBSCRIBE", "rq:pubsub:x")


def test_alerter_runs_an_rq_worker_and_writes_alert_keys(acl_redis: Any) -> None:
    admin = acl_redis.admin
    queue_admin = rq.Queue(KEYS.notify_queue(), connection=admin, serializer=RQ_SERIALIZER)
    job = queue_admin.enqueue("json.dumps", [1, 2])
    alerter = acl_redis.client("mtbbs-alerter")
    queue = rq.Queue(KEYS.notify_queue(), connection=alerter, serializer=RQ_SERIALIZER)
    # rq's worker with the alerter's bounded teardown: rq's own can wait a
    # minute for its pubsub thread (see alerter.worker).
    worker_class = type("Worker", (BoundedPubsubTeardown, rq.SimpleWorker), {})
    worker = worker_class([queue], connection=alerter, serializer=RQ_SERIALIZER)
    # rq's work() leaves its SIGTERM/SIGINT handlers (request_stop) installed
    # and resets SIGALRM; put back pytest's.
    saved = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    try:
        assert worker.work(burst=True)
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    job.refresh()
    assert job.get_status() == "finished"
    alerter.hset(KEYS.alert("bbs-a", "memory"), mapping={"state": "firing"})
    alerter.sadd(KEYS.alerts_index(), "bbs-a/memory")
    alerter.hset(KEYS.silences(), "s1", "{}")
    alerter.set(KEYS.notification_sent("n1"), 1, nx=True, ex=60)
    alerter.lpush(KEYS.notification_log(), "{}")
    alerter.delete(KEYS.evaluation_pending("bbs-a"))
    alerter.hgetall(KEYS.host("bbs-a"))
    assert denied(alerter.xadd, KEYS.reports_stream("bbs-a"), {"m": b"x"})
    assert denied(alerter.xrange, KEYS.reports_stream("bbs-a"))
    assert denied(alerter.flushall)
    assert denied(alerter.config_set, "save", "")
    assert denied(alerter.execute_command, "SUBSCRIBE", "other-channel")


def test_readonly_reads_and_cannot_write(acl_redis: Any) -> None:
    admin = acl_redis.admin
    reports = KEYS.reports_stream("bbs-a")
    admin.hset(KEYS.host("bbs-a"), "status", "OK")
    admin.zadd(KEYS.hosts_index(), {"bbs-a": 1})
    admin.xadd(reports, {"m": b"x"})
    admin.xgroup_create(reports, "collectors", id="0")
    reader = acl_redis.client("mtbbs-readonly")
    assert reader.hgetall(KEYS.host("bbs-a")) == {b"status": b"OK"}
    assert reader.zrange(KEYS.hosts_index(), 0, -1, withscores=True)
    assert reader.xinfo_groups(reports)
    assert reader.xlen(reports) == 1
    assert reader.xrevrange(reports, count=1)
    assert reader.llen(f"rq:queue:{KEYS.evaluate_queue()}") == 0
    assert list(reader.scan_iter(match=f"{KEYS.prefix}*", count=100))
    assert set(reader.scan_iter(match=KEYS.host_streams_pattern(), count=100,
                                _type="stream")) == {reports.encode()}
    assert denied(reader.hset, KEYS.host("bbs-a"), "status", "CRITICAL")
    assert denied(reader.delete, KEYS.host("bbs-a"))
    assert denied(reader.xadd, reports, {"m": b"x"})
    assert denied(reader.xreadgroup, "collectors", "r", {reports: ">"})
    assert denied(reader.xgroup_destroy, reports, "collectors")
    assert denied(reader.eval, "return 1", 0)
    assert denied(reader.flushall)
    assert denied(reader.keys, "*")
    assert denied(reader.hgetall, "other:key")
    assert admin.hget(KEYS.host("bbs-a"), "status") == b"OK"


# -- the printed forms load into a real redis-server --------------------------


def test_aclfile_form_loads_in_redis(redis_server_factory: Any, tmp_path: Path) -> None:
    lines = ["user default on nopass ~* &* +@all"]
    lines += [aclfile_line(role_rule(role), f"pw-{role}-0123456789") for role in SHARED_ROLES]
    lines += [aclfile_line(role_rule(role, host="bbs-a"), None) for role in HOST_ROLES]
    aclfile = tmp_path / "users.acl"
    aclfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    server = redis_server_factory("--aclfile", str(aclfile))
    client = redis.Redis(port=server.port, username="mtbbs-readonly",
                         password="pw-readonly-0123456789")
    assert client.ping()
    assert denied(client.set, f"{KEYS.prefix}x", "1")


def test_setuser_lines_piped_to_redis_cli(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    rules = [role_rule(role) for role in SHARED_ROLES]
    rules += [role_rule(role, host="bbs-a") for role in HOST_ROLES]
    script = "\n".join(setuser_line(rule, f"pw-{rule.user}-0123456789") for rule in rules)
    result = subprocess.run([server.cli, "-p", str(server.port)], input=(script + "\n").encode(),
                            capture_output=True, timeout=30, check=True)
    assert result.stdout.decode().split() == ["OK"] * len(rules)
    client = redis.Redis(port=server.port, username="mtbbs-agent-bbs-a",
                         password="pw-mtbbs-agent-bbs-a-0123456789")
    client.xadd(KEYS.reports_stream("bbs-a"), {"m": b"x"})
    assert denied(client.xadd, KEYS.reports_stream("bbs-b"), {"m": b"x"})


def test_every_key_of_the_key_space_has_a_writer_and_is_readable() -> None:
    """A key added to KeySpace without an owning role fails here, not in production."""
    import inspect

    # Keys of a host are named with the host "sample-host" below.
    writers = [role_rule(r, host="sample-host") for r in HOST_ROLES]
    writers += [role_rule(r) for r in ("collector", "alerter")]
    readonly = role_rule("readonly")
    checked = 0
    for name, method in inspect.getmembers(KEYS, inspect.ismethod):
        # Not key names: a pair of them, a glob, and a parser of names.
        if name.startswith("_") or name in ("host_streams", "host_streams_pattern",
                                            "stream_host"):
            continue
        params = list(inspect.signature(method).parameters)
        key = method(*[f"sample-{p}" for p in params])
        if name.endswith("_queue"):
            key = f"rq:queue:{key}"  # rq's name for a queue's list
        assert any(matches(w.key_patterns, key) for w in writers), (name, key)
        assert matches(readonly.key_patterns, key), (name, key)
        checked += 1
    assert checked >= 20
