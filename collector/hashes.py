"""What the collector last wrote into each host hash, so that a report's write is the difference.

A host hash holds some fifty fields and a report of a healthy host changes
about ten of them. Formatting and sending all fifty for every report was
the largest part of both the collector's and Redis's work per report, so
:class:`WrittenHashes` keeps, per host, the report it last planned, and
plans the next one as the fields whose value changed and those that went
away: a check equal to the one before is passed over whole, and only the
values that changed are formatted.

A difference is right only on top of the very hash it was computed against,
so it carries that write's position (its stream entry id, as
:func:`collector.scripts.position` writes it), its *base*: the apply script uses
it only when the stored report is the base's, and otherwise refuses it
(:data:`collector.scripts.REPLAN`), after which the collector forgets the
host and writes the whole hash. Every :data:`WHOLE_EVERY`-th write of a
host is whole anyway, so that a change made to a hash by hand lasts a
bounded number of reports. For the same reason what is remembered needs
no lock between the reading thread, which plans, and the writer's, which
forgets: a memory that is out of date costs one refused difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wire.messages import FieldValue, Report
from wire.state import (
    field_text,
    flatten_checks,
    report_moment,
    report_summary,
    summary_key,
)

WHOLE_EVERY = 32
MAX_HOSTS = 20_000
_MISSING = object()


@dataclass(slots=True)
class HashWrite:
    """A report's write of its host hash: ``base`` '' for the whole hash
    (``fields`` is all of it), else the position of the write that
    ``fields`` (changed) and ``deleted`` are the difference to."""

    base: str
    fields: dict[str, str]
    deleted: list[str]
    status: str  # the report's status, which a difference writes over a stale hash


@dataclass(slots=True)
class _Written:
    position: str
    summary_key: tuple[Any, ...]
    summary: dict[str, str]
    checks: Mapping[str, Mapping[str, FieldValue]]
    writes: int


class WrittenHashes:
    """The last planned write of each host hash, for at most :data:`MAX_HOSTS` hosts."""

    def __init__(self) -> None:
        self._written: dict[str, _Written] = {}

    def plan(self, report: Report, position: str, entry_ms: int) -> HashWrite:
        """The write of ``report`` (at stream ``position``, seen at Redis time
        ``entry_ms``), remembered as its host's latest."""
        key = summary_key(report)
        before = self._written.get(report.host)
        if before is not None and before.writes >= WHOLE_EVERY:
            before = None
        if before is not None and before.summary_key == key:
            summary = before.summary
        else:
            summary = report_summary(report)
            # The status of the checks alone; ``status`` adds staleness later.
            summary["report_status"] = summary["status"]
        if before is None and len(self._written) >= MAX_HOSTS:
            self._written.clear()
        self._written[report.host] = _Written(
            position, key, summary, report.checks, 1 if before is None else before.writes + 1)
        fields = report_moment(report, entry_ms)
        if before is None:
            fields.update(summary)
            fields.update(flatten_checks(report.checks))
            return HashWrite("", fields, [], summary["status"])
        if summary is not before.summary:
            fields.update((name, text) for name, text in summary.items()
                          if before.summary.get(name) != text)
        deleted: list[str] = []
        _check_changes(before.checks, report.checks, fields, deleted)
        return HashWrite(before.position, fields, deleted, summary["status"])

    def forget(self, host: str) -> None:
        """Drop what is remembered of ``host``: its next write is whole."""
        self._written.pop(host, None)

    def __len__(self) -> int:
        return len(self._written)


def _same(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether two checks have the same stored texts: equal values of the same
    types (1 == 1.0 == True, but their texts differ)."""
    return before == after and list(map(type, before.values())) == list(
        map(type, after.values()))


def _check_changes(before: Mapping[str, Mapping[str, Any]],
                   after: Mapping[str, Mapping[str, Any]],
                   changed: dict[str, str], deleted: list[str]) -> None:
    """Add to ``changed`` the check fields whose stored text differs from
    ``before`` to ``after`` and to ``deleted`` those that are gone (a list
    field is not stored, so one turning into a list is gone too)."""
    for name, fields in after.items():
        old = before.get(name, {})
        if _same(old, fields):
            continue
        for key, value in fields.items():
            previous = old.get(key, _MISSING)
            if previous == value and type(previous) is type(value):
                continue
            text = field_text(value)
            if text is not None:
                changed[f"{name}.{key}"] = text
            elif previous is not _MISSING and field_text(previous) is not None:
                deleted.append(f"{name}.{key}")
        if old.keys() != fields.keys():
            deleted += [f"{name}.{key}" for key in old.keys() - fields.keys()
                        if field_text(old[key]) is not None]
    for name in before.keys() - after.keys():
        deleted += [f"{name}.{key}" for key, value in before[name].items()
                    if field_text(value) is not None]
