"""A worker killed with SIGKILL: nothing of it lives on, and its successor takes over.

Real ``mtbbs-alerter worker`` processes against the suite's redis-server. The
worker is killed alone (not its process group), as the kernel's OOM killer
or ``kill -9 PID`` does, so that anything it started would be left behind.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil
import pytest
import redis

from wire.keys import KeySpace

pytestmark = pytest.mark.e2e


def scheduler_locks(client: redis.Redis) -> dict[str, str]:
    """rq's scheduler locks: key to the name of the scheduler holding it."""
    return {key.decode(): (client.get(key) or b"").decode()
            for key in client.scan_iter("rq:scheduler-lock:*")}


def scheduler_pid(client: redis.Redis, name: str) -> int | None:
    """The pid a scheduler registered under ``name``, None when it is not registered."""
    raw = client.hget(f"rq:scheduler:{name}", "pid")
    return int(raw) if raw else None


def locks_held_by(client: redis.Redis, keys: KeySpace, pid: int) -> bool:
    """Both queues' scheduler locks exist, and their holder is registered by the
    process ``pid`` or one of its children: the worker's scheduler holds them."""
    try:
        family = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        return False
    locks = scheduler_locks(client)
    wanted = {f"rq:scheduler-lock:{keys.notify_queue()}",
              f"rq:scheduler-lock:{keys.evaluate_queue()}"}
    return set(locks) == wanted and \
        all(scheduler_pid(client, holder) in family for holder in locks.values())


def worker_pid(client: redis.Redis, name: str) -> int | None:
    """The pid of the live registration of worker ``name``, else None."""
    raw = client.hgetall(f"rq:worker:{name}")
    if not raw or b"death" in raw:
        return None
    return int(raw[b"pid"])


def leftovers(group: int, killed: int) -> list[psutil.Process]:
    """Live processes of the killed worker's process group (its session: the
    fixture starts each worker in a new one), the killed worker excepted."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        if process.info["pid"] == killed or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getpgid(process.info["pid"]) == group:
                found.append(process)
        except ProcessLookupError:
            continue
    return found


def sigkill_alone(worker: Any, wait_for: Any) -> None:
    """SIGKILL the worker process only, and wait until it is dead but unreaped."""
    os.kill(worker.process.pid, signal.SIGKILL)
    wait_for(lambda: psutil.Process(worker.process.pid).status() == psutil.STATUS_ZOMBIE,
             message="the killed worker to be a zombie")


@pytest.mark.parametrize("named", [True, False], ids=["same-name", "default-names"])
def test_a_killed_worker_leaves_no_process_and_its_successor_schedules(
        alerter_config: Any, workers: Any, wait_for: Any, redis_client: redis.Redis,
        keys: KeySpace, named: bool) -> None:
    config = alerter_config()
    name_args = ("--name", "alerter-unit-1") if named else ()
    first = workers(config, *name_args)
    first_pid = first.process.pid
    wait_for(lambda: locks_held_by(redis_client, keys, first_pid), timeout=15,
             message="the first worker's scheduler to hold the locks")
    children = psutil.Process(first_pid).children(recursive=True)

    sigkill_alone(first, wait_for)
    # Nothing the worker started outlives it: no child, none reparented.
    wait_for(lambda: not [c for c in children if c.is_running()
                          and c.status() != psutil.STATUS_ZOMBIE],
             message="the killed worker's children to end")
    wait_for(lambda: not leftovers(first_pid, first_pid),
             message="no process of the killed worker's group left")
    first.process.wait(5)

    second = workers(config, *name_args)
    # The successor's scheduler holds every lock; none is left to the dead one
    # (its lock would otherwise block scheduling for a minute).
    wait_for(lambda: locks_held_by(redis_client, keys, second.process.pid), timeout=15,
             message="the restarted worker's scheduler to hold the locks")
    assert second.process.poll() is None
    assert "Traceback" not in second.output()


def test_a_worker_restarts_under_its_name_while_its_killed_predecessor_is_a_zombie(
        alerter_config: Any, workers: Any, wait_for: Any, redis_client: redis.Redis) -> None:
    config = alerter_config()
    first = workers(config, "--name", "alerter-unit-2")
    wait_for(lambda: worker_pid(redis_client, "alerter-unit-2") == first.process.pid,
             message="the first worker's registration")
    # Dead, but not yet reaped by its parent (a supervisor a moment late):
    # os.kill(pid, 0) still succeeds on it.
    sigkill_alone(first, wait_for)
    second = workers(config, "--name", "alerter-unit-2")
    wait_for(lambda: worker_pid(redis_client, "alerter-unit-2") == second.process.pid
             or second.process.poll() is not None,
             timeout=15, message="the second worker's registration (or its end)")
    assert second.process.poll() is None, second.output()
    assert "active worker named" not in second.output()
    assert "taking it over" in second.output()
    first.process.wait(5)
