"""The agent daemon: runs the checks on a schedule and publishes one report per cycle.

Each cycle runs the host checks (the SQLite ``quick_check`` only when it is
due, its last result repeated in between), the telnet probe, and the seed's
uptime metrics, builds a :class:`wire.messages.Report`, appends it to the
spool and lets the publisher deliver what the spool holds. Health is logged
by :class:`agent.healthlog.HealthLog`: a line when a check changes state,
not one per cycle. ``stop()`` (wired to SIGTERM and SIGINT by the CLI)
ends the loop after the current cycle; the spool then gets one last delivery
attempt and the daemon returns.

The checks themselves come in as a callable so that this module needs only
the settings it owns; the CLI binds :func:`agent.checks.run_checks` to its
``[checks]`` settings and Redis client.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import psutil

import agent
from agent.checks import CheckSettings, check_memory, run_checks
from agent.checks.telnet import CHECK_NAME as TELNET
from agent.checks.telnet import probe_telnet
from agent.healthlog import AGENT, HealthLog
from agent.publisher import Publisher
from agent.settings import AgentSettings, ProbeSettings
from agent.spool import Spool
from wire.errors import DecodeError
from wire.keys import KeySpace
from wire.messages import FieldValue, Report, encode
from wire.state import report_status
from wire.status import Status

logger = logging.getLogger(__name__)

Checks = dict[str, dict[str, FieldValue]]
# run_integrity, previous integrity result -> {check name: fields}
CheckRunner = Callable[[bool, str | None], Mapping[str, Mapping[str, FieldValue]]]
Notify = Callable[[str], None]

UPTIME = "uptime"
INTEGRITY_AGE = "integrity_age_s"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def process_start_time(pid: int) -> float | None:
    """Unix start time of process ``pid``, or None when it cannot be read."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def uptime_fields(memory: Mapping[str, FieldValue] | None, *, now: float, boot_time: float,
                  start_time: Callable[[int], float | None] = process_start_time,
                  ) -> dict[str, FieldValue]:
    """The seed's metrics: system boot time and uptime, and the BBS process's uptime.

    The BBS process is the one the memory check found (its ``pid`` field);
    when it found none the process figures are empty.
    """
    pid = memory.get("pid") if memory else None
    started = start_time(pid) if isinstance(pid, int) and not isinstance(pid, bool) else None
    return {
        "healthy": True,
        "boot_time": _iso(boot_time),
        "uptime_seconds": int(max(0.0, now - boot_time)),
        "bbs_pid": pid if started is not None else None,
        "bbs_started_at": _iso(started) if started is not None else None,
        "bbs_uptime_seconds": int(max(0.0, now - started)) if started is not None else None,
    }


class HostChecks:
    """:func:`agent.checks.run_checks` bound to ``[checks]`` settings, for a daemon.

    Found by its port or its program name, the BBS costs a scan of every
    process (a few milliseconds per cycle, more on a busy host). The daemon
    runs the checks every cycle, so once a scan found the BBS, later cycles
    go to the same process by pid for as long as a process with that pid
    *and the same start time* exists (a reused pid is another process);
    otherwise the scan runs again. The report still says how the scan found
    it (``found_by: port`` or ``match``).
    """

    def __init__(self, settings: CheckSettings, *, redis_client: Any, keys: KeySpace,
                 start_time: Callable[[int], float | None] = process_start_time) -> None:
        self.settings = settings
        self.redis_client = redis_client
        self.keys = keys
        self.start_time = start_time
        self._cached: tuple[int, float] | None = None
        self._found_by: FieldValue = "match"
        self._cacheable = (settings.bbs_pid is None and settings.bbs_pidfile is None
                           and bool(settings.bbs_match or settings.bbs_port))

    def _settings(self) -> CheckSettings:
        if self._cached is None:
            return self.settings
        pid, started = self._cached
        if self.start_time(pid) != started:
            self._cached = None
            return self.settings
        return dataclasses.replace(self.settings, bbs_pid=pid)

    def __call__(self, run_integrity: bool,
                 previous_integrity: str | None) -> dict[str, dict[str, FieldValue]]:
        settings = self._settings() if self._cacheable else self.settings
        checks = run_checks(settings, redis_client=self.redis_client, keys=self.keys,
                            run_integrity=run_integrity, previous_integrity=previous_integrity)
        if not self._cacheable:
            return checks
        memory = checks.get("memory", {})
        if settings is not self.settings:
            if memory.get("pid") is None:
                # Gone between the look and the measurement: scan after all.
                self._cached = None
                checks["memory"] = self._scan()
            else:
                memory["found_by"] = self._found_by
            return checks
        self._remember(memory)
        return checks

    def _scan(self) -> dict[str, FieldValue]:
        s = self.settings
        memory = check_memory(match=s.bbs_match, port=s.bbs_port or None,
                              rss_threshold_mb=s.process_rss_mb,
                              system_threshold_percent=s.system_memory_percent).to_fields()
        self._remember(memory)
        return memory

    def _remember(self, memory: Mapping[str, FieldValue]) -> None:
        pid = memory.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool):
            started = self.start_time(pid)
            self._cached = (pid, started) if started is not None else None
            self._found_by = memory.get("found_by") or "match"


class Daemon:
    """One agent: a schedule, the checks, the spool and the publisher."""

    def __init__(self, settings: AgentSettings, probe: ProbeSettings, *, host: str,
                 spool: Spool, publisher: Publisher, run_checks: CheckRunner,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 boot_time: Callable[[], float] = psutil.boot_time,
                 notify: Notify | None = None, setup: str = "") -> None:
        self.settings = settings
        self.probe = probe
        self.host = host
        self.spool = spool
        self.publisher = publisher
        self.run_checks = run_checks
        self.clock = clock
        self.wall = wall
        self.boot_time = boot_time
        self.notify = notify or (lambda _message: None)
        # What the start-up line adds about the parts the daemon does not own
        # (Redis, the database, the limits): the caller knows them.
        self.setup = setup
        self.health_log = HealthLog(clock)
        self.cycles = 0
        self._stop = threading.Event()
        self._last_integrity: str | None = None
        self._integrity_at: float | None = None
        self._metrics_at: float | None = None

    # -- control ------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end after the current cycle (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stop.is_set()

    # -- one cycle ----------------------------------------------------------
    def _due(self, last: float | None, every: float, now: float) -> bool:
        # Half an interval of slack: a cycle that comes a hair early must not
        # push a 300 s task to 360 s.
        return last is None or now - last >= every - self.settings.interval / 2

    def measure(self) -> Checks:
        """Run every check of one cycle; never raises for a problem of the host."""
        now = self.clock()
        integrity = self._due(self._integrity_at, self.settings.integrity_interval, now)
        checks: Checks
        try:
            checks = {name: dict(fields) for name, fields
                      in self.run_checks(integrity, self._last_integrity).items()}
        except Exception as exc:  # noqa: BLE001 - the loop must outlive a broken check
            logger.error("The checks failed: %s: %s", type(exc).__name__, exc)
            checks = {AGENT: {"healthy": False,
                              "error": f"checks failed: {type(exc).__name__}"[:200]}}
        database = checks.get("database")
        if integrity and database is not None and database.get("integrity_checked"):
            self._integrity_at = now
            result = database.get("integrity")
            self._last_integrity = result if isinstance(result, str) else None
        elif integrity and database is None:
            self._integrity_at = now
        if database is not None and self._integrity_at is not None \
                and self._last_integrity is not None:
            # How old the shown integrity result is, so that readers can say
            # "integrity ok, checked 4 min ago" instead of passing it off as new.
            database[INTEGRITY_AGE] = round(now - self._integrity_at, 1)
        if self.probe.enabled:
            checks[TELNET] = dict(probe_telnet(self.probe.host, self.probe.port,
                                               timeout=self.probe.timeout,
                                               threshold_ms=self.probe.slow_ms,
                                               quit_text=self.probe.quit_text).as_fields())
        if self._due(self._metrics_at, self.settings.metrics_interval, now):
            self._metrics_at = now
            try:
                checks[UPTIME] = uptime_fields(checks.get("memory"), now=self.wall(),
                                               boot_time=self.boot_time())
            except (psutil.Error, OSError) as exc:
                logger.debug("uptime unavailable: %s", exc)
        return checks

    def _report(self, checks: Checks, observed_at: float) -> Callable[[int, int], Report]:
        def make(epoch: int, seq: int) -> Report:
            return Report(host=self.host, agent_version=agent.__version__, epoch=epoch, seq=seq,
                          observed_at=observed_at, checks=checks,
                          interval=self.settings.interval)
        return make

    def _valid(self, checks: Checks, observed_at: float) -> Checks:
        """``checks`` with any entry the wire would refuse replaced by an error entry."""
        try:
            encode(self._report(checks, observed_at)(0, 0))
            return checks
        except DecodeError:
            pass
        valid: Checks = {}
        for name, fields in checks.items():
            try:
                encode(self._report({name: fields}, observed_at)(0, 0))
                valid[name] = fields
            except DecodeError as exc:
                logger.error("Check %s produced an invalid result (%s); reported as unhealthy",
                             name, exc.reason)
                valid[name] = {"healthy": False, "error": f"invalid result: {exc.reason}"[:200]}
        return valid

    def cycle(self) -> Report:
        """Measure, spool one report, log its health; return the report."""
        observed_at = self.wall()
        checks = self._valid(self.measure(), observed_at)
        report = self.spool.add(self._report(checks, observed_at))
        self.cycles += 1
        self.health_log.update(report.checks)
        logger.debug("Report epoch=%d seq=%d spooled", report.epoch, report.seq)
        return report

    # -- the loop -----------------------------------------------------------
    def run(self, *, once: bool = False, max_cycles: int | None = None) -> Report | None:
        """Cycle until stopped (or once); return the last report made."""
        last: Report | None = None
        attempts = 0
        next_cycle = self.clock()
        probe = (f"{self.probe.host}:{self.probe.port} (banner within {self.probe.slow_ms:g} ms)"
                 if self.probe.enabled else "off")
        logger.info("Agent started: host=%s, interval=%gs, integrity every %gs, probe %s, "
                    "spool=%s (epoch %d, %d waiting)%s", self.host, self.settings.interval,
                    self.settings.integrity_interval, probe, self.spool.path, self.spool.epoch,
                    len(self.spool), f"; {self.setup}" if self.setup else "")
        self.notify("READY=1")
        while not self.stopping:
            now = self.clock()
            if now >= next_cycle:
                attempts += 1
                try:
                    last = self.cycle()
                except sqlite3.Error as exc:
                    # A full disk must not stop the monitor that would report it.
                    logger.error("Cannot write this cycle's report to the spool (%s); it is "
                                 "lost", exc)
                next_cycle += self.settings.interval
                if next_cycle <= self.clock():
                    # A cycle overran (slow check, slow Redis): skip, do not pile up.
                    next_cycle = self.clock() + self.settings.interval
                self._flush(force=once)
                self.notify("WATCHDOG=1")
                if once or (max_cycles is not None and attempts >= max_cycles):
                    break
            elif self.publisher.backing_off:
                self._flush()
            wake = next_cycle
            if self.publisher.backing_off:
                wake = min(wake, self.publisher.next_attempt)
            self._stop.wait(max(0.0, wake - self.clock()))
        self.notify("STOPPING=1")
        if once:
            waiting = len(self.spool)
            if waiting:
                logger.warning("%d reports stay in the spool for the next run", waiting)
        else:
            logger.info("Agent stopping after %d cycles", self.cycles)
            self.finish()
        return last

    def _flush(self, *, force: bool = False) -> int:
        try:
            return self.publisher.flush(force=force)
        except sqlite3.Error as exc:
            # Sent but not yet forgotten: the reports go again later, and the
            # collector skips the copies it has already applied (same epoch, seq).
            logger.error("Cannot update the spool after sending (%s)", exc)
            return 0

    def finish(self) -> None:
        """One last delivery attempt for whatever is still spooled."""
        if len(self.spool) == 0:
            return
        delivered = self._flush(force=True)
        left = len(self.spool)
        if left:
            logger.warning("Stopping with %d reports spooled; they are sent at the next start",
                           left)
        elif delivered:
            logger.info("Delivered %d spooled reports before stopping", delivered)


def exit_status(report: Report | None) -> Status:
    """The health-check exit status of a report (UNKNOWN without one)."""
    if report is None:
        return Status.UNKNOWN
    return report_status(report.checks)
