"""The systemd units, their environment file and the logrotate example.

Each unit's ExecStart must be a command line our CLI accepts, every
MTBBS_ variable of the environment file must name a real setting, and the
hardening docs/deployment.md promises must be there.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stack.reference import known_env_names

UNITS = ("mtbbs-agent.service", "mtbbs-collector.service", "mtbbs-alerter-worker@.service",
         "mtbbs-exporter.service")
# What systemd's specifiers would expand to, for the parser's sake.
SPECIFIERS = {"%H": "bbs-central", "%i": "1", "%%": "%"}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; a key may repeat, so each maps to its values."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: setting outside a section"
        assert "=" in line and not line.endswith("\\"), f"line {number}: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def expand(value: str) -> str:
    return re.sub(r"%[Hi%]", lambda m: SPECIFIERS[m.group(0)], value)


@pytest.fixture(params=UNITS)
def unit(request: pytest.FixtureRequest, repo_root: Path) -> tuple[str, Any]:
    path = repo_root / "deploy" / "systemd" / request.param
    return request.param, parse_unit(path.read_text(encoding="utf-8"))


def test_exec_start_is_a_valid_invocation(unit: tuple[str, Any], valid_invocation: Any) -> None:
    name, sections = unit
    (exec_start,) = sections["Service"]["ExecStart"]
    argv = expand(exec_start).split()
    assert argv[0].startswith("/"), "systemd wants an absolute path"
    valid_invocation(argv)


def test_hardening_and_restart(unit: tuple[str, Any]) -> None:
    name, sections = unit
    service = {k: v[-1] for k, v in sections["Service"].items()}
    assert service["User"] not in ("", "root")
    assert service["Restart"] == "on-failure"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["EnvironmentFile"] == "-/etc/mtbbs-monitor/mtbbs-monitor.env"
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_agent_unit_matches_the_agent(repo_root: Path, valid_invocation: Any) -> None:
    sections = parse_unit((repo_root / "deploy/systemd/mtbbs-agent.service").read_text())
    service = {k: v[-1] for k, v in sections["Service"].items()}
    args = valid_invocation(service["ExecStart"].split())
    # The spool lives in the unit's state directory, the only writable place.
    assert args.spool.startswith(f"/var/lib/{service['StateDirectory']}/")
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) >= 120


def test_the_worker_template_names_each_worker(repo_root: Path, valid_invocation: Any) -> None:
    sections = parse_unit((repo_root / "deploy/systemd/mtbbs-alerter-worker@.service")
                          .read_text())
    (exec_start,) = sections["Service"]["ExecStart"]
    assert "%i" in exec_start
    assert valid_invocation(expand(exec_start).split()).name == "bbs-central-1"


def test_the_environment_file_names_real_settings(repo_root: Path) -> None:
    known = known_env_names()
    text = (repo_root / "deploy/systemd/mtbbs-monitor.env").read_text()
    names = re.findall(r"^#?\s*(MTBBS_[A-Z0-9_]+)=", text, re.MULTILINE)
    assert "MTBBS_REDIS_URL" in names
    assert not sorted(set(names) - known)
    assert "PASSWORD=" not in text.replace("PASSWORD_FILE=", "")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(repo_root: Path, tmp_path: Path) -> None:
    for name in UNITS:
        text = (repo_root / "deploy/systemd" / name).read_text()
        # verify needs the binary to exist; point ExecStart at one that does.
        target = tmp_path / name.replace("@", "@x")
        target.write_text(re.sub(r"ExecStart=\S+", "ExecStart=/bin/true", text))
        result = subprocess.run(["systemd-analyze", "verify", str(target)],
                                capture_output=True, text=True, timeout=60, check=False)
        # Any remark about our file (unknown key, bad value) is a problem.
        problems = [line for line in result.stderr.splitlines() if target.name in line]
        assert not problems, problems


def logrotate_stanzas(repo_root: Path) -> list[tuple[str, str]]:
    """(path, body) of every active stanza of the logrotate example."""
    text = (repo_root / "deploy/logrotate/mtbbs-monitor").read_text()
    return re.findall(r"^(/\S+) \{\n(.*?)^\}", text, re.MULTILINE | re.DOTALL)


def test_logrotate_example(repo_root: Path) -> None:
    stanzas = logrotate_stanzas(repo_root)
    paths = [path for path, _ in stanzas]
    assert paths == ["/var/log/mtbbs-monitor/health.log", "/var/log/mtbbs-monitor/metrics.csv"]
    for _, body in stanzas:
        directives = {line.split()[0] for line in body.splitlines() if line.strip()}
        assert {"rotate", "missingok", "notifempty", "create"} <= directives


def test_logrotate_example_creates_files_for_the_documented_user(repo_root: Path) -> None:
    # docs/deployment.md's install steps create the user mtbbs and give the log
    # directory to mtbbs:adm; new files must belong to the same.
    for _, body in logrotate_stanzas(repo_root):
        creates = [line.split() for line in body.splitlines() if line.split()[:1] == ["create"]]
        assert creates == [["create", "0640", "mtbbs", "adm"]], body


def test_logrotate_accepts_the_example(repo_root: Path, tmp_path: Path) -> None:
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate not installed")
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
    except KeyError:
        pytest.skip("the current user or group has no name for logrotate to look up")
    # This machine need not have the mtbbs user or the adm group: a copy that
    # names the current ones lets logrotate judge everything else.
    text = (repo_root / "deploy/logrotate/mtbbs-monitor").read_text()
    text = re.sub(r"^(\s*create\s+\d+)\s+\S+\s+\S+", rf"\1 {user} {group}", text,
                  flags=re.MULTILINE)
    text = re.sub(r"^(\s*su)\s+\S+\s+\S+", rf"\1 {user} {group}", text, flags=re.MULTILINE)
    config = tmp_path / "mtbbs-monitor"
    config.write_text(text)
    config.chmod(0o644)  # logrotate ignores a configuration others may write to
    # --state in the temporary folder: the system's state file may be root's.
    result = subprocess.run(["logrotate", "--debug", "--state", str(tmp_path / "status"),
                             str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
    # Both stanzas were read, so the check above covered them.
    assert result.stderr.count("rotating pattern: /var/log/mtbbs-monitor/") == 2, result.stderr


@pytest.mark.parametrize("name", ["docs/deployment.md", "docs/deployment.ja.md"])
def test_the_logrotate_docs_create_the_user_first(repo_root: Path, name: str) -> None:
    """The example's files belong to mtbbs: the docs create that user before it."""
    text = (repo_root / name).read_text(encoding="utf-8")
    section = text[text.index("## logrotate"):text.index("## docker compose")]
    assert "unknown user 'mtbbs'" in section
    assert section.index("useradd --system") < section.index("deploy/logrotate/mtbbs-monitor /etc")
    assert "useradd --system mtbbs" in (repo_root / "deploy/logrotate/mtbbs-monitor").read_text()
