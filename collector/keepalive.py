"""Keepalive: judge hosts that went silent as stale, by Redis's clock.

A host reports every ``interval_s`` seconds (the agent says so in each
report). Silent for ``stale_warning_intervals`` of them it is stale at
WARNING, for ``stale_critical_intervals`` at CRITICAL; its ``stale`` and
``status`` fields say so. The sweep writes a level through a script that
first checks that the host has not reported meanwhile, so a sweep never
overwrites a fresh report; the next report clears the level again. The
pure functions here are shared with the status CLI and the exporter, which
judge staleness themselves too (a dead collector does not sweep).

**Silence counts only while Redis could be reached.** When Redis was away
(killed and restarted, a failover, a network cut) no host could report, and
the agents, backing off, come back a while after Redis does. So a sweep that
finds Redis came back notes an *outage* and gives every host not heard from
since the outage's end a grace: its silence is counted from
``grace_until_ms`` = end of the outage + as long again as the outage lasted
(an agent retrying with a doubling delay retries within about that long), at
most :data:`OUTAGE_GRACE_MAX_S`. The host's usual thresholds then apply from
that moment. The grace is written into the host hash (``grace_until_ms``,
``grace_until``) so that the status CLI and the exporter judge the same way;
the host's next report replaces the hash and so drops it. A grace never lowers
a level already reached: a host that was stale before the outage stays so.

An outage is recognised by a sweep in two ways:

* Redis restarted (``INFO server`` ``uptime_in_seconds``) after the last
  sign of it being up that the sweep knows of: this process's previous
  sweep, else the newest collector heartbeat, and the newest report before
  the restart (which also tells how long it was away);
* this process's previous sweep lies more than :func:`contact_gap_ms` back:
  the collector could not reach Redis meanwhile (or was working off a
  backlog, when hosts only look silent as well); the outage ends now.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from collector.scripts import SKIPPED, STALE
from collector.settings import CollectorSettings
from wire.keys import KeySpace
from wire.replies import text as _text
from wire.state import (
    STALE_CRITICAL,
    STALE_NO,
    STALE_WARNING,
    checks_status,
    iso_from_ms,
    stale_status,
)
from wire.status import Status

logger = logging.getLogger(__name__)

_LEVELS = {STALE_NO: 0, STALE_WARNING: 1, STALE_CRITICAL: 2}

# The longest grace after an outage: the agents' default longest retry delay
# ([agent] backoff_max); a host's own thresholds still apply after it.
OUTAGE_GRACE_MAX_S = 60.0
GRACE_FIELD_MS = "grace_until_ms"
GRACE_FIELD = "grace_until"

# KEYS: host hash. ARGV: last_seen_ms the sweep judged, grace_until_ms, its ISO text.
# Only while the host has not reported since (a report replaces the hash) and
# never shortening a grace already given.
_GRACE_SOURCE = """
local stored = redis.call('HMGET', KEYS[1], 'last_seen_ms', 'grace_until_ms')
if stored[1] ~= ARGV[1] then return 0 end
if stored[2] and (tonumber(stored[2]) or 0) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'grace_until_ms', ARGV[2], 'grace_until', ARGV[3])
return 1
"""

# Redis time (ms) of the previous completed sweep, per client (so per
# collector in a process, without keeping a client alive).
_previous_sweep: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def stale_level(age_s: float, interval_s: float, settings: CollectorSettings) -> str:
    """The staleness of a host last seen ``age_s`` ago that reports every ``interval_s``."""
    if interval_s <= 0:
        return STALE_NO
    if age_s > settings.stale_critical_intervals * interval_s:
        return STALE_CRITICAL
    if age_s > settings.stale_warning_intervals * interval_s:
        return STALE_WARNING
    return STALE_NO


def worse_stale(a: str, b: str) -> str:
    """The more severe of two staleness levels (unknown text counts as none)."""
    return a if _LEVELS.get(a, 0) >= _LEVELS.get(b, 0) else b


def judged_age_s(now_ms: int, last_seen_ms: int, grace_until_ms: int | None) -> float:
    """The silence that counts: since the last report, or since the grace's end."""
    since = max(last_seen_ms, grace_until_ms or 0)
    return max(0.0, (now_ms - since) / 1000)


def grace_until(fields: Mapping[str, str]) -> int | None:
    """A host hash's ``grace_until_ms``, when it has a valid one."""
    text = fields.get(GRACE_FIELD_MS, "")
    return int(text) if text.isdigit() else None


def judged_stale(age_s: float, judged_s: float, interval_s: float, before: str,
                 settings: CollectorSettings) -> str:
    """The level the sweep writes: raised only as far as the silence that counts
    (``judged_s``) goes, and never lowered by a grace below ``before`` while the
    whole silence (``age_s``) still reaches it."""
    judged = stale_level(judged_s, interval_s, settings)
    if _LEVELS[judged] >= _LEVELS.get(before, 0):
        return judged
    real = stale_level(age_s, interval_s, settings)
    return before if _LEVELS[real] >= _LEVELS.get(before, 0) else real


@dataclass(frozen=True)
class Outage:
    """Redis was away until ``ended_ms`` for ``lasted_ms`` (both Redis clock)."""

    ended_ms: int
    lasted_ms: int
    reason: str = "Redis was away"

    @property
    def grace_until_ms(self) -> int:
        """Until when the silence of a host not heard from since does not count."""
        return self.ended_ms + min(max(0, self.lasted_ms), int(OUTAGE_GRACE_MAX_S * 1000))


def contact_gap_ms(settings: CollectorSettings) -> int:
    """A gap between two sweeps of one process longer than this means lost contact.

    Sweeps come every ``sweep_interval_s`` (later while a backlog is worked
    off); twice that and a second of slack is an interruption.
    """
    return int((2 * settings.sweep_interval_s + 1.0) * 1000)


def redis_started_ms(client: Any, now_ms: int) -> int | None:
    """When Redis (re)started, from ``INFO server`` (None when it does not say).

    ``uptime_in_seconds`` counts whole seconds, so the start lies within the
    second after the value returned, which is the earliest it can be.
    """
    try:
        info = client.info("server")
    except redis.RedisError as exc:  # an ACL without INFO, a proxy without it
        logger.debug("INFO server unavailable: %s", exc)
        return None
    uptime = info.get("uptime_in_seconds") if isinstance(info, Mapping) else None
    if not isinstance(uptime, int) or isinstance(uptime, bool) or uptime < 0:
        return None
    return now_ms - (uptime + 1) * 1000 + 1


def _newest_heartbeat_ms(client: Any, keys: KeySpace) -> int | None:
    newest = client.zrevrange(keys.collectors_index(), 0, 0, withscores=True)
    return int(newest[0][1]) if newest else None


def detect_outage(client: Any, keys: KeySpace, settings: CollectorSettings, now_ms: int,
                  last_seens: Sequence[int]) -> Outage | None:
    """Whether Redis was away since this process's previous sweep (see the module doc)."""
    previous = _previous_sweep.get(client)
    started = redis_started_ms(client, now_ms)
    if started is not None:
        known_up = previous if previous is not None else _newest_heartbeat_ms(client, keys)
        if known_up is None or known_up < started:
            # Restarted since: it was away from the last sign of life before it.
            signs = [t for t in (known_up, *last_seens) if t is not None and t < started]
            if signs:
                ended = started + 1000  # the latest the start can be
                return Outage(ended, ended - max(signs), "Redis restarted")
    if previous is not None and now_ms - previous > contact_gap_ms(settings):
        return Outage(now_ms, now_ms - previous, "no sweep reached Redis")
    return None


def _float(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def base_status(fields: Mapping[str, str]) -> Status:
    """A host's status from its checks alone, without staleness."""
    stored = fields.get("report_status")
    if stored:
        return Status.parse(stored)
    # A hash written without report_status: rebuild it from the unhealthy list.
    return checks_status([n for n in fields.get("unhealthy", "").split(",") if n])


def host_status(fields: Mapping[str, str], stale: str) -> Status:
    """A host's status under a staleness level."""
    return Status.worst([base_status(fields), stale_status(stale)])


@dataclass(frozen=True)
class Transition:
    """A host whose staleness level the sweep changed."""

    host: str
    before: str
    after: str
    age_s: float


_SWEEP_FIELDS = ("last_seen_ms", "interval_s", "stale", "report_status", "unhealthy",
                 GRACE_FIELD_MS)


def _give_grace(client: Any, keys: KeySpace, outage: Outage,
                hosts: Sequence[tuple[str, str]]) -> None:
    """Write the grace into the hashes of ``(host, last_seen_ms)`` not heard from since."""
    script = client.register_script(_GRACE_SOURCE)
    until = outage.grace_until_ms
    pipe = client.pipeline(transaction=False)
    for host, last_seen in hosts:
        script(keys=[keys.host(host)], args=[last_seen, until, iso_from_ms(until)], client=pipe)
    results = pipe.execute(raise_on_error=False)
    failed = sum(1 for r in results if isinstance(r, Exception))
    logger.warning("%s (about %.1f s until %s): %d host(s) not heard from since are judged "
                   "stale only from %s on%s", outage.reason, outage.lasted_ms / 1000,
                   iso_from_ms(outage.ended_ms), len(hosts), iso_from_ms(until),
                   f" ({failed} grace write(s) failed)" if failed else "")


def sweep(client: Any, keys: KeySpace, settings: CollectorSettings, now_ms: int
          ) -> list[Transition]:
    """Judge every host of the index; the transitions made (each needs an evaluation)."""
    hosts = [_text(h) for h in client.zrange(keys.hosts_index(), 0, -1)]
    if not hosts:
        _previous_sweep[client] = now_ms
        return []
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.hmget(keys.host(host), _SWEEP_FIELDS)
    rows = pipe.execute()
    table = [{name: _text(v) for name, v in zip(_SWEEP_FIELDS, row, strict=True)
              if v is not None} for row in rows]
    outage = detect_outage(client, keys, settings, now_ms,
                           [int(f["last_seen_ms"]) for f in table
                            if f.get("last_seen_ms", "").isdigit()])
    if outage is not None:
        owed = [(host, f["last_seen_ms"]) for host, f in zip(hosts, table, strict=True)
                if f.get("last_seen_ms", "").isdigit()
                and int(f["last_seen_ms"]) < outage.ended_ms
                and (grace_until(f) or 0) < outage.grace_until_ms]
        if owed:
            _give_grace(client, keys, outage, owed)
            given = {host for host, _ in owed}
            for host, f in zip(hosts, table, strict=True):
                if host in given:
                    f[GRACE_FIELD_MS] = str(outage.grace_until_ms)
    planned: list[Transition] = []
    gone: list[str] = []
    # (redis-py loads a registered script before a pipeline that runs it.)
    mark_stale = client.register_script(STALE)
    pipe = client.pipeline(transaction=False)
    for host, fields in zip(hosts, table, strict=True):
        last_seen = fields.get("last_seen_ms", "")
        if not last_seen.isdigit():
            if not fields:
                gone.append(host)
            continue
        age_s = max(0.0, (now_ms - int(last_seen)) / 1000)
        before = fields.get("stale", STALE_NO)
        level = judged_stale(age_s, judged_age_s(now_ms, int(last_seen), grace_until(fields)),
                             _float(fields.get("interval_s"), 60.0), before, settings)
        if level == before:
            continue
        status = host_status(fields, level)
        mark_stale(keys=[keys.host(host)], args=[last_seen, level, status.name], client=pipe)
        planned.append(Transition(host, before, level, round(age_s, 3)))
    if gone:
        # The hash was deleted (``forget`` or by hand): drop it from the index.
        pipe.zrem(keys.hosts_index(), *gone)
    results = pipe.execute(raise_on_error=False) if planned or gone else []
    made: list[Transition] = []
    for transition, result in zip(planned, results, strict=False):
        if isinstance(result, Exception) or result == SKIPPED:
            continue
        made.append(transition)
        logger.info("host %s stale: %s -> %s (silent %.1f s)", transition.host,
                    transition.before, transition.after, transition.age_s)
    _previous_sweep[client] = now_ms
    return made
