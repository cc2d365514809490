"""``mtbbs-demo-bbs``: a small asyncio telnet BBS that reports its sessions.

It behaves, as far as the monitor can tell, like MTBBS's telnet server: a
client is named by its address ``ip:port``; connecting registers the session
(state ``connected``), logging in (``guest`` without a password, or a user
with one) updates it to ``logged_in`` with the user id, and logging off or
closing the socket unregisters it, all through
:class:`agent.reporter.SessionReporter`. It keeps serving when Redis is down.
Posting and logging in write to its SQLite database, so the agent's database
check has a real writer to live with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.checks.settings import default_host_id
from agent.reporter import ReporterSettings, SessionReporter
from demobbs.db import BbsDatabase, User
from demobbs.telnet import TelnetConnection, clean_text
from wire.cli import (
    ArgumentParser,
    add_common_options,
    guarded,
    load_config,
    setup_logging,
)
from wire.config import RedisSettings, load_section, non_negative, positive, setting
from wire.keys import valid_host_id

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TITLE = 80
MAX_BODY_LINES = 40
EXIT_OK = 0
EXIT_ERROR = 3


def _port(value: Any) -> str | None:
    return None if 1 <= value <= 65_535 else "must be a TCP port (1-65535)"


def _host(value: Any) -> str | None:
    return None if valid_host_id(str(value)) else (
        "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")


@dataclass(frozen=True)
class DemoSettings:
    """The ``[demo]`` section: the demo BBS."""

    port: int = setting(2323, "telnet port to listen on", check=_port)
    bind: str = setting("127.0.0.1", "address to listen on")
    db: Path = setting(Path("data/mtbbs.db"), "the BBS's SQLite database (created and seeded "
                       "on first start)")
    host: str | None = setting(None, "host id the sessions are reported under (default: the "
                               "short host name, as the agent's)", check=_host)
    pidfile: Path | None = setting(None, "file to write the process id to (removed at exit)")
    max_connections: int = setting(100, "simultaneous telnet clients; more are turned away",
                                   check=positive)
    idle_timeout: float = setting(900.0, "seconds of silence after which a client is "
                                  "disconnected", check=positive)
    login_attempts: int = setting(3, "failed logins before the connection is closed",
                                  check=positive)
    banner_delay: float = setting(0.0, "seconds to wait before sending the banner (to rehearse "
                                  "the agent's slow-BBS alarm)", check=non_negative)


BANNER = """\
========================================
  MTBBS デモ / MTBBS demo  ({host})
  mtbbs-monitor demonstration board
========================================
ゲストは "guest" でログインできます。
Log in as "guest" (no password) to look around.
"""

MENU = """
--- メインメニュー / Main menu ---
 B) 掲示板一覧       / List boards
 R) 掲示板を読む     / Read a board
 P) 書き込む         / Post a message
 M) メール           / Mail
 W) 接続中のユーザー / Who is online
 Q) ログオフ         / Log off
"""

PROMPT = "コマンド / Command> "


class DemoBbs:
    """The BBS: its listener, its clients, its database and its reporter."""

    def __init__(self, settings: DemoSettings, database: BbsDatabase,
                 reporter: SessionReporter) -> None:
        self.settings = settings
        self.db = database
        self.reporter = reporter
        self.host = settings.host or default_host_id()
        # One thread for SQLite: the event loop never waits for the disk, and
        # the connection is used by one thread at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbs-db")
        self._clients: dict[asyncio.Task[None], TelnetConnection] = {}
        self._server: asyncio.Server | None = None

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run a database call in the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def start(self) -> None:
        """Listen on the configured address."""
        self._server = await asyncio.start_server(
            self._accept, self.settings.bind, self.settings.port, reuse_address=True)

    @property
    def addresses(self) -> list[str]:
        """Where the BBS listens, ``ip:port``."""
        if self._server is None:
            return []
        return [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self._server.sockets]

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = TelnetConnection(reader, writer)
        if len(self._clients) >= self.settings.max_connections:
            with contextlib.suppress(ConnectionError, OSError):
                await connection.write("混み合っています。/ Too many connections, try later.\n")
            await connection.close()
            return
        self._clients[task] = connection
        try:
            await Session(self, connection).run()
        except asyncio.CancelledError:
            # Only stop() cancels us, and the session has unregistered by
            # now; ending normally keeps asyncio from logging the cancel.
            pass
        finally:
            self._clients.pop(task, None)

    async def stop(self) -> None:
        """Stop listening, say goodbye to every client and wait for their sessions to end."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._clients.values()):
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                await asyncio.wait_for(connection.write(
                    "\nサーバーを停止します。/ The BBS is shutting down.\n"), 1)
        # Closing a socket ends its session the ordinary way (the read sees
        # end of file); a session stuck elsewhere is cancelled.
        for connection in list(self._clients.values()):
            await connection.close()
        tasks = list(self._clients)
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=3)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self._executor.shutdown(wait=True)


class Session:
    """One telnet client from connect to disconnect."""

    def __init__(self, bbs: DemoBbs, connection: TelnetConnection) -> None:
        self.bbs = bbs
        self.conn = connection
        peer = connection.writer.get_extra_info("peername")
        # MTBBS names a session by the client's address, ``ip:port``.
        self.client_id = f"{peer[0]}:{peer[1]}" if peer else "unknown:0"
        self.user: User | None = None

    async def run(self) -> None:
        reporter = self.bbs.reporter
        reporter.register_session(self.client_id)
        # A connection that never logs in is most often a monitor's probe,
        # once a cycle: only logins and their ends are news at INFO.
        logger.debug("session %s connected", self.client_id)
        try:
            if self.bbs.settings.banner_delay:
                await asyncio.sleep(self.bbs.settings.banner_delay)
            await self.say(BANNER.format(host=self.bbs.host))
            self.user = await self.login()
            if self.user is None:
                return
            reporter.update_session_state(self.client_id, user_id=self.user.user_id,
                                          state="logged_in")
            await self.bbs.call(self.bbs.db.record_access, self.user.user_id, self.client_id,
                                "login")
            logger.info("session %s logged in as %r", self.client_id, self.user.user_id)
            await self.menu()
        except TimeoutError:  # before OSError, of which it is a subclass
            with contextlib.suppress(ConnectionError, OSError):
                await self.say("\nタイムアウト / Idle timeout. Goodbye.\n")
        except (ConnectionError, OSError):
            pass
        finally:
            reporter.unregister_session(self.client_id)
            if self.user is None:
                logger.debug("session %s disconnected without logging in", self.client_id)
            else:
                logger.info("session %s (%r) disconnected", self.client_id, self.user.user_id)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.bbs.call(self.bbs.db.record_access,
                                                       self.user.user_id, self.client_id,
                                                       "logoff"))
            await self.conn.close()

    async def say(self, text: str) -> None:
        await self.conn.write(text)

    async def ask(self, prompt: str) -> str:
        """Prompt and read one line; a closed socket ends the session."""
        await self.say(prompt)
        line = await self.conn.readline(self.bbs.settings.idle_timeout)
        if line is None:
            raise ConnectionResetError("client closed the connection")
        return line.strip()

    async def login(self) -> User | None:
        attempts = 0
        while attempts < self.bbs.settings.login_attempts:
            user_id = await self.ask("\nログイン / login: ")
            if not user_id:
                continue
            password = None
            if self.bbs.db.needs_password(user_id):
                password = await self.ask("パスワード / password: ")
            user = await self.bbs.call(self.bbs.db.authenticate, user_id, password)
            if user is not None:
                await self.say(f"\nようこそ {clean_text(user.handle)} さん / Welcome, "
                               f"{clean_text(user.user_id)}.\n")
                return user
            attempts += 1
            await self.say("ログインできません / Login incorrect.\n")
        await self.say("さようなら / Goodbye.\n")
        return None

    async def menu(self) -> None:
        await self.say(MENU)
        while True:
            command, _, rest = (await self.ask(PROMPT)).partition(" ")
            command = command.upper()
            if command in ("Q", "G", "BYE", "LOGOFF", "LOGOUT", "QUIT"):
                await self.say("ご利用ありがとうございました。/ Goodbye.\n")
                return
            if command == "B":
                await self.list_boards()
            elif command == "R":
                await self.read_board(rest)
            elif command == "P":
                await self.post(rest)
            elif command == "M":
                await self.mail()
            elif command == "W":
                await self.who()
            elif command in ("?", "H", "HELP", ""):
                await self.say(MENU)
            else:
                await self.say("? コマンドが違います / Unknown command (? for help)\n")

    @property
    def level(self) -> int:
        return self.user.level if self.user else 0

    async def list_boards(self) -> None:
        boards = await self.bbs.call(self.bbs.db.boards, self.level)
        lines = [f" {b.id:>2}) {clean_text(b.title)}  [{b.count}]  {clean_text(b.description)}"
                 for b in boards]
        await self.say("\n".join(["", "--- 掲示板 / Boards ---", *lines, ""]))

    async def choose_board(self, text: str) -> int | None:
        text = text.strip() or await self.ask("掲示板番号 / board number: ")
        if not text.isdigit() or await self.bbs.call(self.bbs.db.board, int(text),
                                                     self.level) is None:
            await self.say("その掲示板はありません / No such board.\n")
            return None
        return int(text)

    async def read_board(self, text: str) -> None:
        board_id = await self.choose_board(text)
        if board_id is None:
            return
        messages = await self.bbs.call(self.bbs.db.messages, board_id)
        if not messages:
            await self.say("(書き込みはありません / no messages)\n")
        for message in messages:
            body = clean_text(message.body, keep_newlines=True)
            await self.say(f"\n#{message.id} {clean_text(message.title)}\n"
                           f"  {clean_text(message.handle)} ({clean_text(message.user_id)}) "
                           f"{message.created_at}\n{body}\n")

    async def post(self, text: str) -> None:
        user = self.user
        if user is None or user.is_guest:
            await self.say("ゲストは書き込みできません / Guests cannot post; please log in.\n")
            return
        board_id = await self.choose_board(text)
        if board_id is None:
            return
        board = await self.bbs.call(self.bbs.db.board, board_id, self.level)
        if board is None or user.level < board.write_level:
            await self.say("この掲示板には書き込めません / You cannot post here.\n")
            return
        title = (await self.ask("題名 / title: "))[:MAX_TITLE]
        if not title:
            await self.say("中止しました / Cancelled.\n")
            return
        await self.say(f"本文を入力し、'.' だけの行で終わります / Type the message, end with a "
                       f"line holding only '.' (at most {MAX_BODY_LINES} lines).\n")
        lines: list[str] = []
        while len(lines) < MAX_BODY_LINES:
            line = await self.conn.readline(self.bbs.settings.idle_timeout)
            if line is None:
                raise ConnectionResetError("client closed the connection")
            if line.strip() == ".":
                break
            lines.append(line)
        number = await self.bbs.call(self.bbs.db.post, board_id, user, title, "\n".join(lines))
        logger.info("session %s posted message %d on board %d", self.client_id, number,
                    board_id)
        await self.say(f"書き込みました (#{number}) / Posted as #{number}.\n")

    async def mail(self) -> None:
        user = self.user
        if user is None or user.is_guest:
            await self.say("ゲストはメールを使えません / Guests have no mailbox.\n")
            return
        mails = await self.bbs.call(self.bbs.db.mailbox, user.user_id)
        if not mails:
            await self.say("(メールはありません / no mail)\n")
        for item in mails:
            flag = " " if item.read else "*"
            body = clean_text(item.body, keep_newlines=True)
            await self.say(f"\n{flag}#{item.id} {clean_text(item.subject)}  from "
                           f"{clean_text(item.from_user)}  {item.created_at}\n{body}\n")

    async def who(self) -> None:
        sessions = self.bbs.reporter.sessions()
        lines = [f" {clean_text(s.client_id)}  {clean_text(s.user_id or '-')}  {s.state}"
                 for s in sessions]
        await self.say("\n".join(["", f"--- 接続中 / Online: {len(sessions)} ---", *lines, ""]))


# -- the command line ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="mtbbs-demo-bbs",
        description="A small MTBBS-like telnet BBS that reports its sessions to Redis, "
        "for the demo and the end-to-end tests. Log in as 'guest'.")
    parser.add_argument("--port", type=int, help="telnet port (default 2323, [demo] port)")
    parser.add_argument("--bind", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--db", help="SQLite database, created and seeded if missing "
                        "(default data/mtbbs.db)")
    parser.add_argument("--host", help="host id the sessions are reported under "
                        "(default: the short host name)")
    parser.add_argument("--pidfile", help="write the process id to this file")
    parser.add_argument("--init-only", action="store_true",
                        help="create and seed the database, then exit")
    add_common_options(parser)
    return parser


def check_pidfile(path: Path) -> None:
    """Refuse to start when the pidfile names another live process."""
    try:
        other = int(path.read_text(encoding="utf-8").strip() or "0")
    except (OSError, ValueError):
        other = 0
    if other and other != os.getpid():
        try:
            os.kill(other, 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise RuntimeError(f"pidfile {path} names running process {other}") from None
        else:
            raise RuntimeError(f"pidfile {path} names running process {other}")


def write_pidfile(path: Path) -> None:
    """Write our pid (once listening, so the file also says we are ready)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n", encoding="utf-8")


def remove_pidfile(path: Path) -> None:
    """Remove the pidfile if it is still ours."""
    try:
        if path.read_text(encoding="utf-8").strip() == str(os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


class UnusableDatabase(Exception):
    """The demo database cannot be opened; the message names it and the way out."""


def open_database(path: Path) -> tuple[BbsDatabase, bool]:
    """The demo database, created and seeded when missing; True when it was seeded.

    A file SQLite cannot read (truncated, overwritten, not a database) is
    refused with a message saying how to start afresh: the demo's data is
    only seed data and a sysop's test posts, so moving the file aside is
    the cure, and the BBS will not guess that on its own.
    """
    database: BbsDatabase | None = None
    try:
        database = BbsDatabase(path)
        return database, database.initialize()
    except sqlite3.OperationalError as exc:
        # Locked, unreadable or in a missing folder: the file may be fine.
        if database is not None:
            database.close()
        raise UnusableDatabase(f"the demo database {path} cannot be opened ({exc})") from None
    except sqlite3.DatabaseError as exc:
        # Not a database, or a damaged one.
        if database is not None:
            database.close()
        move = shlex.join(["mv", str(path), f"{path}.broken"])
        raise UnusableDatabase(
            f"the demo database {path} cannot be used ({exc}): move it aside ({move}) "
            "or delete it, and the next start creates a fresh demo database") from None


async def serve(settings: DemoSettings, redis_settings: RedisSettings,
                reporter_settings: ReporterSettings) -> int:
    """Run the BBS until SIGTERM or SIGINT; returns the exit code."""
    host = settings.host or default_host_id()
    if settings.pidfile is not None:
        check_pidfile(settings.pidfile)
    try:
        database, seeded = await asyncio.to_thread(open_database, settings.db)
    except UnusableDatabase as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    try:
        if seeded:
            logger.info("created and seeded the database %s", settings.db)
        reporter = SessionReporter.from_settings(redis_settings, host, reporter_settings)
        reporter.start()
        bbs = DemoBbs(settings, database, reporter)
        try:
            await bbs.start()
        except OSError as exc:
            print(f"error: cannot listen on {settings.bind}:{settings.port}: "
                  f"{exc.strerror or exc}", file=sys.stderr, flush=True)
            await reporter.aclose(1)
            return EXIT_ERROR
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        if settings.pidfile is not None:
            write_pidfile(settings.pidfile)
        try:
            logger.info("demo BBS %s listening on %s, reporting to %s", host,
                        ", ".join(bbs.addresses), redis_settings.redacted_url())
            await stopping.wait()
            logger.info("stopping")
            await bbs.stop()
            await reporter.aclose(3)
        finally:
            if settings.pidfile is not None:
                remove_pidfile(settings.pidfile)
        # The reporter's close logged what it sent and what it could not.
        return EXIT_OK
    finally:
        database.close()


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mtbbs-demo-bbs``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    document, redis_settings = load_config(args)
    settings = load_section(DemoSettings, document, "demo", overrides={
        "port": args.port, "bind": args.bind, "db": args.db, "host": args.host,
        "pidfile": args.pidfile,
    })
    reporter_settings = load_section(ReporterSettings, document, "reporter")
    if args.init_only:
        try:
            database, seeded = open_database(settings.db)
        except UnusableDatabase as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        database.close()
        print(f"{'created' if seeded else 'kept'} {settings.db}")
        return EXIT_OK
    return asyncio.run(serve(settings, redis_settings, reporter_settings))
