"""Dagster resources the platform gives every domain."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from mesh_platform.config import Mesh, load_mesh


class MeshResource(dg.ConfigurableResource):
    """Access to the mesh's settings, state paths and Iceberg catalog during a run.

    Settings are read when a run needs them (mesh.yaml, then MESH_* env), never at import.
    """

    root: str = Field(description="Mesh root: the directory holding mesh.yaml.")

    def load(self) -> Mesh:
        return load_mesh(Path(self.root))
