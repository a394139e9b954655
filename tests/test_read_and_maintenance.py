import os
import time
from datetime import UTC, datetime, timedelta

import click
import pytest

from mesh_platform.cli.options import duration_option as _duration
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError, ProductNotPublishedError, UnreadableMetadataError
from mesh_platform.read import read_product
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.maintenance import maintain
from mesh_platform.storage.wap import stage_to_audit
from mesh_platform.storage.warehouse import local_path
from mesh_platform.testing import ORDERS, declare_orders, publish_from_duckdb


@pytest.fixture
def conn():
    conn = connect()
    for n in (10, 20, 30):
        conn.execute(f"CREATE TABLE v{n} AS SELECT range AS order_key FROM range({n})")
    yield conn
    conn.close()


def test_read_current_at_snapshot_and_as_of(mesh, conn):
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    with pytest.raises(ProductNotPublishedError):
        read_product("sales.orders", as_="sales", mesh=mesh)
    first = publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    between = datetime.now(UTC)
    time.sleep(0.05)
    publish_from_duckdb(catalog, ORDERS, conn, "main.v20", properties={})
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 20
    assert (
        read_product(ORDERS, as_="sales", snapshot_id=first.snapshot_id, mesh=mesh).num_rows == 10
    )
    assert read_product("sales.orders", as_="sales", as_of=between, mesh=mesh).num_rows == 10
    with pytest.raises(ProductNotPublishedError):
        read_product("sales.orders", as_="sales", as_of=datetime(2000, 1, 1, tzinfo=UTC), mesh=mesh)
    with pytest.raises(MeshError, match="no published snapshot 42"):
        read_product("sales.orders", as_="sales", snapshot_id=42, mesh=mesh)
    with pytest.raises(MeshError, match="time zone"):
        read_product("sales.orders", as_="sales", as_of=datetime(2026, 1, 1), mesh=mesh)


def test_maintenance_expires_drops_stale_branches_and_orphans(mesh, conn):
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    for relation in ("main.v10", "main.v20", "main.v30"):
        publish_from_duckdb(catalog, ORDERS, conn, relation, properties={})
    rejected = stage_to_audit(catalog, ORDERS, conn, "main.v10", batch_id="bad", properties={})
    table = catalog.load_table(("sales", "orders"))
    orphan = local_path(table.location()) / "data" / "killed-writer.parquet"
    orphan.write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    fresh_orphan = orphan.with_name("in-flight.parquet")
    fresh_orphan.write_bytes(b"being written")

    later = time.time() + 10 * 86400
    dry = maintain(catalog, ORDERS, retain=timedelta(days=7), keep_last=1, dry_run=True, now=later)
    assert dry.removed_branches == [rejected.branch]
    assert dry.expired_snapshots
    assert orphan.exists()  # dry run touches nothing

    report = maintain(catalog, ORDERS, retain=timedelta(days=7), keep_last=1, now=later)
    table = catalog.load_table(("sales", "orders"))
    assert rejected.branch not in table.metadata.refs
    assert {s.snapshot_id for s in table.snapshots()} == {table.current_snapshot().snapshot_id}
    assert str(orphan) in report.orphan_files and not orphan.exists()
    assert fresh_orphan.exists()  # younger than the margin (now - 1 h): maybe still being written
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 30
    # files freed by expiry are young too; once older than the margin they go, and the
    # product still reads
    age_files(local_path(table.location()), hours=2)
    maintain(catalog, ORDERS, retain=timedelta(days=7), keep_last=1)
    remaining = list(local_path(table.location()).rglob("*.parquet"))
    assert len(remaining) == 1
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 30


def age_files(folder, *, hours: float) -> None:
    """Every file under ``folder`` as if written ``hours`` ago (older than an orphan margin)."""
    old = time.time() - hours * 3600
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def test_maintenance_refuses_an_orphan_margin_below_the_floor(mesh, conn):
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    table = catalog.load_table(("sales", "orders"))
    orphan = local_path(table.location()) / "data" / "killed-writer.parquet"
    orphan.write_bytes(b"partial")
    with pytest.raises(MeshError, match="safe floor of 0:15:00") as error:
        maintain(catalog, ORDERS, retain=timedelta(days=7), orphan_margin=timedelta(minutes=14))
    assert "15m" in error.value.fix
    assert orphan.exists()


def test_maintenance_skips_a_product_being_published_and_then_drops_its_dead_branch(mesh, conn):
    """A publisher holds the product's lock and has just created its branch at main's head,
    which is older than --retain: maintenance waits, skips the product and touches nothing.
    Once the lock is free, such a branch (nothing staged) can only be a dead run's: dropped."""
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    table = catalog.load_table(("sales", "orders"))
    orphan = local_path(table.location()) / "data" / "killed-writer.parquet"
    orphan.write_bytes(b"partial")
    age_files(local_path(table.location()), hours=2)
    later = time.time() + 10 * 86400
    with product_lock(catalog, ORDERS):
        with table.manage_snapshots() as refs:
            refs.create_branch(table.current_snapshot().snapshot_id, "audit-in-flight")
        report = maintain(
            catalog, ORDERS, retain=timedelta(days=7), now=later, lock_wait=timedelta(seconds=0.2)
        )
        assert report.skipped and "publication in progress" in report.skipped
        assert not report.removed_branches and not report.orphan_files
        assert "audit-in-flight" in catalog.load_table(("sales", "orders")).metadata.refs
        assert orphan.exists()

    report = maintain(catalog, ORDERS, retain=timedelta(days=7), now=later)
    assert report.skipped is None
    assert report.removed_branches == ["audit-in-flight"]
    assert "dead run" in report.branch_reasons["audit-in-flight"]
    assert "audit-in-flight" not in catalog.load_table(("sales", "orders")).metadata.refs
    assert str(orphan) in report.orphan_files and not orphan.exists()
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 10


def test_maintenance_keeps_a_blocked_batch_younger_than_retain_on_an_older_main(mesh, conn):
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    published = publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    time.sleep(0.05)
    blocked = stage_to_audit(catalog, ORDERS, conn, "main.v20", batch_id="bad", properties={})
    table = catalog.load_table(("sales", "orders"))
    main_ms = table.snapshot_by_id(published.snapshot_id).timestamp_ms
    head_ms = table.snapshot_by_id(blocked.snapshot_id).timestamp_ms
    assert main_ms < head_ms
    # retention cuts between main's snapshot (old) and the branch's own commit (young)
    report = maintain(
        catalog, ORDERS, retain=timedelta(milliseconds=(head_ms - main_ms) / 2),
        keep_last=1, now=head_ms / 1000,
    )  # fmt: skip
    assert report.kept_branches == [blocked.branch] and not report.removed_branches
    table = catalog.load_table(("sales", "orders"))
    assert blocked.branch in table.metadata.refs
    assert table.scan().use_ref(blocked.branch).to_arrow().num_rows == 20


def test_dry_run_lists_exactly_what_the_run_removes_including_what_expiry_frees(mesh, conn):
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    first = publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    for relation in ("main.v20", "main.v30"):
        publish_from_duckdb(catalog, ORDERS, conn, relation, properties={})
    rejected = stage_to_audit(catalog, ORDERS, conn, "main.v10", batch_id="bad", properties={})
    table = catalog.load_table(("sales", "orders"))
    first_files = {
        str(local_path(task.file.file_path).resolve())
        for task in table.scan(snapshot_id=first.snapshot_id).plan_files()
    }
    age_files(local_path(table.location()), hours=2)
    later = time.time() + 10 * 86400

    dry = maintain(catalog, ORDERS, retain=timedelta(days=7), keep_last=1, dry_run=True, now=later)
    assert dry.removed_branches == [rejected.branch]
    assert first.snapshot_id in dry.expired_snapshots
    assert first_files <= set(dry.orphan_files)  # freed by the expiry the dry run only plans
    assert all(os.path.exists(f) for f in dry.orphan_files)

    real = maintain(catalog, ORDERS, retain=timedelta(days=7), keep_last=1, now=later)
    assert real.removed_branches == dry.removed_branches
    assert real.expired_snapshots == dry.expired_snapshots
    assert sorted(real.orphan_files) == sorted(dry.orphan_files)
    assert not any(os.path.exists(f) for f in real.orphan_files)
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 30


def test_maintenance_never_expires_protected_snapshots(mesh, conn):
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    first = publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    second = publish_from_duckdb(catalog, ORDERS, conn, "main.v20", properties={})
    publish_from_duckdb(catalog, ORDERS, conn, "main.v30", properties={})
    age_files(local_path(catalog.load_table(("sales", "orders")).location()), hours=2)
    later = time.time() + 10 * 86400
    report = maintain(
        catalog, ORDERS, retain=timedelta(days=7), keep_last=1, now=later,
        protect={first.snapshot_id},
    )  # fmt: skip
    assert second.snapshot_id in report.expired_snapshots
    assert first.snapshot_id not in report.expired_snapshots
    assert (
        read_product(ORDERS, as_="sales", snapshot_id=first.snapshot_id, mesh=mesh).num_rows == 10
    )
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 30


def test_maintenance_deletes_nothing_when_the_table_moves_under_it(mesh, conn, monkeypatch):
    """A writer that does not take the product's lock commits while maintenance lists the
    table's folder: the files it references are not in the live set computed before, so
    maintenance must notice (the catalog row moved) and delete nothing."""
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    table = catalog.load_table(("sales", "orders"))
    orphan = local_path(table.location()) / "data" / "killed-writer.parquet"
    orphan.write_bytes(b"partial")
    real_list_files = warehouse.list_files

    def list_then_commit(location, properties):
        listed = real_list_files(location, properties)
        writer = open_catalog(mesh).load_table(("sales", "orders"))
        with writer.transaction() as tx:
            tx.set_properties({"written.by": "a tool without the lock"})
        age_files(local_path(location), hours=2)  # its new metadata file looks old too
        return [(f, time.time() - 7200) for f, _ in listed] + real_list_files(location, properties)

    monkeypatch.setattr(warehouse, "list_files", list_then_commit)
    report = maintain(catalog, ORDERS, retain=timedelta(days=7))
    assert report.skipped and "moved" in report.skipped
    assert report.orphan_files == [] and orphan.exists()
    monkeypatch.undo()
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 10


def test_maintenance_reports_a_corrupt_metadata_file_and_changes_nothing(mesh, conn):
    declare_orders(mesh)
    catalog = open_catalog(mesh)
    publish_from_duckdb(catalog, ORDERS, conn, "main.v10", properties={})
    table = catalog.load_table(("sales", "orders"))
    metadata = local_path(table.metadata_location)
    good = metadata.read_bytes()
    metadata.write_bytes(good[: len(good) // 2])
    orphan = local_path(table.location()) / "data" / "killed-writer.parquet"
    orphan.write_bytes(b"partial")
    age_files(local_path(table.location()), hours=2)
    with pytest.raises(UnreadableMetadataError) as error:
        maintain(catalog, ORDERS, retain=timedelta(days=7))
    assert "sales.orders" in error.value.what and str(metadata) in error.value.what
    assert "mesh repair --product sales.orders" in error.value.fix
    assert orphan.exists()
    metadata.write_bytes(good)
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 10


@pytest.mark.parametrize("text", ["0s", "-5m", "nan", "infd", "1e400h", "7", "d", "", "7w", "soon"])
def test_durations_must_be_a_positive_number_and_a_unit(text):
    with pytest.raises(click.BadParameter) as error:
        _duration(text, "'--retain'")
    assert error.value.param_hint == "'--retain'"


def test_durations_in_every_unit():
    assert _duration("90s") == timedelta(seconds=90)
    assert _duration("1.5h") == timedelta(minutes=90)
    assert _duration("15m") == timedelta(minutes=15) and _duration("7d") == timedelta(days=7)
