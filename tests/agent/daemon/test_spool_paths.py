"""``mtbbs-agent run --once`` given spool paths that are not its own to use.

The agent runs as a real process beside a real BBS database (made by
``mtbbs-demo-bbs --init-only``, as the demo BBS makes it). Every refusal is
one line on stderr naming the path, exit 3, and leaves every file as it was;
only a spool the agent made that SQLite finds damaged is set aside, with its
losses logged. Unreadable and read-only files need an agent that obeys file
modes: as root it runs without the capabilities that let root read and
write any file (``setpriv`` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.spool import Spool
from wire.messages import Report

pytestmark = pytest.mark.e2e

DROP_FILE_CAPABILITIES = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                          "--inh-caps=-dac_override,-dac_read_search"]


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def report(epoch: int, seq: int, tag: str = "t") -> Report:
    return Report(host="bbs-test", agent_version="t", epoch=epoch, seq=seq,
                  observed_at=1.8e9 + seq, checks={"disk_space": {"healthy": True, "tag": tag}})


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory`` with its bytes and mode."""
    return {str(p.relative_to(directory)): (p.read_bytes() if os.access(p, os.R_OK) else b"?",
                                            p.stat().st_mode)
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Path]:
    """The test's directory; its files' modes are restored for the clean-up."""
    yield tmp_path
    for item in tmp_path.rglob("*"):
        item.chmod(0o700)


@pytest.fixture
def bbs_database(place: Path, command: Callable[[str], str], clean_env: dict[str, str]) -> Path:
    """A real BBS database, created and seeded by the demo BBS."""
    path = place / "data" / "mtbbs.db"
    made = subprocess.run([command("mtbbs-demo-bbs"), "--db", str(path), "--init-only"],
                          env=clean_env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return path


@pytest.fixture
def run_agent(command: Callable[[str], str], clean_env: dict[str, str],
              bbs_database: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_agent(spool, unprivileged=False)``: one --once cycle with Redis down."""

    def run(spool: Path, *, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
        args = [command("mtbbs-agent"), "run", "--once", "--redis-url", dead_url(),
                "--host", "bbs-test", "--db", str(bbs_database),
                "--data-dir", str(bbs_database.parent), "--no-probe", "--spool", str(spool)]
        if unprivileged and os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: file modes do not bind root")
            args = [*DROP_FILE_CAPABILITIES, *args]
        env = dict(clean_env)
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)

    return run


def refused_with(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [text], result.stderr


def test_the_bbs_database_is_refused_and_untouched(run_agent: Callable[..., Any],
                                                   bbs_database: Path) -> None:
    before = snapshot(bbs_database.parent)
    result = run_agent(bbs_database)
    refused_with(result, f"error: spool {bbs_database}: is an SQLite database that this agent "
                 "did not make (tables: access_log, boards, mail, messages, users); left as it "
                 "is; choose another --spool (agent.spool_path)")
    assert snapshot(bbs_database.parent) == before
    with sqlite3.connect(f"file:{bbs_database}?mode=ro", uri=True) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "reports" not in tables and "meta" not in tables


def test_a_directory_is_refused_not_renamed(run_agent: Callable[..., Any], place: Path) -> None:
    directory = place / "spool-dir"
    directory.mkdir()
    (directory / "notes.txt").write_text("the sysop's")
    before = snapshot(place)
    result = run_agent(directory)
    refused_with(result, f"error: spool {directory}: is a directory, not a spool file; left "
                 f"as it is; choose another --spool (agent.spool_path), for example "
                 f"{directory / 'spool.db'}")
    assert snapshot(place) == before
    assert not list(place.glob("*.corrupt-*"))


def test_a_path_under_a_regular_file_is_refused(run_agent: Callable[..., Any],
                                                place: Path) -> None:
    plain = place / "plain.txt"
    plain.write_text("not a directory")
    result = run_agent(plain / "spool.db")
    refused_with(result, f"error: spool {plain / 'spool.db'}: cannot be created: {plain} is a "
                 "file, not a directory")
    assert plain.read_text() == "not a directory"


def test_an_unreadable_spool_is_refused_not_replaced(run_agent: Callable[..., Any],
                                                     place: Path) -> None:
    spool = place / "spool.db"
    with Spool(spool, max_reports=10) as made:
        made.add(report)
    spool.chmod(0o000)
    before = snapshot(place)
    result = run_agent(spool, unprivileged=True)
    refused_with(result, f"error: spool {spool}: cannot be read (Permission denied); left as "
                 "it is; choose another --spool (agent.spool_path)")
    assert snapshot(place) == before


def test_a_read_only_spool_is_refused_naming_the_file(run_agent: Callable[..., Any],
                                                      place: Path) -> None:
    spool = place / "spool.db"
    with Spool(spool, max_reports=10):
        pass
    spool.chmod(0o444)
    before = snapshot(place)
    result = run_agent(spool, unprivileged=True)
    refused_with(result, f"error: spool {spool}: is read-only for this agent ({spool} is not "
                 "writable); give the agent's user write access or choose another --spool")
    assert snapshot(place) == before


def test_a_damaged_spool_of_its_own_is_set_aside_with_the_loss_logged(
        run_agent: Callable[..., Any], place: Path) -> None:
    spool = place / "spool.db"
    with Spool(spool, max_reports=100) as made:
        for _ in range(30):
            made.add(lambda epoch, seq: report(epoch, seq, "z" * 300))
    data = bytearray(spool.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = b"\xa5" * (len(data) - page)
    spool.write_bytes(bytes(data))
    result = run_agent(spool)
    assert result.returncode in (0, 1), result.stderr  # the cycle ran on a new spool
    aside = [p for p in place.glob("spool.db.corrupt-*") if not p.name.endswith("-wal")]
    assert len(aside) == 1
    assert f"Spool {spool} is damaged (" in result.stderr
    assert (f"moved it to {aside[0]} and started a new one; how many reports it held is "
            "unknown" in result.stderr) or "reports in it are lost" in result.stderr
