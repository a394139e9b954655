"""`dagster definitions validate -w workspace.yaml` passes for every domain code location."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_dagster_validates_the_workspace(prepared_mesh):
    dagster = str(Path(sys.executable).with_name("dagster"))
    result = subprocess.run(
        [dagster, "definitions", "validate", "-w", str(prepared_mesh.workspace_file)],
        cwd=prepared_mesh.root,
        env={k: v for k, v in os.environ.items() if not k.startswith("MESH_")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for location in ("logistics", "marketing", "sales"):
        assert f"Validation successful for code location {location}" in output
