"""A domain's DuckDB opens on a fresh state whatever lands first: a domain with no raw tables has
nothing that creates its state folder before dbt opens the file, and DuckDB creates files, never
folders. The platform's dbt profile creates it, and so does its plugin, in dbt's own process,
just before dbt-duckdb opens the database. (A whole build of such a domain on a fresh state is
in tests/test_gate_messages.py.)"""

from __future__ import annotations

import shutil
import stat

from dbt.cli.main import dbtRunner

from mesh_platform.config import load_mesh
from mesh_platform.dbt.project import RUN_TARGET, platform_profile
from mesh_platform.domain import load_domain
from mesh_platform.scaffold import new_domain
from mesh_platform.testing import copy_mesh


def _private(path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o700


def test_dbt_opens_the_duckdb_of_a_domain_without_raw_tables_on_a_fresh_state(tmp_path):
    mesh = load_mesh(copy_mesh(tmp_path / "mesh"))
    new_domain(mesh, "finance", team="finance", description="Invoices and payments of customers.")
    spec = mesh.domains_dir / "finance" / "domain.yaml"
    spec.write_text(spec.read_text().split("# Sample sources")[0])  # lands nothing
    domain = load_domain(mesh, "finance")
    assert domain.spec.raw is None
    folder = mesh.domain_state_dir("finance")
    assert not folder.exists()

    with platform_profile(mesh, domain) as profiles_dir:
        assert folder.is_dir() and _private(folder) and _private(folder.parent)
        shutil.rmtree(folder)  # gone again: dbt's plugin creates it before opening the file
        result = dbtRunner().invoke(
            ["debug", "--project-dir", str(domain.dbt_project_dir), "--profiles-dir",
             str(profiles_dir), "--profile", "finance", "--target", RUN_TARGET, "--quiet"]
        )  # fmt: skip

    assert result.success, result.exception
    assert mesh.duckdb_path("finance").is_file()
    assert _private(folder)


def test_the_domain_duckdb_folder_is_created_private_with_its_parents(tmp_path):
    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(tmp_path)
    path = mesh.domain_duckdb("finance")
    assert path == mesh.duckdb_path("finance") and not path.exists()
    for folder in (path.parent, path.parent.parent, mesh.state_dir):
        assert _private(folder), folder
    assert mesh.domain_duckdb("finance") == path  # idempotent
