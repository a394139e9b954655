"""Partitioned products publish only the partitions whose rows changed (real catalog, DuckDB)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mesh_platform.duckdb_ext import connect
from mesh_platform.products import incremental
from mesh_platform.products.descriptor import descriptor_from_node
from mesh_platform.products.publish import publish_product
from mesh_platform.storage.catalog import open_catalog

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


# --- state derived from the table, never trusted over it ------------------------------------


def test_a_lost_data_file_means_every_partition_is_republished(env):
    """A data file of main is gone (lost disk, hand deletion): the fingerprints still match the
    model, but main cannot be read. The planner sees it from the manifests and republishes."""
    catalog, conn = env
    first = _publish(catalog, conn, "b1")
    lost = first.stage.data_files[1]
    Path(lost).unlink()
    publication = _publish(catalog, conn, "b2")
    assert publication.published and publication.stage is not None
    assert lost in publication.partitions and "is missing" in publication.partitions
    assert publication.partitions.endswith("republishing every partition")
    assert catalog.load_table(IDENT).current_snapshot().summary["mesh.partitions_replaced"] == "all"
    assert _rows(catalog) == conn.execute("SELECT * FROM main.orders ORDER BY 1").fetchall()
    assert _publish(catalog, conn, "b3").partitions == "0 of 3 partition(s) changed"


def test_a_truncated_data_file_means_every_partition_is_republished(env):
    catalog, conn = env
    first = _publish(catalog, conn, "b1")
    damaged = Path(first.stage.data_files[0])
    damaged.write_bytes(damaged.read_bytes()[:100])
    publication = _publish(catalog, conn, "b2")
    assert "changed size" in publication.partitions and str(damaged) in publication.partitions
    assert _rows(catalog) == conn.execute("SELECT * FROM main.orders ORDER BY 1").fetchall()


def test_recorded_counts_that_differ_from_the_table_mean_a_full_republish(env):
    """The recorded state says February holds other rows than main's files do (a stale or
    damaged mesh_state): the table wins, every partition is republished."""
    catalog, conn = env
    _publish(catalog, conn, "b1")
    conn.execute(
        f"UPDATE {incremental.STATE_TABLE} SET rows = rows + 1 WHERE part = DATE '2024-02-01'"
    )
    publication = _publish(catalog, conn, "b2")
    assert "partition 2024-02 holds 290 row(s)" in publication.partitions
    assert "291 recorded" in publication.partitions
    assert publication.stage.row_count == 900


def test_full_refresh_republishes_every_partition(env):
    catalog, conn = env
    _publish(catalog, conn, "b1")
    publication = publish_product(
        catalog, _descriptor(), conn, "main.orders", batch_id="b2", run_id="b2", full_refresh=True
    )
    assert publication.partitions == "full refresh: republishing every partition"
    assert publication.stage.row_count == 900
    assert catalog.load_table(IDENT).current_snapshot().summary["mesh.partitions_replaced"] == "all"
    assert _publish(catalog, conn, "b3").partitions == "0 of 3 partition(s) changed"


# --- the raw landing the incremental models were built from ---------------------------------


def _land(raw: Path, scale: float, rows: int) -> None:
    raw.mkdir(exist_ok=True)
    (raw / "orders.parquet").write_bytes(b"x" * rows)
    digest = hashlib.sha256(b"x" * rows).hexdigest()
    (raw / "_landing.json").write_text(
        json.dumps({"scale_factor": scale, "tables": {"orders": {"rows": rows, "sha256": digest}}})
    )


def test_a_changed_landing_calls_for_a_full_refresh(tmp_path):
    conn = connect(tmp_path / "sales.duckdb")
    raw = tmp_path / "raw"
    _land(raw, 0.01, 10)
    first = incremental.landing_state(raw)
    assert "no record" in incremental.landing_change(conn, first)
    incremental.record_landing(conn, first)
    assert incremental.landing_change(conn, incremental.landing_state(raw)) is None

    _land(raw, 0.01, 9)  # a corrected source: one order fewer
    why = incremental.landing_change(conn, incremental.landing_state(raw))
    assert why.startswith("the raw landing changed since the incremental models were built")
    assert "tables.orders.rows: 10 -> 9" in why and "tables.orders.sha256" in why
    incremental.record_landing(conn, incremental.landing_state(raw))
    assert incremental.landing_change(conn, incremental.landing_state(raw)) is None

    _land(raw, 0.02, 9)  # another scale factor: named first
    why = incremental.landing_change(conn, incremental.landing_state(raw))
    assert "(scale_factor: 0.01 -> 0.02)" in why
    conn.close()


def test_nothing_landed_has_no_landing_state(tmp_path):
    assert incremental.landing_state(tmp_path / "raw") is None
