"""One real end-to-end build of the sample mesh at a tiny scale, through the `mesh` command.

Row counts and totals are checked against TPC-H tables generated independently in this process,
read back from Iceberg with DuckDB's own iceberg reader (any engine can read the products).
"""

import subprocess

import dagster as dg
import pytest

from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.sources.landing import LANDING_FILE
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.testing import copy_mesh, deliver_raw, run_mesh, why

pytestmark = pytest.mark.e2e

SF = 0.01


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = copy_mesh(tmp_path_factory.mktemp("e2e") / "mesh")
    result = run_mesh(root, "build", "--scale", str(SF))
    return load_mesh(root), result


@pytest.fixture(scope="module")
def tpch():
    conn = connect(extensions=("tpch",))
    conn.execute("CALL dbgen(sf = ?)", [SF])
    yield conn
    conn.close()


def _scan(mesh, address: str):
    """A DuckDB connection and the FROM clause reading the product's current Iceberg snapshot."""
    catalog = open_catalog(mesh)
    table = catalog.load_table(tuple(address.split(".")))
    conn = connect(extensions=("iceberg",))
    return conn, f"iceberg_scan('{table.metadata_location}')"


def _count(mesh, address: str) -> int:
    conn, source = _scan(mesh, address)
    return conn.execute(f"SELECT count(*) FROM {source}").fetchone()[0]


def _snapshot(mesh, address: str) -> int:
    return open_catalog(mesh).load_table(tuple(address.split("."))).current_snapshot().snapshot_id


def _rebuild_sales_with(mesh, raw_table: str, select_sql: str) -> subprocess.CompletedProcess:
    """Rebuild the sales domain with one raw table delivered as ``select_sql`` by its source
    (``{raw}`` names the original file), then restore the original landing."""
    landing = mesh.raw_dir("sales")
    saved = {p: p.read_bytes() for p in (landing / f"{raw_table}.parquet", landing / LANDING_FILE)}
    deliver_raw(mesh, "sales", raw_table, select_sql)
    try:
        return run_mesh(mesh.root, "build", "--domain", "sales", "--scale", str(SF))
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


def _failed_checks(mesh, domain: str) -> tuple[set[tuple[str, str]], list]:
    """(asset, check) of every failed check of the domain's latest run, and the run's events."""
    with dg.DagsterInstance.from_config(str(mesh.dagster_home)) as instance:
        run = instance.get_runs(filters=dg.RunsFilter(tags={"mesh/domain": domain}), limit=1)[0]
        logs = instance.all_logs(run.run_id)
    evaluations = [
        e.dagster_event.event_specific_data
        for e in logs
        if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    failed = {(ev.asset_key.to_user_string(), ev.check_name) for ev in evaluations if not ev.passed}
    return failed, logs


def test_build_succeeds_and_prints_a_summary(built):
    _, result = built
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "mesh build summary" in result.stdout
    for product in ("sales/orders", "logistics/shipments", "marketing/late_delivery_impact"):
        assert product in result.stdout
    # producers were built before their consumer
    err = result.stderr
    assert err.index("] sales") < err.index("] marketing")
    assert err.index("] logistics") < err.index("] marketing")


@pytest.mark.parametrize(
    ("address", "tpch_table"),
    [
        ("sales.orders", "orders"),
        ("sales.order_lines", "lineitem"),
        ("sales.customers", "customer"),
        ("logistics.shipments", "lineitem"),
        ("logistics.suppliers", "supplier"),
        ("logistics.parts", "part"),
        ("logistics.nations", "nation"),
        ("marketing.customer_segments", "customer"),
    ],
)
def test_product_row_counts_match_tpch(built, tpch, address, tpch_table):
    mesh, result = built
    assert result.returncode == 0
    expected = tpch.execute(f"SELECT count(*) FROM {tpch_table}").fetchone()[0]
    assert _count(mesh, address) == expected


def test_cross_domain_totals_match_tpch(built, tpch):
    mesh, _ = built
    revenue = tpch.execute(
        "SELECT sum(cast(l_extendedprice * (1 - l_discount) AS decimal(18, 2))) FROM lineitem"
    ).fetchone()[0]
    late = tpch.execute(
        "SELECT count(*) FROM lineitem WHERE l_receiptdate > l_commitdate"
    ).fetchone()[0]
    conn, source = _scan(mesh, "marketing.revenue_by_nation_segment")
    assert conn.execute(f"SELECT sum(net_revenue) FROM {source}").fetchone()[0] == revenue
    conn, source = _scan(mesh, "marketing.late_delivery_impact")
    lines, late_lines, total = conn.execute(
        f"SELECT sum(line_count), sum(late_line_count), sum(net_revenue) FROM {source}"
    ).fetchone()
    assert lines == tpch.execute("SELECT count(*) FROM lineitem").fetchone()[0]
    assert late_lines == late
    assert total == revenue


def test_personal_data_is_published_masked(built, tpch):
    """sales.customers classifies full_name, email and phone as personal data with masking
    rules: emails are stored as salted hashes (still one per customer), names redacted; phones
    are masked at read: stored in clear, served truncated to readers not cleared for them."""
    from mesh_platform.query.engine import QuerySession

    mesh, _ = built
    conn, source = _scan(mesh, "sales.customers")
    distinct, hashed, names, clear_phones = conn.execute(
        f"SELECT count(DISTINCT email), count(*) FILTER (WHERE regexp_matches(email, "
        f"'^[0-9a-f]{{64}}$')), count(*) FILTER (WHERE full_name = '[redacted]'), "
        f"count(*) FILTER (WHERE regexp_matches(phone, '^\\+?[0-9() -]{{7,}}$')) FROM {source}"
    ).fetchone()
    customers = tpch.execute("SELECT count(*) FROM customer").fetchone()[0]
    assert distinct == hashed == names == clear_phones == customers
    # customer care (cleared for pii:phone) reads them in clear, the owner too; the data
    # protection officer's clearance does not matter without a grant.
    with QuerySession("user:carol", mesh=mesh) as carol:
        (served,) = carol.sql("SELECT count(*) FILTER (WHERE phone LIKE '%***') AS n "
                              "FROM sales.customers").column("n").to_pylist()  # fmt: skip
    assert served == 0
    salt = (mesh.state_dir / "secrets" / "pii_salt").stat()
    assert oct(salt.st_mode & 0o777) == "0o600"


def test_each_domain_has_its_own_state(built):
    mesh, _ = built
    for domain in ("sales", "logistics", "marketing"):
        assert mesh.duckdb_path(domain).is_file()
        assert (mesh.state_dir / "warehouse" / domain).is_dir()
    assert sorted(p.name for p in mesh.raw_dir("sales").glob("*.parquet")) == [
        "customer.parquet",
        "customer_contact.parquet",
        "lineitem.parquet",
        "orders.parquet",
    ]
    assert not mesh.raw_dir("marketing").exists()


def test_runs_are_recorded_in_the_persistent_instance(built):
    mesh, _ = built
    instance = dg.DagsterInstance.from_config(str(mesh.dagster_home))
    runs = instance.get_runs()
    assert sorted(r.tags.get("mesh/domain") for r in runs) == ["logistics", "marketing", "sales"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    event = instance.get_latest_materialization_event(dg.AssetKey(["sales", "orders"]))
    metadata = event.asset_materialization.metadata
    assert int(metadata["mesh/iceberg_snapshot_id"].value) == _snapshot(mesh, "sales.orders")
    marketing = instance.get_latest_materialization_event(
        dg.AssetKey(["marketing", "customer_segments"])
    ).asset_materialization.metadata
    instance.dispose()  # the pytest process holds no connection to the instance's sqlite files
    assert marketing["mesh/inputs"].value["sales.orders"] == _snapshot(mesh, "sales.orders")


def test_products_lists_every_product_with_its_snapshot_rows_and_checks(built, tpch):
    import json

    mesh, _ = built
    result = run_mesh(mesh.root, "products", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = {r["address"]: r for r in json.loads(result.stdout)}
    assert rows.pop("mesh.sla_history")["owner"] == "platform"  # the platform's own table
    assert set(rows) >= {"sales.orders", "sales.customers", "logistics.nations_v2",
                         "marketing.segment_summary"}  # fmt: skip
    orders = tpch.execute("SELECT count(*) FROM orders").fetchone()[0]
    assert rows["sales.orders"]["rows"] == orders
    assert all(r["snapshot_id"] and r["published_at"] for r in rows.values())
    assert {r["check_status"] for r in rows.values()} == {"passed"}
    assert {r["sla_status"] for r in rows.values()} == {"holds"}
    found = run_mesh(mesh.root, "products", "--domain", "sales", "--search", "email",
                     "--format", "json")  # fmt: skip
    assert [r["address"] for r in json.loads(found.stdout)] == ["sales.customers"]


def test_describe_shows_the_whole_product(built):
    import json

    mesh, _ = built
    result = run_mesh(mesh.root, "describe", "sales.customers", "--format", "json")
    assert result.returncode == 0, result.stderr
    d = json.loads(result.stdout)
    classes = {c["name"]: c["classification"] for c in d["columns"]}
    assert classes["email"] == "pii:email" and classes["phone"] == "pii:phone"
    assert {g["to"] for g in d["grants"]} == {"marketing", "team:customer-care"}
    assert "marketing.customer_segments" in d["downstream"] and d["upstream"] == []
    assert d["sla"]["status"] == "holds" and d["sla"]["freshness_state"] == "holds"
    assert d["current"]["snapshot_id"] == d["history"][-1]["snapshot_id"]
    assert {c["name"] for c in d["checks"]} >= {"pii_detection", "expectations", "contract"}
    assert all(c["status"] == "passed" for c in d["checks"])
    segments = json.loads(
        run_mesh(mesh.root, "describe", "marketing.customer_segments", "--format", "json").stdout
    )
    assert {"sales.customers", "sales.orders", "logistics.nations"} <= set(segments["upstream"])
    text = run_mesh(mesh.root, "describe", "logistics.nations").stdout
    for expected in ("deprecated", "logistics.nations_v2", "who may read it", "snapshots on main"):
        assert expected in text
    missing = run_mesh(mesh.root, "describe", "sales.ordrs")
    assert missing.returncode == 1
    assert "no product sales.ordrs" in missing.stderr and "sales.orders" in missing.stderr


def test_a_failed_check_keeps_the_published_snapshot(built):
    """Sales' source delivers orders with one order duplicated. The changed landing rebuilds
    the incremental orders model in full, so the duplicate is caught twice: orders' enforced
    contract (its primary key) stops the model, and sales.order_lines' blocking uniqueness
    check fails, so its new data stays on an audit branch. Consumers keep the last good
    snapshots; sales.customers still publishes; Dagster records both failed checks."""
    mesh, _ = built
    addresses = ("sales.orders", "sales.order_lines", "sales.customers")
    before = {a: _snapshot(mesh, a) for a in addresses}
    result = _rebuild_sales_with(
        mesh, "orders", "SELECT * FROM '{raw}' UNION ALL (SELECT * FROM '{raw}' LIMIT 1)"
    )
    output = result.stdout + result.stderr
    check = "mesh_unique_combination_order_lines_order_key__line_number"
    assert result.returncode == 1, why(result)
    expected = f"sales.order_lines: not published: blocking check(s) failed: dbt test {check}"
    assert expected in output, why(result)
    assert _snapshot(mesh, "sales.orders") == before["sales.orders"]
    assert _snapshot(mesh, "sales.order_lines") == before["sales.order_lines"]
    assert _snapshot(mesh, "sales.customers") != before["sales.customers"]
    table = open_catalog(mesh).load_table(("sales", "order_lines"))
    audit = [ref for ref in table.metadata.refs if ref.startswith("audit-")]
    assert len(audit) == 1  # the rejected data, kept for inspection
    assert table.scan().use_ref(audit[0]).to_arrow().num_rows > table.scan().to_arrow().num_rows

    failed, _ = _failed_checks(mesh, "sales")
    assert failed == {("sales/order_lines", check), ("sales/orders", "contract")}


def test_the_sla_history_records_passed_and_blocked_runs(built):
    """Every gate evaluation is in mesh.sla_history (queryable like a product); `mesh sla`
    counts the blocked order_lines run against its quality budget, naming the failed check."""
    import json

    mesh, _ = built
    result = run_mesh(mesh.root, "query", "--as", "marketing", "--format", "json",
                      "SELECT address, passed, failed_checks FROM mesh.sla_history "
                      "WHERE address = 'sales.order_lines' ORDER BY recorded_at")  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [r["passed"] for r in runs] == [True, False]
    assert "mesh_unique_combination_order_lines" in runs[-1]["failed_checks"]
    report = run_mesh(mesh.root, "sla", "--domain", "sales", "--since", "1d", "--format", "json")
    assert report.returncode == 0, report.stderr
    by_address = {r["address"]: r for r in json.loads(report.stdout)}
    lines = by_address["sales.order_lines"]
    assert (lines["runs"], lines["failed_runs"], lines["quality"]) == (2, 1, 0.5)
    assert lines["quality_budget_left"] < 0 and not lines["met"]
    assert lines["last_breach"]["kind"] == "quality"
    assert "mesh_unique_combination_order_lines" in lines["last_breach"]["cause"]
    customers = by_address["sales.customers"]
    assert customers["failed_runs"] == 0 and customers["quality"] == 1.0
    assert customers["freshness"] == 1.0 and customers["met"]
    # the asset's materialisation carries the current figures; describe shows them in brief
    instance = dg.DagsterInstance.from_config(str(mesh.dagster_home))
    latest = instance.fetch_materializations(dg.AssetKey(["sales", "customers"]), limit=1)
    instance.dispose()
    metadata = latest.records[0].asset_materialization.metadata
    assert metadata["mesh/sla_quality_30d"].value == 1.0
    assert metadata["mesh/sla_runs_30d"].value >= 1
    described = json.loads(
        run_mesh(mesh.root, "describe", "sales.order_lines", "--format", "json").stdout
    )
    assert described["attainment_7d"]["runs"] == 2 and described["attainment_7d"]["quality"] == 0.5


def test_failures_are_reported_and_everything_else_is_kept(built):
    """One build, two kinds of failure: logistics' dbt project is broken (the domain cannot
    load) and one marketing model fails at run time. Sales is still rebuilt, marketing's other
    products are published, the failed products keep their previous good snapshots."""
    mesh, _ = built
    model = mesh.root / "dbt_projects/marketing/models/products/late_delivery_impact.sql"
    schema = mesh.root / "dbt_projects/logistics/models/products/products.yml"
    addresses = (
        "marketing.late_delivery_impact",
        "marketing.customer_segments",
        "sales.orders",
        "sales.customers",
        "logistics.shipments",
    )
    before = {a: _snapshot(mesh, a) for a in addresses}
    originals = {path: path.read_text() for path in (model, schema)}
    model.write_text(originals[model].replace("ship.is_late,", "ship.no_such_column,"))
    schema.write_text(originals[schema].replace("models:", "models:\n  - name: [broken", 1))
    try:
        result = run_mesh(mesh.root, "build", "--scale", str(SF))
    finally:
        for path, text in originals.items():
            path.write_text(text)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "2 domain(s) failed: logistics, marketing" in output
    assert "model late_delivery_impact: dbt status error" in output
    assert "products.yml" in output  # where logistics is broken
    summary = result.stdout[result.stdout.index("mesh build summary") :]
    assert [
        line for line in summary.splitlines() if "late_delivery_impact" in line and "failed" in line
    ]
    assert [line for line in summary.splitlines() if "logistics" in line and "not loaded" in line]
    # the failed product and the unloadable domain keep their last good snapshots ...
    assert (
        _snapshot(mesh, "marketing.late_delivery_impact")
        == before["marketing.late_delivery_impact"]
    )
    assert _snapshot(mesh, "logistics.shipments") == before["logistics.shipments"]
    # ... everything else was rebuilt and published (sales.orders is incremental: unchanged
    # input, no changed partition, same snapshot; sales.customers is rewritten)
    assert _snapshot(mesh, "marketing.customer_segments") != before["marketing.customer_segments"]
    assert _snapshot(mesh, "sales.orders") == before["sales.orders"]
    assert _snapshot(mesh, "sales.customers") != before["sales.customers"]


def test_unknown_domain_is_a_clear_error(mesh_copy):
    result = run_mesh(mesh_copy.root, "build", "--domain", "finance")
    assert result.returncode == 1
    assert "unknown domain(s): finance" in result.stderr
    assert "Traceback" not in result.stderr


def _products(mesh) -> list[str]:
    """Every product address published in the catalog (a table with mesh.address)."""
    catalog = open_catalog(mesh)
    found = []
    for (namespace,) in catalog.list_namespaces():
        for identifier in catalog.list_tables(namespace):
            table = catalog.load_table(identifier)
            if "mesh.address" in table.properties and namespace != "mesh":  # not platform's
                found.append(table.properties["mesh.address"])
    return sorted(found)


def test_every_sample_product_published_through_the_gate(built):
    """dbt products, both majors of logistics.nations and the Python product: each has a
    published snapshot recording its version and run, and table properties from its
    descriptor."""
    mesh, result = built
    assert result.returncode == 0
    products = _products(mesh)
    assert {"logistics.nations", "logistics.nations_v2", "marketing.segment_summary"} <= set(
        products
    )
    catalog = open_catalog(mesh)
    for address in products:
        table = catalog.load_table(tuple(address.split(".")))
        summary = table.current_snapshot().summary
        assert summary["mesh.run_id"] and summary["mesh.batch_id"] == summary["mesh.run_id"]
        assert summary["mesh.product_version"] == table.properties["mesh.version"]
        assert table.properties["mesh.urn"].startswith(f"urn:mesh:{address.split('.')[0]}:")
    v1 = catalog.load_table(("logistics", "nations"))
    v2 = catalog.load_table(("logistics", "nations_v2"))
    assert v1.properties["mesh.status"] == "deprecated"
    assert v2.properties["mesh.version"].startswith("2.")
    assert {f.name for f in v2.schema().fields} == {"nation_key", "nation", "region"}


def test_python_product_matches_its_input(built, tpch):
    mesh, _ = built
    conn, source = _scan(mesh, "marketing.segment_summary")
    customers, share = conn.execute(
        f"SELECT sum(customers), sum(revenue_share) FROM {source}"
    ).fetchone()
    assert customers == tpch.execute("SELECT count(*) FROM customer").fetchone()[0]
    assert abs(share - 1.0) < 1e-9
    instance = dg.DagsterInstance.from_config(str(mesh.dagster_home))
    event = instance.get_latest_materialization_event(dg.AssetKey(["marketing", "segment_summary"]))
    instance.dispose()
    inputs = event.asset_materialization.metadata["mesh/inputs"].value
    segments = open_catalog(mesh).load_table(("marketing", "customer_segments"))
    # the snapshot it read (earlier tests may have republished the input since)
    assert segments.snapshot_by_id(inputs["marketing.customer_segments"]) is not None


def test_smuggled_personal_data_blocks_publication_without_leaking(built):
    """Clear emails smuggled into an unclassified column (the customer account name): the
    governance data policy in the gate blocks sales.customers, the previous snapshot keeps
    serving, Dagster records the failed check, and no seeded value appears in anything the run
    wrote (command output, event log)."""
    mesh, _ = built
    before = _snapshot(mesh, "sales.customers")
    secret = "smuggled.person@example.org"
    result = _rebuild_sales_with(
        mesh,
        "customer",
        f"SELECT * REPLACE (CASE WHEN c_custkey <= 3 THEN '{secret}' ELSE c_name END AS c_name) "
        "FROM '{raw}'",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "sales.customers: not published: blocking check(s) failed: pii_detection" in output
    assert _snapshot(mesh, "sales.customers") == before
    failed, logs = _failed_checks(mesh, "sales")
    assert failed == {("sales/customers", "pii_detection")}
    evaluation = next(
        e.dagster_event.event_specific_data
        for e in logs
        if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.dagster_event.event_specific_data.check_name == "pii_detection"
        and e.dagster_event.event_specific_data.asset_key.to_user_string() == "sales/customers"
    )  # fmt: skip
    assert "column customer_name: email in 3 row(s)" in evaluation.description
    assert secret not in output
    assert not [e for e in logs if secret in str(e)]
    # ... nor in any file the run wrote under the Dagster instance (event log, compute logs)
    written = [p for p in mesh.dagster_home.rglob("*") if p.is_file()]
    assert written and not [p for p in written if secret.encode() in p.read_bytes()]


def test_an_incremental_run_publishes_only_the_changed_partition(built):
    """Last in this module: it adds a day of orders to the raw landing. sales.orders (dbt
    incremental, partitioned by month) republishes one partition: the month of the new day."""
    mesh, _ = built
    raw = mesh.raw_dir("sales") / "orders.parquet"
    conn = connect()
    rows_before, new_day = conn.execute(
        f"SELECT count(*), max(o_orderdate) + 1 FROM '{raw}'"
    ).fetchone()
    added = conn.execute(f"SELECT count(*) FROM '{raw}' WHERE o_orderkey <= 40").fetchone()[0]
    conn.close()
    deliver_raw(
        mesh, "sales", "orders",
        "SELECT * FROM '{raw}' UNION ALL BY NAME SELECT o_orderkey + 10000000 AS o_orderkey, "
        f"* EXCLUDE (o_orderkey, o_orderdate), DATE '{new_day}' AS o_orderdate FROM '{{raw}}' "
        "WHERE o_orderkey <= 40",
    )  # fmt: skip
    result = run_mesh(mesh.root, "build", "--domain", "sales", "--scale", str(SF))
    assert result.returncode == 0, result.stderr[-3000:]
    table = open_catalog(mesh).load_table(("sales", "orders"))
    summary = table.current_snapshot().summary
    assert summary["mesh.partitions_replaced"] == "1"
    assert int(summary["total-records"]) == rows_before + added
    conn, source = _scan(mesh, "sales.orders")
    month = new_day.replace(day=1)
    in_month = conn.execute(
        f"SELECT count(*) FROM {source} WHERE date_trunc('month', order_date) = DATE '{month}'"
    ).fetchone()[0]
    assert int(summary["mesh.rows"]) == in_month  # only that month was written
    assert in_month < rows_before
