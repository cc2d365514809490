"""The sessions check against the real redis-server, and without Redis."""

from __future__ import annotations

import redis

from agent.checks import check_sessions, client_ip
from wire.keys import KeySpace
from wire.messages import SessionInfo
from wire.state import session_text

KEYS = KeySpace("mtbbs:")
T0 = 1_736_937_045.0  # 2025-01-15T10:30:45Z


def store(client: redis.Redis, host: str, *infos: SessionInfo, keys: KeySpace = KEYS) -> None:
    client.hset(keys.host_sessions(host),
                mapping={info.client_id: session_text(info) for info in infos})


def test_seed_sessions_are_listed_and_counted(redis_client: redis.Redis) -> None:
    store(
        redis_client, "bbs-01",
        SessionInfo("192.168.1.100:54321", "test_user", "logged_in", T0),
        SessionInfo("192.168.1.101:54322", "guest", "logged_in", T0 + 1),
        SessionInfo("192.168.1.102:54323", "admin", "logged_in", T0 + 2),
        SessionInfo("192.168.1.103:54324", None, "connected", T0 + 3),
    )
    result = check_sessions(redis_client, KEYS, "bbs-01")
    assert result.healthy and result.available
    assert result.active_sessions == 4
    assert (result.guests, result.logged_in, result.not_logged_in) == (1, 2, 1)
    assert [s.client_id for s in result.sessions] == [
        "192.168.1.100:54321", "192.168.1.101:54322", "192.168.1.102:54323",
        "192.168.1.103:54324"]
    first = result.to_fields()["sessions"][0]  # type: ignore[index]
    assert first == {"client_id": "192.168.1.100:54321", "user_id": "test_user",
                     "connected_at": "2025-01-15T10:30:45.000Z", "state": "logged_in"}
    assert result.top_ip_sessions == 1


def test_only_this_hosts_sessions(redis_client: redis.Redis) -> None:
    store(redis_client, "bbs-02", SessionInfo("10.0.0.1:1", "a", "logged_in", T0))
    result = check_sessions(redis_client, KEYS, "bbs-01")
    assert result.available and result.active_sessions == 0 and result.healthy
    assert result.top_ip is None


def test_prefix_is_respected(redis_client: redis.Redis) -> None:
    other = KeySpace("fleet2:")
    store(redis_client, "bbs-01", SessionInfo("10.0.0.1:1", "a", "logged_in", T0), keys=other)
    assert check_sessions(redis_client, KEYS, "bbs-01").active_sessions == 0
    assert check_sessions(redis_client, other, "bbs-01").active_sessions == 1


def test_over_max_sessions_is_unhealthy(redis_client: redis.Redis) -> None:
    infos = [SessionInfo(f"10.0.{i}.1:{2000 + i}", "guest", "logged_in", T0 + i)
             for i in range(6)]
    store(redis_client, "bbs-01", *infos)
    assert check_sessions(redis_client, KEYS, "bbs-01", max_sessions=6).healthy
    result = check_sessions(redis_client, KEYS, "bbs-01", max_sessions=5)
    assert not result.healthy
    assert result.to_fields()["max_sessions"] == 5


def test_too_many_from_one_ip_is_unhealthy(redis_client: redis.Redis) -> None:
    infos = [SessionInfo(f"203.0.113.9:{4000 + i}", None, "connected", T0) for i in range(4)]
    infos.append(SessionInfo("198.51.100.1:5000", "sysop", "logged_in", T0))
    store(redis_client, "bbs-01", *infos)
    result = check_sessions(redis_client, KEYS, "bbs-01")
    assert not result.healthy
    assert (result.top_ip, result.top_ip_sessions) == ("203.0.113.9", 4)
    assert check_sessions(redis_client, KEYS, "bbs-01", max_same_ip=4).healthy


def test_ipv6_clients_are_grouped_by_address(redis_client: redis.Redis) -> None:
    store(
        redis_client, "bbs-01",
        SessionInfo("[::1]:2323", None, "connected", T0),
        SessionInfo("[::1]:2324", "guest", "logged_in", T0),
        SessionInfo("[0:0:0:0:0:0:0:1]:2325", "bob", "logged_in", T0),
        SessionInfo("[2001:db8::5]:2326", "eve", "logged_in", T0),
    )
    result = check_sessions(redis_client, KEYS, "bbs-01", max_same_ip=2)
    assert (result.top_ip, result.top_ip_sessions) == ("::1", 3)
    assert not result.healthy


def test_invalid_entries_still_count(redis_client: redis.Redis) -> None:
    store(redis_client, "bbs-01", SessionInfo("10.0.0.1:1", "a", "logged_in", T0))
    redis_client.hset(KEYS.host_sessions("bbs-01"), "10.0.0.2:2", "{not json")
    result = check_sessions(redis_client, KEYS, "bbs-01")
    assert result.active_sessions == 2
    assert result.invalid_entries == 1
    assert {s.state for s in result.sessions} == {"logged_in", "unknown"}


def test_unreachable_redis(unreachable_redis_url: str) -> None:
    client = redis.Redis.from_url(unreachable_redis_url, socket_connect_timeout=2)
    result = check_sessions(client, KEYS, "bbs-01")
    assert result.healthy is True
    assert result.available is False
    assert (result.error or "").startswith("Redis unreachable: ")
    assert result.active_sessions is None
    fields = result.to_fields()
    assert fields["available"] is False and fields["healthy"] is True


def test_no_client_configured() -> None:
    result = check_sessions(None, KEYS, "bbs-01")
    assert result.healthy and not result.available
    assert result.error == "Redis not configured: sessions unknown"


def test_wrong_key_type_is_reported(redis_client: redis.Redis) -> None:
    redis_client.set(KEYS.host_sessions("bbs-01"), "oops")
    result = check_sessions(redis_client, KEYS, "bbs-01")
    assert result.healthy and not result.available
    assert "WRONGTYPE" in (result.error or "")


def test_client_ip_forms() -> None:
    assert client_ip("192.168.1.100:54321") == "192.168.1.100"
    assert client_ip("[::1]:2323") == "::1"
    assert client_ip("[fe80::1%eth0]:23") == "fe80::1"
    assert client_ip("[::ffff:10.1.2.3]:23") == "10.1.2.3"
    assert client_ip("::ffff:10.1.2.3:23") == "10.1.2.3"
    assert client_ip("unix-socket") == "unix-socket"
