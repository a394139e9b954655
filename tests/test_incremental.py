"""Partitioned products publish only the partitions whose rows changed (real catalog, DuckDB)."""

from __future__ import annotations

import pytest

from mesh_platform.duckdb_ext import connect
from mesh_platform.products.descriptor import descriptor_from_node
from mesh_platform.products.publish import publish_product
from mesh_platform.storage.iceberg import open_catalog

IDENT = ("sales", "orders")


def _descriptor(granularity: str = "month"):
    node = {
        "resource_type": "model",
        "access": "public",
        "name": "orders",
        "description": "One row per customer order.",
        "original_file_path": "models/products/orders.sql",
        "config": {
            "materialized": "incremental",
            "meta": {
                "mesh": {
                    "purpose": "Order headers for revenue reporting.",
                    "owner": {"team": "sales", "contact": "sales-data@example.com"},
                    "version": "1.0.0",
                    "partition_by": {"column": "order_date", "granularity": granularity},
                }
            },
        },
        "columns": {
            "order_key": {"data_type": "bigint"},
            "order_date": {"data_type": "date"},
            "amount": {"data_type": "double"},
        },
    }
    return descriptor_from_node("sales", node)


@pytest.fixture
def env(mesh):
    conn = connect(mesh.state_dir / "sales.duckdb")
    conn.execute("CREATE SCHEMA IF NOT EXISTS main")
    conn.execute(
        "CREATE TABLE main.orders AS SELECT range AS order_key, "
        "DATE '2024-01-01' + (range % 90)::INT AS order_date, range * 1.5 AS amount "
        "FROM range(900)"
    )
    catalog = open_catalog(mesh)
    yield catalog, conn
    conn.close()


def _publish(catalog, conn, batch: str, descriptor=None):
    return publish_product(
        catalog, descriptor or _descriptor(), conn, "main.orders", batch_id=batch, run_id=batch
    )


def _rows(catalog):
    table = catalog.load_table(IDENT).scan().to_arrow().sort_by("order_key")
    return [tuple(r.values()) for r in table.to_pylist()]


def test_first_publication_writes_every_partition(env):
    catalog, conn = env
    publication = _publish(catalog, conn, "b1")
    assert publication.published and publication.partitions == "first publication"
    table = catalog.load_table(IDENT)
    assert [f.name for f in table.spec().fields] == ["order_date_month"]
    assert len(publication.stage.data_files) == 3  # Jan, Feb, Mar 2024
    assert table.current_snapshot().summary["mesh.partitions_replaced"] == "all"


def test_only_changed_partitions_are_rewritten(env):
    catalog, conn = env
    _publish(catalog, conn, "b1")
    conn.execute("UPDATE main.orders SET amount = -1 WHERE order_key = 5")  # a January row
    conn.execute("INSERT INTO main.orders VALUES (10000, DATE '2024-04-02', 7.0)")  # new month
    publication = _publish(catalog, conn, "b2")
    assert publication.published
    assert publication.partitions == "2 of 4 partition(s) changed"
    january = conn.execute(
        "SELECT count(*) FROM main.orders WHERE order_date < DATE '2024-02-01'"
    ).fetchone()[0]
    assert publication.stage.row_count == january + 1  # January rewritten, April added
    assert _rows(catalog) == conn.execute("SELECT * FROM main.orders ORDER BY 1").fetchall()


def test_a_vanished_partition_is_deleted(env):
    catalog, conn = env
    _publish(catalog, conn, "b1")
    conn.execute("DELETE FROM main.orders WHERE order_date >= DATE '2024-03-01'")
    publication = _publish(catalog, conn, "b2")
    assert publication.published and publication.stage.row_count == 0
    assert len(_rows(catalog)) == conn.execute("SELECT count(*) FROM main.orders").fetchone()[0]


def test_nothing_changed_publishes_nothing(env):
    catalog, conn = env
    first = _publish(catalog, conn, "b1")
    again = _publish(catalog, conn, "b2")
    assert again.published and again.stage is None
    assert again.snapshot_id == first.snapshot_id
    assert len(catalog.load_table(IDENT).snapshots()) == len(catalog.load_table(IDENT).snapshots())


def test_main_moved_by_someone_else_means_a_full_republish(env):
    """An operator rolls main back to an earlier snapshot: the recorded fingerprints no longer
    describe main, so every partition is republished (not just the changed ones)."""
    catalog, conn = env
    first = _publish(catalog, conn, "b1")
    conn.execute("UPDATE main.orders SET amount = -2 WHERE order_key = 100")  # February
    _publish(catalog, conn, "b2")
    table = catalog.load_table(IDENT)
    with table.manage_snapshots() as refs:
        refs.set_current_snapshot(snapshot_id=first.snapshot_id)
    conn.execute("UPDATE main.orders SET amount = -1 WHERE order_key = 5")  # January
    publication = _publish(catalog, conn, "b3")
    assert publication.partitions.startswith("main is not the snapshot last published")
    assert _rows(catalog) == conn.execute("SELECT * FROM main.orders ORDER BY 1").fetchall()


def test_unchanged_data_with_a_failed_check_is_not_announced(env):
    catalog, conn = env
    first = _publish(catalog, conn, "b1")
    again = publish_product(
        catalog, _descriptor(), conn, "main.orders", batch_id="b2", run_id="b2",
        failed_elsewhere=["dbt test unique_orders_order_key"],
    )  # fmt: skip
    assert not again.published
    assert "unique_orders_order_key" in again.error
    assert catalog.load_table(IDENT).current_snapshot().snapshot_id == first.snapshot_id
