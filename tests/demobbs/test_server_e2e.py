"""The demo BBS as a process: real telnet clients produce the right session events."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def kinds(events: list[Any]) -> list[tuple[str, str | None]]:
    return [(e.kind, e.user_id) for e in events]


def login(client: Any, user: str, password: str | None = None) -> None:
    client.expect("login: ")
    client.send(user)
    if password is not None:
        client.expect("password: ")
        client.send(password)
    client.expect("Command> ")


def test_guest_login_and_logoff(start_bbs: Any, redis_url: str, events_of: Any) -> None:
    bbs = start_bbs(redis_url)
    client = bbs.client()
    banner = client.expect("login: ")
    assert "MTBBS" in banner and "guest" in banner and "demo-01" in banner
    # Telnet negotiation from the client is ignored, not taken as input.
    client.send(b"\xff\xfd\x01\xff\xfb\x18\xff\xfa\x18\x00xterm\xff\xf0guest")
    client.expect("Command> ")
    client.send("Q")
    assert "Goodbye" in client.read_to_eof()
    events = events_of(client.client_id, until=3)
    assert kinds(events) == [("connected", None), ("logged_in", "guest"),
                             ("disconnected", "guest")]
    assert events[0].host == "demo-01" and events[0].state == "connected"
    assert events[1].state == "logged_in"
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    client.close()
    assert bbs.stop() == 0


def test_user_login_post_and_logout(start_bbs: Any, redis_url: str, events_of: Any) -> None:
    bbs = start_bbs(redis_url)
    client = bbs.client()
    login(client, "taro", "taro-demo")
    client.send("B")
    boards = client.expect("Command> ")
    assert "General" in boards and "Technology" in boards
    client.send("P 2")
    client.expect("title: ")
    client.send("監視テスト")
    client.expect("'.'")
    client.send("一行目 first line")
    client.send("\x1b[31mred\x1b[0m second")  # a terminal escape must not be stored
    client.send(".")
    posted = client.expect("Command> ")
    assert "Posted as #" in posted
    client.send("R 2")
    shown = client.expect("Command> ")
    assert "監視テスト" in shown and "一行目 first line" in shown
    client.send("LOGOFF")
    client.read_to_eof()
    events = events_of(client.client_id, until=3)
    assert kinds(events) == [("connected", None), ("logged_in", "taro"),
                             ("disconnected", "taro")]
    assert bbs.stop() == 0
    with sqlite3.connect(f"file:{bbs.db}?mode=ro", uri=True) as db:
        row = db.execute("SELECT user_id, title, body FROM messages ORDER BY id DESC "
                         "LIMIT 1").fetchone()
        logins = db.execute("SELECT event FROM access_log WHERE user_id = 'taro' "
                            "ORDER BY id").fetchall()
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert row[0] == "taro" and row[1] == "監視テスト"
    # The escape character is gone, so the rest is inert text.
    assert "\x1b" not in row[2] and "[31mred[0m second" in row[2]
    assert logins == [("login",), ("logoff",)]
    assert journal == "wal"


def test_closed_socket_unregisters(start_bbs: Any, redis_url: str, events_of: Any) -> None:
    bbs = start_bbs(redis_url)
    before_login = bbs.client()
    before_login.expect("login: ")
    after_login = bbs.client()
    login(after_login, "hanako", "hanako-demo")
    ids = (before_login.client_id, after_login.client_id)
    before_login.close()
    after_login.close()
    assert kinds(events_of(ids[0], until=2)) == [("connected", None), ("disconnected", None)]
    assert kinds(events_of(ids[1], until=3)) == [("connected", None), ("logged_in", "hanako"),
                                                 ("disconnected", "hanako")]
    assert bbs.stop() == 0


def test_wrong_password_is_refused(start_bbs: Any, redis_url: str, events_of: Any) -> None:
    bbs = start_bbs(redis_url)
    client = bbs.client()
    for attempt in ("wrong", "also-wrong", "still-wrong"):
        client.expect("login: ")
        client.send("taro")
        client.expect("password: ")
        client.send(attempt)
        client.expect("Login incorrect")
    client.read_to_eof()
    assert kinds(events_of(client.client_id, until=2)) == [("connected", None),
                                                           ("disconnected", None)]
    assert bbs.stop() == 0


def test_guests_cannot_post_but_see_who_is_online(start_bbs: Any, redis_url: str) -> None:
    bbs = start_bbs(redis_url)
    other = bbs.client()
    login(other, "sysop", "sysop-demo")
    client = bbs.client()
    login(client, "guest")
    client.send("P 1")
    assert "Guests cannot post" in client.expect("Command> ")
    client.send("W")
    online = client.expect("Command> ")
    assert f"{other.client_id}  sysop  logged_in" in online
    assert f"{client.client_id}  guest  logged_in" in online
    assert bbs.stop() == 0


def test_keeps_serving_with_redis_down(start_bbs: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    bbs = start_bbs(f"redis://127.0.0.1:{dead_port}/0")
    for _ in range(3):
        client = bbs.client()
        login(client, "guest")
        client.send("B")
        assert "General" in client.expect("Command> ")
        client.send("Q")
        client.read_to_eof()
        client.close()
    assert bbs.stop() == 0
    assert not bbs.pidfile.exists()
    log = bbs.output()
    assert "Redis" in log and "unreachable" in log and "Traceback" not in log
    # Its reporter closed with the events Redis never took counted, not hidden:
    # 3 sessions x (connected, logged_in, disconnected) and the start-up snapshot.
    assert "session reporter closed: 0 events sent, 10 not sent (Redis" in log


def test_sigterm_disconnects_clients_and_exits_zero(start_bbs: Any, redis_url: str,
                                                   events_of: Any, all_events: Any) -> None:
    bbs = start_bbs(redis_url)
    client = bbs.client()
    login(client, "guest")
    assert bbs.stop() == 0
    assert "shutting down" in client.read_to_eof()
    assert not bbs.pidfile.exists()
    # Sent before exit: the reporter is closed (flushed) on the way out.
    assert kinds(events_of(client.client_id)) == [("connected", None), ("logged_in", "guest"),
                                                  ("disconnected", "guest")]
    assert all_events()[0].kind == "snapshot"
    assert "Traceback" not in bbs.output()


def test_sigint_exits_zero(start_bbs: Any, redis_url: str) -> None:
    import signal

    bbs = start_bbs(redis_url)
    assert bbs.stop(signal.SIGINT) == 0
    assert not bbs.pidfile.exists()


def test_init_only_and_usage_errors(tmp_path: Path, command: Any,
                                    clean_env: dict[str, str]) -> None:
    db = tmp_path / "new" / "mtbbs.db"
    done = subprocess.run([command("mtbbs-demo-bbs"), "--db", str(db), "--init-only"],
                          capture_output=True, text=True, env=clean_env, timeout=30)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE "
                                             "type = 'table'")}
    assert {"users", "boards", "messages", "mail"} <= tables

    bad_flag = subprocess.run([command("mtbbs-demo-bbs"), "--port", "many"],
                              capture_output=True, text=True, env=clean_env, timeout=30)
    assert bad_flag.returncode == 3 and "--port" in bad_flag.stderr

    config = tmp_path / "bad.toml"
    config.write_text("[demo]\nport = 70000\n")
    bad_setting = subprocess.run([command("mtbbs-demo-bbs"), "--config", str(config)],
                                 capture_output=True, text=True, env=clean_env, timeout=30)
    assert bad_setting.returncode == 3
    assert "demo.port" in bad_setting.stderr and "Traceback" not in bad_setting.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path, command: Any, clean_env: dict[str, str],
                                      redis_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [command("mtbbs-demo-bbs"), "--port", str(port), "--db", str(tmp_path / "b.db"),
             "--redis-url", redis_url], capture_output=True, text=True, env=clean_env,
            timeout=30)
    assert done.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_live_pidfile_is_refused(start_bbs: Any, redis_url: str, command: Any,
                                   clean_env: dict[str, str]) -> None:
    bbs = start_bbs(redis_url)
    done = subprocess.run(
        [command("mtbbs-demo-bbs"), "--port", "1", "--db", str(bbs.db),
         "--pidfile", str(bbs.pidfile), "--redis-url", redis_url],
        capture_output=True, text=True, env=clean_env, timeout=30)
    assert done.returncode == 3
    assert "names running process" in done.stderr and "Traceback" not in done.stderr
    assert bbs.pidfile.read_text().strip() == str(bbs.process.pid)
    assert bbs.stop() == 0
