"""Write-audit-publish on a tmp sqlite catalog: staged data is invisible until published, a
publish never drops a concurrent commit, a retried batch is not written twice."""

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import ConcurrentPublishError, ProductNotPublishedError
from mesh_platform.storage.iceberg import (
    open_catalog,
    publish_audited,
    publish_from_duckdb,
    stage_input,
    stage_to_audit,
)

ORDERS = ProductAddress("sales", "orders")


@pytest.fixture
def catalog(tmp_path):
    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(tmp_path)
    mesh.ensure_state_dir()
    return open_catalog(mesh)


@pytest.fixture
def conn():
    conn = connect(extensions=("iceberg",))
    conn.execute("CREATE TABLE v1 AS SELECT range AS order_key FROM range(10)")
    conn.execute("CREATE TABLE v2 AS SELECT range AS order_key FROM range(20)")
    conn.execute("CREATE TABLE v3 AS SELECT range AS order_key FROM range(30)")
    yield conn
    conn.close()


def _main(catalog):
    return catalog.load_table(("sales", "orders")).current_snapshot().snapshot_id


def _rows(catalog, ref=None):
    scan = catalog.load_table(("sales", "orders")).scan()
    return (scan.use_ref(ref) if ref else scan).to_arrow().num_rows


def test_staged_data_is_invisible_until_published(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v1", properties={})
    before = _main(catalog)
    stage = stage_to_audit(catalog, ORDERS, conn, "main.v2", batch_id="run-2", properties={})
    # the gate failed (or has not run): main has not moved, the audit branch holds the new data
    assert _main(catalog) == before
    assert _rows(catalog) == 10
    assert _rows(catalog, stage.branch) == 20
    assert publish_audited(catalog, stage) == stage.snapshot_id
    assert _main(catalog) == stage.snapshot_id
    assert _rows(catalog) == 20
    table = catalog.load_table(("sales", "orders"))
    assert stage.branch not in table.metadata.refs  # cleaned up once published
    assert table.current_snapshot().summary["mesh.batch_id"] == "run-2"


def test_a_new_product_is_not_readable_before_its_first_publish(catalog, conn):
    stage = stage_to_audit(catalog, ORDERS, conn, "main.v1", batch_id="first", properties={})
    consumer = connect(extensions=("iceberg",))
    with pytest.raises(ProductNotPublishedError):
        stage_input(catalog, consumer, ORDERS, schema="sales", consumer="marketing")
    publish_audited(catalog, stage)
    assert (
        stage_input(catalog, consumer, ORDERS, schema="sales", consumer="marketing").row_count == 10
    )


def test_a_retried_batch_publishes_nothing_twice(catalog, conn):
    first = publish_from_duckdb(catalog, ORDERS, conn, "main.v1", properties={}, batch_id="b1")
    snapshots = len(catalog.load_table(("sales", "orders")).snapshots())
    again = publish_from_duckdb(catalog, ORDERS, conn, "main.v2", properties={}, batch_id="b1")
    assert again.already_published
    assert again.snapshot_id == first.snapshot_id
    assert len(catalog.load_table(("sales", "orders")).snapshots()) == snapshots
    assert _rows(catalog) == 10


def test_publishing_never_drops_a_concurrent_commit(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v1", properties={})
    slow = stage_to_audit(catalog, ORDERS, conn, "main.v2", batch_id="slow", properties={})
    fast = publish_from_duckdb(catalog, ORDERS, conn, "main.v3", properties={}, batch_id="fast")
    with pytest.raises(ConcurrentPublishError) as err:
        publish_audited(catalog, slow)
    assert "run the product again" in str(err.value)
    assert _main(catalog) == fast.snapshot_id
    assert _rows(catalog) == 30
    # the retry restages from the new main and publishes
    retry = stage_to_audit(catalog, ORDERS, conn, "main.v2", batch_id="slow", properties={})
    publish_audited(catalog, retry)
    assert _rows(catalog) == 20
