"""The fault-injection suite's meshes: real builds of the sample mesh (TPC-H SF 0.01).

Each module that injects faults builds its own copy once (``build_sample_mesh`` of
mesh_platform.testing, in a module-scoped fixture), injects one fault per test and asserts that
the next `mesh build` recovers with no manual step, so the copy is healthy again for the
module's next test. ``reference_mesh`` is the session's fresh build of the same sources: the
reference a recovered product must equal, row for row (``published_content``).

Every test here is marked ``chaos`` (by path, below): the fast tier leaves the suite out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_platform.config import Mesh

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="session")
def reference_mesh(sample_build: Mesh) -> Mesh:
    """A fresh full build of the sample sources, never touched: what every product must equal
    after a recovery (the session's read-only ``sample_build``)."""
    return sample_build
