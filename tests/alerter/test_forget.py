"""``mtbbs-collector forget`` removes every alert state of the host, as ``alerts --all`` shows.

Real commands against the suite's redis-server: an ``mtbbs-alerter worker``
judges the host state written as the collector writes it, then
``mtbbs-collector forget`` and ``mtbbs-alerter alerts --all`` run as a sysop
would run them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from wire.keys import KeySpace

pytestmark = pytest.mark.e2e


def run(command: Any, env: dict[str, str], program: str, config: Path,
        *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([command(program), *args, "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def state(client: redis.Redis, keys: KeySpace, host: str, check: str) -> bytes | None:
    value = client.hget(keys.alert(host, check), "state")
    return value if isinstance(value, bytes) else None


def test_forget_removes_every_alert_state_of_the_host(
        alerter_config: Any, workers: Any, hosts: Any, wait_for: Any, settled: Any,
        command: Any, clean_env: dict[str, str], redis_client: redis.Redis,
        keys: KeySpace) -> None:
    config = alerter_config()
    workers(config)
    hosts.report("bbs-01", disk=95.0)
    hosts.report("bbs-02", disk=95.0)
    wait_for(lambda: state(redis_client, keys, "bbs-01", "disk_space") == b"firing",
             message="bbs-01's disk alert firing")
    hosts.report("bbs-01", disk=50.0)
    wait_for(lambda: state(redis_client, keys, "bbs-01", "disk_space") == b"resolved",
             message="bbs-01's disk alert resolved")
    wait_for(lambda: state(redis_client, keys, "bbs-02", "disk_space") == b"firing",
             message="bbs-02's disk alert firing")
    settled()
    # The state of a rule removed from the configuration since: no rule names it.
    redis_client.hset(keys.alert("bbs-01", "old_rule"),
                      mapping={"host": "bbs-01", "check": "old_rule", "state": "resolved"})
    redis_client.sadd(keys.alerts_index(), "bbs-01/old_rule")
    listed = run(command, clean_env, "mtbbs-alerter", config, "alerts", "--all")
    assert "bbs-01" in listed.stdout and "old_rule" in listed.stdout

    forget = run(command, clean_env, "mtbbs-collector", config, "forget", "--host", "bbs-01")
    assert forget.returncode == 0, forget.stderr
    assert "2 alert states dropped by the alerter" in forget.stdout

    listed = run(command, clean_env, "mtbbs-alerter", config, "alerts", "--all")
    assert listed.returncode == 0, listed.stderr
    assert "bbs-01" not in listed.stdout
    assert "bbs-02" in listed.stdout and "disk_space" in listed.stdout
    assert not list(redis_client.scan_iter(keys.alert("bbs-01", "*")))
    assert {m.decode() for m in redis_client.smembers(keys.alerts_index())} == \
        {"bbs-02/disk_space"}


def test_forget_without_a_worker_says_when_the_alert_states_go(
        alerter_config: Any, command: Any, clean_env: dict[str, str],
        redis_client: redis.Redis, keys: KeySpace) -> None:
    config = alerter_config()
    redis_client.hset(keys.alert("bbs-01", "disk_space"), mapping={"state": "resolved"})
    redis_client.sadd(keys.alerts_index(), "bbs-01/disk_space")
    forget = run(command, clean_env, "mtbbs-collector", config, "forget", "--host", "bbs-01",
                 "--wait", "0")
    assert forget.returncode == 0, forget.stderr
    assert "dropped when one does" in forget.stdout
