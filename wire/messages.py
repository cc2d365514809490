"""Message types on the Redis Streams and their msgpack codec.

One module owns both directions so that they cannot drift apart: ``encode``
writes a msgpack map with a schema version and a type tag; ``decode`` reads
one back and validates every type and bound before building the frozen
dataclass. Anything that is not a message we understand raises
:class:`wire.errors.DecodeError` with a short reason, never another
exception, so the collector can dead-letter it and carry on.

A stream entry holds the encoded message in field ``m`` (see
:func:`stream_fields`); a signature over those bytes may travel beside it in
field ``sig``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from wire.errors import DecodeError
from wire.keys import CHECK_NAME_PATTERN, valid_host_id

SCHEMA_VERSION = 1

# Bounds. A report of one host is a few hundred bytes; a snapshot of a full
# BBS (100 sessions by default, a few thousand at most) stays well under this.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_STRING = 1024
MAX_CHECKS = 16
MAX_FIELDS_PER_CHECK = 64
MAX_LIST_ITEMS = 4096
MAX_SEQ = 2**63 - 1
# Observed-at times are unix seconds; anything before 2000 or after 2200 is a
# broken clock or garbage, not a time.
MIN_TIME = 946_684_800.0
MAX_TIME = 7_258_118_400.0

REPORT = "report"
SESSION = "session"

# Session event kinds. ``state`` changes a known session's state or user;
# ``snapshot`` lists every session of the host and replaces what is stored.
CONNECTED = "connected"
LOGGED_IN = "logged_in"
DISCONNECTED = "disconnected"
STATE = "state"
SNAPSHOT = "snapshot"
SESSION_KINDS = frozenset({CONNECTED, LOGGED_IN, DISCONNECTED, STATE, SNAPSHOT})
# MTBBS's two session states.
SESSION_STATES = frozenset({"connected", "logged_in"})

Scalar = None | bool | int | float | str
FieldValue = Scalar | tuple[Mapping[str, Scalar], ...]


@dataclass(frozen=True)
class SessionInfo:
    """One telnet session as MTBBS tracks it."""

    client_id: str  # the client address, ``ip:port``
    user_id: str | None  # ``guest`` for guests, None before login
    state: str  # ``connected`` or ``logged_in``
    connected_at: float  # unix seconds, BBS clock


@dataclass(frozen=True)
class Report:
    """One cycle of an agent's checks.

    ``checks`` maps a check name (``database``, ``sessions``, ``disk_space``,
    ``memory``, ...) to its fields under the seed's names, each with
    ``healthy``. ``epoch`` and ``seq`` order the reports of one host:
    ``epoch`` changes when the agent loses its spool (a new run), ``seq``
    increases by one per report within an epoch. ``dropped`` counts reports
    the agent's spool had to discard since the previous delivered report.
    ``interval`` is the agent's reporting period in seconds, from which the
    collector judges when the host has gone silent.
    """

    host: str
    agent_version: str
    epoch: int
    seq: int
    observed_at: float
    checks: Mapping[str, Mapping[str, FieldValue]]
    dropped: int = 0
    interval: float = 60.0

    @property
    def order(self) -> tuple[int, int]:
        """The ordering key of this host's reports."""
        return (self.epoch, self.seq)


@dataclass(frozen=True)
class SessionEvent:
    """A change of the BBS's sessions, or a full snapshot of them."""

    host: str
    epoch: int
    seq: int
    observed_at: float
    kind: str
    client_id: str = ""
    user_id: str | None = None
    state: str | None = None
    connected_at: float | None = None
    sessions: tuple[SessionInfo, ...] = field(default=())

    @property
    def order(self) -> tuple[int, int]:
        """The ordering key of this reporter's events."""
        return (self.epoch, self.seq)


Message = Report | SessionEvent


# -- encode ----------------------------------------------------------------


def _session_to_map(info: SessionInfo) -> dict[str, Any]:
    return {
        "client_id": info.client_id,
        "user_id": info.user_id,
        "state": info.state,
        "connected_at": info.connected_at,
    }


def _field_to_wire(value: FieldValue) -> Any:
    if isinstance(value, tuple | list):
        return [dict(item) for item in value]
    return value


def to_map(message: Message) -> dict[str, Any]:
    """The plain map a message is encoded as (useful for JSON too)."""
    if isinstance(message, Report):
        return {
            "v": SCHEMA_VERSION,
            "t": REPORT,
            "host": message.host,
            "agent_version": message.agent_version,
            "epoch": message.epoch,
            "seq": message.seq,
            "observed_at": message.observed_at,
            "dropped": message.dropped,
            "interval": message.interval,
            "checks": {
                name: {k: _field_to_wire(v) for k, v in fields.items()}
                for name, fields in message.checks.items()
            },
        }
    return {
        "v": SCHEMA_VERSION,
        "t": SESSION,
        "host": message.host,
        "epoch": message.epoch,
        "seq": message.seq,
        "observed_at": message.observed_at,
        "kind": message.kind,
        "client_id": message.client_id,
        "user_id": message.user_id,
        "state": message.state,
        "connected_at": message.connected_at,
        "sessions": [_session_to_map(s) for s in message.sessions],
    }


def encode(message: Message) -> bytes:
    """msgpack bytes of ``message``, validated as ``decode`` would.

    Validating on the way out means a bug in an agent fails loudly on the
    agent rather than filling the collector's dead-letter stream.
    """
    data: bytes = msgpack.packb(to_map(message), use_bin_type=True)
    decode(data)
    return data


def stream_fields(message: Message) -> dict[str, bytes]:
    """The fields of a stream entry carrying ``message``."""
    return {"m": encode(message)}


# -- decode ----------------------------------------------------------------


def _unpack(data: object) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("payload is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"payload of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_MESSAGE_BYTES,
            max_bin_len=0,
            max_array_len=MAX_LIST_ITEMS,
            max_map_len=max(MAX_FIELDS_PER_CHECK, 64),
            max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on garbage
        raise DecodeError(f"not msgpack: {type(exc).__name__}") from None


def _get(doc: Mapping[str, Any], key: str) -> Any:
    if key not in doc:
        raise DecodeError(f"missing field {key!r}")
    return doc[key]


def _string(value: Any, name: str, *, optional: bool = False, limit: int = MAX_STRING) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise DecodeError(f"{name} is not a string")
    if len(value) > limit:
        raise DecodeError(f"{name} longer than {limit} characters")
    return value


def _integer(value: Any, name: str, low: int = 0, high: int = MAX_SEQ) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{name} is not an integer")
    if not low <= value <= high:
        raise DecodeError(f"{name} out of range")
    return value


def _time(value: Any, name: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{name} is not a number")
    if not math.isfinite(value) or not MIN_TIME <= value <= MAX_TIME:
        raise DecodeError(f"{name} is not a plausible unix time")
    return float(value)


def _interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError("interval is not a number")
    if not math.isfinite(value) or not 0.1 <= value <= 86_400:
        raise DecodeError("interval out of range")
    return float(value)


def _host(value: Any) -> str:
    host = _string(value, "host", limit=64)
    if not valid_host_id(host):
        raise DecodeError("host is not a valid host id")
    return str(host)


def _scalar(value: Any, name: str) -> Scalar:
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SEQ:
            raise DecodeError(f"{name} out of range")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise DecodeError(f"{name} longer than {MAX_STRING} characters")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError(f"{name} is not finite")
        return value
    raise DecodeError(f"{name} is not a scalar")


def _field_value(value: Any, name: str) -> FieldValue:
    if isinstance(value, list):
        items = []
        for index, item in enumerate(value):
            if not isinstance(item, dict) or len(item) > 16:
                raise DecodeError(f"{name}[{index}] is not a small map")
            items.append(
                {
                    _string(k, f"{name}[{index}] key", limit=64): _scalar(v, f"{name}[{index}].{k}")
                    for k, v in item.items()
                }
            )
        return tuple(items)
    return _scalar(value, name)


def _checks(value: Any) -> dict[str, dict[str, FieldValue]]:
    if not isinstance(value, dict):
        raise DecodeError("checks is not a map")
    if len(value) > MAX_CHECKS:
        raise DecodeError("too many checks")
    checks: dict[str, dict[str, FieldValue]] = {}
    for name, fields in value.items():
        if not isinstance(name, str) or not CHECK_NAME_PATTERN.match(name):
            raise DecodeError("check name is not valid")
        if not isinstance(fields, dict):
            raise DecodeError(f"check {name} is not a map")
        if len(fields) > MAX_FIELDS_PER_CHECK:
            raise DecodeError(f"check {name} has too many fields")
        if not isinstance(fields.get("healthy"), bool):
            raise DecodeError(f"check {name} lacks a boolean 'healthy'")
        checks[name] = {}
        for key, item in fields.items():
            if not isinstance(key, str) or not CHECK_NAME_PATTERN.match(key):
                raise DecodeError(f"check {name} has an invalid field name")
            checks[name][key] = _field_value(item, f"{name}.{key}")
    return checks


def _session_state(value: Any, name: str, *, optional: bool) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or value not in SESSION_STATES:
        raise DecodeError(f"{name} is not a session state")
    return value


def _session_info(value: Any, index: int) -> SessionInfo:
    if not isinstance(value, dict):
        raise DecodeError(f"sessions[{index}] is not a map")
    return SessionInfo(
        client_id=_string(_get(value, "client_id"), "client_id", limit=128),
        user_id=_string(value.get("user_id"), "user_id", optional=True, limit=128),
        state=_session_state(_get(value, "state"), "state", optional=False),
        connected_at=_time(_get(value, "connected_at"), "connected_at"),
    )


def _decode_report(doc: Mapping[str, Any]) -> Report:
    return Report(
        host=_host(_get(doc, "host")),
        agent_version=_string(_get(doc, "agent_version"), "agent_version", limit=64),
        epoch=_integer(_get(doc, "epoch"), "epoch"),
        seq=_integer(_get(doc, "seq"), "seq"),
        observed_at=_time(_get(doc, "observed_at"), "observed_at"),
        dropped=_integer(doc.get("dropped", 0), "dropped"),
        interval=_interval(doc.get("interval", 60.0)),
        checks=_checks(_get(doc, "checks")),
    )


def _decode_session(doc: Mapping[str, Any]) -> SessionEvent:
    kind = _get(doc, "kind")
    if not isinstance(kind, str) or kind not in SESSION_KINDS:
        raise DecodeError("kind is not a session event kind")
    raw_sessions = doc.get("sessions") or []
    if not isinstance(raw_sessions, list):
        raise DecodeError("sessions is not a list")
    if kind != SNAPSHOT and raw_sessions:
        raise DecodeError("only a snapshot carries sessions")
    client_id = _string(doc.get("client_id", ""), "client_id", limit=128)
    if kind != SNAPSHOT and not client_id:
        raise DecodeError(f"a {kind} event needs a client_id")
    return SessionEvent(
        host=_host(_get(doc, "host")),
        epoch=_integer(_get(doc, "epoch"), "epoch"),
        seq=_integer(_get(doc, "seq"), "seq"),
        observed_at=_time(_get(doc, "observed_at"), "observed_at"),
        kind=kind,
        client_id=client_id,
        user_id=_string(doc.get("user_id"), "user_id", optional=True, limit=128),
        state=_session_state(doc.get("state"), "state", optional=True),
        connected_at=_time(doc.get("connected_at"), "connected_at", optional=True),
        sessions=tuple(_session_info(item, i) for i, item in enumerate(raw_sessions)),
    )


def decode(data: object) -> Message:
    """Validate and decode one message; raise DecodeError on anything else."""
    doc = _unpack(data)
    if not isinstance(doc, dict):
        raise DecodeError("message is not a map")
    version = doc.get("v")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise DecodeError(f"unsupported schema version {version!r}")
    kind = doc.get("t")
    if not isinstance(kind, str):
        raise DecodeError("message type is not a string")
    if kind == REPORT:
        return _decode_report(doc)
    if kind == SESSION:
        return _decode_session(doc)
    raise DecodeError(f"unknown message type {kind!r}"[:80])


def decode_entry(fields: Mapping[Any, Any]) -> Message:
    """Decode the message of a stream entry (its field ``m``)."""
    payload = fields.get(b"m", fields.get("m"))
    if payload is None:
        raise DecodeError("stream entry has no field 'm'")
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogateescape")
    return decode(payload)
