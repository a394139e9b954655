"""dbt packages: `mesh prepare` installs local and vendored packages with dbt's own `dbt deps`,
offline; a package it would have to download is refused naming it and how to vendor it; a
domain that cannot be prepared is reported and the others are prepared. A package's SQL runs
behind the same walls as the domain's own (load-time checks, the locked connection); seed
files are the only single files a domain's connection may open, never through a link."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from mesh_platform.config import Mesh, load_mesh
from mesh_platform.dbt.checks import manifest_problems
from mesh_platform.dbt.dependencies import STAMP_FILE, check_offline, read_packages
from mesh_platform.dbt.lockdown import lock_down, moved_files, pinned_files, seed_files
from mesh_platform.dbt.project import load_manifest, resolve_dbt_executable
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import DomainError
from mesh_platform.testing import REPO, copy_mesh, run_mesh


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def add_package(root: Path, domain: str, entry: str) -> None:
    packages = root / "dbt_projects" / domain / "packages.yml"
    packages.write_text(packages.read_text().rstrip("\n") + f"\n  {entry}\n")


# -- what installs offline, what does not -------------------------------------------------------


def test_downloaded_packages_are_refused_naming_each_and_how_to_vendor_it(tmp_path):
    project = tmp_path / "shop"
    write(project, "dbt_project.yml", "name: shop\n")
    write(project, "packages.yml",
          "packages:\n  - local: ../../mesh_platform/dbt/dbt_package\n"
          "  - package: dbt-labs/dbt_utils\n    version: 1.3.0\n"
          "  - git: https://github.com/dbt-labs/dbt-audit-helper.git\n    revision: 0.12.0\n"
          "  - local: helpers\n")  # fmt: skip
    write(project, "helpers/dbt_project.yml", "name: helpers\n")
    write(project, "vendor/audit_helper/dbt_project.yml", "name: audit_helper\n")
    packages = read_packages(project)
    assert [(p.kind, p.line) for p in packages] == [
        ("local", 2), ("package", 3), ("git", 5), ("local", 7)
    ]  # fmt: skip
    with pytest.raises(DomainError) as refused:
        check_offline("shop", project, packages)
    what, fix = refused.value.what, refused.value.fix
    assert (
        "dbt package dbt_utils (package: dbt-labs/dbt_utils, dbt_projects/shop/packages.yml:3)"
        in what
    )
    assert "dbt package dbt-audit-helper (git: " in what and "packages.yml:5" in what
    assert "helpers" not in what  # a local package of the project installs
    assert "- local: vendor/dbt_utils" in fix  # how to vendor it
    assert "a copy of dbt-audit-helper is checked in at vendor/audit_helper" in fix  # by name
    assert "replace `- git: https://github.com/dbt-labs/dbt-audit-helper.git` with " \
        "`- local: vendor/audit_helper`" in fix  # fmt: skip


def test_a_local_package_that_is_not_a_dbt_package_is_refused(tmp_path):
    project = tmp_path / "shop"
    write(project, "dbt_project.yml", "name: shop\n")
    write(project, "packages.yml", "packages:\n  - local: nowhere\n")
    with pytest.raises(DomainError, match=r"local package 'nowhere'.*is not a dbt package"):
        check_offline("shop", project, read_packages(project))


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Mesh, object, object]:
    """The sample mesh where logistics uses a package of its own, marketing a hub package it did
    not vendor, and sales a package whose macro reads logistics' raw file; `mesh prepare` run
    twice (the second time with --partial-ok)."""
    root = copy_mesh(tmp_path_factory.mktemp("packages") / "mesh")
    write(root, "dbt_projects/logistics/local_packages/geo_utils/dbt_project.yml",
          "name: geo_utils\nversion: '1.0.0'\nconfig-version: 2\n")  # fmt: skip
    write(root, "dbt_projects/logistics/local_packages/geo_utils/macros/km.sql",
          "{% macro km(miles) %}({{ miles }} * 1.609){% endmacro %}\n")  # fmt: skip
    add_package(root, "logistics", "- local: local_packages/geo_utils")
    add_package(root, "marketing", "- package: dbt-labs/dbt_utils\n    version: 1.3.0")
    secret = root / "state" / "domains" / "logistics" / "raw" / "secret.parquet"
    write(root, "dbt_projects/sales/vendor/snoop_utils/dbt_project.yml",
          "name: snoop_utils\nversion: '1.0.0'\nconfig-version: 2\n")  # fmt: skip
    write(
        root,
        "dbt_projects/sales/vendor/snoop_utils/macros/snoop.sql",
        f"{{% macro logistics_secret() %}}read_parquet('{secret}'){{% endmacro %}}\n",
    )
    write(root, "dbt_projects/sales/models/staging/stg_snoop.sql",
          "select * from {{ snoop_utils.logistics_secret() }}\n")  # fmt: skip
    add_package(root, "sales", "- local: vendor/snoop_utils")
    first = run_mesh(root, "prepare", timeout=900)
    second = run_mesh(root, "prepare", "--partial-ok", timeout=900)
    return load_mesh(root), first, second


def test_one_domain_that_cannot_be_prepared_is_reported_and_the_others_are(packaged):
    mesh, first, second = packaged
    assert first.returncode == 1, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    output = " ".join((first.stdout + first.stderr).split())  # rich folds long lines
    assert "dbt manifest marketing: cannot be prepared" in output
    assert "1 of 3 domain(s) could not be prepared" in output
    assert (
        "domain 'marketing': its dbt packages cannot be installed: dbt package dbt_utils" in output
    )
    assert "- local: vendor/dbt_utils" in output  # the fix: vendor it
    assert "`mesh build` builds them and skips these" in output
    for domain in ("logistics", "sales"):
        assert load_manifest(load_domain(mesh, domain))["nodes"]  # prepared
    # bootstrap's call: the others are prepared, so it goes on (and says why)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "warning:" in second.stderr and "marketing" in second.stderr
    assert "dbt manifest logistics: up to date" in second.stderr  # nothing installed again
    assert "mesh prepare --partial-ok" in (REPO / "scripts" / "bootstrap.sh").read_text()


def test_dbt_deps_installs_local_packages_beside_the_platforms(packaged):
    mesh, _, _ = packaged
    domain = load_domain(mesh, "logistics")
    installed = domain.dbt_project_dir / "dbt_packages"
    assert sorted(p.name for p in installed.iterdir()) == [STAMP_FILE, "geo_utils", "mesh"]
    assert (installed / "geo_utils" / "macros" / "km.sql").is_file()
    assert (installed / "mesh" / "macros" / "unique_combination.sql").is_file()
    assert "macro.geo_utils.km" in load_manifest(domain)["macros"]
    assert not (domain.dbt_project_dir / "package-lock.yml").exists()  # dbt's output stays out


def test_a_packages_macro_is_refused_at_load_and_locked_out_at_run_time(packaged):
    """The package's macro reads logistics' raw area: the load check names the package's
    macro; with the load check out of the way, the locked connection refuses the read."""
    from dagster_dbt import DbtCliResource

    from mesh_platform.assets.dbt import isolated_dbt

    mesh, _, _ = packaged
    domain = load_domain(mesh, "sales")
    problems = manifest_problems(domain, load_manifest(domain), list_domain_names(mesh))
    assert any(
        "macro logistics_secret (dbt package snoop_utils: macros/snoop.sql) calls read_parquet()"
        in p
        for p in problems
    ), problems
    secret = mesh.raw_dir("logistics") / "secret.parquet"
    secret.parent.mkdir(parents=True)
    duckdb.execute(f"copy (select 42 as answer) to '{secret}'")
    configured = DbtCliResource(
        project_dir=str(domain.dbt_project_dir), dbt_executable=resolve_dbt_executable(mesh)
    )
    with isolated_dbt(configured, mesh, domain) as dbt:
        invocation = dbt.cli(["run", "--select", "stg_snoop"], raise_on_error=False).wait()
        (result,) = invocation.get_artifact("run_results.json")["results"]
    assert result["status"] == "error"
    assert "file system operations are disabled by configuration" in result["message"]


# -- seeds: single files, never through a link --------------------------------------------------


def test_seed_files_are_allowed_one_by_one_and_never_through_a_link(tmp_path):
    project, other = tmp_path / "shop", tmp_path / "sales"
    write(project, "dbt_project.yml", "name: shop\nseed-paths: [seeds, data]\n")
    write(project, "seeds/customers.csv", "id\n1\n")
    write(project, "data/nested/orders.csv", "id\n2\n")
    write(other, "secret.csv", "answer\n42\n")
    os.symlink(other / "secret.csv", project / "seeds" / "linked.csv")
    os.symlink(other, project / "seeds" / "linked_dir")
    seeds = seed_files(project)
    assert seeds == [project / "data/nested/orders.csv", project / "seeds/customers.csv"]

    conn = duckdb.connect(str(tmp_path / "shop.duckdb"))
    lock_down(conn, [tmp_path / "state"], pinned_files(seeds))
    assert conn.execute(f"select id from read_csv('{seeds[1]}')").fetchall() == [(1,)]
    for path in (project / "seeds/linked.csv", other / "secret.csv", project / "seeds"):
        with pytest.raises(duckdb.Error, match="disabled by configuration"):
            conn.execute(f"select * from read_csv('{path}')")

    pinned = pinned_files(seeds)
    assert moved_files(pinned) == []
    seeds[1].unlink()
    os.symlink(other / "secret.csv", seeds[1])  # swapped for a link after the profile
    assert moved_files(pinned) == [str(seeds[1])]
