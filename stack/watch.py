"""``mtbbs-monitor watch``: the live picture a sysop keeps open.

Reads the state the collector and the alerter keep in Redis, only through
the contract in :mod:`wire` (key names, the host hash's fields), and draws it
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

import json
import logging
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from wire.keys import KeySpace
from wire.replies import server_time_ms
from wire.replies import text as _text
from wire.state import STALE_CRITICAL, STALE_NO, age_text, parse_value
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
# Of a collector's heartbeat hash, the figures a sysop looks at first (the
# host streams it reads and how many collectors share the hosts among them
# included); any other hash is shown whole.
COLLECTOR_FIELDS = ("state", "caught_up", "streams", "collectors", "lag", "pending",
                    "processed", "dead_lettered", "errors")
# The status CLI's default for a stalled collector ([collector] stall_after_s).
COLLECTOR_STALL_S = 60.0


def clean(text: Any) -> str:
    """Text from Redis made safe for a terminal: no control characters."""
    value = _text(text)
    if value.isprintable():  # nearly always: one check for the whole text
        return value
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
    last = len(BARS) - 1
    if span <= 0:
        return "".join(" " if v is None else BARS[0 if v <= bottom else last] for v in values)
    scale = len(BARS) / span
    bars = []
    for value in values:
        if value is None:
            bars.append(" ")
        elif value <= bottom:
            bars.append(BARS[0])
        elif value >= top:
            bars.append(BARS[last])
        else:
            bars.append(BARS[min(int((value - bottom) * scale), last)])
    return "".join(bars)


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
        # Only the figures are shown, and float() refuses any control character.
        parts = _text(raw).split(",")
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


def _sessions(texts: Collection[str]) -> tuple[int, int]:
    """How many sessions the JSON texts are, and how many of them are guests."""
    guests = 0
    for text in texts:
        try:
            info = json.loads(text)
        except ValueError:
            continue
        if isinstance(info, dict) and info.get("user_id") == "guest":
            guests += 1
    return len(texts), guests


# Hosts read per pipeline round trip: few round trips, and neither watch nor
# Redis holds the replies for a whole big fleet at once.
READ_CHUNK = 1000
# The fields of a host hash that a row shows (read as parse_host_state does).
ROW_FIELDS = ("status", "last_seen_ms", "stale", "sessions.active_sessions",
              "disk_space.percent_used", "memory.process_rss_mb")


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), READ_CHUNK):
        yield items[start:start + READ_CHUNK]


def read_snapshot(client: Any, keys: KeySpace, history_points: int = 30,
                  width: int | None = None) -> Snapshot:
    """Read hosts, alerts and collectors from Redis (a round trip per thousand hosts).

    With a console ``width``, each host's history is read only as far back
    as a sparkline there can show (none when they do not fit).
    """
    now_ms = server_time_ms(client)
    hosts = [clean(h) for h in client.zrange(keys.hosts_index(), 0, -1)]
    rows = []
    for chunk in _chunks(hosts):
        pipe = client.pipeline(transaction=False)
        for host in chunk:
            pipe.hmget(keys.host(host), ROW_FIELDS)
            pipe.hvals(keys.host_sessions(host))
        replies = pipe.execute()
        for host, stored, sessions in zip(chunk, replies[0::2], replies[1::2], strict=True):
            status, last_seen, stale, reported, disk, memory = (
                "" if value is None else clean(value) for value in stored)
            active: int | None
            active, guests = _sessions([clean(text) for text in sessions])
            if not sessions:
                count = _number(parse_value(reported))
                active = int(count) if count is not None else None
            rows.append(HostRow(
                host=host, status=Status.parse(status or "UNKNOWN"),
                last_seen_ms=int(last_seen) if last_seen.isdigit() else 0,
                stale=stale or STALE_NO, sessions=active, guests=guests,
                disk_percent=_number(parse_value(disk)),
                memory_mb=_number(parse_value(memory)),
            ))
    rows.sort(key=lambda r: (-int(r.status), r.host))
    snapshot = Snapshot(now_ms, rows, read_alerts(client, keys), read_collectors(client, keys))
    points = history_points
    if width is not None:
        # The room the headers alone leave: no sparkline of this console is longer.
        points = min(points, spark_room(host_layout(Snapshot(now_ms, [], [], [])), width))
    if points <= 0:
        return snapshot
    histories: list[list[tuple[float | None, float | None, float | None]]] = []
    for chunk in _chunks([row.host for row in rows]):
        pipe = client.pipeline(transaction=False)
        for host in chunk:
            pipe.lrange(keys.host_history(host), 0, points - 1)
        histories.extend(parse_history(lines) for lines in pipe.execute())
    return Snapshot(now_ms, [replace(row, history=history)
                             for row, history in zip(rows, histories, strict=True)],
                    snapshot.alerts, snapshot.collectors)


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


# The hosts table is laid out here rather than by rich's Table: a frame of a
# big fleet has thousands of rows, and rich measures and wraps every cell
# (seconds for 10,000 hosts) where this costs one pass of string padding.
HOST_HEADERS = ("host", "status", "seen", "stale", "sess", "guest", "disk%", "rss MB")
RIGHT_ALIGNED = frozenset({"seen", "sess", "guest", "disk%", "rss MB"})
# After which column each history sparkline goes, its series in HostRow.history
# and its scale (low, high; None: the data's).
SPARKS = {"sess": (0, 0.0, None), "disk%": (1, 0.0, 100.0), "rss MB": (2, 0.0, None)}
SPARK_HEADER = "trend"
COLUMN_GAP = 2


@dataclass(frozen=True)
class HostsLayout:
    """The text and style of every hosts-table cell, and each column's width."""

    cells: list[list[tuple[str, str]]]
    widths: list[int]
    points: int

    @property
    def fixed_width(self) -> int:
        """Cells the table takes without sparklines."""
        return sum(self.widths) + COLUMN_GAP * (len(self.widths) - 1)


def host_layout(snapshot: Snapshot) -> HostsLayout:
    """Lay out the hosts' cells once per frame."""
    cells = []
    for row in snapshot.hosts:
        age = age_text((snapshot.now_ms - row.last_seen_ms) / 1000) if row.last_seen_ms else "-"
        stale, stale_style = "", ""
        if row.stale != STALE_NO:
            stale = row.stale
            stale_style = "bold red" if row.stale == STALE_CRITICAL else "bold yellow"
        cells.append([
            (row.host, "bold"), (row.status.name, STATUS_STYLE[row.status]), (age, ""),
            (stale, stale_style), ("-" if row.sessions is None else str(row.sessions), ""),
            (str(row.guests), ""), (_figure(row.disk_percent), ""), (_figure(row.memory_mb), ""),
        ])
    widths = [cell_len(h) for h in HOST_HEADERS]
    for row_cells in cells:
        widths = [max(w, cell_len(text)) for w, (text, _) in zip(widths, row_cells, strict=True)]
    points = max((len(h.history) for h in snapshot.hosts), default=0)
    return HostsLayout(cells, widths, points)


def spark_room(layout: HostsLayout, console_width: int) -> int:
    """How many points each sparkline has room for on a console this wide (0: the
    sparklines do not fit).

    The three sparklines share what the other columns leave, and vanish when
    fewer points than their header is wide would fit.
    """
    room = (console_width - layout.fixed_width - len(SPARKS) * COLUMN_GAP) // len(SPARKS)
    return room if room >= len(SPARK_HEADER) else 0


def spark_width(snapshot: Snapshot | HostsLayout, console_width: int) -> int:
    """How many history points each sparkline shows on a console this wide."""
    layout = snapshot if isinstance(snapshot, HostsLayout) else host_layout(snapshot)
    width = min(layout.points, spark_room(layout, console_width))
    return width if width >= len(SPARK_HEADER) else 0


def _aligned(text: str, width: int, header: str) -> str:
    space = " " * (width - cell_len(text))
    return space + text if header in RIGHT_ALIGNED else text + space


class StyledLines:
    """Lines of (text, style) pieces, handed to rich as segments as they are.

    rich crops them to the console's width (the host id comes first, so it
    is the last thing cut) and colours them; it does not measure or wrap.
    """

    def __init__(self, lines: list[list[tuple[str, str]]]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        newline = Segment.line()
        if console.color_system is None:
            # Plain text (a pipe, a log): one segment a line is all rich needs.
            for line in self.lines:
                yield Segment("".join(text for text, _ in line))
                yield newline
            return
        styles: dict[str, Style] = {}
        for line in self.lines:
            for text, style in line:
                if not style:
                    yield Segment(text)
                    continue
                if style not in styles:
                    styles[style] = console.get_style(style)
                yield Segment(text, styles[style])
            yield newline


def hosts_table(snapshot: Snapshot, sparks: int = 20,
                layout: HostsLayout | None = None) -> StyledLines:
    """The hosts table, with sparklines of the last ``sparks`` points (0: none)."""
    layout = layout or host_layout(snapshot)
    gap = " " * COLUMN_GAP
    spark_cell = max(sparks, len(SPARK_HEADER))
    headers: list[str] = []
    for header, width in zip(HOST_HEADERS, layout.widths, strict=True):
        headers.append(_aligned(header, width, header))
        if sparks and header in SPARKS:
            headers.append(SPARK_HEADER.ljust(spark_cell))
    heading = gap.join(headers).rstrip()
    lines: list[list[tuple[str, str]]] = [[("Hosts", "italic")], [(heading, "bold")],
                                          [("─" * cell_len(heading), "")]]
    for row, row_cells in zip(snapshot.hosts, layout.cells, strict=True):
        history = row.history[-sparks:] if sparks else []
        line: list[tuple[str, str]] = []
        for index, ((text, style), header, width) in enumerate(
                zip(row_cells, HOST_HEADERS, layout.widths, strict=True)):
            line.append((gap + _aligned(text, width, header) if index
                         else _aligned(text, width, header), style))
            if sparks and header in SPARKS:
                series, low, high = SPARKS[header]
                bars = sparkline([p[series] for p in history], low=low, high=high)
                line.append((gap + bars.ljust(spark_cell), "cyan"))
        lines.append(line)
    if not snapshot.hosts:
        lines.append([("no host has reported yet (is an agent running?)", "dim")])
    return StyledLines(lines)


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
    layout = host_layout(snapshot)
    sparks = spark_width(layout, width)
    parts: list[RenderableType] = [summary, hosts_table(snapshot, sparks, layout)]
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
            snapshot = read_snapshot(client, keys, history_points, console.width)
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
