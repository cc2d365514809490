"""``mtbbs-monitor up`` as a process: honest about what runs.

Each test starts the real command (embedded Redis, collector, alerter
worker, demo BBS, agent) on free ports in a temporary directory and looks
at what it prints, what it exits with and what the monitor shows: a
component dying during start-up, ports that are taken or in TIME-WAIT, the
demo BBS dying under a running stack, and the collector's name across
restarts.
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

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

HOST = "up-test"
START = 60.0  # seconds for a stack to say it is up


class Up:
    """One ``mtbbs-monitor up`` process and what it printed."""

    def __init__(self, command: Any, env: dict[str, str], cwd: Path, *args: str,
                 name: str = "up") -> None:
        self.out_path = cwd / f"{name}.out"
        self.err_path = cwd / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                [command("mtbbs-monitor"), "up", "--data-dir", "var", "--host", HOST,
                 "--agent-interval", "1", *args],
                stdout=out, stderr=err, env=env, cwd=cwd)
        self.pids: set[int] = set()

    def output(self) -> str:
        return self.out_path.read_text("utf-8", "replace")

    def errors(self) -> str:
        return self.err_path.read_text("utf-8", "replace")

    def everything(self) -> str:
        return f"{self.output()}\n--- stderr ---\n{self.errors()}"

    def remember_children(self) -> None:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        self.pids.update(child.pid for child in children)

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = START) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.remember_children()
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}; up printed:\n{self.everything()[-5000:]}")

    def wait_up(self) -> None:
        def up_or_exited() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"up exited with {self.process.returncode}:\n"
                            f"{self.everything()[-5000:]}")
            return "mtbbs-monitor is up" in self.output()

        self.wait_for(up_or_exited, "'mtbbs-monitor is up'")

    def exit_code(self, timeout: float = START) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"up did not exit within {timeout:g} s:\n{self.everything()[-5000:]}")

    def stop(self) -> int:
        """Ctrl-C, as a sysop stops it; its exit code."""
        self.remember_children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.exit_code(40)

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pid in self.pids:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


@pytest.fixture
def start_up(command: Any, clean_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """``start_up(*args)``: an ``up`` in ``tmp_path``, stopped at the end of the test."""
    started: list[Up] = []

    def start(*args: str) -> Up:
        process = Up(command, clean_env, tmp_path, *args, name=f"up{len(started)}")
        started.append(process)
        return process

    yield start
    for process in started:
        process.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def status_json(command: Any, env: dict[str, str], redis_port: int) -> dict[str, Any]:
    done = subprocess.run(
        [command("mtbbs-collector"), "status", "--redis-url",
         f"redis://127.0.0.1:{redis_port}/0", "--json"],
        capture_output=True, text=True, timeout=30, env=env, check=False)
    # Before the agent's first report is ingested the check is UNKNOWN (a new
    # host's stream is found by the collector's next pass over the keyspace);
    # the collectors are in the document all the same.
    no_host_yet = done.returncode == 3 and '"no host has reported yet' in done.stdout
    assert done.returncode in (0, 1, 2) or no_host_yet, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_damaged_demo_database_stops_up_naming_the_component_and_the_file(
        start_up: Any, tmp_path: Path) -> None:
    database = tmp_path / "var" / "bbs" / "mtbbs.db"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"\x00garbage, not SQLite\n" * 500)
    up = start_up("--demo", "--redis-port", str(free_port()), "--bbs-port", str(free_port()))
    assert up.exit_code() == 1, up.everything()
    errors = up.errors()
    assert "demo-bbs stopped during start-up (exit code 3)" in errors, up.everything()
    assert f"the demo database {database} cannot be used" in errors
    assert "move it aside" in errors and "fresh demo database" in errors
    assert "is up" not in up.output()
    # Everything that had started was stopped again.
    assert "stopping redis" in up.output() and up.output().rstrip().endswith("stopped")


@pytest.mark.parametrize(("flag", "what"), [("--redis-port", "the embedded Redis"),
                                            ("--bbs-port", "the demo BBS")])
def test_a_given_port_that_is_taken_is_an_error_naming_it(start_up: Any, flag: str,
                                                          what: str) -> None:
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        others = {"--redis-port": str(free_port()), "--bbs-port": str(free_port()), flag: str(port)}
        up = start_up("--demo", *(x for pair in others.items() for x in pair))
        assert up.exit_code() == 1, up.everything()
    assert f"port {port} of {what}, given with {flag}, is taken" in up.errors(), up.everything()
    assert "is up" not in up.output()
    # Refused before anything started.
    assert "redis |" not in up.output()


def test_taken_ports_that_were_not_given_are_replaced_and_the_output_says_so(
        start_up: Any, tmp_path: Path) -> None:
    # The [stack] settings are defaults in this sense: documented to fall back
    # when taken. (The built-in 6379 and 2323 may be in use on this machine
    # by something that must not be disturbed, so the test sets its own.)
    with listening_socket() as redis_taken, listening_socket() as bbs_taken:
        redis_port, bbs_port = redis_taken.getsockname()[1], bbs_taken.getsockname()[1]
        config = tmp_path / "mtbbs.toml"
        config.write_text(f"[stack]\nredis_port = {redis_port}\nbbs_port = {bbs_port}\n")
        up = start_up("--demo", "--config", str(config), "--no-worker")
        up.wait_up()
    output = up.output()
    assert f"the default port {redis_port} of the embedded Redis is taken, so the embedded " \
           f"Redis listens on " in output, output
    assert f"the default port {bbs_port} of the demo BBS is taken, so the demo BBS listens on " \
        in output
    new_bbs = int(output.split("so the demo BBS listens on ")[1].split()[0])
    assert new_bbs != bbs_port and f"telnet 127.0.0.1 {new_bbs}" in output
    with socket.create_connection(("127.0.0.1", new_bbs), timeout=10) as guest:
        assert guest.recv(100)
    assert up.stop() == 0, up.everything()


def test_a_rerun_right_after_ctrl_c_with_clients_connected_gets_the_same_ports(
        start_up: Any, command: Any, clean_env: dict[str, str]) -> None:
    redis_port, bbs_port = free_port(), free_port()
    ports = ("--redis-port", str(redis_port), "--bbs-port", str(bbs_port))
    first = start_up("--demo", "--no-worker", *ports)
    first.wait_up()
    guest = socket.create_connection(("127.0.0.1", bbs_port), timeout=10)
    watch = subprocess.Popen(
        [command("mtbbs-monitor"), "watch", "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
         "--interval", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=clean_env)
    try:
        assert guest.recv(100)
        first.wait_for(lambda: any(c.raddr and c.raddr.port == redis_port
                                   for c in psutil.Process(watch.pid).net_connections()),
                       "watch to connect")
        assert first.stop() == 0, first.everything()
    finally:
        # The servers closed first; now the clients do, and the servers'
        # side of each connection waits in TIME-WAIT.
        guest.close()
        watch.kill()
        watch.wait(10)
    waiting = {c.laddr.port for c in psutil.net_connections("tcp")
               if c.status == psutil.CONN_TIME_WAIT}
    assert bbs_port in waiting or redis_port in waiting, "no TIME-WAIT: the test tests nothing"
    second = start_up("--demo", "--no-worker", *ports)
    second.wait_up()
    output = second.output()
    assert f"telnet 127.0.0.1 {bbs_port}" in output and f"-p {redis_port} " in output, output
    assert "is taken" not in second.everything()
    assert second.stop() == 0, second.everything()


def test_the_demo_bbs_killed_under_up_is_shown_down_and_restarted(
        start_up: Any, tmp_path: Path) -> None:
    redis_port, bbs_port = free_port(), free_port()
    up = start_up("--demo", "--redis-port", str(redis_port), "--bbs-port", str(bbs_port),
                  "--demo-restart-delay", "6")
    up.wait_up()
    client = redis.Redis(port=redis_port, socket_timeout=5, decode_responses=True)
    pidfile = tmp_path / "var" / "bbs" / "mtbbs.pid"
    first_pid = int(pidfile.read_text())
    # The monitor sees the BBS first, so that a change is a change.
    up.wait_for(lambda: client.hget(f"mtbbs:host:{HOST}", "telnet.healthy") == "true",
                "the agent to report the BBS listening")
    psutil.Process(first_pid).kill()
    up.wait_for(lambda: "restarting demo-bbs in 6 s" in up.output(),
                "up to announce the restart")
    assert "the monitor keeps running" in up.output()
    # Meanwhile the monitor does its job: the BBS down, an alert firing.
    up.wait_for(lambda: client.hget(f"mtbbs:host:{HOST}", "telnet.healthy") == "false",
                "the agent to report the BBS down")
    up.wait_for(lambda: client.hget(f"mtbbs:alert:{HOST}:telnet", "state") == "firing",
                "the telnet alert to fire")
    up.wait_for(lambda: "demo-bbs is running again (restart 1)" in up.output(),
                "the demo BBS to come back", timeout=30)
    assert up.process.poll() is None, up.everything()
    assert int(pidfile.read_text()) != first_pid
    with socket.create_connection(("127.0.0.1", bbs_port), timeout=10) as guest:
        assert guest.recv(100)
    up.wait_for(lambda: client.hget(f"mtbbs:host:{HOST}", "telnet.healthy") == "true",
                "the agent to report the BBS back")
    client.close()
    assert up.stop() == 0, up.everything()


def test_a_collector_restarted_under_up_is_one_collector(
        start_up: Any, command: Any, clean_env: dict[str, str]) -> None:
    redis_port = free_port()
    for run in range(2):
        up = start_up("--redis-port", str(redis_port), "--no-worker")
        up.wait_up()

        def running_collectors() -> list[dict[str, Any]] | None:
            found = status_json(command, clean_env, redis_port)["collectors"]
            return found if any(c.get("state") == "running" and c["alive"]
                                for c in found) else None

        collectors = up.wait_for(running_collectors, f"a running collector (run {run + 1})")
        assert [c["name"] for c in collectors] == [f"up-{HOST}"], collectors
        assert up.stop() == 0, up.everything()
