"""Delivery of spooled reports to the host's reports stream, in order, at least once.

Every report goes through the spool (:mod:`agent.spool`); the publisher sends
the spool's oldest reports first with ``XADD ... MAXLEN ~`` and removes them
from the spool only after Redis answered. When Redis cannot be reached the
reports stay spooled and the next attempt waits for a capped exponential
backoff with jitter. The outage is logged once when it starts (again only if
the error changes) and once when Redis answers again; each retry in between
is logged at DEBUG.

A reply lost after Redis executed the XADD makes the retry add the report a
second time. That is accepted: a report carries its agent's ``epoch`` and
``seq``, and the collector skips a report whose seq it has already applied
in the same epoch, so a duplicate on the stream is never applied twice. The
send is a plain ``XADD`` on the host's own stream, because the host's Redis
user may append there and nothing more: no script (EVAL), no mark beside the
stream that a stolen credential could move.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from agent.healthlog import duration_text
from agent.spool import Pending, Spool
from wire.auth import sign
from wire.keys import KeySpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: never more than ``maximum``."""

    initial: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.2
    rng: Callable[[], float] = random.random

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
        exponent = min(max(failures, 1) - 1, 64)
        base = min(self.maximum, self.initial * 2.0**exponent)
        # Jitter only shortens the delay, so the cap holds.
        return base * (1.0 - self.jitter * self.rng())


class Publisher:
    """Sends what the spool holds, oldest first; backs off while Redis fails."""

    def __init__(self, client: Any, keys: KeySpace, spool: Spool, *, host: str,
                 maxlen: int, batch: int = 100, host_key: bytes | None = None,
                 backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.spool = spool
        self.host = host
        self.maxlen = maxlen
        self.batch = batch
        self.host_key = host_key
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.failures = 0
        self.next_attempt = 0.0
        self._down_since: float | None = None
        self._last_error: str | None = None
        self._stream = keys.reports_stream(host)

    @property
    def backing_off(self) -> bool:
        """True while the last attempt failed and reports wait in the spool."""
        return self.failures > 0

    def due(self) -> bool:
        """True when a delivery attempt may be made now."""
        return self.clock() >= self.next_attempt

    def flush(self, *, force: bool = False) -> int:
        """Send every spooled report, oldest first; the number delivered.

        Stops at the first Redis error and schedules the next attempt; with
        ``force`` the backoff is ignored (a last attempt before exit).
        """
        if not force and not self.due():
            return 0
        delivered = 0
        while True:
            pending = self.spool.peek(self.batch)
            if not pending:
                break
            try:
                self._send(pending)
            except RedisError as exc:
                self._failed(exc, delivered)
                return delivered
            self.spool.delivered(pending[-1].rowid, sum(p.carried for p in pending))
            delivered += len(pending)
        if self.failures:
            down = self.clock() - (self._down_since or self.clock())
            logger.info("Redis reachable again after %s (%d failed attempts); %d spooled "
                        "reports delivered", duration_text(down), self.failures, delivered)
        self.failures = 0
        self._down_since = None
        self._last_error = None
        self.next_attempt = 0.0
        return delivered

    def _fields(self, item: Pending) -> dict[str, bytes | str]:
        fields: dict[str, bytes | str] = {"m": item.payload}
        if self.host_key is not None:
            fields["sig"] = sign(self.host_key, item.payload)
        return fields

    def _send(self, pending: Sequence[Pending]) -> None:
        if len(pending) == 1:
            # The common case (one report per cycle): one round trip, no pipeline.
            self.client.xadd(self._stream, self._fields(pending[0]), maxlen=self.maxlen,
                             approximate=True)
            return
        pipe = self.client.pipeline(transaction=False)
        for item in pending:
            pipe.xadd(self._stream, self._fields(item), maxlen=self.maxlen, approximate=True)
        # A refused entry (an error reply) raises here, so nothing is dropped
        # from the spool unless Redis took every entry of the batch.
        pipe.execute()

    def _failed(self, exc: RedisError, delivered: int) -> None:
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        self.next_attempt = self.clock() + delay
        if self._down_since is None:
            self._down_since = self.clock()
        error = f"{type(exc).__name__}: {_first_line(exc)}"
        # One line per outage (and per new kind of error in it), not per retry:
        # the spool's own lines tell how far the reports pile up.
        level = logging.DEBUG if error == self._last_error else logging.WARNING
        self._last_error = error
        logger.log(level, "Redis unreachable (%s); %d reports spooled, %d delivered; "
                   "retry %d in %.1f s", error, len(self.spool), delivered, self.failures,
                   delay)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else ""
