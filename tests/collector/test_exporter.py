"""The Prometheus exporter: fleet state on every scrape, parsed back."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from collector.exporter import registry_for
from collector.settings import CollectorSettings


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_scrape(redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
                make_collector: Any) -> None:
    publish(report("bbs-01", 1, disk=92.5, sessions=3, database_ok=False))
    publish(report("bbs-02", 1, disk=40.0, rss=600.0, sessions=0))
    collector = make_collector(name="exp")
    collector.drain()
    collector.heartbeat()
    # Entries the collector has not read yet are not lag: its heartbeat says
    # what it last found, caught up.
    redis_client.xadd(keys.reports_stream("bbs-01"), {"m": b"junk"})
    registry = registry_for(redis_client, keys, CollectorSettings(), host_series=True)
    found = samples(generate_latest(registry).decode())
    assert found[("mtbbs_up", ())] == 1
    assert found[("mtbbs_hosts", ())] == 2
    assert found[("mtbbs_hosts_by_status", (("status", "CRITICAL"),))] == 1
    assert found[("mtbbs_sessions_active", (("host", "bbs-01"),))] == 3
    assert found[("mtbbs_disk_usage_percent", (("host", "bbs-01"),))] == 92.5
    assert found[("mtbbs_memory_process_rss_bytes", (("host", "bbs-02"),))] == 600 * 1024 * 1024
    assert found[("mtbbs_component_healthy", (("component", "database"), ("host", "bbs-01")))] == 0
    assert found[("mtbbs_component_healthy", (("component", "memory"), ("host", "bbs-02")))] == 0
    assert found[("mtbbs_component_healthy", (("component", "disk_space"),
                                              ("host", "bbs-02")))] == 1
    assert found[("mtbbs_host_status", (("host", "bbs-01"),))] == 2
    assert found[("mtbbs_host_status", (("host", "bbs-02"),))] == 1
    assert 0 <= found[("mtbbs_last_seen_age_seconds", (("host", "bbs-01"),))] < 60
    assert found[("mtbbs_collector_lag", ())] == 0
    assert found[("mtbbs_collector_lag_seconds", ())] == 0
    assert found[("mtbbs_collector_pending", ())] == 0
    assert found[("mtbbs_collector_heartbeat_age_seconds", (("collector", "exp"),))] < 60
    assert found[("mtbbs_collector_processed_total", (("collector", "exp"),))] == 2
    assert found[("mtbbs_collector_streams", (("collector", "exp"),))] == 2
    assert found[("mtbbs_collector_ring_members", (("collector", "exp"),))] == 1
    assert found[("mtbbs_dead_letters", ())] == 0


def test_the_lag_is_what_running_collectors_say_in_their_heartbeats(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    publish(report("bbs-01", 1))
    collector = make_collector(name="busy", batch_size=2)
    collector.drain()
    # A backlog on bbs-01's stream: one round reads part of it, more waits.
    for seq in range(2, 10):
        publish(report("bbs-01", seq))
    time.sleep(0.2)
    assert collector.read(None) == 2
    collector.heartbeat()
    # A collector that stopped cleanly says nothing about lag any more.
    gone = make_collector(name="gone")
    gone.heartbeat()
    redis_client.hset(keys.collector("gone"), mapping={"lag": "500", "lag_s": "900"})
    gone.heartbeat("stopped")
    found = samples(generate_latest(registry_for(redis_client, keys,
                                                 CollectorSettings())).decode())
    assert found[("mtbbs_collector_lag", ())] == 2
    assert 0.2 <= found[("mtbbs_collector_lag_seconds", ())] < 60
    assert found[("mtbbs_collector_streams", (("collector", "busy"),))] == 1
    assert ("mtbbs_collector_streams", (("collector", "gone"),)) not in found
    # Caught up again, its next heartbeat says so.
    collector.drain()
    collector.heartbeat()
    found = samples(generate_latest(registry_for(redis_client, keys,
                                                 CollectorSettings())).decode())
    assert found[("mtbbs_collector_lag", ())] == 0
    assert found[("mtbbs_collector_lag_seconds", ())] == 0


def test_a_default_scrape_has_the_fleets_aggregates_and_no_host_series(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    publish(report("bbs-01", 1, disk=92.5, sessions=3, database_ok=False))
    publish(report("bbs-02", 1, disk=95.0, rss=600.0, sessions=2))
    publish(report("bbs-03", 1, sessions=4))
    publish(report("bbs-04", 1, sessions=0, observed_at=time.time() - 7200))
    collector = make_collector(name="exp")
    collector.drain()
    collector.heartbeat()
    # bbs-04 last reported two hours ago (by Redis's clock, as readers judge).
    stale_ms = int(time.time() * 1000) - 7_200_000
    redis_client.hset(keys.host("bbs-04"), "last_seen_ms", str(stale_ms))
    found = samples(generate_latest(registry_for(redis_client, keys,
                                                 CollectorSettings())).decode())
    assert found[("mtbbs_up", ())] == 1
    assert found[("mtbbs_hosts", ())] == 4
    assert found[("mtbbs_hosts_by_status", (("status", "OK"),))] == 1
    assert found[("mtbbs_hosts_by_status", (("status", "WARNING"),))] == 1
    assert found[("mtbbs_hosts_by_status", (("status", "CRITICAL"),))] == 2
    assert found[("mtbbs_hosts_by_status", (("status", "UNKNOWN"),))] == 0
    assert found[("mtbbs_hosts_stale", (("level", "critical"),))] == 1
    assert found[("mtbbs_hosts_stale", (("level", "warning"),))] == 0
    assert found[("mtbbs_hosts_unhealthy", (("component", "database"),))] == 1
    assert found[("mtbbs_hosts_unhealthy", (("component", "disk_space"),))] == 2
    assert found[("mtbbs_hosts_unhealthy", (("component", "memory"),))] == 1
    assert found[("mtbbs_fleet_sessions_active", ())] == 9
    assert found[("mtbbs_fleet_last_seen_age_max_seconds", ())] >= 7200
    assert found[("mtbbs_collector_processed_total", (("collector", "exp"),))] == 4
    assert not any(labels and labels[0][0] == "host" for _, labels in found)


def test_scrape_without_redis() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    from wire.keys import KeySpace

    found = samples(generate_latest(registry_for(client, KeySpace(),
                                                 CollectorSettings())).decode())
    assert found == {("mtbbs_up", ()): 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
@pytest.mark.parametrize(("flags", "environment", "host_series"), [
    ((), {}, False),
    (("--host-series",), {}, True),
    ((), {"MTBBS_EXPORTER_HOST_SERIES": "true"}, True),
])
def test_exporter_process(command: Any, clean_env: dict[str, str], redis_url: str,
                          publish: Any, report: Any, make_collector: Any,
                          flags: tuple[str, ...], environment: dict[str, str],
                          host_series: bool) -> None:
    publish(report("bbs-01", 1))
    make_collector().drain()
    port = free_port()
    process = subprocess.Popen(
        [command("mtbbs-collector"), "exporter", "--port", str(port), "--bind", "127.0.0.1",
         *flags],
        env={**clean_env, "MTBBS_REDIS_URL": redis_url, **environment}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "exporter did not answer"
                time.sleep(0.1)
        found = samples(text)
        assert found[("mtbbs_up", ())] == 1
        assert found[("mtbbs_hosts_by_status", (("status", "OK"),))] == 1
        disk = found.get(("mtbbs_disk_usage_percent", (("host", "bbs-01"),)))
        assert disk == (50.1 if host_series else None)
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == 0
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")


@pytest.mark.e2e
def test_exporter_port_in_use(command: Any, clean_env: dict[str, str], redis_url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        done = subprocess.run([command("mtbbs-collector"), "exporter", "--port", str(port)],
                              env={**clean_env, "MTBBS_REDIS_URL": redis_url},
                              capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 3
    assert done.stderr.strip().startswith("error: cannot listen on 127.0.0.1:")


def test_exporter_listens_with_reuse_address() -> None:
    """The exporter's server (as serve() starts it) sets SO_REUSEADDR, so a
    restart is not refused by connections in TIME-WAIT."""
    from prometheus_client import CollectorRegistry, make_wsgi_app

    from collector.web.server import start

    server, thread = start(make_wsgi_app(CollectorRegistry()), "127.0.0.1", 0)
    try:
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "collector.md"
# Units Prometheus's naming rules forbid in names: base units only.
ABBREVIATED = re.compile(r"_(mb|kb|gb|ms|us|ns|sec|secs|mins?|hours?)(_|$)")


def scraped(redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
            make_collector: Any, host_series: bool = True) -> str:
    publish(report("bbs-01", 1, disk=92.5, sessions=3, database_ok=False))
    publish(report("bbs-02", 1, rss=600.0))
    collector = make_collector(name="exp")
    collector.drain()
    collector.heartbeat()
    return generate_latest(registry_for(redis_client, keys, CollectorSettings(),
                                        host_series)).decode()


def test_the_exposition_follows_prometheus_conventions(
        redis_client: redis.Redis, keys: Any, publish: Any, report: Any,
        make_collector: Any) -> None:
    text = scraped(redis_client, keys, publish, report, make_collector)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, family in families.items():
        assert not ABBREVIATED.search(name), name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), name
        else:
            assert family.type == "gauge" and not name.endswith("_total"), name
    # What only grows while a collector runs is a counter.
    assert families["mtbbs_collector_processed"].type == "counter"
    assert families["mtbbs_collector_dead_lettered"].type == "counter"
    # The docs' table lists exactly the exposed series names, those of every
    # host marked as such.
    table = re.findall(r"^\| `(mtbbs_[a-z_]+)`( \(per host\))? \|",
                       DOCS.read_text(encoding="utf-8"), re.MULTILINE)
    exposed = {s.name for family in families.values() for s in family.samples}
    assert {name for name, _ in table} == exposed
    default = text_string_to_metric_families(generate_latest(registry_for(
        redis_client, keys, CollectorSettings())).decode())
    assert {name for name, per_host in table if not per_host} == {
        s.name for family in default for s in family.samples}


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (Debian package prometheus)")
def test_promtool_accepts_the_exposition(redis_client: redis.Redis, keys: Any, publish: Any,
                                         report: Any, make_collector: Any) -> None:
    text = scraped(redis_client, keys, publish, report, make_collector)
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
