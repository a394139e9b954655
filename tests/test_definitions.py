"""Each domain's code location, loaded from a prepared copy of the sample mesh.

Expectations are read from what the domains declare (domain.yaml, the dbt YAML), so the tests
check the platform's translation rules, not a copy of today's asset list.
"""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from mesh_platform.config import Mesh
from mesh_platform.definitions import domain_definitions
from mesh_platform.domain import list_domain_names

DOMAINS = ["logistics", "marketing", "sales"]


def _load(mesh: Mesh, domain: str) -> dg.Definitions:
    return domain_definitions(mesh.root / "domains" / domain / "definitions.py")


def _declared_models(mesh: Mesh, domain: str, folder: str) -> set[str]:
    names = set()
    for path in (mesh.root / "dbt_projects" / domain / "models" / folder).glob("*.yml"):
        for model in yaml.safe_load(path.read_text()).get("models", []):
            names.add(model["name"])
    return names


def _spec(defs: dg.Definitions, key: dg.AssetKey) -> dg.AssetSpec:
    node = defs.resolve_asset_graph().get(key)
    return node


@pytest.fixture(scope="module")
def loaded(prepared_mesh) -> dict[str, dg.Definitions]:
    return {d: _load(prepared_mesh, d) for d in list_domain_names(prepared_mesh)}


def test_every_domain_is_a_code_location(prepared_mesh, loaded):
    assert sorted(loaded) == DOMAINS


@pytest.mark.parametrize("domain", DOMAINS)
def test_products_are_keyed_by_address(prepared_mesh, loaded, domain):
    graph = loaded[domain].resolve_asset_graph()
    keys = {k for k in graph.materializable_asset_keys}
    products = _declared_models(prepared_mesh, domain, "products")
    internal = _declared_models(prepared_mesh, domain, "staging")
    assert products, "every sample domain declares products"
    for product in products:
        assert dg.AssetKey([domain, product]) in keys
    for model in internal:
        assert dg.AssetKey([domain, "internal", model]) in keys
    owned = {k for k in keys if k.path[0] == domain}
    assert owned == keys, "a domain's code location materialises only its own assets"


@pytest.mark.parametrize("domain", DOMAINS)
def test_groups_owners_tags_and_kinds(prepared_mesh, loaded, domain):
    spec_file = yaml.safe_load(
        (prepared_mesh.root / "domains" / domain / "domain.yaml").read_text()
    )
    graph = loaded[domain].resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        node = graph.get(key)
        assert node.group_name == domain
        assert list(node.owners) == spec_file["owners"]
        assert node.tags["mesh/domain"] == domain
        is_product = len(key.path) == 2
        if is_product:
            assert node.tags["mesh/layer"] == "product"
            assert {"dbt", "duckdb", "iceberg"} <= set(node.kinds)
            assert node.tags["mesh/access"] == "public"
            assert node.metadata["mesh/address"] == f"{domain}.{key.path[1]}"
            assert node.metadata["dagster/table_name"] == f"mesh.{domain}.{key.path[1]}"
            columns = node.metadata["dagster/column_schema"].columns
            assert columns and all(c.type for c in columns)
        elif key.path[1] == "raw":
            assert node.tags["mesh/layer"] == "raw"
        else:
            assert key.path[1] == "internal"
            assert node.tags["mesh/layer"] == "internal"
            assert node.tags["mesh/access"] == "private"


def test_raw_landing_matches_domain_descriptor(prepared_mesh, loaded):
    for domain in ("sales", "logistics"):
        declared = yaml.safe_load(
            (prepared_mesh.root / "domains" / domain / "domain.yaml").read_text()
        )["raw"]["tables"]
        keys = loaded[domain].resolve_asset_graph().materializable_asset_keys
        assert {k.path[2] for k in keys if k.path[1:2] == ["raw"]} == set(declared)
    marketing_keys = loaded["marketing"].resolve_asset_graph().materializable_asset_keys
    assert not [k for k in marketing_keys if "raw" in k.path]


def test_marketing_lineage_reaches_into_producers(loaded):
    graph = loaded["marketing"].resolve_asset_graph()
    upstream = set()
    for key in graph.materializable_asset_keys:
        upstream |= {p for p in graph.get(key).parent_keys if p.path[0] != "marketing"}
    assert upstream == {
        dg.AssetKey(["sales", "orders"]),
        dg.AssetKey(["sales", "order_lines"]),
        dg.AssetKey(["sales", "customers"]),
        dg.AssetKey(["logistics", "shipments"]),
        dg.AssetKey(["logistics", "nations"]),
    }
    # ... and those keys are real products of the producing code locations
    for key in upstream:
        assert key in loaded[key.path[0]].resolve_asset_graph().materializable_asset_keys
    impact = graph.get(dg.AssetKey(["marketing", "late_delivery_impact"]))
    assert dg.AssetKey(["logistics", "shipments"]) in impact.parent_keys


def test_dbt_tests_become_asset_checks(loaded):
    checks = loaded["sales"].resolve_asset_graph().asset_check_keys
    names = {(c.asset_key.to_user_string(), c.name) for c in checks}
    assert ("sales/orders", "unique_orders_order_key") in names
    assert any(a == "sales/order_lines" and "unique_combination" in n for a, n in names)


def test_domain_jobs_and_pools(loaded):
    for domain, defs in loaded.items():
        job = defs.resolve_job_def(f"{domain}_build")
        assert job is not None
        pools = {a.op.pool for a in defs.resolve_asset_graph().assets_defs if a.is_executable}
        assert pools == {f"mesh_domain_{domain}"}


def test_code_location_import_does_no_work(prepared_mesh):
    """Importing a code location module must not parse dbt or touch state: it is lazy."""
    import importlib.util

    path = prepared_mesh.root / "domains" / "sales" / "definitions.py"
    manifest = prepared_mesh.root / "dbt_projects/sales/target/manifest.json"
    before = manifest.stat().st_mtime_ns
    spec = importlib.util.spec_from_file_location("copied_sales_definitions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not isinstance(module.defs, dg.Definitions)  # a lazy @dg.definitions loader
    assert manifest.stat().st_mtime_ns == before
    assert isinstance(module.defs(), dg.Definitions)


def test_missing_manifest_says_run_prepare(mesh_copy):
    from mesh_platform.errors import DomainError

    with pytest.raises(DomainError) as err:
        _load(mesh_copy, "sales")
    assert "mesh prepare --domain sales" in str(err.value)
    assert str(Path("dbt_projects/sales/target/manifest.json")) in str(err.value)


def test_missing_dbt_executable_is_named(prepared_mesh, monkeypatch):
    from mesh_platform.errors import DbtExecutableNotFoundError

    monkeypatch.setenv("MESH_DBT_EXECUTABLE", "/nonexistent/dbt")
    with pytest.raises(DbtExecutableNotFoundError) as err:
        _load(prepared_mesh, "sales")
    assert "/nonexistent/dbt" in str(err.value)
    assert "scripts/bootstrap.sh" in str(err.value)
    assert "MESH_DBT_EXECUTABLE" in str(err.value)
