"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every service that runs one of our commands must run a command line that
the command's real parser accepts, and every MTBBS_ variable it sets must
name a real setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stack.reference import known_env_names

OUR_IMAGE = "mtbbs-monitor:latest"


@pytest.fixture
def compose(repo_root: Path, yaml_reader: Any) -> dict[str, Any]:
    document = yaml_reader(repo_root / "docker-compose.yml")
    assert isinstance(document, dict)
    return document


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in compose["services"].items()
            if spec.get("image") == OUR_IMAGE}


def test_the_services_the_issue_asks_for(compose: dict[str, Any]) -> None:
    services = compose["services"]
    commands = {name: spec["command"][:2] for name, spec in services.items()}
    assert commands["redis"][0] == "redis-server"
    assert commands["collector"] == ["mtbbs-collector", "run"]
    assert commands["alerter"] == ["mtbbs-alerter", "worker"]
    assert commands["exporter"] == ["mtbbs-collector", "exporter"]
    assert commands["demo-bbs"][0] == "mtbbs-demo-bbs"
    assert commands["agent"] == ["mtbbs-agent", "run"]
    # Workers scale.
    assert services["alerter"]["deploy"]["replicas"] >= 2


def test_redis_persists_with_aof_and_requires_the_password(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    # Tuned for the host hashes as the embedded Redis is.
    from stack.embedded import HASH_TUNING

    assert command[command.index(HASH_TUNING[0]) + 1] == HASH_TUNING[1]
    password = command[command.index("--requirepass") + 1]
    assert password.startswith("${MTBBS_REDIS_PASSWORD:?")
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    # The health check authenticates through the environment, not argv.
    assert redis["environment"]["REDISCLI_AUTH"] == password


@pytest.mark.parametrize("service", ["collector", "alerter", "exporter", "demo-bbs", "agent"])
def test_every_command_is_a_valid_invocation(compose: dict[str, Any], service: str,
                                             valid_invocation: Any) -> None:
    spec = compose["services"][service]
    assert spec["image"] == OUR_IMAGE and spec["build"] == "."
    command = spec["command"]
    assert all(isinstance(part, str) and "${" not in part for part in command)
    valid_invocation(command)


def test_every_mtbbs_variable_names_a_real_setting(compose: dict[str, Any]) -> None:
    known = known_env_names()
    for name, spec in _ours(compose).items():
        environment = spec.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        unknown = sorted(k for k in environment if k.startswith("MTBBS_") and k not in known)
        assert not unknown, f"{name}: {unknown} are not settings"
        # Each component reaches Redis by name, with the password.
        assert environment["MTBBS_REDIS_URL"] == "redis://redis:6379/0"
        assert environment["MTBBS_REDIS_PASSWORD"].startswith("${MTBBS_REDIS_PASSWORD")


def test_variables_are_interpolated_from_the_environment(compose: dict[str, Any]) -> None:
    """Values with ${...} use compose's syntax and refer to MTBBS_ variables."""
    for name, spec in compose["services"].items():
        for key, value in (spec.get("environment") or {}).items():
            for reference in re.findall(r"\$\{([^}]*)\}", str(value)):
                variable = re.split(r"[:?\-]", reference, maxsplit=1)[0]
                assert variable.startswith("MTBBS_"), f"{name}.{key}: ${{{reference}}}"


def test_the_agent_sees_the_bbs(compose: dict[str, Any], valid_invocation: Any) -> None:
    services = compose["services"]
    agent = valid_invocation(services["agent"]["command"])
    bbs = valid_invocation(services["demo-bbs"]["command"])
    assert services["agent"]["pid"] == "service:demo-bbs"
    assert agent.db == bbs.db and agent.pidfile == bbs.pidfile
    assert agent.host == bbs.host
    assert agent.probe_host == "demo-bbs" and agent.probe_port == bbs.port
    shared = {v.split(":")[0] for v in services["agent"]["volumes"]} & {
        v.split(":")[0] for v in services["demo-bbs"]["volumes"]}
    assert shared
    for volume in shared | {v.split(":")[0] for v in services["redis"]["volumes"]}:
        assert volume in compose["volumes"]


def test_the_exporter_listens_where_compose_publishes(compose: dict[str, Any],
                                                      valid_invocation: Any) -> None:
    exporter = compose["services"]["exporter"]
    args = valid_invocation(exporter["command"])
    assert args.port == 9100 and args.bind == "0.0.0.0"
    assert any(port.endswith(":9100") for port in exporter["ports"])


def test_the_dockerfile_installs_every_package(repo_root: Path) -> None:
    text = (repo_root / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.MULTILINE)
    for package in ("wire", "agent", "collector", "alerter", "stack", "demobbs"):
        assert re.search(rf"^COPY {package} ", text, re.MULTILINE), package
    assert "pip install --no-deps ." in text
    assert re.search(r"^USER (?!root)", text, re.MULTILINE)


def test_the_yaml_subset_reader(yaml_reader: Any, tmp_path: Path) -> None:
    path = tmp_path / "x.yml"
    path.write_text('a:\n  b: "x # not a comment"  # a comment\n  c: [1, "two"]\n'
                    "  d:\n  - one\n  - 'it''s'\n  e: 3\n  f: true\n  g:\n")
    assert yaml_reader(path) == {"a": {"b": "x # not a comment", "c": [1, "two"],
                                       "d": ["one", "it's"], "e": 3, "f": True, "g": None}}
    path.write_text("a: &anchor 1\n")
    with pytest.raises(ValueError, match="unsupported"):
        yaml_reader(path)
