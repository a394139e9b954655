"""Fault 3: incremental state is derived from the table and the sources, never trusted over them.

One mesh built with `mesh build --domain sales` (TPC-H SF 0.01); each test injects one fault
into `sales.orders` (partitioned by month, built by an incremental dbt model with a 3-day
lookback), runs the next `mesh build --domain sales`, and compares the published product row
for row with a fresh full build of the same sources (the session's reference mesh), or, at
another scale factor, with the raw orders it is a projection of.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.testing import SF, build_sample_mesh, read_published, run_mesh

pytestmark = pytest.mark.e2e  # module-scoped builds of the sample mesh

ORDERS = "sales.orders"
COLUMNS = (
    "order_key, customer_key, order_status, total_price, order_date, order_priority, clerk, "
    "ship_priority"
)
RAW_AS_PRODUCT = (  # stg_orders + orders: a rename of the raw columns
    "SELECT o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, o_orderpriority, "
    "o_clerk, o_shippriority FROM read_parquet(?)"
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    return build_sample_mesh(tmp_path_factory.mktemp("incremental") / "mesh", "--domain", "sales")


def _build(mesh: Mesh, *args: str, scale: float = SF) -> str:
    """`mesh build --domain sales -v` (+ args) must succeed; its whole output."""
    result = run_mesh(mesh.root, "build", "--scale", str(scale), "--domain", "sales", "-v", *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def _header(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("mesh build "))


def _published(mesh: Mesh, address: str = ORDERS) -> set[tuple]:
    """Every row of the product's main snapshot, through the read path's storage layer."""
    from mesh_platform.storage.metadata import Catalog, data_files, scan_sql

    state = Catalog(mesh).table_state(ProductAddress.parse(address))
    snapshot = state.snapshot(None)
    conn = connect(extensions=("avro",))
    try:
        files = data_files(conn, state, snapshot)
        rows = conn.sql(f"SELECT {COLUMNS} FROM {scan_sql(files, state, snapshot.columns)}")
        return set(rows.fetchall())
    finally:
        conn.close()


def _raw_orders(mesh: Mesh) -> set[tuple]:
    conn = connect()
    try:
        path = str(mesh.raw_dir("sales") / "orders.parquet")
        return set(conn.execute(RAW_AS_PRODUCT, [path]).fetchall())
    finally:
        conn.close()


def _assert_same(published: set[tuple], expected: set[tuple]) -> None:
    phantom, missing = published - expected, expected - published
    assert not phantom and not missing, (
        f"{len(phantom)} phantom row(s), e.g. {sorted(phantom)[:2]}; "
        f"{len(missing)} missing row(s), e.g. {sorted(missing)[:2]}"
    )


def _main_summary(mesh: Mesh) -> Any:
    """The summary of sales.orders' main snapshot (``summary[key]``)."""
    from mesh_platform.storage.catalog import open_catalog

    catalog = open_catalog(mesh)
    try:
        return catalog.load_table(("sales", "orders")).current_snapshot().summary
    finally:
        catalog.engine.dispose()


@pytest.fixture(scope="module")
def reference_orders(reference_mesh: Mesh) -> set[tuple]:
    return _published(reference_mesh)


def test_a_lost_data_file_is_noticed_and_every_partition_republished(mesh, reference_orders):
    from mesh_platform.storage.metadata import Catalog, data_files

    state = Catalog(mesh).table_state(ProductAddress.parse(ORDERS))
    conn = connect(extensions=("avro",))
    try:
        files = sorted(data_files(conn, state, state.snapshot(None)))
    finally:
        conn.close()
    lost = Path(files[len(files) // 2])
    lost.unlink()
    with pytest.raises(Exception, match=r"No files found|No such file|not exist"):
        _published(mesh)  # the fault is real: main cannot be read

    output = _build(mesh)
    assert f"data file {lost}" in output and "is missing" in output
    assert _main_summary(mesh)["mesh.partitions_replaced"] == "all"
    columns, count = read_published(mesh, ProductAddress.parse(ORDERS))
    assert count == len(reference_orders) and "order_key" in columns
    _assert_same(_published(mesh), reference_orders)


def test_a_scale_factor_change_leaves_no_phantom_rows(mesh, reference_orders):
    """SF 0.01 -> 0.015 -> 0.01 (a step the volume checks accept: 0.02 -> 0.01 halves
    order_lines, which the gate rightly blocks). Each landing is another set of orders."""
    output = _build(mesh, scale=0.015)
    assert "dbt build --full-refresh: the raw landing changed" in output
    assert "scale_factor: 0.01 -> 0.015" in output
    raw = _raw_orders(mesh)
    assert len(raw) == 22_500
    _assert_same(_published(mesh), raw)

    output = _build(mesh)  # back to SF 0.01: the orders only SF 0.015 has must go
    assert "scale_factor: 0.015 -> 0.01" in output
    _assert_same(_published(mesh), reference_orders)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corrected(record: Any, rows: int, old_sha: str, new: dict[str, Any]) -> Any:
    """The landing record with the entry of the corrected orders file updated, whatever the
    record's layout: the entry holding the file's old checksum gets ``new`` (rows, size,
    checksum: the keys it has), a plain ``{"orders": rows}`` count the new count."""
    if not isinstance(record, dict):
        return record
    if old_sha in record.values():
        return {k: new.get(k, v) for k, v in record.items()}
    if record.get("orders") == rows:
        return {**record, "orders": rows - 1}
    return {k: _corrected(v, rows, old_sha, new) for k, v in record.items()}


def test_a_raw_order_removed_at_the_source_leaves_the_product(mesh):
    """A corrected source: one order, years older than the model's 3-day lookback, is removed
    from the raw landing (the file rewritten, its landing record updated as a re-landing
    would). The incremental model alone would keep it forever."""
    raw = mesh.raw_dir("sales")
    orders = raw / "orders.parquet"
    old_sha = _sha256(orders)
    corrected = raw / "orders.corrected.parquet"
    conn = connect()
    try:
        (key,) = conn.execute(
            "SELECT o_orderkey FROM read_parquet(?) ORDER BY o_orderdate, o_orderkey LIMIT 1",
            [str(orders)],
        ).fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM read_parquet(?)", [str(orders)]).fetchone()
        conn.execute(
            f"COPY (SELECT * FROM read_parquet('{orders}') WHERE o_orderkey <> {key}) "
            f"TO '{corrected}' (FORMAT parquet, COMPRESSION zstd)"
        )
    finally:
        conn.close()
    corrected.replace(orders)
    record = json.loads((raw / "_landing.json").read_text())
    new = {"rows": rows - 1, "size_bytes": orders.stat().st_size, "sha256": _sha256(orders)}
    updated = _corrected(record, rows, old_sha, new)
    assert updated != record
    (raw / "_landing.json").write_text(json.dumps(updated, indent=2))
    assert any(row[0] == key for row in _published(mesh))

    output = _build(mesh)
    assert "dbt build --full-refresh: the raw landing changed" in output
    assert re.search(rf"orders[a-z_.]*: {rows} -> {rows - 1}", output)
    published = _published(mesh)
    assert not any(row[0] == key for row in published)
    _assert_same(published, _raw_orders(mesh))


def test_full_refresh_of_the_domain_rebuilds_from_the_sources_through_the_gate(mesh):
    """A phantom order in the domain's incremental model (stale state no source holds) is
    kept by incremental builds; `--full-refresh` rebuilds the model from the landing and
    republishes every partition through the gate."""
    conn = connect(mesh.duckdb_path("sales"))
    try:
        conn.execute(
            f"INSERT INTO main.orders ({COLUMNS}) SELECT 999999999, customer_key, order_status, "
            "total_price, DATE '1992-01-02', order_priority, clerk, ship_priority "
            "FROM main.orders LIMIT 1"
        )
    finally:
        conn.close()

    output = _build(mesh, "--full-refresh")
    assert "full refresh of every product" in _header(output)
    assert re.search(r"dbt[\w-]* run --full-refresh --profile sales", output)  # guard
    assert "full refresh: republishing every partition" in output
    summary = _main_summary(mesh)
    assert summary["mesh.partitions_replaced"] == "all"
    expected = _raw_orders(mesh)
    assert int(summary["mesh.rows"]) == len(expected)
    _assert_same(_published(mesh), expected)


def test_full_refresh_of_one_product_builds_only_what_it_needs(mesh):
    customers = _snapshot_id(mesh, "customers")
    output = _build(mesh, "--full-refresh", "--product", ORDERS)
    assert f"full refresh of {ORDERS}" in _header(output)
    assert _main_summary(mesh)["mesh.partitions_replaced"] == "all"
    assert _snapshot_id(mesh, "customers") == customers  # not rebuilt, not republished
    _assert_same(_published(mesh), _raw_orders(mesh))


def _snapshot_id(mesh: Mesh, product: str) -> int:
    from mesh_platform.storage.catalog import open_catalog

    catalog = open_catalog(mesh)
    try:
        return catalog.load_table(("sales", product)).current_snapshot().snapshot_id
    finally:
        catalog.engine.dispose()


def test_product_without_full_refresh_is_refused(mesh):
    result = run_mesh(mesh.root, "build", "--product", ORDERS)
    assert result.returncode == 1
    assert "--product selects what a full refresh rebuilds" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
