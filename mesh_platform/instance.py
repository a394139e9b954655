"""The persistent Dagster instance of the embedded default (DAGSTER_HOME in the state dir)."""

from __future__ import annotations

import os

import dagster as dg

from mesh_platform.config import Mesh

DAGSTER_YAML = """\
# Dagster instance of the mesh's embedded default (written by mesh_platform/instance.py).
# Storage defaults to sqlite files in this directory.
telemetry:
  enabled: false
"""


def prepare_dagster_home(mesh: Mesh) -> str:
    """Create DAGSTER_HOME with its dagster.yaml and export it for this process and children."""
    mesh.ensure_state_dir()
    home = mesh.dagster_home
    config = home / "dagster.yaml"
    if not config.is_file():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return str(home)


def get_instance(mesh: Mesh) -> dg.DagsterInstance:
    prepare_dagster_home(mesh)
    return dg.DagsterInstance.get()
