"""The collector's own health: consumer-group figures and heartbeats.

Every collector writes a heartbeat hash (``KeySpace.collector(name)``) with
its counters and the group's lag and pending count, and scores its name by
the heartbeat time in ``KeySpace.collectors_index()``. The status CLI and the
exporter read them back to tell a stalled collector from a busy one. Times
are Redis server time, like everything else that judges liveness.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from wire.keys import KeySpace
from wire.replies import text as _text
from wire.state import entry_id_ms, iso_from_ms

logger = logging.getLogger(__name__)

# A heartbeat hash outlives its collector by this much, so a crashed one stays
# visible for a day (the status CLI names it) and then disappears on its own.
HEARTBEAT_TTL_S = 86_400
# A collector that stopped cleanly left nothing to investigate: its last
# heartbeat (state "stopped") stays long enough to be seen after a restart
# or a Ctrl-C, then goes, so restarts do not pile up entries for a day.
STOPPED_HEARTBEAT_TTL_S = 900
STOPPED = "stopped"
# Redis 6.2 has no 'lag' in XINFO GROUPS; there we count undelivered entries
# with XRANGE, up to this many, rather than transfer a large backlog.
LAG_COUNT_CAP = 1000


@dataclass(frozen=True)
class GroupStats:
    """The consumer group's position on one stream.

    ``lag`` counts entries not yet delivered to the group (saturating at
    :data:`LAG_COUNT_CAP` on Redis < 7), ``lag_s`` is the age of the oldest of
    them, ``pending`` counts entries delivered but not acknowledged and
    ``oldest_pending_s`` is the age of the oldest of those.
    """

    stream: str
    exists: bool
    pending: int = 0
    lag: int = 0
    lag_s: float = 0.0
    oldest_pending_s: float = 0.0
    consumers: int = 0


def group_stats(client: Any, stream: str, group: str, now_ms: int) -> GroupStats:
    """Figures of ``group`` on ``stream``; ``exists`` is False without the group."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return GroupStats(stream, exists=False)
    info: Mapping[str, Any] | None = None
    for item in groups:
        if _text(item.get("name", "")) == group:
            info = item
    if info is None:
        return GroupStats(stream, exists=False)
    pending = int(info.get("pending") or 0)
    last = _text(info.get("last-delivered-id") or "0-0")
    start = "-" if last == "0-0" else f"({last}"
    first_undelivered = client.xrange(stream, min=start, max="+", count=1)
    lag_s = 0.0
    lag = 0
    if first_undelivered:
        lag_s = max(0.0, (now_ms - entry_id_ms(first_undelivered[0][0])) / 1000)
        reported = info.get("lag")
        if reported is not None:
            lag = int(reported)
        else:
            lag = len(client.xrange(stream, min=start, max="+", count=LAG_COUNT_CAP))
    oldest_pending_s = 0.0
    if pending:
        summary = client.xpending(stream, group)
        if summary.get("min"):
            oldest_pending_s = max(0.0, (now_ms - entry_id_ms(summary["min"])) / 1000)
    return GroupStats(stream, True, pending, lag, round(lag_s, 3), round(oldest_pending_s, 3),
                      int(info.get("consumers") or 0))


def total(stats: Iterable[GroupStats]) -> dict[str, float]:
    """Sums (pending, lag) and maxima (ages) over the streams."""
    items = list(stats)
    return {
        "pending": sum(s.pending for s in items),
        "lag": sum(s.lag for s in items),
        "lag_s": max((s.lag_s for s in items), default=0.0),
        "oldest_pending_s": max((s.oldest_pending_s for s in items), default=0.0),
    }


def write_heartbeat(client: Any, keys: KeySpace, name: str, now_ms: int,
                    fields: Mapping[str, object]) -> None:
    """Write one collector's heartbeat hash and its score in the index.

    A heartbeat whose ``state`` is ``stopped`` (a clean stop) expires after
    :data:`STOPPED_HEARTBEAT_TTL_S`, any other after :data:`HEARTBEAT_TTL_S`.
    """
    record = {"heartbeat": iso_from_ms(now_ms), "heartbeat_ms": str(now_ms)}
    record.update({k: str(v) for k, v in fields.items()})
    ttl = STOPPED_HEARTBEAT_TTL_S if record.get("state") == STOPPED else HEARTBEAT_TTL_S
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.collector(name), mapping=record)
    pipe.expire(keys.collector(name), ttl)
    pipe.zadd(keys.collectors_index(), {name: now_ms})
    pipe.execute()


@dataclass(frozen=True)
class CollectorView:
    """One collector's last heartbeat as read back."""

    name: str
    heartbeat_ms: int
    age_s: float
    fields: dict[str, str]

    @property
    def stopped(self) -> bool:
        """True when its last heartbeat said it stopped cleanly."""
        return self.fields.get("state") == STOPPED

    def number(self, field: str) -> float:
        """A numeric field of the heartbeat, 0 when absent or not a number."""
        try:
            return float(self.fields.get(field, "0"))
        except ValueError:
            return 0.0


def read_collectors(client: Any, keys: KeySpace, now_ms: int) -> list[CollectorView]:
    """Every collector in the index, freshest first; stale index entries dropped."""
    entries = client.zrevrange(keys.collectors_index(), 0, -1, withscores=True)
    pipe = client.pipeline(transaction=False)
    names = [_text(member) for member, _ in entries]
    for name in names:
        pipe.hgetall(keys.collector(name))
    views = []
    for (name, (_, score)), raw in zip(zip(names, entries, strict=True), pipe.execute(),
                                       strict=True):
        if not raw:
            # The hash expired: the collector is long gone.
            continue
        fields = {_text(k): _text(v) for k, v in raw.items()}
        beat = int(score)
        views.append(CollectorView(name, beat, max(0.0, (now_ms - beat) / 1000), fields))
    return views
