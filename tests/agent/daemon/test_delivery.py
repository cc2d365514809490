"""Reports on a real redis-server: what the checks produced arrives, in order,
once, through Redis outages and a full spool."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import agent
from agent.publisher import Backoff, Publisher
from agent.settings import ProbeSettings
from agent.spool import Spool, inspect
from wire.acl import role_rule, setuser_args
from wire.auth import verify
from wire.config import RedisSettings, connect
from wire.keys import KeySpace
from wire.messages import Report

from .conftest import HOST, stream_reports


def test_reports_read_back_equal_what_the_checks_produced(
        redis_url: str, redis_client: redis.Redis, make_agent: Callable[..., Any],
        read_reports: Callable[..., list[Report]], banner_server: Callable[..., Any]) -> None:
    bbs = banner_server()
    made = make_agent(redis_url, probe=ProbeSettings(port=bbs.port, slow_ms=10_000))
    last = made.daemon.run(max_cycles=3)

    reports = read_reports(redis_client)
    assert [r.seq for r in reports] == [1, 2, 3]
    assert reports[-1] == last
    assert len(made.produced) == 3
    for report, produced in zip(reports, made.produced, strict=True):
        assert report.host == "bbs-test"
        assert report.agent_version == agent.__version__
        assert report.epoch == made.spool.epoch
        assert report.interval == 0.2
        assert report.dropped == 0
        # The daemon adds how old the integrity result is; the rest is the checks'.
        database = dict(report.checks["database"])
        assert isinstance(database.pop("integrity_age_s"), float)
        assert {**{k: v for k, v in report.checks.items() if k not in ("telnet", "uptime")},
                "database": database} == produced
        assert report.checks["telnet"]["healthy"] is True
        assert report.checks["telnet"]["port"] == bbs.port
        assert report.checks["uptime"]["healthy"] is True
        assert isinstance(report.checks["uptime"]["uptime_seconds"], int)
    assert reports[0].observed_at < reports[1].observed_at < reports[2].observed_at
    assert len(made.spool) == 0


def test_reports_are_signed_when_a_host_key_is_set(
        redis_url: str, redis_client: redis.Redis, make_agent: Callable[..., Any]) -> None:
    key = b"0123456789abcdef-secret"
    made = make_agent(redis_url, host_key=key)
    made.daemon.run(max_cycles=2)
    entries = redis_client.xrange(KeySpace().reports_stream(HOST))
    assert len(entries) == 2
    for _entry_id, fields in entries:
        assert verify(key, fields[b"m"], fields[b"sig"])
        assert not verify(b"another-key-of-16-chars", fields[b"m"], fields[b"sig"])


def test_the_stream_is_trimmed_approximately(
        redis_url: str, redis_client: redis.Redis, make_agent: Callable[..., Any]) -> None:
    made = make_agent(redis_url, stream_maxlen=10)
    for _ in range(400):
        made.spool.add(lambda epoch, seq: Report(
            host="bbs-test", agent_version="t", epoch=epoch, seq=seq,
            observed_at=1.8e9 + seq, checks={"disk_space": {"healthy": True}}))
    assert made.publisher.flush() == 400
    length = redis_client.xlen(KeySpace().reports_stream(HOST))
    assert length < 400


def test_redis_down_then_back_every_report_arrives_in_order_exactly_once(
        tmp_path: Path, redis_server_factory: Callable[..., Any],
        make_agent: Callable[..., Any], read_reports: Callable[..., list[Report]],
        wait: Callable[..., Any]) -> None:
    # The same data directory and an append-only file: the restarted server
    # still holds what was delivered before the outage.
    persist = ("--dir", str(tmp_path / "redis-data"), "--appendonly", "yes")
    (tmp_path / "redis-data").mkdir()
    server = redis_server_factory(*persist)
    made = make_agent(server.url)
    runner = threading.Thread(target=made.daemon.run, daemon=True)
    runner.start()
    try:
        wait(lambda: len(read_reports(server.client())) >= 3)
        server.stop()
        # Reports pile up in the spool while Redis is away.
        wait(lambda: inspect(made.spool.path, 10_000).pending >= 5)
        server = redis_server_factory(*persist, port=server.port)
        wait(lambda: inspect(made.spool.path, 10_000).pending == 0)
        wait(lambda: len(read_reports(server.client())) >= 12)
    finally:
        made.daemon.stop()
        runner.join(10)
    assert not runner.is_alive()
    last_seq = inspect(made.spool.path, 10_000).last_seq
    reports = read_reports(server.client())
    assert [r.seq for r in reports] == list(range(1, last_seq + 1))
    assert {r.epoch for r in reports} == {made.spool.epoch}
    assert all(r.dropped == 0 for r in reports)
    assert made.publisher.failures == 0


def test_a_full_spool_drops_the_oldest_and_the_next_report_counts_them(
        dead_port: int, redis_server_factory: Callable[..., Any],
        make_agent: Callable[..., Any], read_reports: Callable[..., list[Report]]) -> None:
    made = make_agent(f"redis://127.0.0.1:{dead_port}/0", spool_max_reports=3)
    for _ in range(7):
        made.daemon.cycle()
        made.publisher.flush(force=True)
    assert made.publisher.failures == 7
    assert len(made.spool) == 3

    server = redis_server_factory(port=dead_port)
    assert made.publisher.flush(force=True) == 3
    made.daemon.cycle()
    made.publisher.flush()
    reports = read_reports(server.client())
    assert [r.seq for r in reports] == [5, 6, 7, 8]
    assert [r.dropped for r in reports] == [4, 0, 0, 0]
    assert inspect(made.spool.path, 3).dropped_total == 4


def test_a_report_sent_again_after_a_lost_reply_is_on_the_stream_twice(
        redis_url: str, redis_client: redis.Redis, make_agent: Callable[..., Any],
        read_reports: Callable[..., list[Report]]) -> None:
    # The agent cannot tell a lost reply from a lost request, so it sends
    # again; the collector skips the copy by its (epoch, seq).
    made = make_agent(redis_url)
    for _ in range(3):
        made.daemon.cycle()
    pending = made.spool.peek(10)
    made.publisher.flush()
    made.publisher._send(pending[:1])
    assert [r.seq for r in read_reports(redis_client)] == [1, 2, 3, 1]
    assert {r.epoch for r in read_reports(redis_client)} == {made.spool.epoch}


def test_a_new_epoch_is_accepted_even_with_lower_seqs(
        tmp_path: Path, redis_url: str, redis_client: redis.Redis,
        make_agent: Callable[..., Any], read_reports: Callable[..., list[Report]]) -> None:
    first = make_agent(redis_url, spool_path=tmp_path / "a.db")
    first.daemon.run(max_cycles=3)
    first.close()
    second = make_agent(redis_url, spool_path=tmp_path / "b.db")
    second.daemon.run(max_cycles=1)
    reports = read_reports(redis_client)
    assert [r.seq for r in reports] == [1, 2, 3, 1]
    assert reports[-1].epoch > reports[0].epoch


def test_retries_back_off_exponentially_up_to_the_cap(
        dead_port: int, make_agent: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    made = make_agent(f"redis://127.0.0.1:{dead_port}/0", backoff_initial=0.05,
                      backoff_max=0.4, backoff_jitter=0.0)
    made.daemon.cycle()
    made.publisher.clock = lambda: 100.0  # so that next_attempt - 100 is the delay itself
    delays = []
    with caplog.at_level(logging.DEBUG, logger="agent.publisher"):
        for _ in range(8):
            made.publisher.flush(force=True)
            delays.append(round(made.publisher.next_attempt - 100.0, 6))
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4]
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 8
    assert "retry 8 in 0.4 s" in retries[-1].getMessage()
    # The outage is a WARNING once; the same error again is only DEBUG.
    assert [r.levelname for r in retries] == ["WARNING"] + ["DEBUG"] * 7


def test_backoff_never_exceeds_its_cap() -> None:
    for draw in (0.0, 0.5, 0.999):
        backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.3, rng=lambda d=draw: d)
        delays = [backoff.delay(n) for n in range(1, 200)]
        assert max(delays) <= 30.0
        assert min(delays) >= 0.5 * 0.7
        assert delays[-1] >= 30.0 * 0.7
    exact = Backoff(initial=1.0, maximum=8.0, jitter=0.0)
    assert [exact.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_the_integrity_result_runs_at_start_and_carries_its_age(
        redis_url: str, redis_client: redis.Redis, make_agent: Callable[..., Any],
        read_reports: Callable[..., list[Report]]) -> None:
    made = make_agent(redis_url)
    made.daemon.settings = dataclasses.replace(made.daemon.settings, integrity_interval=3600.0)
    made.daemon.run(max_cycles=3)
    reports = read_reports(redis_client)
    # The first report holds a fresh quick_check, the later ones repeat it, older.
    assert reports[0].checks["database"]["integrity_checked"] is True
    assert reports[0].checks["database"]["integrity_age_s"] == 0.0
    assert reports[-1].checks["database"]["integrity_checked"] is False
    assert reports[-1].checks["database"]["integrity"] == "ok"
    assert reports[-1].checks["database"]["integrity_age_s"] > 0.0


class LosesReplies:
    """A Redis client whose next ``lose`` replies are lost: the command runs on
    the server, then the caller sees a dropped connection."""

    def __init__(self, client: redis.Redis, lose: int) -> None:
        self._client = client
        self.lose = lose

    def _after(self, reply: Any) -> Any:
        if self.lose > 0:
            self.lose -= 1
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return reply

    def xadd(self, *args: Any, **kwargs: Any) -> Any:
        return self._after(self._client.xadd(*args, **kwargs))

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self._client.pipeline(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **k: self._after(execute(*a, **k))  # type: ignore[method-assign]
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def spooled(spool: Spool, count: int) -> None:
    for _ in range(count):
        spool.add(lambda epoch, seq: Report(
            host=HOST, agent_version="t", epoch=epoch, seq=seq, observed_at=1.8e9 + seq,
            checks={"disk_space": {"healthy": True}}))


def test_a_lost_reply_makes_the_agent_send_again_as_its_own_acl_user(
        tmp_path: Path, redis_server_factory: Callable[..., Any]) -> None:
    # The agent's per-host user has no EVAL: delivering through it shows
    # the publisher needs nothing but XADD on its own stream.
    server = redis_server_factory()
    admin = server.client()
    password = "agent-password-0123456789"
    admin.execute_command("ACL", "SETUSER",
                          *setuser_args(role_rule("agent", host=HOST), password))
    as_agent = connect(RedisSettings(url=server.url, username=f"mtbbs-agent-{HOST}",
                                     password=password, socket_timeout=2.0))
    client = LosesReplies(as_agent, lose=1)
    stream = KeySpace().reports_stream(HOST)
    with Spool(tmp_path / "spool.db", max_reports=100) as spool:
        publisher = Publisher(client, KeySpace(), spool, host=HOST, maxlen=10_000,
                              backoff=Backoff(initial=0.01, maximum=0.01))
        spooled(spool, 1)
        assert publisher.flush(force=True) == 0  # one round trip, reply lost
        assert publisher.failures == 1 and len(spool) == 1
        assert publisher.flush(force=True) == 1
        assert len(spool) == 0

        client.lose = 1
        spooled(spool, 3)
        assert publisher.flush(force=True) == 0  # one pipeline, reply lost
        assert len(spool) == 3
        assert publisher.flush(force=True) == 3
        epoch = spool.epoch

    reports = stream_reports(admin)
    # Every report arrived, in order; the copies are the collector's to skip.
    assert [r.seq for r in reports] == [1, 1, 2, 3, 4, 2, 3, 4]
    assert {r.epoch for r in reports} == {epoch}
    assert admin.xlen(stream) == 8
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_agent.eval("return 1", 0)
    # Only the EVAL above was refused: the publisher never asked for more.
    # (redis-py's CLIENT SETINFO on connect is refused too, and ignored.)
    refused = [entry["object"] for entry in admin.acl_log()]
    assert [name for name in refused if not name.startswith("client")] == ["eval"]
    as_agent.close()
