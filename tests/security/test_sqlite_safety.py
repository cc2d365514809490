"""The database check never writes to the BBS's database and never starves its writer.

The longest writer stall is measured by bench/bench_sqlite_stall.py (a
timing does not belong in a test); here: the file is byte-for-byte the same
after checks, the check works on a file it cannot write, and a writer that
commits continuously while the check loops completes every commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.checks.database import check_database

# The BBS: one-row transactions back to back, busy timeout 5 s; prints the
# number of commits and of errors.
WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=5.0, isolation_level=None)
done = errors = 0
for i in range(int(sys.argv[2])):
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO posts (body) VALUES (?)", ("post %d" % i,))
        db.execute("COMMIT")
        done += 1
    except sqlite3.OperationalError as exc:
        errors += 1
        print("error:", exc, file=sys.stderr)
        try:
            db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass
print(done, errors)
"""


def make_db(path: Path, journal_mode: str, rows: int = 3000) -> Path:
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.execute("CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO posts (body) VALUES (?)", (("x" * 500,) for _ in range(rows)))
    db.close()
    return path


def fingerprint(directory: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (size, mtime ns, sha256) of every file in ``directory``."""
    out = {}
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        info = path.stat()
        out[path.name] = (info.st_size, info.st_mtime_ns, hashlib.sha256(data).hexdigest())
    return out


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_check_leaves_the_database_untouched(tmp_path: Path, journal_mode: str) -> None:
    directory = tmp_path / journal_mode
    directory.mkdir()
    db = make_db(directory / "mtbbs.db", journal_mode)
    before = fingerprint(directory)
    for _ in range(3):
        result = check_database(db, run_integrity=True)
        assert result.healthy, result.error
        assert result.integrity == "ok"
    check_database(db, run_integrity=False)
    after = fingerprint(directory)
    assert after["mtbbs.db"] == before["mtbbs.db"]
    if journal_mode == "delete":
        assert after == before  # not even a journal left behind
    else:
        # A WAL reader needs the -shm index; SQLite creates it (and an empty
        # -wal) when no connection has the file open. Nothing is written to
        # the log itself. See the ownership test below for why this matters.
        assert set(after) <= {"mtbbs.db", "mtbbs.db-wal", "mtbbs.db-shm"}
        assert after.get("mtbbs.db-wal", (0,))[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the BBS's and the "
                    "agent's users")
@pytest.mark.parametrize(("journal_mode", "bbs_running"), [
    ("delete", False), ("delete", True), ("wal", True), ("wal", False),
])
def test_check_with_read_only_access(journal_mode: str, bbs_running: bool) -> None:
    """The deployment docs/security.md recommends: the agent may read, not write.

    The database and its directory belong to the BBS's user; the agent's user
    can read both and write neither, so it cannot leave a file behind. The
    check should be healthy whether or not the BBS has the database open.
    """
    bbs_uid, agent_uid = 41000, 41001
    directory = Path(tempfile.mkdtemp(prefix="mtbbs-ro-"))
    try:
        os.chown(directory, bbs_uid, bbs_uid)
        directory.chmod(0o755)
        db = directory / "mtbbs.db"
        context = multiprocessing.get_context("fork")
        opened, release = context.Event(), context.Event()

        def bbs() -> str:
            make_db(db, journal_mode, rows=10)
            if bbs_running:
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    conn.execute("INSERT INTO posts (body) VALUES ('open')")
                    conn.commit()
                    opened.set()
                    release.wait(60)
            return "done"

        holder = context.Process(target=lambda: print(_in_child(bbs_uid, bbs)))
        holder.start()
        if bbs_running:
            assert opened.wait(30)
        else:
            holder.join(30)
        before = fingerprint(directory)

        def check() -> str:
            result = check_database(db, run_integrity=True)
            return "healthy" if result.healthy else f"unhealthy: {result.error}"

        assert _as_user(agent_uid, check) == "healthy"
        assert fingerprint(directory) == before
        release.set()
        holder.join(30)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _in_child(uid: int, action: Callable[[], str]) -> str:
    os.setgid(uid)
    os.setuid(uid)
    return action()


def _as_user(uid: int, action: Callable[[], str]) -> str:
    """Run ``action`` in a forked child under ``uid`` (and gid); its text result."""
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()

    def child() -> None:
        try:
            os.setgid(uid)
            os.setuid(uid)
            queue.put(action())
        except BaseException as exc:
            queue.put(f"error: {type(exc).__name__}: {exc}")

    process = context.Process(target=child)
    process.start()
    process.join(60)
    return str(queue.get())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the BBS's and the "
                    "agent's users")
def test_check_as_another_user_leaves_the_bbs_able_to_write() -> None:
    bbs_uid, agent_uid = 41000, 41001
    directory = Path(tempfile.mkdtemp(prefix="mtbbs-owner-"))
    try:
        directory.chmod(0o777)  # the BBS's data directory, writable by both
        db = directory / "mtbbs.db"

        def create() -> str:
            make_db(db, "wal", rows=10)
            return "created"

        def check() -> str:
            result = check_database(db, run_integrity=True)
            return "healthy" if result.healthy else f"unhealthy: {result.error}"

        def bbs_write() -> str:
            with contextlib.closing(sqlite3.connect(db, timeout=2)) as conn:
                conn.execute("INSERT INTO posts (body) VALUES ('after the check')")
                conn.commit()
            return "written"

        assert _as_user(bbs_uid, create) == "created"
        assert _as_user(agent_uid, check) == "healthy"
        assert _as_user(bbs_uid, bbs_write) == "written"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_check_refuses_to_write_even_if_asked(tmp_path: Path) -> None:
    """The read-only open is real: a write through the same URI form fails."""
    db = make_db(tmp_path / "mtbbs.db", "delete")
    uri = f"file:{db}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn, pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO posts (body) VALUES ('x')")
    assert check_database(db).healthy


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_writer_completes_every_commit_while_the_check_loops(tmp_path: Path,
                                                            journal_mode: str) -> None:
    db = make_db(tmp_path / "mtbbs.db", journal_mode, rows=20_000)
    commits = 400
    stop = threading.Event()
    results = []

    def loop() -> None:
        while not stop.is_set():
            results.append(check_database(db, run_integrity=True, timeout=5.0))

    checker = threading.Thread(target=loop, daemon=True)
    checker.start()
    try:
        writer = subprocess.run([sys.executable, "-c", WRITER, str(db), str(commits)],
                                capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        checker.join(30)
    assert writer.returncode == 0, writer.stderr
    done, errors = (int(x) for x in writer.stdout.split())
    assert (done, errors) == (commits, 0), writer.stderr
    assert results, "the check never ran"
    # A reader can be starved past its busy timeout by a writer that never
    # pauses (rollback journal); that is reported as a lock, nothing worse.
    problems = [r.error or "" for r in results if not r.healthy]
    assert all("locked" in p for p in problems), problems[:3]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 20_000 + commits
