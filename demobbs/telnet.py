"""Minimal telnet for the demo BBS: lines in, text out, negotiation ignored.

A telnet client mixes option negotiation (``IAC DO ECHO`` and friends) into
what the user types. The demo BBS does not negotiate anything; it only has
to strip those sequences, honour ``IAC IAC`` as a literal 255, end lines on
CR, LF, CR LF or CR NUL, apply backspaces, and keep control characters
(terminal escapes) out of what it stores and shows.
"""

from __future__ import annotations

import asyncio

IAC = 255
SB = 250
SE = 240
WILL, WONT, DO, DONT = 251, 252, 253, 254
BACKSPACES = (0x08, 0x7F)

# Parser states
_DATA, _IAC, _OPTION, _SUB, _SUB_IAC = range(5)


class TelnetDecoder:
    """Turns received bytes into lines of text, across chunk boundaries."""

    def __init__(self, max_line: int = 1024) -> None:
        self.max_line = max_line
        self._state = _DATA
        self._line = bytearray()
        self._after_cr = False

    def feed(self, data: bytes) -> list[str]:
        """Consume ``data``; returns the lines completed by it."""
        done: list[str] = []
        for byte in data:
            state = self._state
            if state == _DATA:
                if byte == IAC:
                    self._state = _IAC
                elif self._after_cr and byte in (0, 10):
                    self._after_cr = False  # the LF or NUL of CR LF / CR NUL
                elif byte in (10, 13):
                    self._after_cr = byte == 13
                    done.append(self._finish())
                else:
                    self._after_cr = False
                    self._data(byte)
            elif state == _IAC:
                if byte == IAC:
                    self._state = _DATA
                    self._data(byte)
                elif byte in (WILL, WONT, DO, DONT):
                    self._state = _OPTION
                elif byte == SB:
                    self._state = _SUB
                else:
                    self._state = _DATA  # a two-byte command (NOP, AYT, GA, ...)
            elif state == _OPTION:
                self._state = _DATA
            elif state == _SUB:
                if byte == IAC:
                    self._state = _SUB_IAC
            else:  # _SUB_IAC
                self._state = _DATA if byte == SE else _SUB
        return done

    def _data(self, byte: int) -> None:
        if byte in BACKSPACES:
            if self._line:
                # Remove one whole UTF-8 character, not one byte of it.
                last = self._line.pop()
                if (last & 0xC0) == 0x80:
                    while self._line and (self._line[-1] & 0xC0) == 0x80:
                        self._line.pop()
                    if self._line and self._line[-1] >= 0xC0:
                        self._line.pop()
            return
        if len(self._line) < self.max_line:
            self._line.append(byte)

    def _finish(self) -> str:
        text = clean_text(bytes(self._line).decode("utf-8", "replace"))
        self._line.clear()
        return text


def clean_text(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` without control characters (no terminal escapes reach a screen)."""
    allowed = "\t\n" if keep_newlines else "\t"
    return "".join(ch for ch in text if ch >= " " and ch != "\x7f" or ch in allowed)


class TelnetConnection:
    """A telnet client: ``readline`` and ``write`` over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, max_line: int = 1024) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = TelnetDecoder(max_line)
        self._lines: list[str] = []
        self.closed = False

    async def readline(self, timeout: float | None = None) -> str | None:
        """The next line without its end; None when the client went away.

        Raises ``TimeoutError`` after ``timeout`` seconds without a line.
        """
        async with asyncio.timeout(timeout):
            while not self._lines:
                try:
                    data = await self.reader.read(4096)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    self.closed = True
                    return None
                self._lines.extend(self.decoder.feed(data))
        return self._lines.pop(0)

    async def write(self, text: str) -> None:
        """Send ``text`` (``\\n`` becomes CR LF) in UTF-8."""
        if self.closed:
            raise ConnectionResetError("client gone")
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace")
        # A literal 255 would start a telnet command on the client's side.
        self.writer.write(data.replace(bytes([IAC]), bytes([IAC, IAC])))
        await self.writer.drain()

    async def close(self) -> None:
        """Close the socket (errors of an already broken one are ignored)."""
        self.closed = True
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (ConnectionError, OSError, TimeoutError):
            pass
