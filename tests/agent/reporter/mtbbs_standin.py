"""A stand-in for MTBBS's telnet server, with the session reporter added as
docs/reporter.md says.

Our own code, shaped like MTBBS (public repository hkubotaap/mtbbs-linux,
``backend/app/protocols/telnet_server.py`` and ``telnet_handler.py``) where
it matters to the monitor: a ``TelnetServer`` with ``__init__``,
``handle_client`` (connect, the handler, its ``finally``),
``update_session_login`` (called back by the handler's login), ``start`` and
``stop``, beside an in-process monitor that MTBBS also asks for
``check_health`` and ``collect_metrics``; and a handler that fails a session
the way MTBBS does: a caller that vanishes at a prompt or during a write is
an ERROR with a traceback, three empty answers at the login prompt end the
connection with a WARNING. The end-to-end test runs it as a process and
checks its log for ERROR lines, so the probe's politeness is tested
against the behaviour that matters.

Run: ``python mtbbs_standin.py --port 2323`` with the monitor's configuration
in ``$MTBBS_CONFIG`` (or ``MTBBS_...`` variables); SIGTERM stops it as
uvicorn's shutdown stops MTBBS.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from agent.reporter import SessionReporter

logger = logging.getLogger("standin.telnet")

IAC, WILL, WONT, DO, DONT, SB, SE = 255, 251, 252, 253, 254, 250, 240
MAX_SAME_IP = 3
ACCOUNTS = {"taro": "taro-pass"}  # guests log in as "guest" with any password
LOGIN_ATTEMPTS = 3


class InProcessMonitor:
    """The monitor MTBBS keeps in its own process: its session table, and the
    health and metrics calls MTBBS's API and periodic tasks make."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}

    def register_session(self, client_id: str, user_id: str | None = None,
                         state: str = "connected") -> None:
        self.sessions[client_id] = {"user_id": user_id, "state": state}

    def update_session_state(self, client_id: str, user_id: str | None = None,
                             state: str | None = None) -> None:
        if client_id in self.sessions:
            self.sessions[client_id].update(user_id=user_id, state=state)

    def unregister_session(self, client_id: str) -> None:
        self.sessions.pop(client_id, None)

    async def check_health(self) -> dict[str, Any]:
        return {"healthy": True, "sessions": len(self.sessions)}

    async def collect_metrics(self) -> dict[str, Any]:
        return {"active_sessions": len(self.sessions)}


class TelnetHandler:
    """One caller: negotiation, greeting, login, a one-command menu."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 client_id: str, server: TelnetServer) -> None:
        self.reader = reader
        self.writer = writer
        self.client_id = client_id
        self.server = server
        self.user_id: str | None = None

    async def handle(self) -> None:
        try:
            self.writer.write(bytes([IAC, WILL, 1, IAC, WILL, 3, IAC, DO, 31]))
            await self.writer.drain()
            await self.send("Stand-in BBS\r\nEnter 'guest' to look around.\r\n")
            await self.login()
            if self.user_id is not None:
                await self.main_loop()
        except asyncio.CancelledError:
            logger.info("session %s cancelled", self.client_id)
        except Exception as exc:
            # As MTBBS does: any failure of a session is an ERROR with a traceback.
            logger.error("session %s failed: %s", self.client_id, exc, exc_info=True)
        finally:
            await self.disconnect()

    async def send(self, text: str) -> None:
        try:
            self.writer.write(text.encode("utf-8"))
            await self.writer.drain()
        except Exception as exc:
            logger.error("cannot write to %s: %s", self.client_id, exc)
            raise

    async def receive_line(self) -> str:
        """One line, telnet commands skipped; the end of input is an error."""
        line = bytearray()
        while True:
            data = await self.reader.read(1)
            if not data:
                logger.error("%s: input ended", self.client_id)
                raise ConnectionError("input ended")
            byte = data[0]
            if byte == IAC:
                command = (await self.reader.read(1) or b"\0")[0]
                if command in (WILL, WONT, DO, DONT):
                    await self.reader.read(1)
                elif command == SB:
                    while (await self.reader.read(1) or bytes([SE]))[0] != SE:
                        pass
                continue
            if byte in (10, 13):
                if line:
                    return line.decode("utf-8", "replace").strip()
                continue
            line.append(byte)

    async def login(self) -> None:
        for _attempt in range(LOGIN_ATTEMPTS):
            await self.send("\r\nUser: ")
            user = await self.receive_line()
            if not user:
                continue
            await self.send("Password: ")
            password = await self.receive_line()
            if user == "guest" or ACCOUNTS.get(user) == password:
                self.user_id = user
                await self.send(f"Hello, {user}.\r\n")
                self.server.update_session_login(self.client_id, user)
                return
            await self.send("Wrong user or password.\r\n")
        await self.send("No more attempts. Bye.\r\n")
        logger.warning("%s gave up logging in after %d attempts", self.client_id,
                       LOGIN_ATTEMPTS)

    async def main_loop(self) -> None:
        while True:
            await self.send("\r\nCommand (Q to leave): ")
            if (await self.receive_line()).upper() == "Q":
                await self.send("Goodbye.\r\n")
                return

    async def disconnect(self) -> None:
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except Exception:  # already gone is fine
            pass


class TelnetServer:
    """The listener, its handlers, the in-process monitor and the reporter."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2323) -> None:
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.handlers: dict[str, TelnetHandler] = {}
        self.max_connections = 100
        self.monitor = InProcessMonitor()
        # The reporter, beside the monitor (docs/reporter.md):
        self.session_reporter = SessionReporter.from_config().start()

    async def handle_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        client_id = f"{addr[0]}:{addr[1]}"
        if len(self.handlers) >= self.max_connections:
            writer.close()
            return
        logger.info("connection from %s", client_id)
        handler = TelnetHandler(reader, writer, client_id, server=self)
        self.handlers[client_id] = handler
        self.monitor.register_session(client_id, user_id=None, state="connected")
        self.session_reporter.register_session(client_id)
        try:
            await handler.handle()
        except Exception as exc:
            logger.error("handling %s failed: %s", client_id, exc, exc_info=True)
        finally:
            self.monitor.unregister_session(client_id)
            self.session_reporter.unregister_session(client_id)
            self.handlers.pop(client_id, None)
            await handler.disconnect()
            logger.info("%s disconnected", client_id)

    def update_session_login(self, client_id: str, user_id: str) -> None:
        self.monitor.update_session_state(client_id, user_id=user_id, state="logged_in")
        self.session_reporter.update_session_state(client_id, user_id=user_id, state="logged_in")

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle_client, self.host, self.port)
        logger.info("listening on %s:%d", self.host, self.port)
        async with self.server:
            await self.server.serve_forever()

    async def stop(self) -> None:
        if self.server:
            for handler in list(self.handlers.values()):
                await handler.disconnect()
            self.server.close()
            await self.server.wait_closed()
            await self.session_reporter.aclose()


async def serve(port: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stopping.set)
    server = TelnetServer(port=port)
    task = asyncio.create_task(server.start())
    # MTBBS's API and periodic tasks ask the monitor too: it must keep answering.
    await server.monitor.check_health()
    await server.monitor.collect_metrics()
    await stopping.wait()
    await server.stop()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=2323)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
