"""Silences: time windows in which a host's (or one check's) notices are held back.

A silence names a host pattern (a host id or a glob such as ``bbs-*``), an
optional check, an end (``--duration``) and a reason. While it is active the
state machine still moves and the notice is logged as suppressed, but no
message is sent; when it ends, whatever the channels have not been told is
announced. A silence may also recur daily (``03:00-04:00`` in the
configured time zone, for a nightly backup), with or without an end.

Silences live in one hash, ``KeySpace.silences()``: id to a JSON text.
Expired ones are removed whenever silences are listed or read for an
evaluation, so they disappear by themselves.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from wire.keys import CHECK_NAME_PATTERN, KeySpace

MAX_REASON = 500
MAX_DURATION_S = 366 * 86400
_HOST_PATTERN = re.compile(r"^[A-Za-z0-9._*?\[\]!-]{1,64}$")
_DAILY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class SilenceError(ValueError):
    """A silence cannot be created as asked; the message says why."""


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SilenceError(f"{name!r} is not a known time zone") from None


@dataclass(frozen=True)
class Silence:
    """One silence."""

    id: str
    host: str
    check: str | None
    starts_ms: int
    ends_ms: int | None
    reason: str
    author: str
    created_ms: int
    daily: str | None = None
    timezone: str = "UTC"

    def matches(self, host: str, check: str) -> bool:
        """True when this silence covers (``host``, ``check``)."""
        return fnmatchcase(host, self.host) and (self.check is None or self.check == check)

    def expired(self, now_ms: int) -> bool:
        """True once the end has passed."""
        return self.ends_ms is not None and now_ms >= self.ends_ms

    def active(self, now_ms: int) -> bool:
        """True while it holds notices back."""
        if now_ms < self.starts_ms or self.expired(now_ms):
            return False
        if self.daily is None:
            return True
        return in_daily_window(self.daily, now_ms, self.timezone)

    def to_json(self) -> str:
        """The stored JSON text."""
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: Any) -> Silence | None:
        """Decode a stored silence; None for anything that is not one."""
        try:
            doc = json.loads(text)
            return cls(id=str(doc["id"]), host=str(doc["host"]),
                       check=None if doc.get("check") is None else str(doc["check"]),
                       starts_ms=int(doc["starts_ms"]),
                       ends_ms=None if doc.get("ends_ms") is None else int(doc["ends_ms"]),
                       reason=str(doc.get("reason", "")), author=str(doc.get("author", "")),
                       created_ms=int(doc.get("created_ms", 0)),
                       daily=None if doc.get("daily") is None else str(doc["daily"]),
                       timezone=str(doc.get("timezone", "UTC")))
        except (ValueError, KeyError, TypeError):
            return None


def in_daily_window(window: str, now_ms: int, timezone: str) -> bool:
    """True when the local time of ``now_ms`` is inside ``HH:MM-HH:MM`` (may wrap midnight)."""
    match = _DAILY.match(window)
    if not match:
        return False
    start = int(match.group(1)) * 60 + int(match.group(2))
    end = int(match.group(3)) * 60 + int(match.group(4))
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(zone)
    minute = local.hour * 60 + local.minute
    if start == end:
        return True
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def make_silence(*, host: str, check: str | None, now_ms: int, duration_s: float | None,
                 reason: str, author: str = "", daily: str | None = None,
                 timezone: str = "UTC", starts_in_s: float = 0.0) -> Silence:
    """A validated new silence (SilenceError says what is wrong)."""
    if not _HOST_PATTERN.match(host):
        raise SilenceError(f"{host!r} is not a host id or glob pattern")
    if check is not None and not CHECK_NAME_PATTERN.match(check):
        raise SilenceError(f"{check!r} is not a check name")
    reason = " ".join(str(reason).split())
    if not reason:
        raise SilenceError("a reason is required (--reason)")
    if len(reason) > MAX_REASON:
        raise SilenceError(f"the reason is longer than {MAX_REASON} characters")
    if daily is not None:
        if not _DAILY.match(daily):
            raise SilenceError(f"{daily!r} is not a daily window HH:MM-HH:MM")
        check_timezone(timezone)
    if duration_s is None and daily is None:
        raise SilenceError("a silence needs a --duration (or a --daily window)")
    if duration_s is not None and not 0 < duration_s <= MAX_DURATION_S:
        raise SilenceError("the duration must be above 0 and at most 366 days")
    starts = now_ms + int(starts_in_s * 1000)
    ends = None if duration_s is None else starts + int(duration_s * 1000)
    return Silence(id=secrets.token_hex(4), host=host, check=check, starts_ms=starts,
                   ends_ms=ends, reason=reason, author=" ".join(str(author).split())[:64],
                   created_ms=now_ms, daily=daily, timezone=timezone)


def parse_all(raw: Mapping[Any, Any]) -> list[Silence]:
    """Every decodable silence of a HGETALL result."""
    silences = [Silence.from_json(v) for v in raw.values()]
    return sorted((s for s in silences if s is not None), key=lambda s: (s.starts_ms, s.id))


def matching(silences: Iterable[Silence], host: str, check: str, now_ms: int) -> Silence | None:
    """The first active silence covering (``host``, ``check``)."""
    for silence in silences:
        if silence.active(now_ms) and silence.matches(host, check):
            return silence
    return None


def add(client: Any, keys: KeySpace, silence: Silence) -> None:
    """Store ``silence``."""
    client.hset(keys.silences(), silence.id, silence.to_json())


def load(client: Any, keys: KeySpace, now_ms: int) -> list[Silence]:
    """Every silence not yet expired; expired and unreadable ones are removed."""
    raw = client.hgetall(keys.silences())
    keep = []
    drop = []
    for field_name, value in raw.items():
        silence = Silence.from_json(value)
        if silence is None or silence.expired(now_ms):
            drop.append(field_name)
        else:
            keep.append(silence)
    if drop:
        client.hdel(keys.silences(), *drop)
    return sorted(keep, key=lambda s: (s.starts_ms, s.id))


def remove(client: Any, keys: KeySpace, silence_id: str) -> bool:
    """Delete a silence; False when there is none with that id."""
    return bool(client.hdel(keys.silences(), silence_id))
