"""Message types on the Redis Streams and their msgpack codec.

One module owns both directions so that they cannot drift apart: ``encode``
writes a msgpack map with a schema version and a type tag; ``decode`` reads
one back and validates every type and bound before building the frozen
dataclass. Anything that is not a message we understand raises
:class:`wire.errors.DecodeError` with a short reason, never another
exception, so the collector can dead-letter it and carry on.

Decoding runs in up to three stages, each leaving to the next whatever it
does not accept: msgspec's typed decoder (C, for the messages our encoders
write), a Python acceptor of the same plain shapes over msgpack-python's
unpacking, and the careful validators, which alone define what is accepted
and give every refusal its reason. The first two only make it faster: the
set of accepted messages and the decoded values are those of the careful
validators (tests/wire compares them on random and mutated input). Without
msgspec installed, decoding starts at the second stage.

A stream entry holds the encoded message in field ``m`` (see
:func:`stream_fields`); a signature over those bytes may travel beside it in
field ``sig``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeAlias

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


_unpackb = msgpack.unpackb
_UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False,
    "strict_map_key": True,
    "use_list": True,
    "max_str_len": MAX_MESSAGE_BYTES,
    "max_bin_len": 0,
    "max_array_len": MAX_LIST_ITEMS,
    "max_map_len": max(MAX_FIELDS_PER_CHECK, 64),
    "max_ext_len": 0,
}


def _unpack(data: object) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("payload is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"payload of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return _unpackb(bytes(data), **_UNPACK_OPTIONS)
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
    raw_sessions: Any = doc.get("sessions") or []
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


# -- the fast path ----------------------------------------------------------
#
# Almost every message a collector sees is well formed and of a few plain
# shapes, and the careful validators above cost more than msgpack itself.
# The functions below accept only that plain case, with exact type tests
# (msgpack builds exact int/float/str/bool/list/dict, never subclasses) and
# bounded caches of the names and host ids already found valid. On anything
# else they return None and the careful path decides, so the set of accepted
# messages, the decoded values and every refusal reason are exactly those of
# the careful path (tests/wire compares the two on random input).
#
# With msgspec installed the stage below comes first and this path sees only
# what msgspec left: messages with fields this version does not know (from a
# newer agent), duplicate keys, unusual encodings, and refusals. It stays
# because those still decode here in about half the careful path's time, and
# because it is the fast path wherever msgspec cannot be imported.

_NAME_CACHE_LIMIT = 4096
_HOST_CACHE_LIMIT = 16384
_valid_names: set[str] = set()
_valid_hosts: set[str] = set()
_match_name = CHECK_NAME_PATTERN.match


def _learn_name(name: str) -> bool:
    if not _match_name(name):
        return False
    if len(_valid_names) < _NAME_CACHE_LIMIT:
        _valid_names.add(name)
    return True


def _learn_host(host: str) -> bool:
    if len(host) > 64 or not valid_host_id(host):
        return False
    if len(_valid_hosts) < _HOST_CACHE_LIMIT:
        _valid_hosts.add(host)
    return True


def _fast_items(value: list[Any]) -> tuple[dict[str, Scalar], ...] | None:
    """A list field (small maps of scalars) as decoded, or None."""
    for item in value:
        if type(item) is not dict or len(item) > 16:
            return None
        for key, scalar in item.items():
            if type(key) is not str or len(key) > 64:
                return None
            kind = type(scalar)
            if kind is str:
                if len(scalar) > MAX_STRING:
                    return None
            elif kind is float:
                if scalar - scalar != 0.0:  # inf or nan
                    return None
            elif kind is int:
                if not -MAX_SEQ <= scalar <= MAX_SEQ:
                    return None
            elif scalar is not None and kind is not bool:
                return None
    return tuple(value)


def _fast_checks(value: Any) -> dict[str, dict[str, FieldValue]] | None:
    """The checks map, validated in place (it is ours: msgpack just built it), or None."""
    if type(value) is not dict or len(value) > MAX_CHECKS:
        return None
    names = _valid_names
    # List values become tuples only once everything passed: on a refusal
    # the careful path must see the document as msgpack built it.
    tuples: list[tuple[dict[str, Any], str, tuple[dict[str, Scalar], ...]]] = []
    for name, fields in value.items():
        if (type(name) is not str or (name not in names and not _learn_name(name))
                or type(fields) is not dict or len(fields) > MAX_FIELDS_PER_CHECK
                or type(fields.get("healthy")) is not bool):
            return None
        for key, item in fields.items():
            if type(key) is not str or (key not in names and not _learn_name(key)):
                return None
            kind = type(item)
            if kind is str:
                if len(item) > MAX_STRING:
                    return None
            elif kind is float:
                if item - item != 0.0:  # inf or nan
                    return None
            elif kind is int:
                if not -MAX_SEQ <= item <= MAX_SEQ:
                    return None
            elif kind is list:
                items = _fast_items(item)
                if items is None:
                    return None
                tuples.append((fields, key, items))
            elif item is not None and kind is not bool:
                return None
    for fields, key, items in tuples:
        fields[key] = items
    return value


_NUMBERS = (int, float)


def _report(doc: dict[str, Any]) -> Report:
    host: Any = doc.get("host")
    agent_version: Any = doc.get("agent_version")
    epoch: Any = doc.get("epoch")
    seq: Any = doc.get("seq")
    observed_at: Any = doc.get("observed_at")
    dropped: Any = doc.get("dropped", 0)
    interval: Any = doc.get("interval", 60.0)
    if (type(host) is str and (host in _valid_hosts or _learn_host(host))
            and type(agent_version) is str and len(agent_version) <= 64
            and type(epoch) is int and 0 <= epoch <= MAX_SEQ
            and type(seq) is int and 0 <= seq <= MAX_SEQ
            and type(observed_at) in _NUMBERS and MIN_TIME <= observed_at <= MAX_TIME
            and type(dropped) is int and 0 <= dropped <= MAX_SEQ
            and type(interval) in _NUMBERS and 0.1 <= interval <= 86_400):
        checks = _fast_checks(doc.get("checks"))
        if checks is not None:
            return Report(host, agent_version, epoch, seq, float(observed_at), checks,
                          dropped, float(interval))
    return _decode_report(doc)


def _fast_sessions(value: list[Any]) -> tuple[SessionInfo, ...] | None:
    infos = []
    for item in value:
        if type(item) is not dict:
            return None
        client_id: Any = item.get("client_id")
        user_id: Any = item.get("user_id")
        state: Any = item.get("state")
        connected_at: Any = item.get("connected_at")
        if (type(client_id) is not str or len(client_id) > 128
                or (user_id is not None and (type(user_id) is not str or len(user_id) > 128))
                or type(state) is not str or state not in SESSION_STATES
                or type(connected_at) not in _NUMBERS
                or not MIN_TIME <= connected_at <= MAX_TIME):
            return None
        infos.append(SessionInfo(client_id, user_id, state, float(connected_at)))
    return tuple(infos)


def _session(doc: dict[str, Any]) -> SessionEvent:
    kind: Any = doc.get("kind")
    host: Any = doc.get("host")
    epoch: Any = doc.get("epoch")
    seq: Any = doc.get("seq")
    observed_at: Any = doc.get("observed_at")
    client_id: Any = doc.get("client_id", "")
    user_id: Any = doc.get("user_id")
    state: Any = doc.get("state")
    connected_at: Any = doc.get("connected_at")
    raw_sessions: Any = doc.get("sessions")
    if (type(kind) is str and kind in SESSION_KINDS
            and type(host) is str and (host in _valid_hosts or _learn_host(host))
            and type(epoch) is int and 0 <= epoch <= MAX_SEQ
            and type(seq) is int and 0 <= seq <= MAX_SEQ
            and type(observed_at) in _NUMBERS and MIN_TIME <= observed_at <= MAX_TIME
            and type(client_id) is str and len(client_id) <= 128
            and (client_id or kind == SNAPSHOT)
            and (user_id is None or (type(user_id) is str and len(user_id) <= 128))
            and (state is None or (type(state) is str and state in SESSION_STATES))
            and (connected_at is None or (type(connected_at) in _NUMBERS
                                          and MIN_TIME <= connected_at <= MAX_TIME))):
        sessions: tuple[SessionInfo, ...] | None = ()
        if raw_sessions:
            # Only a snapshot carries sessions; anything else is for the careful path.
            sessions = (_fast_sessions(raw_sessions)
                        if type(raw_sessions) is list and kind == SNAPSHOT else None)
        if sessions is not None:
            return SessionEvent(host, epoch, seq, float(observed_at), kind, client_id, user_id,
                                state, None if connected_at is None else float(connected_at),
                                sessions)
    return _decode_session(doc)


# -- the msgspec stage --------------------------------------------------------
#
# msgspec decodes msgpack straight into typed structures and checks their
# bounds in C, in less time than msgpack-python takes to unpack alone, so it
# comes first. Its types below mirror the careful validators and are never
# looser: whatever msgspec refuses, and whatever the few Python checks after
# it refuse, goes on to the paths above, which give the canonical answer and
# reason. The differences between the two msgpack decoders that matter:
#
# * msgpack-python refuses any map of more than 64 entries. msgspec bounds a
#   dict by its entries on the wire (duplicates included), but not a struct,
#   which takes any number of duplicate keys (the last wins, as in a dict).
#   Hence only a top-level fixmap (at most 15 entries) is tried, and a
#   session of a snapshot is a dict with the four known keys, not a struct.
# * Every value has a type, nothing is skipped unread: an unknown field
#   (``forbid_unknown_fields``), a bin, an ext, a key that is not a string,
#   an array of more than 4096 items, invalid UTF-8 and trailing bytes are
#   all refused and left to the careful path (which ignores unknown fields).
# * msgspec takes neither a bool for an int or a float nor a float for an
#   int; it widens an int to float where the careful path calls float(); the
#   float bounds refuse nan and inf (float32 included); string lengths are
#   counted in characters, as len() does. It checks every value as it reads
#   it, so a duplicate key whose first value has the wrong type is refused
#   even though the last one would do.
# * Names and host ids are tested against the caches of the fast path: a
#   regex per key in msgspec would cost more than the whole decoding.
#
# The instances are built without calling the dataclasses' __init__: a frozen
# dataclass's __init__ sets each field through object.__setattr__ and does
# nothing else (no __post_init__, every field is given), so handing the new
# instance its attribute dict, in field order, gives an equal instance with
# the same repr, hash and immutability in a fraction of the time.

try:
    import msgspec
except ImportError:  # pragma: no cover - a declared dependency, but only a speed-up:
    # without it every message takes the msgpack-python paths above.
    msgspec = None  # type: ignore[assignment]

_from_wire: Callable[[bytes], Message | None] | None = None
_new = object.__new__
_set_attribute = object.__setattr__
_FIXMAP_FIRST = 0x80
_FIXMAP_LAST = 0x8F

if msgspec is not None:
    from msgspec import Meta

    _Seq = Annotated[int, Meta(ge=0, le=MAX_SEQ)]
    _Time = Annotated[float, Meta(ge=MIN_TIME, le=MAX_TIME)]
    _Short = Annotated[str, Meta(max_length=64)]
    _ClientText = Annotated[str, Meta(max_length=128)]
    _WireScalar: TypeAlias = (
        None
        | bool
        | Annotated[int, Meta(ge=-MAX_SEQ, le=MAX_SEQ)]
        | Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
        | Annotated[str, Meta(max_length=MAX_STRING)]
    )
    _WireItem = Annotated[dict[_Short, _WireScalar], Meta(max_length=16)]
    _WireFields = Annotated[
        dict[str, _WireScalar | Annotated[tuple[_WireItem, ...], Meta(max_length=MAX_LIST_ITEMS)]],
        Meta(max_length=MAX_FIELDS_PER_CHECK),
    ]
    _WireSessionInfo = Annotated[
        dict[Literal["client_id", "user_id", "state", "connected_at"], None | _ClientText | _Time],
        Meta(max_length=_UNPACK_OPTIONS["max_map_len"]),
    ]
    _WireSessions = Annotated[tuple[_WireSessionInfo, ...], Meta(max_length=MAX_LIST_ITEMS)]

    class _WireMessage(msgspec.Struct, tag_field="t", forbid_unknown_fields=True, gc=False):
        """What both message types carry (fields are read by name: order is free)."""

        v: Literal[1]
        host: _Short
        epoch: _Seq
        seq: _Seq
        observed_at: _Time

    class _WireReport(_WireMessage, tag=REPORT):
        agent_version: _Short
        checks: Annotated[dict[str, _WireFields], Meta(max_length=MAX_CHECKS)]
        dropped: _Seq = 0
        interval: Annotated[float, Meta(ge=0.1, le=86_400)] = 60.0

    class _WireSession(_WireMessage, tag=SESSION):
        kind: Literal["connected", "logged_in", "disconnected", "state", "snapshot"]
        client_id: _ClientText = ""
        user_id: _ClientText | None = None
        state: Literal["connected", "logged_in"] | None = None
        connected_at: _Time | None = None
        sessions: _WireSessions | None = None

    _decode_wire = msgspec.msgpack.Decoder(_WireReport | _WireSession).decode

    def _wire_sessions(items: tuple[Mapping[Any, Any], ...]) -> tuple[SessionInfo, ...] | None:
        infos = []
        for item in items:
            client_id = item.get("client_id")
            user_id = item.get("user_id")
            state = item.get("state")
            connected_at = item.get("connected_at")
            if (type(client_id) is not str
                    or (user_id is not None and type(user_id) is not str)
                    or state not in SESSION_STATES or type(connected_at) is not float):
                return None
            info = _new(SessionInfo)
            _set_attribute(info, "__dict__", {
                "client_id": client_id, "user_id": user_id, "state": state,
                "connected_at": connected_at})
            infos.append(info)
        return tuple(infos)

    def _msgspec_stage(data: bytes) -> Message | None:
        """``data`` decoded by msgspec, or None to leave it to the paths above."""
        if len(data) > MAX_MESSAGE_BYTES:
            return None
        try:
            if not _FIXMAP_FIRST <= data[0] <= _FIXMAP_LAST:
                return None
            wire = _decode_wire(data)
        except Exception:  # noqa: BLE001 - msgspec's errors, UnicodeDecodeError, IndexError
            return None  # all mean: let the careful path decide and say why
        host = wire.host
        if not (host in _valid_hosts or _learn_host(host)):
            return None
        if isinstance(wire, _WireSession):
            # Only a snapshot carries sessions; any other event names its client.
            client_id = wire.client_id
            raw_sessions = wire.sessions
            sessions: tuple[SessionInfo, ...] | None = ()
            if wire.kind != SNAPSHOT:
                if raw_sessions or not client_id:
                    return None
            elif raw_sessions:
                sessions = _wire_sessions(raw_sessions)
                if sessions is None:
                    return None
            event = _new(SessionEvent)
            _set_attribute(event, "__dict__", {
                "host": host, "epoch": wire.epoch, "seq": wire.seq,
                "observed_at": wire.observed_at, "kind": wire.kind, "client_id": client_id,
                "user_id": wire.user_id, "state": wire.state, "connected_at": wire.connected_at,
                "sessions": sessions})
            return event
        # A report: valid check and field names, each check with a boolean 'healthy'.
        checks = wire.checks
        names = _valid_names
        if not names.issuperset(checks) and not all(map(_learn_name, checks)):
            return None
        for fields in checks.values():
            healthy = fields.get("healthy")
            if ((healthy is not True and healthy is not False)
                    or not (names.issuperset(fields) or all(map(_learn_name, fields)))):
                return None
        report = _new(Report)
        _set_attribute(report, "__dict__", {
            "host": host, "agent_version": wire.agent_version, "epoch": wire.epoch,
            "seq": wire.seq, "observed_at": wire.observed_at, "checks": checks,
            "dropped": wire.dropped, "interval": wire.interval})
        return report

    _from_wire = _msgspec_stage


# -- decode, all stages -------------------------------------------------------


def _decode_unpacked(data: object) -> Message:
    """``data`` through msgpack-python, the fast path and the careful validators."""
    doc = _unpack(data)
    if not isinstance(doc, dict):
        raise DecodeError("message is not a map")
    version = doc.get("v")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise DecodeError(f"unsupported schema version {version!r}")
    kind: Any = doc.get("t")
    if not isinstance(kind, str):
        raise DecodeError("message type is not a string")
    if kind == REPORT:
        return _report(doc)
    if kind == SESSION:
        return _session(doc)
    raise DecodeError(f"unknown message type {kind!r}"[:80])


_ABSENT = object()


def decode(data: object) -> Message:
    """Validate and decode one message; raise DecodeError on anything else."""
    if _from_wire is not None and type(data) is bytes:
        message = _from_wire(data)
        if message is not None:
            return message
    return _decode_unpacked(data)


def decode_entry(fields: Mapping[Any, Any]) -> Message:
    """Decode the message of a stream entry (its field ``m``)."""
    payload = fields.get(b"m", _ABSENT)
    if payload is _ABSENT:
        payload = fields.get("m")
    # The collector's hot path, once per entry: decode() inlined for bytes.
    if type(payload) is bytes and _from_wire is not None:
        message = _from_wire(payload)
        return message if message is not None else _decode_unpacked(payload)
    if payload is None:
        raise DecodeError("stream entry has no field 'm'")
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogateescape")
    return decode(payload)
