"""Dagster resources the platform gives every domain."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from mesh_platform.config import Mesh, load_mesh
from mesh_platform.leases import Heartbeat, take_lease


class MeshResource(dg.ConfigurableResource):
    """Access to the mesh's settings, state paths and Iceberg catalog during a run.

    Settings are read when a run needs them (mesh.yaml, then MESH_* env), never at import.
    """

    root: str = Field(description="Mesh root: the directory holding mesh.yaml.")
    _lease: Heartbeat | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Every run of a domain uses this resource: where the daemon launched the run, its
        worker takes the run's lease here (mesh_platform/leases.py, launcher.py)."""
        if context.instance is not None:
            self._lease = take_lease(context.instance, context.run_id)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._lease is not None:
            self._lease.__exit__()
            self._lease = None

    def load(self) -> Mesh:
        return load_mesh(Path(self.root))
