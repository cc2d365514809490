"""The disk_space check: how full is the file system of the BBS's data dir.

Usage is computed as ``df`` shows it, used / (used + available to users), so
the figure a sysop sees here matches the one ``df -h`` prints; the space
reserved for root does not count as free. ``usage`` is injectable so tests
can present any file system.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from agent.checks.results import DiskResult

GB = 1024**3


class Usage(NamedTuple):
    """Sizes in bytes of one file system, as ``shutil.disk_usage`` names them."""

    total: int
    used: int
    free: int


def statvfs_usage(path: str) -> Usage:
    """Total, used and free-to-users bytes of the file system holding ``path``."""
    vfs = os.statvfs(path)
    total = vfs.f_blocks * vfs.f_frsize
    used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    free = vfs.f_bavail * vfs.f_frsize
    return Usage(total, used, free)


def check_disk(
    data_dir: str | Path,
    *,
    threshold: float = 90.0,
    usage: Callable[[str], Usage] = statvfs_usage,
) -> DiskResult:
    """Measure the file system of ``data_dir``; unhealthy at ``threshold`` % or more."""
    shown = str(data_dir)
    try:
        if not stat.S_ISDIR(os.stat(data_dir).st_mode):
            return DiskResult(healthy=False, path=shown, warning_threshold=threshold,
                              error=f"Data directory is not a directory: {shown}")
        measured = usage(shown)
    except FileNotFoundError:
        return DiskResult(healthy=False, path=shown, warning_threshold=threshold,
                          error=f"Data directory not found: {shown}")
    except OSError as exc:
        return DiskResult(healthy=False, path=shown, warning_threshold=threshold,
                          error=f"Cannot measure {shown}: {exc.strerror or exc}")
    usable = measured.used + measured.free
    percent = round(measured.used / usable * 100, 1) if usable > 0 else 0.0
    return DiskResult(
        healthy=percent < threshold,
        path=shown,
        total_gb=round(measured.total / GB, 2),
        used_gb=round(measured.used / GB, 2),
        free_gb=round(measured.free / GB, 2),
        percent_used=percent,
        warning_threshold=threshold,
    )
