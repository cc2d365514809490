"""The fast paths of the codec and the state text agree with the careful ones.

``wire.messages.decode`` first tries msgspec's typed decoder, then a Python
acceptor of the plain common shapes over msgpack-python's result, and leaves
everything else to the careful validators; the formatting in ``wire.state``
inlines and caches what strftime, ``format_value`` and ``json.dumps`` did.
These tests compare the ways on random input: the same messages accepted, the
same values down to their exact types, the same refusal reasons, the same
text. The msgspec stage is also fed every encoding msgpack allows (widths,
float32, duplicate keys, long maps) and byte-level mutations, since that is
where two msgpack decoders may differ.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import struct
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wire import messages
from wire.errors import DecodeError
from wire.messages import (
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    MAX_TIME,
    MIN_TIME,
    Message,
    Report,
    SessionEvent,
    SessionInfo,
    decode,
    encode,
)
from wire.state import (
    STALE_CRITICAL,
    STALE_NO,
    STALE_WARNING,
    check_severity,
    flatten_checks,
    float_text,
    format_float,
    iso_from_ms,
    iso_from_seconds,
    report_fields,
    session_text,
)
from wire.status import Status

NOW = 1_795_000_000.5


def careful(data: bytes) -> Any:
    """What the careful validators alone make of ``data`` (a value or the refusal)."""
    try:
        doc = messages._unpack(data)
    except DecodeError as exc:
        return ("refused", exc.reason)
    if (not isinstance(doc, dict) or doc.get("t") not in (messages.REPORT, messages.SESSION)
            or isinstance(doc.get("v"), bool) or doc.get("v") != messages.SCHEMA_VERSION):
        return fast(data)  # the envelope checks are one code for both paths
    try:
        if doc["t"] == messages.REPORT:
            return messages._decode_report(doc)
        return messages._decode_session(doc)
    except DecodeError as exc:
        return ("refused", exc.reason)


def fast(data: bytes) -> Any:
    try:
        return decode(data)
    except DecodeError as exc:
        return ("refused", exc.reason)


def stage(data: bytes) -> Message | None:
    """What the msgspec stage alone makes of ``data`` (None: it leaves it to the others)."""
    assert messages._from_wire is not None, "msgspec is a dependency: the stage must be on"
    return messages._from_wire(data)


def exact(result: Any) -> tuple[Any, str]:
    """``result`` compared with types: repr tells 1 from 1.0 from True, () from [], key order."""
    return (result, repr(result))


def agree(data: bytes) -> Any:
    """Assert that every path makes the same of ``data``; return the careful result."""
    expected = careful(data)
    assert exact(fast(data)) == exact(expected)
    staged = stage(data)
    if staged is not None:
        assert exact(staged) == exact(expected)
    return expected


scalars = (st.none() | st.booleans()
           | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63) + 1, -(2**63), 2**63])
           | st.floats() | st.text(max_size=8)
           | st.sampled_from(["", "x" * 1024, "x" * 1025, "c" * 128, "c" * 129, "データ",
                              "logged_in", "connected"]))
names = st.sampled_from(["healthy", "percent_used", "path", "sessions", "a", "Bad", "x-y",
                         "disk\n", "b" * 32, "b" * 33, "", "ok_2"]) | st.text(max_size=6)
small_maps = st.dictionaries(st.text(max_size=4) | st.just("k" * 65), scalars, max_size=4)
items = st.lists(small_maps | scalars, max_size=3)
any_value = scalars | items | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
check_fields = st.dictionaries(names, scalars | items | any_value, max_size=6)


@st.composite
def report_docs(draw: st.DrawFn) -> dict[str, Any]:
    checks = draw(st.dictionaries(names, check_fields, max_size=5))
    for fields in checks.values():
        if draw(st.booleans()):
            fields["healthy"] = draw(st.booleans())
    doc: dict[str, Any] = {
        "v": 1, "t": "report", "host": draw(st.sampled_from(["bbs-01", "b" * 64, "b" * 65,
                                                              "bad host", "x\n", "-x"])),
        "agent_version": draw(st.sampled_from(["0.1.0", "v" * 64, "v" * 65])),
        "epoch": draw(st.integers(min_value=-1, max_value=2**63)),
        "seq": draw(st.integers(min_value=-1, max_value=2**64 - 1)),
        "observed_at": draw(st.sampled_from([NOW, int(NOW), MIN_TIME, MAX_TIME,
                                             MIN_TIME - 1, math.inf, math.nan])),
        "dropped": draw(st.integers(min_value=-1, max_value=5)),
        "interval": draw(st.sampled_from([60.0, 60, 0.1, 0.09, 86_400, 86_401, math.nan])),
        "checks": checks,
    }
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(any_value)
    return doc


sessions_lists = st.lists(st.fixed_dictionaries(
    {"client_id": st.sampled_from(["1.2.3.4:5", "c" * 128, "c" * 129, ""]),
     "state": st.sampled_from(["connected", "logged_in", "gone"]),
     "connected_at": st.sampled_from([NOW, int(NOW), 5.0, math.nan])},
    optional={"user_id": st.none() | st.sampled_from(["guest", "u" * 129]) | scalars}), max_size=3)


@st.composite
def session_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1, "t": "session", "host": draw(st.sampled_from(["bbs-01", "bad host"])),
        "epoch": draw(st.integers(min_value=-1, max_value=3)),
        "seq": draw(st.integers(min_value=-1, max_value=3)),
        "observed_at": draw(st.sampled_from([NOW, int(NOW), 1.0])),
        "kind": draw(st.sampled_from(sorted(messages.SESSION_KINDS) + ["bogus"])),
        "client_id": draw(st.sampled_from(["10.0.0.1:2323", "", "c" * 129])),
        "user_id": draw(st.none() | st.sampled_from(["guest", "u" * 129])),
        "state": draw(st.none() | st.sampled_from(["connected", "logged_in", "dancing"])),
        "connected_at": draw(st.none() | st.sampled_from([NOW, int(NOW), math.inf])),
        "sessions": draw(sessions_lists | st.sampled_from([[], 0, "", {}, None, [1]])),
    }
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(any_value)
    return doc


@settings(max_examples=600, deadline=None)
@given(report_docs() | session_docs())
def test_fast_decode_agrees_with_the_careful_validators(doc: dict[str, Any]) -> None:
    agree(msgpack.packb(doc, use_bin_type=True))


VALID_REPORT: dict[str, Any] = {
    "v": 1, "t": "report", "host": "bbs-01", "agent_version": "0.1.0", "epoch": 1, "seq": 2,
    "observed_at": NOW, "dropped": 0, "interval": 60.0,
    "checks": {"database": {"healthy": True, "integrity": "ok", "size_mb": 5.23},
               "sessions": {"healthy": True, "active_sessions": 1, "sessions": [
                   {"client_id": "1.2.3.4:5", "user_id": "guest", "n": 1}]}},
}
VALID_SNAPSHOT: dict[str, Any] = {
    "v": 1, "t": "session", "host": "bbs-01", "epoch": 1, "seq": 2, "observed_at": NOW,
    "kind": "snapshot", "client_id": "", "user_id": None, "state": None, "connected_at": None,
    "sessions": [{"client_id": "1.2.3.4:5", "user_id": "guest", "state": "logged_in",
                  "connected_at": NOW}],
}


BOUNDARIES = [
    MIN_TIME, MIN_TIME - 0.5, MAX_TIME, MAX_TIME + 1, int(MAX_TIME), 0.1, 0.09, 86_400, 86_400.5,
    2**63 - 1, 2**63, -1, "v" * 64, "v" * 65, "b" * 64, "b" * 65, "b" * 64 + "\n", "bbs-01\n",
    "connected", "logged_in", "disconnected", "state", "snapshot", "report", "session", 1.0,
    [], {}, 0, "", None, True, math.nan, math.inf, "u" * 128, "u" * 129,
]


def test_each_top_level_field_at_its_bounds() -> None:
    for valid in (VALID_REPORT, VALID_SNAPSHOT, {**VALID_SNAPSHOT, "kind": "logged_in",
                                                 "client_id": "1.2.3.4:5", "sessions": []}):
        for key in sorted(set(VALID_REPORT) | set(VALID_SNAPSHOT)):
            for value in BOUNDARIES:
                doc = json.loads(json.dumps(valid))
                doc[key] = value
                data = msgpack.packb(doc, use_bin_type=True)
                agree(data)


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(["database", "sessions", "new"]), names, scalars | items | any_value,
       st.sampled_from(["client_id", "user_id", "state", "connected_at", "n", "k" * 65]),
       scalars | items)
def test_one_change_from_a_valid_message(check: str, key: str, value: Any, item_key: str,
                                         item_value: Any) -> None:
    # Valid messages changed in one place: the fast path's own bounds are hit.
    doc = json.loads(json.dumps(VALID_REPORT))
    doc["checks"].setdefault(check, {"healthy": False})[key] = value
    agree(msgpack.packb(doc, use_bin_type=True))
    doc = json.loads(json.dumps(VALID_REPORT))
    doc["checks"]["sessions"]["sessions"][0][item_key] = item_value
    agree(msgpack.packb(doc, use_bin_type=True))
    doc = json.loads(json.dumps(VALID_SNAPSHOT))
    doc["sessions"][0][item_key] = item_value
    agree(msgpack.packb(doc, use_bin_type=True))


def test_the_plain_shapes_take_the_fast_path_and_decode_equal() -> None:
    report = {"v": 1, "t": "report", "host": "bbs-01", "agent_version": "0.1.0", "epoch": 1,
              "seq": 2, "observed_at": NOW, "dropped": 0, "interval": 60.0,
              "checks": {"sessions": {"healthy": True, "active_sessions": 1, "sessions": [
                  {"client_id": "1.2.3.4:5", "user_id": "guest", "connected_at": "x"}]}}}
    data = msgpack.packb(report)
    decoded = messages._report(msgpack.unpackb(data))
    assert decoded == careful(data)
    assert decoded.checks["sessions"]["sessions"] == (
        {"client_id": "1.2.3.4:5", "user_id": "guest", "connected_at": "x"},)


# -- the msgspec stage -----------------------------------------------------


class Raw(bytes):
    """Bytes written into a message as they are (invalid UTF-8, odd headers)."""


class Pairs(list[tuple[Any, Any]]):
    """A map written entry by entry, so duplicate keys can be written."""


def first(options: list[bytes]) -> bytes:
    return options[0]


def sized(n: int, fix: int | None, fix_max: int, codes: tuple[int | None, int, int]) -> list[bytes]:
    """The headers msgpack allows for a length ``n``, the shortest first."""
    options = [bytes([fix | n])] if fix is not None and n <= fix_max else []
    if codes[0] is not None and n < 2**8:
        options.append(bytes([codes[0], n]))
    if n < 2**16:
        options.append(bytes([codes[1]]) + n.to_bytes(2, "big"))
    options.append(bytes([codes[2]]) + n.to_bytes(4, "big"))
    return options


def int_encodings(n: int) -> list[bytes]:
    options = []
    if 0 <= n <= 127 or -32 <= n < 0:
        options.append(n.to_bytes(1, "big", signed=True))
    for code, size in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
        if 0 <= n < 2 ** (8 * size):
            options.append(bytes([code]) + n.to_bytes(size, "big"))
    for code, size in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
        if -(2 ** (8 * size - 1)) <= n < 2 ** (8 * size - 1):
            options.append(bytes([code]) + n.to_bytes(size, "big", signed=True))
    return options


def pack(obj: Any, choose: Callable[[list[bytes]], bytes] = first) -> bytes:
    """msgpack of ``obj`` in the encodings ``choose`` picks (``first``: the shortest)."""
    if isinstance(obj, Raw):
        return bytes(obj)
    if obj is None:
        return b"\xc0"
    if isinstance(obj, bool):
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        return choose(int_encodings(obj))
    if isinstance(obj, float):
        options = [b"\xcb" + struct.pack(">d", obj)]
        try:
            options.append(b"\xca" + struct.pack(">f", obj))  # float32, rounded
        except OverflowError:
            pass
        return choose(options)
    if isinstance(obj, str):
        text = obj.encode("utf-8", "surrogatepass")
        return choose(sized(len(text), 0xA0, 31, (0xD9, 0xDA, 0xDB))) + text
    if isinstance(obj, bytes):
        return choose(sized(len(obj), None, 0, (0xC4, 0xC5, 0xC6))) + obj
    if isinstance(obj, msgpack.ExtType):
        return bytes(msgpack.packb(obj))
    if isinstance(obj, dict):
        obj = Pairs(obj.items())
    if isinstance(obj, Pairs):
        return choose(sized(len(obj), 0x80, 15, (None, 0xDE, 0xDF))) + b"".join(
            pack(k, choose) + pack(v, choose) for k, v in obj)
    assert isinstance(obj, list | tuple), obj
    return choose(sized(len(obj), 0x90, 15, (None, 0xDC, 0xDD))) + b"".join(
        pack(v, choose) for v in obj)


@st.composite
def with_duplicates(draw: st.DrawFn, obj: Any) -> Any:
    """``obj`` with keys of its maps written again (with other values) here and there."""
    if isinstance(obj, dict):
        pairs = Pairs((k, draw(with_duplicates(v))) for k, v in obj.items())
        for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2, 70])) if obj else 0):
            pairs.insert(draw(st.integers(0, len(pairs))),
                         (draw(st.sampled_from(list(obj))), draw(scalars)))
        return pairs
    if isinstance(obj, list | tuple):
        return [draw(with_duplicates(v)) for v in obj]
    return obj


@st.composite
def encodings(draw: st.DrawFn, doc: Any) -> bytes:
    """``doc`` in any msgpack encoding: widths, float32, duplicate keys, long maps."""
    obj = draw(with_duplicates(doc)) if draw(st.booleans()) else doc
    return pack(obj, lambda options: draw(st.sampled_from(options)))


VALID_LOGIN: dict[str, Any] = {
    "v": 1, "t": "session", "host": "bbs-01", "epoch": 1, "seq": 3, "observed_at": NOW,
    "kind": "logged_in", "client_id": "1.2.3.4:5", "user_id": "guest", "state": "logged_in",
    "connected_at": NOW, "sessions": [],
}
VALID_DOCS = [VALID_REPORT, VALID_SNAPSHOT, VALID_LOGIN]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_every_encoding_of_a_document_decodes_alike(data: st.DataObject) -> None:
    doc = data.draw(report_docs() | session_docs() | st.sampled_from(VALID_DOCS))
    agree(data.draw(encodings(doc)))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(VALID_DOCS), st.integers(min_value=0), st.integers(0, 255),
       st.sampled_from(["replace", "insert", "delete", "truncate", "append"]))
def test_mutated_bytes_of_a_valid_message_decode_alike(doc: dict[str, Any], where: int,
                                                        byte: int, how: str) -> None:
    data = bytearray(pack(doc))
    at = where % len(data)
    if how == "replace":
        data[at] = byte
    elif how == "insert":
        data.insert(at, byte)
    elif how == "delete":
        del data[at]
    elif how == "truncate":
        del data[at:]
    else:
        data.append(byte)
    agree(bytes(data))


valid_names = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)
valid_scalars = (st.none() | st.booleans() | st.integers(min_value=-MAX_SEQ, max_value=MAX_SEQ)
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
                 | st.sampled_from(["é" * 1024, "", 2**31, -(2**31), 2**32, -0.0, 1e308]))
valid_items = st.lists(st.dictionaries(st.text(max_size=64), valid_scalars, max_size=16),
                       max_size=4).map(tuple)
valid_fields = st.builds(
    lambda healthy, fields: {**fields, "healthy": healthy}, st.booleans(),
    st.dictionaries(valid_names, valid_scalars | valid_items, max_size=8))
valid_hosts = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
valid_times = st.floats(min_value=MIN_TIME, max_value=MAX_TIME)
valid_reports = st.builds(
    Report, host=valid_hosts, agent_version=st.text(max_size=64),
    epoch=st.integers(0, MAX_SEQ), seq=st.integers(0, MAX_SEQ), observed_at=valid_times,
    checks=st.dictionaries(valid_names, valid_fields, max_size=16),
    dropped=st.integers(0, MAX_SEQ), interval=st.floats(min_value=0.1, max_value=86_400))
client_text = st.text(max_size=128)
session_infos = st.builds(SessionInfo, client_id=client_text, user_id=st.none() | client_text,
                          state=st.sampled_from(sorted(messages.SESSION_STATES)),
                          connected_at=valid_times)


@st.composite
def valid_session_events(draw: st.DrawFn) -> SessionEvent:
    kind = draw(st.sampled_from(sorted(messages.SESSION_KINDS)))
    snapshot = kind == messages.SNAPSHOT
    return SessionEvent(
        host=draw(valid_hosts), epoch=draw(st.integers(0, MAX_SEQ)),
        seq=draw(st.integers(0, MAX_SEQ)), observed_at=draw(valid_times), kind=kind,
        client_id=draw(client_text if snapshot else client_text.filter(bool)),
        user_id=draw(st.none() | client_text),
        state=draw(st.none() | st.sampled_from(sorted(messages.SESSION_STATES))),
        connected_at=draw(st.none() | valid_times),
        sessions=tuple(draw(st.lists(session_infos, max_size=5))) if snapshot else ())


@settings(max_examples=300, deadline=None)
@given(valid_reports | valid_session_events())
def test_the_msgspec_stage_decodes_every_message_the_encoder_writes(message: Message) -> None:
    # Were the stage to leave these to the other paths, nothing would be faster.
    data = encode(message)
    staged = stage(data)
    assert staged is not None
    assert exact(staged) == exact(careful(data)) == exact(message)


def test_the_msgspec_stage_builds_instances_as_the_constructors_do() -> None:
    report = stage(pack(VALID_REPORT))
    snapshot = stage(pack(VALID_SNAPSHOT))
    assert isinstance(report, Report) and isinstance(snapshot, SessionEvent)
    assert type(snapshot.sessions[0]) is SessionInfo
    for built in (report, snapshot, snapshot.sessions[0]):
        made = type(built)(**vars(built))
        assert list(vars(built).items()) == list(vars(made).items())
        assert built == made and repr(built) == repr(made)
        with pytest.raises(AttributeError):
            built.seq = 5  # type: ignore[union-attr]  # frozen as ever
    assert hash(snapshot.sessions[0]) == hash(SessionInfo(**vars(snapshot.sessions[0])))


def test_decode_works_without_msgspec(monkeypatch: pytest.MonkeyPatch) -> None:
    # An import of msgspec that fails leaves decode to msgpack-python, with the same results.
    monkeypatch.setitem(sys.modules, "msgspec", None)
    spec = importlib.util.spec_from_file_location("wire_messages_without_msgspec",
                                                  messages.__file__)
    assert spec is not None and spec.loader is not None
    plain = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, plain)
    spec.loader.exec_module(plain)
    assert plain._from_wire is None
    for doc in VALID_DOCS + [{**VALID_REPORT, "host": "bad host"}, {**VALID_LOGIN, "v": True}]:
        data = pack(doc)
        try:
            result: Any = plain.decode(data)
        except DecodeError as exc:
            result = ("refused", exc.reason)
        assert repr(result) == repr(agree(data))


def changed(doc: dict[str, Any], *path: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with the value at ``path[:-1]`` set to ``path[-1]`` (DROP: gone)."""
    new = copy.deepcopy(doc)
    *keys, last, value = path
    target = new
    for key in keys:
        target = target[key]
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return new


DROP = object()
MANY_SESSIONS = changed(VALID_SNAPSHOT, "sessions", [
    {"client_id": f"{n:0128d}", "user_id": "u" * 128, "state": "logged_in", "connected_at": NOW}
    for n in range(4096)])
REPORT_PAIRS = list(VALID_REPORT.items())
SMALL_SESSION = {"client_id": "", "state": "connected", "connected_at": NOW}
BAD_UTF8 = Raw(b"\xa2\xff\xfe")
SURROGATE = Raw(b"\xa3\xed\xa0\x80")

# (what, bytes, the careful result: "ok" or the refusal, whether the stage takes it:
# True must, False must not, None may). Every refusal is a False: the stage must
# never accept what the careful path refuses.
EDGES: list[tuple[str, bytes, str, bool | None]] = [
    ("plain report", pack(VALID_REPORT), "ok", True),
    ("plain snapshot", pack(VALID_SNAPSHOT), "ok", True),
    ("plain login", pack(VALID_LOGIN), "ok", True),
    ("widest encodings", pack(VALID_REPORT, lambda options: options[-1]), "ok", False),
    ("top level in a map16 header", Raw(b"\xde\x00\x0a") + pack(VALID_REPORT)[1:], "ok",
     False),
    ("duplicates within a fixmap: the last wins", pack(Pairs(
        [("host", "bad host")] + REPORT_PAIRS)), "ok", True),
    # msgspec checks the type of each value as it reads it, overwritten or not.
    ("a duplicate of the wrong type first", pack(Pairs([("seq", 1.5)] + REPORT_PAIRS)), "ok",
     False),
    ("duplicates within a fixmap: a bad value last",
     pack(Pairs(REPORT_PAIRS + [("host", "bad host")])), "host is not a valid host id", False),
    ("top level of 65 entries, all known", pack(Pairs(REPORT_PAIRS + [("seq", 2)] * 55)),
     "not msgpack: ValueError", False),
    ("tag written twice, session last", pack(Pairs(REPORT_PAIRS + [("t", "session")])),
     "missing field 'kind'", False),
    ("a report carrying session fields, tag last", pack(Pairs(
        [("t", "session"), ("kind", "snapshot")] + REPORT_PAIRS)), "ok", False),
    ("unknown top-level field", pack({**VALID_REPORT, "extra": [1]}), "ok", False),
    ("trailing byte", pack(VALID_REPORT) + b"\x00", "not msgpack: ExtraData", False),
    ("truncated", pack(VALID_REPORT)[:-1], "not msgpack: ValueError", False),
    ("empty payload", b"", "not msgpack: ValueError", False),
    ("payload over the size limit", pack(MANY_SESSIONS),
     f"payload of {len(pack(MANY_SESSIONS))} bytes exceeds {MAX_MESSAGE_BYTES}", False),
    ("empty bin as a top-level key", pack(Pairs(REPORT_PAIRS + [(b"", 1)])), "ok", False),
    ("empty bin as a field value", pack(changed(VALID_REPORT, "checks", "database", "x", b"")),
     "database.x is not a scalar", False),
    ("bin of one byte", pack(changed(VALID_REPORT, "checks", "database", "x", b"a")),
     "not msgpack: ValueError", False),
    ("ext of length 0 as a field value", pack(changed(
        VALID_REPORT, "checks", "database", "x", msgpack.ExtType(5, b""))),
     "database.x is not a scalar", False),
    ("ext of length 0 in an unknown field", pack({**VALID_REPORT, "x": msgpack.ExtType(5, b"")}),
     "ok", False),
    ("bin of one byte in an unknown field", pack({**VALID_REPORT, "x": b"a"}),
     "not msgpack: ValueError", False),
    ("4097 items in an unknown field", pack({**VALID_REPORT, "x": [0] * 4097}),
     "not msgpack: ValueError", False),
    ("int key at the top level", pack(Pairs(REPORT_PAIRS + [(1, 1)])),
     "not msgpack: ValueError", False),
    ("int key in a check", pack(changed(VALID_REPORT, "checks", "database", 1, 1)),
     "not msgpack: ValueError", False),
    ("invalid UTF-8 in a field value", pack(changed(
        VALID_REPORT, "checks", "database", "integrity", BAD_UTF8)),
     "not msgpack: UnicodeDecodeError", False),
    ("a surrogate in agent_version", pack(changed(VALID_REPORT, "agent_version", SURROGATE)),
     "not msgpack: UnicodeDecodeError", False),
    ("invalid UTF-8 in an unknown key", pack(Pairs(REPORT_PAIRS + [(BAD_UTF8, 1)])),
     "not msgpack: UnicodeDecodeError", False),
    ("4096 list items", pack(changed(VALID_REPORT, "checks", "database", "x", [{}] * 4096)),
     "ok", True),
    ("4097 list items", pack(changed(VALID_REPORT, "checks", "database", "x", [{}] * 4097)),
     "not msgpack: ValueError", False),
    ("4096 sessions", pack(changed(VALID_SNAPSHOT, "sessions", [SMALL_SESSION] * 4096)), "ok",
     True),
    ("4097 sessions", pack(changed(VALID_SNAPSHOT, "sessions", [SMALL_SESSION] * 4097)),
     "not msgpack: ValueError", False),
    ("16 checks", pack(changed(VALID_REPORT, "checks", {f"c{n}": {"healthy": True}
                                                        for n in range(16)})), "ok", True),
    ("17 checks", pack(changed(VALID_REPORT, "checks", {f"c{n}": {"healthy": True}
                                                        for n in range(17)})),
     "too many checks", False),
    ("17 check entries, one written twice", pack(changed(VALID_REPORT, "checks", Pairs(
        [(f"c{n}", {"healthy": True}) for n in range(16)] + [("c0", {"healthy": False})]))),
     "ok", False),
    ("64 fields", pack(changed(VALID_REPORT, "checks", "x", {
        "healthy": True, **{f"f{n}": n for n in range(63)}})), "ok", True),
    ("65 field entries, one written twice", pack(changed(VALID_REPORT, "checks", "x", Pairs(
        [("healthy", True)] + [(f"f{n}", n) for n in range(63)] + [("f0", 1)]))),
     "not msgpack: ValueError", False),
    ("a session of 65 entries, all known", pack(changed(VALID_SNAPSHOT, "sessions", 0, Pairs(
        list(VALID_SNAPSHOT["sessions"][0].items()) * 16 + [("state", "connected")]))),
     "not msgpack: ValueError", False),
    ("a session written with duplicate keys", pack(changed(VALID_SNAPSHOT, "sessions", 0, Pairs(
        [("state", "gone")] + list(VALID_SNAPSHOT["sessions"][0].items())))), "ok", None),
    ("a list item of 17 entries, one written twice", pack(changed(
        VALID_REPORT, "checks", "x", {"healthy": True, "items": [Pairs(
            [(f"k{n}", n) for n in range(16)] + [("k0", 1)])]})), "ok", False),
    ("a list item of 17 keys", pack(changed(VALID_REPORT, "checks", "x", {
        "healthy": True, "items": [{f"k{n}": n for n in range(17)}]})),
     "x.items[0] is not a small map", False),
    ("v is True", pack(changed(VALID_REPORT, "v", True)), "unsupported schema version True",
     False),
    ("v is 1.0", pack(changed(VALID_REPORT, "v", 1.0)), "ok", False),
    ("v is 2", pack(changed(VALID_REPORT, "v", 2)), "unsupported schema version 2", False),
    ("v is missing", pack(changed(VALID_REPORT, "v", DROP)), "unsupported schema version None",
     False),
    ("v as a uint64", pack(changed(VALID_REPORT, "v", Raw(b"\xcf" + (1).to_bytes(8, "big")))),
     "ok", True),
    ("epoch is 1.0", pack(changed(VALID_REPORT, "epoch", 1.0)), "epoch is not an integer", False),
    ("epoch is True", pack(changed(VALID_REPORT, "epoch", True)), "epoch is not an integer",
     False),
    ("seq at 2**63 - 1", pack(changed(VALID_REPORT, "seq", 2**63 - 1)), "ok", True),
    ("seq at 2**63", pack(changed(VALID_REPORT, "seq", 2**63)), "seq out of range", False),
    ("seq as an int64", pack(changed(VALID_REPORT, "seq", Raw(b"\xd3" + (7).to_bytes(8, "big")))),
     "ok", True),
    ("observed_at an int", pack(changed(VALID_REPORT, "observed_at", 1_795_000_000)), "ok", True),
    ("observed_at a float32", pack(changed(VALID_REPORT, "observed_at", Raw(
        b"\xca" + struct.pack(">f", NOW)))), "ok", True),
    ("observed_at True", pack(changed(VALID_REPORT, "observed_at", True)),
     "observed_at is not a number", False),
    ("observed_at nan", pack(changed(VALID_REPORT, "observed_at", math.nan)),
     "observed_at is not a plausible unix time", False),
    ("observed_at a float32 inf", pack(changed(VALID_REPORT, "observed_at", Raw(
        b"\xca" + struct.pack(">f", math.inf)))), "observed_at is not a plausible unix time",
     False),
    ("observed_at at MAX_TIME", pack(changed(VALID_REPORT, "observed_at", MAX_TIME)), "ok", True),
    ("interval an int", pack(changed(VALID_REPORT, "interval", 60)), "ok", True),
    ("interval True", pack(changed(VALID_REPORT, "interval", True)), "interval is not a number",
     False),
    ("interval nil", pack(changed(VALID_REPORT, "interval", None)), "interval is not a number",
     False),
    ("interval -inf", pack(changed(VALID_REPORT, "interval", -math.inf)), "interval out of range",
     False),
    ("interval and dropped missing", pack(changed(changed(VALID_REPORT, "interval", DROP),
                                                  "dropped", DROP)), "ok", True),
    ("dropped True", pack(changed(VALID_REPORT, "dropped", True)), "dropped is not an integer",
     False),
    ("a field at -(2**63)", pack(changed(VALID_REPORT, "checks", "database", "n", -(2**63))),
     "database.n out of range", False),
    ("a field at -(2**63) + 1", pack(changed(VALID_REPORT, "checks", "database", "n",
                                             -(2**63) + 1)), "ok", True),
    ("a field at 2**64 - 1", pack(changed(VALID_REPORT, "checks", "database", "n", 2**64 - 1)),
     "database.n out of range", False),
    ("a field nan", pack(changed(VALID_REPORT, "checks", "database", "n", math.nan)),
     "database.n is not finite", False),
    ("a field a float32 inf", pack(changed(VALID_REPORT, "checks", "database", "n", Raw(
        b"\xca" + struct.pack(">f", -math.inf)))), "database.n is not finite", False),
    ("a field a float32", pack(changed(VALID_REPORT, "checks", "database", "n", Raw(
        b"\xca" + struct.pack(">f", 0.1)))), "ok", True),
    ("a field -0.0", pack(changed(VALID_REPORT, "checks", "database", "n", -0.0)), "ok", True),
    ("a field of 1024 two-byte characters", pack(changed(
        VALID_REPORT, "checks", "database", "n", "é" * 1024)), "ok", True),
    ("a field of 1025 characters", pack(changed(
        VALID_REPORT, "checks", "database", "n", "é" * 1025)),
     "database.n longer than 1024 characters", False),
    ("a field a map", pack(changed(VALID_REPORT, "checks", "database", "n", {})),
     "database.n is not a scalar", False),
    ("a list of lists", pack(changed(VALID_REPORT, "checks", "database", "n", [[]])),
     "database.n[0] is not a small map", False),
    ("an item key of 64 characters", pack(changed(
        VALID_REPORT, "checks", "sessions", "sessions", 0, "ü" * 64, 1)), "ok", True),
    ("an item key of 65 characters", pack(changed(
        VALID_REPORT, "checks", "sessions", "sessions", 0, "k" * 65, 1)),
     "sessions.sessions[0] key longer than 64 characters", False),
    ("an item value nan", pack(changed(
        VALID_REPORT, "checks", "sessions", "sessions", 0, "n", math.nan)),
     "sessions.sessions[0].n is not finite", False),
    ("an item value a list", pack(changed(
        VALID_REPORT, "checks", "sessions", "sessions", 0, "n", [])),
     "sessions.sessions[0].n is not a scalar", False),
    ("healthy missing", pack(changed(VALID_REPORT, "checks", "database", "healthy", DROP)),
     "check database lacks a boolean 'healthy'", False),
    ("healthy 1", pack(changed(VALID_REPORT, "checks", "database", "healthy", 1)),
     "check database lacks a boolean 'healthy'", False),
    ("healthy nil", pack(changed(VALID_REPORT, "checks", "database", "healthy", None)),
     "check database lacks a boolean 'healthy'", False),
    ("healthy False", pack(changed(VALID_REPORT, "checks", "database", "healthy", False)), "ok",
     True),
    ("check name with a capital", pack(changed(VALID_REPORT, "checks", "Disk", {"healthy": True})),
     "check name is not valid", False),
    ("check name ending in a newline (the pattern's $ allows it)", pack(changed(
        VALID_REPORT, "checks", "disk\n", {"healthy": True})), "ok", True),
    ("check name of 33 characters", pack(changed(
        VALID_REPORT, "checks", "a" * 33, {"healthy": True})), "check name is not valid", False),
    ("field name with a dash", pack(changed(VALID_REPORT, "checks", "database", "x-y", 1)),
     "check database has an invalid field name", False),
    ("host ending in a newline (the pattern's $ allows it)", pack(changed(
        VALID_REPORT, "host", "bbs-01\n")), "ok", True),
    ("host of 64 characters", pack(changed(VALID_REPORT, "host", "b" * 64)), "ok", True),
    ("host of 65 characters", pack(changed(VALID_REPORT, "host", "b" * 65)),
     "host longer than 64 characters", False),
    ("host not ASCII", pack(changed(VALID_REPORT, "host", "bé")), "host is not a valid host id",
     False),
    ("agent_version of 64 two-byte characters", pack(changed(VALID_REPORT, "agent_version",
                                                             "é" * 64)), "ok", True),
    ("kind unknown", pack(changed(VALID_LOGIN, "kind", "bogus")),
     "kind is not a session event kind", False),
    ("a login carrying sessions", pack(changed(VALID_LOGIN, "sessions",
                                               VALID_SNAPSHOT["sessions"])),
     "only a snapshot carries sessions", False),
    ("a login with sessions nil", pack(changed(VALID_LOGIN, "sessions", None)), "ok", True),
    ("a snapshot with sessions nil", pack(changed(VALID_SNAPSHOT, "sessions", None)), "ok", True),
    ("a snapshot with sessions 0", pack(changed(VALID_SNAPSHOT, "sessions", 0)), "ok", False),
    ("a snapshot with sessions {}", pack(changed(VALID_SNAPSHOT, "sessions", {})), "ok", False),
    ("a snapshot with sessions 1", pack(changed(VALID_SNAPSHOT, "sessions", 1)),
     "sessions is not a list", False),
    ("a snapshot with a client_id", pack(changed(VALID_SNAPSHOT, "client_id", "x")), "ok", True),
    ("a login without client_id", pack(changed(VALID_LOGIN, "client_id", DROP)),
     "a logged_in event needs a client_id", False),
    ("a login with client_id nil", pack(changed(VALID_LOGIN, "client_id", None)),
     "client_id is not a string", False),
    ("user_id of 128 two-byte characters", pack(changed(VALID_LOGIN, "user_id", "ü" * 128)), "ok",
     True),
    ("user_id of 129 characters", pack(changed(VALID_LOGIN, "user_id", "u" * 129)),
     "user_id longer than 128 characters", False),
    ("state unknown", pack(changed(VALID_LOGIN, "state", "dancing")),
     "state is not a session state", False),
    ("state, user_id, connected_at missing", pack(changed(changed(changed(
        VALID_LOGIN, "state", DROP), "user_id", DROP), "connected_at", DROP)), "ok", True),
    ("connected_at True", pack(changed(VALID_LOGIN, "connected_at", True)),
     "connected_at is not a number", False),
    ("a session without user_id", pack(changed(VALID_SNAPSHOT, "sessions", 0, "user_id", DROP)),
     "ok", True),
    ("a session's user_id a number", pack(changed(VALID_SNAPSHOT, "sessions", 0, "user_id", 5)),
     "user_id is not a string", False),
    ("a session's user_id a plausible time", pack(changed(
        VALID_SNAPSHOT, "sessions", 0, "user_id", NOW)), "user_id is not a string", False),
    ("a session's client_id a plausible time", pack(changed(
        VALID_SNAPSHOT, "sessions", 0, "client_id", NOW)), "client_id is not a string", False),
    ("a session's client_id empty", pack(changed(VALID_SNAPSHOT, "sessions", 0, "client_id", "")),
     "ok", True),
    ("a session without client_id", pack(changed(VALID_SNAPSHOT, "sessions", 0, "client_id",
                                                 DROP)), "missing field 'client_id'", False),
    ("a session's state unknown", pack(changed(VALID_SNAPSHOT, "sessions", 0, "state", "gone")),
     "state is not a session state", False),
    ("a session's state a time", pack(changed(VALID_SNAPSHOT, "sessions", 0, "state", NOW)),
     "state is not a session state", False),
    ("a session's connected_at an int", pack(changed(
        VALID_SNAPSHOT, "sessions", 0, "connected_at", 1_795_000_000)), "ok", True),
    ("a session's connected_at text", pack(changed(
        VALID_SNAPSHOT, "sessions", 0, "connected_at", "x")),
     "connected_at is not a number", False),
    ("a session's connected_at nil", pack(changed(
        VALID_SNAPSHOT, "sessions", 0, "connected_at", None)),
     "connected_at is not a number", False),
    ("a session with an unknown key", pack(changed(VALID_SNAPSHOT, "sessions", 0, "x", 1)), "ok",
     False),
    ("a session not a map", pack(changed(VALID_SNAPSHOT, "sessions", 0, "x")),
     "sessions[0] is not a map", False),
]


@pytest.mark.parametrize(("data", "outcome", "taken"), [pytest.param(*edge[1:], id=edge[0])
                                                       for edge in EDGES])
def test_edge_cases_decode_alike(data: bytes, outcome: str, taken: bool | None) -> None:
    result = agree(data)
    if outcome == "ok":
        assert isinstance(result, Report | SessionEvent), result
    else:
        assert result == ("refused", outcome)
    if taken is not None:
        assert (stage(data) is not None) is taken


# -- the state text --------------------------------------------------------


def reference_iso_from_ms(ms: int | float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reference_iso_from_seconds(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def reference_format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        text = repr(round(value, 3))
        return "0.0" if text == "-0.0" else text  # both zeros store as 0.0
    if isinstance(value, tuple | list):
        return json.dumps([dict(v) for v in value], ensure_ascii=False)
    return str(value)


@settings(max_examples=3000, deadline=None)
@given(st.floats() | st.floats(min_value=-2e9, max_value=2e9)
       | st.integers(min_value=-(10**12), max_value=10**12).map(lambda n: n / 1000)
       | st.integers(min_value=-(10**12), max_value=10**12).map(lambda n: n / 1000 + 0.0005))
@example(999_999_999.9995)
@example(-999_999_999.9995)
@example(1e9)
@example(0.0005)
@example(0.0015)
@example(-0.0004)
@example(2.675)
@example(1e-320)
def test_float_text_is_the_rounded_repr(value: float) -> None:
    assert float_text(value) == reference_format(value)
    assert format_float(value) == reference_format(value)


def reference_report_fields(report: Report, entry_ms: int, stale: str) -> dict[str, str]:
    status = Status.worst(check_severity(n, f) for n, f in report.checks.items())
    stale_level = {STALE_WARNING: Status.WARNING, STALE_CRITICAL: Status.CRITICAL}
    status = Status.worst([status, stale_level.get(stale, Status.OK)])
    fields = {
        "status": status.name,
        "last_seen": reference_iso_from_ms(entry_ms),
        "last_seen_ms": str(entry_ms),
        "observed_at": reference_iso_from_seconds(report.observed_at),
        "epoch": str(report.epoch),
        "seq": str(report.seq),
        "agent_version": report.agent_version,
        "clock_skew_s": reference_format(round(report.observed_at - entry_ms / 1000, 3)),
        "stale": stale,
        "interval_s": reference_format(report.interval),
        "checks": ",".join(sorted(report.checks)),
        "unhealthy": ",".join(sorted(n for n, f in report.checks.items()
                                     if not f.get("healthy"))),
    }
    for name, checks in report.checks.items():
        for key, value in checks.items():
            if not isinstance(value, tuple | list):
                fields[f"{name}.{key}"] = reference_format(value)
    return fields


times = (st.floats(min_value=0.0, max_value=253_402_300_799.0)
         | st.floats(min_value=MIN_TIME, max_value=MAX_TIME)
         | st.integers(min_value=0, max_value=253_402_300_799).map(float)
         | st.integers(min_value=0, max_value=10**7).map(lambda n: n + 0.9999995)
         | st.integers(min_value=0, max_value=10**7).map(lambda n: n + 0.0005))


@settings(max_examples=1000, deadline=None)
@given(times)
@example(1_795_000_000.9999995)
@example(1_795_000_000.0004999)
@example(1_795_000_000.629)
@example(253_402_300_798.9999999)
@example(-1.5)
def test_iso_from_seconds_is_strftime(seconds: float) -> None:
    assert iso_from_seconds(seconds) == reference_iso_from_seconds(seconds)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=-(10**12), max_value=253_402_300_799_999)
       | st.floats(min_value=0.0, max_value=1e13))
@example(1_795_000_000_999)
@example(0)
def test_iso_from_ms_is_strftime(ms: int | float) -> None:
    assert iso_from_ms(ms) == reference_iso_from_ms(ms)


texts = st.text(max_size=12) | st.sampled_from(['"', "\\", "\u2028", "\x1b[2J", "ゲスト"])


@settings(max_examples=400, deadline=None)
@given(texts, st.none() | texts, st.sampled_from(["connected", "logged_in"]) | texts, times)
def test_session_text_is_json_dumps(client_id: str, user_id: str | None, state: str,
                                    connected_at: float) -> None:
    info = SessionInfo(client_id, user_id, state, connected_at)
    expected = json.dumps({"client_id": client_id, "user_id": user_id, "state": state,
                           "connected_at": reference_iso_from_seconds(connected_at)},
                          ensure_ascii=False, sort_keys=True)
    assert session_text(info) == expected
    assert json.loads(session_text(info))["user_id"] == user_id


report_values = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63)
                 | st.floats() | st.text(max_size=6)
                 | st.lists(st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                            max_size=2).map(tuple))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["database", "disk_space", "memory", "sessions", "x"]),
                       st.dictionaries(st.sampled_from(["healthy", "percent_used", "path",
                                                        "sessions", "error", "n"]),
                                       report_values, max_size=5), max_size=5),
       st.floats(min_value=MIN_TIME, max_value=MAX_TIME),
       st.sampled_from([0.1, 60.0, 86_400.0, 7.12345]),
       st.integers(min_value=946_684_800_000, max_value=7_258_118_400_000),
       st.sampled_from([STALE_NO, STALE_WARNING, STALE_CRITICAL, "bogus"]))
def test_report_fields_as_before(checks: dict[str, dict[str, Any]], observed_at: float,
                                 interval: float, entry_ms: int, stale: str) -> None:
    report = Report("bbs-01", "0.1.0", 3, 9, observed_at, checks, 0, interval)
    assert report_fields(report, entry_ms, stale) == reference_report_fields(report, entry_ms,
                                                                             stale)
    flat = flatten_checks(checks)
    assert flat == {k: v for k, v in reference_report_fields(report, entry_ms, stale).items()
                    if "." in k}


def test_float_texts_come_the_same_from_the_cache() -> None:
    from wire import state

    values = [45.3, -0.0, 0.0, 2.675, 1e20, -0.0004, 60.0, float("inf"), float("nan")]
    first = [float_text(value) for value in values]
    assert first == [reference_format(value) for value in values]
    assert [float_text(value) for value in values] == first  # now from the cache
    # Kept: the finite ones, by value (-0.0 == 0.0); never inf or nan.
    assert all(state.FLOAT_TEXTS.get(value) == text
               for value, text in zip(values[:-2], first[:-2], strict=True))
    assert not any(math.isinf(value) or math.isnan(value) for value in state.FLOAT_TEXTS)
    for index in range(state._FLOAT_CACHE_LIMIT + 10):  # the cache stays bounded
        float_text(index + 0.5)
    assert len(state.FLOAT_TEXTS) <= state._FLOAT_CACHE_LIMIT


def test_clock_skews_stay_out_of_the_float_cache() -> None:
    # A skew seldom repeats: cached, it would push the repeating figures out.
    from wire import state

    report = Report(host="h", agent_version="1", epoch=1, seq=1, observed_at=NOW, checks={})
    state.FLOAT_TEXTS.clear()
    texts = [state.report_moment_texts(report, int(NOW * 1000) + lag)[4] for lag in range(50)]
    assert texts[:2] == ["0.0", "-0.001"]
    assert not state.FLOAT_TEXTS
