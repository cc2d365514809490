"""The database check on real SQLite files: healthy, damaged, absent, locked."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

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


def test_corrupted_pages_in_the_middle(make_db) -> None:
    path = make_db("corrupt.db", messages=4000)
    pages = path.stat().st_size // PAGE
    assert pages > 40
    with open(path, "r+b") as handle:
        handle.seek((pages // 2) * PAGE)
        handle.write(bytes((i * 37 + 11) % 256 for i in range(8 * PAGE)))
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


def test_permission_denied(tmp_path: Path) -> None:
    directory = tmp_path / "private"
    directory.mkdir()
    path = directory / "mtbbs.db"
    from sqlite3 import connect

    connection = connect(path)
    connection.execute("CREATE TABLE users (id INTEGER)")
    connection.commit()
    connection.close()
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
    from sqlite3 import connect

    directory = tmp_path / "bbs"
    directory.mkdir()
    path = directory / "mtbbs.db"
    connection = connect(path)
    connection.execute("PRAGMA journal_mode=wal")
    connection.execute("CREATE TABLE users (id INTEGER)")
    connection.commit()
    connection.close()
    os.chown(path, 65534, 65534)
    assert check_database(path).healthy
    for sidecar in directory.iterdir():
        assert sidecar.stat().st_uid == 65534, sidecar.name
