"""The fault-injection suite's meshes: real builds of the sample mesh (TPC-H SF 0.01).

Each module that injects faults builds its own copy once (``build_chaos_mesh`` in a
module-scoped fixture), injects one fault per test and asserts that the next `mesh build`
recovers with no manual step, so the copy is healthy again for the module's next test.
``fresh_build`` builds the same sources in a separate copy: the reference a recovered product
must equal, row for row.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_platform.config import Mesh, load_mesh
from tests.conftest import copy_mesh, published_scan, run_mesh

SF = 0.01


def build_chaos_mesh(folder: Path, *args: str) -> Mesh:
    """A copy of the sample mesh at ``folder``, built by `mesh build --scale SF` (+ ``args``)."""
    root = copy_mesh(folder)
    result = run_mesh(root, "build", "--scale", str(SF), *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return load_mesh(root)


@pytest.fixture(scope="session")
def reference_mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    """A fresh full build of the sample sources, never touched: what every product must equal
    after a recovery (read it with tests.conftest.read_published)."""
    return build_chaos_mesh(tmp_path_factory.mktemp("reference") / "mesh")


def content(mesh: Mesh, address: str, snapshot_id: int | None = None) -> dict[str, int]:
    """A product's published rows, summarised to compare two meshes: the row count and, per
    column, an order-independent sum of value hashes. (Hashed personal data differs between
    meshes: each has its own salt; compare those columns by count only.)"""
    from mesh_platform.addressing import quote_ident

    with published_scan(mesh, address, snapshot_id) as (conn, scan, snapshot):
        sums = ", ".join(f"sum(hash({quote_ident(c)}))::VARCHAR" for c in snapshot.columns)
        row = conn.execute(f"SELECT count(*), {sums} FROM {scan}").fetchone()
        return {
            "rows": int(row[0]),
            **{c: int(v or 0) for c, v in zip(snapshot.columns, row[1:], strict=True)},
        }
