"""``mtbbs-monitor watch``: the live picture a sysop keeps open.

Reads the state the collector and the alerter keep in Redis, only through
the contract in :mod:`wire` (key names, ``parse_host_state``), and draws it
with rich: one row per host with its status colour, last-seen age, stale
flag, sessions, disk and memory figures with sparklines of recent history,
then the firing alerts and the collectors' heartbeats.

On a terminal it redraws in place without the alternate screen, so it works
over plain SSH and leaves the last picture in the scrollback. When the
output is not a terminal it prints plain-text snapshots one after another
(``--once``: one snapshot), which suits ``ssh host mtbbs-monitor watch`` and
logs. Ages are measured against Redis's clock, like everything else.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from wire.keys import KeySpace
from wire.state import STALE_CRITICAL, STALE_NO, parse_host_state
from wire.status import Status

logger = logging.getLogger(__name__)

BARS = "▁▂▃▄▅▆▇█"
STATUS_STYLE = {
    Status.OK: "bold green",
    Status.WARNING: "bold yellow",
    Status.CRITICAL: "bold red",
    Status.UNKNOWN: "bold magenta",
}
# Alert hashes are the alerter's; watch only needs to know which field holds
# the state and which states deserve a row.
ALERT_STATE_FIELDS = ("state", "phase", "status")
SHOWN_ALERT_STATES = frozenset({"firing", "pending"})
ALERT_DETAIL_FIELDS = 4
# The alerter's fields worth a glance, when its hash has them; the
# bookkeeping fields (history, marks, counters) are left out.
ALERT_FIELDS = ("severity", "since", "summary")
ALERT_SKIPPED = frozenset({"host", "check", "history", "mark", "seq", "level", "since_ms",
                           "firing_since_ms", "flap_since_ms", "last_notified_ms", "updated",
                           "breach_summary", "notified", "suppressed", "repeats",
                           "flap_percent"})
# Of a collector's heartbeat hash, the figures a sysop looks at first; any
# other hash is shown whole.
COLLECTOR_FIELDS = ("state", "caught_up", "lag", "pending", "processed", "dead_lettered",
                    "errors")
# The status CLI's default for a stalled collector ([collector] stall_after_s).
COLLECTOR_STALL_S = 60.0


def clean(text: Any) -> str:
    """Text from Redis made safe for a terminal: no control characters."""
    value = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return "".join(c if c.isprintable() else "?" for c in value)


def sparkline(values: Sequence[float | None], low: float | None = None,
              high: float | None = None) -> str:
    """One bar per value, scaled between ``low`` and ``high`` (default: the data's).

    A missing value is a space, so gaps in the history stay visible.
    """
    present = [v for v in values if v is not None]
    if not present:
        return ""
    bottom = min(present) if low is None else low
    top = max(present) if high is None else high
    span = top - bottom
    bars = []
    for value in values:
        if value is None:
            bars.append(" ")
            continue
        if span <= 0:
            index = 0 if value <= bottom else len(BARS) - 1
        else:
            ratio = (min(max(value, bottom), top) - bottom) / span
            index = min(int(ratio * len(BARS)), len(BARS) - 1)
        bars.append(BARS[index])
    return "".join(bars)


def age_text(seconds: float) -> str:
    """``4s``, ``2m05s``, ``3h07m`` or ``2d04h``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_history(lines: Iterable[Any]) -> list[tuple[float | None, float | None, float | None]]:
    """(sessions, disk_percent, memory_mb) from history CSV lines, oldest first.

    The list in Redis is newest first; a malformed line becomes a gap.
    """
    points: list[tuple[float | None, float | None, float | None]] = []
    for raw in lines:
        parts = clean(raw).split(",")
        figures: list[float | None] = []
        for text in parts[1:4] if len(parts) >= 4 else ["", "", ""]:
            try:
                figures.append(float(text))
            except ValueError:
                figures.append(None)
        points.append((figures[0], figures[1], figures[2]))
    points.reverse()
    return points


@dataclass(frozen=True)
class HostRow:
    """What watch shows of one host."""

    host: str
    status: Status
    last_seen_ms: int
    stale: str
    sessions: int | None
    guests: int
    disk_percent: float | None
    memory_mb: float | None
    history: list[tuple[float | None, float | None, float | None]] = field(default_factory=list)


@dataclass(frozen=True)
class AlertRow:
    """One alert state that is pending or firing."""

    host: str
    check: str
    state: str
    details: dict[str, str]


@dataclass(frozen=True)
class CollectorRow:
    """One collector's heartbeat."""

    name: str
    heartbeat_ms: int
    details: dict[str, str]


@dataclass(frozen=True)
class Snapshot:
    """Everything one refresh shows, read at Redis time ``now_ms``."""

    now_ms: int
    hosts: list[HostRow]
    alerts: list[AlertRow]
    collectors: list[CollectorRow]


def _text_map(raw: Any) -> dict[str, str]:
    return {clean(k): clean(v) for k, v in (raw or {}).items()}


def _sessions(raw: dict[str, str]) -> tuple[int, int]:
    guests = 0
    for text in raw.values():
        try:
            info = json.loads(text)
        except ValueError:
            continue
        if isinstance(info, dict) and info.get("user_id") == "guest":
            guests += 1
    return len(raw), guests


def read_snapshot(client: Any, keys: KeySpace, history_points: int = 30) -> Snapshot:
    """Read hosts, alerts and collectors from Redis (a handful of round trips)."""
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    hosts = [clean(h) for h in client.zrange(keys.hosts_index(), 0, -1)]
    pipe = client.pipeline(transaction=False)
    for host in hosts:
        pipe.hgetall(keys.host(host))
        pipe.hgetall(keys.host_sessions(host))
        if history_points > 0:
            pipe.lrange(keys.host_history(host), 0, history_points - 1)
    results = pipe.execute()
    step = 3 if history_points > 0 else 2
    rows = []
    for index, host in enumerate(hosts):
        state = parse_host_state(host, results[index * step] or {})
        sessions_raw = _text_map(results[index * step + 1])
        history = parse_history(results[index * step + 2]) if history_points > 0 else []
        active: int | None
        active, guests = _sessions(sessions_raw)
        if not sessions_raw:
            reported = _number(state.check_fields("sessions").get("active_sessions"))
            active = int(reported) if reported is not None else None
        rows.append(HostRow(
            host=host, status=state.status, last_seen_ms=state.last_seen_ms,
            stale=state.stale, sessions=active, guests=guests,
            disk_percent=_number(state.check_fields("disk_space").get("percent_used")),
            memory_mb=_number(state.check_fields("memory").get("process_rss_mb")),
            history=history,
        ))
    rows.sort(key=lambda r: (-int(r.status), r.host))
    return Snapshot(now_ms, rows, read_alerts(client, keys), read_collectors(client, keys))


def read_alerts(client: Any, keys: KeySpace) -> list[AlertRow]:
    """Alert states that are pending or firing, read generically from their hashes."""
    members = sorted(clean(m) for m in client.smembers(keys.alerts_index()))
    pairs = [m.split("/", 1) for m in members if "/" in m]
    pipe = client.pipeline(transaction=False)
    for host, check in pairs:
        pipe.hgetall(keys.alert(host, check))
    alerts = []
    for (host, check), raw in zip(pairs, pipe.execute() if pairs else [], strict=True):
        fields = _text_map(raw)
        state = next((fields[f] for f in ALERT_STATE_FIELDS if f in fields), "")
        if state.lower() not in SHOWN_ALERT_STATES:
            continue
        known = [k for k in ALERT_FIELDS if fields.get(k)]
        rest = sorted(k for k, v in fields.items() if v and k not in ALERT_STATE_FIELDS
                      and k not in ALERT_SKIPPED and k not in known)
        details = {k: fields[k] for k in known + rest
                   if not (k == "flapping" and fields[k] == "no")}
        alerts.append(AlertRow(host, check, state.lower(), details))
    alerts.sort(key=lambda a: (a.state != "firing", a.host, a.check))
    return alerts


def read_collectors(client: Any, keys: KeySpace) -> list[CollectorRow]:
    """Every collector's last heartbeat and its published figures."""
    entries = client.zrange(keys.collectors_index(), 0, -1, withscores=True)
    pipe = client.pipeline(transaction=False)
    for name, _ in entries:
        pipe.hgetall(keys.collector(clean(name)))
    details = pipe.execute() if entries else []
    # An index entry whose hash expired is a collector long gone (or one
    # that stopped cleanly a while ago): not worth a row.
    return [CollectorRow(clean(name), int(score), _text_map(raw))
            for (name, score), raw in zip(entries, details, strict=True) if raw]


# -- drawing -------------------------------------------------------------------


def _figure(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if value != int(value) else f"{int(value)}{unit}"


def spark_width(snapshot: Snapshot, console_width: int) -> int:
    """How many history points each sparkline shows on a console this wide.

    The three sparklines share what the other columns leave, and vanish when
    fewer than 4 points would fit.
    """
    points = max((len(h.history) for h in snapshot.hosts), default=0)
    measuring = Console(file=io.StringIO(), width=10_000)
    fixed = measuring.measure(hosts_table(snapshot, 0)).maximum
    # Each sparkline column adds its padding and the figure column beside it
    # grows by nothing: 3 cells per column besides its bars.
    width = min(points, (console_width - fixed - 9) // 3)
    return width if width >= 4 else 0


def hosts_table(snapshot: Snapshot, sparks: int = 20) -> Table:
    """The hosts table, with sparklines of the last ``sparks`` points (0: none)."""
    table = Table(title="Hosts", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    columns = [("host", "left"), ("status", "left"), ("seen", "right"), ("stale", "left"),
               ("sess", "right"), ("guest", "right"), ("", "left"), ("disk%", "right"),
               ("", "left"), ("rss MB", "right"), ("", "left")]
    longest = max((len(h.host) for h in snapshot.hosts), default=4)
    for name, justify in columns:
        if sparks or name:
            # On a narrow terminal the figures may be cut, never the host id.
            table.add_column(name, justify=justify, no_wrap=True,  # type: ignore[arg-type]
                             min_width=longest if name == "host" else None)
    for row in snapshot.hosts:
        age = age_text((snapshot.now_ms - row.last_seen_ms) / 1000) if row.last_seen_ms else "-"
        stale = Text("")
        if row.stale != STALE_NO:
            stale = Text(row.stale, style="bold red" if row.stale == STALE_CRITICAL
                         else "bold yellow")
        history = row.history[-sparks:] if sparks else []
        cells: list[RenderableType] = [
            Text(row.host, style="bold"), Text(row.status.name, style=STATUS_STYLE[row.status]),
            age, stale, "-" if row.sessions is None else str(row.sessions), str(row.guests)]
        spark_cells = [
            Text(sparkline([p[0] for p in history], low=0), style="cyan"),
            Text(sparkline([p[1] for p in history], low=0, high=100), style="cyan"),
            Text(sparkline([p[2] for p in history], low=0), style="cyan"),
        ]
        figures = [_figure(row.disk_percent), _figure(row.memory_mb)]
        if sparks:
            cells += [spark_cells[0], figures[0], spark_cells[1], figures[1], spark_cells[2]]
        else:
            cells += figures
        table.add_row(*cells)
    if not snapshot.hosts:
        table.caption = "no host has reported yet (is an agent running?)"
    return table


def alerts_table(snapshot: Snapshot) -> Table:
    """Pending and firing alerts."""
    table = Table(title="Alerts", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("host", "check", "state", "details"):
        table.add_column(name, no_wrap=name != "details")
    for alert in snapshot.alerts:
        critical = alert.details.get("severity", "").lower() == "critical"
        style = "bold red" if alert.state == "firing" and critical else \
            "bold yellow" if alert.state == "firing" else "yellow"
        details = " ".join(f"{k}={v}" for k, v in list(alert.details.items())[
            :ALERT_DETAIL_FIELDS])
        table.add_row(alert.host, alert.check, Text(alert.state.upper(), style=style),
                      Text(details))
    return table


def collectors_table(snapshot: Snapshot) -> Table:
    """Collector heartbeats."""
    table = Table(title="Collectors", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("collector", "heartbeat", "details"):
        table.add_column(name, no_wrap=name != "details")
    for row in snapshot.collectors:
        age = (snapshot.now_ms - row.heartbeat_ms) / 1000
        # A collector that said it stopped is not stalled: no alarm colour.
        if row.details.get("state") == "stopped":
            style = "dim"
        else:
            style = "green" if age < COLLECTOR_STALL_S else "bold red"
        shown = [k for k in COLLECTOR_FIELDS if k in row.details] or [
            k for k in row.details if k not in ("heartbeat", "heartbeat_ms")]
        details = " ".join(f"{k}={row.details[k]}" for k in shown)
        table.add_row(row.name, Text(f"{age_text(age)} ago", style=style), Text(details))
    if not snapshot.collectors:
        table.caption = Text("no collector heartbeat: is 'mtbbs-collector run' running?",
                             style="bold red")
    return table


def render(snapshot: Snapshot, source: str, width: int = 120) -> RenderableType:
    """The whole picture of one snapshot for a console ``width`` characters wide."""
    from wire.state import iso_from_ms

    counts: dict[Status, int] = {}
    for row in snapshot.hosts:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = Text(f"mtbbs-monitor watch  {source}  {iso_from_ms(snapshot.now_ms)} (Redis "
                   f"time)  hosts: {len(snapshot.hosts)}")
    for status in (Status.CRITICAL, Status.WARNING, Status.UNKNOWN, Status.OK):
        if counts.get(status):
            summary.append(f"  {status.name} {counts[status]}", style=STATUS_STYLE[status])
    sparks = spark_width(snapshot, width)
    parts: list[RenderableType] = [summary, hosts_table(snapshot, sparks)]
    if snapshot.alerts:
        parts.append(alerts_table(snapshot))
    parts.append(collectors_table(snapshot))
    return Group(*parts)


def problem(source: str, exc: Exception, retrying: bool) -> RenderableType:
    """What watch shows while Redis cannot be read."""
    reason = clean(str(exc).splitlines()[0]) if str(exc) else ""
    return Text(f"mtbbs-monitor watch  {source}\ncannot read Redis: {type(exc).__name__}: "
                f"{reason}{'  (retrying)' if retrying else ''}", style="bold red")


def make_console(out: IO[str] | None = None) -> Console:
    """A console that writes plain text when ``out`` is not a terminal."""
    console = Console(file=out, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(file=out, highlight=False, soft_wrap=False, color_system=None,
                          width=console.width if console.width > 80 else 120)
    return console


def run(client: Any, keys: KeySpace, source: str, *, interval: float, once: bool,
        history_points: int, out: IO[str] | None = None,
        stop: threading.Event | None = None) -> int:
    """Draw until Ctrl-C (or ``stop``); with ``once``, draw one snapshot."""
    console = make_console(out)
    stop = stop or threading.Event()

    def picture() -> tuple[RenderableType, bool]:
        try:
            snapshot = read_snapshot(client, keys, history_points)
            return render(snapshot, source, console.width), True
        except Exception as exc:  # a watch survives a Redis outage
            logger.debug("reading Redis failed", exc_info=True)
            return problem(source, exc, not once), False

    try:
        if once:
            view, ok = picture()
            console.print(view)
            return 0 if ok else 3
        if not console.is_terminal:
            while True:
                console.print(picture()[0])
                console.print()
                if stop.wait(interval):
                    return 0
        with Live(picture()[0], console=console, auto_refresh=False, screen=False,
                  transient=False, redirect_stdout=False, redirect_stderr=False) as live:
            while not stop.wait(interval):
                live.update(picture()[0], refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
