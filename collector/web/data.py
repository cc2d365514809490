"""What the web page shows, read from Redis as plain, JSON-ready dicts.

The same dicts feed the HTML and ``/api/...``, so a script reading the API
sees exactly what a person sees. Reads are pipelined: the fleet costs a
fixed handful of round trips however many hosts there are. Key names come
only from :mod:`wire.keys`; alert and silence hashes are the alerter's, read
as plain text here because the collector must not import the alerter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from collector.fleet import HostView, host_ids, read_hosts
from collector.selfmon import read_collectors
from collector.settings import CollectorSettings
from wire.keys import KeySpace, valid_host_id
from wire.replies import server_time_ms
from wire.replies import text as _text
from wire.status import Status

# History points behind each sparkline of the fleet page.
FLEET_HISTORY_POINTS = 30
# History points of the host page's charts (the collector keeps 2016 by default,
# a week of 5-minute reports).
HOST_HISTORY_POINTS = 2016
# Alert states the fleet page lists; ok and resolved ones are only on host pages.
ACTIVE_ALERT_STATES = ("firing", "pending")
# Fields of a check that say what went wrong, in order of preference.
ERROR_FIELDS = ("error", "reason", "message")
# Fields of a check never shown: a filesystem path says nothing to a person
# looking at a fleet and tells a stranger where the data lives.
HIDDEN_CHECK_FIELDS = frozenset({"path"})
# Where the agent's checks carry their warning thresholds (check, field).
THRESHOLDS = {
    "sessions": ("sessions", "max_sessions"),
    "disk": ("disk_space", "warning_threshold"),
    "rss": ("memory", "warning_threshold_process_mb"),
}


def _texts(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in (raw or {}).items()}


def _float(text: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int(text: str | None) -> int | None:
    try:
        return int(text or "")
    except ValueError:
        return None


def _iso_ms(text: str) -> int | None:
    """Unix milliseconds of a stored ISO UTC time, None when it is not one."""
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def parse_history(lines: Iterable[Any], with_times: bool = True) -> dict[str, list[Any]]:
    """Series of the history list (newest first in Redis), oldest first here.

    Each line is ``timestamp,sessions,disk_percent,memory_mb`` with the
    timestamp as ISO UTC text; ``t`` (left out without ``with_times``, as the
    sparklines need no times) holds unix milliseconds, None when the time is
    unreadable; a malformed figure is None, so gaps stay gaps.
    """
    times: list[int | None] = []
    sessions: list[float | None] = []
    disk: list[float | None] = []
    rss: list[float | None] = []
    for raw in reversed(list(lines)):
        parts = _text(raw).split(",")
        if len(parts) < 4:
            continue
        if with_times:
            times.append(_iso_ms(parts[0]))
        sessions.append(_float(parts[1]))
        disk.append(_float(parts[2]))
        rss.append(_float(parts[3]))
    series: dict[str, list[Any]] = {"t": times} if with_times else {}
    series.update(sessions=sessions, disk=disk, rss=rss)
    return series


def _sessions(raw: Mapping[str, str]) -> list[dict[str, Any]]:
    """The sessions hash as a list of dicts, oldest connection first."""
    sessions = []
    for client_id, text in raw.items():
        try:
            info = json.loads(text)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            info = {}
        sessions.append({
            "client_id": str(info.get("client_id") or client_id),
            "user_id": None if info.get("user_id") is None else str(info["user_id"]),
            "state": str(info.get("state") or ""),
            "connected_at": str(info.get("connected_at") or ""),
            "connected_ms": _iso_ms(str(info.get("connected_at") or "")),
        })
    sessions.sort(key=lambda s: (s["connected_at"], s["client_id"]))
    return sessions


def _host_summary(view: HostView, sessions: list[dict[str, Any]],
                  history: dict[str, list[Any]]) -> dict[str, Any]:
    guests = sum(1 for s in sessions if s["user_id"] == "guest")
    return {
        "host": view.host,
        "status": view.status.name,
        "last_seen_ms": view.state.last_seen_ms or None,
        "age_s": view.age_s if view.state.last_seen_ms else None,
        "stale": view.stale,
        "sessions": view.sessions,
        "guests": guests,
        "disk_percent": view.figure("disk_space", "percent_used"),
        "rss_mb": view.figure("memory", "process_rss_mb"),
        "history": history,
    }


def _alert(host: str, check: str, fields: Mapping[str, str]) -> dict[str, Any]:
    level = _int(fields.get("level"))
    severity = fields.get("severity") or {1: "warning", 2: "critical"}.get(level or 0, "")
    return {
        "host": host,
        "check": check,
        "state": fields.get("state", "ok"),
        "severity": severity,
        "since_ms": _int(fields.get("since_ms")),
        "firing_since_ms": _int(fields.get("firing_since_ms")),
        "summary": fields.get("summary", ""),
        "flapping": fields.get("flapping", "") in ("1", "true", "yes"),
        "history": fields.get("history", ""),
    }


def read_alerts(client: Any, keys: KeySpace, *, host: str | None = None,
                states: Sequence[str] | None = ACTIVE_ALERT_STATES) -> list[dict[str, Any]]:
    """Alert states (those in ``states``; None: all), of ``host`` or of every host."""
    members = sorted(_text(m) for m in client.smembers(keys.alerts_index()))
    pairs = [tuple(m.split("/", 1)) for m in members if "/" in m]
    if host is not None:
        pairs = [p for p in pairs if p[0] == host]
    if not pairs:
        return []
    pipe = client.pipeline(transaction=False)
    for alert_host, check in pairs:
        pipe.hgetall(keys.alert(alert_host, check))
    alerts = []
    for (alert_host, check), raw in zip(pairs, pipe.execute(), strict=True):
        if not raw:
            continue
        alert = _alert(alert_host, check, _texts(raw))
        if states is None or alert["state"] in states:
            alerts.append(alert)
    alerts.sort(key=lambda a: (a["state"] != "firing", a["severity"] != "critical",
                               a["host"], a["check"]))
    return alerts


def read_collector_rows(client: Any, keys: KeySpace, settings: CollectorSettings,
                        now_ms: int) -> list[dict[str, Any]]:
    """Each collector's heartbeat age, state, the host streams it reads, the
    collectors it shares the hosts with, and its lag and pending count (all
    as its heartbeat says; a stopped collector reads nothing); stalled when
    silent ``stall_after_s``, as the status CLI judges it."""
    rows = []
    for view in read_collectors(client, keys, now_ms):
        state = view.fields.get("state", "")
        rows.append({
            "name": view.name,
            "heartbeat_ms": view.heartbeat_ms,
            "age_s": round(view.age_s, 3),
            "state": state,
            "stalled": not view.stopped and view.age_s > settings.stall_after_s,
            "streams": None if view.stopped else _int(view.fields.get("streams")),
            "sharing": None if view.stopped else _int(view.fields.get("collectors")),
            "lag": _int(view.fields.get("lag")),
            "pending": _int(view.fields.get("pending")),
            "processed": _int(view.fields.get("processed")),
        })
    return rows


def _order(hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Worst first, then by id, as ``mtbbs-monitor watch`` orders its rows."""
    return sorted(hosts, key=lambda h: (-int(Status[h["status"]]), h["host"]))


def read_fleet_page(client: Any, keys: KeySpace, settings: CollectorSettings) -> dict[str, Any]:
    """Everything the fleet page shows."""
    now_ms = server_time_ms(client)
    ids = host_ids(client, keys)
    # The page shows only a summary of each host: healthy hosts' hashes are
    # read in part, as for a scrape (the page refreshes every few seconds).
    views, _ = read_hosts(client, keys, settings, now_ms, ids, whole=False)
    pipe = client.pipeline(transaction=False)
    for view in views:
        pipe.hgetall(keys.host_sessions(view.host))
        pipe.lrange(keys.host_history(view.host), 0, FLEET_HISTORY_POINTS - 1)
    replies = pipe.execute() if views else []
    hosts = [_host_summary(view, _sessions(_texts(replies[2 * i])),
                           parse_history(replies[2 * i + 1], with_times=False))
             for i, view in enumerate(views)]
    hosts = _order(hosts)
    counts: dict[str, int] = {}
    for host in hosts:
        counts[host["status"]] = counts.get(host["status"], 0) + 1
    return {
        "now_ms": now_ms,
        "counts": counts,
        "hosts": hosts,
        "alerts": read_alerts(client, keys),
        "collectors": read_collector_rows(client, keys, settings, now_ms),
    }


def _checks(view: HostView) -> list[dict[str, Any]]:
    statuses = view.check_statuses()
    checks = []
    for name, fields in sorted(view.state.checks.items()):
        error = next((str(fields[f]) for f in ERROR_FIELDS if fields.get(f)), "")
        shown = {k: v for k, v in sorted(fields.items())
                 if k not in HIDDEN_CHECK_FIELDS and k not in ERROR_FIELDS}
        checks.append({"name": name, "status": statuses[name].name, "fields": shown,
                       "error": error})
    return checks


def _silences(raw: Mapping[str, str], host: str, now_ms: int) -> list[dict[str, Any]]:
    """Silences not yet ended whose host pattern covers ``host``."""
    found = []
    for text in raw.values():
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if not isinstance(doc, dict) or not fnmatchcase(host, str(doc.get("host", ""))):
            continue
        ends = doc.get("ends_ms")
        if isinstance(ends, int) and ends <= now_ms:
            continue
        found.append({
            "id": str(doc.get("id", "")),
            "host": str(doc.get("host", "")),
            "check": None if doc.get("check") is None else str(doc["check"]),
            "starts_ms": doc.get("starts_ms") if isinstance(doc.get("starts_ms"), int) else None,
            "ends_ms": ends if isinstance(ends, int) else None,
            "daily": None if doc.get("daily") is None else str(doc["daily"]),
            "timezone": str(doc.get("timezone", "UTC")),
            "reason": str(doc.get("reason", "")),
            "author": str(doc.get("author", "")),
        })
    found.sort(key=lambda s: (s["starts_ms"] or 0, s["id"]))
    return found


def read_host_page(client: Any, keys: KeySpace, settings: CollectorSettings,
                   host: str) -> dict[str, Any] | None:
    """Everything the host page shows; None when the host has no state."""
    if not valid_host_id(host):
        return None
    now_ms = server_time_ms(client)
    views, _ = read_hosts(client, keys, settings, now_ms, [host])
    if not views:
        return None
    view = views[0]
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.host_sessions(host))
    pipe.lrange(keys.host_history(host), 0, HOST_HISTORY_POINTS - 1)
    pipe.hgetall(keys.silences())
    sessions_raw, history_raw, silences_raw = pipe.execute()
    sessions = _sessions(_texts(sessions_raw))
    page = _host_summary(view, sessions, parse_history(history_raw))
    thresholds = {}
    for series, (check, field) in THRESHOLDS.items():
        value = view.figure(check, field)
        if value is not None:
            thresholds[series] = value
    page.update({
        "now_ms": now_ms,
        "interval_s": view.interval_s,
        "agent_version": view.state.agent_version,
        "clock_skew_s": view.state.clock_skew_s,
        "checks": _checks(view),
        "sessions_list": sessions,
        "thresholds": thresholds,
        "alerts": read_alerts(client, keys, host=host, states=None),
        "silences": _silences(_texts(silences_raw), host, now_ms),
    })
    return page
