"""``mtbbs-collector run`` as a real process: a collector SIGKILLed mid-batch
and another taking over its pending entries, and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest
import redis

from wire.keys import COLLECTOR_GROUP
from wire.messages import encode
from wire.state import STALE_NO

pytestmark = pytest.mark.e2e

HOSTS = 8000


def start(command: Any, env: dict[str, str], name: str, **settings: str) -> subprocess.Popen[str]:
    extra = {f"MTBBS_COLLECTOR_{k.upper()}": v for k, v in settings.items()}
    return subprocess.Popen([command("mtbbs-collector"), "run", "--name", name],
                            env={**env, **extra}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def consumer_pending(client: redis.Redis, streams: list[str], name: str) -> int:
    """Entries delivered to consumer ``name`` and not acknowledged, over ``streams``."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_consumers(stream, COLLECTOR_GROUP)
    return sum(int(consumer["pending"]) for consumers in pipe.execute()
               for consumer in consumers if consumer["name"] == name.encode())


def group_pending(client: redis.Redis, streams: list[str]) -> int:
    """Entries delivered to any consumer and not acknowledged, over ``streams``."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xpending(stream, COLLECTOR_GROUP)
    return sum(int(summary["pending"]) for summary in pipe.execute())


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_sigkill_mid_batch_and_takeover(command: Any, clean_env: dict[str, str],
                                        redis_url: str, redis_client: redis.Redis, keys: Any,
                                        report: Any) -> None:
    env = {**clean_env, "MTBBS_REDIS_URL": redis_url}
    hosts = [f"bbs-{index:05d}" for index in range(HOSTS)]
    streams = [keys.reports_stream(host) for host in hosts]
    # One report per host, each on its host's stream: a lost entry is a host
    # missing from the index.
    pipe = redis_client.pipeline(transaction=False)
    for host, stream in zip(hosts, streams, strict=True):
        pipe.xadd(stream, {"m": encode(report(host, 1))})
    pipe.execute()
    victim = start(command, env, "victim", batch_size="200")
    try:
        # Freeze it while it holds a delivered, unacknowledged batch, then kill it.
        deadline = time.monotonic() + 30
        while True:
            assert victim.poll() is None, victim.stderr.read() if victim.stderr else ""
            assert time.monotonic() < deadline, "the victim never held a batch"
            if redis_client.zcard(keys.hosts_index()):
                victim.send_signal(signal.SIGSTOP)
                # Scripts it already sent still run in Redis and acknowledge
                # their entries; what is pending once they are done is lost
                # with the process.
                time.sleep(0.3)
                if consumer_pending(redis_client, streams, "victim"):
                    break
                victim.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
    orphaned = consumer_pending(redis_client, streams, "victim")
    assert orphaned > 0
    assert redis_client.zcard(keys.hosts_index()) < HOSTS

    # The victim's last heartbeat keeps it in the ring until ring_timeout_s
    # has passed; then the heir owns every host and claims what it held.
    heir = start(command, env, "heir", claim_min_idle_s="0.5", claim_interval_s="0.2",
                 heartbeat_interval_s="0.2", ring_timeout_s="1")
    try:
        wait_until(lambda: redis_client.zcard(keys.hosts_index()) == HOSTS
                   and group_pending(redis_client, streams) == 0,
                   60, "the heir to take over")
        wait_until(lambda: int(redis_client.hget(keys.collector("heir"), "reclaimed") or 0)
                   >= orphaned, 10, "the heir's heartbeat")
    finally:
        heir.send_signal(signal.SIGTERM)
        out, err = heir.communicate(timeout=20)
    assert heir.returncode == 0, err
    assert "Traceback" not in err
    assert consumer_pending(redis_client, streams, "victim") == 0
    assert redis_client.xlen(keys.dead_letter_stream()) == 0
    states = redis_client.pipeline(transaction=False)
    for index in range(0, HOSTS, 997):
        states.hget(keys.host(f"bbs-{index:05d}"), "stale")
    assert set(states.execute()) == {STALE_NO.encode()}
    assert redis_client.hget(keys.collector("heir"), "state") == b"stopped"


def test_run_ingests_and_stops_cleanly(command: Any, clean_env: dict[str, str], redis_url: str,
                                       redis_client: redis.Redis, keys: Any, publish: Any,
                                       report: Any) -> None:
    env = {**clean_env, "MTBBS_REDIS_URL": redis_url, "MTBBS_COLLECTOR_BLOCK_MS": "100",
           "MTBBS_COLLECTOR_DISCOVERY_INTERVAL_S": "0.2"}
    process = start(command, env, "clean")
    try:
        publish(report("bbs-01", 1))
        redis_client.xadd(keys.sessions_stream("bbs-01"), {"m": b"junk"})
        wait_until(lambda: redis_client.exists(keys.host("bbs-01"))
                   and redis_client.xlen(keys.dead_letter_stream()) == 1, 20, "ingestion")
        wait_until(lambda: redis_client.exists(keys.collector("clean")), 20, "a heartbeat")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0
    assert "Traceback" not in err
    beat = redis_client.hgetall(keys.collector("clean"))
    assert beat[b"state"] == b"stopped" and beat[b"processed"] == b"2"
    assert beat[b"pid"] == str(process.pid).encode()
    assert os.path.basename(command("mtbbs-collector")) == "mtbbs-collector"


def test_run_once(command: Any, clean_env: dict[str, str], redis_url: str,
                  redis_client: redis.Redis, keys: Any, publish: Any, report: Any) -> None:
    publish(report("bbs-01", 1))
    done = subprocess.run([command("mtbbs-collector"), "run", "--once", "--name", "cron"],
                          env={**clean_env, "MTBBS_REDIS_URL": redis_url},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "processed 1 entries (0 dead-lettered)"
    assert redis_client.exists(keys.host("bbs-01"))
