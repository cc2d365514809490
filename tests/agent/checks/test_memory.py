"""The memory check against real processes: found by pid, pidfile and match."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent.checks import check_memory, find_bbs_process
from agent.checks.memory import ProcessNotFound, program_words


def test_found_by_pid(fake_bbs) -> None:
    result = check_memory(pid=fake_bbs.pid)
    assert result.healthy, result.error
    assert result.pid == fake_bbs.pid and result.found_by == "pid"
    # The child touched 40 MB of ballast: its RSS is the child's, not ours.
    assert result.process_rss_mb is not None and result.process_rss_mb >= 40
    assert result.process_vms_mb is not None and result.process_vms_mb >= result.process_rss_mb
    assert result.system_percent is not None and 0 < result.system_percent <= 100


def test_found_by_pidfile(fake_bbs) -> None:
    result = check_memory(pidfile=fake_bbs.pidfile)
    assert result.healthy, result.error
    assert (result.pid, result.found_by) == (fake_bbs.pid, "pidfile")


def test_found_by_program_match(fake_bbs) -> None:
    result = check_memory(match=fake_bbs.token)
    assert result.healthy, result.error
    assert (result.pid, result.found_by) == (fake_bbs.pid, "match")


def test_pid_is_preferred_to_pidfile_and_match(fake_bbs, tmp_path: Path) -> None:
    stale = tmp_path / "stale.pid"
    stale.write_text("999999999\n")
    found = find_bbs_process(fake_bbs.pid, stale, "no-such-program")
    assert (found.process.pid, found.found_by) == (fake_bbs.pid, "pid")


def test_rss_over_threshold_is_unhealthy(fake_bbs) -> None:
    result = check_memory(pid=fake_bbs.pid, rss_threshold_mb=10)
    assert not result.healthy
    assert result.error is None
    fields = result.to_fields()
    assert fields["warning_threshold_process_mb"] == 10
    assert fields["process_rss_mb"] >= 40  # type: ignore[operator]


def test_system_over_threshold_is_unhealthy(fake_bbs) -> None:
    assert not check_memory(pid=fake_bbs.pid, system_threshold_percent=0).healthy


def test_an_argument_is_not_a_program(fake_bbs) -> None:
    # `grep TOKEN`, `sh -c "... TOKEN"` and `python -c ... TOKEN` mention the BBS
    # but are not it.
    mentions = [
        subprocess.Popen(["sh", "-c", f"sleep 60; : {fake_bbs.token}"], start_new_session=True),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", fake_bbs.token]),
    ]
    try:
        fake_bbs.stop()
        result = check_memory(match=fake_bbs.token)
        assert not result.healthy
        assert result.error == f"no BBS process found whose program matches {fake_bbs.token!r}"
    finally:
        os.killpg(mentions[0].pid, signal.SIGKILL)
        mentions[1].kill()
        for process in mentions:
            process.wait(10)


SELF_SEARCH = """
import json, subprocess, sys
from agent.checks import check_memory
token = sys.argv[1]
if sys.argv[2] == "outer":
    # The parent of the checker runs the same program: it must not be found either.
    inner = subprocess.run([sys.executable, __file__, token, "inner"], capture_output=True,
                           text=True, timeout=60)
    print(inner.stdout, end="")
else:
    print(json.dumps(check_memory(match=token).to_fields()))
"""


def test_the_checker_and_its_parent_are_never_the_bbs(tmp_path: Path) -> None:
    token = f"mtbbs_self_{os.getpid()}"
    script = tmp_path / f"{token}.py"
    script.write_text(SELF_SEARCH)
    done = subprocess.run([sys.executable, str(script), token, "outer"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    fields = json.loads(done.stdout)
    assert fields["healthy"] is False
    assert fields["pid"] is None
    assert "no BBS process found" in fields["error"]


def test_missing_process_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    result = check_memory(pid=gone.pid)
    assert not result.healthy
    assert result.error == f"BBS process {gone.pid} (configured pid) is not running"
    assert result.process_rss_mb is None
    assert result.system_percent is not None, "system memory is still measured"


def test_zombie_is_not_running() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped until wait() below, so it stays a zombie; psutil waits for that
        # state without reaping it.
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        result = check_memory(pid=child.pid)
        assert not result.healthy
        assert result.error == f"BBS process {child.pid} (configured pid) has exited (zombie)"
    finally:
        child.wait(10)


@pytest.mark.parametrize(
    ("content", "phrase"),
    [(None, "does not exist"), ("", "does not hold a process id"),
     ("garbage\n", "does not hold a process id"), ("-5\n", "does not hold a process id")],
)
def test_bad_pidfiles(tmp_path: Path, content: str | None, phrase: str) -> None:
    pidfile = tmp_path / "bbs.pid"
    if content is not None:
        pidfile.write_text(content)
    result = check_memory(pidfile=pidfile)
    assert not result.healthy
    assert phrase in (result.error or "")


def test_own_pid_is_refused() -> None:
    with pytest.raises(ProcessNotFound, match="checker itself"):
        find_bbs_process(pid=os.getpid())


def test_nothing_configured() -> None:
    result = check_memory()
    assert not result.healthy
    assert "no way to find the BBS process" in (result.error or "")


@pytest.mark.parametrize(
    ("cmdline", "words"),
    [
        (["/usr/bin/python3", "-u", "backend/app/protocols/telnet_server.py"],
         ["python3", "backend/app/protocols/telnet_server.py"]),
        (["python3", "-X", "dev", "-m", "app.protocols.telnet_server"],
         ["python3", "app.protocols.telnet_server"]),
        (["python3", "-mapp.telnet_server"], ["python3", "app.telnet_server"]),
        (["python3", "-c", "telnet_server"], ["python3"]),
        (["grep", "telnet_server"], ["grep"]),
        (["/opt/bin/telnet_server", "--port", "23"], ["telnet_server"]),
        ([], []),
    ],
)
def test_program_words(cmdline: list[str], words: list[str]) -> None:
    assert program_words(cmdline) == words
