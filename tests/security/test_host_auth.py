"""Host authentication: credentials of host A cannot write the state of host B.

The mechanism (docs/security.md): each host holds its own HMAC key; the
agent and the session reporter sign every stream entry (field ``sig``); the
collector, which holds every host's key, verifies each entry with the key
of the host *named in the message* and dead-letters what fails, counting it
as ``spoofed`` in its heartbeat. The ACL confines a host's credentials to its
own streams (test_acl_isolation.py), but what it appends there is its own
text: an entry can name another host, and the signature is what proves it
false.

Everything runs for real: the Redis ACL users of each role, the agent and
collector console commands as those users, the reporter library.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.reporter import SessionReporter
from wire.auth import sign
from wire.config import RedisSettings
from wire.keys import KeySpace
from wire.messages import Report, SessionEvent, encode

KEYS = KeySpace()
NOW = time.time()


@pytest.fixture
def fleet(acl_redis: Any, tmp_path: Path, password_file: Any) -> dict[str, Any]:
    """Host keys for bbs-a and bbs-b, the collector's keys file, per-role env."""
    keys = {host: secrets.token_hex(24) for host in ("bbs-a", "bbs-b")}
    keys_file = tmp_path / "host-keys"
    keys_file.write_text("# collector: every host\n"
                         + "".join(f"{h} {k}\n" for h, k in keys.items()))
    agent_a_key = tmp_path / "bbs-a.key"
    agent_a_key.write_text(f"bbs-a {keys['bbs-a']}\n")

    def env_for(user: str, clean_env: dict[str, str], **extra: str) -> dict[str, str]:
        name, password = acl_redis.credentials(user)
        return dict(clean_env, MTBBS_REDIS_URL=acl_redis.url(), MTBBS_REDIS_USERNAME=name,
                    MTBBS_REDIS_PASSWORD_FILE=str(password_file(password)), **extra)

    return {"keys": keys, "keys_file": keys_file, "agent_a_key": agent_a_key,
            "env_for": env_for}


def run(command: Any, name: str, argv: list[str], env: dict[str, str], cwd: Path,
        ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([command(name), *argv], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def collect(command: Any, fleet: dict[str, Any], clean_env: dict[str, str], cwd: Path,
            *, keys_file: Path | None) -> None:
    """``mtbbs-collector run --once`` as the collector user; its heartbeat fields."""
    extra = {"MTBBS_COLLECTOR_HOST_KEYS_FILE": str(keys_file)} if keys_file else {}
    env = fleet["env_for"]("mtbbs-collector", clean_env, **extra)
    result = run(command, "mtbbs-collector", ["run", "--once", "--name", "c1"], env, cwd)
    assert result.returncode == 0, result.stderr


def report(host: str, seq: int, disk: float = 50.0) -> Report:
    return Report(host=host, agent_version="test", epoch=1, seq=seq, observed_at=NOW,
                  checks={"disk_space": {"healthy": disk < 90, "percent_used": disk}})


def dead_letters(admin: redis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
            for _, fields in admin.xrange(KEYS.dead_letter_stream())]


def heartbeat(admin: redis.Redis, name: str = "c1") -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in admin.hgetall(KEYS.collector(name)).items()}


@pytest.mark.e2e
def test_agent_of_a_cannot_write_the_state_of_b(acl_redis: Any, fleet: dict[str, Any],
                                                command: Any, clean_env: dict[str, str],
                                                tmp_path: Path) -> None:
    admin = acl_redis.admin
    db = tmp_path / "mtbbs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    # The genuine agent of bbs-a, signing with its key, as its own ACL user.
    env_a = fleet["env_for"]("mtbbs-agent-bbs-a", clean_env,
                             MTBBS_AGENT_HOST_KEY_FILE=str(fleet["agent_a_key"]))
    result = run(command, "mtbbs-agent", ["run", "--once", "--no-probe", "--host", "bbs-a",
                                          "--db", str(db), "--data-dir", str(tmp_path),
                                          "--spool", str(tmp_path / "spool.db")],
                 env_a, tmp_path)
    assert result.returncode in (0, 1), result.stderr
    # The same credentials used by hand: a report claiming to be bbs-b,
    # signed with A's key (all A has), appended with A's ACL user.
    # Its own stream is the only one it can append to.
    attacker = acl_redis.client("mtbbs-agent-bbs-a")
    own_stream = KEYS.reports_stream("bbs-a")
    forged = encode(report("bbs-b", 1, disk=99.0))
    attacker.xadd(own_stream, {"m": forged,
                               "sig": sign(fleet["keys"]["bbs-a"].encode(), forged)})
    # ... and one without any signature, and one signed with a guessed key.
    attacker.xadd(own_stream, {"m": encode(report("bbs-b", 2))})
    attacker.xadd(own_stream, {"m": encode(report("bbs-b", 3)), "sig": "00" * 32})

    collect(command, fleet, clean_env, tmp_path, keys_file=fleet["keys_file"])

    assert admin.hget(KEYS.host("bbs-a"), "status") is not None
    # ... and, as its ACL user, handed bbs-a (only) to the alerter.
    assert admin.exists(KEYS.evaluation_pending("bbs-a"))
    assert admin.llen(f"rq:queue:{KEYS.evaluate_queue()}") == 1
    assert not admin.exists(KEYS.host("bbs-b"))
    assert admin.zscore(KEYS.hosts_index(), "bbs-b") is None
    letters = dead_letters(admin)
    assert len(letters) == 3
    # The stream says whose entry it is: a message naming another host is
    # refused before its signature is even looked at.
    assert all(letter["reason"] == "message of host bbs-b on the stream of host bbs-a"
               for letter in letters)
    assert heartbeat(admin)["spoofed"] == "3"
    # Nothing is left pending: the spoofed entries were acknowledged with their dead letter.
    assert admin.xpending(own_stream, "collectors")["pending"] == 0


@pytest.mark.e2e
def test_unsigned_and_unknown_hosts_are_rejected(acl_redis: Any, fleet: dict[str, Any],
                                                 command: Any, clean_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    admin = acl_redis.admin
    agent = acl_redis.client("mtbbs-agent-bbs-a")
    agent.xadd(KEYS.reports_stream("bbs-a"), {"m": encode(report("bbs-a", 1))})
    # A host missing from the keys file (its user made by hand, say).
    stranger = encode(report("bbs-zz", 1))
    admin.xadd(KEYS.reports_stream("bbs-zz"), {"m": stranger, "sig": sign(b"k" * 32, stranger)})
    collect(command, fleet, clean_env, tmp_path, keys_file=fleet["keys_file"])
    reasons = sorted(letter["reason"] for letter in dead_letters(admin))
    assert reasons == ["missing or bad signature for host bbs-a",
                       "no key for host bbs-zz in the host keys file"]
    assert not admin.exists(KEYS.host("bbs-a"))
    assert heartbeat(admin)["spoofed"] == "2"


@pytest.mark.e2e
def test_a_replayed_signed_report_changes_nothing(acl_redis: Any, fleet: dict[str, Any],
                                                 command: Any, clean_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    """HMAC does not stop a replay; the (epoch, seq) ordering makes it harmless."""
    admin = acl_redis.admin
    key = fleet["keys"]["bbs-a"].encode()
    agent = acl_redis.client("mtbbs-agent-bbs-a")
    old, new = encode(report("bbs-a", 1, disk=95.0)), encode(report("bbs-a", 2, disk=40.0))
    for payload in (old, new, old):
        agent.xadd(KEYS.reports_stream("bbs-a"), {"m": payload, "sig": sign(key, payload)})
    collect(command, fleet, clean_env, tmp_path, keys_file=fleet["keys_file"])
    assert admin.hget(KEYS.host("bbs-a"), "seq") == b"2"
    assert admin.hget(KEYS.host("bbs-a"), "disk_space.percent_used") == b"40.0"
    assert dead_letters(admin) == []
    assert heartbeat(admin)["skipped"] == "1"


@pytest.mark.e2e
def test_signed_session_events_and_a_spoofed_one(acl_redis: Any, fleet: dict[str, Any],
                                                 command: Any, clean_env: dict[str, str],
                                                 tmp_path: Path, password_file: Any) -> None:
    admin = acl_redis.admin
    key_a = fleet["keys"]["bbs-a"].encode()
    user, password = acl_redis.credentials("mtbbs-reporter-bbs-a")
    settings = RedisSettings(url=acl_redis.url(), username=user,
                             password_file=password_file(password))
    with SessionReporter(None, "bbs-a", host_key=key_a, redis_settings=settings) as reporter:
        reporter.start()
        reporter.register_session("10.0.0.1:4000")
        reporter.update_session_state("10.0.0.1:4000", "guest", "logged_in")
        assert reporter.flush(10)
    forged = encode(SessionEvent("bbs-b", 1, 1, NOW, "connected", client_id="6.6.6.6:666",
                                 state="connected", connected_at=NOW))
    acl_redis.client("mtbbs-reporter-bbs-a").xadd(
        KEYS.sessions_stream("bbs-a"), {"m": forged, "sig": sign(key_a, forged)})
    collect(command, fleet, clean_env, tmp_path, keys_file=fleet["keys_file"])
    sessions = admin.hgetall(KEYS.host_sessions("bbs-a"))
    assert json.loads(sessions[b"10.0.0.1:4000"])["user_id"] == "guest"
    assert not admin.exists(KEYS.host_sessions("bbs-b"))
    assert [letter["reason"] for letter in dead_letters(admin)] == [
        "message of host bbs-b on the stream of host bbs-a"]
    assert heartbeat(admin)["spoofed"] == "1"


@pytest.mark.e2e
def test_without_a_keys_file_signatures_are_not_required(acl_redis: Any, fleet: dict[str, Any],
                                                        command: Any,
                                                        clean_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    """The default (no keys file) accepts unsigned entries: the opt-in is explicit."""
    admin = acl_redis.admin
    acl_redis.client("mtbbs-agent-bbs-b").xadd(KEYS.reports_stream("bbs-b"),
                                               {"m": encode(report("bbs-b", 1))})
    collect(command, fleet, clean_env, tmp_path, keys_file=None)
    assert admin.exists(KEYS.host("bbs-b"))
