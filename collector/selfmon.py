"""The collector's own health: heartbeats and the figures they carry.

Every collector writes a heartbeat hash (``KeySpace.collector(name)``) with
its counters, lag and pending count, and scores its name by the heartbeat
time in ``KeySpace.collectors_index()`` and, while it runs, in the ring
(``KeySpace.collector_ring()``) that shares the hosts among collectors. The status CLI and the
exporter read them back to tell a stalled collector from a busy one. Times
are Redis server time, like everything else that judges liveness.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wire.keys import KeySpace
from wire.replies import text as _text
from wire.state import iso_from_ms

logger = logging.getLogger(__name__)

# A heartbeat hash outlives its collector by this much, so a crashed one stays
# visible for a day (the status CLI names it) and then disappears on its own.
HEARTBEAT_TTL_S = 86_400
# A collector that stopped cleanly left nothing to investigate: its last
# heartbeat (state "stopped") stays long enough to be seen after a restart
# or a Ctrl-C, then goes, so restarts do not pile up entries for a day.
STOPPED_HEARTBEAT_TTL_S = 900
STOPPED = "stopped"


@dataclass(frozen=True)
class CollectorStats:
    """How far one collector is behind on the streams it reads, from its heartbeat.

    ``lag`` counts entries it read in its last round while more were
    waiting (0 when it is caught up), ``lag_s`` is the age of the oldest of
    them, ``pending`` counts entries delivered but not acknowledged on its
    streams and ``oldest_pending_s`` is the age of the oldest entry it holds
    back until an older one of its stream is applied.
    """

    collector: str
    pending: int = 0
    lag: int = 0
    lag_s: float = 0.0
    oldest_pending_s: float = 0.0


def heartbeat_stats(view: CollectorView) -> CollectorStats:
    """The figures of one collector's heartbeat."""
    return CollectorStats(view.name, int(view.number("pending")), int(view.number("lag")),
                      view.number("lag_s"), view.number("oldest_pending_s"))


def total(stats: Iterable[CollectorStats]) -> dict[str, float]:
    """Sums (pending, lag) and maxima (ages) over the collectors."""
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
    # The ring is who shares the hosts: a clean stop leaves it at once, so
    # the others take this collector's hosts without waiting for a timeout.
    if record.get("state") == STOPPED:
        pipe.zrem(keys.collector_ring(), name)
    else:
        pipe.zadd(keys.collector_ring(), {name: now_ms})
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
