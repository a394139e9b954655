"""The adversarial suite's mesh: one real build of the sample mesh (TPC-H SF 0.01), shared by
every module of ``tests/security/``, with one extra reader an attacker would be.

``user:mallory`` (a member of ``team:auditors``; ``add_attacker`` of mesh_platform.testing)
holds row-filtered grants:

- ``sales.customers``: every column but the contact details, rows of the BUILDING segment only;
- ``sales.order_lines``: every column, lines ordered before 1995 only.

Every other row is *hidden* from mallory: the suite tries to learn anything about them.
Modules that edit the mesh's files restore them (``edited``); modules that need their own
state build their own copy.

Every test here is marked ``security`` (by path, below): the fast tier leaves the suite out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_platform.config import Mesh, load_mesh
from mesh_platform.testing import SF, add_attacker, copy_mesh, run_mesh

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.security)


@pytest.fixture(scope="session")
def attacked_mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    """The sample mesh with mallory's grants, built once (SF 0.01) for the whole suite."""
    root = copy_mesh(tmp_path_factory.mktemp("security") / "mesh")
    add_attacker(root)
    result = run_mesh(root, "build", "--scale", str(SF))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return load_mesh(root)
