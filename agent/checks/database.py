"""The database check: is the BBS's SQLite file there, readable and intact?

The file is opened read-only through SQLite's URI ``mode=ro`` with a busy
timeout, so the check can neither change the database nor wait forever on a
lock. It never holds a lock longer than one statement: it runs in autocommit
mode, fetches every result before the next statement and closes the
connection at once, so the BBS's writers are at most delayed by one
``PRAGMA quick_check``, which their own busy timeout absorbs. Every failure
(missing file, not a database, corruption, a lock, permission denied) is an
unhealthy result with a readable ``error``, never an exception.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path
from urllib.request import pathname2url

from agent.checks.results import DatabaseResult

logger = logging.getLogger(__name__)

NOT_CHECKED = "not checked"
# A quick_check of a badly damaged file lists up to 100 problems; the first
# few tell the sysop enough, and the report stays small.
MAX_PROBLEMS_SHOWN = 3
MAX_INTEGRITY_TEXT = 300


def _open_read_only(path: str, timeout: float) -> sqlite3.Connection:
    uri = "file:" + pathname2url(os.path.abspath(path)) + "?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                 check_same_thread=False)
    # Belt and braces: even a statement we did not mean to write cannot.
    connection.execute("PRAGMA query_only = 1").fetchall()
    return connection


def _summarise(rows: list[tuple[object, ...]]) -> str:
    lines = [str(row[0]) for row in rows if row]
    if lines == ["ok"]:
        return "ok"
    text = "; ".join(lines[:MAX_PROBLEMS_SHOWN])
    if len(lines) > MAX_PROBLEMS_SHOWN:
        text += f" (and {len(lines) - MAX_PROBLEMS_SHOWN} more)"
    return text[:MAX_INTEGRITY_TEXT] if text else "no answer from quick_check"


def _explain(exc: sqlite3.Error, path: str, timeout: float) -> str:
    """A sysop's reading of an SQLite error."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    message = str(exc)
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in message:
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

    table_count: int | None = None
    journal_mode: str | None = None
    integrity = previous_integrity if previous_integrity is not None else NOT_CHECKED
    connection: sqlite3.Connection | None = None
    try:
        connection = _open_read_only(shown, timeout)
        row = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
        table_count = int(row[0])
        mode_row = connection.execute("PRAGMA journal_mode").fetchone()
        journal_mode = str(mode_row[0]) if mode_row else None
        if run_integrity:
            integrity = _summarise(connection.execute("PRAGMA quick_check").fetchall())
    except sqlite3.Error as exc:
        logger.debug("database check of %s failed: %s", shown, exc)
        return DatabaseResult(
            healthy=False, path=shown, size_bytes=size_bytes, size_mb=size_mb,
            table_count=table_count, journal_mode=journal_mode,
            integrity="error" if run_integrity else integrity,
            integrity_checked=run_integrity, error=_explain(exc, shown, timeout),
        )
    except OSError as exc:
        return DatabaseResult(healthy=False, path=shown, size_bytes=size_bytes, size_mb=size_mb,
                              error=f"Cannot read database: {exc.strerror or exc}")
    finally:
        if connection is not None:
            connection.close()

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
