"""The host-hash write of a report: whole, or only what changed since the last one.

A host hash holds some fifty fields, and a report of a healthy host changes
a dozen of them. Rewriting all fifty for every report cost the collector
(formatting and sending them) and Redis (parsing and storing them) more than
anything else an entry needs, so the collector remembers, per host, the report
it last wrote and sends the difference: the check fields whose value changed,
those that went away, and the fields that change with every report.

A difference is right only on top of the very hash it was computed against.
It therefore carries that write's ordering key, its *base*: the batch script
applies it only when the stored epoch and seq are the base's, and otherwise
answers :data:`collector.scripts.NEED_FULL`, after which the collector sends
the whole hash. What other writers put into a host hash between two reports
(the sweep's staleness, the keepalive's grace after an outage) is among the
fields every report writes, or deleted by the script, as the whole write (DEL,
then HSET) did. Every :data:`FULL_EVERY`-th write of a host is whole anyway, so that any
other change to a hash (a hand edit) lasts a bounded number of reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain, compress
from operator import ne
from typing import Any, NamedTuple

from wire.messages import Report
from wire.state import (
    FLOAT_TEXTS,
    field_text,
    new_float_text,
    report_meta,
    report_moment_texts,
    severity_status,
    status_name,
    unhealthy_checks,
    unhealthy_text,
)

# Written with every report: they change each time.
ALWAYS_WRITTEN = ("last_seen", "last_seen_ms", "observed_at", "seq", "clock_skew_s")
# Written when they differ from the last report's. Besides reports, only the
# sweep writes status, with stale, when it marks the host stale: the script
# then writes stale 'no' and the report's status (HostWrite.status) as well.
# Nothing but reports writes report_status or epoch.
WRITTEN_WHEN_CHANGED = ("status", "report_status", "epoch", "agent_version", "interval_s",
                        "checks", "unhealthy")
FULL_EVERY = 32
MAX_HOSTS = 20_000

# A host's first write (and every whole one) finds its hash field names
# (``check.field``, never changed once made) by the layout of its checks:
# the hosts of a fleet run the same agent, so a few layouts serve them all.
MAX_LAYOUTS = 1024
_layout_names: dict[tuple[tuple[str, ...], ...], list[str]] = {}

_MISSING = object()
_new_tuple = tuple.__new__
# dict.values unbound, for map() over a report's checks (decoded checks are
# dicts; _flat falls back for other mappings).
_dict_values: Callable[[Any], Iterable[Any]] = dict.values


@dataclass(slots=True)
class _Written:
    """What the collector last wrote for one host."""

    order: str
    checks: Mapping[str, Mapping[str, Any]]
    meta: dict[str, str]  # the meta fields as last computed whole (see _steady)
    steady: tuple[Any, ...]  # what those of them that are not in every report follow from
    unhealthy: list[str]  # and the unhealthy checks, which status follows from
    writes: int
    flat: _Flat


class _Flat(NamedTuple):
    """A report's check fields in one row: their layout (check names, then
    each check's field names), the types and values of the fields in that
    order, and their hash field names (``check.field``)."""

    layout: tuple[tuple[str, ...], ...]
    types: list[type]
    values: list[Any]
    names: list[str]


class HostWrite(NamedTuple):
    """One report's write: ``base`` is '' for a whole write (the hash is
    deleted first), else the ordering key the difference applies to, and
    ``status`` the report's status, which a difference writes (with stale
    'no') only over a hash the sweep marked stale."""

    base: str
    deleted: list[str]
    pairs: list[str]  # field, value, field, value, ...
    status: str
    last_seen: str  # the entry's time as last_seen has it (the history line's too)


class HostWrites:
    """The per-host memory of what was written, bounded to ``max_hosts`` hosts."""

    def __init__(self, full_every: int = FULL_EVERY, max_hosts: int = MAX_HOSTS) -> None:
        self.full_every = full_every
        self.max_hosts = max_hosts
        self._written: dict[str, _Written] = {}

    def plan(self, report: Report, entry_ms: int, order: str) -> HostWrite:
        """The write of ``report`` (ordering key ``order``), remembered as the
        host's latest: the next report's difference is taken against it."""
        host = report.host
        written = self._written.get(host)
        steady = _steady(report)
        unhealthy = unhealthy_checks(report.checks)
        if written is None or written.writes >= self.full_every:
            if written is None and len(self._written) >= self.max_hosts:
                self._written.clear()
            meta = _meta(report, entry_ms)
            flat = _flat(report.checks, None)
            self._written[host] = _Written(order, report.checks, meta, steady, unhealthy, 1,
                                           flat)
            return _whole(meta, flat)
        base = written.order
        before = written.meta
        if steady == written.steady:
            # The usual case: only the fields of every report change among
            # the meta fields (epoch and the others are as before), and the
            # status when the unhealthy checks did.
            last_seen, last_seen_ms, observed_at, seq, clock_skew = report_moment_texts(
                report, entry_ms)
            pairs = ["last_seen", last_seen, "last_seen_ms", last_seen_ms,
                     "observed_at", observed_at, "seq", seq, "clock_skew_s", clock_skew]
            # An unhealthy check's severity can change while the names stay
            # (a slow banner, then none at all), so unhealthy reports are
            # rated each time.
            if unhealthy or unhealthy != written.unhealthy:
                status = status_name(severity_status(report.checks, unhealthy))
                if status != before["status"]:
                    before["status"] = before["report_status"] = status
                    pairs += ("status", status, "report_status", status)
            if unhealthy != written.unhealthy:
                written.unhealthy = unhealthy
                text = unhealthy_text(unhealthy)
                if text != before["unhealthy"]:
                    before["unhealthy"] = text
                    pairs += ("unhealthy", text)
        else:
            meta = _meta(report, entry_ms)
            last_seen = meta["last_seen"]
            pairs = [value for name in ALWAYS_WRITTEN for value in (name, meta[name])]
            for name in WRITTEN_WHEN_CHANGED:
                if before[name] != meta[name]:
                    pairs += (name, meta[name])
            written.meta = meta
            written.steady = steady
            written.unhealthy = unhealthy
        deleted: list[str] = []
        written.flat = _check_changes(written.checks, report.checks, written.flat, pairs,
                                      deleted)
        written.order = order
        written.checks = report.checks
        written.writes += 1
        return _new_tuple(HostWrite, (base, deleted, pairs, written.meta["status"], last_seen))

    def forget(self, host: str) -> None:
        """Drop what is remembered of ``host``: its next write is whole."""
        self._written.pop(host, None)

    def __len__(self) -> int:
        return len(self._written)


def whole_write(report: Report, entry_ms: int) -> HostWrite:
    """The whole hash of ``report`` received at Redis time ``entry_ms``, leaving
    what is remembered alone."""
    return _whole(_meta(report, entry_ms), _flat(report.checks, None))


def _steady(report: Report) -> tuple[Any, ...]:
    """What the meta fields that not every report changes are computed from,
    but for the unhealthy checks (kept apart: they change more often).

    When it is equal for two reports, so are their stale, epoch and
    WRITTEN_WHEN_CHANGED texts but ``unhealthy`` (types count: 60 and 60.0
    have different texts); with the same unhealthy checks, so are their
    status, report_status and unhealthy texts."""
    interval = report.interval
    return (report.agent_version, interval, type(interval), report.epoch, tuple(report.checks))


def _meta(report: Report, entry_ms: int) -> dict[str, str]:
    """The fields of the hash besides the checks': wire.state's, and the
    report's own status, which staleness does not change."""
    meta = report_meta(report, entry_ms)
    meta["report_status"] = meta["status"]
    return meta


def _whole(meta: Mapping[str, str], flat: _Flat) -> HostWrite:
    """The whole hash: ``meta``, then the check fields of ``flat`` (the row of
    the report's checks) as flatten_checks gives them."""
    float_texts = FLOAT_TEXTS.get
    # field_text written out for the usual types: a call per field would
    # cost more than the rest of the loop (a list field's text is None).
    texts: list[Any] = [value if kind is str
                        else (float_texts(value) or new_float_text(value)) if kind is float
                        else ("true" if value else "false") if kind is bool
                        else str(value) if kind is int else field_text(value)
                        for value, kind in zip(flat.values, flat.types, strict=True)]
    # The names are unique (meta names have no dot, and check names, which
    # have none either, are unique, as are the field names of a check): the
    # pairs go straight into one list, with no dict between.
    pairs = list(chain.from_iterable(meta.items()))
    if None in texts:
        pairs += [item for name, text in zip(flat.names, texts, strict=True)
                  if text is not None for item in (name, text)]
    else:
        pairs += chain.from_iterable(zip(flat.names, texts, strict=True))
    return HostWrite("", [], pairs, meta["status"], meta["last_seen"])


def _flat(checks: Mapping[str, Mapping[str, Any]], before: _Flat | None) -> _Flat:
    """The row of ``checks``; its names are taken from ``before`` when the
    layout is the same."""
    layout = (tuple(checks), *map(tuple, checks.values()))
    try:
        values = list(chain.from_iterable(map(_dict_values, checks.values())))
    except TypeError:  # a check that is a mapping but not a dict
        values = [value for fields in checks.values() for value in fields.values()]
    if before is not None and before.layout == layout:
        names = before.names
    else:
        known = _layout_names.get(layout)
        if known is None:
            known = [f"{name}.{key}" for name, fields in checks.items() for key in fields]
            if len(_layout_names) >= MAX_LAYOUTS:
                _layout_names.clear()
            _layout_names[layout] = known
        names = known
    # (tuple.__new__: the NamedTuple's own __new__ is a Python function.)
    return _new_tuple(_Flat, (layout, list(map(type, values)), values, names))


def _check_changes(before: Mapping[str, Mapping[str, Any]],
                   after: Mapping[str, Mapping[str, Any]], flat_before: _Flat,
                   pairs: list[str], deleted: list[str]) -> _Flat:
    """Add to ``pairs`` the check fields whose text changed from ``before`` to
    ``after`` and to ``deleted`` those that are gone (list fields are not
    stored, so a field turning into a list is gone too). ``flat_before`` is
    the row of ``before``; returns that of ``after``."""
    flat = _flat(after, flat_before)
    # The names are the same list exactly when the layout is the same (_flat
    # takes them from the row before, or from the cache by layout).
    if flat.names is flat_before.names and flat.types == flat_before.types:
        # The usual case, the same checks with the same fields in the same
        # order and values of the same types: a text changed exactly where
        # the value did (equal values of one type have one text), found by
        # C-level loops over the whole row.
        add = pairs.append
        float_texts = FLOAT_TEXTS.get
        names, values = flat.names, flat.values
        # Indexes rather than zip(names, values): most fields are unchanged,
        # and a (name, value) tuple for each would cost more than the two
        # lookups of the changed ones.
        for index in compress(range(len(values)), map(ne, values, flat_before.values)):
            name = names[index]
            value = values[index]
            kind = type(value)
            if kind is float:
                add(name)
                add(float_texts(value) or new_float_text(value))
            elif kind is int:
                add(name)
                add(str(value))
            elif kind is str:
                add(name)
                add(value)
            elif kind is not tuple:  # a list field (a tuple, before as now) is not stored
                text = field_text(value)
                if text is not None:
                    add(name)
                    add(text)
        return flat
    for name, fields in after.items():
        old = before.get(name)
        if old is None:
            old = {}
        prefix = name + "."
        for key, value in fields.items():
            previous = old.get(key, _MISSING)
            # Equal values of one type have one text (1 == 1.0 == True, but
            # their texts differ).
            if previous == value and type(previous) is type(value):
                continue
            text = field_text(value)
            if text is not None:
                pairs += (prefix + key, text)
            elif previous is not _MISSING and field_text(previous) is not None:
                deleted.append(prefix + key)
        if old.keys() != fields.keys():
            deleted += [prefix + key for key in old.keys() - fields.keys()
                        if field_text(old[key]) is not None]
    if before.keys() != after.keys():
        for name in before.keys() - after.keys():
            deleted += [f"{name}.{key}" for key, value in before[name].items()
                        if field_text(value) is not None]
    return flat
