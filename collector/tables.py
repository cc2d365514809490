"""Plain-text tables for people: columns aligned by display width.

A terminal gives an East Asian wide or fullwidth character (``W``/``F`` in
``unicodedata.east_asian_width``: kanji, kana, fullwidth forms) two cells,
and a combining mark none, so padding by ``len`` misaligns every column
after a Japanese user name. The CLIs' host, session and history tables are
built here.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

WIDE = frozenset({"W", "F"})
GAP = "  "


def display_width(text: str) -> int:
    """Cells ``text`` takes on a terminal."""
    if text.isascii():
        return len(text)
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in WIDE else 1
    return width


def pad(text: str, width: int) -> str:
    """``text`` followed by spaces up to ``width`` cells."""
    return text + " " * max(0, width - display_width(text))


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Headers and rows in columns two spaces apart, without trailing spaces."""
    widths = [display_width(h) for h in headers]
    measured = [[display_width(cell) for cell in row] for row in rows]
    for cells in measured:
        widths = [max(w, c) for w, c in zip(widths, cells, strict=True)]
    lines = [GAP.join(pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row, cells in zip(rows, measured, strict=True):
        lines.append(GAP.join(text + " " * (w - c) for text, c, w
                              in zip(row, cells, widths, strict=True)).rstrip())
    return "\n".join(lines)
