"""The database check: is the BBS's SQLite file there, readable and intact?

The file is opened read-only through SQLite's URI ``mode=ro`` with a busy
timeout, so the check can neither change the database nor wait forever on a
lock. It never holds a lock longer than one statement: it runs in autocommit
mode, fetches every result before the next statement and closes the
connection at once, so the BBS's writers are at most delayed by one
``PRAGMA quick_check``, which their own busy timeout absorbs. Every failure
(missing file, not a database, corruption, a lock, permission denied) is an
unhealthy result with a readable ``error``, never an exception. A database
that is only locked (a busy writer held it past the timeout) is rated
``warning`` and keeps the last integrity result: it says nothing about
corruption. Every other problem is ``critical``.

**WAL databases nobody has open.** A read-only connection to a WAL database
needs its ``-shm`` (and ``-wal``) files; when no process has the database
open they do not exist, and SQLite creates them for the reader. The agent
may be unable to (a directory it may only read: "attempt to write a
readonly database"), or may create them as its own user, which then locks
the BBS out of its database. So when the file's header says WAL, no
``-wal`` exists, and the agent could not create the files as the file's
owner (it is neither root, whom SQLite lets hand them to the owner, nor the
owner, or the directory is not writable for it), the file is opened with
``immutable=1``: SQLite reads the main file alone and creates nothing. With
no ``-wal`` that file holds every committed transaction. The BBS could open
the database while we read without locks, so afterwards the ``-wal``/
``-shm`` files and the main file's identity (inode, size, times) are
compared with before: if anything changed, whatever was read (or the error)
is discarded and the check starts again, this time on the normal path with
the BBS's files; if the BBS keeps interfering, the result says the database
was busy, never that it is corrupt. (What this could miss: the BBS opening,
writing, checkpointing and closing the database all within one read and
within the file system's timestamp tick of an earlier change.) A ``-wal``
without a ``-shm`` (left by a process that did not close the database)
cannot be read this way without creating the ``-shm``; that is reported as
not checked, not guessed at.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from agent.checks.results import DatabaseResult
from wire.state import SEVERITY_CRITICAL, SEVERITY_WARNING

logger = logging.getLogger(__name__)

NOT_CHECKED = "not checked"
# A quick_check of a badly damaged file lists up to 100 problems; the first
# few tell the sysop enough, and the report stays small.
MAX_PROBLEMS_SHOWN = 3
MAX_INTEGRITY_TEXT = 300
# Reads started again after the file changed under an immutable read.
MAX_ATTEMPTS = 3

_HEADER_MAGIC = b"SQLite format 3\x00"


def _open_read_only(path: str, timeout: float, *, immutable: bool = False) -> sqlite3.Connection:
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
    if immutable:
        uri += "&immutable=1"
    connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                 check_same_thread=False)
    # Belt and braces: even a statement we did not mean to write cannot.
    connection.execute("PRAGMA query_only = 1").fetchall()
    return connection


def _is_wal_file(path: str) -> bool:
    """Whether the database header says WAL (file format versions 2, bytes 18-19)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    return header[:16] == _HEADER_MAGIC and header[18:20] == b"\x02\x02"


@dataclass(frozen=True)
class _Sight:
    """What an immutable read relies on not changing while it reads."""

    wal: bool
    shm: bool
    identity: tuple[int, int, int, int, int] | None


def _sight(path: str) -> _Sight:
    try:
        info = os.stat(path)
        identity: tuple[int, int, int, int, int] | None = (
            info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    except OSError:
        identity = None
    return _Sight(wal=os.path.lexists(path + "-wal"), shm=os.path.lexists(path + "-shm"),
                  identity=identity)


def _may_create_sidecars(path: str, info: os.stat_result) -> bool:
    """Whether SQLite could create -wal/-shm here owned by the database's owner.

    As root, SQLite hands new -wal/-shm files to the database file's owner; as
    the owner they are the owner's anyway. Anyone else would own them.
    """
    euid = os.geteuid()
    if euid not in (0, info.st_uid):
        return False
    directory = os.path.dirname(os.path.abspath(path))
    return os.access(directory, os.W_OK | os.X_OK)


class _NotChecked(Exception):
    """The file cannot be read without changing what the BBS finds next to it."""


def _summarise(rows: list[tuple[object, ...]]) -> str:
    lines = [str(row[0]) for row in rows if row]
    if lines == ["ok"]:
        return "ok"
    text = "; ".join(lines[:MAX_PROBLEMS_SHOWN])
    if len(lines) > MAX_PROBLEMS_SHOWN:
        text += f" (and {len(lines) - MAX_PROBLEMS_SHOWN} more)"
    return text[:MAX_INTEGRITY_TEXT] if text else "no answer from quick_check"


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_lock(exc: sqlite3.Error) -> bool:
    """Whether the error is another connection's lock, not a fault of the file."""
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
        or "locked" in str(exc)


def _explain(exc: sqlite3.Error, path: str, timeout: float) -> str:
    """A sysop's reading of an SQLite error."""
    primary = _primary_code(exc)
    message = str(exc)
    if _is_lock(exc):
        return f"Database is locked (still busy after {timeout:g} s): {message}"
    if primary == sqlite3.SQLITE_NOTADB or "not a database" in message:
        return f"Not an SQLite database: {message}"
    if primary == sqlite3.SQLITE_CORRUPT or "malformed" in message:
        return f"Database is corrupted: {message}"
    if primary in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH) or (
        primary == sqlite3.SQLITE_CANTOPEN and not os.access(path, os.R_OK)
    ):
        return f"Permission denied: cannot read {path}"
    if primary == sqlite3.SQLITE_CANTOPEN:
        return f"Cannot open database: {message}"
    if primary == sqlite3.SQLITE_IOERR:
        return f"I/O error reading database: {message}"
    return f"Database error: {message}"


def check_database(
    path: str | Path,
    *,
    timeout: float = 2.0,
    run_integrity: bool = True,
    previous_integrity: str | None = None,
) -> DatabaseResult:
    """Check the SQLite database at ``path``.

    With ``run_integrity`` False the (expensive) ``PRAGMA quick_check`` is
    skipped and ``previous_integrity`` (or ``not checked``) is reported, and
    judged, instead.
    """
    result = _check_database(path, timeout=timeout, run_integrity=run_integrity,
                             previous_integrity=previous_integrity)
    if result.healthy or result.severity is not None:
        return result
    return dataclasses.replace(result, severity=SEVERITY_CRITICAL)


def _check_database(path: str | Path, *, timeout: float, run_integrity: bool,
                    previous_integrity: str | None) -> DatabaseResult:
    shown = str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return DatabaseResult(healthy=False, path=shown,
                              error=f"Database file not found: {shown}")
    except PermissionError:
        return DatabaseResult(healthy=False, path=shown,
                              error=f"Permission denied: cannot reach {shown}")
    except OSError as exc:
        return DatabaseResult(healthy=False, path=shown,
                              error=f"Cannot stat database: {exc.strerror or exc}")
    if not stat.S_ISREG(info.st_mode):
        return DatabaseResult(healthy=False, path=shown,
                              error=f"Not a regular file: {shown}")
    size_bytes = info.st_size
    size_mb = round(size_bytes / (1024 * 1024), 2)
    if not os.access(path, os.R_OK):
        return DatabaseResult(healthy=False, path=shown, size_bytes=size_bytes, size_mb=size_mb,
                              error=f"Permission denied: cannot read {shown}")

    integrity = previous_integrity if previous_integrity is not None else NOT_CHECKED
    wal_file = _is_wal_file(shown)
    for _ in range(MAX_ATTEMPTS):
        table_count: int | None = None
        journal_mode: str | None = None
        before = _sight(shown)
        immutable = wal_file and not before.wal and not _may_create_sidecars(shown, info)
        connection: sqlite3.Connection | None = None
        failure: sqlite3.Error | OSError | _NotChecked | None = None
        try:
            if wal_file and before.wal and not before.shm \
                    and not _may_create_sidecars(shown, info):
                raise _NotChecked(
                    f"WAL database not checked: {shown}-wal exists without {shown}-shm (left "
                    "by a process that did not close the database), and the agent cannot "
                    "create the -shm file for the database's owner; the BBS recovers it when "
                    "it opens the database")
            connection = _open_read_only(shown, timeout, immutable=immutable)
            row = connection.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
            table_count = int(row[0])
            if immutable:
                journal_mode = "wal"  # what the header says; SQLite reports "delete" here
            else:
                mode_row = connection.execute("PRAGMA journal_mode").fetchone()
                journal_mode = str(mode_row[0]) if mode_row else None
            if run_integrity:
                integrity = _summarise(connection.execute("PRAGMA quick_check").fetchall())
        except (sqlite3.Error, OSError, _NotChecked) as exc:
            failure = exc
        finally:
            if connection is not None:
                connection.close()
        if immutable and _sight(shown) != before:
            # The BBS opened (or changed) the file while we read it without
            # locks: neither what we read nor an error means anything.
            logger.debug("database %s changed during an immutable read; reading again", shown)
            integrity = previous_integrity if previous_integrity is not None else NOT_CHECKED
            continue
        break
    else:
        return DatabaseResult(
            healthy=False, path=shown, size_bytes=size_bytes, size_mb=size_mb,
            journal_mode="wal", integrity=previous_integrity or NOT_CHECKED,
            severity=SEVERITY_WARNING,
            error=f"Database is busy: it changed during each of {MAX_ATTEMPTS} reads (the BBS "
            "opened it); it is checked again next cycle")

    if isinstance(failure, sqlite3.Error) and _is_lock(failure):
        logger.debug("database %s is locked: %s", shown, failure)
        return DatabaseResult(
            healthy=False, path=shown, size_bytes=size_bytes, size_mb=size_mb,
            table_count=table_count, journal_mode=journal_mode,
            integrity=previous_integrity or NOT_CHECKED, severity=SEVERITY_WARNING,
            error=_explain(failure, shown, timeout))
    if isinstance(failure, sqlite3.Error):
        logger.debug("database check of %s failed: %s", shown, failure)
        return DatabaseResult(
            healthy=False, path=shown, size_bytes=size_bytes, size_mb=size_mb,
            table_count=table_count, journal_mode=journal_mode,
            integrity="error" if run_integrity else integrity,
            integrity_checked=run_integrity, error=_explain(failure, shown, timeout),
        )
    if isinstance(failure, _NotChecked):
        return DatabaseResult(
            healthy=False, path=shown, size_bytes=size_bytes, size_mb=size_mb,
            journal_mode="wal", integrity=NOT_CHECKED, error=str(failure))
    if isinstance(failure, OSError):
        return DatabaseResult(healthy=False, path=shown, size_bytes=size_bytes, size_mb=size_mb,
                              error=f"Cannot read database: {failure.strerror or failure}")

    error = None
    if integrity not in ("ok", NOT_CHECKED):
        error = f"Database integrity check failed: {integrity}"
    elif table_count == 0:
        error = "Database has no tables (empty or truncated file)"
    return DatabaseResult(
        healthy=error is None, path=shown, integrity=integrity, size_bytes=size_bytes,
        size_mb=size_mb, table_count=table_count, integrity_checked=run_integrity,
        journal_mode=journal_mode, error=error,
    )
