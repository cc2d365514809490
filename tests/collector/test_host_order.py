"""A host's order cannot be poisoned: a spool made while the host's clock ran
ahead, a manual ``mtbbs-agent run --once`` with a spool of its own, and
reports the agent sent twice after a lost reply, through the real agent
publisher (and command) into a collector, against the real redis-server."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from agent.publisher import Backoff, Publisher
from agent.spool import Spool
from tests.agent.daemon.test_delivery import LosesReplies
from wire.keys import COLLECTOR_GROUP, KeySpace
from wire.messages import Report

HOST = "bbs-order"
YEAR_S = 365 * 86_400.0


def spool_report(spool: Spool, disk: float) -> None:
    spool.add(lambda epoch, seq: Report(
        host=HOST, agent_version="t", epoch=epoch, seq=seq, observed_at=time.time(),
        checks={"disk_space": {"healthy": True, "percent_used": disk}}))


def send(client: Any, spool: Spool, *disks: float) -> None:
    """Spool a report per figure and deliver them all."""
    for disk in disks:
        spool_report(spool, disk)
    publisher = Publisher(client, KeySpace(), spool, host=HOST, maxlen=10_000,
                          backoff=Backoff(initial=0.001, maximum=0.001))
    while len(spool):
        publisher.flush(force=True)


def history_disks(client: redis.Redis) -> list[str]:
    """The disk figure of each history line, oldest first."""
    lines = client.lrange(KeySpace().host_history(HOST), 0, -1)
    return [line.decode().split(",")[2] for line in reversed(lines)]


def test_a_spool_from_the_future_does_not_lock_the_host_out(
        redis_client: redis.Redis, make_collector: Any, tmp_path: Path) -> None:
    keys = KeySpace()
    collector = make_collector()
    # The host's clock ran a year ahead when this spool was made: its epoch is huge.
    with Spool(tmp_path / "ahead.db", max_reports=10,
               clock=lambda: time.time() + YEAR_S) as ahead:
        send(redis_client, ahead, 10.0)
        future_epoch = ahead.epoch
    collector.drain()
    assert redis_client.hget(keys.host(HOST), "epoch") == str(future_epoch).encode()
    # The clock is fixed, the spool lost: the real agent starts a new, smaller epoch.
    with Spool(tmp_path / "spool.db", max_reports=10) as spool:
        assert spool.epoch < future_epoch
        send(redis_client, spool, 20.0, 30.0)
        collector.drain()
        assert redis_client.hget(keys.host(HOST), "disk_space.percent_used") == b"30.0"
        send(redis_client, spool, 40.0)
        collector.drain()
    assert redis_client.hget(keys.host(HOST), "disk_space.percent_used") == b"40.0"
    assert history_disks(redis_client) == ["10.0", "20.0", "30.0", "40.0"]


def test_a_manual_once_between_reports_does_not_hide_later_ones(
        redis_url: str, redis_client: redis.Redis, make_collector: Any, command: Any,
        clean_env: dict[str, str], tmp_path: Path) -> None:
    keys = KeySpace()
    collector = make_collector()
    db = tmp_path / "mtbbs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    with Spool(tmp_path / "spool.db", max_reports=10) as spool:
        send(redis_client, spool, 20.0)
        # A sysop tries the agent by hand: another spool, so another, newer epoch.
        done = subprocess.run(
            [command("mtbbs-agent"), "run", "--once", "--no-probe", "--host", HOST,
             "--db", str(db), "--data-dir", str(tmp_path), "--redis-url", redis_url,
             "--spool", str(tmp_path / "by-hand.db")],
            env=clean_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in done.stderr, done.stderr
        collector.drain()
        by_hand = redis_client.hget(keys.host(HOST), "epoch")
        assert by_hand is not None and int(by_hand) > spool.epoch
        # The real agent's next report, of its older epoch, is applied.
        send(redis_client, spool, 30.0)
        collector.drain()
    assert redis_client.hget(keys.host(HOST), "epoch") == str(spool.epoch).encode()
    assert redis_client.hget(keys.host(HOST), "disk_space.percent_used") == b"30.0"
    assert redis_client.llen(keys.host_history(HOST)) == 3


def test_reports_sent_twice_after_lost_replies_are_applied_once(
        redis_client: redis.Redis, make_collector: Any, tmp_path: Path) -> None:
    keys = KeySpace()
    client = LosesReplies(redis_client, lose=1)
    with Spool(tmp_path / "spool.db", max_reports=10) as spool:
        send(client, spool, 10.0)
        client.lose = 1
        send(client, spool, 20.0, 30.0, 40.0)
    assert redis_client.xlen(keys.reports_stream(HOST)) == 8
    collector = make_collector()
    collector.drain()
    assert history_disks(redis_client) == ["10.0", "20.0", "30.0", "40.0"]
    assert redis_client.hget(keys.host(HOST), "seq") == b"4"
    assert collector.counters.skipped == 4
    assert redis_client.xpending(keys.reports_stream(HOST), COLLECTOR_GROUP)["pending"] == 0
