"""Which host streams exist, and which of them this collector reads.

Every host appends to two streams of its own (``<prefix>{<host>}:reports``
and ``...:sessions``). A collector finds them with ``SCAN ... TYPE stream``,
a page at a time so that a big keyspace never costs one long call
(:class:`Discovery`), and shares the hosts with the other running
collectors by rendezvous hashing (:func:`owner`): each live member of the
ring (:class:`Ring`, the sorted set of collector heartbeats) ranks a host by
a hash of its own name and the host's, and the host goes to the member that
ranks it highest. Every collector computes the same owner from the same
members without talking to the others, and when a member joins or leaves,
only the hosts it gains or loses move.

For a moment collectors may disagree (one has seen a new member, another
not yet), and two of them read one host. That is safe: the apply script
applies an entry only once every older entry of its stream is applied
(:mod:`collector.scripts`), so the worst it costs is a short wait.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b
from typing import Any

from wire.keys import KeySpace
from wire.replies import text

# Keys SCAN looks at per call: a page of a pass over the keyspace.
SCAN_COUNT = 1000


def rank(member: str, host: str) -> int:
    """How much ``member`` wants ``host``: a stable hash of the two names."""
    digest = blake2b(f"{member}\n{host}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(host: str, members: Iterable[str]) -> str:
    """The member that reads ``host`` (the highest rank; ties by name)."""
    return max(members, key=lambda member: (rank(member, host), member))


class Ring:
    """The running collectors, by their heartbeats in the ring sorted set
    (written with each heartbeat: :func:`collector.selfmon.write_heartbeat`)."""

    def __init__(self, client: Any, keys: KeySpace, name: str, timeout_ms: int) -> None:
        self.client = client
        self.key = keys.collector_ring()
        self.name = name
        self.timeout_ms = timeout_ms

    def members(self, now_ms: int) -> tuple[str, ...]:
        """The live members, sorted; this collector is always one of them."""
        live = self.client.zrangebyscore(self.key, now_ms - self.timeout_ms, "+inf")
        return tuple(sorted({self.name, *(text(name) for name in live)}))


class Discovery:
    """A pass over the keyspace for host streams, one SCAN page per call."""

    def __init__(self, keys: KeySpace) -> None:
        self.keys = keys
        self.cursor = 0

    @property
    def in_pass(self) -> bool:
        """True between the first and the last page of a pass."""
        return self.cursor != 0

    def page(self, client: Any) -> list[str]:
        """The host streams of the next page; a pass ends when the cursor is 0."""
        cursor, names = client.scan(self.cursor, match=self.keys.host_streams_pattern(),
                                    count=SCAN_COUNT, _type="stream")
        self.cursor = int(cursor)
        return [text(name) for name in names]

    def whole_pass(self, client: Any) -> list[str]:
        """Every host stream there is now."""
        self.cursor = 0
        found = self.page(client)
        while self.in_pass:
            found += self.page(client)
        return found


class HostStreams:
    """The host streams this collector knows of, and those it owns."""

    def __init__(self, keys: KeySpace, name: str) -> None:
        self.keys = keys
        self.name = name
        self.members: tuple[str, ...] = (name,)
        self._hosts: dict[str, set[str]] = {}
        self._owned_hosts: set[str] = set()
        self.owned: list[str] = []

    def __len__(self) -> int:
        return sum(len(streams) for streams in self._hosts.values())

    def __contains__(self, stream: object) -> bool:
        named = self.keys.stream_host(stream) if isinstance(stream, str) else None
        return named is not None and stream in self._hosts.get(named[0], ())

    def add(self, streams: Iterable[str]) -> list[str]:
        """Learn of ``streams``; those this collector newly owns."""
        gained = []
        for stream in streams:
            named = self.keys.stream_host(stream)
            if named is None:
                continue
            host = named[0]
            known = self._hosts.setdefault(host, set())
            if stream in known:
                continue
            known.add(stream)
            if len(known) == 1 and owner(host, self.members) == self.name:
                self._owned_hosts.add(host)
            if host in self._owned_hosts:
                gained.append(stream)
        if gained:
            self._sort()
        return gained

    def remove(self, stream: str) -> None:
        """Forget a stream that is gone (or is no longer a stream)."""
        named = self.keys.stream_host(stream)
        if named is None or stream not in self._hosts.get(named[0], ()):
            return
        host = named[0]
        self._hosts[host].discard(stream)
        if not self._hosts[host]:
            del self._hosts[host]
            self._owned_hosts.discard(host)
        self._sort()

    def set_members(self, members: tuple[str, ...]) -> list[str]:
        """Share the hosts among ``members`` anew; the streams newly owned."""
        if members == self.members:
            return []
        self.members = members
        before = self._owned_hosts
        self._owned_hosts = {host for host in self._hosts if owner(host, members) == self.name}
        self._sort()
        return [stream for host in sorted(self._owned_hosts - before)
                for stream in sorted(self._hosts[host])]

    def owns(self, host: str) -> bool:
        """True when this collector reads ``host`` (and judges its staleness)."""
        if host in self._owned_hosts:
            return True
        if host in self._hosts:
            return False
        # A host whose streams are not found yet (trimmed away, or not
        # discovered): ranked like any other, so one collector judges it.
        return owner(host, self.members) == self.name

    def _sort(self) -> None:
        self.owned = sorted(stream for host in self._owned_hosts for stream in self._hosts[host])
