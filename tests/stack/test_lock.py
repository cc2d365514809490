"""The dependency locks agree with pyproject.toml and are what the scripts install.

``requirements/test.txt`` and ``requirements/run.txt`` are made by
``scripts/lock.sh``; a change to pyproject's dependencies without a fresh
lock (or a hand edit of a lock) fails here, before any machine installs
something nobody tested.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def read_lock(text: str) -> dict[str, tuple[Version, int]]:
    """Each locked package's version and how many hashes it carries."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            if current in pins:
                raise ValueError(f"{current} is pinned twice")
            pins[current] = (Version(match.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line.strip() and not line.lstrip().startswith(("#", "--hash")):
            raise ValueError(f"a lock line that is not a pin: {line!r}")
    return pins


def disagreements(requirements: list[str], pins: dict[str, tuple[Version, int]]) -> list[str]:
    """What in ``requirements`` the lock leaves out, or pins outside its range."""
    found = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name not in pins:
            found.append(f"{requirement.name} is not in the lock")
            continue
        version, hashes = pins[name]
        if not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement.name} is locked at {version}, outside '{requirement}'")
        if hashes == 0:
            found.append(f"{requirement.name} has no hash in the lock")
    return found


@pytest.fixture
def project(repo_root: Path) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]


@pytest.fixture
def test_lock(repo_root: Path) -> dict[str, tuple[Version, int]]:
    return read_lock((repo_root / "requirements" / "test.txt").read_text())


@pytest.fixture
def run_lock(repo_root: Path) -> dict[str, tuple[Version, int]]:
    return read_lock((repo_root / "requirements" / "run.txt").read_text())


def test_the_test_lock_covers_every_dependency_in_range(project: dict, test_lock: dict) -> None:
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["embedded"] + extras["test"]
    assert disagreements(wanted, test_lock) == []


def test_the_run_lock_covers_the_programs_in_range(project: dict, run_lock: dict) -> None:
    wanted = project["dependencies"] + project["optional-dependencies"]["embedded"]
    assert disagreements(wanted, run_lock) == []


def test_both_locks_name_one_version_of_each_package(run_lock: dict, test_lock: dict) -> None:
    assert set(run_lock) <= set(test_lock)
    assert {name: run_lock[name][0] for name in run_lock} == {
        name: test_lock[name][0] for name in run_lock}
    assert all(hashes for _, hashes in test_lock.values())
    assert all(hashes for _, hashes in run_lock.values())


def test_the_tools_ci_runs_are_locked(test_lock: dict) -> None:
    for tool in ("ruff", "mypy", "pytest", "import-linter", "setuptools"):
        assert tool in test_lock, tool


@pytest.mark.parametrize("requirement, expected", [
    ("redis>=99", "redis is locked at 8.2.0, outside 'redis>=99'"),
    ("newthing>=1.0", "newthing is not in the lock"),
    ("bare==1.0", "bare has no hash in the lock"),
])
def test_a_disagreement_is_named(requirement: str, expected: str) -> None:
    pins = {"redis": (Version("8.2.0"), 2), "bare": (Version("1.0"), 0)}
    assert disagreements([requirement], pins) == [expected]


def test_a_hand_edited_lock_is_refused() -> None:
    with pytest.raises(ValueError, match="not a pin"):
        read_lock("redis>=5\n")
    with pytest.raises(ValueError, match="pinned twice"):
        read_lock("redis==5.0 \\\n    --hash=sha256:aa\nRedis==5.1\n")


def test_the_scripts_install_from_the_locks(repo_root: Path) -> None:
    bootstrap = (repo_root / "scripts" / "bootstrap.sh").read_text()
    assert '--require-hashes --no-deps -r "$LOCK"' in bootstrap
    assert "LOCK=requirements/test.txt" in (repo_root / "scripts" / "test.sh").read_text()
    assert "LOCK=requirements/run.txt" in (repo_root / "scripts" / "up.sh").read_text()
    assert "requirements/run.txt" in (repo_root / "Dockerfile").read_text()
