"""up's parts: the embedded Redis helpers, the supervisor and the run loop.

The run loop is driven here with stand-in children (small Python programs)
so that it is tested apart from the components; the end-to-end test runs
the real ones.
"""

from __future__ import annotations

import dataclasses
import io
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from stack import embedded, up
from stack.settings import StackSettings
from stack.supervisor import Supervisor, describe_exit, wait_until
from wire.config import RedisSettings, load_section

PY = sys.executable


def test_cli_args_never_carry_the_password() -> None:
    assert embedded.cli_args("redis://127.0.0.1:6380/0") == ["-p", "6380"]
    assert embedded.cli_args("redis://:s3cret@db.example:6379/2") == [
        "-h", "db.example", "-p", "6379", "-n", "2", "--askpass"]
    assert embedded.cli_args("rediss://mon:pw@10.0.0.5:6390/0") == [
        "-h", "10.0.0.5", "-p", "6390", "--tls", "--user", "mon", "--askpass"]
    assert embedded.cli_args("unix:///run/redis.sock") == ["-s", "/run/redis.sock"]


def test_choose_port_prefers_the_given_one_when_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert not embedded.port_free(taken)
        other = embedded.choose_port(taken)
        assert other != taken and embedded.port_free(other)
    assert embedded.choose_port(other) == other


def test_a_port_in_time_wait_is_free() -> None:
    """A stopped server's connections in TIME-WAIT do not make its port taken."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    accepted, _ = server.accept()
    # The server closes first, as a stopping server does: its side of the
    # connection waits in TIME-WAIT once the client closes too.
    accepted.close()
    server.close()
    assert client.recv(1) == b""
    client.close()
    assert embedded.port_free(port)
    assert embedded.choose_port(port) == port


def test_server_argv_persists_with_aof_on_loopback(tmp_path: Path) -> None:
    argv = embedded.server_argv("redis-server", 7000, tmp_path)
    text = " ".join(argv)
    assert "--appendonly yes" in text and "--bind 127.0.0.1" in text
    assert " ".join(embedded.HASH_TUNING) in text
    assert argv[argv.index("--dir") + 1] == str(tmp_path)


def test_auth_config_is_private(tmp_path: Path) -> None:
    path = tmp_path / "auth.conf"
    embedded.write_auth_config(path, 'pa"ss\\word')
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == 'requirepass "pa\\"ss\\\\word"\n'


def test_describe_exit() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_supervisor_forwards_logs_and_stops_in_reverse_order(tmp_path: Path) -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, tmp_path / "logs")
    code = ("import signal, sys, time\n"
            "name = sys.argv[1]\n"
            "def bye(*a):\n"
            "    print(name, 'bye', time.monotonic_ns(), flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\n"
            "print(name, 'hello', flush=True)\n"
            "while True: time.sleep(0.05)\n")
    first = supervisor.start("first", [PY, "-c", code, "first"], {})
    second = supervisor.start("second", [PY, "-c", code, "second"], {})
    assert wait_until(lambda: "second hello" in out.getvalue()
                      and "first hello" in out.getvalue(), 20)
    assert supervisor.exited() is None
    supervisor.stop_all(10)
    assert first.exit_code() == 0 and second.exit_code() == 0
    lines = out.getvalue().splitlines()
    assert "    first | first hello" in lines
    # Last started, first stopped.
    bye = [line.split()[-1] for line in lines if " bye " in line]
    order = [line.split("|")[0].strip() for line in lines if " bye " in line]
    assert order == ["second", "first"] and int(bye[0]) < int(bye[1])
    assert (tmp_path / "logs" / "first.log").read_text().startswith("first hello\n")


def test_supervisor_kills_what_ignores_sigterm_and_its_group(tmp_path: Path) -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, tmp_path)
    # A child that ignores SIGTERM and has a grandchild that does too.
    code = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
            "print('grandchild', p.pid, flush=True)\n"
            "time.sleep(60)\n")
    child = supervisor.start("stubborn", [PY, "-c", code], {})
    assert wait_until(lambda: "grandchild" in out.getvalue(), 20)
    grandchild = int(out.getvalue().split("grandchild")[1].split()[0])
    supervisor.stop_all(0.5)
    assert child.exit_code() == -signal.SIGKILL
    assert wait_until(lambda: not psutil.pid_exists(grandchild)
                      or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE, 5)
    assert "did not stop within 0.5 s" in out.getvalue()


def test_data_dir_lock_admits_one_up(tmp_path: Path) -> None:
    with up.data_dir_lock(tmp_path), pytest.raises(up.UpError, match="another"), \
            up.data_dir_lock(tmp_path):
        pass  # pragma: no cover - the second lock raises
    with up.data_dir_lock(tmp_path):
        pass


def _plan(tmp_path: Path, **stack_values: object) -> up.Plan:
    stack = StackSettings(data_dir=tmp_path / "data", stop_timeout=5.0,  # type: ignore[arg-type]
                          **stack_values)
    return up.make_plan(stack, RedisSettings(), demo=True, worker=True, agent=True,
                        existing_redis=False, config_file=None, log_level=None,
                        base_env={"PATH": "/usr/bin:/bin", "MTBBS_CHECKS_DB": "elsewhere"})


def test_plan_points_the_agent_at_the_demo_bbs(tmp_path: Path, valid_invocation: Any) -> None:
    # A port free now: a set port that is taken would be replaced (it counts
    # as a default), and this test is about where the agent points.
    port = embedded.any_free_port()
    plan = _plan(tmp_path, host="bbs-demo", bbs_port=port)
    assert [c.name for c in plan.components] == ["collector", "alerter", "demo-bbs", "agent",
                                                 "exporter"]
    data = tmp_path.resolve() / "data"
    assert plan.env["MTBBS_REDIS_URL"] == plan.redis_url
    argvs = {c.name: c.argv for c in plan.components}
    demo = valid_invocation(argvs["demo-bbs"])
    assert (demo.port, demo.host) == (port, "bbs-demo")
    agent = valid_invocation(argvs["agent"])
    assert (agent.host, agent.interval) == ("bbs-demo", 5.0)
    # The demo's paths come as flags, which beat MTBBS_CHECKS_DB of the caller.
    assert agent.db == demo.db == str(data / "bbs" / "mtbbs.db")
    assert agent.pidfile == demo.pidfile
    assert agent.probe_port == port
    assert agent.spool.startswith(str(data))
    valid_invocation(argvs["collector"])
    valid_invocation(argvs["alerter"])
    assert plan.redis_argv is not None and str(data / "redis") in plan.redis_argv
    lines = "\n".join(up.summary(plan, RedisSettings()))
    assert "HGETALL mtbbs:host:bbs-demo:sessions" in lines
    assert f"status --redis-url {plan.redis_url}" in lines
    assert f"telnet 127.0.0.1 {port}" in lines
    exporter = valid_invocation(argvs["exporter"])
    assert exporter.bind == "127.0.0.1" and not exporter.open
    assert f"http://127.0.0.1:{exporter.port}/" in lines


def test_plan_without_demo_leaves_the_checks_to_the_configuration(tmp_path: Path,
                                                                  valid_invocation: Any) -> None:
    stack = StackSettings(data_dir=tmp_path)
    plan = up.make_plan(stack, RedisSettings(url="redis://127.0.0.1:6390/0", prefix="x:"),
                        demo=False, worker=False, agent=True, existing_redis=True,
                        config_file="mtbbs.toml", log_level="DEBUG", base_env={})
    assert [c.name for c in plan.components] == ["collector", "agent", "exporter"]
    agent = valid_invocation(plan.components[1].argv)
    assert agent.db is None and agent.probe_port is None
    assert plan.redis_argv is None and plan.redis_url == "redis://127.0.0.1:6390/0"
    assert plan.env["MTBBS_REDIS_PREFIX"] == "x:"
    assert plan.env["MTBBS_CONFIG"] == str(Path("mtbbs.toml").resolve())
    assert plan.env["MTBBS_LOG_LEVEL"] == "DEBUG"
    lines = "\n".join(up.summary(plan, RedisSettings()))
    assert "-p 6390 HGETALL x:host:" in lines and "--prefix x:" in lines


def test_plan_sets_only_settings_the_components_know(tmp_path: Path) -> None:
    """Every MTBBS_ variable up sets names a real setting of some section."""
    from stack.reference import known_env_names

    plan = _plan(tmp_path)
    ours = {k for k in plan.env if k.startswith("MTBBS_")}
    assert not sorted(ours - known_env_names())


def test_a_redis_password_is_required_by_the_embedded_server_too(tmp_path: Path) -> None:
    stack = StackSettings(data_dir=tmp_path)
    plan = up.make_plan(stack, RedisSettings(password="s3cret-pass"), demo=False, worker=False,
                        agent=False, existing_redis=False, config_file=None, log_level=None,
                        base_env={})
    assert plan.redis_argv is not None
    assert plan.redis_argv[1] == str(tmp_path.resolve() / "redis" / "auth.conf")
    assert "s3cret" not in " ".join(plan.redis_argv)
    assert "s3cret" not in "\n".join(up.summary(plan, RedisSettings(password="s3cret-pass")))


def _run_in_background(plan: up.Plan, stack: StackSettings, out: io.StringIO,
                       stop: threading.Event) -> int:
    return up.run(plan, RedisSettings(url=plan.redis_url), stack, out, stop)


def test_run_starts_redis_and_children_and_stops_them_all(tmp_path: Path) -> None:
    stack = load_section(StackSettings, {}, "stack", {},
                         {"data_dir": str(tmp_path / "data"), "redis_port": 6379})
    plan = _plan(tmp_path)
    sleeper = (PY, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)")
    plan = dataclasses.replace(plan, components=(up.Component("one", sleeper),
                                                 up.Component("two", sleeper)))
    out = io.StringIO()
    stop = threading.Event()
    seen: list[int] = []
    # Other tests' servers (the shared redis-server) are children too.
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def watcher() -> None:
        if wait_until(lambda: "mtbbs-monitor is up" in out.getvalue(), 30):
            me = psutil.Process()
            seen.extend(p.pid for p in me.children(recursive=True) if p.pid not in before)
            client = redis.Redis.from_url(plan.redis_url)
            client.set("persisted", "yes")
            client.close()
        stop.set()

    thread = threading.Thread(target=watcher)
    thread.start()
    # Another test in this process (an in-process rq worker) may have left
    # its own handler: what matters is that run() puts back what it found.
    handler_before = signal.getsignal(signal.SIGTERM)
    try:
        assert up.run(plan, RedisSettings(url=plan.redis_url), stack, out, stop) == 0
    finally:
        stop.set()
        thread.join()
    text = out.getvalue()
    assert len(seen) >= 3, text  # redis and the two stand-ins
    assert "Where to look:" in text
    assert not [pid for pid in seen if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert (tmp_path / "data" / "redis" / "appendonly.aof").read_bytes().count(b"persisted")
    # The signal handlers are back to what they were.
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_a_dying_child_stops_the_stack_with_exit_1(tmp_path: Path) -> None:
    stack = StackSettings(data_dir=tmp_path / "data", stop_timeout=5.0)
    plan = _plan(tmp_path)
    trigger = tmp_path / "die-now"
    # It dies once the stack is up, when the test says so.
    crasher = ("import pathlib, sys, time\n"
               f"while not pathlib.Path({str(trigger)!r}).exists(): time.sleep(0.05)\n"
               "print('boom', flush=True); sys.exit(4)\n")
    plan = dataclasses.replace(plan, components=(
        up.Component("steady", (PY, "-c", "import time; time.sleep(60)")),
        up.Component("crasher", (PY, "-c", crasher)),
    ))
    out = io.StringIO()
    stop = threading.Event()
    timer = threading.Timer(40, stop.set)  # bound the test even if the loop misses the death

    def pull_the_trigger() -> None:
        if wait_until(lambda: "mtbbs-monitor is up" in out.getvalue() or stop.is_set(), 30):
            trigger.touch()

    timer.start()
    thread = threading.Thread(target=pull_the_trigger)
    thread.start()
    try:
        code = up.run(plan, RedisSettings(url=plan.redis_url), stack, out, stop)
    finally:
        timer.cancel()
        stop.set()
        thread.join()
    assert code == 1
    text = out.getvalue()
    assert "crasher stopped (exit code 4); stopping the stack; its last lines" in text
    assert "       up |     boom" in text
    assert "stopping steady" in text and "stopping redis" in text


def test_a_child_dying_during_start_up_is_named_and_up_is_never_said(tmp_path: Path) -> None:
    stack = StackSettings(data_dir=tmp_path / "data", stop_timeout=5.0)
    plan = _plan(tmp_path)
    plan = dataclasses.replace(plan, components=(
        up.Component("steady", (PY, "-c", "import time; time.sleep(60)")),
        up.Component("shortlived", (PY, "-c", "import sys, time\n"
                                              "print('cannot work: no such thing', flush=True)\n"
                                              "time.sleep(0.3); sys.exit(3)")),
        up.Component("late", (PY, "-c", "import time; time.sleep(60)")),
    ))
    out = io.StringIO()
    with pytest.raises(up.UpError) as caught:
        up.run(plan, RedisSettings(url=plan.redis_url), stack, out, threading.Event())
    message = str(caught.value)
    assert message.startswith("shortlived stopped during start-up (exit code 3); its last lines")
    assert "    cannot work: no such thing" in message
    text = out.getvalue()
    assert "is up" not in text
    assert "stopping steady" in text and "stopping redis" in text


def test_run_refuses_a_bbs_port_taken_since_the_plan(tmp_path: Path) -> None:
    with socket.socket() as sock:
        plan = _plan(tmp_path, bbs_port=embedded.any_free_port())
        assert plan.bbs_port is not None
        sock.bind(("127.0.0.1", plan.bbs_port))
        sock.listen()
        with pytest.raises(up.UpError, match=f"port {plan.bbs_port} .*--bbs-port"):
            up.run(plan, RedisSettings(), StackSettings(), io.StringIO())


def test_a_given_port_that_is_taken_is_an_error_a_default_one_is_replaced(
        tmp_path: Path) -> None:
    with socket.socket() as redis_sock, socket.socket() as bbs_sock:
        for sock in (redis_sock, bbs_sock):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        redis_port, bbs_port = redis_sock.getsockname()[1], bbs_sock.getsockname()[1]
        stack = StackSettings(data_dir=tmp_path, redis_port=redis_port, bbs_port=bbs_port)

        def plan(given: frozenset[str]) -> up.Plan:
            return up.make_plan(stack, RedisSettings(), demo=True, worker=False, agent=False,
                                existing_redis=False, config_file=None, log_level=None,
                                base_env={}, given_ports=given)

        with pytest.raises(up.UpError, match=f"port {redis_port} of the embedded Redis, given "
                           "with --redis-port, is taken"):
            plan(frozenset({"redis_port"}))
        with pytest.raises(up.UpError, match=f"port {bbs_port} of the demo BBS, given with "
                           "--bbs-port, is taken"):
            plan(frozenset({"bbs_port"}))
        replaced = plan(frozenset())
    assert replaced.redis_port not in (None, redis_port)
    assert replaced.bbs_port not in (None, bbs_port)
    assert replaced.notes == (
        f"the default port {redis_port} of the embedded Redis is taken, so the embedded Redis "
        f"listens on {replaced.redis_port} (pass --redis-port to choose the port)",
        f"the default port {bbs_port} of the demo BBS is taken, so the demo BBS listens on "
        f"{replaced.bbs_port} (pass --bbs-port to choose the port)")
    lines = up.summary(replaced, RedisSettings())
    assert f"  note:      {replaced.notes[0]}" in lines


def test_run_with_an_unreachable_existing_redis_says_so(tmp_path: Path) -> None:
    stack = StackSettings(data_dir=tmp_path / "data")
    settings = RedisSettings(url="redis://127.0.0.1:1/0")
    plan = up.make_plan(stack, settings, demo=False, worker=False, agent=False,
                        existing_redis=True, config_file=None, log_level=None, base_env={})
    assert plan.redis_argv is None
    with pytest.raises(up.UpError, match="cannot reach Redis"):
        up.run(plan, settings, stack, io.StringIO())


def test_signal_sets_the_stop_event() -> None:
    stop = threading.Event()
    with up.stop_signals(stop):
        signal.raise_signal(signal.SIGTERM)
        assert wait_until(stop.is_set, 5)
    assert signal.getsignal(signal.SIGTERM) is not None


def test_the_embedded_redis_requires_the_configured_password(tmp_path: Path) -> None:
    stack = StackSettings(data_dir=tmp_path / "data", stop_timeout=5.0)
    settings = RedisSettings(password="s3cret-pass")
    plan = up.make_plan(stack, settings, demo=False, worker=False, agent=False,
                        existing_redis=False, config_file=None, log_level=None, base_env={})
    plan = dataclasses.replace(plan, components=(
        up.Component("idle", (PY, "-c", "import time; print('idle', flush=True); "
                                        "time.sleep(60)")),))
    out = io.StringIO()
    stop = threading.Event()
    answers: list[object] = []

    def probe() -> None:
        if wait_until(lambda: "idle" in out.getvalue(), 30):
            for password in (None, "s3cret-pass"):
                client = redis.Redis.from_url(plan.redis_url, password=password)
                try:
                    answers.append(client.ping())
                except redis.AuthenticationError:
                    answers.append("refused")
                finally:
                    client.close()
        stop.set()

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        assert up.run(plan, settings, stack, out, stop) == 0
    finally:
        stop.set()
        thread.join()
    assert answers == ["refused", True]
    assert "s3cret" not in out.getvalue()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """Even a SIGKILLed up leaves nothing behind: the kernel sends SIGTERM."""
    host = subprocess.Popen([PY, "-c", (
        "import io, sys, time\n"
        "from pathlib import Path\n"
        "from stack.supervisor import Supervisor\n"
        f"s = Supervisor(io.StringIO(), Path({str(tmp_path)!r}))\n"
        f"c = s.start('sleeper', [{PY!r}, '-c', 'import time; time.sleep(60)'], {{}})\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    child = int(host.stdout.readline())
    assert psutil.pid_exists(child)
    host.kill()
    host.wait(10)
    assert wait_until(lambda: not psutil.pid_exists(child)
                      or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, 10)


def test_the_restart_delay_doubles_while_the_demo_bbs_keeps_dying() -> None:
    component = up.Component(up.DEMO_BBS, ("true",), restart=True)
    state = up.Restarts(component, first_delay=15.0, started=1000.0)
    # Its first death, after a long life: the first delay.
    assert state.schedule(now=2000.0) == 15.0 and state.due == 2015.0
    # Dying again soon after each restart: doubling, up to the cap.
    delays = []
    for _ in range(7):
        state.started = state.due or 0.0
        delays.append(state.schedule(now=state.started + 5))
    assert delays == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
    # A restart that lived past STABLE_S starts the back-off over.
    state.started = 10_000.0
    assert state.schedule(now=10_000.0 + up.STABLE_S + 1) == 15.0


def test_the_first_restart_delay_leaves_the_agent_time_to_report() -> None:
    assert up.default_restart_delay(5.0) == up.MIN_RESTART_DELAY_S
    assert up.default_restart_delay(60.0) == 180.0
