"""Turning notifications into a mail, a Slack message or a JSON document.

Presentation only: nothing here talks to a network. Every piece of text that
may come from a user passes through :mod:`alerter.text` for the output it
lands in (header, body, Slack markup).
"""

from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any

from alerter.notify import Notification
from alerter.text import body_text, header_text, line_text, slack_escape
from wire.state import iso_from_ms

COLOURS = {
    "critical": "#d32f2f",
    "warning": "#f9a825",
    "resolved": "#2e7d32",
    "flapping": "#1565c0",
    "test": "#757575",
}
# Slack shows at most 100 attachments; a digest keeps well below.
SLACK_MAX_ATTACHMENTS = 40
FIGURES_IN_DIGEST = 8


def colour(note: Notification) -> str:
    """The attachment colour of a notification."""
    if note.kind == "resolved" or note.kind == "flapping_stopped":
        return COLOURS["resolved"]
    if note.kind in ("flapping", "test"):
        return COLOURS[note.kind]
    return COLOURS.get(note.severity, COLOURS["warning"])


def digest_counts(notes: list[Notification]) -> str:
    """``2 CRITICAL, 1 RESOLVED`` (most severe first)."""
    order = ["CRITICAL", "WARNING", "RESOLVED", "FLAPPING", "FLAPPING STOPPED", "TEST"]
    counts = Counter(n.label for n in notes)
    return ", ".join(f"{counts[label]} {label}" for label in order if counts.get(label))


def subject(prefix: str, notes: list[Notification]) -> str:
    """The mail subject: ``[MTBBS] CRITICAL bbs-01 database`` or a digest's counts."""
    if len(notes) == 1:
        text = f"{prefix} {notes[0].title}"
    else:
        hosts = sorted({n.host for n in notes})
        shown = ", ".join(hosts[:3]) + (f" +{len(hosts) - 3}" if len(hosts) > 3 else "")
        # Counted per alert (host and check): one alert may bring several
        # notices (fired, then resolved) to one digest.
        alerts = len({(n.host, n.check) for n in notes})
        text = (f"{prefix} {alerts} alert{'' if alerts == 1 else 's'}: "
                f"{digest_counts(notes)} ({shown})")
    return header_text(text, 200)


def _when(ms: int) -> str:
    return iso_from_ms(ms) if ms else "-"


def _state_line(note: Notification) -> str:
    if note.kind == "resolved":
        return f"resolved at {_when(note.at_ms)} (firing since {_when(note.since_ms)})"
    if note.kind == "flapping":
        return (f"flapping since {_when(note.since_ms)} ({note.flap_percent:g}% state change); "
                "notifications for this check pause until it settles")
    if note.kind == "flapping_stopped":
        return f"stopped flapping at {_when(note.at_ms)} ({note.flap_percent:g}% state change)"
    if note.kind == "test":
        return f"test message sent at {_when(note.at_ms)}"
    return f"firing since {_when(note.since_ms)}"


def _figure_lines(note: Notification, limit: int | None = None) -> list[str]:
    items = list(note.figures.items())
    shown = items if limit is None else items[:limit]
    lines = [f"{line_text(k, 80)}: {line_text(v, 200)}" for k, v in shown]
    if limit is not None and len(items) > limit:
        lines.append(f"... {len(items) - limit} more")
    return lines


def _wrap(text: str, indent: str) -> list[str]:
    lines: list[str] = []
    for paragraph in body_text(text).split("\n"):
        wrapped = textwrap.wrap(paragraph, width=76, initial_indent=indent,
                                subsequent_indent=indent, break_on_hyphens=False)
        lines.extend(wrapped or [indent.rstrip()])
    return lines


def _text_block(note: Notification, *, compact: bool) -> list[str]:
    lines = [note.title, f"  State:   {_state_line(note)}"]
    if note.summary and note.kind != "test":
        lines.append(f"  Summary: {line_text(note.summary, 500)}")
    if note.host_status:
        lines.append(f"  Host status: {line_text(note.host_status, 20)}")
    figures = _figure_lines(note, FIGURES_IN_DIGEST if compact else None)
    if figures:
        lines.append("  Figures:")
        lines.extend(f"    {line}" for line in figures)
    if note.hint and note.kind not in ("resolved", "flapping_stopped"):
        lines.append("  What to do:")
        lines.extend(_wrap(note.hint, "    "))
    lines.append(f"  Notification: {line_text(note.id, 200)}")
    return lines


def text_body(title: str, notes: list[Notification]) -> str:
    """The plain-text mail body (UTF-8; user text without control characters)."""
    heading = line_text(title, 100)
    lines = [heading, "=" * min(len(heading), 60), ""]
    if len(notes) > 1:
        lines.append(f"{len(notes)} notifications: {digest_counts(notes)}")
        lines.extend(f"  {i}. {n.title}" for i, n in enumerate(notes, 1))
        lines.append("")
    for index, note in enumerate(notes):
        if index:
            lines.append("-" * 60)
        lines.extend(_text_block(note, compact=len(notes) > 1))
        lines.append("")
    lines.append("-- ")
    lines.append("mtbbs-alerter")
    return "\n".join(lines) + "\n"


def slack_payload(title: str, notes: list[Notification]) -> dict[str, Any]:
    """An incoming-webhook message: one coloured attachment per notification."""
    if len(notes) == 1:
        text = f"*{slack_escape(title)}*: {slack_escape(notes[0].title)}"
    else:
        text = f"*{slack_escape(title)}*: {len(notes)} notifications ({digest_counts(notes)})"
    attachments = []
    for note in notes[:SLACK_MAX_ATTACHMENTS]:
        body = []
        if note.summary and note.kind != "test":
            body.append(slack_escape(line_text(note.summary, 500)))
        body.append(slack_escape(_state_line(note)))
        if note.hint and note.kind not in ("resolved", "flapping_stopped"):
            body.append("_What to do:_ " + slack_escape(note.hint, 1500))
        fields = [
            {"title": "Host", "value": slack_escape(note.host), "short": True},
            {"title": "Check", "value": slack_escape(note.check), "short": True},
        ]
        figures = _figure_lines(note, FIGURES_IN_DIGEST if len(notes) > 1 else 20)
        if figures:
            fields.append({"title": "Figures",
                           "value": slack_escape("\n".join(figures), 2000), "short": False})
        attachments.append({
            "color": colour(note),
            "fallback": slack_escape(note.title),
            "title": slack_escape(note.title),
            "text": "\n".join(body),
            "fields": fields,
            "footer": slack_escape(note.id),
            "ts": note.at_ms // 1000,
            "mrkdwn_in": ["text"],
        })
    if len(notes) > SLACK_MAX_ATTACHMENTS:
        rest = notes[SLACK_MAX_ATTACHMENTS:]
        attachments.append({
            "color": COLOURS["test"],
            "title": f"... and {len(rest)} more",
            "text": slack_escape("\n".join(n.title for n in rest), 3000),
        })
    return {"text": text, "attachments": attachments}


def webhook_payload(title: str, notes: list[Notification]) -> dict[str, Any]:
    """The generic webhook's JSON document (data, not markup: JSON escapes it)."""
    return {
        "source": "mtbbs-alerter",
        "version": 1,
        "title": title,
        "summary": notes[0].title if len(notes) == 1 else
        f"{len(notes)} notifications: {digest_counts(notes)}",
        "notifications": [n.to_dict() for n in notes],
    }
