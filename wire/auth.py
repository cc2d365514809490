"""Host authentication: per-host HMAC signatures over stream payloads.

An agent that holds the key of host A signs each encoded message with it;
the stream entry carries the signature in field ``sig`` beside the payload
``m``. The collector, which holds every host's key, recomputes the signature
with the key of the host *named inside the message* and dead-letters the
entry when they differ, so credentials for A cannot write state for B.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

from wire.config import warn_if_exposed
from wire.errors import ConfigError
from wire.keys import valid_host_id


def sign(key: bytes, payload: bytes) -> str:
    """Hex HMAC-SHA256 of ``payload`` under ``key``."""
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(key: bytes, payload: bytes, signature: bytes | str | None) -> bool:
    """True when ``signature`` is ``payload``'s signature under ``key``."""
    if signature is None:
        return False
    text = signature.decode("ascii", "replace") if isinstance(signature, bytes) else signature
    return hmac.compare_digest(sign(key, payload), text)


def load_host_keys(path: Path) -> dict[str, bytes]:
    """Read a keys file: one ``host-id secret`` pair per line, ``#`` comments.

    The file is the collector's (it holds every host's secret); an agent's
    key file holds only its own line.
    """
    warn_if_exposed(path, "the host keys file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("host_keys_file", f"cannot read {path} ({type(exc).__name__})") from None
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not valid_host_id(parts[0]) or len(parts[1]) < 16:
            raise ConfigError("host_keys_file",
                              f"{path} line {number}: expected 'host-id secret' with a secret "
                              "of 16 characters or more")
        keys[parts[0]] = parts[1].encode("utf-8")
    return keys


def key_for(keys: Mapping[str, bytes], host: str) -> bytes | None:
    """The key of ``host``, or None when the host has none."""
    return keys.get(host)
