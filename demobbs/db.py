"""The demo BBS's SQLite database: an MTBBS-like schema, seed data and queries.

The tables follow MTBBS's shape (users, boards, messages, mail, plus an
access log) so that the agent's database check looks at something real: the
file is in WAL mode as on a production server, and the BBS writes to it on
every login, logoff and post, so the check runs against a live writer.

Every method takes a lock: the server runs them in a worker thread so the
event loop never waits for the disk.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    user_id       TEXT NOT NULL UNIQUE,
    handle        TEXT NOT NULL,
    password_hash TEXT NOT NULL DEFAULT '',
    level         INTEGER NOT NULL DEFAULT 1,
    created_at    TEXT NOT NULL,
    last_login    TEXT
);
CREATE TABLE IF NOT EXISTS boards (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    title       TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    read_level  INTEGER NOT NULL DEFAULT 0,
    write_level INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY,
    board_id   INTEGER NOT NULL REFERENCES boards(id),
    user_id    TEXT NOT NULL,
    handle     TEXT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_board ON messages(board_id, id);
CREATE TABLE IF NOT EXISTS mail (
    id         INTEGER PRIMARY KEY,
    from_user  TEXT NOT NULL,
    to_user    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    read_at    TEXT
);
CREATE INDEX IF NOT EXISTS mail_by_recipient ON mail(to_user, id);
CREATE TABLE IF NOT EXISTS access_log (
    id        INTEGER PRIMARY KEY,
    user_id   TEXT NOT NULL,
    client_id TEXT NOT NULL,
    event     TEXT NOT NULL,
    at        TEXT NOT NULL
);
"""

# (user id, handle, password, level). The demo's accounts are documented in
# docs/reporter.md; a real BBS would of course not ship passwords.
SEED_USERS = (
    ("guest", "ゲスト", "", 0),
    ("sysop", "シスオペ", "sysop-demo", 9),
    ("taro", "山田太郎", "taro-demo", 1),
    ("hanako", "佐藤花子", "hanako-demo", 1),
)
SEED_BOARDS = (
    ("general", "総合掲示板 / General", "なんでも / anything goes", 0, 1),
    ("tech", "技術 / Technology", "パソコン通信と技術の話 / computers and BBSing", 0, 1),
    ("news", "お知らせ / Announcements", "運営からのお知らせ / from the sysop", 0, 9),
)
SEED_MESSAGES = (
    ("news", "sysop", "デモBBSへようこそ / Welcome",
     "これは MTBBS 監視のデモ用 BBS です。\nThis BBS exists to demonstrate mtbbs-monitor."),
    ("general", "taro", "はじめまして", "太郎です。よろしくお願いします。"),
    ("general", "hanako", "Re: はじめまして", "花子です。こちらこそ。"),
    ("tech", "taro", "モデムの速度", "2400bps から 9600bps に替えました。速い!"),
)
SEED_MAIL = (
    ("sysop", "taro", "ようこそ / Welcome", "登録ありがとうございます。\nThanks for joining."),
    ("sysop", "hanako", "ようこそ / Welcome", "登録ありがとうございます。\nThanks for joining."),
)

HASH_NAME = "sha256"
HASH_ROUNDS = 20_000  # a demo: enough to not store plain text, fast enough for tests


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$rounds$salt$hash`` of ``password``."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac(HASH_NAME, password.encode("utf-8"), salt, HASH_ROUNDS)
    return f"pbkdf2_{HASH_NAME}${HASH_ROUNDS}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (an empty hash matches nothing)."""
    try:
        scheme, rounds, salt, digest = stored.split("$")
        if scheme != f"pbkdf2_{HASH_NAME}":
            return False
        computed = hashlib.pbkdf2_hmac(HASH_NAME, password.encode("utf-8"),
                                       bytes.fromhex(salt), int(rounds))
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


# Compared against when the user does not exist (see authenticate).
_DUMMY_HASH = hash_password("not a password", b"\0" * 16)


def now_text() -> str:
    """The current time as stored in the database (ISO, UTC, seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class User:
    """A BBS account."""

    user_id: str
    handle: str
    level: int

    @property
    def is_guest(self) -> bool:
        return self.user_id == "guest"


@dataclass(frozen=True)
class Board:
    """A board and how many messages it holds."""

    id: int
    name: str
    title: str
    description: str
    write_level: int
    count: int


@dataclass(frozen=True)
class Message:
    """A post on a board."""

    id: int
    board_id: int
    user_id: str
    handle: str
    title: str
    body: str
    created_at: str


@dataclass(frozen=True)
class Mail:
    """A private message."""

    id: int
    from_user: str
    subject: str
    body: str
    created_at: str
    read: bool


class BbsDatabase:
    """One SQLite connection to the BBS's database, used under a lock."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False,
                                     isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def initialize(self) -> bool:
        """Create the tables; seed them when the database is new. True if seeded."""
        with self._lock:
            self._conn.executescript(SCHEMA)
            count = self._conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]
            if count:
                return False
            created = now_text()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for user_id, handle, password, level in SEED_USERS:
                    self._conn.execute(
                        "INSERT INTO users (user_id, handle, password_hash, level, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (user_id, handle, hash_password(password) if password else "", level,
                         created))
                for name, title, description, read_level, write_level in SEED_BOARDS:
                    self._conn.execute(
                        "INSERT INTO boards (name, title, description, read_level, write_level)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (name, title, description, read_level, write_level))
                for board, user_id, title, body in SEED_MESSAGES:
                    self._conn.execute(
                        "INSERT INTO messages (board_id, user_id, handle, title, body,"
                        " created_at) SELECT b.id, u.user_id, u.handle, ?, ?, ? FROM boards b,"
                        " users u WHERE b.name = ? AND u.user_id = ?",
                        (title, body, created, board, user_id))
                for from_user, to_user, subject, body in SEED_MAIL:
                    self._conn.execute(
                        "INSERT INTO mail (from_user, to_user, subject, body, created_at)"
                        " VALUES (?, ?, ?, ?, ?)", (from_user, to_user, subject, body, created))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return True

    # -- accounts -------------------------------------------------------------

    def authenticate(self, user_id: str, password: str | None) -> User | None:
        """The user for these credentials; ``guest`` needs no password."""
        with self._lock:
            row = self._conn.execute(
                "SELECT user_id, handle, level, password_hash FROM users WHERE user_id = ?",
                (user_id,)).fetchone()
        if row is None:
            # Spend the same time as a real check, so timing does not tell
            # which user ids exist.
            check_password(password or "", _DUMMY_HASH)
            return None
        if row["user_id"] != "guest" and not check_password(password or "",
                                                           row["password_hash"]):
            return None
        return User(row["user_id"], row["handle"], row["level"])

    def needs_password(self, user_id: str) -> bool:
        """False only for the guest account."""
        return user_id != "guest"

    def record_access(self, user_id: str, client_id: str, event: str) -> None:
        """Log a login or logoff (and stamp the user's last login)."""
        at = now_text()
        with self._lock:
            self._conn.execute("INSERT INTO access_log (user_id, client_id, event, at)"
                               " VALUES (?, ?, ?, ?)", (user_id, client_id, event, at))
            if event == "login":
                self._conn.execute("UPDATE users SET last_login = ? WHERE user_id = ?",
                                   (at, user_id))

    # -- boards -----------------------------------------------------------------

    def boards(self, level: int) -> list[Board]:
        """The boards ``level`` may read, with their message counts."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT b.id, b.name, b.title, b.description, b.write_level,"
                " (SELECT COUNT(*) FROM messages m WHERE m.board_id = b.id) AS count"
                " FROM boards b WHERE b.read_level <= ? ORDER BY b.id", (level,)).fetchall()
        return [Board(r["id"], r["name"], r["title"], r["description"], r["write_level"],
                      r["count"]) for r in rows]

    def board(self, board_id: int, level: int) -> Board | None:
        """One readable board, or None."""
        return next((b for b in self.boards(level) if b.id == board_id), None)

    def messages(self, board_id: int, limit: int = 10) -> list[Message]:
        """The newest ``limit`` messages of a board, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, board_id, user_id, handle, title, body, created_at FROM messages"
                " WHERE board_id = ? ORDER BY id DESC LIMIT ?", (board_id, limit)).fetchall()
        return [Message(r["id"], r["board_id"], r["user_id"], r["handle"], r["title"],
                        r["body"], r["created_at"]) for r in reversed(rows)]

    def post(self, board_id: int, user: User, title: str, body: str) -> int:
        """Store a message; returns its id."""
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO messages (board_id, user_id, handle, title, body, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (board_id, user.user_id, user.handle, title, body, now_text()))
            return int(cursor.lastrowid or 0)

    # -- mail -----------------------------------------------------------------------

    def mailbox(self, user_id: str, limit: int = 10) -> list[Mail]:
        """The newest mail of a user, oldest first; marks it read."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, from_user, subject, body, created_at, read_at FROM mail"
                " WHERE to_user = ? ORDER BY id DESC LIMIT ?", (user_id, limit)).fetchall()
            if rows:
                self._conn.execute(
                    f"UPDATE mail SET read_at = ? WHERE read_at IS NULL AND id IN "
                    f"({','.join('?' * len(rows))})", (now_text(), *[r["id"] for r in rows]))
        return [Mail(r["id"], r["from_user"], r["subject"], r["body"], r["created_at"],
                     r["read_at"] is not None) for r in reversed(rows)]

    def send_mail(self, from_user: str, to_user: str, subject: str, body: str) -> bool:
        """Deliver a mail; False when the recipient does not exist."""
        with self._lock:
            exists = self._conn.execute("SELECT 1 FROM users WHERE user_id = ?",
                                        (to_user,)).fetchone()
            if exists is None:
                return False
            self._conn.execute(
                "INSERT INTO mail (from_user, to_user, subject, body, created_at)"
                " VALUES (?, ?, ?, ?, ?)", (from_user, to_user, subject, body, now_text()))
            return True
