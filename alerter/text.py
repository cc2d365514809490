"""Text handling at the alerter's edges: durations, and user text made safe.

Host ids are restricted by the contract, but figures (an error message, a
database path), silence reasons and configured hints are free text that may
come from a user. Each output gets its own treatment here: a mail header
never carries a line break or a control character, a body keeps its line
breaks but loses terminal escapes, and Slack text has its three markup
characters escaped so ``<!channel>`` arrives as plain text.
"""

from __future__ import annotations

import re
import unicodedata

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

# Characters that end a line somewhere (mail, terminals, Slack) besides CR/LF.
_LINE_BREAKS = "\u2028\u2029\u0085\x0b\x0c"


def parse_duration(value: object) -> float:
    """Seconds of ``value``: a number of seconds or text like ``90s``, ``5m``, ``1h30m``.

    Raises ValueError with a short phrase when it is neither.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0 or value != value:  # negative or NaN
            raise ValueError(f"{value!r} is not a duration (must be 0 or more)")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("an empty text is not a duration")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if number < 0 or number != number:
            raise ValueError(f"{value!r} is not a duration (must be 0 or more)")
        return number
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        position = match.end()
    if position != len(text):
        raise ValueError(f"{value!r} is not a duration (use e.g. 90s, 5m, 2h, 1h30m, 1d)")
    return total


def format_duration(seconds: float) -> str:
    """A short human text of ``seconds``: ``45s``, ``5m``, ``2h30m``, ``3d``."""
    if seconds < 1:
        return f"{int(round(seconds * 1000))}ms" if seconds > 0 else "0s"
    whole = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            amount, whole = divmod(whole, size)
            parts.append(f"{amount}{unit}")
    return "".join(parts[:2])


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf") or char in _LINE_BREAKS


def header_text(value: object, limit: int = 200) -> str:
    """One line fit for a mail header: no CR/LF, no control characters, bounded."""
    text = "".join(" " if _is_control(c) else c for c in str(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def body_text(value: object, limit: int = 4000) -> str:
    """Text for a message body: line breaks kept (as ``\\n``), other controls removed."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    for brk in _LINE_BREAKS:
        text = text.replace(brk, "\n")
    text = "".join(c for c in text if c in "\n\t" or not _is_control(c))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def line_text(value: object, limit: int = 300) -> str:
    """A figure or name inside a body line: like :func:`header_text`."""
    return header_text(value, limit)


def slack_escape(value: object, limit: int = 3000) -> str:
    """Body text with Slack's control characters escaped (``&``, ``<``, ``>``).

    Slack reads ``<...>`` as links and mentions (``<!channel>``, ``<@U123>``);
    escaped, they arrive as the literal text a user typed.
    """
    text = body_text(value, limit)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
