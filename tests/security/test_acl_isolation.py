"""A host's Redis credentials reach its own streams only: checked on a real Redis.

The users are the ones ``mtbbs-monitor acl`` prints (:func:`wire.acl.role_rule`
with a host id), loaded with ``ACL SETUSER``. Host ``bbs-a``'s agent and
reporter users try, one command per test, what a stolen host credential would
try against host ``bbs-b``, against the shared pipeline and against their own
stream; Redis must refuse each with NOPERM, and every key of the database
(streams, their consumer groups and pending entries, hashes) must be exactly
as before. Then the one thing each user is for, appending to its own stream,
must work and touch nothing else.

Redis 7's read/write key permissions (``--redis7``) are checked too when the
server is Redis 7; FUNCTION exists only there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from wire.acl import role_rule, setuser_args
from wire.keys import COLLECTOR_GROUP, KeySpace

KEYS = KeySpace()
A, B = "bbs-a", "bbs-b"
A_REPORTS, A_SESSIONS = KEYS.host_streams(A)
B_REPORTS, B_SESSIONS = KEYS.host_streams(B)
FUNCTION_LIBRARY = "#!lua name=stolen\nredis.register_function('f', function() return 1 end)"

# What a stolen credential of either host role tries. ``{own}`` is the user's
# own stream, ``{b_entry}`` an entry id on bbs-b's reports stream.
COMMON_REFUSED: dict[str, tuple[str, ...]] = {
    "XADD B's reports MAXLEN 1": ("XADD", B_REPORTS, "MAXLEN", "1", "*", "m", "x"),
    "XADD B's reports": ("XADD", B_REPORTS, "*", "m", "x"),
    "XADD B's sessions": ("XADD", B_SESSIONS, "*", "m", "x"),
    "XADD a dead letter": ("XADD", KEYS.dead_letter_stream(), "*", "m", "x"),
    "XTRIM own MAXLEN 0": ("XTRIM", "{own}", "MAXLEN", "0"),
    "XTRIM B's reports MAXLEN 0": ("XTRIM", B_REPORTS, "MAXLEN", "0"),
    "DEL B's reports": ("DEL", B_REPORTS),
    "DEL own": ("DEL", "{own}"),
    "UNLINK B's reports": ("UNLINK", B_REPORTS),
    "UNLINK own": ("UNLINK", "{own}"),
    "SET B's reports": ("SET", B_REPORTS, "x"),
    "SET own": ("SET", "{own}", "x"),
    "RENAME B's reports": ("RENAME", B_REPORTS, "elsewhere"),
    "RENAME own": ("RENAME", "{own}", "elsewhere"),
    "RENAME own onto B's reports": ("RENAME", "{own}", B_REPORTS),
    "XDEL B's entry": ("XDEL", B_REPORTS, "{b_entry}"),
    "XACK B's entry": ("XACK", B_REPORTS, COLLECTOR_GROUP, "{b_entry}"),
    "XREAD B's reports": ("XREAD", "STREAMS", B_REPORTS, "0"),
    "XRANGE B's reports": ("XRANGE", B_REPORTS, "-", "+"),
    "XRANGE own": ("XRANGE", "{own}", "-", "+"),
    "XREADGROUP B's reports": ("XREADGROUP", "GROUP", COLLECTOR_GROUP, "thief", "STREAMS",
                               B_REPORTS, ">"),
    "XAUTOCLAIM B's pending": ("XAUTOCLAIM", B_REPORTS, COLLECTOR_GROUP, "thief", "0", "0-0"),
    "XINFO GROUPS B's reports": ("XINFO", "GROUPS", B_REPORTS),
    "XGROUP DESTROY B's group": ("XGROUP", "DESTROY", B_REPORTS, COLLECTOR_GROUP),
    "XGROUP DESTROY own group": ("XGROUP", "DESTROY", "{own}", COLLECTOR_GROUP),
    "XGROUP CREATE on B's reports": ("XGROUP", "CREATE", B_REPORTS, "thieves", "$"),
    "XGROUP CREATE on own": ("XGROUP", "CREATE", "{own}", "thieves", "$"),
    "XGROUP CREATE MKSTREAM": ("XGROUP", "CREATE", KEYS.reports_stream("bbs-new"), "thieves",
                               "$", "MKSTREAM"),
    "XGROUP SETID B's group": ("XGROUP", "SETID", B_REPORTS, COLLECTOR_GROUP, "$"),
    "XGROUP DELCONSUMER on B": ("XGROUP", "DELCONSUMER", B_REPORTS, COLLECTOR_GROUP, "c1"),
    "EVAL return 1": ("EVAL", "return 1", "0"),
    "EVAL endless": ("EVAL", "while true do end", "0"),
    "EVALSHA": ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
    "SCRIPT LOAD": ("SCRIPT", "LOAD", "return 1"),
    "SCRIPT FLUSH": ("SCRIPT", "FLUSH"),
    "FUNCTION LIST": ("FUNCTION", "LIST"),
    "FUNCTION LOAD": ("FUNCTION", "LOAD", FUNCTION_LIBRARY),
    "KEYS *": ("KEYS", "*"),
    "SCAN": ("SCAN", "0"),
    "FLUSHALL": ("FLUSHALL",),
    "FLUSHDB": ("FLUSHDB",),
    "HGETALL B's host hash": ("HGETALL", KEYS.host(B)),
    "HGETALL B's sessions hash": ("HGETALL", KEYS.host_sessions(B)),
    "HSET own host hash": ("HSET", KEYS.host(A), "status", "OK"),
    "HSET B's host hash": ("HSET", KEYS.host(B), "status", "OK"),
    "ZADD the hosts index": ("ZADD", KEYS.hosts_index(), "1", B),
    "CONFIG SET": ("CONFIG", "SET", "maxmemory", "1"),
    "CLIENT LIST": ("CLIENT", "LIST"),
    "SUBSCRIBE XADD events": ("SUBSCRIBE", "__keyevent@0__:xadd"),
    "PSUBSCRIBE all": ("PSUBSCRIBE", "*"),
    "PUBLISH": ("PUBLISH", "rq:pubsub:worker", "x"),
}
AGENT_REFUSED = COMMON_REFUSED
REPORTER_REFUSED = {
    **COMMON_REFUSED,
    "XADD its agent's reports": ("XADD", A_REPORTS, "*", "m", "x"),
    "HGETALL own sessions hash": ("HGETALL", KEYS.host_sessions(A)),
}
# Each user's own stream: where ``{own}`` points.
OWN = {"agent": A_REPORTS, "reporter": A_SESSIONS}
REDIS7_ONLY = {"FUNCTION LIST", "FUNCTION LOAD"}


@dataclass
class Fleet:
    """The private server with two hosts' data; users defined per test."""

    admin: redis.Redis
    port: int
    version: tuple[int, ...]
    b_entry: str = ""

    def user(self, role: str, *, redis7: bool) -> redis.Redis:
        """A client logged in as ``role``'s user of host bbs-a, (re)defined now."""
        rule = role_rule(role, host=A)
        password = secrets.token_hex(16)
        self.admin.execute_command("ACL", "SETUSER",
                                   *setuser_args(rule, password, redis7=redis7))
        return redis.Redis(port=self.port, username=rule.user, password=password,
                           socket_timeout=5)


@pytest.fixture(scope="module")
def private_server(redis_server: Any, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Any]:
    """A redis-server of this module only: users are added to it (FLUSHALL keeps
    them), and a refused endless script must never reach the shared one."""
    server = type(redis_server)(tmp_path_factory.mktemp("redis-isolation"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fleet(private_server: Any) -> Iterator[Fleet]:
    """Both hosts' streams with entries, a collector group with a pending entry
    on each stream, host hashes; the shared index and a dead letter."""
    admin = private_server.client(socket_timeout=5)
    admin.flushall()
    admin.execute_command("ACL", "LOG", "RESET")
    version = tuple(int(part) for part in admin.info("server")["redis_version"].split(".")[:2])
    made = Fleet(admin, private_server.port, version)
    for host in (A, B):
        for stream in KEYS.host_streams(host):
            for seq in range(3):
                admin.xadd(stream, {"m": f"{host} {seq}"})
            admin.xgroup_create(stream, COLLECTOR_GROUP, id="0")
            admin.xreadgroup(COLLECTOR_GROUP, "c1", {stream: ">"}, count=1)
        admin.hset(KEYS.host(host), mapping={"status": "OK", "seq": "3"})
        admin.hset(KEYS.host_sessions(host), "10.0.0.1:4000", "{}")
        admin.zadd(KEYS.hosts_index(), {host: 1})
    admin.xadd(KEYS.dead_letter_stream(), {"reason": "test"})
    made.b_entry = admin.xrange(B_REPORTS, count=1)[0][0].decode()
    yield made
    admin.close()


def snapshot(admin: redis.Redis) -> dict[bytes, Any]:
    """Every key's type and content, a stream's groups and pending entries included."""
    state: dict[bytes, Any] = {}
    for key in sorted(admin.keys("*")):
        kind = admin.type(key)
        if kind == b"stream":
            groups = []
            for group in admin.xinfo_groups(key):
                pending = admin.xpending_range(key, group["name"], "-", "+", 100)
                groups.append((group["name"], group["consumers"], group["pending"],
                               group["last-delivered-id"],
                               [(p["message_id"], p["consumer"], p["times_delivered"])
                                for p in pending]))
            state[key] = (kind, admin.xrange(key), groups)
        elif kind == b"hash":
            state[key] = (kind, admin.hgetall(key))
        elif kind == b"zset":
            state[key] = (kind, admin.zrange(key, 0, -1, withscores=True))
        else:
            state[key] = (kind, admin.dump(key))
    return state


def argv_of(template: tuple[str, ...], fleet: Fleet, role: str) -> list[str]:
    return [part.replace("{own}", OWN[role]).replace("{b_entry}", fleet.b_entry)
            for part in template]


def refused_cases() -> list[Any]:
    cases = []
    for role, table in (("agent", AGENT_REFUSED), ("reporter", REPORTER_REFUSED)):
        for form in ("redis6", "redis7"):
            cases += [pytest.param(role, form, name, id=f"{role}-{form}-{name}")
                      for name in table]
    return cases


def skip_unless_supported(fleet: Fleet, form: str, name: str = "") -> None:
    if form == "redis7" and fleet.version < (7, 0):
        pytest.skip(f"%R~/%W~ key permissions need Redis 7; this server is "
                    f"{'.'.join(map(str, fleet.version))}")
    if name in REDIS7_ONLY and fleet.version < (7, 0):
        pytest.skip(f"{name.split()[0]} exists from Redis 7 on; this server is "
                    f"{'.'.join(map(str, fleet.version))}")


def run_refused(client: redis.Redis, argv: list[str]) -> redis.exceptions.NoPermissionError:
    with pytest.raises(redis.exceptions.NoPermissionError) as refused:
        client.execute_command(*argv)
    return refused.value


@pytest.mark.redis
@pytest.mark.parametrize(("role", "form", "name"), refused_cases())
def test_a_host_user_is_refused_and_nothing_changes(fleet: Fleet, role: str, form: str,
                                                    name: str) -> None:
    skip_unless_supported(fleet, form, name)
    client = fleet.user(role, redis7=form == "redis7")
    table = AGENT_REFUSED if role == "agent" else REPORTER_REFUSED
    before = snapshot(fleet.admin)
    if name == "EVAL endless":
        # Were EVAL allowed, the endless script would hold the server: make
        # sure it is refused before trying it.
        run_refused(client, ["EVAL", "return 1", "0"])
    run_refused(client, argv_of(table[name], fleet, role))
    client.close()
    assert snapshot(fleet.admin) == before
    # The server logged the refusal (so it was the ACL, not a syntax error).
    assert fleet.admin.acl_log()


@pytest.mark.redis
@pytest.mark.parametrize("form", ["redis6", "redis7"])
def test_a_transaction_does_not_get_around_the_rules(fleet: Fleet, form: str) -> None:
    skip_unless_supported(fleet, form)
    agent = fleet.user("agent", redis7=form == "redis7")
    before = snapshot(fleet.admin)
    with agent.pipeline(transaction=True) as pipe:
        pipe.xadd(A_REPORTS, {"m": b"mine"})
        pipe.xadd(B_REPORTS, {"m": b"forged"})
        pipe.xtrim(B_REPORTS, 0)
        with pytest.raises((redis.exceptions.NoPermissionError,
                            redis.exceptions.ExecAbortError)):
            pipe.execute()
    agent.close()
    # The whole transaction was refused, the allowed XADD in it included.
    assert snapshot(fleet.admin) == before


def appended(before: dict[bytes, Any], after: dict[bytes, Any]) -> dict[bytes, int]:
    """Keys whose content changed, each with the number of stream entries added."""
    changed = {}
    for key in before.keys() | after.keys():
        if before.get(key) != after.get(key):
            old = before[key][1] if key in before else []
            changed[key] = len(after[key][1]) - len(old)
    return changed


@pytest.mark.redis
@pytest.mark.parametrize("form", ["redis6", "redis7"])
def test_the_agent_appends_to_its_own_streams_and_reads_its_sessions(
        fleet: Fleet, form: str) -> None:
    skip_unless_supported(fleet, form)
    agent = fleet.user("agent", redis7=form == "redis7")
    before = snapshot(fleet.admin)
    assert agent.execute_command("XADD", A_REPORTS, "MAXLEN", "~", "10000", "*",
                                 "m", b"\x85payload", "sig", "00" * 32)
    assert agent.xadd(A_SESSIONS, {"m": b"event"}, maxlen=10_000, approximate=True)
    assert agent.hgetall(KEYS.host_sessions(A)) == {b"10.0.0.1:4000": b"{}"}
    agent.close()
    assert appended(before, snapshot(fleet.admin)) == {A_REPORTS.encode(): 1,
                                                       A_SESSIONS.encode(): 1}


@pytest.mark.redis
@pytest.mark.parametrize("form", ["redis6", "redis7"])
def test_the_reporter_appends_to_its_own_sessions_stream(fleet: Fleet, form: str) -> None:
    skip_unless_supported(fleet, form)
    reporter = fleet.user("reporter", redis7=form == "redis7")
    before = snapshot(fleet.admin)
    with reporter.pipeline(transaction=False) as pipe:
        for _ in range(3):
            pipe.xadd(A_SESSIONS, {"m": b"event"}, maxlen=10_000, approximate=True)
        assert all(pipe.execute())
    reporter.close()
    assert appended(before, snapshot(fleet.admin)) == {A_SESSIONS.encode(): 3}


@pytest.mark.redis
def test_the_agents_own_stream_can_be_filled_only_by_itself(fleet: Fleet) -> None:
    """What a stolen credential can do: flood its own host's stream. Redis's
    maxmemory bounds it; bbs-b and the pipeline are untouched."""
    agent = fleet.user("agent", redis7=False)
    before = snapshot(fleet.admin)
    with agent.pipeline(transaction=False) as pipe:
        for _ in range(500):
            pipe.xadd(A_REPORTS, {"m": b"x" * 100})
        pipe.execute()
    agent.close()
    assert set(appended(before, snapshot(fleet.admin))) == {A_REPORTS.encode()}
