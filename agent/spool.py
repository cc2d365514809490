"""The agent's on-disk spool: every report waits here until Redis has it.

Reports are appended in order and removed only after Redis accepted them, so
a report survives a Redis outage and a SIGKILLed agent (the file is SQLite in
WAL mode; each append is committed before the publisher sees it). The spool
is bounded: past ``max_reports`` the oldest reports are dropped and counted,
and the next report delivered carries that count in ``Report.dropped``.
Growth is logged as it passes 10, 50 and 90 % of the bound, and dropping
once when it starts and once when it ends, not for every report.

The spool also keeps the agent's identity in time: its ``epoch`` (chosen when
the file is created, unix milliseconds so a later spool has a larger epoch)
and the last ``seq`` handed out, so sequence numbers keep rising across
restarts. Losing the file means a new epoch, which the collector understands
as a new run of the agent.

One agent per spool: an exclusive lock on ``<spool>.lock`` refuses a second.

The spool path is checked before anything is written: the agent only ever
opens a file it made itself, marked by SQLite's ``application_id`` in the
file header (or, from agents before that mark, by exactly the spool's own
tables). A directory, an unreadable file, any other file or database (the
BBS's own included) or a path under a regular file is refused with a
:class:`SpoolError` naming the path, and left exactly as it was. Only a
spool of ours that SQLite finds damaged is moved aside (``.corrupt-<time>``)
and replaced, with the number of reports lost in the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
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
# Fill levels (percent of max_reports) announced once each as the spool grows.
FILL_LEVELS = (10, 50, 90)
_TABLES = {"reports", "meta"}
# "MTBS" as a big-endian integer. SQLite keeps it in the file header, so a
# spool is recognisable without trusting anything beyond the first page.
APPLICATION_ID = 0x4D544253
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100
_APPLICATION_ID_OFFSET = 68
_LEAVE_IT = "left as it is; choose another --spool (agent.spool_path)"


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
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    except BaseException:
        connection.close()
        raise
    return connection


def _read_only(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro{'&immutable=1' if immutable else ''}"
    return sqlite3.connect(uri, uri=True, timeout=10)


def check_place(path: Path) -> None:
    """Refuse a spool path that is a directory, a special file or under a file.

    Nothing is created or changed here.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        raise SpoolError(path, f"cannot be created: {_file_above(path)} is a file, not a "
                         "directory") from None
    except OSError as exc:
        raise SpoolError(path, f"cannot be examined ({exc.strerror})") from None
    if info is None:
        above = _file_above(path)
        if above is not None:
            raise SpoolError(path, f"cannot be created: {above} is a file, not a directory")
        return
    if stat.S_ISDIR(info.st_mode):
        raise SpoolError(path, f"is a directory, not a spool file; {_LEAVE_IT}, for example "
                         f"{path / 'spool.db'}")
    if not stat.S_ISREG(info.st_mode):
        raise SpoolError(path, f"is not a regular file; {_LEAVE_IT}")


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a directory."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


def identify(path: Path) -> str:
    """``"missing"``, ``"ours"`` or ``"legacy"`` (an agent's spool before the mark).

    Anything else raises :class:`SpoolError`: the file is not the agent's to
    use. Only reads.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(_HEADER_BYTES)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise SpoolError(path, f"cannot be read ({exc.strerror}); {_LEAVE_IT}") from None
    if not header:
        raise SpoolError(path, f"is an empty file, not a spool this agent made; {_LEAVE_IT}")
    if not header.startswith(_SQLITE_MAGIC) or len(header) < _HEADER_BYTES:
        raise SpoolError(path, f"is not an SQLite database, so not a spool this agent made; "
                         f"{_LEAVE_IT}")
    application_id = int.from_bytes(
        header[_APPLICATION_ID_OFFSET:_APPLICATION_ID_OFFSET + 4], "big")
    if application_id == APPLICATION_ID:
        return "ours"
    if application_id != 0:
        raise SpoolError(path, f"is the SQLite database of another application (application_id "
                         f"{application_id:#x}), not a spool; {_LEAVE_IT}")
    try:
        # immutable: no lock and no -shm or -wal file made beside someone
        # else's database. Only an agent killed before its first checkpoint
        # leaves its tables in the -wal alone; then read it the usual way.
        tables, has_epoch = _spool_tables(path, immutable=True)
        if not tables and Path(f"{path}-wal").exists():
            tables, has_epoch = _spool_tables(path, immutable=False)
    except sqlite3.Error as exc:
        raise SpoolError(path, f"is an SQLite database that cannot be read as a spool ({exc}); "
                         f"{_LEAVE_IT}") from None
    if not has_epoch:
        shown = ", ".join(sorted(tables)[:5]) or "none"
        raise SpoolError(path, f"is an SQLite database that this agent did not make (tables: "
                         f"{shown}); {_LEAVE_IT}")
    return "legacy"


def _spool_tables(path: Path, *, immutable: bool) -> tuple[set[str], bool]:
    """The tables of the database at ``path``, and whether it has a spool's epoch."""
    db = _read_only(path, immutable=immutable)
    try:
        tables = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        has_epoch = tables == _TABLES and db.execute(
            "SELECT 1 FROM meta WHERE key = 'epoch'").fetchone() is not None
        return tables, has_epoch
    finally:
        db.close()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise SQLite's errors with the spool's path in front ("readonly database" of what)."""
    try:
        yield
    except sqlite3.Error as exc:
        if str(exc).startswith(f"spool {path}"):
            raise
        raise type(exc)(f"spool {path}: {exc}") from exc


class Spool:
    """A bounded, ordered, durable queue of encoded reports."""

    def __init__(self, path: Path, *, max_reports: int, synchronous: str = "full",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_reports = max_reports
        self._fill_announced = 0
        self._dropped_while_full: int | None = None
        # Refuse what is not ours before anything (even the lock file) is made.
        check_place(self.path)
        identify(self.path)
        self._lock_file = self._lock()
        try:
            self._db = self._open(synchronous, clock)
            self.epoch = self._init_meta(clock)
        except sqlite3.Error as exc:
            self._lock_file.close()
            raise SpoolError(self.path, _open_problem(self.path, exc)) from None
        except BaseException:
            self._lock_file.close()
            raise

    # -- opening ------------------------------------------------------------
    def _lock(self) -> IO[bytes]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(f"{self.path}.lock", "ab")  # noqa: SIM115 - held while open
        except OSError as exc:
            raise SpoolError(self.path, f"cannot create its directory or lock file "
                             f"({exc.strerror}: {exc.filename})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise SpoolError(self.path, "another agent is using it") from None
        return handle

    def _open(self, synchronous: str, clock: Callable[[], float]) -> sqlite3.Connection:
        # Again under the lock: another agent may have made it meanwhile.
        kind = identify(self.path)
        if kind == "missing":
            if not os.access(self.path.parent, os.W_OK | os.X_OK):
                raise SpoolError(self.path, f"cannot be created: the directory "
                                 f"{self.path.parent} is not writable for this agent")
            self._create(clock)
        if not os.access(self.path, os.R_OK | os.W_OK) or \
                not os.access(self.path.parent, os.W_OK | os.X_OK):
            where = self.path if not os.access(self.path, os.W_OK) else self.path.parent
            raise SpoolError(self.path, f"is read-only for this agent ({where} is not writable); "
                             "give the agent's user write access or choose another --spool")
        try:
            connection = _connect(self.path, synchronous)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked, read-only, no such directory: not damage
            return self._replace_damaged(exc, synchronous, clock)
        try:
            problem = _damage(connection)
            if problem is None and kind == "legacy":
                # An agent's spool from before the mark: mark it now.
                connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            connection.close()
            raise
        if problem is None:
            return connection
        connection.close()
        return self._replace_damaged(problem, synchronous, clock)

    def _create(self, clock: Callable[[], float]) -> None:
        """Make a new spool atomically: its header carries the mark from the first byte on."""
        temporary = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        epoch = int(clock() * 1000)
        db = sqlite3.connect(temporary, isolation_level=None)
        try:
            # The header (with application_id) is written in rollback-journal
            # mode, so it is in the main file before WAL mode takes over.
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.executescript(_SCHEMA)
            db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
            db.executemany("INSERT INTO meta (key, value) VALUES (?, 0)",
                           [(name,) for name in _COUNTERS])
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
        try:
            # link, not rename: it never replaces a file that appeared meanwhile.
            os.link(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        logger.info("New spool %s: epoch %d", self.path, epoch)

    def _replace_damaged(self, problem: object, synchronous: str,
                         clock: Callable[[], float]) -> sqlite3.Connection:
        # Our own spool, but SQLite cannot use it: its reports are lost anyway.
        # Keep it aside for a post mortem and start a new epoch rather than
        # stop monitoring.
        lost = _count_reports(self.path)
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            wal = Path(f"{self.path}-wal")
            if wal.exists():
                os.replace(wal, Path(f"{aside}-wal"))
            Path(f"{self.path}-shm").unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolError(self.path, f"is damaged ({problem}) and cannot be moved aside "
                             f"({exc.strerror})") from None
        losses = (f"{lost} reports in it are lost" if lost is not None
                  else "how many reports it held is unknown")
        logger.error("Spool %s is damaged (%s); moved it to %s and started a new one; %s",
                     self.path, problem, aside, losses)
        self._create(clock)
        return _connect(self.path, synchronous)

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
        return _Transaction(self._db, self.path)

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
        self._note_drops(dropped)
        self._note_fill(len(self))
        return report

    def _note_drops(self, dropped: int) -> None:
        """Log the start and the end of a time of dropping, not every drop."""
        if dropped > 0 and self._dropped_while_full is None:
            logger.warning("Spool full (%d reports): dropped the %d oldest; from now on the "
                           "oldest report goes for each new one", self.max_reports, dropped)
            self._dropped_while_full = dropped
        elif dropped > 0 and self._dropped_while_full is not None:
            self._dropped_while_full += dropped
            logger.debug("Spool full: dropped the %d oldest", dropped)
        elif self._dropped_while_full is not None:
            logger.info("Spool has room again; %d reports were dropped while it was full",
                        self._dropped_while_full)
            self._dropped_while_full = None

    def _note_fill(self, pending: int) -> None:
        """Log the spool passing a fill level upwards, once until it falls below again."""
        # One waiting report is the normal state between a cycle and its
        # delivery, so a level that one report reaches is no news.
        reached = [level for level in FILL_LEVELS
                   if 1 < -(-level * self.max_reports // 100) <= pending]
        top = max(reached, default=0)
        if top > self._fill_announced:
            logger.warning("Spool %d%% full: %d of at most %d reports wait for Redis", top,
                           pending, self.max_reports)
        self._fill_announced = top

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
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error).

    SQLite's errors leave it with the spool's path in their message, so a
    log line says which file is read-only or full.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        with _naming(self._path):
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and not str(exc).startswith(f"spool {self._path}"):
                raise type(exc)(f"spool {self._path}: {exc}") from exc
            return
        with _naming(self._path):
            self._db.execute("COMMIT")


def _damage(db: sqlite3.Connection) -> str | None:
    """What SQLite finds wrong with an open spool, or None."""
    try:
        verdict = db.execute("PRAGMA quick_check").fetchone()
        tables = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if not verdict or verdict[0] != "ok":
        return f"quick_check: {verdict[0] if verdict else 'no answer'}"
    if tables != _TABLES:
        return f"its tables are {', '.join(sorted(tables)) or 'gone'}"
    return None


def _count_reports(path: Path) -> int | None:
    """How many reports a damaged spool holds, when SQLite can still tell."""
    try:
        db = _read_only(path)
        try:
            return int(db.execute("SELECT count(*) FROM reports").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _open_problem(path: Path, exc: sqlite3.Error) -> str:
    text = str(exc).removeprefix(f"spool {path}: ")
    if "readonly" in text or "read-only" in text:
        return f"is read-only for this agent ({text}); give the agent's user write access"
    return f"cannot be opened ({text})"


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
    path = Path(path)
    check_place(path)
    if identify(path) == "missing":
        raise SpoolError(path, "does not exist")
    try:
        db = _read_only(path)
        try:
            return read_status(db, Path(path), max_reports)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SpoolError(Path(path), f"cannot be read ({exc})") from None
