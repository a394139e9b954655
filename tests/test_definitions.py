"""Each domain's code location, loaded from a prepared copy of the sample mesh.

Expectations are read from what the domains declare (domain.yaml, the dbt YAML), so the tests
check the platform's translation rules, not a copy of today's asset list.
"""

import importlib.util
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mesh_platform.config import Mesh
from mesh_platform.definitions import domain_definitions
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import MeshError
from mesh_platform.products.python import PythonProduct

DOMAINS = ["logistics", "marketing", "sales"]


def _load(mesh: Mesh, domain: str) -> dg.Definitions:
    """The platform's definitions of the domain, with its Python products imported by path
    (the copy's `domains` package is not importable beside the repo's in this process)."""
    products = []
    for path in sorted((mesh.root / "domains" / domain / "products").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_test_{domain}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        products += [v for v in vars(module).values() if isinstance(v, PythonProduct)]
    return domain_definitions(mesh.root / "domains" / domain / "definitions.py", products)


def _declared_models(mesh: Mesh, domain: str, folder: str) -> set[str]:
    """Asset names of the models declared in the YAML: a dbt model version N >= 2 of a
    product is its own product `<name>_vN` (major versions live side by side)."""
    names = set()
    for path in (mesh.root / "dbt_projects" / domain / "models" / folder).glob("*.yml"):
        for model in yaml.safe_load(path.read_text()).get("models", []):
            versions = [v["v"] for v in model.get("versions", [])] or [1]
            names |= {model["name"] if v == 1 else f"{model['name']}_v{v}" for v in versions}
    return names


def _python_products(mesh: Mesh, domain: str) -> dict[str, dict]:
    """name -> YAML descriptor of the domain's Python-built products."""
    folder = mesh.root / "domains" / domain / "products"
    return (
        {p.stem: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yml"))}
        if folder.is_dir()
        else {}
    )


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
    products |= set(_python_products(prepared_mesh, domain))
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
        assert node.tags["mesh/domain"] == domain
        is_product = len(key.path) == 2
        if is_product:  # owners from the product's descriptor: its team and contact
            team, contact = node.owners
            assert team.startswith("team:") and "@" in contact
            assert node.tags["mesh/layer"] == "product"
            built_with = node.tags["mesh/built_with"]
            kinds = {"dbt", "duckdb", "iceberg"} if built_with == "dbt" else {"python", "iceberg"}
            assert kinds <= set(node.kinds)
            assert node.tags["mesh/access"] == "public"
            assert node.metadata["mesh/address"] == f"{domain}.{key.path[1]}"
            assert node.metadata["dagster/table_name"] == f"mesh.{domain}.{key.path[1]}"
            columns = node.metadata["dagster/column_schema"].columns
            assert columns and all(c.type for c in columns)
            assert all(c.tags.get("classification") for c in columns)
        else:
            assert list(node.owners) == spec_file["owners"]
        if is_product:
            continue
        if key.path[1] == "raw":
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
    """Every asset that writes the domain's DuckDB (raw landing, dbt) holds the domain's pool;
    Python products write only an in-memory DuckDB and Iceberg."""
    for domain, defs in loaded.items():
        job = defs.resolve_job_def(f"{domain}_build")
        assert job is not None
        for assets_def in defs.resolve_asset_graph().assets_defs:
            if not assets_def.is_executable:
                continue
            tags = {
                t
                for k in assets_def.keys
                for t in [assets_def.tags_by_key[k].get("mesh/built_with")]
            }
            expected = None if tags == {"python"} else f"mesh_domain_{domain}"
            assert assets_def.op.pool == expected, assets_def.keys


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


def _descriptor_yaml(mesh: Mesh, domain: str, model: str) -> dict:
    for path in (mesh.root / "dbt_projects" / domain / "models" / "products").glob("*.yml"):
        for node in yaml.safe_load(path.read_text()).get("models", []):
            if node["name"] == model:
                return node
    raise AssertionError(f"{domain}.{model} not declared")


def test_product_specs_come_from_the_descriptor(prepared_mesh, loaded):
    declared = _descriptor_yaml(prepared_mesh, "sales", "customers")
    mesh_block = declared["config"]["meta"]["mesh"]
    node = loaded["sales"].resolve_asset_graph().get(dg.AssetKey(["sales", "customers"]))
    assert node.owners == [f"team:{mesh_block['owner']['team']}", mesh_block["owner"]["contact"]]
    assert node.tags["mesh/version"] == mesh_block["version"]
    assert node.tags["mesh/status"] == mesh_block["status"]
    assert node.metadata["mesh/urn"] == f"urn:mesh:sales:customers:v{mesh_block['version'][0]}"
    assert mesh_block["purpose"] in node.description
    assert node.metadata["dagster/uri"].endswith("/warehouse/sales/customers")
    hours = int(mesh_block["sla"]["freshness"]["max_age"].rstrip("h"))
    # 26h does not fit in sales' daily schedule: a time window of max age
    assert node.freshness_policy.fail_window.to_timedelta().total_seconds() == hours * 3600

    columns = {c.name: c.tags for c in node.metadata["dagster/column_schema"].columns}
    for column in declared["columns"]:
        classification = column["config"]["meta"]["classification"]
        if classification.startswith("pii:"):
            assert columns[column["name"]] == {"classification": "pii", "pii": classification[4:]}
        else:
            assert columns[column["name"]] == {"classification": classification}
    assert node.tags["mesh/pii"] == "true"


def test_a_scheduled_product_whose_max_age_fits_gets_a_cron_freshness_policy():
    from mesh_platform.assets.specs import freshness_policy
    from mesh_platform.domain import Schedule
    from mesh_platform.products.descriptor import DescriptorBody, ProductDescriptor

    def descriptor(max_age: str) -> ProductDescriptor:
        return ProductDescriptor(
            domain="sales", name="orders", description="Orders.", source_file="x",
            body=DescriptorBody(
                purpose="Freshness policy test.", version="1.0.0",
                owner={"team": "sales", "contact": "s@example.com"},
                sla={"freshness": {"max_age": max_age}},
            ),
            columns=[{"name": "k"}],
        )  # fmt: skip

    daily = Schedule(cron="0 5 * * *", timezone="UTC")
    policy = freshness_policy(descriptor("20h"), daily)
    assert policy.deadline_cron == "0 5 * * *"
    assert policy.lower_bound_delta.total_seconds() == 20 * 3600
    assert freshness_policy(descriptor("26h"), daily).fail_window.to_timedelta().days == 1
    assert freshness_policy(descriptor("2h"), None).fail_window.to_timedelta().seconds == 7200


def test_every_product_declares_the_gate_as_asset_checks(loaded):
    for defs in loaded.values():
        graph = defs.resolve_asset_graph()
        checks = {}
        for check in graph.asset_check_keys:
            checks.setdefault(check.asset_key, set()).add(check.name)
        for key in graph.materializable_asset_keys:
            node = graph.get(key)
            if node.tags.get("mesh/layer") != "product":
                continue
            assert {"schema_compatible", "contract", "volume"} <= checks[key], key
            sla = node.metadata["mesh/sla"]
            if getattr(sla, "value", sla).get("expectations"):
                assert "expectations" in checks[key]


def test_two_major_versions_live_side_by_side(prepared_mesh, loaded):
    graph = loaded["logistics"].resolve_asset_graph()
    v1 = graph.get(dg.AssetKey(["logistics", "nations"]))
    v2 = graph.get(dg.AssetKey(["logistics", "nations_v2"]))
    assert v1.metadata["mesh/urn"] == "urn:mesh:logistics:nations:v1"
    assert v2.metadata["mesh/urn"] == "urn:mesh:logistics:nations:v2"
    assert v1.tags["mesh/status"] == "deprecated" and v2.tags["mesh/status"] == "active"
    assert v2.metadata["dagster/table_name"] == "mesh.logistics.nations_v2"
    v1_columns = {c.name for c in v1.metadata["dagster/column_schema"].columns}
    v2_columns = {c.name for c in v2.metadata["dagster/column_schema"].columns}
    assert v1_columns != v2_columns  # the breaking change that needed a new major


def test_python_product_is_declared_like_a_dbt_product(prepared_mesh, loaded):
    for name, declared in _python_products(prepared_mesh, "marketing").items():
        node = loaded["marketing"].resolve_asset_graph().get(dg.AssetKey(["marketing", name]))
        assert node.tags["mesh/built_with"] == "python"
        assert node.metadata["mesh/version"] == declared["mesh"]["version"]
        assert [c.name for c in node.metadata["dagster/column_schema"].columns] == [
            c["name"] for c in declared["columns"]
        ]
        assert dg.AssetKey(["marketing", "customer_segments"]) in node.parent_keys


def _sensor_result(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return sensor.evaluate_tick(context)


def test_source_aligned_domains_run_on_their_declared_schedule(loaded):
    (schedule,) = loaded["sales"].schedules
    assert schedule.cron_schedule == "0 5 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == "sales_build"
    assert not loaded["marketing"].schedules  # consumers run on their inputs, not a clock


def test_consumer_sensor_runs_only_on_published_snapshots_of_its_inputs(loaded):
    sensors = {s.name: s for s in loaded["marketing"].sensors}
    sensor = sensors["marketing_on_inputs_published"]
    assert sensor.job_name == "marketing_build"
    # sales consumes no other domain's product: only its SLA monitor
    assert [s.name for s in loaded["sales"].sensors] == ["sales_sla_monitor"]
    assert "marketing_sla_monitor" in sensors
    orders = dg.AssetKey(["sales", "orders"])
    with dg.DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(orders, metadata={"mesh/iceberg_snapshot_id": "1"})
        )
        first = _sensor_result(sensor, instance, None)
        assert not first.run_requests  # the first tick only records where producers are
        cursor = first.cursor
        # A materialisation without a published snapshot id (not one the platform reports for
        # a published batch) and an unrelated asset start nothing.
        instance.report_runless_asset_event(dg.AssetMaterialization(orders))
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                dg.AssetKey(["sales", "unrelated"]), metadata={"mesh/iceberg_snapshot_id": "9"}
            )
        )
        quiet = _sensor_result(sensor, instance, cursor)
        assert not quiet.run_requests
        instance.report_runless_asset_event(
            dg.AssetMaterialization(orders, metadata={"mesh/iceberg_snapshot_id": "2"})
        )
        fired = _sensor_result(sensor, instance, quiet.cursor)
        (request,) = fired.run_requests
        assert request.run_key == "sales/orders@2"
        assert request.tags["mesh/domain"] == "marketing"
        again = _sensor_result(sensor, instance, fired.cursor)
        assert not again.run_requests  # one run per published snapshot


def test_consumer_sensor_runs_on_the_first_publication_of_an_input_it_never_saw(loaded):
    """The producer had published nothing when the sensor first ticked: its first published
    snapshot starts the consumer (found by the topology's daemon: it waited for a second one)."""
    sensor = {s.name: s for s in loaded["marketing"].sensors}["marketing_on_inputs_published"]
    with dg.DagsterInstance.ephemeral() as instance:
        first = _sensor_result(sensor, instance, None)
        assert not first.run_requests and first.cursor == "{}"
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                dg.AssetKey(["sales", "orders"]), metadata={"mesh/iceberg_snapshot_id": "7"}
            )
        )
        fired = _sensor_result(sensor, instance, first.cursor)
        (request,) = fired.run_requests
        assert request.run_key == "sales/orders@7"
        assert not _sensor_result(sensor, instance, fired.cursor).run_requests


def test_sensor_and_sla_monitor_intervals_come_from_the_settings(prepared_mesh, monkeypatch):
    defaults = {
        s.name: s.minimum_interval_seconds for s in _load(prepared_mesh, "marketing").sensors
    }
    assert defaults == {"marketing_on_inputs_published": 60, "marketing_sla_monitor": 300}
    monkeypatch.setenv("MESH_ORCHESTRATION__SENSOR_INTERVAL_SECONDS", "20")
    monkeypatch.setenv("MESH_ORCHESTRATION__SLA_INTERVAL_SECONDS", "15")
    tuned = {s.name: s.minimum_interval_seconds for s in _load(prepared_mesh, "marketing").sensors}
    assert tuned == {"marketing_on_inputs_published": 20, "marketing_sla_monitor": 15}
    monkeypatch.setenv("MESH_ORCHESTRATION__SENSOR_INTERVAL_SECONDS", "1")
    with pytest.raises(MeshError, match="sensor_interval_seconds"):
        _load(prepared_mesh, "marketing")
