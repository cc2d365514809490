"""Keys the alerter added to the contract: under the prefix and inside ``notify:``."""

from __future__ import annotations

from wire.acl import role_rule
from wire.keys import KeySpace


def test_alerter_keys_use_the_prefix_and_the_notify_namespace() -> None:
    keys = KeySpace("x:")
    assert keys.digest_due("slack") == "x:notify:due:slack"
    assert keys.alerter_tick() == "x:notify:tick"
    assert keys.digest_due("mail") != keys.digest_buffer("mail")


def test_alerter_acl_covers_the_added_keys() -> None:
    from fnmatch import fnmatchcase

    keys = KeySpace()
    patterns = role_rule("alerter").key_patterns
    for key in (keys.digest_due("slack"), keys.alerter_tick()):
        assert any(fnmatchcase(key, p) for p in patterns), key
