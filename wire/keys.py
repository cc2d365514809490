"""Every Redis key, stream, group and queue name of the project.

Names are built here and only here, all under one configurable prefix
(default ``mtbbs:``), so that a sysop can find everything with
``redis-cli --scan --pattern 'mtbbs:*'`` and two fleets can share a Redis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "mtbbs:"

# Host ids end up in key names, mail headers and terminals: keep them to a
# conservative alphabet so that none of those needs quoting.
HOST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHECK_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

COLLECTOR_GROUP = "collectors"

# The channel pattern of Redis's keyspace events for XADD in every database
# (``notify-keyspace-events Et``): the collector listens on it, so its ACL
# user is granted it (SUBSCRIBE checks a channel against this glob;
# PSUBSCRIBE on Redis 6.2 must name it exactly).
XADD_EVENTS = "__keyevent@*__:xadd"

# The kinds of a host's streams, the last part of their names.
REPORTS = "reports"
SESSIONS = "sessions"

# The rq job the collector enqueues per changed host, by import path, so that
# the collector never imports the alerter: ``evaluate_host(*hosts: str)``.
EVALUATE_JOB = "alerter.jobs.evaluate_host"

# The serializer of every rq queue of the project, as rq names it: JSON rather
# than pickle, so job data is plain text and nothing executable crosses Redis.
# Producers (``Queue(..., serializer=RQ_SERIALIZER)``) and workers must agree.
RQ_SERIALIZER = "json"


def valid_host_id(host: str) -> bool:
    """True when ``host`` may be used as a host id."""
    return bool(HOST_ID_PATTERN.match(host))


@dataclass(frozen=True)
class KeySpace:
    """Key names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    # -- streams: one pair per host, under the host's hash tag ---------------
    def reports_stream(self, host: str) -> str:
        """Stream of the host's agent reports (msgpack in field ``m``).

        Each host appends to streams of its own, so that a Redis ACL key
        pattern (``~<prefix>{<host>}:*``) confines its credentials to them,
        and so that the stream position orders the host's messages. The
        braces are a Redis Cluster hash tag: a host's streams share a slot.
        """
        return f"{self.prefix}{{{host}}}:{REPORTS}"

    def sessions_stream(self, host: str) -> str:
        """Stream of the host's session events, pushed by its BBS (msgpack in ``m``)."""
        return f"{self.prefix}{{{host}}}:{SESSIONS}"

    def host_streams(self, host: str) -> tuple[str, str]:
        """The host's two streams."""
        return (self.reports_stream(host), self.sessions_stream(host))

    def host_streams_pattern(self) -> str:
        """Glob of every host's streams, for ``SCAN MATCH ... TYPE stream``."""
        return f"{self.prefix}{{*}}:*"

    def stream_host(self, stream: str) -> tuple[str, str] | None:
        """``(host, kind)`` of a host stream's name (kind ``reports`` or
        ``sessions``); None for any other key."""
        if not stream.startswith(self.prefix + "{"):
            return None
        host, _, kind = stream[len(self.prefix) + 1:].partition("}:")
        if kind not in (REPORTS, SESSIONS) or not valid_host_id(host):
            return None
        return host, kind

    def dead_letter_stream(self) -> str:
        """Stream of entries the collector could not use, with the reason."""
        return f"{self.prefix}stream:dead"

    # -- per-host state (plain text, readable with redis-cli) ---------------
    def hosts_index(self) -> str:
        """Sorted set: host id scored by last-seen time (ms, Redis clock)."""
        return f"{self.prefix}hosts"

    def hosts_due(self) -> str:
        """Sorted set: host id scored by when (ms, Redis clock) its silence
        next needs judging: when it turns stale unless it reports."""
        return f"{self.prefix}hosts:due"

    def host(self, host: str) -> str:
        """Hash: the host's latest state, flattened as ``check.field``."""
        return f"{self.prefix}host:{host}"

    def host_sessions(self, host: str) -> str:
        """Hash: client id (``ip:port``) to a JSON text of the session."""
        return f"{self.prefix}host:{host}:sessions"

    def host_sessions_order(self, host: str) -> str:
        """Hash: ordering marks of the sessions hash (``snapshot`` and ``c:<client id>``
        to the stream position last applied, ``sent`` to the reporter's
        ``epoch:seq`` last applied), so replayed events never regress it."""
        return f"{self.prefix}host:{host}:sessions:order"

    def host_history(self, host: str) -> str:
        """List: newest first, CSV lines of the host's key figures."""
        return f"{self.prefix}host:{host}:history"

    # -- the collector's own health ------------------------------------------
    def collectors_index(self) -> str:
        """Sorted set: collector consumer names scored by heartbeat (ms)."""
        return f"{self.prefix}collectors"

    def collector_ring(self) -> str:
        """Sorted set: running collectors scored by heartbeat (ms); a collector
        leaves it when it stops. Hosts are shared among its live members."""
        return f"{self.prefix}collectors:ring"

    def collector(self, name: str) -> str:
        """Hash: one collector's heartbeat, lag and pending count."""
        return f"{self.prefix}collector:{name}"

    def evaluation_pending(self, host: str) -> str:
        """String with a TTL: set while an evaluation job for the host waits."""
        return f"{self.prefix}eval:pending:{host}"

    # -- alerter state -------------------------------------------------------
    def alerts_index(self) -> str:
        """Set: ``host/check`` of every alert state that exists."""
        return f"{self.prefix}alerts"

    def alert(self, host: str, check: str) -> str:
        """Hash: the alert state machine of one (host, check)."""
        return f"{self.prefix}alert:{host}:{check}"

    def silences(self) -> str:
        """Hash: silence id to a JSON text of the silence."""
        return f"{self.prefix}silences"

    def notification_sent(self, notification_id: str) -> str:
        """String with a TTL: marks a notification as delivered (dedup)."""
        return f"{self.prefix}notify:sent:{notification_id}"

    def notifications_failed(self) -> str:
        """Hash: notification id to a JSON text of a failed delivery."""
        return f"{self.prefix}notify:failed"

    def notification_log(self) -> str:
        """List: newest first, JSON texts of recent notifications."""
        return f"{self.prefix}notify:log"

    def channel_rate(self, channel: str) -> str:
        """Sorted set: send times of a channel, for its rate limit."""
        return f"{self.prefix}notify:rate:{channel}"

    def digest_buffer(self, channel: str) -> str:
        """List: alerts waiting to be grouped into one digest for a channel."""
        return f"{self.prefix}notify:digest:{channel}"

    def digest_due(self, channel: str) -> str:
        """String with a TTL: due time (ms) of the flush scheduled for a channel's
        digest buffer; while it exists no second flush is scheduled."""
        return f"{self.prefix}notify:due:{channel}"

    def alerter_tick(self) -> str:
        """String with a TTL: held by the alerter worker that runs the periodic
        re-evaluation of active alerts (hold-down, repeats) in this period."""
        return f"{self.prefix}notify:tick"

    # -- rq queues (rq adds its own ``rq:queue:`` in front) -------------------
    def evaluate_queue(self) -> str:
        """rq queue of per-host evaluation jobs."""
        return f"{self.prefix}evaluate"

    def notify_queue(self) -> str:
        """rq queue of notification delivery jobs."""
        return f"{self.prefix}notify"
