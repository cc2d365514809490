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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
                  previous_ms: int | None) -> Outage | None:
    """Whether Redis was away since ``previous_ms``, the previous sweep of this
    process (see the module doc)."""
    started = redis_started_ms(client, now_ms)
    if started is not None:
        known_up = previous_ms if previous_ms is not None else _newest_heartbeat_ms(client, keys)
        if known_up is None or known_up < started:
            # Restarted since: it was away from the last sign of life before it.
            signs = [t for t in (known_up, _newest_report_before_ms(client, keys, started))
                     if t is not None and t < started]
            if signs:
                ended = started + 1000  # the latest the start can be
                return Outage(ended, ended - max(signs), "Redis restarted")
    if previous_ms is not None and now_ms - previous_ms > contact_gap_ms(settings):
        return Outage(now_ms, now_ms - previous_ms, "no sweep reached Redis")
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

# How often a sweeper schedules again the hosts missing from the due index (a
# pass over the hosts index, a page a step; a host at CRITICAL is read once
# more for it).
RESEED_S = 3600.0

# Entries of the due index (or of the hosts index, when it seeds the due
# index or grants a grace) that one step handles: a step takes a few
# milliseconds however big the fleet.
PAGE = 500


def next_due_ms(level: str, last_seen_ms: int, grace_until_ms: int | None, interval_s: float,
                settings: CollectorSettings) -> int | None:
    """When a host at ``level`` is due to be judged again, unless it reports
    first: the moment its counted silence passes the next threshold (None
    for a host at CRITICAL, or one without an interval: nothing can change)."""
    if interval_s <= 0 or level == STALE_CRITICAL:
        return None
    intervals = (settings.stale_warning_intervals if level == STALE_NO
                 else settings.stale_critical_intervals)
    return int(max(last_seen_ms, grace_until_ms or 0) + intervals * interval_s * 1000) + 1


def report_due_ms(entry_ms: int, interval_s: float, settings: CollectorSettings) -> int | None:
    """When a host that just reported is due to be judged (see :func:`next_due_ms`)."""
    return next_due_ms(STALE_NO, entry_ms, None, interval_s, settings)


def _newest_report_before_ms(client: Any, keys: KeySpace, before_ms: int) -> int | None:
    # A host's index score is the Redis time of its last report.
    newest = client.zrevrangebyscore(keys.hosts_index(), f"({before_ms}", "-inf", start=0,
                                     num=1, withscores=True)
    return int(newest[0][1]) if newest else None


def _rows(client: Any, keys: KeySpace, hosts: Sequence[str]) -> list[dict[str, str]]:
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.hmget(keys.host(host), _SWEEP_FIELDS)
    return [{name: _text(v) for name, v in zip(_SWEEP_FIELDS, row, strict=True)
             if v is not None} for row in pipe.execute()]


Owns = Callable[[str], bool]


def _owns_all(host: str) -> bool:
    return True


@dataclass
class _Pass:
    """A sweep under way: the outage it found, and where each phase is."""

    outage: Outage | None
    seed_cursor: int | None  # ZSCAN cursor over the hosts index; None when done
    grace_cursor: int | None  # likewise, while the outage's grace is given
    # The due hosts this pass left in the index (others', or a failed write).
    # The hosts it judged leave the range that is due (scheduled later, or
    # dropped at CRITICAL), so the range is these, then the hosts to judge.
    kept: list[str] = field(default_factory=list)
    graced: int = 0


class Sweeper:
    """Judges silent hosts a page at a time, from the due index.

    Each report schedules its host in the due index (``KeySpace.hosts_due``)
    for the moment it would turn stale, in the same atomic step that writes
    it. A pass reads only the hosts whose moment has come: a fleet that
    reports costs one empty read, whatever its size. Each host read is
    judged and scheduled again for its next threshold (or leaves the index
    at CRITICAL, until it reports), in one script that does nothing if the
    host reported meanwhile. A pass begins with the outage check; after an
    outage it first grants the grace to every host not heard from since,
    and the first pass of a sweeper, and one every :data:`RESEED_S`,
    schedules every host of the hosts index that is not in the due index
    (hosts written before it existed, or by an older collector). Each
    :meth:`step` does one page, so the collector reads its streams between
    them; :meth:`sweep` makes a whole pass.
    """

    def __init__(self, keys: KeySpace, settings: CollectorSettings, page: int = PAGE) -> None:
        self.keys = keys
        self.settings = settings
        self.page = page
        self.previous_ms: int | None = None  # Redis time of the previous step
        self._pass: _Pass | None = None
        self._seeded_ms: int | None = None  # Redis time of the last seeding

    @property
    def busy(self) -> bool:
        """True while a pass is under way: the next step continues it."""
        return self._pass is not None

    def sweep(self, client: Any, now_ms: int, owns: Owns | None = None) -> list[Transition]:
        """Finish the pass under way, or make a whole one; the transitions made."""
        made = self.step(client, now_ms, owns)
        while self.busy:
            made += self.step(client, now_ms, owns)
        return made

    def step(self, client: Any, now_ms: int, owns: Owns | None = None) -> list[Transition]:
        """One page of the pass under way (beginning one when none is); the
        transitions made (each needs an evaluation). ``owns`` narrows the
        judging to the hosts this collector reads."""
        outage = detect_outage(client, self.keys, self.settings, now_ms, self.previous_ms)
        if self._pass is None or outage is not None:
            # An outage in the middle of a pass starts it again: the hosts it
            # had still to judge are owed the grace first.
            seed = self._seeded_ms is None or now_ms - self._seeded_ms >= RESEED_S * 1000
            self._pass = _Pass(outage, 0 if seed else None, None if outage is None else 0)
        current = self._pass
        self.previous_ms = now_ms
        made: list[Transition] = []
        if current.seed_cursor is not None:
            current.seed_cursor = self._seed(client, current.seed_cursor)
            if current.seed_cursor is None:
                self._seeded_ms = now_ms
        elif current.grace_cursor is not None:
            assert current.outage is not None
            current.grace_cursor = self._grace(client, current, current.outage)
        elif self._judge_due(client, current, now_ms, owns or _owns_all, made):
            self._pass = None
        return made

    def _seed(self, client: Any, cursor: int) -> int | None:
        """Schedule a page of the hosts index for judging now, unless scheduled."""
        cursor, entries = client.zscan(self.keys.hosts_index(), cursor, count=self.page)
        if entries:
            # A host's index score is its last report: it is due at once, and
            # judged (and scheduled properly) by this very pass.
            client.zadd(self.keys.hosts_due(), {_text(host): int(score) for host, score in entries},
                        nx=True)
        return None if int(cursor) == 0 else int(cursor)

    def _grace(self, client: Any, current: _Pass, outage: Outage) -> int | None:
        """Give the outage's grace to a page of the hosts not heard from since."""
        cursor, entries = client.zscan(self.keys.hosts_index(), current.grace_cursor,
                                       count=self.page)
        owed = [_text(host) for host, score in entries if score < outage.ended_ms]
        if owed:
            rows = _rows(client, self.keys, owed)
            script = client.register_script(_GRACE_SOURCE)
            until = outage.grace_until_ms
            pipe = client.pipeline(transaction=False)
            for host, fields in zip(owed, rows, strict=True):
                last_seen = fields.get("last_seen_ms", "")
                if last_seen.isdigit() and (grace_until(fields) or 0) < until:
                    script(keys=[self.keys.host(host)],
                           args=[last_seen, until, iso_from_ms(until)], client=pipe)
            current.graced += sum(1 for result in pipe.execute(raise_on_error=False)
                                  if result == 1)
        if int(cursor) != 0:
            return int(cursor)
        logger.warning("%s (about %.1f s until %s): %d host(s) not heard from since are judged "
                       "stale only from %s on", outage.reason, outage.lasted_ms / 1000,
                       iso_from_ms(outage.ended_ms), current.graced,
                       iso_from_ms(outage.grace_until_ms))
        return None

    def _judge_due(self, client: Any, current: _Pass, now_ms: int, owns: Owns,
                   made: list[Transition]) -> bool:
        """Judge a page of the hosts that are due; True when none is left."""
        due = self.keys.hosts_due()
        if current.kept:
            # Some of those left meanwhile (judged by their owner, reported):
            # the hosts to judge begin right after the ones still there.
            scores = client.zmscore(due, current.kept)
            current.kept = [host for host, score in zip(current.kept, scores, strict=True)
                            if score is not None and score <= now_ms]
        hosts = [_text(host) for host in client.zrangebyscore(
            due, "-inf", now_ms, start=len(current.kept), num=self.page)]
        mine = [host for host in hosts if owns(host)]
        current.kept += [host for host in hosts if host not in mine]
        if mine:
            current.kept += sorted(self._judge(client, mine, now_ms, made))
        return len(hosts) < self.page

    def _judge(self, client: Any, hosts: Sequence[str], now_ms: int,
               made: list[Transition]) -> set[str]:
        """Judge ``hosts`` and schedule them again; those left due (a failed write)."""
        keys = self.keys
        # (redis-py loads a registered script before a pipeline that runs it.)
        judged = client.register_script(STALE)
        pipe = client.pipeline(transaction=False)
        judged_hosts: list[str] = []
        planned: list[Transition | None] = []
        gone: list[str] = []
        for host, fields in zip(hosts, _rows(client, keys, hosts), strict=True):
            last_seen = fields.get("last_seen_ms", "")
            if not last_seen.isdigit():
                # The hash was deleted (``forget`` or by hand): nothing to judge.
                gone.append(host)
                continue
            age_s = max(0.0, (now_ms - int(last_seen)) / 1000)
            before = fields.get("stale", STALE_NO)
            interval_s = _float(fields.get("interval_s"), 60.0)
            grace = grace_until(fields)
            level = judged_stale(age_s, judged_age_s(now_ms, int(last_seen), grace),
                                 interval_s, before, self.settings)
            due = next_due_ms(level, int(last_seen), grace, interval_s, self.settings)
            judged(keys=[keys.host(host), keys.hosts_due()],
                   args=[host, last_seen, level, host_status(fields, level).name,
                         "" if due is None else due], client=pipe)
            judged_hosts.append(host)
            planned.append(None if level == before
                           else Transition(host, before, level, round(age_s, 3)))
        if gone:
            pipe.zrem(keys.hosts_due(), *gone)
            pipe.zrem(keys.hosts_index(), *gone)
        results = pipe.execute(raise_on_error=False)
        failed = set()
        for host, transition, result in zip(judged_hosts, planned, results, strict=False):
            if isinstance(result, Exception):
                # Still due: left for the next pass, passed over in this one.
                failed.add(host)
                logger.warning("cannot judge the staleness of host %s: %s", host, result)
            elif transition is not None and result != SKIPPED:
                made.append(transition)
                logger.info("host %s stale: %s -> %s (silent %.1f s)", transition.host,
                            transition.before, transition.after, transition.age_s)
        return failed


# One sweeper per client for :func:`sweep`, so that each remembers its
# previous sweep (without keeping a client alive).
_sweepers: weakref.WeakKeyDictionary[Any, Sweeper] = weakref.WeakKeyDictionary()


def sweep(client: Any, keys: KeySpace, settings: CollectorSettings, now_ms: int
          ) -> list[Transition]:
    """A whole pass of the due hosts; the transitions made (each needs an evaluation)."""
    sweeper = _sweepers.get(client)
    if sweeper is None or sweeper.keys != keys or sweeper.settings != settings:
        sweeper = _sweepers[client] = Sweeper(keys, settings)
    return sweeper.sweep(client, now_ms)
