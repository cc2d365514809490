"""The Prometheus exporter: fleet state read from Redis on every scrape.

A custom prometheus_client collector, so the figures are never older than
the scrape and the exporter keeps no state: several exporters may run, and
one restarts without losing anything. When Redis cannot be read, a scrape
still answers, with ``mtbbs_up 0`` and nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import make_wsgi_app

from collector.fleet import FleetView, read_fleet
from collector.selfmon import total
from collector.settings import CollectorSettings
from wire.keys import KeySpace
from wire.state import STALE_CRITICAL, STALE_WARNING
from wire.status import Status

logger = logging.getLogger(__name__)

# The agents report megabytes (the seed's fields); Prometheus wants bytes.
MIB = 1024 * 1024

_STALE_VALUE = {STALE_WARNING: 1, STALE_CRITICAL: 2}


class FleetCollector:
    """Builds the metric families from the fleet's state on each ``collect``.

    By default a scrape carries the fleet's aggregates (hosts by status,
    stale hosts, unhealthy components, sessions, the longest silence): a
    handful of series whatever the fleet's size, so that the scrape of a
    big fleet stays within Prometheus's timeout. With ``host_series`` it
    carries every host's own series as well (about 12 a host).
    """

    def __init__(self, client: Any, keys: KeySpace, settings: CollectorSettings,
                 host_series: bool = False) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.host_series = host_series

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on what Redis holds."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        up = GaugeMetricFamily("mtbbs_up", "1 when Redis was readable for this scrape")
        try:
            fleet = read_fleet(self.client, self.keys, self.settings, whole=False)
        except (redis.RedisError, OSError) as exc:
            logger.warning("scrape: cannot read Redis (%s: %s)", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("mtbbs_hosts", "hosts in the fleet index", value=len(fleet.hosts))
        yield from fleet_families(fleet)
        if self.host_series:
            yield from host_families(fleet)
        yield from collector_families(fleet)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ("host",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def fleet_families(fleet: FleetView) -> Iterator[Metric]:
    """The fleet's aggregates: as many series for ten hosts as for 100,000."""
    by_status = _gauge("mtbbs_hosts_by_status", "hosts in each status (staleness included)",
                       ("status",))
    statuses = Counter(view.status for view in fleet.hosts)
    for status in Status:
        by_status.add_metric([status.name], statuses[status])
    stale = _gauge("mtbbs_hosts_stale", "hosts stale at each level", ("level",))
    levels = Counter(view.stale for view in fleet.hosts)
    for level in (STALE_WARNING, STALE_CRITICAL):
        stale.add_metric([level], levels[level])
    unhealthy = _gauge("mtbbs_hosts_unhealthy", "hosts whose check of this component "
                       "reported unhealthy", ("component",))
    components = Counter(name for view in fleet.hosts
                         for name, fields in view.state.checks.items()
                         if fields.get("healthy") is False)
    for name in sorted(components):
        unhealthy.add_metric([name], components[name])
    yield from (by_status, stale, unhealthy)
    yield GaugeMetricFamily("mtbbs_fleet_sessions_active", "active sessions over every host",
                            value=sum(view.sessions or 0 for view in fleet.hosts))
    yield GaugeMetricFamily("mtbbs_fleet_last_seen_age_max_seconds", "seconds since the "
                            "last report of the host silent longest (Redis clock)",
                            value=max((view.age_s for view in fleet.hosts), default=0.0))


def host_families(fleet: FleetView) -> Iterator[Metric]:
    """Every host's own series."""
    sessions = _gauge("mtbbs_sessions_active", "active telnet sessions")
    disk = _gauge("mtbbs_disk_usage_percent", "disk usage of the BBS data directory (%)")
    rss = _gauge("mtbbs_memory_process_rss_bytes", "resident memory of the MTBBS process")
    system = _gauge("mtbbs_memory_system_percent", "memory usage of the whole system (%)")
    healthy = _gauge("mtbbs_component_healthy", "1 when the check reported healthy",
                     ("host", "component"))
    status = _gauge("mtbbs_host_status", "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN "
                    "(staleness included)")
    stale = _gauge("mtbbs_host_stale", "0 fresh, 1 stale at WARNING, 2 stale at CRITICAL")
    age = _gauge("mtbbs_last_seen_age_seconds", "seconds since the last report (Redis clock)")
    skew = _gauge("mtbbs_clock_skew_seconds", "agent clock minus Redis clock at the last "
                  "report")
    for view in fleet.hosts:
        labels = [view.host]
        if view.sessions is not None:
            sessions.add_metric(labels, view.sessions)
        for family, check, field, scale in ((disk, "disk_space", "percent_used", 1),
                                            (rss, "memory", "process_rss_mb", MIB),
                                            (system, "memory", "system_percent", 1)):
            value = view.figure(check, field)
            if value is not None:
                family.add_metric(labels, value * scale)
        for name, fields in sorted(view.state.checks.items()):
            flag = fields.get("healthy")
            if isinstance(flag, bool):
                healthy.add_metric([view.host, name], 1 if flag else 0)
        status.add_metric(labels, int(view.status))
        stale.add_metric(labels, _STALE_VALUE.get(view.stale, 0))
        age.add_metric(labels, view.age_s)
        if view.state.clock_skew_s is not None:
            skew.add_metric(labels, view.state.clock_skew_s)
    yield from (sessions, disk, rss, system, healthy, status, stale, age, skew)


def collector_families(fleet: FleetView) -> Iterator[Metric]:
    """The collectors' own health: the running collectors' figures (from
    their heartbeats), heartbeats and counters."""
    # Each running collector reads hosts of its own, so its figures add up
    # (ages: the worst); a collector out of the ring no longer counts.
    sums = total(fleet.running)
    yield GaugeMetricFamily("mtbbs_collector_lag", "entries the running collectors read in "
                            "their last round while more were waiting on their host streams "
                            "(0 when caught up)", value=sums["lag"])
    yield GaugeMetricFamily("mtbbs_collector_lag_seconds", "age of the oldest entry a running "
                            "collector read in its last round while more were waiting",
                            value=sums["lag_s"])
    yield GaugeMetricFamily("mtbbs_collector_pending", "entries of the running collectors' "
                            "host streams delivered but not yet acknowledged",
                            value=sums["pending"])
    yield GaugeMetricFamily("mtbbs_collector_oldest_pending_seconds", "age of the oldest "
                            "entry a running collector holds back until an older entry of "
                            "its stream is applied", value=sums["oldest_pending_s"])
    yield GaugeMetricFamily("mtbbs_dead_letters", "entries in the dead-letter stream",
                            value=fleet.dead_letters)
    beat = _gauge("mtbbs_collector_heartbeat_age_seconds", "seconds since the collector's "
                  "last heartbeat", ("collector",))
    # Counters (exposed with _total): they only grow while a collector
    # runs and start again from 0 when it restarts, which rate() handles.
    processed = CounterMetricFamily("mtbbs_collector_processed", "entries the collector "
                                    "handled since it started", labels=["collector"])
    dead = CounterMetricFamily("mtbbs_collector_dead_lettered", "entries the collector "
                               "dead-lettered since it started", labels=["collector"])
    streams = _gauge("mtbbs_collector_streams", "host streams a running collector reads",
                     ("collector",))
    sharing = _gauge("mtbbs_collector_ring_members", "collectors a running collector shares "
                     "the hosts with, itself included (all running collectors should agree)",
                     ("collector",))
    running = {stats.collector for stats in fleet.running}
    for collector in fleet.collectors:
        beat.add_metric([collector.name], collector.age_s)
        processed.add_metric([collector.name], collector.number("processed"))
        dead.add_metric([collector.name], collector.number("dead_lettered"))
        if collector.name in running and "streams" in collector.fields:
            streams.add_metric([collector.name], collector.number("streams"))
            sharing.add_metric([collector.name], collector.number("collectors"))
    yield from (beat, processed, dead, streams, sharing)


def registry_for(client: Any, keys: KeySpace, settings: CollectorSettings,
                 host_series: bool = False) -> CollectorRegistry:
    """A registry holding only the fleet collector (no process metrics of the exporter);
    ``host_series``: every host's series besides the fleet's aggregates."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(client, keys, settings, host_series))
    return registry


def serve(client: Any, keys: KeySpace, settings: CollectorSettings, bind: str, port: int,
          stop: threading.Event, host_series: bool = False,
          password: str | None = None) -> None:
    """Serve ``/metrics`` and the web page on ``bind:port`` until ``stop`` is set
    (behind HTTP basic auth when ``password`` is given)."""
    from collector.web.server import WebApp, start

    metrics = make_wsgi_app(registry_for(client, keys, settings, host_series))
    server, thread = start(WebApp(client, keys, settings, metrics, password), bind, port)
    logger.info("exporter listening on http://%s:%s/metrics, its web page on http://%s:%s/",
                bind, server.server_port, bind, server.server_port)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
