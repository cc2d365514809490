"""scripts/bootstrap.sh installs from the lock once and then only what changed.

The script runs for real against a stand-in virtual environment whose
``python`` records each call instead of running pip, so the test sees exactly
which installs a start would make: the first start installs the lock and
the project, a second start with nothing changed installs nothing (and so
needs no network), a changed source file reinstalls only the project, and a
changed lock installs the dependencies again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

COPIED = ("pyproject.toml", "README.md", "scripts", "requirements",
          "wire", "agent", "collector", "alerter", "stack", "demobbs")


@pytest.fixture
def checkout(repo_root: Path, tmp_path: Path) -> Path:
    """A copy of the files bootstrap.sh reads, and a recording stand-in venv."""
    root = tmp_path / "checkout"
    root.mkdir()
    for name in COPIED:
        source = repo_root / name
        if source.is_dir():
            shutil.copytree(source, root / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, root / name)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    # Answers the version check and records every other call (pip installs).
    python.write_text('#!/bin/sh\n'
                      'case "$*" in *sys.version_info*) exit 0 ;; esac\n'
                      'echo "$*" >> "$(dirname "$0")/../calls"\n')
    python.chmod(0o755)
    return root


def bootstrap(root: Path) -> tuple[list[str], str]:
    """Runs bootstrap.sh as test.sh does; the pip calls it made and its stderr."""
    calls = root / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": str(root / ".venv" / "bin" / "python")}
    env.pop("MTBBS_VENV", None)
    done = subprocess.run(["sh", "-c", "LOCK=requirements/test.txt; . scripts/bootstrap.sh"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    made = calls.read_text().splitlines() if calls.exists() else []
    return made, done.stderr


def test_the_first_start_installs_the_lock_then_the_project(checkout: Path) -> None:
    calls, stderr = bootstrap(checkout)
    assert len(calls) == 2
    assert "--require-hashes --no-deps -r requirements/test.txt" in calls[0]
    assert "--no-deps --no-build-isolation --no-index ." in calls[1]
    assert "installing the locked dependencies from requirements/test.txt" in stderr
    assert "minutes" in stderr


def test_a_second_start_installs_nothing(checkout: Path) -> None:
    bootstrap(checkout)
    calls, stderr = bootstrap(checkout)
    assert calls == []
    assert stderr == ""


def test_a_changed_source_file_reinstalls_only_the_project(checkout: Path) -> None:
    bootstrap(checkout)
    module = checkout / "collector" / "__init__.py"
    module.write_text(module.read_text() + "\n# changed\n")
    calls, _ = bootstrap(checkout)
    assert len(calls) == 1 and calls[0].endswith("--no-index .")


def test_a_changed_lock_installs_the_dependencies_again(checkout: Path) -> None:
    bootstrap(checkout)
    lock = checkout / "requirements" / "test.txt"
    lock.write_text(lock.read_text() + "\n")
    calls, _ = bootstrap(checkout)
    assert len(calls) == 2 and "-r requirements/test.txt" in calls[0]
