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
    # A stand-in Python: it answers the version check, records every other
    # call (venv, pip installs) and makes a "virtual environment" of itself.
    stub = root.parent / "python"
    calls = root.parent / "calls"
    stub.write_text('#!/bin/sh\n'
                    'case "$*" in *sys.version_info*) exit 0 ;; esac\n'
                    f'echo "$*" >> "{calls}"\n'
                    'case "$*" in "-m venv "*)\n'
                    '  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;\n'
                    'esac\n')
    stub.chmod(0o755)
    return root


def bootstrap(root: Path, lock: str = "requirements/test.txt") -> tuple[list[str], str]:
    """Runs bootstrap.sh as test.sh (or up.sh) does; the calls it made and its stderr."""
    calls = root.parent / "calls"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": str(root.parent / "python")}
    env.pop("MTBBS_VENV", None)
    done = subprocess.run(["sh", "-c", f"LOCK={lock}; . scripts/bootstrap.sh"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    made = calls.read_text().splitlines() if calls.exists() else []
    return made, done.stderr


def test_the_first_start_makes_the_environment_then_installs_lock_and_project(
        checkout: Path) -> None:
    calls, stderr = bootstrap(checkout)
    assert len(calls) == 3
    assert calls[0].startswith("-m venv .venv")
    assert "--require-hashes --no-deps -r requirements/test.txt" in calls[1]
    assert "--no-deps --no-build-isolation --no-index ." in calls[2]
    assert "installing the locked dependencies from requirements/test.txt" in stderr
    assert "minutes" in stderr


def test_a_second_start_installs_nothing(checkout: Path) -> None:
    bootstrap(checkout)
    calls, stderr = bootstrap(checkout)
    assert calls == []
    assert stderr == ""


def test_up_after_the_tests_installs_nothing_but_the_tests_after_up_add_theirs(
        checkout: Path) -> None:
    bootstrap(checkout, "requirements/test.txt")
    assert bootstrap(checkout, "requirements/run.txt")[0] == []
    (checkout / ".venv").rename(checkout.parent / "old-venv")
    bootstrap(checkout, "requirements/run.txt")
    calls, _ = bootstrap(checkout, "requirements/test.txt")
    assert len(calls) == 2 and "-r requirements/test.txt" in calls[0]


@pytest.mark.parametrize("change", ["edit", "new empty module", "rename"])
def test_a_changed_source_file_reinstalls_only_the_project(checkout: Path,
                                                           change: str) -> None:
    bootstrap(checkout)
    module = checkout / "collector" / "__init__.py"
    if change == "edit":
        module.write_text(module.read_text() + "\n# changed\n")
    elif change == "new empty module":
        (checkout / "collector" / "empty.py").touch()
    else:
        (checkout / "collector" / "fleet.py").rename(checkout / "collector" / "fleets.py")
    calls, _ = bootstrap(checkout)
    assert len(calls) == 1 and calls[0].endswith("--no-index .")


def test_a_changed_lock_makes_a_new_environment(checkout: Path) -> None:
    bootstrap(checkout)
    leftover = checkout / ".venv" / "lib" / "dropped-package"
    leftover.mkdir(parents=True)
    lock = checkout / "requirements" / "test.txt"
    lock.write_text(lock.read_text() + "\n")
    calls, _ = bootstrap(checkout)
    assert calls[0].startswith("-m venv .venv")
    assert len(calls) == 3 and "-r requirements/test.txt" in calls[1]
    assert not leftover.exists()
