"""Username, password (file or environment) and TLS reach Redis from every component.

Each test logs in as the role's ACL user, so a component that dropped the
credentials would be refused (the default user is disabled where it
matters), and goes through a TLS proxy whose certificate only the configured
CA file vouches for.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from agent.reporter import SessionReporter
from wire.config import RedisSettings, connect
from wire.keys import KeySpace
from wire.messages import decode_entry

KEYS = KeySpace()


def disable_default_user(acl_redis: Any) -> redis.Redis:
    """Turn off the default (no-password) user; an admin client to keep using."""
    admin_password = "admin-password-0123"
    acl_redis.admin.execute_command("ACL", "SETUSER", "admin", "reset", "on",
                                    f">{admin_password}", "~*", "&*", "+@all")
    acl_redis.admin.execute_command("ACL", "SETUSER", "default", "off")
    acl_redis.admin.close()
    admin = redis.Redis(port=acl_redis.port, username="admin", password=admin_password)
    acl_redis.admin = admin
    return admin


def test_connect_over_tls_with_user_and_password_file(acl_redis: Any, tls_proxy: Any,
                                                      password_file: Any) -> None:
    proxy = tls_proxy(acl_redis.port)
    user, password = acl_redis.credentials("mtbbs-agent-bbs-a")
    settings = RedisSettings(url=proxy.url, username=user, password_file=password_file(password),
                             tls_ca_file=proxy.ca_file)
    client = connect(settings)
    assert client.ping()
    client.xadd(KEYS.reports_stream("bbs-a"), {"m": b"x"})
    assert proxy.connections >= 1
    client.close()


def test_tls_without_the_ca_is_refused(acl_redis: Any, tls_proxy: Any) -> None:
    proxy = tls_proxy(acl_redis.port)
    user, password = acl_redis.credentials("mtbbs-readonly")
    client = connect(RedisSettings(url=proxy.url, username=user, password=password,
                                   socket_timeout=3))
    with pytest.raises(redis.exceptions.ConnectionError) as caught:
        client.ping()
    assert "certificate" in str(caught.value).lower()


def test_wrong_password_is_refused(acl_redis: Any) -> None:
    client = connect(RedisSettings(url=acl_redis.url(), username="mtbbs-readonly",
                                   password="not-the-password"))
    with pytest.raises(redis.exceptions.AuthenticationError):
        client.ping()


def test_credentials_in_the_url(acl_redis: Any) -> None:
    user, password = acl_redis.credentials("mtbbs-readonly")
    settings = RedisSettings(url=f"redis://{user}:{password}@127.0.0.1:{acl_redis.port}/0")
    assert connect(settings).ping()
    assert password not in settings.redacted_url()


@pytest.mark.e2e
def test_agent_cli_over_tls_as_its_acl_user(acl_redis: Any, tls_proxy: Any, password_file: Any,
                                           tmp_path: Path, command: Any,
                                           clean_env: dict[str, str]) -> None:
    admin = disable_default_user(acl_redis)
    proxy = tls_proxy(acl_redis.port)
    user, password = acl_redis.credentials("mtbbs-agent-bbs-a")
    db = tmp_path / "mtbbs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id TEXT)")
    env = dict(clean_env, MTBBS_REDIS_USERNAME=user,
               MTBBS_REDIS_PASSWORD_FILE=str(password_file(password)),
               MTBBS_REDIS_TLS_CA_FILE=str(proxy.ca_file))
    result = subprocess.run(
        [command("mtbbs-agent"), "run", "--once", "--no-probe", "--host", "bbs-a",
         "--db", str(db), "--data-dir", str(tmp_path), "--spool", str(tmp_path / "spool.db"),
         "--redis-url", proxy.url],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr
    assert password not in result.stderr + result.stdout
    entries = admin.xrange(KEYS.reports_stream("bbs-a"))
    assert len(entries) == 1
    assert decode_entry(entries[0][1]).host == "bbs-a"  # type: ignore[union-attr]


def test_reporter_over_tls_as_its_acl_user(acl_redis: Any, tls_proxy: Any,
                                          password_file: Any) -> None:
    admin = disable_default_user(acl_redis)
    proxy = tls_proxy(acl_redis.port)
    user, password = acl_redis.credentials("mtbbs-reporter-bbs-a")
    settings = RedisSettings(url=proxy.url, username=user, password_file=password_file(password),
                             tls_ca_file=proxy.ca_file)
    with SessionReporter.from_settings(settings, "bbs-a").start() as reporter:
        reporter.register_session("10.0.0.1:4000")
        reporter.update_session_state("10.0.0.1:4000", "guest", "logged_in")
        assert reporter.flush(10)
    deadline = time.monotonic() + 10
    stream = KEYS.sessions_stream("bbs-a")
    while admin.xlen(stream) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    kinds = [decode_entry(f).kind for _, f in admin.xrange(stream)]  # type: ignore[union-attr]
    assert "connected" in kinds and "logged_in" in kinds
    assert reporter.errors == 0


def test_sentinel_with_tls_uses_a_tls_connection(tmp_path: Path) -> None:
    from redis.sentinel import SentinelManagedSSLConnection

    ca = tmp_path / "ca.pem"
    ca.write_text("")
    client = connect(RedisSettings(url="rediss://127.0.0.1:6379/0", sentinels=("127.0.0.1:1",),
                                   tls_ca_file=ca))
    assert issubclass(client.connection_pool.connection_class, SentinelManagedSSLConnection)
