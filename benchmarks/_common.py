"""Helpers shared by the benchmarks: a fresh copy of the sample mesh and a timer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from tests.conftest import copy_mesh  # noqa: E402  (one definition of "a copy of the mesh")

__all__ = ["BIN", "REPO", "clean_env", "copy_mesh", "peak_rss_mb", "timed_run"]


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    across fork+exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}


def timed_run(cmd: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=kwargs.pop("env", clean_env()), **kwargs)
    return time.perf_counter() - start
