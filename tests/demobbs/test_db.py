"""The demo BBS's database: schema, seed, accounts, posts and mail."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from demobbs.db import BbsDatabase, User, check_password, hash_password


@pytest.fixture
def db(tmp_path: Path) -> BbsDatabase:
    database = BbsDatabase(tmp_path / "data" / "mtbbs.db")
    assert database.initialize()
    yield database  # type: ignore[misc]
    database.close()


def test_schema_seed_and_wal(db: BbsDatabase) -> None:
    with sqlite3.connect(f"file:{db.path}?mode=ro", uri=True) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"users", "boards", "messages", "mail", "access_log"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        users = {r[0] for r in conn.execute("SELECT user_id FROM users")}
    assert {"guest", "sysop", "taro", "hanako"} <= users
    assert not db.initialize()  # a second start keeps the data


def test_passwords_are_hashed(db: BbsDatabase) -> None:
    with sqlite3.connect(db.path) as conn:
        stored = conn.execute("SELECT password_hash FROM users WHERE user_id = 'taro'"
                              ).fetchone()[0]
    assert "taro-demo" not in stored and stored.startswith("pbkdf2_sha256$")
    assert check_password("taro-demo", stored)
    assert not check_password("taro-dem0", stored)
    assert not check_password("x", "garbage")
    assert not check_password("", "")
    assert check_password("パスワード", hash_password("パスワード"))


def test_authenticate(db: BbsDatabase) -> None:
    assert db.authenticate("guest", None) == User("guest", "ゲスト", 0)
    taro = db.authenticate("taro", "taro-demo")
    assert taro is not None and taro.user_id == "taro" and not taro.is_guest
    assert db.authenticate("taro", "wrong") is None
    assert db.authenticate("taro", None) is None
    assert db.authenticate("nobody", "x") is None
    assert db.needs_password("taro") and not db.needs_password("guest")


def test_boards_by_level_and_posting(db: BbsDatabase) -> None:
    guest_boards = db.boards(0)
    assert [b.name for b in guest_boards] == ["general", "tech", "news"]
    news = next(b for b in guest_boards if b.name == "news")
    assert news.write_level == 9
    taro = db.authenticate("taro", "taro-demo")
    assert taro is not None
    general = guest_boards[0]
    number = db.post(general.id, taro, "題名", "本文\n二行目")
    messages = db.messages(general.id)
    assert messages[-1].id == number and messages[-1].body == "本文\n二行目"
    assert db.boards(0)[0].count == general.count + 1
    assert db.board(999, 9) is None
    # A reader with its own connection (the agent's database check) sees it.
    with sqlite3.connect(f"file:{db.path}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages WHERE id = ?",
                            (number,)).fetchone()[0] == 1


def test_mail(db: BbsDatabase) -> None:
    first = db.mailbox("taro")
    assert len(first) == 1 and not first[0].read and first[0].from_user == "sysop"
    assert db.mailbox("taro")[0].read
    assert db.send_mail("hanako", "taro", "こんにちは", "元気?")
    assert not db.send_mail("hanako", "nobody", "x", "y")
    assert [m.subject for m in db.mailbox("taro")] == ["ようこそ / Welcome", "こんにちは"]


def test_access_log(db: BbsDatabase) -> None:
    db.record_access("taro", "127.0.0.1:5000", "login")
    db.record_access("taro", "127.0.0.1:5000", "logoff")
    with sqlite3.connect(db.path) as conn:
        rows = conn.execute("SELECT event, client_id FROM access_log").fetchall()
        last_login = conn.execute("SELECT last_login FROM users WHERE user_id = 'taro'"
                                  ).fetchone()[0]
    assert rows == [("login", "127.0.0.1:5000"), ("logoff", "127.0.0.1:5000")]
    assert last_login is not None
