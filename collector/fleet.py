"""Reading the fleet's state back: what the status CLI and the exporter show.

Readers judge staleness themselves from the hosts' last-seen times and
Redis's clock (the effective level is the worse of that and the stored
one), so a host is reported stale even when no collector is left to sweep.
A grace the sweep gave after an outage of Redis (``grace_until_ms``) counts
here too; the age shown stays the whole silence.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from collector.keepalive import (
    GRACE_FIELD_MS,
    grace_until,
    judged_age_s,
    stale_level,
    worse_stale,
)
from collector.selfmon import (
    CollectorStats,
    CollectorView,
    heartbeat_stats,
    read_collectors,
)
from collector.settings import CollectorSettings
from wire.keys import KeySpace
from wire.replies import server_time_ms
from wire.replies import text as _text
from wire.state import HostState, check_severity, parse_host_state, stale_status
from wire.status import Status


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class HostView:
    """One host as a reader sees it now."""

    state: HostState
    age_s: float
    interval_s: float
    stale: str
    sessions: int | None

    @property
    def host(self) -> str:
        """The host id."""
        return self.state.host

    def check_statuses(self) -> dict[str, Status]:
        """The status of each reported check under the fleet's severity policy."""
        statuses = {}
        for name, fields in sorted(self.state.checks.items()):
            healthy = fields.get("healthy")
            statuses[name] = (check_severity(name, fields) if isinstance(healthy, bool)
                              else Status.UNKNOWN)
        return statuses

    @property
    def status(self) -> Status:
        """The worst of the checks and the staleness."""
        return Status.worst([*self.check_statuses().values(), stale_status(self.stale)])

    def figure(self, check: str, name: str) -> float | None:
        """A numeric field of a check, or None."""
        return _number(self.state.check_fields(check).get(name))


@dataclass(frozen=True)
class FleetView:
    """Every host (or the one asked for), the collectors and the running collectors' figures."""

    now_ms: int
    hosts: list[HostView]
    collectors: list[CollectorView]
    running: list[CollectorStats]
    dead_letters: int
    missing: list[str]


def _interval(fields: dict[str, str]) -> float:
    try:
        value = float(fields.get("interval_s", ""))
    except ValueError:
        return 60.0
    return value if value > 0 else 60.0


# Hosts read per pipeline round trip: few round trips, and neither this
# process nor Redis holds the replies of a whole big fleet at once.
READ_CHUNK = 1000

# The fields of a host hash that a fleet summary (the status line, ``hosts``,
# the exporter) shows or judges. A host whose ``unhealthy`` list is empty has
# every check healthy, so these are all of it that matters; the hash of a
# host with an unhealthy check is read whole, for the problem and its limits.
SUMMARY_FIELDS = (
    "status", "last_seen_ms", "stale", "clock_skew_s", "agent_version", "interval_s",
    "checks", "unhealthy", GRACE_FIELD_MS,
    "sessions.active_sessions", "sessions.max_sessions",
    "disk_space.percent_used", "disk_space.warning_threshold",
    "memory.process_rss_mb", "memory.warning_threshold_process_mb", "memory.system_percent",
)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), READ_CHUNK):
        yield items[start:start + READ_CHUNK]


def _all_healthy(fields: dict[str, str]) -> bool:
    """True when a host hash says that every check it lists was healthy."""
    return fields.get("unhealthy") == "" and "checks" in fields


def _read_hashes(client: Any, keys: KeySpace, hosts: Sequence[str], whole: bool
                 ) -> list[tuple[dict[str, str], int, int]]:
    """Per host: its hash (whole, or :data:`SUMMARY_FIELDS` with the checks'
    healthy flags filled in when none is unhealthy), its live sessions and
    whether the BBS tracks them."""
    rows: list[tuple[dict[str, str], int, int]] = []
    for chunk in _chunks(hosts):
        pipe = client.pipeline(transaction=False)
        for host in chunk:
            if whole:
                pipe.hgetall(keys.host(host))
            else:
                pipe.hmget(keys.host(host), SUMMARY_FIELDS)
            pipe.hlen(keys.host_sessions(host))
            pipe.exists(keys.host_sessions_order(host))
        replies = pipe.execute()
        for index in range(0, len(replies), 3):
            stored, live, tracked = replies[index:index + 3]
            if whole:
                fields = {_text(k): _text(v) for k, v in stored.items()}
            else:
                fields = {name: _text(value) for name, value in zip(SUMMARY_FIELDS, stored,
                                                                    strict=True)
                          if value is not None}
            rows.append((fields, live, tracked))
    if not whole:
        unhealthy = [i for i, (fields, _, _) in enumerate(rows)
                     if fields and not _all_healthy(fields)]
        for i, row in zip(unhealthy, _read_hashes(client, keys, [hosts[i] for i in unhealthy],
                                                  whole=True), strict=True):
            rows[i] = row
        for fields, _, _ in rows:
            if _all_healthy(fields):
                for name in filter(None, fields["checks"].split(",")):
                    fields[f"{name}.healthy"] = "true"
    return rows


def read_hosts(client: Any, keys: KeySpace, settings: CollectorSettings, now_ms: int,
               hosts: Sequence[str], whole: bool = True) -> tuple[list[HostView], list[str]]:
    """Views of ``hosts``; and the ids of those without any state.

    With ``whole`` False, the views of hosts whose checks are all healthy
    hold only :data:`SUMMARY_FIELDS` of them (what a summary of a big fleet
    needs); the others hold every figure.
    """
    views: list[HostView] = []
    missing: list[str] = []
    # Paused here rather than by each caller: the status CLI, the exporter
    # and the web page all read a whole fleet through this loop.
    with _garbage_collector_paused():
        for host, (fields, live, tracked) in zip(hosts, _read_hashes(client, keys, hosts, whole),
                                                 strict=True):
            if not fields:
                missing.append(host)
                continue
            state = parse_host_state(host, fields)
            interval = _interval(state.raw)
            age = max(0.0, (now_ms - state.last_seen_ms) / 1000) if state.last_seen_ms else 0.0
            # After an outage of Redis the sweep's grace says from when silence counts.
            judged = (judged_age_s(now_ms, state.last_seen_ms, grace_until(state.raw))
                      if state.last_seen_ms else 0.0)
            computed = stale_level(judged, interval, settings)
            reported = _number(state.check_fields("sessions").get("active_sessions"))
            # The BBS's own session events are fresher than the agent's count.
            sessions = int(live) if (live or tracked) else (
                int(reported) if reported is not None else None)
            views.append(HostView(state, round(age, 3), interval,
                                  worse_stale(state.stale, computed), sessions))
    return views, missing


def host_ids(client: Any, keys: KeySpace) -> list[str]:
    """Every host of the index, in id order."""
    return sorted(_text(h) for h in client.zrange(keys.hosts_index(), 0, -1))


@contextmanager
def _garbage_collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a fleet is read: what is made then
    stays alive until the answer is out, so its collections would only scan the
    same objects again and again (seconds at 100,000 hosts)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_fleet(client: Any, keys: KeySpace, settings: CollectorSettings,
               only: Sequence[str] | None = None, whole: bool = True) -> FleetView:
    """The fleet (or the hosts in ``only``) with the collectors' health; with
    ``whole`` False, healthy hosts with only their summary (see :func:`read_hosts`)."""
    now_ms = server_time_ms(client)
    hosts = list(only) if only is not None else host_ids(client, keys)
    views, missing = read_hosts(client, keys, settings, now_ms, hosts, whole)
    collectors = read_collectors(client, keys, now_ms)
    # A running collector's own figures; one silent past the ring's timeout
    # has left the ring and its last figures say nothing any more.
    running = [heartbeat_stats(view) for view in collectors
              if not view.stopped and view.age_s <= settings.ring_timeout_s]
    dead = int(client.xlen(keys.dead_letter_stream()))
    return FleetView(now_ms, views, collectors, running, dead, missing)
