"""Planning: what one stream entry writes, as a pure function of the entry.

An entry goes through two steps, neither of which talks to Redis:

* :meth:`Planner.read` checks its size, decodes it and verifies its
  signature. Whatever goes wrong there, for whatever reason (an exception
  of our own code included), becomes a dead letter for this entry alone.
* :meth:`Planner.writes` turns the decoded entries of a batch into
  :class:`Write` objects: the maps that :data:`collector.scripts.APPLY` takes
  (see its ``PROTOCOL``). A session event that leaves out something the
  stored session knows (a login without the connection time) is merged with
  the stored session, which the caller reads first
  (:func:`sessions_to_read`) and passes in; the write then expects exactly
  that stored text, so a merge planned on a stale read is refused by the
  script and planned again.

The caller sends the writes (:mod:`collector.apply`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from collector.hashes import WrittenHashes
from collector.keepalive import report_due_ms
from collector.scripts import MAX_ORDER_MARKS, padded, position
from collector.settings import CollectorSettings
from wire import auth
from wire.errors import DecodeError
from wire.keys import REPORTS, SESSIONS, KeySpace
from wire.messages import (
    CONNECTED,
    DISCONNECTED,
    LOGGED_IN,
    SESSION_STATES,
    SNAPSHOT,
    Message,
    Report,
    SessionEvent,
    decode_entry,
)
from wire.replies import text
from wire.state import entry_id_ms, float_text, iso_from_ms, session_fields_text, session_text

logger = logging.getLogger(__name__)

MAX_REASON = 200
# The reason of a dead letter for an entry deleted (trimmed) while pending.
TRIMMED = "entry no longer in the stream (trimmed before it was processed)"
MAX_FIELD_NAMES = 200

#: Stored session texts by host, then client id; None (or no entry) where there is none.
StoredSessions = dict[str, dict[str, str | None]]


@dataclass(slots=True)
class Write:
    """One entry's planned write: its map for the apply script."""

    kind: str  # report, history, session, snapshot, skip or dead_letter
    stream: str
    entry_id: str
    host: str  # '' for a dead letter
    entry: dict[str, Any]
    event: SessionEvent | None = None  # planned again when the script asks (REPLAN)
    report: Report | None = None  # likewise
    unauthenticated: bool = False  # a dead letter for a missing or bad signature


@dataclass(slots=True)
class Decoded:
    """An entry that decoded and passed authentication."""

    stream: str
    entry_id: str
    fields: Mapping[Any, Any]
    message: Message


@dataclass(frozen=True)
class Planner:
    """What planning needs besides the entries: names, limits and host keys."""

    keys: KeySpace
    settings: CollectorSettings
    group: str
    consumer: str
    host_keys: Mapping[str, bytes] | None = None
    hashes: WrittenHashes = field(default_factory=WrittenHashes)

    # -- reading one entry ---------------------------------------------------

    def read(self, stream: str, entry_id: str, fields: Mapping[Any, Any] | None,
             delivered: int = 1) -> Decoded | Write:
        """The decoded entry, or the dead letter that takes its place."""
        try:
            return self._read(stream, entry_id, fields, delivered)
        except Exception as exc:  # noqa: BLE001 - one bad entry must cost only itself
            logger.error("cannot read entry %s of %s (%s: %s)", entry_id, stream,
                         type(exc).__name__, exc)
            return self.dead_letter(stream, entry_id, fields,
                                    f"collector error: {type(exc).__name__}: {exc}")

    def _read(self, stream: str, entry_id: str, fields: Mapping[Any, Any] | None,
              delivered: int) -> Decoded | Write:
        if delivered > self.settings.max_deliveries:
            return self.dead_letter(stream, entry_id, fields,
                                    f"delivered {delivered} times without acknowledgement")
        if not fields:
            # XADD needs a field, so an entry without any was deleted (trimmed)
            # while it was pending.
            return self.dead_letter(stream, entry_id, None, TRIMMED)
        size = entry_size(fields)
        if size > self.settings.max_entry_bytes:
            return self.dead_letter(stream, entry_id, fields, f"entry of {size} bytes exceeds "
                                    f"max_entry_bytes ({self.settings.max_entry_bytes})")
        try:
            message = decode_entry(fields)
        except DecodeError as exc:
            return self.dead_letter(stream, entry_id, fields, f"undecodable: {exc.reason}")
        misplaced = self.placement_problem(stream, message)
        if misplaced:
            logger.warning("entry %s of %s: %s", entry_id, stream, misplaced)
            refused = self.dead_letter(stream, entry_id, fields, misplaced)
            return replace(refused, unauthenticated=True)
        problem = self.authentication_problem(message.host, fields)
        if problem:
            logger.warning("entry %s of %s: %s", entry_id, stream, problem)
            refused = self.dead_letter(stream, entry_id, fields, problem)
            return replace(refused, unauthenticated=True)
        return Decoded(stream, entry_id, fields, message)

    def placement_problem(self, stream: str, message: Message) -> str | None:
        """Why ``message`` does not belong on ``stream`` (None when it does).

        A host's credentials reach only its own streams, so the stream, not
        the message, says which host an entry comes from: a message naming
        another host is refused, as is a report among session events.
        """
        named = self.keys.stream_host(stream)
        kind = REPORTS if isinstance(message, Report) else SESSIONS
        if named is None or named[1] != kind:
            return f"a {kind} message does not belong on {stream}"
        if named[0] != message.host:
            return f"message of host {message.host} on the stream of host {named[0]}"
        return None

    def authentication_problem(self, host: str, fields: Mapping[Any, Any]) -> str | None:
        """Why the entry's signature does not hold (None when it does, or when
        no host keys are configured)."""
        if self.host_keys is None:
            return None
        key = auth.key_for(self.host_keys, host)
        if key is None:
            return f"no key for host {host} in the host keys file"
        payload = _field(fields, "m")
        signature = _field(fields, "sig")
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogateescape")
        if (not isinstance(signature, bytes | str) or not signature.isascii()
                or not auth.verify(key, payload, signature)):
            return f"missing or bad signature for host {host}"
        return None

    # -- planning writes -----------------------------------------------------

    def writes(self, decoded: Sequence[Decoded], stored: StoredSessions) -> list[Write]:
        """The writes of a batch's decoded entries, in order. ``stored`` holds
        the sessions :func:`sessions_to_read` named; it is updated with what
        each event leaves, so that later events of the batch merge with that."""
        known = {host: dict(sessions) for host, sessions in stored.items()}
        skipped = copies(decoded) | replaced_by_snapshot(decoded)
        history_only = superseded(decoded, skipped)
        planned = []
        for index, item in enumerate(decoded):
            try:
                if index in skipped:
                    planned.append(self.skip_write(item.stream, item.entry_id,
                                                   item.message.host))
                elif index in history_only:
                    assert isinstance(item.message, Report)
                    planned.append(self.history_write(item.stream, item.entry_id, item.message))
                elif isinstance(item.message, Report):
                    planned.append(self.report_write(item.stream, item.entry_id, item.message))
                else:
                    planned.append(self.session_write(item.stream, item.entry_id, item.message,
                                                      known))
            except Exception as exc:  # noqa: BLE001 - one bad entry must cost only itself
                logger.error("cannot plan entry %s of %s (%s: %s)", item.entry_id, item.stream,
                             type(exc).__name__, exc)
                planned.append(self.dead_letter(item.stream, item.entry_id, item.fields,
                                                f"collector error: {type(exc).__name__}: {exc}"))
        return planned

    def _common(self, kind: str, stream: str, entry_id: str, host: str) -> dict[str, Any]:
        mark = self.keys.evaluation_pending(host) if self.settings.evaluate else ""
        return {"kind": kind, "stream": stream, "group": self.group, "id": entry_id,
                "mark": mark}

    def report_write(self, stream: str, entry_id: str, report: Report, *,
                     whole: bool = False) -> Write:
        """The write of a report: its host hash (the difference to the host's
        last write, or ``whole``), its history line and index score."""
        keys = self.keys
        host = report.host
        entry_ms = entry_id_ms(entry_id)
        if whole:
            self.hashes.forget(host)
        write = self.hashes.plan(report, position(entry_id), entry_ms)
        fields = write.fields
        fields["stream_id"] = entry_id
        entry = self._common("report", stream, entry_id, host)
        due_ms = report_due_ms(entry_ms, report.interval, self.settings)
        entry.update(
            host_key=keys.host(host), hosts_index=keys.hosts_index(),
            due_index=keys.hosts_due(), due_ms="" if due_ms is None else str(due_ms),
            history_key=keys.host_history(host), host=host, epoch=str(report.epoch),
            seq=padded(report.seq),
            entry_ms=str(entry_ms), history_line=history_line(report, fields["last_seen"]),
            history_length=self.settings.history_length, dropped=report.dropped,
            status=write.status, base=write.base,
            fields=write.fields,
            deleted=write.deleted,
        )
        return Write("report", stream, entry_id, host, entry, report=report)

    def history_write(self, stream: str, entry_id: str, report: Report) -> Write:
        """The write of a report that a later one of the same batch supersedes:
        its history line (and the reports its agent lost) without the host
        hash, which the later report writes."""
        host = report.host
        entry = self._common("history", stream, entry_id, host)
        entry.update(
            mark="", host_key=self.keys.host(host), history_key=self.keys.host_history(host),
            epoch=str(report.epoch), seq=padded(report.seq), dropped=report.dropped,
            history_line=history_line(report, iso_from_ms(entry_id_ms(entry_id))),
            history_length=self.settings.history_length,
        )
        return Write("history", stream, entry_id, host, entry, report=report)

    def skip_write(self, stream: str, entry_id: str, host: str) -> Write:
        """The write of an entry with nothing to write (a report sent twice, a
        session event a later snapshot replaces): its acknowledgement, in its turn."""
        entry = self._common("skip", stream, entry_id, host)
        entry["mark"] = ""
        return Write("skip", stream, entry_id, host, entry)

    def session_write(self, stream: str, entry_id: str, event: SessionEvent,
                      known: StoredSessions) -> Write:
        """The write of a session event; ``known`` holds the stored texts of the
        sessions it may merge with and is updated with what it leaves."""
        keys = self.keys
        host = event.host
        entry = self._common("session", stream, entry_id, host)
        entry.update(sessions_key=keys.host_sessions(host),
                     order_key=keys.host_sessions_order(host), epoch=str(event.epoch),
                     seq=padded(event.seq))
        if event.kind == SNAPSHOT:
            # Later events of the batch find what the snapshot leaves.
            known[host] = {}
            sessions: list[str] = []
            for info in event.sessions:
                session = session_text(info)
                sessions += (info.client_id, session)
                known[host][info.client_id] = session
            entry.update(kind="snapshot", sessions=sessions)
            return Write("snapshot", stream, entry_id, host, entry, event)
        expect, expected = "any", ""
        if event.kind == DISCONNECTED:
            session = ""
        elif needs_merge(event):
            current = known.get(host, {}).get(event.client_id)
            expect, expected = ("absent", "") if current is None else ("equal", current)
            session = merged_session_text(event, current)
        else:
            session = merged_session_text(event, None)
        action = "del" if event.kind == DISCONNECTED else "set"
        known.setdefault(host, {})[event.client_id] = None if action == "del" else session
        entry.update(action=action, client=event.client_id, text=session, expect=expect,
                     expected=expected, max_marks=MAX_ORDER_MARKS)
        return Write("session", stream, entry_id, host, entry, event)

    def dead_letter(self, stream: str, entry_id: str, fields: Mapping[Any, Any] | None,
                    reason: str) -> Write:
        """The write that moves an entry to the dead-letter stream with ``reason``,
        keeping only a prefix of its payload."""
        payload: Any = b""
        names = ""
        if fields:
            payload = _field(fields, "m")
            if payload is None:
                payload = b""
            names = ",".join(sorted(text(name) for name in fields))[:MAX_FIELD_NAMES]
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogateescape")
        if not isinstance(payload, bytes | bytearray):
            payload = repr(payload).encode()
        keep = self.settings.dead_letter_payload_bytes
        entry = self._common("dead_letter", stream, entry_id, "")
        entry.update(
            mark="", dead_letter_stream=self.keys.dead_letter_stream(),
            maxlen=self.settings.dead_letter_maxlen,
            fields=["reason", reason[:MAX_REASON], "stream", stream, "id", entry_id,
                    "consumer", self.consumer, "fields", names,
                    "payload_bytes", str(len(payload)), "payload", bytes(payload[:keep])],
        )
        logger.debug("dead-lettering %s of %s: %s", entry_id, stream, reason)
        return Write("dead_letter", stream, entry_id, "", entry)


def copies(decoded: Sequence[Decoded]) -> set[int]:
    """The indexes of the reports of a batch that repeat one before them in
    the batch: the agent sent them again after losing Redis's reply, so
    they carry the (epoch, seq) of a report already on the stream. Copies
    of reports of earlier batches are told apart by the apply script."""
    seen: dict[str, dict[int, int]] = {}
    found = set()
    for index, item in enumerate(decoded):
        message = item.message
        if not isinstance(message, Report):
            continue
        runs = seen.setdefault(message.host, {})
        if message.seq <= runs.get(message.epoch, -1):
            found.add(index)
        else:
            runs[message.epoch] = message.seq
    return found


def superseded(decoded: Sequence[Decoded], skipped: set[int]) -> set[int]:
    """The indexes of the reports of a batch (leaving out ``skipped``) that a
    later report of the same host in the batch supersedes.

    A batch writes each host's hash once, for its newest report: when a
    backlog is worked off, the reports before it only add their history
    lines, and the host hash, its evaluation and everything that follows
    from them are done once per host rather than once per report.
    """
    later: set[str] = set()
    found = set()
    for index in range(len(decoded) - 1, -1, -1):
        message = decoded[index].message
        if not isinstance(message, Report) or index in skipped:
            continue
        if message.host in later:
            found.add(index)
        later.add(message.host)
    return found


def replaced_by_snapshot(decoded: Sequence[Decoded]) -> set[int]:
    """The indexes of the session events of a batch that a later snapshot of
    the same host in the batch replaces.

    A snapshot sets a host's sessions whole, so the events before it leave
    nothing it does not overwrite; working off a backlog, only the last
    snapshot of each host and the events after it are written.
    """
    last_snapshot: dict[str, int] = {}
    for index, item in enumerate(decoded):
        message = item.message
        if isinstance(message, SessionEvent) and message.kind == SNAPSHOT:
            last_snapshot[message.host] = index
    return {index for index, item in enumerate(decoded)
            if isinstance(item.message, SessionEvent)
            and index < last_snapshot.get(item.message.host, -1)}


def sessions_to_read(decoded: Iterable[Decoded]) -> list[tuple[str, str]]:
    """The (host, client id) of every session a batch's events merge with."""
    wanted = {(item.message.host, item.message.client_id) for item in decoded
              if isinstance(item.message, SessionEvent) and needs_merge(item.message)}
    return sorted(wanted)


def entry_size(fields: Mapping[Any, Any]) -> int:
    """The bytes of an entry's field names and values (as Redis replies them:
    bytes or text)."""
    return sum(map(len, fields)) + sum(map(len, fields.values()))


def history_line(report: Report, timestamp: str) -> str:
    """``timestamp,sessions,disk_percent,memory_mb`` for the host history list;
    ``timestamp`` is the entry's time as the host's last_seen has it."""
    checks = report.checks
    return ",".join((
        timestamp,
        _figure(checks.get("sessions"), "active_sessions"),
        _figure(checks.get("disk_space"), "percent_used"),
        _figure(checks.get("memory"), "process_rss_mb"),
    ))


def needs_merge(event: SessionEvent) -> bool:
    """True when the event leaves out something the stored session knows."""
    if event.kind == LOGGED_IN:
        return event.connected_at is None or event.user_id is None
    if event.kind in (CONNECTED, DISCONNECTED, SNAPSHOT):
        return False
    return event.connected_at is None or event.user_id is None or event.state is None


def merged_session_text(event: SessionEvent, stored_text: str | None) -> str:
    """The stored text of the session after ``event``, filling gaps from the
    stored session (``stored_text``)."""
    if event.kind == CONNECTED:
        return session_fields_text(event.client_id, event.user_id, event.state or "connected",
                                   event.connected_at or event.observed_at)
    prior = _stored_session(stored_text)
    if event.kind == LOGGED_IN:
        # As sent: a login without a user stays without one (shown empty), so a
        # reporter that lost the user is seen rather than hidden behind a name.
        user = event.user_id if event.user_id is not None else prior.get("user_id")
        state = "logged_in"
    else:
        user = event.user_id if event.user_id is not None else prior.get("user_id")
        state = event.state or prior.get("state") or "connected"
    connected_at = event.connected_at or prior.get("connected_at") or event.observed_at
    return session_fields_text(event.client_id, user, state, connected_at)


def _figure(fields: Mapping[str, Any] | None, name: str) -> str:
    """A number of a check as stored text; '' when absent or not a number."""
    value = None if fields is None else fields.get(name)
    if isinstance(value, bool):
        return ""
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, int):
        return str(value)
    return ""


def _stored_session(stored_text: str | None) -> dict[str, Any]:
    """The fields of a stored session text we can trust; {} for anything else."""
    if not stored_text:
        return {}
    try:
        doc = json.loads(stored_text)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    known: dict[str, Any] = {}
    if isinstance(doc.get("user_id"), str):
        known["user_id"] = doc["user_id"]
    if doc.get("state") in SESSION_STATES:
        known["state"] = doc["state"]
    connected_at = _iso_seconds(doc.get("connected_at"))
    if connected_at is not None:
        known["connected_at"] = connected_at
    return known


def _iso_seconds(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(value, pattern).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    """An entry's field ``name``, whether the reply gave names as bytes or text."""
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value
