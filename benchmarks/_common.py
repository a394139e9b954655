"""Helpers shared by the benchmarks: a timer and a peak-memory reading. A copy of the sample
mesh, the repository and a user's environment come from mesh_platform.testing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mesh_platform.testing import user_env

BIN = Path(sys.executable).parent

__all__ = ["BIN", "peak_rss_mb", "timed_run"]


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    across fork+exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed_run(cmd: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=kwargs.pop("env", user_env()), **kwargs)
    return time.perf_counter() - start
