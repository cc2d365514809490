"""Keepalive: judge hosts that went silent as stale, by Redis's clock.

A host reports every ``interval_s`` seconds (the agent says so in each
report). Silent for ``stale_warning_intervals`` of them it is stale at
WARNING, for ``stale_critical_intervals`` at CRITICAL; its ``stale`` and
``status`` fields say so. The sweep writes a level through a script that
first checks that the host has not reported meanwhile, so a sweep never
overwrites a fresh report; the next report clears the level again. The
pure functions here are shared with the status CLI and the exporter, which
judge staleness themselves too (a dead collector does not sweep).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.scripts import SKIPPED, STALE_SCRIPT
from collector.settings import CollectorSettings
from wire.keys import KeySpace
from wire.state import STALE_CRITICAL, STALE_NO, STALE_WARNING, check_status, stale_status
from wire.status import Status

logger = logging.getLogger(__name__)

_LEVELS = {STALE_NO: 0, STALE_WARNING: 1, STALE_CRITICAL: 2}


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
    unhealthy = [n for n in fields.get("unhealthy", "").split(",") if n]
    return Status.worst(check_status(name, False) for name in unhealthy)


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


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_SWEEP_FIELDS = ("last_seen_ms", "interval_s", "stale", "report_status", "unhealthy")


def sweep(client: Any, keys: KeySpace, settings: CollectorSettings, now_ms: int
          ) -> list[Transition]:
    """Judge every host of the index; the transitions made (each needs an evaluation)."""
    hosts = [_text(h) for h in client.zrange(keys.hosts_index(), 0, -1)]
    if not hosts:
        return []
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.hmget(keys.host(host), _SWEEP_FIELDS)
    rows = pipe.execute()
    planned: list[Transition] = []
    gone: list[str] = []
    pipe = client.pipeline(transaction=False)
    for host, row in zip(hosts, rows, strict=True):
        fields = {name: _text(v) for name, v in zip(_SWEEP_FIELDS, row, strict=True)
                  if v is not None}
        last_seen = fields.get("last_seen_ms", "")
        if not last_seen.isdigit():
            if not fields:
                gone.append(host)
            continue
        age_s = max(0.0, (now_ms - int(last_seen)) / 1000)
        level = stale_level(age_s, _float(fields.get("interval_s"), 60.0), settings)
        before = fields.get("stale", STALE_NO)
        if level == before:
            continue
        status = host_status(fields, level)
        STALE_SCRIPT.call(pipe, [keys.host(host)], [last_seen, level, status.name])
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
    return made
