"""The sessions check: the BBS's active sessions as the collector stores them.

Reads the host's sessions hash (``KeySpace.host_sessions(host)``: client id
to the JSON text ``wire.state.session_text`` writes), counts guests and
logged-in users, and finds the IP address holding the most sessions, since a
flood or a stuck client shows there first. Over ``max_sessions`` (MTBBS's
``TELNET_MAX_CONNECTIONS``) or ``max_same_ip`` (``MAX_SAME_IP``) is
unhealthy. When Redis cannot be read the result says so (``available`` False
and an ``error``) but stays healthy: the monitor's outage is not the BBS's.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections import Counter
from typing import Any

from agent.checks.results import Session, SessionsResult
from wire.keys import KeySpace
from wire.replies import text as _text

logger = logging.getLogger(__name__)

# The report carries the list; a flood of thousands of sessions is told by
# the counts, and the list stops here so the message stays small.
MAX_LISTED = 500
GUEST = "guest"
LOGGED_IN = "logged_in"
CONNECTED = "connected"


def client_ip(client_id: str) -> str:
    """The IP address of an MTBBS client id ``ip:port`` (``[v6]:port`` too)."""
    text = client_id.strip()
    if text.startswith("["):
        end = text.find("]")
        address = text[1:end] if end > 0 else text[1:]
    else:
        head, sep, port = text.rpartition(":")
        address = head if sep and port.isdigit() and head else text
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)[:128]


def parse_session(client_id: str, text: str) -> Session | None:
    """One stored session, or None when the stored text is not one."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    state = doc.get("state")
    return Session(
        client_id=client_id[:128],
        user_id=_optional_text(doc.get("user_id")),
        connected_at=_optional_text(doc.get("connected_at")),
        state=str(state)[:32] if state is not None else "unknown",
    )


def check_sessions(
    redis_client: Any | None,
    keys: KeySpace,
    host: str,
    *,
    max_sessions: int = 100,
    max_same_ip: int = 3,
) -> SessionsResult:
    """Read and judge ``host``'s sessions from Redis."""
    def unavailable(error: str) -> SessionsResult:
        return SessionsResult(healthy=True, available=False, host=host, error=error,
                              max_sessions=max_sessions, max_same_ip=max_same_ip)

    if redis_client is None:
        return unavailable("Redis not configured: sessions unknown")
    try:
        raw = redis_client.hgetall(keys.host_sessions(host))
    except Exception as exc:  # noqa: BLE001 - any client failure means "cannot tell"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.debug("sessions of %s unreadable: %s", host, reason)
        return unavailable(f"Redis unreachable: {reason}")

    sessions: list[Session] = []
    invalid = 0
    for key, value in raw.items():
        client_id = _text(key)
        session = parse_session(client_id, _text(value))
        if session is None:
            invalid += 1
            session = Session(client_id=client_id[:128], user_id=None, connected_at=None,
                              state="unknown")
        sessions.append(session)
    sessions.sort(key=lambda s: (s.connected_at or "", s.client_id))

    per_ip = Counter(client_ip(s.client_id) for s in sessions)
    top_ip, top_count = None, 0
    if per_ip:
        # Ties go to the smallest address so repeated runs name the same one.
        top_ip, top_count = min(per_ip.items(), key=lambda item: (-item[1], item[0]))
    guests = sum(1 for s in sessions if s.state == LOGGED_IN and s.user_id == GUEST)
    users = sum(1 for s in sessions if s.state == LOGGED_IN and s.user_id != GUEST)
    active = len(sessions)
    healthy = active <= max_sessions and top_count <= max_same_ip
    return SessionsResult(
        healthy=healthy,
        available=True,
        active_sessions=active,
        sessions=tuple(sessions[:MAX_LISTED]),
        guests=guests,
        logged_in=users,
        not_logged_in=active - guests - users,
        top_ip=top_ip,
        top_ip_sessions=top_count,
        sessions_truncated=active > MAX_LISTED,
        invalid_entries=invalid,
        host=host,
        max_sessions=max_sessions,
        max_same_ip=max_same_ip,
    )
