"""End to end: ``mtbbs-monitor up --demo``, a telnet guest, and a clean stop.

Starts the real command as a process (embedded Redis, collector, alerter
worker, demo BBS, agent), waits for the host to appear, logs in to the demo
BBS as guest over a real socket, finds the session with the real redis-cli
and in ``mtbbs-collector status``, then sends SIGINT and checks that no
process of the stack is left.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from stack import embedded

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HOST = "e2e-bbs"
WAIT = 45.0  # seconds for the stack to produce data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             log: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; up printed:\n{log()[-4000:]}")


class Guest:
    """A telnet client of the demo BBS."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        host, client_port = self.sock.getsockname()[:2]
        self.client_id = f"{host}:{client_port}"
        self.buffer = b""

    def expect(self, text: str) -> str:
        wanted = text.encode("utf-8")
        deadline = time.monotonic() + 15
        while wanted not in self.buffer:
            if time.monotonic() > deadline:
                pytest.fail(f"the BBS never said {text!r}: {self.buffer[-500:]!r}")
            chunk = self.sock.recv(4096)
            if not chunk:
                pytest.fail(f"the BBS closed before {text!r}")
            self.buffer += chunk
        seen, _, self.buffer = self.buffer.partition(wanted)
        return seen.decode("utf-8", "replace")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stack(tmp_path: Path, command: Any, clean_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    redis_port, bbs_port = free_port(), free_port()
    log_path = tmp_path / "up.out"
    out = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [command("mtbbs-monitor"), "up", "--demo", "--data-dir", str(tmp_path / "var"),
         "--bbs-port", str(bbs_port), "--redis-port", str(redis_port), "--host", HOST,
         "--agent-interval", "1"],
        stdout=out, stderr=subprocess.STDOUT, env=clean_env, cwd=tmp_path)
    pids: set[int] = set()
    info = {"process": process, "redis_port": redis_port, "bbs_port": bbs_port,
            "pids": pids, "log": lambda: log_path.read_text("utf-8", "replace"),
            "url": f"redis://127.0.0.1:{redis_port}/0"}
    try:
        yield info
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        # Leave nothing behind even when the test failed half-way.
        for pid in pids:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        out.close()


def collect_children(info: dict[str, Any]) -> set[int]:
    try:
        children = psutil.Process(info["process"].pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return info["pids"]
    info["pids"].update(child.pid for child in children)
    return info["pids"]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_demo_guest_session_is_seen_and_ctrl_c_leaves_nothing(
        stack: dict[str, Any], command: Any, clean_env: dict[str, str]) -> None:
    log = stack["log"]
    client = redis.Redis(port=stack["redis_port"], socket_timeout=2, decode_responses=True)

    def host_state() -> dict[str, str] | None:
        collect_children(stack)
        if stack["process"].poll() is not None:
            pytest.fail(f"up exited with {stack['process'].returncode}:\n{log()[-4000:]}")
        try:
            state = client.hgetall(f"mtbbs:host:{HOST}")
        except redis.RedisError:
            return None
        return state if state.get("status") else None

    state = wait_for(host_state, WAIT, "the host's state", log)
    assert state["last_seen"] and "disk_space.percent_used" in state
    # The summary comes once every component has kept running for a moment,
    # which can be after the agent's first report.
    wait_for(lambda: "mtbbs-monitor is up" in log(), WAIT, "'mtbbs-monitor is up'", log)
    printed = log()
    assert f"redis-cli -p {stack['redis_port']} HGETALL mtbbs:host:{HOST}" in printed or \
        f"-p {stack['redis_port']} HGETALL mtbbs:host:{HOST}" in printed
    assert f"telnet 127.0.0.1 {stack['bbs_port']}" in printed
    # redis, collector, alerter, demo BBS, agent (and whatever they fork).
    assert len(collect_children(stack)) >= 5, printed

    guest = Guest(stack["bbs_port"])
    guest.expect("login: ")
    guest.send("guest")
    guest.expect("Command> ")

    cli = embedded.find_cli()
    assert cli is not None
    key = f"mtbbs:host:{HOST}:sessions"

    def session_in_redis_cli() -> str | None:
        collect_children(stack)
        result = subprocess.run([cli, "-p", str(stack["redis_port"]), "HGETALL", key],
                                capture_output=True, text=True, timeout=10, check=False)
        lines = result.stdout.splitlines()
        if guest.client_id not in lines:
            return None
        text = lines[lines.index(guest.client_id) + 1]
        # The connected event can be stored before the login is: wait for it.
        return text if json.loads(text).get("state") == "logged_in" else None

    session = json.loads(wait_for(session_in_redis_cli, 20, "the session in redis-cli", log))
    assert session["user_id"] == "guest" and session["state"] == "logged_in"

    def guest_in_status() -> dict[str, Any] | None:
        collect_children(stack)
        result = subprocess.run(
            [command("mtbbs-collector"), "status", "--redis-url", stack["url"], "--host", HOST,
             "--json"], capture_output=True, text=True, timeout=30, env=clean_env, check=False)
        assert result.returncode in (0, 1, 2), result.stderr
        (host,) = json.loads(result.stdout)["hosts"]
        # The live count comes from the sessions hash; the guest count from
        # the agent's next report, which reads the same hash.
        ready = host["sessions"] >= 1 and host["checks"]["sessions"]["guests"] >= 1
        return host if ready else None

    host = wait_for(guest_in_status, 20, "the guest in mtbbs-collector status", log)
    assert host["host"] == HOST and host["stale"] == "no"
    text = subprocess.run(
        [command("mtbbs-collector"), "status", "--redis-url", stack["url"], "--host", HOST,
         "-v"], capture_output=True, text=True, timeout=30, env=clean_env, check=False)
    assert text.stdout.startswith("MTBBS ") and HOST in text.stdout, text.stdout

    watch = subprocess.run(
        [command("mtbbs-monitor"), "watch", "--once", "--redis-url", stack["url"]],
        capture_output=True, text=True, timeout=30, env=clean_env, check=False)
    assert watch.returncode == 0 and HOST in watch.stdout, watch.stdout + watch.stderr

    guest.send("Q")
    guest.close()

    pids = set(collect_children(stack))
    assert pids
    stack["process"].send_signal(signal.SIGINT)
    assert stack["process"].wait(40) == 0, log()[-4000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    left = [pid for pid in pids if alive(pid)]
    assert not left, f"left behind: {left}\n{log()[-3000:]}"
    assert "stopped" in log().splitlines()[-1]
