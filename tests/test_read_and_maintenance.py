import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError, ProductNotPublishedError
from mesh_platform.read import read_product
from mesh_platform.storage.iceberg import (
    local_path,
    open_catalog,
    publish_from_duckdb,
    stage_to_audit,
)
from mesh_platform.storage.maintenance import maintain

ORDERS = ProductAddress("sales", "orders")


@pytest.fixture
def conn():
    conn = connect()
    for n in (10, 20, 30):
        conn.execute(f"CREATE TABLE v{n} AS SELECT range AS order_key FROM range({n})")
    yield conn
    conn.close()


def declare_orders(mesh) -> None:
    """Declare sales.orders (one column) so the read path knows its descriptor and owner."""
    domain = mesh.root / "domains" / "sales"
    (domain / "products").mkdir(parents=True)
    (domain / "domain.yaml").write_text(
        "name: sales\ndescription: Orders domain for the read tests.\nkind: source-aligned\n"
        "owners: [team:sales]\n"
    )
    (domain / "products" / "orders.yml").write_text(
        "name: orders\ndescription: Order keys for the read tests.\nmesh:\n"
        "  purpose: Time travel tests of the read path.\n"
        "  owner: {team: sales, contact: sales@example.com}\n  version: 1.0.0\n"
        "columns:\n  - {name: order_key, data_type: bigint}\n"
    )
    project = mesh.root / "dbt_projects" / "sales"  # a domain has a dbt project, here empty
    project.mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        "name: sales\nversion: '1.0.0'\nconfig-version: 2\nprofile: sales\n"
    )
    (project / "profiles.yml").write_text(
        "sales:\n  target: local\n  outputs:\n    local: {type: duckdb, path: ':memory:'}\n"
    )


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
    # files freed by expiry are young too; with no margin they go, and the product still reads
    maintain(catalog, ORDERS, retain=timedelta(days=7), keep_last=1, orphan_margin=timedelta(0))
    remaining = list(local_path(table.location()).rglob("*.parquet"))
    assert len(remaining) == 1
    assert read_product("sales.orders", as_="sales", mesh=mesh).num_rows == 30
