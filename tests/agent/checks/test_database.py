"""The database check on real SQLite files: healthy, damaged, absent, locked."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.checks import NOT_CHECKED, check_database

PAGE = 4096


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_healthy_database_reports_the_seed_fields(mtbbs_db: Path) -> None:
    result = check_database(mtbbs_db)
    assert result.healthy, result.error
    assert result.integrity == "ok"
    assert result.table_count == 8
    assert result.size_bytes == mtbbs_db.stat().st_size
    assert result.size_mb == round(mtbbs_db.stat().st_size / 1024 / 1024, 2)
    assert result.path == str(mtbbs_db)
    assert result.journal_mode == "delete"
    assert result.error is None
    fields = result.to_fields()
    assert list(fields)[:6] == ["healthy", "integrity", "size_bytes", "size_mb", "table_count",
                                "path"]
    assert "error" not in fields


def test_healthy_wal_database(make_db) -> None:
    path = make_db("wal.db", journal_mode="wal")
    result = check_database(path)
    assert result.healthy, result.error
    assert result.journal_mode == "wal"
    assert result.table_count == 8


def test_the_check_does_not_change_the_file(mtbbs_db: Path) -> None:
    before = digest(mtbbs_db)
    check_database(mtbbs_db)
    assert digest(mtbbs_db) == before
    assert not Path(f"{mtbbs_db}-journal").exists()


def test_skipping_integrity_reports_the_previous_value(mtbbs_db: Path) -> None:
    skipped = check_database(mtbbs_db, run_integrity=False)
    assert skipped.healthy and skipped.integrity == NOT_CHECKED
    assert not skipped.integrity_checked
    carried = check_database(mtbbs_db, run_integrity=False, previous_integrity="ok")
    assert carried.healthy and carried.integrity == "ok"
    bad = check_database(mtbbs_db, run_integrity=False,
                         previous_integrity="*** in database main *** Page 7: btree broken")
    assert not bad.healthy
    assert "integrity check failed" in (bad.error or "")


def test_missing_file(tmp_path: Path) -> None:
    result = check_database(tmp_path / "absent.db")
    assert not result.healthy
    assert result.error == f"Database file not found: {tmp_path / 'absent.db'}"
    assert not (tmp_path / "absent.db").exists(), "a read-only check must not create the file"


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("this is a text file, not SQLite\n" * 200)
    result = check_database(path)
    assert not result.healthy
    assert (result.error or "").startswith("Not an SQLite database")


def test_a_directory_in_place_of_the_file(tmp_path: Path) -> None:
    result = check_database(tmp_path)
    assert not result.healthy
    assert result.error == f"Not a regular file: {tmp_path}"


def overwrite_middle_pages(path: Path, pages: int) -> None:
    """Garbage over eight pages in the middle of a database of ``pages`` pages."""
    with open(path, "r+b") as handle:
        handle.seek((pages // 2) * PAGE)
        handle.write(bytes((i * 37 + 11) % 256 for i in range(8 * PAGE)))


def test_corrupted_pages_in_the_middle(make_db) -> None:
    path = make_db("corrupt.db", messages=4000)
    pages = path.stat().st_size // PAGE
    assert pages > 40
    overwrite_middle_pages(path, pages)
    result = check_database(path)
    assert not result.healthy
    error = result.error or ""
    assert error.startswith(("Database integrity check failed", "Database is corrupted")), error
    assert result.integrity != "ok"


def test_truncated_file(make_db) -> None:
    path = make_db("truncated.db", messages=4000)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    result = check_database(path)
    assert not result.healthy
    error = result.error or ""
    assert error.startswith(("Database integrity check failed", "Database is corrupted")), error


def test_empty_file_has_no_tables(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    result = check_database(path)
    assert not result.healthy
    assert result.table_count == 0
    assert "no tables" in (result.error or "")


LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "wal":
    connection.execute("PRAGMA locking_mode=EXCLUSIVE")
connection.execute("BEGIN EXCLUSIVE")
connection.execute("INSERT INTO system_settings VALUES ('lock', 'held')")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
"""


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_locked_database(make_db, journal_mode: str) -> None:
    path = make_db(f"locked-{journal_mode}.db", journal_mode=journal_mode)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), journal_mode],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        result = check_database(path, timeout=0.2)
        assert not result.healthy
        assert (result.error or "").startswith("Database is locked"), result.error
    finally:
        locker.communicate("\n", timeout=10)
    assert check_database(path).healthy, "the lock is gone once the holder lets go"


# Permission denied: root reads anything, so as root the check runs in a forked
# child that first drops to the unprivileged user ``nobody``.
def _check_as(uid: int | None, path: Path) -> dict[str, object]:
    if uid is None:
        return check_database(path).to_fields()  # type: ignore[return-value]
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            text = json.dumps(check_database(path).to_fields())
            os.write(write_end, text.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        data = handle.read()
    os.waitpid(child, 0)
    return json.loads(data)


def users_db(path: Path, *, wal: bool = False) -> Path:
    """A small database with an empty users table, closed again."""
    connection = sqlite3.connect(path)
    if wal:
        connection.execute("PRAGMA journal_mode=wal")
    connection.execute("CREATE TABLE users (id INTEGER)")
    connection.commit()
    connection.close()
    return path


def test_permission_denied(tmp_path: Path) -> None:
    directory = tmp_path / "private"
    directory.mkdir()
    path = users_db(directory / "mtbbs.db")
    path.chmod(0o000)
    uid = None
    if os.geteuid() == 0:
        try:
            uid = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            pytest.skip("running as root and there is no user 'nobody' to drop to")
        tmp_path.chmod(0o755)
        directory.chmod(0o755)
    try:
        fields = _check_as(uid, path)
    finally:
        path.chmod(0o600)
    assert fields["healthy"] is False
    assert str(fields["error"]).startswith("Permission denied"), fields["error"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root checker could take the files over")
def test_root_checker_leaves_wal_files_to_the_database_owner(tmp_path: Path) -> None:
    # A WAL database whose BBS is stopped has no -wal/-shm; a read-only reader
    # creates them. Run as root (cron), they must still belong to the BBS's user.
    directory = tmp_path / "bbs"
    directory.mkdir()
    path = users_db(directory / "mtbbs.db", wal=True)
    os.chown(path, 65534, 65534)
    assert check_database(path).healthy
    for sidecar in directory.iterdir():
        assert sidecar.stat().st_uid == 65534, sidecar.name


# -- WAL databases nobody has open ----------------------------------------------------------
#
# Closed, a WAL database has no -wal/-shm; a read-only reader needs them. An agent that may
# not create them as the file's owner reads the file with immutable=1 instead and creates
# nothing (tests/security/test_sqlite_safety.py runs the two-user deployments as root).


def sidecars(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def closed_wal_db(path: Path) -> Path:
    """A small WAL database, closed: no -wal, no -shm."""
    users_db(path, wal=True)
    assert sidecars(path) == []
    return path


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp root is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="mtbbs-check-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_header_tells_wal_from_rollback(make_db, tmp_path: Path) -> None:
    from agent.checks.database import _is_wal_file

    assert _is_wal_file(str(make_db("w.db", journal_mode="wal")))
    assert not _is_wal_file(str(make_db("d.db", journal_mode="delete")))
    (tmp_path / "junk.db").write_bytes(b"SQLite format 3\x00" + b"\x02" * 100)
    assert _is_wal_file(str(tmp_path / "junk.db"))  # a header is all it reads
    (tmp_path / "text.db").write_text("hello")
    assert not _is_wal_file(str(tmp_path / "text.db"))
    assert not _is_wal_file(str(tmp_path / "absent.db"))


def test_a_closed_wal_database_in_a_directory_the_agent_cannot_write(
        reachable_dir: Path) -> None:
    directory = reachable_dir / "bbs"
    directory.mkdir()
    path = closed_wal_db(directory / "mtbbs.db")
    uid = None
    if os.geteuid() == 0:  # root may write anywhere: check as a user who may not
        try:
            uid = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            pytest.skip("running as root and there is no user 'nobody' to drop to")
    directory.chmod(0o555)
    try:
        fields = _check_as(uid, path)
    finally:
        directory.chmod(0o755)
    assert fields["healthy"] is True, fields.get("error")
    assert fields["integrity"] == "ok" and fields["journal_mode"] == "wal"
    assert fields["table_count"] == 1
    assert sidecars(path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check as another user")
def test_a_checker_who_is_not_the_owner_creates_no_files(reachable_dir: Path) -> None:
    path = closed_wal_db(reachable_dir / "bbs.db")
    reachable_dir.chmod(0o777)  # the agent could create files here, as itself
    fields = _check_as(pwd.getpwnam("nobody").pw_uid, path)
    assert fields["healthy"] is True, fields.get("error")
    assert fields["journal_mode"] == "wal"
    assert sidecars(path) == []


@pytest.fixture
def as_a_stranger(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The check behaves as an agent that is not the database's owner; the list
    records, per open, whether it was immutable."""
    from agent.checks import database

    opens: list[bool] = []
    real_open = database._open_read_only

    def recording_open(path: str, timeout: float, *, immutable: bool = False) -> Any:
        opens.append(immutable)
        return real_open(path, timeout, immutable=immutable)

    monkeypatch.setattr(database, "_may_create_sidecars", lambda path, info: False)
    monkeypatch.setattr(database, "_open_read_only", recording_open)
    return opens


def test_the_bbs_opening_the_file_during_the_read_means_reading_again(
        make_db, as_a_stranger: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from agent.checks import database

    path = make_db("bbs.db", journal_mode="wal")
    bbs: list[sqlite3.Connection] = []
    opened = database._open_read_only

    def bbs_opens_meanwhile(name: str, timeout: float, *, immutable: bool = False) -> Any:
        connection = opened(name, timeout, immutable=immutable)
        if not bbs:  # the BBS starts and writes while the first read is under way
            writer = sqlite3.connect(path, isolation_level=None)
            writer.execute("INSERT INTO system_settings VALUES ('during', 'the check')")
            bbs.append(writer)
        return connection

    monkeypatch.setattr(database, "_open_read_only", bbs_opens_meanwhile)
    try:
        result = check_database(path)
        assert result.healthy, result.error
        # First without locks (nobody had it open), then, the BBS's -wal and -shm
        # being there, the normal read-only way, which creates nothing.
        assert as_a_stranger == [True, False]
        assert result.journal_mode == "wal" and result.integrity == "ok"
    finally:
        for connection in bbs:
            connection.close()


def test_an_error_while_the_file_changed_is_not_called_corruption(
        make_db, as_a_stranger: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from agent.checks import database

    path = make_db("bbs.db", journal_mode="wal")
    opened = database._open_read_only

    def torn_read(name: str, timeout: float, *, immutable: bool = False) -> Any:
        if not as_a_stranger:
            as_a_stranger.append(immutable)
            os.utime(path, ns=(1, 1))  # a checkpoint of the BBS rewrote pages meanwhile
            raise sqlite3.DatabaseError("database disk image is malformed")
        return opened(name, timeout, immutable=immutable)  # records too

    monkeypatch.setattr(database, "_open_read_only", torn_read)
    result = check_database(path)
    assert result.healthy, result.error
    assert as_a_stranger == [True, True]


def test_a_file_that_keeps_changing_is_busy_not_corrupt(
        make_db, as_a_stranger: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from agent.checks import database

    path = make_db("bbs.db", journal_mode="wal")

    def always_torn(name: str, timeout: float, *, immutable: bool = False) -> Any:
        as_a_stranger.append(immutable)
        os.utime(path, ns=(len(as_a_stranger), len(as_a_stranger)))
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(database, "_open_read_only", always_torn)
    result = check_database(path)
    assert not result.healthy
    assert (result.error or "").startswith("Database is busy"), result.error
    assert "corrupt" not in (result.error or "")
    assert as_a_stranger == [True] * database.MAX_ATTEMPTS


def test_a_real_corruption_is_still_reported_without_locks(make_db,
                                                           as_a_stranger: list[bool]) -> None:
    path = make_db("corrupt-wal.db", journal_mode="wal", messages=4000)
    pages = path.stat().st_size // PAGE
    overwrite_middle_pages(path, pages)
    result = check_database(path)
    assert not result.healthy
    error = result.error or ""
    assert error.startswith(("Database integrity check failed", "Database is corrupted")), error
    assert as_a_stranger == [True]
    assert sidecars(path) == []


def test_a_wal_without_its_shm_is_not_guessed_at(make_db, as_a_stranger: list[bool]) -> None:
    path = make_db("crashed.db", journal_mode="wal")
    Path(f"{path}-wal").write_bytes(b"")
    result = check_database(path)
    assert not result.healthy
    assert (result.error or "").startswith("WAL database not checked"), result.error
    assert result.integrity == NOT_CHECKED
    assert as_a_stranger == []
    assert sidecars(path) == ["crashed.db-wal"]
