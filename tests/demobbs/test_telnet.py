"""The demo BBS's minimal telnet decoding."""

from __future__ import annotations

import pytest

from demobbs.telnet import IAC, TelnetDecoder, clean_text


def feed_all(*chunks: bytes, max_line: int = 1024) -> list[str]:
    decoder = TelnetDecoder(max_line)
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(decoder.feed(chunk))
    return lines


@pytest.mark.parametrize("ending", [b"\r\n", b"\r\x00", b"\n", b"\r"])
def test_line_endings(ending: bytes) -> None:
    assert feed_all(b"guest" + ending + b"B" + ending) == ["guest", "B"]


def test_cr_lf_split_across_chunks_is_one_line_end() -> None:
    assert feed_all(b"guest\r", b"\nB\r", b"\n") == ["guest", "B"]


def test_empty_lines_are_kept() -> None:
    assert feed_all(b"\r\n\r\nx\r\n") == ["", "", "x"]


def test_negotiation_is_ignored() -> None:
    data = (bytes([IAC, 253, 1, IAC, 251, 24]) + b"gu" + bytes([IAC, 250, 24, 0])
            + b"xterm" + bytes([IAC, 240]) + b"est" + bytes([IAC, 241]) + b"\r\n")
    assert feed_all(data) == ["guest"]


def test_negotiation_split_anywhere() -> None:
    data = bytes([IAC, 253, 1]) + b"ta" + bytes([IAC, 250, 31, 0, 80, IAC, 240]) + b"ro\r\n"
    for cut in range(len(data) + 1):
        assert feed_all(data[:cut], data[cut:]) == ["taro"], cut


def test_doubled_iac_is_a_data_byte() -> None:
    # A lone 0xFF is not UTF-8: it becomes the replacement character.
    assert feed_all(b"a" + bytes([IAC, IAC]) + b"b\r\n") == ["a\ufffdb"]


def test_utf8_split_across_chunks() -> None:
    text = "掲示板".encode()
    assert feed_all(text[:4], text[4:] + b"\r\n") == ["掲示板"]


def test_backspace_removes_whole_characters() -> None:
    assert feed_all("あいx\x08\x7fう\r\n".encode()) == ["あう"]
    assert feed_all(b"\x08\x08ab\x08c\r\n") == ["ac"]


def test_control_characters_and_escapes_are_removed() -> None:
    assert feed_all(b"\x1b[2Jhi\x07\tthere\r\n") == ["[2Jhi\tthere"]
    assert clean_text("a\nb\x1bc", keep_newlines=True) == "a\nbc"
    assert clean_text("a\nb") == "ab"


def test_long_lines_are_cut() -> None:
    assert feed_all(b"x" * 5000 + b"\r\n", max_line=100) == ["x" * 100]
