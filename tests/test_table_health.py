"""Tables that stay healthy (issue 18): audit branches expire and go, metadata files are bounded,
a path-based reader finds the published snapshot, and `mesh maintain` compacts small files
through write-audit-publish without losing, duplicating or mixing a row.

Storage-level tests run on a tmp sqlite catalog (a second or a few each); the end-to-end tests
take the session's build of the sample mesh (``sample_build``), run `mesh maintain` on it and
check every table. Maintenance changes nothing other readers of the build can tell apart: a
compaction keeps every row and main's earlier snapshots, and nothing is old enough to expire.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.descriptor import descriptor_from_node
from mesh_platform.products.publish import publish_product
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.compaction import (
    MAX_FILE_BYTES,
    SMALL_FILE_BYTES,
    checksum,
    compact,
    file_facts,
)
from mesh_platform.storage.health import METADATA_VERSIONS_KEPT, VERSION_HINT
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.maintenance import maintain
from mesh_platform.storage.metadata import COMPACTION_PROPERTY
from mesh_platform.storage.references import referenced_files
from mesh_platform.storage.wap import stage_to_audit, write_audit_publish
from mesh_platform.testing import publish_from_duckdb, run_mesh

ORDERS = ProductAddress("sales", "orders")
DAY = timedelta(days=1)


@pytest.fixture
def conn():
    conn = connect(extensions=("iceberg",))
    for n in (10, 20, 30):
        conn.execute(
            f"CREATE TABLE v{n} AS SELECT range AS order_key, 'o' || range AS note FROM range({n})"
        )
    yield conn
    conn.close()


def _table(catalog):
    return catalog.load_table(ORDERS.iceberg_identifier)


def _audit_branches(table) -> list[str]:
    return [name for name in table.metadata.refs if name.startswith("audit-")]


def _blocked(catalog, conn, relation: str, batch: str, retention: timedelta = DAY):
    result = write_audit_publish(
        catalog, ORDERS, conn, relation, batch_id=batch, properties={},
        gate=lambda stage: ["orders_not_null"], retention=retention,
    )  # fmt: skip
    assert result.published_snapshot_id is None
    return result.stage


def _add_small_files(catalog, count: int, rows: int = 3, start: int = 1000) -> None:
    """Appends of a few rows each (how mesh.sla_history grows: a file per gate event)."""
    for i in range(count):
        keys = pa.array(range(start + i * rows, start + (i + 1) * rows), pa.int64())
        data = pa.table({"order_key": keys, "note": pa.array(["late"] * rows)})
        _table(catalog).append(data, snapshot_properties={"mesh.run_id": f"r{i}"})


# Audit branches


def test_an_audit_branch_carries_its_expiry_and_is_dropped_when_published(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    stage = stage_to_audit(
        catalog, ORDERS, conn, "main.v20", batch_id="b2", properties={},
        retention=timedelta(hours=2),
    )  # fmt: skip
    # set at creation and kept by the commit that staged the batch (pyiceberg drops it there)
    assert _table(catalog).metadata.refs[stage.branch].max_ref_age_ms == 2 * 3600 * 1000

    publish_from_duckdb(catalog, ORDERS, conn, "main.v30", properties={}, batch_id="b3")
    table = _table(catalog)
    assert "audit-b3" not in table.metadata.refs  # fast-forward and drop: one commit
    assert table.scan().to_arrow().num_rows == 30


def test_a_blocked_batch_stays_until_its_retention_then_the_next_publication_drops_it(
    catalog, conn
):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    young = _blocked(catalog, conn, "main.v20", "young")
    old = _blocked(catalog, conn, "main.v30", "old", retention=timedelta(milliseconds=1))
    assert _table(catalog).metadata.refs[young.branch].max_ref_age_ms == DAY.total_seconds() * 1000
    old_files = [warehouse.local_path(f) for f in old.data_files]
    assert all(f.exists() for f in old_files)
    time.sleep(0.01)

    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={}, batch_id="next")
    table = _table(catalog)
    assert _audit_branches(table) == [young.branch]  # kept for inspection within its retention
    assert table.snapshot_by_id(old.snapshot_id) is None  # its snapshots expired
    assert not any(f.exists() for f in old_files)  # and its files deleted
    assert table.scan().use_ref(young.branch).to_arrow().num_rows == 20


def test_maintenance_drops_a_blocked_batch_past_its_expiry_and_its_snapshots(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    blocked = _blocked(catalog, conn, "main.v20", "bad")
    kept = maintain(catalog, ORDERS, retain=timedelta(days=7))
    assert kept.kept_branches == [blocked.branch]

    later = time.time() + DAY.total_seconds() + 60  # a day later: past the branch's expiry
    report = maintain(catalog, ORDERS, retain=timedelta(days=7), now=later)
    assert report.removed_branches == [blocked.branch]
    assert "past its expiry" in report.branch_reasons[blocked.branch]
    table = _table(catalog)
    assert _audit_branches(table) == []
    assert table.snapshot_by_id(blocked.snapshot_id) is None
    live = referenced_files(table)  # its files are orphans now (deleted past the margin)
    assert not {warehouse.normalise(f) for f in blocked.data_files} & live
    assert table.scan().to_arrow().num_rows == 10


def test_a_personal_data_block_is_still_removed_at_once(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    result = write_audit_publish(
        catalog, ORDERS, conn, "main.v20", batch_id="pii", properties={},
        gate=lambda stage: ["pii_masking_verified"], quarantine_if=lambda failures: True,
    )  # fmt: skip
    assert result.quarantine is not None
    assert _audit_branches(_table(catalog)) == []
    assert not any(warehouse.local_path(f).exists() for f in result.stage.data_files)


# Metadata files and the version hint


def test_metadata_files_stay_bounded_after_many_publications(catalog, conn):
    for i in range(METADATA_VERSIONS_KEPT // 2):  # 3 to 5 commits each
        publish_from_duckdb(catalog, ORDERS, conn, f"main.v{10 * (1 + i % 3)}", properties={})
    table = _table(catalog)
    assert table.properties["write.metadata.delete-after-commit.enabled"] == "true"
    folder = warehouse.local_path(table.location()) / "metadata"
    metadata = sorted(folder.glob("*.metadata.json"))
    # about three commits per publication; the log keeps METADATA_VERSIONS_KEPT previous files
    assert len(metadata) == METADATA_VERSIONS_KEPT + 1
    logged = {Path(warehouse.local_path(e.metadata_file)) for e in table.metadata.metadata_log}
    assert set(metadata) == logged | {warehouse.local_path(table.metadata_location)}


def test_a_path_reader_sees_the_published_snapshot_never_a_staged_one(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    _blocked(catalog, conn, "main.v30", "bad")  # staged on its branch, main unchanged
    table = _table(catalog)
    folder = warehouse.local_path(table.location())
    hint = (folder / "metadata" / VERSION_HINT).read_text()
    assert f"{hint}.metadata.json" == table.metadata_location.rsplit("/", 1)[-1]
    count = f"SELECT count(*) FROM iceberg_scan('{folder}')"  # the folder alone, no catalog
    assert conn.execute(count).fetchone()[0] == 10

    publish_from_duckdb(catalog, ORDERS, conn, "main.v20", properties={})
    assert conn.execute(count).fetchone()[0] == 20


# Compaction


def test_compaction_rewrites_small_files_keeping_every_row_once(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v30", properties={})
    _add_small_files(catalog, 12)
    table = _table(catalog)
    before = checksum(conn, table.metadata_location, table.current_snapshot().snapshot_id)
    reader = table.scan()  # a reader that planned main before the compaction

    dry = compact(catalog, ORDERS, dry_run=True)
    assert dry.files_before == 13 and dry.files_after == 1 and dry.reasons
    assert _table(catalog).metadata_location == table.metadata_location  # nothing changed

    report = compact(catalog, ORDERS)
    after = _table(catalog)
    assert report.snapshot_id == after.current_snapshot().snapshot_id
    assert len(file_facts(after)) == report.files_after == 1
    assert checksum(conn, after.metadata_location, report.snapshot_id) == before
    assert before[0] == 30 + 12 * 3
    assert after.current_snapshot().summary["mesh.run_id"] == "r11"  # main head's, carried
    assert _audit_branches(after) == []
    assert reader.to_arrow().num_rows == before[0]  # old snapshot, old files: still whole
    assert {f.path for f in file_facts(table)}.isdisjoint(f.path for f in file_facts(after))
    assert compact(catalog, ORDERS).snapshot_id is None  # nothing left to gain


def test_compaction_leaves_no_small_file_in_a_table_over_the_threshold(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    for i in range(10):  # ~1.7 MB of random hex per file: 17 MB in small files
        rows = conn.execute(
            "SELECT range AS order_key, md5(random()::VARCHAR) AS note FROM range(?, ?)",
            [i * 60_000, (i + 1) * 60_000],
        ).to_arrow_table()
        _table(catalog).append(
            rows.cast(pa.schema([("order_key", pa.int64()), ("note", pa.string())]))
        )
    facts = file_facts(_table(catalog))
    assert sum(f.size for f in facts) > SMALL_FILE_BYTES

    compact(catalog, ORDERS)
    facts = file_facts(_table(catalog))
    assert all(SMALL_FILE_BYTES <= f.size <= MAX_FILE_BYTES for f in facts), facts


def test_compaction_waits_for_a_publisher_and_never_races_it(tmp_path, catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    _add_small_files(catalog, 5)
    with product_lock(catalog, ORDERS):  # a publication in progress
        busy = compact(catalog, ORDERS, lock_wait=timedelta(seconds=0.2))
    assert busy.skipped and busy.snapshot_id is None

    # A publisher and a compaction at once: whichever goes first, main ends as the batch.
    outcome: dict[str, object] = {}

    def publish() -> None:
        own = connect(extensions=("iceberg",))
        own.execute("CREATE TABLE v AS SELECT range AS order_key, 'n' AS note FROM range(7)")
        outcome["published"] = publish_from_duckdb(catalog, ORDERS, own, "main.v", properties={})
        own.close()

    publisher = threading.Thread(target=publish)
    publisher.start()
    report = compact(catalog, ORDERS)
    publisher.join()
    table = _table(catalog)
    keys = sorted(table.scan().to_arrow().column("order_key").to_pylist())
    assert keys == list(range(7)), (report, keys)
    assert _audit_branches(table) == []


# End to end: the sample mesh, built, then maintained


@pytest.fixture(scope="module")
def maintained(sample_build):
    mesh = sample_build
    catalog = open_catalog(mesh)
    after_run = {
        f"{ns}.{name}": _audit_branches(catalog.load_table((ns, name)))
        for (ns,) in catalog.list_namespaces()
        for _, name in catalog.list_tables(ns)
    }
    result = run_mesh(mesh.root, "maintain", "--verbose")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return mesh, catalog, after_run


@pytest.mark.e2e
def test_after_a_run_and_mesh_maintain_every_table_is_healthy(maintained):
    _, catalog, after_run = maintained
    assert after_run and not any(after_run.values()), after_run  # no lingering audit branch
    assert "mesh.sla_history" in after_run  # the platform's own table is maintained too
    for product in after_run:
        table = catalog.load_table(tuple(product.split(".")))
        facts = file_facts(table)
        total = sum(f.size for f in facts)
        assert not _audit_branches(table), product
        if total > SMALL_FILE_BYTES:
            assert all(f.size >= SMALL_FILE_BYTES for f in facts), (product, facts)
        assert all(f.size <= MAX_FILE_BYTES for f in facts), product
        folder = warehouse.local_path(table.location()) / "metadata"
        assert len(list(folder.glob("*.metadata.json"))) <= METADATA_VERSIONS_KEPT + 1, product
        assert (folder / VERSION_HINT).read_text() in table.metadata_location


@pytest.mark.e2e
def test_after_mesh_maintain_every_data_file_is_zstd(maintained):
    _, catalog, after_run = maintained
    codecs = {
        (product, codec)
        for product in after_run
        for f in file_facts(catalog.load_table(tuple(product.split("."))))
        for codec in f.codecs
    }
    assert {codec for _, codec in codecs} == {"ZSTD"}, sorted(codecs)


def _monthly_orders():
    mesh = {
        "purpose": "Order headers.", "version": "1.0.0",
        "owner": {"team": "sales", "contact": "sales-data@example.com"},
        "partition_by": {"column": "order_date", "granularity": "month"},
    }  # fmt: skip
    node = {
        "resource_type": "model", "access": "public", "name": "orders",
        "description": "One row per order.", "original_file_path": "models/orders.sql",
        "config": {"materialized": "incremental", "meta": {"mesh": mesh}},
        "columns": {c: {"data_type": t} for c, t in
                    (("order_key", "bigint"), ("order_date", "date"), ("amount", "double"))},
    }  # fmt: skip
    return descriptor_from_node("sales", node)


def test_a_compacted_partitioned_product_stays_incremental(mesh):
    """The partition fingerprints recorded at publication still describe main after a
    compaction (same rows): the next run replaces only the changed partition."""
    conn = connect(mesh.state_dir / "sales.duckdb")
    conn.execute(
        "CREATE TABLE main.orders AS SELECT range AS order_key, "
        "DATE '2024-01-01' + (range % 90)::INT AS order_date, range * 1.5 AS amount "
        "FROM range(900)"
    )
    catalog = open_catalog(mesh)
    publish_product(catalog, _monthly_orders(), conn, "main.orders", batch_id="b1", run_id="b1")
    # A rewrite of January into two files, committed as a compaction commits (same rows).
    table = _table(catalog)
    folder = warehouse.local_path(table.location()) / "data"
    files = [str(folder / f"january-{half}.parquet") for half in (0, 1)]
    for half, path in enumerate(files):
        conn.execute(
            f"COPY (SELECT * FROM main.orders WHERE order_date < DATE '2024-02-01' "
            f"AND order_key % 2 = {half}) TO '{path}' (FORMAT parquet)"
        )
    with table.transaction() as tx:
        marker = {COMPACTION_PROPERTY: "c1"}
        tx.delete("order_date < '2024-02-01'", snapshot_properties=marker)
        tx.add_files(files, snapshot_properties=marker)
    assert len(file_facts(_table(catalog))) == 4

    conn.execute("UPDATE main.orders SET amount = -1 WHERE order_key = 100")  # February
    publication = publish_product(
        catalog, _monthly_orders(), conn, "main.orders", batch_id="b2", run_id="b2"
    )
    assert publication.partitions == "1 of 3 partition(s) changed"
    rows = _table(catalog).scan().to_arrow().num_rows
    assert rows == 900
    conn.close()
