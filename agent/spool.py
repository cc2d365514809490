"""The agent's on-disk spool: every report waits here until Redis has it.

Reports are appended in order and removed only after Redis accepted them, so
a report survives a Redis outage and a SIGKILLed agent (the file is SQLite in
WAL mode; each append is committed before the publisher sees it). The spool
is bounded: past ``max_reports`` the oldest reports are dropped and counted,
and the next report delivered carries that count in ``Report.dropped``.

The spool also keeps the agent's identity in time: its ``epoch`` (chosen when
the file is created, unix milliseconds so a later spool has a larger epoch)
and the last ``seq`` handed out, so sequence numbers keep rising across
restarts. Losing the file means a new epoch, which the collector understands
as a new run of the agent.

One agent per spool: an exclusive lock on ``<spool>.lock`` refuses a second.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

import msgspec

from wire.errors import DecodeError, WireError
from wire.messages import Report, decode, encode

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    observed_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_COUNTERS = ("seq", "dropped_pending", "dropped_total")


class SpoolError(WireError):
    """The spool cannot be used (locked by another agent, unreadable)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"spool {path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Pending:
    """A spooled report ready to send; ``carried`` drops ride on it."""

    rowid: int
    seq: int
    payload: bytes
    carried: int


@dataclass(frozen=True)
class SpoolStatus:
    """What a sysop wants to know about a spool."""

    path: str
    epoch: int
    last_seq: int
    pending: int
    max_reports: int
    oldest_seq: int | None
    newest_seq: int | None
    oldest_observed_at: float | None
    dropped_pending: int
    dropped_total: int


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # One user at a time, but not necessarily the thread that opened it.
    connection = sqlite3.connect(path, isolation_level=None, timeout=10,
                                 check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    connection.executescript(_SCHEMA)
    return connection


class Spool:
    """A bounded, ordered, durable queue of encoded reports."""

    def __init__(self, path: Path, *, max_reports: int, synchronous: str = "full",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_reports = max_reports
        self._lock_file = self._lock()
        try:
            self._db = self._open(synchronous)
            self.epoch = self._init_meta(clock)
        except BaseException:
            self._lock_file.close()
            raise

    # -- opening ------------------------------------------------------------
    def _lock(self) -> IO[bytes]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(f"{self.path}.lock", "ab")  # noqa: SIM115 - held while open
        except OSError as exc:
            raise SpoolError(self.path, f"cannot create it ({exc.strerror})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise SpoolError(self.path, "another agent is using it") from None
        return handle

    def _open(self, synchronous: str) -> sqlite3.Connection:
        try:
            return _connect(self.path, synchronous)
        except sqlite3.DatabaseError as exc:
            # A spool we cannot read is lost anyway; keep it aside for a post
            # mortem and start a new epoch rather than stop monitoring.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            logger.error("Spool %s is unreadable (%s); moved to %s, starting a new one",
                         self.path, exc, aside)
            try:
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                return _connect(self.path, synchronous)
            except (OSError, sqlite3.DatabaseError) as again:
                raise SpoolError(self.path, f"unusable ({again})") from None

    def _init_meta(self, clock: Callable[[], float]) -> int:
        with self._transaction():
            epoch = int(clock() * 1000)
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,)
            ).rowcount
            for name in _COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)", (name,))
        if inserted:
            logger.info("New spool %s: epoch %d", self.path, epoch)
        return self._meta("epoch")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    # -- writing ------------------------------------------------------------
    def add(self, make: Callable[[int, int], Report]) -> Report:
        """Append the report ``make(epoch, seq)`` with the next seq; drop the oldest if full.

        The seq and the report are committed together: a seq is never handed
        out twice, even if the agent is killed right after.
        """
        with self._transaction():
            seq = self._meta("seq") + 1
            report = make(self.epoch, seq)
            cursor = self._db.execute(
                "INSERT INTO reports (seq, observed_at, payload) VALUES (?, ?, ?)",
                (report.seq, report.observed_at, encode(report)),
            )
            self._set_meta("seq", seq)
            newest = int(cursor.lastrowid or 0)
            dropped = self._db.execute(
                "DELETE FROM reports WHERE id <= ?", (newest - self.max_reports,)
            ).rowcount
            if dropped > 0:
                self._set_meta("dropped_pending", self._meta("dropped_pending") + dropped)
                self._set_meta("dropped_total", self._meta("dropped_total") + dropped)
        if dropped > 0:
            logger.warning("Spool full (%d reports): dropped the %d oldest", self.max_reports,
                           dropped)
        return report

    def peek(self, limit: int) -> list[Pending]:
        """Up to ``limit`` reports, oldest first; the first carries the pending drops."""
        rows = self._db.execute(
            "SELECT id, seq, payload FROM reports ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        carried = self._meta("dropped_pending")
        pending: list[Pending] = []
        for rowid, seq, payload in rows:
            if carried and not pending:
                payload = self._with_drops(rowid, bytes(payload), carried)
                if payload is None:
                    continue
                pending.append(Pending(rowid, seq, payload, carried))
            else:
                pending.append(Pending(rowid, seq, bytes(payload), 0))
        return pending

    def _with_drops(self, rowid: int, payload: bytes, carried: int) -> bytes | None:
        try:
            report = decode(payload)
        except DecodeError as exc:
            # Only a damaged file can get here; skip the row rather than stall.
            logger.error("Spooled report %d is unreadable (%s); discarding it", rowid, exc)
            self.delivered(rowid, 0)
            return None
        assert isinstance(report, Report)
        return encode(msgspec.structs.replace(report, dropped=report.dropped + carried))

    def delivered(self, rowid: int, carried: int) -> None:
        """Forget every report up to ``rowid``; ``carried`` drops went with them."""
        with self._transaction():
            self._db.execute("DELETE FROM reports WHERE id <= ?", (rowid,))
            if carried:
                left = max(0, self._meta("dropped_pending") - carried)
                self._set_meta("dropped_pending", left)

    # -- reading ------------------------------------------------------------
    def __len__(self) -> int:
        row = self._db.execute("SELECT count(*) FROM reports").fetchone()
        return int(row[0])

    def status(self) -> SpoolStatus:
        """A snapshot of the spool's counters."""
        return read_status(self._db, self.path, self.max_reports)

    def close(self) -> None:
        """Close the database and release the lock."""
        try:
            self._db.close()
        finally:
            self._lock_file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def read_status(db: sqlite3.Connection, path: Path, max_reports: int) -> SpoolStatus:
    """The status of the spool open on ``db``."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    count, oldest, newest = db.execute(
        "SELECT count(*), min(seq), max(seq) FROM reports").fetchone()
    first = db.execute("SELECT observed_at FROM reports ORDER BY id LIMIT 1").fetchone()
    return SpoolStatus(
        path=str(path),
        epoch=int(meta.get("epoch", 0)),
        last_seq=int(meta.get("seq", 0)),
        pending=int(count),
        max_reports=max_reports,
        oldest_seq=oldest,
        newest_seq=newest,
        oldest_observed_at=first[0] if first else None,
        dropped_pending=int(meta.get("dropped_pending", 0)),
        dropped_total=int(meta.get("dropped_total", 0)),
    )


def inspect(path: Path, max_reports: int) -> SpoolStatus:
    """The status of the spool at ``path`` without locking or changing it."""
    if not Path(path).exists():
        raise SpoolError(Path(path), "does not exist")
    try:
        uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            return read_status(db, Path(path), max_reports)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SpoolError(Path(path), f"cannot be read ({exc})") from None
