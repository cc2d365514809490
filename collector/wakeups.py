"""Wake-ups: which host streams were just appended to, from Redis's keyspace events.

A collector reading more streams than one XREADGROUP names cannot block on
them all. When Redis publishes keyspace events for stream commands
(``notify-keyspace-events`` including ``E`` and ``t``, as the stack's Redis
is configured), every XADD is announced on the channel
``__keyevent@<db>__:xadd`` with the key's name: the collector subscribes to
it and reads the streams named there as soon as they are named, rather than
all of its streams every ``poll_interval_ms``. The events are a hint, never
the truth: a collector still reads all of its streams now and then, so an
event lost (a dropped subscription, events switched off) delays an entry and
loses nothing. Without events it polls, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from wire.keys import XADD_EVENTS
from wire.replies import text

logger = logging.getLogger(__name__)

# Events taken in one call at most. More than that is a flood (a backlog
# arriving at once): reading every stream is then cheaper than parsing an
# announcement per entry, so the subscription is dropped, with what it
# holds, and taken up again later.
MAX_EVENTS = 1_000
# Events count as on while one was heard this recently.
QUIET_S = 60.0


class Wakeups:
    """A subscription to the XADD events, and the stream names they carry."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.clock = clock
        self._pubsub: Any = None
        self._heard_at: float | None = None
        self._refused = False

    @property
    def active(self) -> bool:
        """True while Redis announces XADDs (one was heard lately)."""
        return self._heard_at is not None and self.clock() - self._heard_at < QUIET_S

    def listening(self) -> bool:
        """True when subscribed (subscribing first if need be)."""
        return self._subscribed()

    def take(self, timeout_s: float = 0.0) -> set[str] | None:
        """The keys appended to since the last call, waiting up to ``timeout_s``
        for the first; an empty set when none (or when not subscribed), None
        after a flood (see :data:`MAX_EVENTS`): read everything."""
        if not self._subscribed():
            return set()
        named: set[str] = set()
        taken = 0
        try:
            message = self._pubsub.get_message(timeout=timeout_s)
            while message is not None:
                if message.get("type") == "pmessage":
                    named.add(text(message["data"]))
                    taken += 1
                    if taken >= MAX_EVENTS:
                        self.close()
                        self._heard_at = self.clock()
                        return None
                message = self._pubsub.get_message(timeout=0.0)
        except redis.RedisError as exc:
            logger.info("keyspace events interrupted (%s); subscribing again", exc)
            self.close()
        if named:
            self._heard_at = self.clock()
        return named

    def close(self) -> None:
        """Drop the subscription (the next call subscribes again)."""
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except redis.RedisError:
                pass
        self._pubsub = None

    def _subscribed(self) -> bool:
        if self._pubsub is not None:
            return True
        if self._refused:
            return False
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe(XADD_EVENTS)
        except redis.ResponseError as exc:
            # An ACL without the channel: poll, and say so once.
            logger.warning("cannot subscribe to keyspace events (%s); polling the streams", exc)
            self._refused = True
            pubsub.close()
            return False
        except redis.RedisError:
            pubsub.close()
            return False
        self._pubsub = pubsub
        return True
