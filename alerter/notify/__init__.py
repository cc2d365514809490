"""Notification delivery: what a notification is, how delivery fails, the channels.

A :class:`Notification` is plain data (it travels as JSON through the digest
buffer and as an rq job argument). Each channel (``mail``, ``slack``,
``webhook``) has a notifier with one method, ``send(notifications)``, that
delivers one message (a digest when there are several) or raises
:class:`DeliveryError` saying whether the failure is permanent (a bad
address, an HTTP 404: retrying cannot help) or temporary (a refused
connection, an HTTP 5xx or 429: retry later, after ``retry_after`` if the
server said so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from wire.keys import CHECK_NAME_PATTERN, valid_host_id

KINDS = ("firing", "repeat", "resolved", "flapping", "flapping_stopped", "test")

_LABELS = {"resolved": "RESOLVED", "flapping": "FLAPPING",
           "flapping_stopped": "FLAPPING STOPPED", "test": "TEST"}


class DeliveryError(Exception):
    """A delivery failed. ``permanent`` failures are not retried."""

    def __init__(self, message: str, *, permanent: bool, retry_after: float | None = None
                 ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True)
class Notification:
    """One notice about one (host, check), as the channels render it."""

    id: str
    kind: str
    host: str
    check: str
    severity: str  # warning or critical (of the alert, also for resolved notices)
    summary: str
    since_ms: int
    at_ms: int
    figures: dict[str, str] = field(default_factory=dict)
    hint: str = ""
    state: str = ""
    flap_percent: float = 0.0
    repeats: int = 0
    host_status: str = ""

    @property
    def label(self) -> str:
        """What the subject starts with: CRITICAL, WARNING, RESOLVED, FLAPPING, ..."""
        return _LABELS.get(self.kind, self.severity.upper())

    @property
    def title(self) -> str:
        """``CRITICAL bbs-01 database`` (and which repeat)."""
        text = f"{self.label} {self.host} {self.check}"
        if self.kind == "repeat":
            text += f" (still firing, reminder {self.repeats})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Notification:
        """Rebuild from :meth:`to_dict`; ValueError for anything else."""
        if not isinstance(data, dict):
            raise ValueError("a notification is a JSON object")
        try:
            note = cls(
                id=str(data["id"]), kind=str(data["kind"]), host=str(data["host"]),
                check=str(data["check"]), severity=str(data["severity"]),
                summary=str(data.get("summary", "")), since_ms=int(data.get("since_ms", 0)),
                at_ms=int(data.get("at_ms", 0)),
                figures={str(k): str(v) for k, v in dict(data.get("figures") or {}).items()},
                hint=str(data.get("hint", "")), state=str(data.get("state", "")),
                flap_percent=float(data.get("flap_percent", 0.0)),
                repeats=int(data.get("repeats", 0)), host_status=str(data.get("host_status", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a notification ({exc})") from None
        if note.kind not in KINDS:
            raise ValueError(f"unknown notification kind {note.kind!r}")
        # The same limits as the contract: these names go into headers and keys.
        if not valid_host_id(note.host) or not CHECK_NAME_PATTERN.match(note.check):
            raise ValueError("a notification names a valid host and check")
        if note.severity not in ("warning", "critical"):
            raise ValueError("severity is warning or critical")
        return note


class Notifier(Protocol):
    """A channel's delivery."""

    channel: str

    def send(self, notifications: list[Notification]) -> str:
        """Deliver one message; return a short detail for the log, raise DeliveryError."""

    def describe(self) -> str:
        """Where it delivers, without secrets (for logs and test-notify)."""
