"""Helpers shared by the benchmarks: a fresh copy of the sample mesh and a timer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
_IGNORE = shutil.ignore_patterns("target", "dbt_packages", "logs", "__pycache__")


def copy_mesh(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("mesh.yaml", "workspace.yaml", "domains", "dbt_projects"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_IGNORE)
        else:
            shutil.copy2(src, dest / name)
    return dest


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}


def timed_run(cmd: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=kwargs.pop("env", clean_env()), **kwargs)
    return time.perf_counter() - start
