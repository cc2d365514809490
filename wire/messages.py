"""Message types on the Redis Streams and their msgpack codec.

The message types are msgspec Structs, and their type annotations are the
schema: one decoder (``msgspec.msgpack``) reads a message straight into them
and checks every type and bound on the way; the rules that span several
fields (a check needs a boolean ``healthy``, only a snapshot carries
sessions) are in each type's ``__post_init__``, which runs for decoded and
constructed messages alike. Anything that is not a message we understand
raises :class:`wire.errors.DecodeError` with a short reason, never another
exception, so the collector can dead-letter it and carry on.

Fields this version does not know are ignored, so an agent newer than the
collector is still understood; a message without ``v`` is read as the
current schema version.

A stream entry holds the encoded message in field ``m`` (see
:func:`stream_fields`); a signature over those bytes may travel beside it in
field ``sig``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Annotated, Any, TypeAlias

import msgspec
from msgspec import Meta

from wire.errors import DecodeError
from wire.keys import CHECK_NAME_PATTERN, HOST_ID_PATTERN

SCHEMA_VERSION = 1

# Bounds. A report of one host is a few hundred bytes; a snapshot of a busy
# BBS (a few hundred sessions) stays under this. The collector refuses
# entries above its own ``max_entry_bytes`` (by default this same figure).
MAX_MESSAGE_BYTES = 64 * 1024
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

# The schema's bounded types.
_Count = Annotated[int, Meta(ge=0, le=MAX_SEQ)]
_Time = Annotated[float, Meta(ge=MIN_TIME, le=MAX_TIME)]
_HostId = Annotated[str, Meta(max_length=64, pattern=HOST_ID_PATTERN.pattern)]
_Short = Annotated[str, Meta(max_length=64)]
_ClientText = Annotated[str, Meta(max_length=128)]
# Check and field names are bounded by their pattern, which Report checks
# over all of them joined by commas: one pattern over the whole list costs a
# fraction of one per name (and a constraint on a map's keys makes msgspec
# read them slower).
_Name = str
_NAME = CHECK_NAME_PATTERN.pattern.removeprefix("^").removesuffix("$")
_NAME_LIST = re.compile(f"{_NAME}(?:,{_NAME})*")
_Interval = Annotated[float, Meta(ge=0.1, le=86_400)]
# A figure of a check: finite floats only (the bounds refuse inf and nan).
_WireScalar: TypeAlias = (
    None
    | bool
    | Annotated[int, Meta(ge=-MAX_SEQ, le=MAX_SEQ)]
    | Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
    | Annotated[str, Meta(max_length=MAX_STRING)]
)
_ListItem = Annotated[Mapping[_Short, _WireScalar], Meta(max_length=16)]
_CheckFields = Annotated[
    Mapping[_Name, _WireScalar | Annotated[tuple[_ListItem, ...], Meta(max_length=MAX_LIST_ITEMS)]],
    Meta(max_length=MAX_FIELDS_PER_CHECK),
]
_Checks = Annotated[Mapping[_Name, _CheckFields], Meta(max_length=MAX_CHECKS)]


def _check_version(version: int) -> None:
    if version != SCHEMA_VERSION:
        raise ValueError(f"unsupported schema version {version!r}")


def _check_state(state: str | None, name: str) -> None:
    if state is not None and state not in SESSION_STATES:
        raise ValueError(f"{name} is not a session state")


class SessionInfo(msgspec.Struct, frozen=True):
    """One telnet session as MTBBS tracks it."""

    client_id: _ClientText  # the client address, ``ip:port``
    user_id: _ClientText | None  # ``guest`` for guests, None before login
    state: str  # ``connected`` or ``logged_in``
    connected_at: _Time  # unix seconds, BBS clock

    def __post_init__(self) -> None:
        _check_state(self.state, "state")


class Report(msgspec.Struct, frozen=True, tag_field="t", tag=REPORT):
    """One cycle of an agent's checks.

    ``checks`` maps a check name (``database``, ``sessions``, ``disk_space``,
    ``memory``, ...) to its fields under the seed's names, each with
    ``healthy``. ``epoch`` and ``seq`` number the reports of one agent:
    ``epoch`` changes when the agent loses its spool (a new run), ``seq``
    increases by one per report within an epoch. ``dropped`` counts reports
    the agent's spool had to discard since the previous delivered report.
    ``interval`` is the agent's reporting period in seconds, from which the
    collector judges when the host has gone silent.
    """

    host: _HostId
    agent_version: _Short
    epoch: _Count
    seq: _Count
    observed_at: _Time
    checks: _Checks
    dropped: _Count = 0
    interval: _Interval = 60.0
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        names = [*self.checks]
        for name, fields in self.checks.items():
            if not isinstance(fields.get("healthy"), bool):
                raise ValueError(f"check {name} lacks a boolean 'healthy'")
            names += fields
        joined = ",".join(names)
        # (A name holding a comma would read as two: the count tells.)
        if not _NAME_LIST.fullmatch(joined) or joined.count(",") != len(names) - 1:
            raise ValueError("a check or field name is not valid")


class SessionEvent(msgspec.Struct, frozen=True, tag_field="t", tag=SESSION):
    """A change of the BBS's sessions, or a full snapshot of them."""

    host: _HostId
    epoch: _Count
    seq: _Count
    observed_at: _Time
    kind: str
    client_id: _ClientText = ""
    user_id: _ClientText | None = None
    state: str | None = None
    connected_at: _Time | None = None
    sessions: Annotated[tuple[SessionInfo, ...], Meta(max_length=MAX_LIST_ITEMS)] = ()
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_version(self.v)
        if self.kind not in SESSION_KINDS:
            raise ValueError("kind is not a session event kind")
        _check_state(self.state, "state")
        if self.kind != SNAPSHOT:
            if self.sessions:
                raise ValueError("only a snapshot carries sessions")
            if not self.client_id:
                raise ValueError(f"a {self.kind} event needs a client_id")


Message = Report | SessionEvent

_decoder = msgspec.msgpack.Decoder(Report | SessionEvent)
_encoder = msgspec.msgpack.Encoder()


# -- encode ----------------------------------------------------------------


def to_map(message: Message) -> dict[str, Any]:
    """The plain map a message is encoded as (useful for JSON too)."""
    doc: dict[str, Any] = msgspec.to_builtins(message)
    return doc


def encode(message: Message) -> bytes:
    """msgpack bytes of ``message``, validated as ``decode`` would.

    Validating on the way out means a bug in an agent fails loudly on the
    agent rather than filling the collector's dead-letter stream.
    """
    data = _encoder.encode(message)
    decode(data)
    return data


def stream_fields(message: Message) -> dict[str, bytes]:
    """The fields of a stream entry carrying ``message``."""
    return {"m": encode(message)}


# -- decode ----------------------------------------------------------------


def decode(data: object) -> Message:
    """Validate and decode one message; raise DecodeError on anything else."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("payload is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"payload of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message: Message = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(str(exc)[:200]) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not msgpack: {exc}"[:200]) from None
    return message


def decode_entry(fields: Mapping[Any, Any]) -> Message:
    """Decode the message of a stream entry (its field ``m``)."""
    payload = fields.get(b"m", fields.get("m"))
    if payload is None:
        raise DecodeError("stream entry has no field 'm'")
    return decode(payload)
