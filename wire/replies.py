"""Reading what Redis answers: reply values as text, and the server's clock.

Every component reads Redis replies that may be bytes (a client without
``decode_responses``) or text; these two helpers are the one place that
turns them into ``str`` and asks Redis for its time. Liveness is judged by
server time everywhere, so nothing here reads the local clock.
"""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    """A reply value as text (bytes decoded as UTF-8, bad bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def server_time_ms(client: Any) -> int:
    """Redis's clock in unix milliseconds (the TIME command)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000
