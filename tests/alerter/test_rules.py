"""Rules: the seed's defaults, conditions, overrides, routes and validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from alerter.rules import (
    CRITICAL,
    OK,
    WARNING,
    Condition,
    collect_figures,
    evaluate_rule,
    load_policy,
    load_rules,
)
from wire.errors import ConfigError
from wire.messages import Report
from wire.state import HostState, parse_host_state, report_fields


def state(checks: dict[str, dict[str, Any]], stale: str = "no", host: str = "bbs-01"
          ) -> HostState:
    report = Report(host=host, agent_version="t", epoch=1, seq=1, observed_at=1.8e9,
                    checks=checks)
    return parse_host_state(host, report_fields(report, 1_800_000_000_000, stale))


def healthy() -> dict[str, dict[str, Any]]:
    return {
        "database": {"healthy": True, "integrity": "ok"},
        "sessions": {"healthy": True, "active_sessions": 3, "max_sessions": 100},
        "disk_space": {"healthy": True, "percent_used": 50.1},
        "memory": {"healthy": True, "process_rss_mb": 45.2, "system_percent": 65.3},
    }


def levels(checks: dict[str, dict[str, Any]], stale: str = "no", table: Any = None
           ) -> dict[str, int]:
    policy = load_policy(table)
    host_state = state(checks, stale)
    return {rule.name: evaluate_rule(rule, host_state).level
            for rule, applies in policy.rules_for("bbs-01") if applies}


def test_a_healthy_host_breaches_nothing() -> None:
    assert set(levels(healthy()).values()) == {OK}


@pytest.mark.parametrize(("change", "rule", "level"), [
    ({"disk_space": {"healthy": False, "percent_used": 90.0}}, "disk_space", WARNING),
    ({"disk_space": {"healthy": True, "percent_used": 89.9}}, "disk_space", OK),
    ({"memory": {"healthy": False, "process_rss_mb": 500.0, "system_percent": 10.0}},
     "memory", WARNING),
    ({"memory": {"healthy": False, "process_rss_mb": 10.0, "system_percent": 90.0}},
     "memory", WARNING),
    ({"memory": {"healthy": True, "process_rss_mb": 499.9, "system_percent": 89.9}},
     "memory", OK),
    ({"database": {"healthy": False, "integrity": "corrupt"}}, "database", CRITICAL),
    ({"sessions": {"healthy": False, "active_sessions": 101, "max_sessions": 100}},
     "sessions", WARNING),
    ({"sessions": {"healthy": True, "active_sessions": 101, "max_sessions": 100}},
     "sessions", WARNING),
    ({"sessions": {"healthy": True, "active_sessions": 100, "max_sessions": 100}},
     "sessions", OK),
    # A BBS that does not answer is CRITICAL; a slow one WARNING.
    ({"telnet": {"healthy": False, "error": "refused"}}, "telnet", CRITICAL),
    ({"telnet": {"healthy": False, "banner_ms": 2500.0, "severity": "warning"}}, "telnet",
     WARNING),
    # No BBS process is CRITICAL and alerts, though no memory threshold is crossed.
    ({"memory": {"healthy": False, "error": "no BBS process found", "severity": "critical"}},
     "memory", CRITICAL),
    # A locked database is WARNING, not corruption.
    ({"database": {"healthy": False, "severity": "warning", "error": "Database is locked"}},
     "database", WARNING),
])
def test_the_seed_thresholds(change: dict[str, Any], rule: str, level: int) -> None:
    checks = healthy()
    checks.update(change)
    assert levels(checks)[rule] == level


def test_a_missing_database_check_is_critical_but_other_missing_checks_are_not() -> None:
    checks = healthy()
    del checks["database"]
    del checks["memory"]
    result = levels(checks)
    assert result["database"] == CRITICAL
    assert result["memory"] == OK
    assert result["telnet"] == OK  # not reported: nothing to judge


def test_staleness_is_warning_then_critical() -> None:
    assert levels(healthy(), "warning")["stale"] == WARNING
    assert levels(healthy(), "critical")["stale"] == CRITICAL
    assert levels(healthy(), "no")["stale"] == OK


def test_figures_come_in_the_rules_order_then_by_name_whatever_the_hash_order() -> None:
    rule = load_policy(None).rule("memory")
    assert rule is not None
    memory = {"healthy": True, "process_rss_mb": 45.2, "system_percent": 65.3,
              "available_mb": 900.0, "zone": "a", "buffers_mb": 10.0}
    orders = set()
    for shift in range(len(memory)):
        items = list(memory.items())
        scrambled = dict(items[shift:] + items[:shift])  # another hash order
        host = state(dict(healthy(), memory=scrambled))
        orders.add(tuple(collect_figures(rule, host)))
    assert orders == {("memory.process_rss_mb", "memory.system_percent", "memory.available_mb",
                       "memory.buffers_mb", "memory.healthy", "memory.zone")}


def test_summary_and_figures_name_the_breaching_values() -> None:
    policy = load_policy(None)
    rule = policy.rule("disk_space")
    assert rule is not None
    checks = healthy()
    checks["disk_space"] = {"healthy": False, "percent_used": 92.5, "total_gb": 500.0}
    result = evaluate_rule(rule, state(checks))
    assert result.summary == "disk_space.percent_used = 92.5 (>= 90)"
    figures = collect_figures(rule, state(checks))
    assert figures["disk_space.percent_used"] == "92.5"
    assert figures["disk_space.total_gb"] == "500.0"
    stale = policy.rule("stale")
    assert stale is not None
    assert set(collect_figures(stale, state(checks, "critical"))) == {"stale", "last_seen"}
    sessions = policy.rule("sessions")
    assert sessions is not None
    checks["sessions"] = {"healthy": True, "active_sessions": 120, "max_sessions": 100}
    text = evaluate_rule(sessions, state(checks)).summary
    assert "sessions.active_sessions = 120" in text and "sessions.max_sessions (100)" in text


@pytest.mark.parametrize("text", [
    "disk_space.percent_used >= 90", "stale == critical", "database.healthy == false",
    "sessions.active_sessions > sessions.max_sessions", "memory.error == 'psutil missing'",
    "clock_skew_s > 5",
])
def test_conditions_parse(text: str) -> None:
    condition = Condition.parse(text)
    assert condition.text == text


@pytest.mark.parametrize(("text", "phrase"), [
    ("disk_space.percent_used >> 90", "'> 90' is not a value"),
    ("percent_used >= 90", "neither check.field"),
    ("disk_space.percent_used >= high", "is not a number"),
    ("Disk.percent >= 1", "is not a condition"),
    ("disk_space.percent_used >= 9 0", "is not a value"),
])
def test_bad_conditions_say_why(text: str, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        Condition.parse(text)


def test_configuration_changes_defaults_and_adds_rules() -> None:
    policy = load_policy({
        "defaults": {"for": "5m", "repeat": "1h"},
        "disk_space": {"when": ["disk_space.percent_used >= 80"],
                       "critical_when": ["disk_space.percent_used >= 95"]},
        "load": {"when": ["memory.process_rss_mb > 200"], "severity": "critical",
                 "hint": "負荷が高い"},
        "telnet": {"enabled": False},
    })
    disk = policy.rule("disk_space")
    assert disk is not None and disk.for_s == 300 and disk.repeat_s == 3600
    assert "RETENTION_DAYS" in disk.hint  # the built-in hint stays
    checks = healthy()
    checks["disk_space"] = {"healthy": True, "percent_used": 85.0}
    assert evaluate_rule(disk, state(checks)).level == WARNING
    checks["disk_space"] = {"healthy": False, "percent_used": 96.0}
    assert evaluate_rule(disk, state(checks)).level == CRITICAL
    assert policy.names[-1] == "load"
    load = policy.rule("load")
    assert load is not None and load.hint == "負荷が高い" and load.level == CRITICAL
    assert {r.name: a for r, a in policy.rules_for("bbs-01")}["telnet"] is False


def test_per_host_overrides_apply_in_order() -> None:
    policy = load_policy({
        "overrides": [
            {"hosts": ["bbs-archive-*"], "rule": "disk_space",
             "when": ["disk_space.percent_used >= 97"], "for": "10m"},
            {"hosts": "bbs-archive-2", "enabled": False, "rule": ["disk_space", "memory"]},
            {"hosts": ["lab-*"], "severity": "critical"},
        ],
    })

    def rule(host: str, name: str) -> tuple[Any, bool]:
        return {r.name: (r, a) for r, a in policy.rules_for(host)}[name]

    archive, applies = rule("bbs-archive-1", "disk_space")
    assert applies and archive.for_s == 600 and archive.when[0].value == 97
    assert rule("bbs-archive-1", "memory")[0].for_s == 0
    assert rule("bbs-archive-2", "disk_space")[1] is False
    assert rule("bbs-archive-2", "database")[1] is True
    assert rule("lab-1", "memory")[0].severity == "critical"
    assert rule("bbs-01", "disk_space")[0].when[0].value == 90


def test_routes_by_severity_and_host() -> None:
    policy = load_policy({"routes": [
        {"severity": ["critical"], "channels": ["mail", "slack"], "continue": True},
        {"hosts": ["lab-*"], "channels": ["webhook"]},
        {"channels": ["slack"]},
    ]})
    configured = ("mail", "slack", "webhook")
    assert policy.route("bbs-01", "database", "critical", "firing", configured) == \
        ("mail", "slack")
    assert policy.route("lab-1", "database", "critical", "firing", configured) == \
        ("mail", "slack", "webhook")
    assert policy.route("lab-1", "disk_space", "warning", "firing", configured) == ("webhook",)
    assert policy.route("bbs-01", "disk_space", "warning", "firing", configured) == ("slack",)
    # Channels that are not configured are left out.
    assert policy.route("bbs-01", "database", "critical", "firing", ("slack",)) == ("slack",)
    # No routes: every configured channel.
    assert load_policy(None).route("x", "y", "warning", "firing", configured) == configured


@pytest.mark.parametrize(("table", "setting", "phrase"), [
    ({"disk_space": {"when": ["disk_space.percent_used = 1"]}}, "rules.disk_space.when[0]",
     "is not a condition"),
    ({"disk_space": {"severity": "fatal"}}, "rules.disk_space.severity", "warning or critical"),
    ({"disk_space": {"for": "5 minutes"}}, "rules.disk_space.for", "is not a duration"),
    ({"disk_space": {"threshold": 3}}, "rules.disk_space.threshold", "is not a known setting"),
    ({"mystery": {"severity": "warning"}}, "rules.mystery.when", "needs at least one condition"),
    ({"Bad-Name": {"when": ["stale == warning"]}}, "rules.Bad-Name", "lower-case"),
    ({"memory": {"flap_low": 30, "flap_high": 20}}, "rules.memory.flap_low", "below flap_high"),
    ({"overrides": [{"rule": "disk_space", "for": "1m"}]}, "rules.overrides[0].hosts",
     "must be set"),
    ({"overrides": [{"hosts": ["*"], "rule": "nope"}]}, "rules.overrides[0].rule",
     "no rule named"),
    ({"routes": [{"channels": ["pager"]}]}, "rules.routes[0].channels", "is not a channel"),
    ({"routes": [{"channels": ["mail"], "severity": ["major"]}]}, "rules.routes[0].severity",
     "not warning or critical"),
    ({"defaults": {"when": ["x.y == 1"]}}, "rules.defaults.when", "is not a known setting"),
])
def test_errors_name_the_rule_and_field(table: dict[str, Any], setting: str, phrase: str
                                        ) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy(table)
    assert caught.value.setting == setting
    assert phrase in caught.value.problem


def test_routes_must_name_configured_channels() -> None:
    policy = load_policy({"routes": [{"channels": ["mail"]}]})
    policy.check_channels(["mail"])
    with pytest.raises(ConfigError, match="channel mail is not configured"):
        policy.check_channels(["slack"])


def test_a_rules_file_holds_only_rules_tables(tmp_path: Path) -> None:
    good = tmp_path / "rules.toml"
    good.write_text('[rules.disk_space]\nwhen = ["disk_space.percent_used >= 75"]\n',
                    encoding="utf-8")
    policy = load_rules({"rules": {"disk_space": {"enabled": False}}}, good)
    disk = policy.rule("disk_space")
    assert disk is not None and disk.enabled and disk.when[0].value == 75
    stray = tmp_path / "stray.toml"
    stray.write_text("[alerter]\nx = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="only \\[rules\\] tables"):
        load_rules({}, stray)
    broken = tmp_path / "broken.toml"
    broken.write_text("[rules\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_rules({}, broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_rules({}, tmp_path / "absent.toml")


def test_the_policy_knows_every_field_it_reads() -> None:
    policy = load_policy({"overrides": [{"hosts": ["x"], "when": ["memory.process_vms_mb > 9"]}]})
    fields = policy.fields
    assert {"last_seen_ms", "stale", "checks", "status", "disk_space.percent_used",
            "sessions.max_sessions", "memory.process_vms_mb"} <= set(fields)
    assert len(fields) == len(set(fields))
