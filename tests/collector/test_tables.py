"""Tables for people line up on a terminal, Japanese names included."""

from __future__ import annotations

from collector.tables import display_width, text_table


def test_display_width_counts_wide_characters_twice() -> None:
    assert display_width("alice") == 5
    assert display_width("山田太郎") == 8
    assert display_width("ﾔﾏﾀﾞ") == 4  # halfwidth katakana take one cell each
    assert display_width("ＡＢ") == 4  # fullwidth forms take two
    assert display_width("e\u0301") == 1  # a combining accent takes none


def test_columns_align_by_display_width() -> None:
    table = text_table(["CLIENT", "USER", "STATE"],
                       [["192.0.2.1:5000", "山田太郎", "logged_in"],
                        ["192.0.2.2:5001", "alice", "connected"],
                        ["192.0.2.3:5002", "ゲスト", "connected"]])
    lines = table.splitlines()
    user_column = display_width("192.0.2.1:5000  ")
    state_column = user_column + display_width("山田太郎  ")
    for line in lines:
        user = line[len("192.0.2.1:5000  "):]
        assert display_width(line[:len("192.0.2.1:5000  ")]) == user_column
        name = user.split(" ")[0]
        rest = user[len(name):]
        # The state starts at the same display column on every line.
        assert user_column + display_width(name) + len(rest) - len(rest.lstrip()) \
            == state_column, line
    assert all(line == line.rstrip() for line in lines)


def test_an_empty_table_is_its_header() -> None:
    assert text_table(["HOST", "STATUS"], []) == "HOST  STATUS"
