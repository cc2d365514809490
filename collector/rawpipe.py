"""A lean pipeline for the ingest hot path.

redis-py's Pipeline object spends more time per command than Redis does
running our scripts; on the collector's hot path we pack whole batches with
hiredis (when installed) and read the replies straight from one pooled
connection. Sending and collecting are separate steps (:func:`send` returns
an :class:`InFlight`), so the collector decodes its next batch while Redis
runs the scripts of the previous one. Error replies come back as exception
objects in the result list, as with ``execute(raise_on_error=False)``;
connection errors raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - redis[hiredis] is a dependency
    _pack = None


class InFlight:
    """Commands sent on a connection whose replies are not read yet."""

    def __init__(self, client: Any, commands: Sequence[tuple[Any, ...]]) -> None:
        self.pool = client.connection_pool
        self.count = 0
        self.connection: Any = None
        if not commands:
            return
        self.connection = self.pool.get_connection()
        self.send_more(commands)

    @property
    def open(self) -> bool:
        """Whether replies are still to be read (else the connection is back in the pool)."""
        return self.connection is not None

    def send_more(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Send ``commands`` behind those in flight; their replies follow theirs."""
        if self.connection is None:
            raise RuntimeError("the replies were collected: nothing is in flight")
        try:
            if _pack is not None:
                packed: list[bytes] = [b"".join(_pack(command) for command in commands)]
            else:
                packed = self.connection.pack_commands(commands)
            self.connection.send_packed_command(packed)
        except BaseException:
            self.abandon()
            raise
        self.count += len(commands)

    def collect(self, count: int | None = None) -> list[Any]:
        """The next ``count`` replies (all by default), in order; once none is
        left, the connection goes back to the pool."""
        if self.connection is None:
            return []
        wanted = self.count if count is None else min(count, self.count)
        replies: list[Any] = []
        try:
            for _ in range(wanted):
                try:
                    replies.append(self.connection.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            self.abandon()
            raise
        self.count -= wanted
        if not self.count:
            self.pool.release(self.connection)
            self.connection = None
        return replies

    def abandon(self) -> None:
        """Drop the replies: close the connection (its state is unknown) and release it."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.disconnect()
            self.pool.release(connection)


def send(client: Any, commands: Sequence[tuple[Any, ...]]) -> InFlight:
    """Send ``commands`` in one write; collect the replies later."""
    return InFlight(client, commands)


def execute(client: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write and return their replies in order."""
    return InFlight(client, commands).collect()
