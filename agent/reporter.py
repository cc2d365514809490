"""The session reporter: the small library the BBS embeds to report its sessions.

MTBBS calls :meth:`SessionReporter.register_session` when a telnet client
connects, :meth:`~SessionReporter.update_session_state` when it logs in and
:meth:`~SessionReporter.unregister_session` when it leaves, the same three
calls as the original in-process monitor. The reporter keeps its own table of
the sessions and turns every call into a :class:`wire.messages.SessionEvent`
on the host's own sessions stream, where the collector picks them up.

The BBS must never be slowed down or broken by its monitor, so:

* a call only validates its arguments cheaply, updates the in-memory table
  and appends a tuple to a bounded deque; building, encoding, signing and
  sending happen in one background daemon thread;
* a call does not wake that thread: while the BBS is active the sender
  looks at the deque every ``linger`` seconds on its own timer (waking a
  sleeping thread costs the caller tens of µs, and more when the woken
  thread then competes for the GIL); only after ``park_after`` seconds
  without events does it sleep until the next call wakes it;
* when the deque is full (Redis slow or down) new events are dropped and
  counted, and a full snapshot of the table is sent as soon as Redis takes
  writes again, so the collector's view heals; a periodic snapshot heals
  anything else that was lost;
* the sender batches events into pipelines of ``XADD ... MAXLEN ~``, retries
  with capped exponential backoff, keeps at most one batch in flight while
  Redis is down and survives Redis restarts;
* no public method raises: errors are logged, counted and swallowed.

Every event except ``disconnected`` carries the session's full resulting
record (user, state, connected-at), so a reader can apply each one as an
upsert; ``snapshot`` replaces the host's whole table. ``epoch`` is the
reporter's start time in milliseconds and ``seq`` counts up from 1 within it.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from wire import auth
from wire.config import (
    RedisSettings,
    connect,
    load_document,
    load_section,
    non_negative,
    positive,
    read_secret_file,
    setting,
)
from wire.errors import ConfigError
from wire.keys import DEFAULT_PREFIX, KeySpace, valid_host_id
from wire.messages import (
    CONNECTED,
    DISCONNECTED,
    LOGGED_IN,
    MAX_MESSAGE_BYTES,
    SESSION_STATES,
    SNAPSHOT,
    STATE,
    SessionEvent,
    SessionInfo,
    encode,
)

logger = logging.getLogger(__name__)

# The wire codec refuses client and user ids longer than this (characters).
MAX_ID_CHARS = 128

# The sender never polls faster than this, whatever ``linger`` says.
MIN_POLL_S = 0.001

# Shorthands for the hot path: a module-global lookup is cheaper than an
# attribute chain, and these run on every call the BBS makes.
_now = time.time
_STATE_CONNECTED = "connected"
_STATE_LOGGED_IN = "logged_in"


@dataclass(frozen=True)
class ReporterSettings:
    """The optional ``[reporter]`` section: tuning of the session reporter."""

    max_queue: int = setting(10_000, "events held in memory while Redis is slow or down; "
                             "beyond that new events are dropped and counted, and a snapshot "
                             "heals the collector's view once Redis is back", check=positive)
    max_sessions: int = setting(2_000, "sessions the reporter tracks at most (a bound on its "
                                "memory); registrations beyond it are refused and counted",
                                check=positive)
    batch_size: int = setting(256, "events sent per Redis pipeline", check=positive)
    linger: float = setting(0.02, "seconds between the sender's looks at the queue while the "
                            "BBS is active: an event leaves within about this long, and a "
                            "burst goes out in one pipeline; calls never wait for the sender",
                            check=non_negative)
    park_after: float = setting(60.0, "seconds without events after which the sender stops "
                                "looking at the queue and sleeps until a call wakes it (that "
                                "one call pays for the wake-up)", check=positive)
    snapshot_interval: float = setting(60.0, "seconds between full snapshots of the sessions",
                                       check=positive)
    stream_maxlen: int = setting(10_000, "approximate length this host's own sessions stream "
                                 "is trimmed to (XADD MAXLEN ~); it bounds what waits for a "
                                 "collector that is down (the collector also trims the "
                                 "entries it has applied)", check=positive)
    backoff_initial: float = setting(0.5, "first retry delay after Redis failed, seconds",
                                     check=positive)
    backoff_max: float = setting(30.0, "longest retry delay, seconds (the delay doubles up "
                                 "to this)", check=positive)
    host_key_file: Path | None = setting(None, "file holding this host's signing key (first "
                                         "line); events then carry an HMAC in field 'sig'")


def read_host_key(path: Path) -> bytes:
    """The signing key in the first line of ``path`` (``ValueError`` if unusable)."""
    try:
        key = read_secret_file(path, "the host key file")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the host key file {path} ({type(exc).__name__})") from None
    # A keys file line ``host-id secret`` is accepted too: the secret is its last word.
    key = key.split()[-1] if key else ""
    if len(key) < 16:
        raise ValueError(f"the host key in {path} is shorter than 16 characters")
    return key.encode("utf-8")


# -- argument repair (slow path: only runs for arguments the fast path refused) --


def _clean_client_id(value: Any) -> str | None:
    """A usable client id from whatever the caller passed, or None."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) >= 2:
        # asyncio's peername, ("1.2.3.4", 5555) or the 4-tuple of IPv6.
        value = f"{value[0]}:{value[1]}"
    elif isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    text = str.__str__(text)  # a plain str, even from a str subclass
    return text[:MAX_ID_CHARS] or None


def _clean_user_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    return str.__str__(text)[:MAX_ID_CHARS]


def _sanitize(text: str | None) -> str | None:
    """``text`` with anything msgpack cannot encode as UTF-8 replaced."""
    if text is None:
        return None
    return text.encode("utf-8", "replace").decode("utf-8")


# Tags of queued items (the caller's side records what happened; the sender
# turns it into a SessionEvent).
_Item = tuple[str, str, str | None, str, float, float]


class SessionReporter:
    """Reports the BBS's sessions to Redis without ever blocking or raising.

    Create it once with a Redis URL and the host id (or with
    :meth:`from_config`, from the agent's configuration), call
    :meth:`start`, then call the three session methods from the BBS (any thread, including an
    asyncio event loop: they never block) and :meth:`close` at shutdown.
    Calls made before :meth:`start` are queued. Counters (``queued``,
    ``sent``, ``dropped``, ``errors``, ...) are plain attributes; see
    :meth:`stats`.
    """

    def __init__(
        self,
        redis_url: str | None,
        host: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        host_key: bytes | None = None,
        settings: ReporterSettings | None = None,
        redis_settings: RedisSettings | None = None,
        client: Any = None,
        max_queue: int | None = None,
        max_sessions: int | None = None,
        batch_size: int | None = None,
        linger: float | None = None,
        park_after: float | None = None,
        snapshot_interval: float | None = None,
        stream_maxlen: int | None = None,
        backoff_initial: float | None = None,
        backoff_max: float | None = None,
    ) -> None:
        """Never raises: a bad argument disables sending (logged; see ``problem``).

        ``redis_settings`` (a ``[redis]`` section) wins over ``redis_url`` and
        ``prefix``; ``client`` (a redis-py client) over both. Keyword tuning
        arguments override the fields of ``settings``.
        """
        # Everything the hot path and the counters need is set before anything
        # that can fail, so a half-configured reporter still accepts calls.
        self.queued = 0
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self.invalid = 0
        self.truncated = 0
        self.unknown = 0
        self.refused = 0
        self.batches = 0
        self.snapshots = 0
        self.unsent = 0
        self.problem: str | None = None
        self.host = host if isinstance(host, str) else ""
        self.epoch = int(_now() * 1000)
        self._sessions: dict[str, tuple[str | None, str, float]] = {}
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        # True while the sender sleeps until woken; only then does a call wake it.
        self._parked = False
        self._resync = False
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._pending: list[dict[str, Any]] = []
        self._client: Any = None
        self._key_space = KeySpace(DEFAULT_PREFIX)
        self._host_key: bytes | None = None
        self._settings = ReporterSettings()
        self._max_queue = self._settings.max_queue
        self._max_sessions = self._settings.max_sessions
        self._redacted = "(none)"
        try:
            self._configure(redis_url, prefix, host_key, settings, redis_settings, client, {
                "max_queue": max_queue, "max_sessions": max_sessions, "batch_size": batch_size,
                "linger": linger, "park_after": park_after,
                "snapshot_interval": snapshot_interval,
                "stream_maxlen": stream_maxlen, "backoff_initial": backoff_initial,
                "backoff_max": backoff_max,
            })
        except Exception as exc:  # noqa: BLE001 - the BBS must never see our errors
            self.problem = str(exc) or type(exc).__name__
            self.errors += 1
            self._client = None
            logger.error("session reporter disabled: %s", self.problem)

    @classmethod
    def from_settings(
        cls, redis_settings: RedisSettings, host: str,
        settings: ReporterSettings | None = None,
    ) -> SessionReporter:
        """A reporter from the ``[redis]`` and ``[reporter]`` sections.

        The host key, when ``settings.host_key_file`` names one, is read
        here; an unreadable key disables the reporter (logged) rather than
        sending unsigned events a verifying collector would reject.
        """
        settings = settings or ReporterSettings()
        key: bytes | None = None
        problem = None
        if settings.host_key_file is not None:
            try:
                key = read_host_key(settings.host_key_file)
            except ValueError as exc:
                problem = str(exc)
        reporter = cls(None, host, host_key=key, settings=settings,
                       redis_settings=redis_settings)
        if problem is not None:
            reporter.problem = problem
            reporter._client = None
            logger.error("session reporter disabled: %s", problem)
        return reporter

    @classmethod
    def from_config(cls, path: str | Path | None = None, *,
                    env: Mapping[str, str] | None = None) -> SessionReporter:
        """A reporter configured exactly as this host's agent, with no code edits.

        Reads the agent's TOML file (``path``, else the file named by
        ``$MTBBS_CONFIG``, else none) and the ``MTBBS_...`` environment
        variables: ``[redis]`` (URL, password, TLS, Sentinel, key prefix),
        the host id from ``[checks] host`` (the agent's, so that sessions and
        reports meet under one host), the signing key from ``[reporter]
        host_key_file`` or else the agent's ``[agent] host_key_file``, and the
        ``[reporter]`` tuning. MTBBS's own settings (``REDIS_URL`` and the
        like) are never read. Never raises: a configuration error disables
        the reporter, logged, with ``problem`` saying why.
        """
        # Only this constructor needs the agent's sections: imported here so
        # that the BBS importing the reporter does not load the checks.
        from agent.checks.settings import CheckSettings, default_host_id
        from agent.settings import AgentSettings

        env = os.environ if env is None else env
        host = ""
        try:
            document = load_document(path, env)
            redis_settings = load_section(RedisSettings, document, "redis", env)
            host = load_section(CheckSettings, document, "checks", env).host
            settings = load_section(ReporterSettings, document, "reporter", env)
            agent_key_file = load_section(AgentSettings, document, "agent", env).host_key_file
            if settings.host_key_file is not None or agent_key_file is None:
                return cls.from_settings(redis_settings, host, settings)
            key = auth.key_for(auth.load_host_keys(agent_key_file), host)
            if key is None:
                raise ConfigError("agent.host_key_file",
                                  f"{agent_key_file} has no key for host {host}")
        except ConfigError as exc:
            reporter = cls(None, host or default_host_id())
            reporter.problem = f"configuration: {exc}"
            reporter.errors += 1
            reporter._client = None
            logger.error("session reporter disabled: %s", reporter.problem)
            return reporter
        return cls(None, host, host_key=key, settings=settings, redis_settings=redis_settings)

    def _configure(self, redis_url: str | None, prefix: str, host_key: bytes | None,
                   settings: ReporterSettings | None, redis_settings: RedisSettings | None,
                   client: Any, overrides: dict[str, Any]) -> None:
        base = settings if settings is not None else ReporterSettings()
        if not isinstance(base, ReporterSettings):
            raise TypeError("settings must be a ReporterSettings")
        changes = {k: v for k, v in overrides.items() if v is not None}
        for name, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"reporter.{name} must be a number")
            minimum_ok = value >= 0 if name == "linger" else value > 0
            if not minimum_ok:
                raise ValueError(f"reporter.{name} must be greater than 0")
        values = {**{k: getattr(base, k) for k in base.__dataclass_fields__}, **changes}
        for name in ("max_queue", "max_sessions", "batch_size", "stream_maxlen"):
            values[name] = int(values[name])
        self._settings = ReporterSettings(**values)
        self._max_queue = self._settings.max_queue
        self._max_sessions = self._settings.max_sessions
        if not valid_host_id(self.host):
            raise ValueError(f"host id {self.host[:80]!r} is not valid (letters, digits, "
                             "'.', '_', '-'; at most 64)")
        if host_key is not None:
            if not isinstance(host_key, bytes) or not host_key:
                raise ValueError("host_key must be non-empty bytes")
            self._host_key = host_key
        if redis_settings is None:
            if not isinstance(prefix, str):
                raise ValueError("prefix must be a string")
            redis_settings = RedisSettings(url=redis_url or RedisSettings().url, prefix=prefix)
            if not redis_settings.url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("the Redis URL must start with redis://, rediss:// or unix://")
        self._key_space = redis_settings.keys
        self._redacted = redis_settings.redacted_url()
        if client is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # The sender has its own backoff; redis-py's retries would only
            # hold the batch longer.
            client = connect(redis_settings, retry=Retry(NoBackoff(), 0))
        self._client = client

    # -- the calls the BBS makes (hot path) -----------------------------------

    def register_session(self, client_id: Any, user_id: Any = None,
                         state: Any = _STATE_CONNECTED) -> None:
        """A client connected (or re-registered): remember it and report it."""
        try:
            if self._closed:
                return
            now = _now()
            if type(client_id) is not str or not 0 < len(client_id) <= MAX_ID_CHARS:
                client_id = self._repair_client_id(client_id)
                if client_id is None:
                    return
            if user_id is not None and (type(user_id) is not str
                                        or len(user_id) > MAX_ID_CHARS):
                user_id = self._repair_user_id(user_id)
            if state != _STATE_CONNECTED and state != _STATE_LOGGED_IN:
                self.invalid += 1
                state = _STATE_LOGGED_IN if user_id is not None else _STATE_CONNECTED
            sessions = self._sessions
            if len(sessions) >= self._max_sessions and client_id not in sessions:
                self.refused += 1
                return
            sessions[client_id] = (user_id, state, now)
            self._put((CONNECTED if state == _STATE_CONNECTED else LOGGED_IN,
                       client_id, user_id, state, now, now))
        except Exception:  # noqa: BLE001 - the BBS must never see our errors
            self._failed("register_session")

    def update_session_state(self, client_id: Any, user_id: Any = None,
                             state: Any = None) -> None:
        """A known session logged in, or changed user or state."""
        try:
            if self._closed:
                return
            now = _now()
            if type(client_id) is not str or not 0 < len(client_id) <= MAX_ID_CHARS:
                client_id = self._repair_client_id(client_id)
                if client_id is None:
                    return
            row = self._sessions.get(client_id)
            if row is None:
                # The original monitor ignores unknown sessions too; creating
                # one here would resurrect a session updated after it left.
                self.unknown += 1
                return
            old_user, old_state, connected_at = row
            if user_id is None:
                user_id = old_user
            elif type(user_id) is not str or len(user_id) > MAX_ID_CHARS:
                user_id = self._repair_user_id(user_id)
            if state is None:
                state = old_state
            elif state != _STATE_CONNECTED and state != _STATE_LOGGED_IN:
                self.invalid += 1
                state = old_state
            self._sessions[client_id] = (user_id, state, connected_at)
            if state == _STATE_LOGGED_IN and (old_state != state or old_user != user_id):
                kind = LOGGED_IN
            else:
                kind = STATE
            self._put((kind, client_id, user_id, state, connected_at, now))
        except Exception:  # noqa: BLE001 - the BBS must never see our errors
            self._failed("update_session_state")

    def unregister_session(self, client_id: Any) -> None:
        """A session ended (logoff or closed socket)."""
        try:
            if self._closed:
                return
            now = _now()
            if type(client_id) is not str or not 0 < len(client_id) <= MAX_ID_CHARS:
                client_id = self._repair_client_id(client_id)
                if client_id is None:
                    return
            row = self._sessions.pop(client_id, None)
            if row is None:
                self.unknown += 1
                return
            self._put((DISCONNECTED, client_id, row[0], row[1], row[2], now))
        except Exception:  # noqa: BLE001 - the BBS must never see our errors
            self._failed("unregister_session")

    def _put(self, item: _Item) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            # The table already holds the change: a snapshot will carry it.
            self._resync = True
            return
        queue.append(item)
        self.queued += 1
        if self._parked:
            self._wake.set()

    def _repair_client_id(self, value: Any) -> str | None:
        cleaned = _clean_client_id(value)
        if cleaned is None:
            self.invalid += 1
            logger.debug("session reporter: ignored a call without a client id")
        elif isinstance(value, str) and len(value) > MAX_ID_CHARS:
            self.truncated += 1
        return cleaned

    def _repair_user_id(self, value: Any) -> str | None:
        if isinstance(value, str) and len(value) > MAX_ID_CHARS:
            self.truncated += 1
        return _clean_user_id(value)

    def _failed(self, where: str) -> None:
        self.errors += 1
        try:
            logger.debug("session reporter: %s failed", where, exc_info=True)
        except Exception:  # noqa: BLE001, S110 - even a broken log handler must not raise
            pass

    # -- the table, for the BBS and the snapshots -----------------------------

    def sessions(self) -> list[SessionInfo]:
        """The sessions the reporter knows, oldest first."""
        try:
            rows = list(self._sessions.items())  # one atomic copy under the GIL
            infos = [SessionInfo(cid, user, state, at) for cid, (user, state, at) in rows]
            infos.sort(key=lambda info: (info.connected_at, info.client_id))
            return infos
        except Exception:  # noqa: BLE001 - the BBS must never see our errors
            self._failed("sessions")
            return []

    def request_snapshot(self) -> None:
        """Send a full snapshot soon (for instance after the BBS reloaded)."""
        self._resync = True
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False when misconfigured: calls are accepted but nothing is sent."""
        return self._client is not None

    @property
    def running(self) -> bool:
        """True while the sender thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> SessionReporter:
        """Start the background sender (idempotent); returns self."""
        try:
            if self._thread is not None or self._closed or not self.enabled:
                return self
            self._thread = threading.Thread(target=self._run, name="mtbbs-session-reporter",
                                            daemon=True)
            self._thread.start()
        except Exception:  # noqa: BLE001 - the BBS must never see our errors
            self._failed("start")
        return self

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was sent; False on timeout.

        This blocks: tests and shutdown paths use it, the BBS's hot path must not.
        """
        try:
            deadline = time.monotonic() + max(0.0, float(timeout))
            self.request_wake()
            while time.monotonic() < deadline:
                if not self._queue and not self._pending and self._idle.is_set() \
                        and not self._resync:
                    return True
                time.sleep(0.005)
            return False
        except Exception:  # noqa: BLE001 - the BBS must never see our errors
            self._failed("flush")
            return False

    def request_wake(self) -> None:
        """Wake the sender now (it sleeps between batches and snapshots)."""
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued and stop the sender, in at most ``timeout`` seconds.

        The sender makes one last attempt (no backoff) for what it holds;
        whatever could not be sent is counted in ``unsent`` and logged.
        """
        try:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._wake.set()
            thread = self._thread
            if thread is not None:
                thread.join(max(0.0, float(timeout)))
            # Read once the sender stopped (or gave up): these are the losses.
            self.unsent = len(self._queue) + len(self._pending)
            self._log_close(thread is not None and thread.is_alive())
            client = self._client
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - the BBS must never see our errors
                    logger.debug("session reporter: closing the Redis client failed")
        except Exception:  # noqa: BLE001 - the BBS must never see our errors
            self._failed("close")

    def _log_close(self, still_sending: bool) -> None:
        if self.unsent or self.dropped:
            why = ("still sending when the close timeout ran out" if still_sending
                   else f"Redis {self._redacted} did not take them")
            logger.warning("session reporter closed: %d events sent, %d not sent (%s), "
                           "%d dropped earlier (queue full)", self.sent, self.unsent, why,
                           self.dropped)
        else:
            logger.info("session reporter closed: %d events sent, none lost", self.sent)

    async def aclose(self, timeout: float = 5.0) -> None:
        """:meth:`close` without blocking the event loop."""
        import asyncio

        try:
            await asyncio.to_thread(self.close, timeout)
        except Exception:  # noqa: BLE001 - the BBS must never see our errors
            self._failed("aclose")

    def __enter__(self) -> SessionReporter:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> SessionReporter:
        return self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def stats(self) -> dict[str, int]:
        """The counters, the queue length and the events awaiting delivery."""
        return {
            "queued": self.queued, "sent": self.sent, "dropped": self.dropped,
            "errors": self.errors, "invalid": self.invalid, "truncated": self.truncated,
            "unknown": self.unknown, "refused": self.refused, "batches": self.batches,
            "snapshots": self.snapshots, "unsent": self.unsent, "queue": len(self._queue),
            "pending": len(self._pending), "sessions": len(self._sessions),
        }

    # -- the sender thread ---------------------------------------------------------

    def _run(self) -> None:
        settings = self._settings
        poll = max(settings.linger, MIN_POLL_S)
        backoff = 0.0
        down_since: float | None = None
        next_snapshot = 0.0  # a snapshot first: it clears what a previous run left
        last_event = time.monotonic()
        while True:
            try:
                stopping = self._stop.is_set()
                if not self._pending:
                    self._idle.clear()
                    if self._queue:
                        last_event = time.monotonic()
                    due = self._resync or time.monotonic() >= next_snapshot
                    self._fill(snapshot=due)
                    if due:
                        next_snapshot = time.monotonic() + settings.snapshot_interval
                if self._pending:
                    self._idle.clear()
                    if self._send_pending():
                        if down_since is not None:
                            logger.warning("session reporter: Redis %s reachable again after "
                                           "%.1f s; sending a snapshot", self._redacted,
                                           time.monotonic() - down_since)
                            down_since = None
                            self._resync = True
                        backoff = 0.0
                        continue
                    if down_since is None:
                        down_since = time.monotonic()
                        logger.warning("session reporter: Redis %s unreachable; holding up to "
                                       "%d events, retrying with backoff", self._redacted,
                                       settings.max_queue)
                    if stopping:
                        return
                    backoff = min(settings.backoff_max,
                                  backoff * 2 if backoff else settings.backoff_initial)
                    logger.debug("session reporter: retrying in %.2f s", backoff)
                    self._stop.wait(backoff)
                    continue
                self._idle.set()
                if stopping:
                    return
                now = time.monotonic()
                until_snapshot = max(0.0, next_snapshot - now)
                if now - last_event < settings.park_after:
                    # Active: look again after ``poll``; calls do not wake us.
                    if self._wake.wait(min(poll, until_snapshot)):
                        self._wake.clear()
                    continue
                # Quiet for a while: sleep until a call (or close, flush, the
                # next snapshot) wakes us. The flag is raised before the last
                # look at the queue, so a call that appends after that look
                # sees it and wakes us.
                self._parked = True
                try:
                    if not self._queue and not self._resync and not self._stop.is_set():
                        self._wake.wait(until_snapshot)
                finally:
                    self._parked = False
                self._wake.clear()
            except Exception:
                # A bug here must not kill the thread: count it, pause, go on.
                self.errors += 1
                logger.exception("session reporter: sender error")
                self._pending.clear()
                self._resync = True
                if self._stop.wait(1.0):
                    return

    def _fill(self, *, snapshot: bool) -> None:
        """Move queued events into the pending batch (all of them before a snapshot)."""
        queue = self._queue
        pending = self._pending
        limit = len(queue) if snapshot else self._settings.batch_size
        for _ in range(limit):
            try:
                item = queue.popleft()
            except IndexError:
                break
            entry = self._entry_for(item)
            if entry is not None:
                pending.append(entry)
        if snapshot:
            self._resync = False
            entry = self._snapshot_entry()
            if entry is not None:
                pending.append(entry)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _event_entry(self, event: Callable[[], SessionEvent],
                     fallback: Callable[[], SessionEvent]) -> dict[str, Any] | None:
        """Encode (and sign) an event; retry once with sanitized text."""
        for build in (event, fallback):
            try:
                data = encode(build())
            except Exception as exc:  # noqa: BLE001 - the BBS must never see our errors
                logger.debug("session reporter: event not encodable: %s", exc)
                continue
            fields: dict[str, Any] = {"m": data}
            if self._host_key is not None:
                fields["sig"] = auth.sign(self._host_key, data)
            return fields
        self.invalid += 1
        return None

    def _entry_for(self, item: _Item) -> dict[str, Any] | None:
        kind, client_id, user_id, state, connected_at, at = item
        seq = self._next_seq()
        with_state = kind != DISCONNECTED

        def build(clean: Callable[[str | None], str | None]) -> SessionEvent:
            return SessionEvent(
                host=self.host, epoch=self.epoch, seq=seq, observed_at=at, kind=kind,
                client_id=clean(client_id) or "?", user_id=clean(user_id),
                state=state if with_state else None,
                connected_at=connected_at if with_state else None,
            )

        return self._event_entry(lambda: build(lambda s: s), lambda: build(_sanitize))

    def _snapshot_entry(self) -> dict[str, Any] | None:
        rows = self.sessions()
        seq = self._next_seq()
        at = _now()

        def build(infos: list[SessionInfo]) -> SessionEvent:
            return SessionEvent(host=self.host, epoch=self.epoch, seq=seq, observed_at=at,
                                kind=SNAPSHOT, sessions=tuple(infos))

        entry = self._event_entry(lambda: build(rows), lambda: build(_clean_rows(rows)))
        if entry is None and rows:
            # Too big for one message: keep the longest-lived sessions that fit.
            kept = _clean_rows(rows)
            while kept and entry is None:
                kept = kept[: len(kept) * 3 // 4]
                attempt = functools.partial(build, kept)
                entry = self._event_entry(attempt, attempt)
            logger.warning("session reporter: snapshot of %d sessions exceeds %d bytes; sent "
                           "%d", len(rows), MAX_MESSAGE_BYTES, len(kept))
        if entry is not None:
            self.snapshots += 1
        return entry

    def _send_pending(self) -> bool:
        """Send the pending batch in pipelines; True when all of it went out."""
        settings = self._settings
        stream = self._key_space.sessions_stream(self.host)
        pending = self._pending
        while pending:
            chunk = pending[: settings.batch_size]
            try:
                pipe = self._client.pipeline(transaction=False)
                for fields in chunk:
                    pipe.xadd(stream, fields, maxlen=settings.stream_maxlen, approximate=True)
                pipe.execute()
            except Exception as exc:  # noqa: BLE001 - the BBS must never see our errors
                # Connection refused, reset, timeout, a Redis error reply:
                # keep the batch (same seq numbers, so a reader can tell a
                # resend) and let the caller back off.
                self.errors += 1
                logger.debug("session reporter: send failed: %s: %s", type(exc).__name__, exc)
                return False
            del pending[: len(chunk)]
            self.sent += len(chunk)
            self.batches += 1
        return True


def _clean_rows(rows: list[SessionInfo]) -> list[SessionInfo]:
    return [SessionInfo(_sanitize(r.client_id) or "?", _sanitize(r.user_id), r.state,
                        r.connected_at) for r in rows]


__all__ = ["MAX_ID_CHARS", "SESSION_STATES", "ReporterSettings", "SessionReporter",
           "read_host_key"]
