"""The disk_space check: the real file system, and presented ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.checks import check_disk
from agent.checks.disk import GB, Usage, statvfs_usage


def test_real_file_system_matches_statvfs(tmp_path: Path) -> None:
    result = check_disk(tmp_path, threshold=100)
    vfs = os.statvfs(tmp_path)
    assert result.total_gb == round(vfs.f_blocks * vfs.f_frsize / GB, 2)
    assert result.percent_used is not None and 0 <= result.percent_used <= 100
    assert result.healthy == (result.percent_used < 100)
    assert result.path == str(tmp_path)
    fields = result.to_fields()
    assert list(fields)[:6] == ["healthy", "total_gb", "used_gb", "free_gb", "percent_used",
                                "warning_threshold"]
    assert fields["warning_threshold"] == 100 and isinstance(fields["warning_threshold"], int)


def test_seed_example_figures(tmp_path: Path) -> None:
    seed = Usage(total=int(500 * GB), used=int(250.5 * GB), free=int(249.5 * GB))
    result = check_disk(tmp_path, usage=lambda _path: seed)
    assert (result.total_gb, result.used_gb, result.free_gb) == (500.0, 250.5, 249.5)
    assert result.percent_used == 50.1
    assert result.healthy and result.warning_threshold == 90


@pytest.mark.parametrize(("used", "healthy"), [(89.9, True), (90.0, False), (92.5, False)])
def test_threshold_edge(tmp_path: Path, used: float, healthy: bool) -> None:
    usage = Usage(total=100 * GB, used=int(used * GB), free=int((100 - used) * GB))
    result = check_disk(tmp_path, threshold=90, usage=lambda _path: usage)
    assert result.percent_used == used
    assert result.healthy is healthy


def test_reserved_blocks_do_not_count_as_free(tmp_path: Path) -> None:
    # 100 GB disk, 85 used, 5 reserved for root: users see 85 / 95 = 89.5 %.
    usage = Usage(total=100 * GB, used=85 * GB, free=10 * GB)
    assert check_disk(tmp_path, usage=lambda _path: usage).percent_used == 89.5


def test_missing_data_dir(tmp_path: Path) -> None:
    result = check_disk(tmp_path / "nowhere")
    assert not result.healthy
    assert result.error == f"Data directory not found: {tmp_path / 'nowhere'}"
    assert result.percent_used is None


def test_a_file_is_not_a_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    result = check_disk(path)
    assert not result.healthy and "not a directory" in (result.error or "")


def test_statvfs_failure_is_reported(tmp_path: Path) -> None:
    def failing(_path: str) -> Usage:
        raise OSError(5, "Input/output error")

    result = check_disk(tmp_path, usage=failing)
    assert not result.healthy
    assert result.error == f"Cannot measure {tmp_path}: Input/output error"


def test_statvfs_usage_is_consistent(tmp_path: Path) -> None:
    usage = statvfs_usage(str(tmp_path))
    assert usage.used + usage.free <= usage.total
