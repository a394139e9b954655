"""Each domain as a Dagster Component (mesh_platform/components.py): its defs/domain/defs.yaml
builds what domain_definitions builds, and the real `dg check defs` / `dg list defs` work in the
domain's folder (in a prepared copy of the sample mesh)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mesh_platform.components import DomainComponent, load_domain_defs
from mesh_platform.config import Mesh
from mesh_platform.definitions import domain_definitions
from mesh_platform.errors import DomainError
from mesh_platform.products.inventory import python_products
from mesh_platform.testing import edited, user_env

DOMAINS = ["logistics", "marketing", "sales"]
DG = str(Path(sys.executable).parent / "dg")


def _inventory(defs: dg.Definitions) -> dict[str, list[str]]:
    graph = defs.resolve_asset_graph()
    return {
        "assets": sorted(k.to_user_string() for k in graph.get_all_asset_keys()),
        "checks": sorted(
            f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys
        ),
        "schedules": sorted(s.name for s in defs.schedules or []),
        "sensors": sorted(s.name for s in defs.sensors or []),
        "jobs": sorted(j.name for j in defs.jobs or []),
        "resources": sorted(defs.resources or {}),
    }


def _dg(mesh: Mesh, domain: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [DG, *args], cwd=mesh.domains_dir / domain, env={**user_env(), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_component_builds_what_domain_definitions_builds(prepared_mesh, domain):
    location = prepared_mesh.domains_dir / domain / "definitions.py"
    expected = domain_definitions(location, python_products(prepared_mesh, domain))
    loaded = load_domain_defs(location)
    assert _inventory(loaded) == _inventory(expected)
    assert _inventory(loaded)["assets"]  # not two empty lists
    assert loaded.metadata["mesh/domain"].value == domain


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domain_names_the_domain_component(domain):
    root = Path(__file__).resolve().parents[1] / "domains" / domain
    component = yaml.safe_load((root / "defs" / "domain" / "defs.yaml").read_text())
    assert component == {"type": "mesh_platform.components.DomainComponent"}
    assert DomainComponent.__module__ + ".DomainComponent" == component["type"]


def test_a_platform_error_is_raised_as_domain_definitions_raises_it(prepared_mesh):
    """Loaded through the component tree, a broken domain fails with the platform's own error
    (not Dagster's component-tree wrapper), so `mesh build` and `mesh ui` say the same."""
    descriptor = prepared_mesh.domains_dir / "sales" / "domain.yaml"
    with edited(descriptor, "kind: source-aligned", "kind: unknown-kind"):
        with pytest.raises(DomainError) as through_component:
            load_domain_defs(descriptor.parent / "definitions.py")
        with pytest.raises(DomainError) as directly:
            domain_definitions(descriptor.parent / "definitions.py")
    assert str(through_component.value) == str(directly.value)


@pytest.mark.e2e
@pytest.mark.parametrize("domain", DOMAINS)
def test_dg_check_and_list_defs_in_each_domain_folder(prepared_mesh, domain):
    checked = _dg(prepared_mesh, domain, "check", "defs")
    assert "All component YAML validated successfully." in checked.stdout
    assert "All definitions loaded successfully." in checked.stdout
    listed = json.loads(_dg(prepared_mesh, domain, "list", "defs", "--json").stdout)
    expected = _inventory(
        domain_definitions(
            prepared_mesh.domains_dir / domain / "definitions.py",
            python_products(prepared_mesh, domain),
        )
    )
    assert sorted(a["asset_key"] for a in listed["assets"]) == expected["assets"]
    assert sorted(c["key"] for c in listed["asset_checks"]) == expected["checks"]
    assert sorted(j["name"] for j in listed["jobs"]) == expected["jobs"]
    assert sorted(s["name"] for s in listed.get("schedules", [])) == expected["schedules"]
    assert sorted(s["name"] for s in listed.get("sensors", [])) == expected["sensors"]
