"""Nagios plugin conventions: threshold ranges and performance data.

Ranges follow the Monitoring Plugins development guidelines:

=========  ==========================================
``10``     alert when < 0 or > 10
``10:``    alert when < 10
``~:10``   alert when > 10
``10:20``  alert when < 10 or > 20
``@10:20`` alert when >= 10 and <= 20 (inside)
=========  ==========================================

Performance data is ``'label'=value[UOM];[warn];[crit];[min];[max]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wire.status import Status


class RangeError(ValueError):
    """A threshold that is not a Nagios range."""


def _bound(text: str, what: str, original: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RangeError(f"{original!r} is not a Nagios range ({what} {text!r} is not a "
                         "number)") from None
    if not math.isfinite(value):
        raise RangeError(f"{original!r} is not a Nagios range ({what} is not finite)")
    return value


@dataclass(frozen=True)
class NagiosRange:
    """A parsed range; :meth:`alert` says whether a value lies outside it."""

    text: str
    start: float
    end: float
    inside: bool = False

    @classmethod
    def parse(cls, text: str) -> NagiosRange:
        """Parse ``10``, ``10:``, ``~:10``, ``10:20`` or ``@10:20``."""
        original = text
        body = text.strip()
        inside = body.startswith("@")
        if inside:
            body = body[1:]
        if not body:
            raise RangeError(f"{original!r} is not a Nagios range (empty)")
        if ":" in body:
            low, _, high = body.partition(":")
            if low == "~":
                start = -math.inf
            elif low == "":
                start = 0.0
            else:
                start = _bound(low, "start", original)
            end = math.inf if high == "" else _bound(high, "end", original)
        else:
            start, end = 0.0, _bound(body, "end", original)
        if start > end:
            raise RangeError(f"{original!r} is not a Nagios range (start is above end)")
        return cls(original.strip(), start, end, inside)

    def alert(self, value: float) -> bool:
        """True when ``value`` should raise the alert this range guards."""
        within = self.start <= value <= self.end
        return within if self.inside else not within


def range_status(value: float | None, warning: NagiosRange | None,
                 critical: NagiosRange | None) -> Status:
    """The state of ``value`` under the two ranges (UNKNOWN without a value)."""
    if value is None:
        return Status.UNKNOWN
    if critical is not None and critical.alert(value):
        return Status.CRITICAL
    if warning is not None and warning.alert(value):
        return Status.WARNING
    return Status.OK


def format_number(value: float) -> str:
    """A figure for output: integers without a point, others to three places."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def perfdata(label: str, value: float, uom: str = "", warn: str = "", crit: str = "",
             minimum: float | None = None, maximum: float | None = None) -> str:
    """One performance datum; trailing empty fields are left out."""
    quoted = label.replace("'", "''")
    parts = [f"'{quoted}'={format_number(value)}{uom}", warn, crit,
             "" if minimum is None else format_number(minimum),
             "" if maximum is None else format_number(maximum)]
    while len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return ";".join(parts)
