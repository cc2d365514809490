"""Least-privilege Redis ACL rules for each role of the project.

The key patterns are built from :class:`wire.keys.KeySpace` (called with a
glob where a host id or a name goes), so they follow the real key names and
the configured prefix instead of being written out by hand.

Roles:

``agent`` (one user per host)
    Appends reports to its host's own reports stream and (for the session
    reporter on the same host, which may share the user) session events to
    its host's own sessions stream; reads its host's sessions hash for the
    sessions check. Nothing else: no other host's keys, no shared key, no
    command that reads, trims or deletes a stream.
``reporter`` (one user per host)
    The session reporter alone: appends session events to its host's own
    sessions stream, nothing else.
``collector``
    Finds the hosts' streams (``SCAN ... TYPE stream``) and consumes them in
    the collector group, trims what it has applied, writes host state,
    history, sessions, its heartbeat, its place in the collectors' ring and
    dead letters, enqueues rq evaluation jobs, and may subscribe to the XADD
    keyspace events to wake up.
``alerter``
    An rq worker: rq's own keys, host state to read, alert, silence and
    notification keys to write.
``readonly``
    The status CLI, the exporter and ``watch``: read commands on the
    project's keys and nothing else.

The host roles exist only per host, because a host's credentials must reach
only that host's keys (a stolen one can lie about its own host, never touch
another host or the shared pipeline); asking for one without a host id is an
error. They get no EVAL, EVALSHA, SCRIPT or FUNCTION: a script runs with the
caller's key permissions, but an endless one blocks the whole server, and a
host has no need of one (its delivery is a plain XADD; a duplicate after a
lost reply is the collector's to skip).

The rules work on Redis 6.2, which has key patterns (``~``) and pubsub
channel patterns (``&``) but grants read and write together. Each pattern
also records the access the role needs, so ``AclRule.rules(redis7=True)``
writes Redis 7's ``%R~``/``%W~`` refinement (an agent that can only append to
the streams and only read its sessions hash). Passwords are written as their
SHA-256 (``#<hex>``), never in clear.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from wire.keys import XADD_EVENTS, KeySpace, valid_host_id

ROLES = ("agent", "reporter", "collector", "alerter", "readonly")

# The roles of a BBS host: one Redis user per host, never a shared one.
HOST_ROLES = ("agent", "reporter")

# rq names its keys under this fixed prefix (rq.defaults / RQ_KEY_PREFIX);
# our queue names carry our prefix after it, e.g. ``rq:queue:mtbbs:evaluate``.
RQ_PREFIX = "rq:"

# Every client: PING for redis-py's health checks on idle connections, SELECT
# for a URL naming a database, MULTI/EXEC for pipelines, CLIENT SETNAME for
# rq. AUTH and HELLO need no rule. redis-py's CLIENT SETINFO on connect is
# left out on purpose: it ignores the refusal, and Redis 7.0 would reject a
# rule naming a subcommand it does not have (SETINFO came with 7.2).
_CONNECTION = ("+ping", "+select", "+multi", "+exec", "+discard", "+client|setname")

# Central roles only. Scripts run with the caller's permissions (every
# redis.call inside is checked), so allowing EVAL adds no key access; SCRIPT
# FLUSH/KILL stay out.
_SCRIPTS = ("+eval", "+evalsha", "+script|load", "+script|exists")

# Data commands by category, with what would let a role hurt others removed
# (@dangerous: FLUSHALL, KEYS, CONFIG, DEBUG, SHUTDOWN, CLIENT KILL, ACL, ...).
_DATA = ("+@read", "+@write", "-@dangerous")

# Braces are no glob characters in Redis (a host stream's hash tag is matched
# literally); host ids cannot hold any of these, prefixes may.
_GLOB_SPECIALS = "*?[]\\"


def glob_escape(text: str) -> str:
    """``text`` with Redis glob characters escaped, for a literal key pattern."""
    return "".join(f"\\{c}" if c in _GLOB_SPECIALS else c for c in text)


@dataclass(frozen=True)
class AclRule:
    """The ACL of one Redis user, without its password.

    ``keys`` pairs each key pattern with the access the role needs (``R``,
    ``W`` or ``RW``); Redis 6.2 can only grant both, Redis 7 can grant each.
    """

    role: str
    user: str
    keys: tuple[tuple[str, str], ...]
    channels: tuple[str, ...]
    commands: tuple[str, ...]
    summary: str

    @property
    def key_patterns(self) -> tuple[str, ...]:
        """The key patterns (without the ``~``)."""
        return tuple(pattern for pattern, _ in self.keys)

    def rules(self, redis7: bool = False) -> tuple[str, ...]:
        """The SETUSER rule tokens: keys, channels, then commands.

        ``redis7`` writes ``%R~``/``%W~`` for patterns the role only reads or
        only writes (Redis 7.0 and later); otherwise every pattern is ``~``.
        """
        tokens = []
        for pattern, access in self.keys:
            tokens.append(f"%{access}~{pattern}" if redis7 and access != "RW" else f"~{pattern}")
        # Redis 6.2 grants every channel to a new user (acl-pubsub-default
        # allchannels): reset first, then allow only ours.
        tokens.append("resetchannels")
        tokens.extend(f"&{c}" for c in self.channels)
        tokens.extend(self.commands)
        return tuple(tokens)


def default_user(role: str, host: str | None = None) -> str:
    """The user name of ``role`` (per host when ``host`` is given)."""
    return f"mtbbs-{role}-{host}" if host else f"mtbbs-{role}"


def _keys(prefix: str) -> KeySpace:
    # A KeySpace whose prefix matches itself literally inside a glob.
    return KeySpace(glob_escape(prefix))


def _rq_queue(queue: str) -> str:
    return f"{RQ_PREFIX}queue:{queue}"


@dataclass(frozen=True)
class _Spec:
    patterns: tuple[tuple[str, str], ...]  # (key pattern, "R" | "W" | "RW")
    channels: tuple[str, ...]
    commands: tuple[str, ...]
    summary: str


def _agent(keys: KeySpace, host: str) -> _Spec:
    patterns = ((keys.reports_stream(host), "W"), (keys.sessions_stream(host), "W"),
                (keys.host_sessions(host), "R"))
    return _Spec(patterns, (), ("+xadd", "+hgetall", *_CONNECTION),
                 f"agent of host {host}: XADD to its reports and sessions streams, read its "
                 "sessions hash")


def _reporter(keys: KeySpace, host: str) -> _Spec:
    return _Spec(((keys.sessions_stream(host), "W"),), (), ("+xadd", *_CONNECTION),
                 f"session reporter of host {host}: XADD to its sessions stream only")


def _collector(keys: KeySpace) -> _Spec:
    patterns = (
        (keys.host_streams_pattern(), "RW"),  # every host's reports and sessions
        (f"{keys.prefix}stream:*", "RW"),  # the dead letters
        (keys.hosts_index(), "RW"), (keys.hosts_due(), "RW"),
        (keys.host("*"), "RW"),  # the host hash, its sessions, history, ordering marks
        (keys.collectors_index(), "RW"), (keys.collector_ring(), "RW"),
        (keys.collector("*"), "RW"),
        (keys.evaluation_pending("*"), "RW"),
        (_rq_queue(keys.evaluate_queue()), "RW"), (f"{RQ_PREFIX}queues", "RW"),
        (f"{RQ_PREFIX}job:*", "RW"),
    )
    commands = (*_DATA, *_SCRIPTS, *_CONNECTION, "+watch", "+unwatch", "+time",
                # rq reads the server version with INFO before it enqueues.
                "+info",
                # SCAN MATCH <prefix>{*}:* TYPE stream finds the hosts'
                # streams. @read holds it already; named because the
                # collector cannot work without it.
                "+scan",
                # The XADD keyspace events (XADD_EVENTS) wake it up.
                "+subscribe", "+unsubscribe", "+psubscribe", "+punsubscribe")
    return _Spec(patterns, (XADD_EVENTS,), commands,
                 "collector: find and consume the hosts' streams, write host state, enqueue "
                 "evaluations")


def _alerter(keys: KeySpace) -> _Spec:
    patterns = (
        (f"{RQ_PREFIX}*", "RW"),
        (keys.hosts_index(), "R"), (keys.host("*"), "R"),
        (keys.collectors_index(), "R"), (keys.collector("*"), "R"),
        # The evaluation job deletes its host's pending mark first thing.
        (keys.evaluation_pending("*"), "RW"),
        (keys.alerts_index(), "RW"), (keys.alert("*", "*"), "RW"), (keys.silences(), "RW"),
        (f"{keys.prefix}notify:*", "RW"),
    )
    commands = (*_DATA, *_SCRIPTS, *_CONNECTION, "+watch", "+unwatch", "+time", "+info",
                # An rq worker subscribes to its command channel and looks
                # itself up in CLIENT LIST.
                "+subscribe", "+unsubscribe", "+publish", "+client|list")
    return _Spec(patterns, (f"{RQ_PREFIX}pubsub:*",), commands,
                 "alerter (rq worker): rq keys, read host state, write alerts, silences, "
                 "notifications")


def _readonly(keys: KeySpace) -> _Spec:
    # ``<prefix>*`` covers the hosts' streams too (``*`` matches the braces).
    patterns = ((f"{keys.prefix}*", "R"), (f"{_rq_queue(keys.prefix)}*", "R"),
                (f"{RQ_PREFIX}queues", "R"))
    # TIME: readers judge staleness by the server clock, as the collector does.
    commands = ("+@read", "-@dangerous", "+time", "+ping", "+select", "+client|setname")
    return _Spec(patterns, (), commands, "read-only: status CLI, exporter, watch")


_HOST_BUILDERS = {"agent": _agent, "reporter": _reporter}
_SHARED_BUILDERS = {"collector": _collector, "alerter": _alerter, "readonly": _readonly}


def role_rule(role: str, prefix: str = KeySpace.prefix, *, host: str | None = None,
              user: str | None = None) -> AclRule:
    """The ACL of ``role`` for keys under ``prefix``.

    ``agent`` and ``reporter`` are per host: ``host`` is required, confines
    the user to that host's keys and names it (``mtbbs-agent-<host>``). The
    other roles are shared and take no host.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    keys = _keys(prefix)
    if role in _HOST_BUILDERS:
        if host is None:
            raise ValueError(f"the {role} role is per host: give a host id")
        if not valid_host_id(host):
            raise ValueError(f"{host!r} is not a valid host id")
        spec = _HOST_BUILDERS[role](keys, host)
    else:
        if host is not None:
            raise ValueError(f"the {role} role is shared by every host: give no host id")
        spec = _SHARED_BUILDERS[role](keys)
    name = user or default_user(role, host)
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError("a user name cannot be empty or contain spaces")
    return AclRule(role=role, user=name, keys=spec.patterns, channels=spec.channels,
                   commands=spec.commands, summary=spec.summary)


def password_rule(password: str | None) -> str:
    """``#<sha256>`` of ``password``; ``resetpass`` (no login) without one.

    The hash keeps the secret out of the printed rules and of ``ACL LIST``.
    """
    if password is None:
        return "resetpass"
    return "#" + hashlib.sha256(password.encode("utf-8")).hexdigest()


def setuser_args(rule: AclRule, password: str | None, *, redis7: bool = False) -> list[str]:
    """Arguments after ``ACL SETUSER`` that (re)define the user from scratch."""
    return [rule.user, "reset", "on", password_rule(password), *rule.rules(redis7)]


def setuser_line(rule: AclRule, password: str | None, *, redis7: bool = False) -> str:
    """One ``ACL SETUSER ...`` command line, as redis-cli reads it."""
    args = setuser_args(rule, password, redis7=redis7)
    return " ".join(["ACL", "SETUSER", *(_quote(a) for a in args)])


def aclfile_line(rule: AclRule, password: str | None, *, redis7: bool = False) -> str:
    """The user's line in a Redis ``aclfile`` (the file form has no ``reset``)."""
    return " ".join(["user", rule.user, "on", password_rule(password), *rule.rules(redis7)])


def _quote(token: str) -> str:
    # redis-cli splits on spaces and honours double quotes; our tokens have no
    # spaces, but a backslash (an escaped glob character) must survive.
    if "\\" in token or '"' in token:
        return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return token
