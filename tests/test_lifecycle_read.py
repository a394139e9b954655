"""Two majors side by side on the built sample: logistics.nations (major 1, deprecated) stays
readable and granted beside logistics.nations_v2 until its sunset date; from the next day every
read of it is refused naming its successor, and its consumer's grant check says the same."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest

from mesh_platform.access.consumption import consumption_problems
from mesh_platform.dbt.project import load_manifest
from mesh_platform.domain import load_domain
from mesh_platform.errors import MeshError
from mesh_platform.products.registry import load_directory
from mesh_platform.query.engine import query
from mesh_platform.testing import edited

SUNSET = "sunset_on: 2027-06-30"  # the sample's (dbt_projects/logistics/.../products.yml)


@contextlib.contextmanager
def _sunset(mesh, day: dt.date):
    """The sample's nations v1 with another sunset date; prepared again as it was after (the
    shared build's later readers read the manifest as prepared)."""
    path = mesh.dbt_projects_dir / "logistics" / "models" / "products" / "products.yml"
    try:
        with edited(path, SUNSET, f"sunset_on: {day.isoformat()}"):
            yield
    finally:
        load_directory(mesh)  # re-prepares logistics from the restored file


def _count(mesh, principal: str, address: str) -> int:
    return query(f"SELECT count(*) AS n FROM {address}", as_=principal, mesh=mesh)["n"][0].as_py()


def test_the_old_major_serves_until_its_sunset_then_names_its_successor(sample_build):
    mesh = sample_build
    today = dt.date.today()
    marketing = load_manifest(load_domain(mesh, "marketing"))
    with _sunset(mesh, today):  # its last day: published, readable, granted
        assert _count(mesh, "marketing", "logistics.nations") == 25
        assert _count(mesh, "marketing", "logistics.nations_v2") == 25
        assert consumption_problems(mesh, "marketing", marketing) == []
    with _sunset(mesh, today - dt.timedelta(days=1)):
        for principal in ("marketing", "sales", "logistics"):  # grantees and its owner
            with pytest.raises(MeshError) as refused:
                _count(mesh, principal, "logistics.nations")
            assert "logistics.nations (version 1.3.0) reached its sunset on" in refused.value.what
            assert "read its successor logistics.nations_v2" in refused.value.fix
        assert _count(mesh, "marketing", "logistics.nations_v2") == 25  # the new one serves
        (problem,) = consumption_problems(mesh, "marketing", marketing)
        assert "consumes logistics.nations" in problem and "logistics.nations_v2" in problem
