"""Settings of the collector (``[collector]``) and of its exporter (``[exporter]``).

Frozen dataclasses filled by :func:`wire.config.load_section` at the
command-line edge and passed down; nothing here reads the environment. The
status CLI and the exporter read ``[collector]`` too, so that they judge
staleness and a stalled collector by the same thresholds as the collector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.config import positive, setting


def _at_least_one(value: Any) -> str | None:
    return None if value >= 1 else "must be 1 or more"


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65_535 else "must be a TCP port (0-65535)"


def _start_id(value: Any) -> str | None:
    return None if value in ("0", "$") else "must be '0' (whole stream) or '$' (new entries only)"


@dataclass(frozen=True)
class CollectorSettings:
    """The ``[collector]`` section."""

    name: str | None = setting(None, "consumer name in the group (default: <hostname>-<pid>); "
                               "give a fixed name to resume its own pending entries after a "
                               "restart")
    batch_size: int = setting(500, "entries read per round, over all the streams read",
                              check=_at_least_one)
    block_ms: int = setting(1000, "longest wait of one XREADGROUP for new entries (ms)",
                            check=_at_least_one)
    poll_interval_ms: int = setting(100, "a collector reading more host streams than one "
                                    "XREADGROUP takes (256) cannot block on them all: caught "
                                    "up, it reads them again after this long (ms)",
                                    check=_at_least_one)
    discovery_interval_s: float = setting(5.0, "seconds between passes over the keyspace "
                                          "(SCAN) that find the streams of new hosts",
                                          check=positive)
    ring_timeout_s: float = setting(15.0, "a collector whose heartbeat is older than this "
                                    "leaves the ring: the others share its hosts and claim "
                                    "its pending entries", check=positive)
    start_id: str = setting("0", "where a newly created consumer group starts: '0' ingests what "
                            "agents published before the first collector ran, '$' skips it",
                            check=_start_id)
    history_length: int = setting(2016, "CSV lines kept per host in its history list (2016 = "
                                  "one week of 5-minute reports)", check=_at_least_one)
    claim_min_idle_s: float = setting(60.0, "a pending entry idle this long belongs to a dead "
                                      "consumer and is claimed (XAUTOCLAIM)", check=positive)
    claim_interval_s: float = setting(10.0, "seconds between XAUTOCLAIM rounds", check=positive)
    max_deliveries: int = setting(5, "an entry delivered more often than this goes to the "
                                  "dead-letter stream", check=_at_least_one)
    dead_letter_maxlen: int = setting(10_000, "approximate length the dead-letter stream is "
                                      "trimmed to", check=_at_least_one)
    max_entry_bytes: int = setting(65_536, "largest stream entry (its field names and values) "
                                   "the collector decodes; a larger one goes to the "
                                   "dead-letter stream with only a prefix of its payload",
                                   check=_at_least_one)
    dead_letter_payload_bytes: int = setting(4096, "bytes of the original payload kept in a "
                                             "dead letter", check=positive)
    host_keys_file: Path | None = setting(None, "file of 'host-id secret' lines; when set, every "
                                          "entry must carry a valid signature of its host")
    stale_warning_intervals: float = setting(3.0, "a host silent for this many of its "
                                             "reporting intervals is stale at WARNING",
                                             check=positive)
    stale_critical_intervals: float = setting(5.0, "... and at CRITICAL after this many",
                                              check=positive)
    sweep_interval_s: float = setting(5.0, "seconds between staleness sweeps", check=positive)
    heartbeat_interval_s: float = setting(5.0, "seconds between heartbeats of the collector",
                                          check=positive)
    stall_after_s: float = setting(60.0, "the status CLI reports the collectors as stalled "
                                   "when the newest heartbeat is older than this",
                                   check=positive)
    forget_consumer_after_s: float = setting(86_400.0, "a consumer without pending entries, "
                                             "idle this long, is removed from the group",
                                             check=positive)
    evaluate: bool = setting(True, "enqueue an rq evaluation job when a host's state changes")
    evaluation_ttl_s: int = setting(60, "lifetime of the per-host 'evaluation pending' mark "
                                    "that coalesces evaluation jobs", check=_at_least_one)
    max_backoff_s: float = setting(30.0, "longest wait between retries while Redis is "
                                   "unreachable", check=positive)

    def __post_init__(self) -> None:
        # Checked here rather than per field: it is the pair that must agree.
        from wire.errors import ConfigError

        if self.stale_critical_intervals < self.stale_warning_intervals:
            raise ConfigError("collector.stale_critical_intervals",
                              "must not be less than stale_warning_intervals")
        if self.ring_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError("collector.ring_timeout_s",
                              "must be more than heartbeat_interval_s")


@dataclass(frozen=True)
class ExporterSettings:
    """The ``[exporter]`` section (Prometheus exporter)."""

    port: int = setting(9100, "TCP port of the /metrics endpoint", check=_port)
    bind: str = setting("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    host_series: bool = setting(False, "also export each host's series (about 12 a host); "
                                "by default only fleet aggregates, which a big fleet's scrape "
                                "answers in time")
    password_file: Path | None = setting(None, "file whose first line is the password of HTTP "
                                         "basic auth (any user name) for /metrics and the web "
                                         "page; required to bind beyond loopback unless open")
    open: bool = setting(False, "serve on a non-loopback bind without a password, on purpose "
                         "(a private network, or a proxy in front that authenticates)")
