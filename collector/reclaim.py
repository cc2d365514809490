"""Reclaiming: entries that a consumer was given but never acknowledged.

A collector that dies between reading entries and applying them leaves them
pending in the consumer group. :meth:`Reclaimer.own` re-reads what is still
pending for this consumer's own name (after a restart under a fixed name,
or after an error of the connection); :meth:`Reclaimer.others` claims
entries idle past ``claim_min_idle_s`` from any consumer (XAUTOCLAIM), a
dead one's included. Entries delivered more than ``max_deliveries`` times
go to the dead-letter stream instead, so one entry that always fails cannot
hold a consumer forever. Consumers idle for long with nothing pending are
removed from the group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from collector.plan import Planner, Write
from collector.settings import CollectorSettings
from wire.replies import text

logger = logging.getLogger(__name__)

# Upper bounds of one reclaim pass, so a huge backlog of a dead consumer
# cannot starve new entries.
MAX_CLAIM_ROUNDS = 10

#: Plans and applies a batch of one stream: (stream, entries, delivery counts).
Process = Callable[[str, Sequence[Any], Mapping[str, int]], None]


class Reclaimer:
    """Claims and re-processes pending entries of the collector's streams."""

    def __init__(self, client: Any, settings: CollectorSettings, planner: Planner,
                 streams: Sequence[str], process: Process,
                 apply_now: Callable[[list[Write]], None]) -> None:
        self.client = client
        self.settings = settings
        self.planner = planner
        self.streams = streams
        self.process = process
        self.apply_now = apply_now

    @property
    def group(self) -> str:
        return self.planner.group

    @property
    def consumer(self) -> str:
        return self.planner.consumer

    def own(self) -> int:
        """Re-process entries delivered to this consumer name but never acknowledged."""
        handled = 0
        for stream in self.streams:
            cursor = "0"
            for _ in range(MAX_CLAIM_ROUNDS * 10):
                reply = self.client.xreadgroup(self.group, self.consumer, {stream: cursor},
                                               count=self.settings.batch_size)
                entries = [entry for _, batch in reply or [] for entry in batch]
                if not entries:
                    break
                cursor = text(entries[-1][0])
                self.process(stream, entries, self._delivery_counts(stream, entries))
                handled += len(entries)
        return handled

    def others(self) -> int:
        """Claim entries idle past ``claim_min_idle_s`` from other (dead) consumers."""
        min_idle_ms = int(self.settings.claim_min_idle_s * 1000)
        claimed = 0
        for stream in self.streams:
            self._dead_letter_overdelivered(stream, min_idle_ms)
            cursor = "0-0"
            for _ in range(MAX_CLAIM_ROUNDS):
                reply = self.client.xautoclaim(stream, self.group, self.consumer, min_idle_ms,
                                               cursor, count=self.settings.batch_size)
                start, cursor = cursor, text(reply[0])
                # Redis 6.2 answers an entry trimmed meanwhile as (nil, nil); it
                # stays pending, so it is found and dead-lettered by id.
                entries = [entry for entry in reply[1] if entry[0] is not None]
                if len(entries) < len(reply[1]):
                    self._dead_letter_vanished(stream, start, cursor, entries)
                if entries:
                    self.process(stream, entries, self._delivery_counts(stream, entries))
                    claimed += len(entries)
                if cursor in ("0-0", "0"):
                    break
        if claimed:
            logger.info("claimed %s entries left pending by other consumers", claimed)
        return claimed

    def forget_idle_consumers(self) -> None:
        """Remove consumers idle past ``forget_consumer_after_s`` with nothing pending."""
        limit_ms = self.settings.forget_consumer_after_s * 1000
        for stream in self.streams:
            try:
                consumers = self.client.xinfo_consumers(stream, self.group)
            except redis.ResponseError:
                continue
            for consumer in consumers:
                name = text(consumer.get("name", ""))
                if (name != self.consumer and int(consumer.get("pending") or 0) == 0
                        and int(consumer.get("idle") or 0) > limit_ms):
                    self.client.xgroup_delconsumer(stream, self.group, name)
                    logger.info("removed consumer %s (idle, nothing pending) from %s",
                                name, stream)

    def _delivery_counts(self, stream: str, entries: Sequence[Any]) -> dict[str, int]:
        ids = [text(entry[0]) for entry in entries]
        rows = self.client.xpending_range(stream, self.group, min=ids[0], max=ids[-1],
                                          count=len(ids) + 16, consumername=self.consumer)
        return {text(row["message_id"]): int(row["times_delivered"]) for row in rows}

    def _dead_letter_vanished(self, stream: str, start: str, cursor: str,
                              entries: Sequence[Any]) -> None:
        """Dead-letter what XAUTOCLAIM claimed but could not return (Redis < 7)."""
        returned = {text(entry[0]) for entry in entries}
        end = "+" if cursor in ("0-0", "0") else f"({cursor}"
        rows = self.client.xpending_range(stream, self.group, min=start, max=end,
                                          count=self.settings.batch_size * 2,
                                          consumername=self.consumer)
        writes = []
        for row in rows:
            entry_id = text(row["message_id"])
            if entry_id in returned or self.client.xrange(stream, min=entry_id, max=entry_id):
                continue
            writes.append(self.planner.dead_letter(stream, entry_id, None, "entry no longer in "
                                                   "the stream (trimmed before it was "
                                                   "processed)"))
        self.apply_now(writes)

    def _dead_letter_overdelivered(self, stream: str, min_idle_ms: int) -> None:
        rows = self.client.xpending_range(stream, self.group, min="-", max="+",
                                          count=self.settings.batch_size, idle=min_idle_ms)
        writes = []
        for row in rows:
            times = int(row["times_delivered"])
            if times < self.settings.max_deliveries:
                continue
            entry_id = text(row["message_id"])
            found = self.client.xrange(stream, min=entry_id, max=entry_id)
            fields = found[0][1] if found else None
            reason = (f"delivered {times} times without acknowledgement "
                      f"(last to {text(row['consumer'])})")
            if fields is None:
                reason += "; entry no longer in the stream"
            writes.append(self.planner.dead_letter(stream, entry_id, fields, reason))
        self.apply_now(writes)
