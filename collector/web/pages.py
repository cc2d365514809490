"""The HTML of the fleet page and the host page, and the JSON the page's script reads.

Pages are complete without script (a person with script off sees the same
figures, only not refreshed); ``static/web.js`` then refreshes them from
``/api/...``. Every text that came from Redis passes through :func:`esc`
(``html.escape``), attribute values included; nothing is ever placed in a
``<script>``, and the page loads its script and style as files, so the
Content-Security-Policy can forbid inline script outright.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any
from urllib.parse import quote

from collector.web.charts import spark_points, sparkline, time_chart
from collector.web.i18n import labels
from wire.state import age_text

# Sparkline scales (low, high; None: the data's own) per history series.
SPARK_SCALES: dict[str, tuple[float | None, float | None]] = {
    "sessions": (0.0, None),
    "disk": (0.0, 100.0),
    "rss": (0.0, None),
}
# Seconds between the page's refreshes, handed to its script.
FLEET_REFRESH_S = 5
HOST_REFRESH_S = 10
NUMERIC_COLUMNS = frozenset({"seen", "sessions", "guests", "disk", "rss"})


def esc(value: Any) -> str:
    """Any value as HTML text, quotes included (safe in attributes too)."""
    return escape("" if value is None else str(value), quote=True)


def host_url(host: str) -> str:
    """The host page's path."""
    return "/host/" + quote(host, safe="")


def figure(value: float | int | None) -> str:
    """A figure as a person reads it: ``50.1``, ``3``, ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float) and value != int(value):
        return f"{value:.1f}"
    return str(int(value))


def iso_utc(ms: int | None) -> str:
    """``2026-11-28 10:30:45 UTC`` of unix milliseconds; '-' for none."""
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def moment(ms: int | None) -> str:
    """A ``<time>`` element the script rewrites in the viewer's time zone."""
    if not ms:
        return "-"
    return f'<time data-ms="{int(ms)}">{esc(iso_utc(ms))}</time>'


def _status_word(text: dict[str, str], status: str) -> str:
    return text.get(status, status)


def badge(text: dict[str, str], status: str) -> str:
    """Status as a colour and as a word, so that it reads without colour."""
    return (f'<span class="badge st-{esc(status)}" data-status="{esc(status)}">'
            f'{esc(_status_word(text, status))}</span>')


def _stale_word(text: dict[str, str], stale: str) -> str:
    return "" if stale == "no" else text.get(stale, stale)


def _alert_state_word(text: dict[str, str], state: str) -> str:
    return text.get("pending_state" if state == "pending" else state, state)


def _document(lang: str, title: str, page: str, api: str, refresh_s: int, body: str,
              text: dict[str, str]) -> str:
    # The script's labels travel in a data attribute (escaped JSON), not in
    # an inline script, which the Content-Security-Policy forbids.
    script_labels = json.dumps(text, ensure_ascii=False)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{esc(lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        '<link rel="stylesheet" href="/static/web.css">'
        '<script src="/static/web.js" defer></script></head>'
        f'<body data-page="{esc(page)}" data-api="{esc(api)}" data-refresh="{refresh_s}" '
        f'data-lang="{esc(lang)}" data-labels="{esc(script_labels)}">'
        f"{body}</body></html>\n"
    )


def _banner(text: dict[str, str], redis_error: str | None) -> str:
    shown = redis_error is not None
    detail = (f"{text['redis_down']} ({redis_error}): {text['redis_down_detail']}"
              if shown else "")
    return (f'<div id="banner" class="banner" role="alert"{"" if shown else " hidden"}>'
            f"{esc(detail)}</div>")


def _spark_cell(name: str, values: list[float | None], label_html: str) -> str:
    low, high = SPARK_SCALES[name]
    return sparkline(values, low, high, label_html=label_html)


def escaped_labels(text: dict[str, str]) -> dict[str, str]:
    """Every label as HTML text."""
    return {key: esc(value) for key, value in text.items()}


def host_row(text: dict[str, str], host: dict[str, Any], lab: dict[str, str]) -> str:
    """One row of the fleet's hosts table (``lab``: the labels already escaped,
    which a big fleet's page would otherwise escape once per row)."""
    history = host["history"]
    stale = host["stale"]
    cells = [
        f'<td class="c-host" data-label="{lab["host"]}">'
        f'<a href="{esc(host_url(host["host"]))}">{esc(host["host"])}</a></td>',
        f'<td class="c-status" data-label="{lab["status"]}">'
        f'{badge(text, host["status"])}</td>',
        f'<td class="c-seen num" data-label="{lab["seen"]}">'
        f'{esc(age_text(host["age_s"]))}</td>',
        f'<td class="c-stale stale-{esc(stale)}" data-label="{lab["stale"]}">'
        f'{esc(_stale_word(text, stale))}</td>',
        f'<td class="c-sessions num" data-label="{lab["sessions"]}">'
        f'<span class="v">{esc(figure(host["sessions"]))}</span>'
        f'{_spark_cell("sessions", history["sessions"], lab["sessions"])}</td>',
        f'<td class="c-guests num" data-label="{lab["guests"]}">'
        f'{esc(figure(host["guests"]))}</td>',
        f'<td class="c-disk num" data-label="{lab["disk"]}">'
        f'<span class="v">{esc(figure(host["disk_percent"]))}</span>'
        f'{_spark_cell("disk", history["disk"], lab["disk"])}</td>',
        f'<td class="c-rss num" data-label="{lab["rss"]}">'
        f'<span class="v">{esc(figure(host["rss_mb"]))}</span>'
        f'{_spark_cell("rss", history["rss"], lab["rss"])}</td>',
    ]
    return (f'<tr data-host="{esc(host["host"])}" class="row st-{esc(host["status"])}">'
            + "".join(cells) + "</tr>")


def alert_rows(text: dict[str, str], alerts: list[dict[str, Any]]) -> str:
    """The rows of the fleet's alerts table."""
    rows = []
    for alert in alerts:
        rows.append(
            f'<tr class="alert-{esc(alert["state"])} sev-{esc(alert["severity"])}">'
            f'<td data-label="{esc(text["host"])}"><a href="{esc(host_url(alert["host"]))}">'
            f'{esc(alert["host"])}</a></td>'
            f'<td data-label="{esc(text["check"])}">{esc(alert["check"])}</td>'
            f'<td data-label="{esc(text["state"])}" class="alert-state">'
            f'{esc(_alert_state_word(text, alert["state"]))}</td>'
            f'<td data-label="{esc(text["severity"])}">'
            f'{esc(text.get(alert["severity"], alert["severity"]))}</td>'
            f'<td data-label="{esc(text["since"])}">{moment(alert["since_ms"])}</td>'
            f'<td data-label="{esc(text["summary"])}">{esc(alert["summary"])}</td></tr>')
    return "".join(rows)


def collector_rows(text: dict[str, str], collectors: list[dict[str, Any]]) -> str:
    """The rows of the fleet's collectors table."""
    rows = []
    for row in collectors:
        state = "stalled" if row["stalled"] else (row["state"] or "running")
        rows.append(
            f'<tr class="collector-{esc(state)}">'
            f'<td data-label="{esc(text["collector"])}">{esc(row["name"])}</td>'
            f'<td data-label="{esc(text["heartbeat"])}">'
            f'{esc(age_text(row["age_s"]))} {esc(text["ago"])}</td>'
            f'<td data-label="{esc(text["state"])}">{esc(text.get(state, state))}</td>'
            f'<td class="num" data-label="{esc(text["streams"])}">'
            f'{esc(figure(row["streams"]))}</td>'
            f'<td class="num" data-label="{esc(text["sharing"])}">'
            f'{esc(figure(row["sharing"]))}</td>'
            f'<td class="num" data-label="{esc(text["lag"])}">{esc(figure(row["lag"]))}</td>'
            f'<td class="num" data-label="{esc(text["pending"])}">'
            f'{esc(figure(row["pending"]))}</td></tr>')
    return "".join(rows)


def _counts(text: dict[str, str], counts: dict[str, int]) -> str:
    parts = []
    for status in ("CRITICAL", "WARNING", "UNKNOWN", "OK"):
        if counts.get(status):
            parts.append(f'<span class="count st-{status}">{esc(text[status])} '
                         f"{counts[status]}</span>")
    return " ".join(parts)


def fleet_page(lang: str, fleet: dict[str, Any] | None, redis_error: str | None = None) -> str:
    """The fleet page; without ``fleet`` (Redis unreadable) its frame and the banner."""
    text = labels(lang)
    data = fleet or {"now_ms": None, "counts": {}, "hosts": [], "alerts": [], "collectors": []}
    headers = "".join(
        f'<th class="h-{key}{" num" if key in NUMERIC_COLUMNS else ""}">{esc(text[key])}</th>'
        for key in ("host", "status", "seen", "stale", "sessions", "guests", "disk", "rss"))
    lab = escaped_labels(text)
    rows = "".join(host_row(text, host, lab) for host in data["hosts"])
    empty = "" if data["hosts"] or fleet is None else \
        f'<p class="empty" id="no-hosts">{esc(text["no_hosts"])}</p>'
    old = ' class="old"' if redis_error else ""
    body = (
        f"{_banner(text, redis_error)}"
        f'<header><h1>{esc(text["fleet_title"])}</h1>'
        f'<p class="meta"><span id="counts">{_counts(text, data["counts"])}</span> '
        f'<span class="clock">{esc(text["redis_time"])}: '
        f'<span id="now">{moment(data["now_ms"])}</span></span></p></header>'
        f"<main id=\"main\"{old}>"
        f'<section><h2>{esc(text["hosts"])} (<span id="host-count">{len(data["hosts"])}'
        f'</span>)</h2><table id="hosts" class="cards"><thead><tr>{headers}</tr></thead>'
        f"<tbody>{rows}</tbody></table>{empty}</section>"
        f'<section><h2>{esc(text["alerts"])}</h2>'
        f'<table id="alerts" class="cards"><thead><tr>'
        + "".join(f"<th>{esc(text[k])}</th>" for k in (
            "host", "check", "state", "severity", "since", "summary"))
        + f'</tr></thead><tbody>{alert_rows(text, data["alerts"])}</tbody></table>'
        f'<p class="empty" id="no-alerts"{"" if not data["alerts"] else " hidden"}>'
        f'{esc(text["no_alerts"])}</p></section>'
        f'<section><h2>{esc(text["collectors"])}</h2>'
        f'<table id="collectors" class="cards"><thead><tr>'
        + "".join(f"<th>{esc(text[k])}</th>" for k in (
            "collector", "heartbeat", "state", "streams", "sharing", "lag", "pending"))
        + f'</tr></thead><tbody>{collector_rows(text, data["collectors"])}</tbody></table>'
        f'<p class="empty" id="no-collectors"'
        f'{"" if not data["collectors"] and fleet is not None else " hidden"}>'
        f'{esc(text["no_collectors"])}</p></section></main>'
    )
    return _document(lang, text["fleet_title"], "fleet", "/api/fleet", FLEET_REFRESH_S,
                     body, text)


def _field_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return figure(value) if abs(value) >= 1 or value == 0 else f"{value:g}"
    return "" if value is None else str(value)


def _history_strip(history: str) -> str:
    """The alert's recent evaluation levels (oldest first) as small coloured cells."""
    cells = []
    for level in history:
        name = {"0": "OK", "1": "WARNING", "2": "CRITICAL"}.get(level, "UNKNOWN")
        cells.append(f'<span class="lv st-{name}" title="{esc(name)}">{esc(level)}</span>')
    return f'<span class="strip">{"".join(cells)}</span>' if cells else "-"


def _table(table_id: str, text: dict[str, str], columns: tuple[str, ...], rows: list[str],
           empty_key: str) -> str:
    if not rows:
        return f'<p class="empty" id="{table_id}-empty">{esc(text[empty_key])}</p>'
    head = "".join(f"<th>{esc(text[c])}</th>" for c in columns)
    return (f'<table id="{table_id}" class="cards"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _cell(text: dict[str, str], column: str, content: str, extra: str = "") -> str:
    return f'<td data-label="{esc(text[column])}"{extra}>{content}</td>'


def session_rows(text: dict[str, str], sessions: list[dict[str, Any]]) -> list[str]:
    """Rows of the host's current sessions (user ids are Redis text: escaped)."""
    return [
        "<tr>" + _cell(text, "client", esc(s["client_id"]))
        + _cell(text, "user", esc(s["user_id"] if s["user_id"] is not None else "-"),
                ' class="user"')
        + _cell(text, "state", esc(s["state"]))
        + _cell(text, "connected", moment(s["connected_ms"]) if s["connected_ms"]
                else esc(s["connected_at"] or "-")) + "</tr>"
        for s in sessions
    ]


def host_page(lang: str, host: dict[str, Any]) -> str:
    """One host: header figures, charts, sessions, checks, alert states, silences."""
    text = labels(lang)
    history = host["history"]
    thresholds = host["thresholds"]
    charts = "".join(
        f'<figure class="chart-box" id="chart-{name}"><figcaption>{esc(title)}</figcaption>'
        + time_chart(history["t"], history[name], title=title, unit=unit,
                     high=100.0 if name == "disk" else None,
                     threshold=thresholds.get(name), threshold_label=text["threshold"],
                     empty_label=text["no_data"]) + "</figure>"
        for name, title, unit in (("sessions", text["sessions"], ""),
                                  ("disk", text["disk"], "%"),
                                  ("rss", text["memory"], "")))
    checks = []
    for check in host["checks"]:
        fields = " ".join(f'<span class="kv"><span class="k">{esc(k)}</span>='
                          f'<span class="val">{esc(_field_text(v))}</span></span>'
                          for k, v in check["fields"].items())
        checks.append("<tr>" + _cell(text, "check", esc(check["name"]))
                      + _cell(text, "status", badge(text, check["status"]))
                      + _cell(text, "figures", fields, ' class="figures"')
                      + _cell(text, "last_error", esc(check["error"] or "-"), ' class="error"')
                      + "</tr>")
    alerts = []
    for alert in host["alerts"]:
        alerts.append(
            f'<tr class="alert-{esc(alert["state"])}">' + _cell(text, "check", esc(alert["check"]))
            + _cell(text, "state", esc(_alert_state_word(text, alert["state"])),
                    ' class="alert-state"')
            + _cell(text, "severity", esc(text.get(alert["severity"], alert["severity"]) or "-"))
            + _cell(text, "since", moment(alert["since_ms"]))
            + _cell(text, "flapping", esc(text["flapping"] if alert["flapping"] else "-"))
            + _cell(text, "history", _history_strip(alert["history"]))
            + _cell(text, "summary", esc(alert["summary"] or "-")) + "</tr>")
    silences = []
    for silence in host["silences"]:
        silences.append(
            "<tr>" + _cell(text, "pattern", esc(silence["host"]))
            + _cell(text, "check", esc(silence["check"] or text["all_checks"]))
            + _cell(text, "starts", moment(silence["starts_ms"]))
            + _cell(text, "ends", moment(silence["ends_ms"]) if silence["ends_ms"]
                    else esc(text["never"]))
            + _cell(text, "daily", esc(f'{silence["daily"]} ({silence["timezone"]})'
                                       if silence["daily"] else "-"))
            + _cell(text, "reason", esc(silence["reason"]))
            + _cell(text, "author", esc(silence["author"] or "-")) + "</tr>")
    stale = host["stale"]
    skew = host["clock_skew_s"]
    body = (
        f"{_banner(text, None)}"
        f'<header><p class="crumbs"><a href="/">{esc(text["fleet_link"])}</a></p>'
        f'<h1>{esc(text["host_title"])} <span class="host-id">{esc(host["host"])}</span> '
        f'<span id="host-status">{badge(text, host["status"])}</span></h1>'
        f'<dl class="facts">'
        f'<dt>{esc(text["seen"])}</dt><dd><span id="host-age">{esc(age_text(host["age_s"]))}'
        f'</span> {esc(text["ago"])} ({moment(host["last_seen_ms"])})</dd>'
        f'<dt>{esc(text["stale"])}</dt><dd id="host-stale" class="stale-{esc(stale)}">'
        f'{esc(_stale_word(text, stale) or text["no"])}</dd>'
        f'<dt>{esc(text["sessions"])}</dt><dd id="host-sessions">'
        f'{esc(figure(host["sessions"]))}</dd>'
        f'<dt>{esc(text["guests"])}</dt><dd id="host-guests">{esc(figure(host["guests"]))}</dd>'
        f'<dt>{esc(text["agent"])}</dt><dd>{esc(host["agent_version"] or "-")}</dd>'
        f'<dt>{esc(text["interval"])}</dt><dd>{esc(figure(host["interval_s"]))} s</dd>'
        f'<dt>{esc(text["clock_skew"])}</dt><dd>'
        f'{esc("-" if skew is None else f"{skew:+.3f} s")}</dd>'
        f'<dt>{esc(text["redis_time"])}</dt><dd id="now">{moment(host["now_ms"])}</dd></dl>'
        f"</header>"
        f'<main id="main">'
        f'<section><h2>{esc(text["charts"])}</h2><div class="charts">{charts}</div></section>'
        f'<section><h2>{esc(text["current_sessions"])}</h2>'
        + _table("sessions", text, ("client", "user", "state", "connected"),
                 session_rows(text, host["sessions_list"]), "no_sessions")
        + f'</section><section><h2>{esc(text["checks"])}</h2>'
        + _table("checks", text, ("check", "status", "figures", "last_error"), checks,
                 "no_data")
        + f'</section><section><h2>{esc(text["alert_states"])}</h2>'
        + _table("alert-states", text, ("check", "state", "severity", "since", "flapping",
                                        "history", "summary"), alerts, "no_alert_states")
        + f'</section><section><h2>{esc(text["silences"])}</h2>'
        + _table("silences", text, ("pattern", "check", "starts", "ends", "daily", "reason",
                                    "author"), silences, "no_silences")
        + "</section></main>"
    )
    return _document(lang, f'{host["host"]} · {text["fleet_title"]}', "host",
                     "/api/host/" + quote(host["host"], safe=""), HOST_REFRESH_S, body, text)


def not_found_page(lang: str, what: str) -> str:
    """The 404 page of an unknown host."""
    text = labels(lang)
    body = (f'<header><p class="crumbs"><a href="/">{esc(text["fleet_link"])}</a></p>'
            f'<h1>404</h1></header><main><p>{esc(text["not_found"])}</p>'
            f'<p><code>{esc(what)}</code></p></main>')
    return _document(lang, "404", "missing", "", 0, body, text)


def fleet_json(fleet: dict[str, Any]) -> dict[str, Any]:
    """``/api/fleet``: the fleet's figures, each host with its sparkline shapes."""
    hosts = []
    for host in fleet["hosts"]:
        sparks = {name: spark_points(host["history"][name], *SPARK_SCALES[name])
                  for name in SPARK_SCALES}
        hosts.append({**host, "spark": sparks})
    return {**fleet, "hosts": hosts}
