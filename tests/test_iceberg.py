import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import ProductNotPublishedError
from mesh_platform.storage.iceberg import open_catalog, publish_from_duckdb, stage_input

ORDERS = ProductAddress("sales", "orders")


@pytest.fixture
def mesh(tmp_path):
    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(tmp_path)
    mesh.ensure_state_dir()
    return mesh


@pytest.fixture
def conn():
    conn = connect(extensions=("iceberg",))
    conn.execute(
        "CREATE TABLE orders AS SELECT range AS order_key, 'x' || range AS note FROM range(100)"
    )
    yield conn
    conn.close()


def test_publish_replaces_content_and_records_the_run(mesh, conn):
    catalog = open_catalog(mesh)
    first = publish_from_duckdb(
        catalog, ORDERS, conn, "main.orders", properties={"mesh.run_id": "r1"}
    )
    assert first.row_count == 100
    conn.execute("DELETE FROM orders WHERE order_key >= 40")
    second = publish_from_duckdb(
        catalog, ORDERS, conn, "main.orders", properties={"mesh.run_id": "r2"}
    )
    table = catalog.load_table(("sales", "orders"))
    assert table.scan().to_arrow().num_rows == 40
    assert second.snapshot_id != first.snapshot_id
    summary = table.current_snapshot().summary
    assert summary["mesh.run_id"] == "r2"
    assert summary["mesh.rows"] == "40"
    # the data lives under the warehouse, in the domain's namespace
    assert second.data_file.startswith(str(mesh.state_dir / "warehouse" / "sales"))


def test_catalog_uses_wal_on_sqlite(mesh):
    catalog = open_catalog(mesh)
    with catalog.engine.connect() as connection:
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert mode == "wal"


def test_stage_input_pins_the_current_snapshot(mesh, conn):
    catalog = open_catalog(mesh)
    published = publish_from_duckdb(catalog, ORDERS, conn, "main.orders", properties={})
    consumer = connect(extensions=("iceberg",))
    staged = stage_input(catalog, consumer, ORDERS, schema="sales", consumer="marketing")
    assert staged.snapshot_id == published.snapshot_id
    assert consumer.execute("SELECT count(*) FROM sales.orders").fetchone()[0] == 100


def test_stage_input_of_unpublished_product_says_what_to_build(mesh):
    catalog = open_catalog(mesh)
    consumer = connect(extensions=("iceberg",))
    with pytest.raises(ProductNotPublishedError) as err:
        stage_input(catalog, consumer, ORDERS, schema="sales", consumer="marketing")
    assert "sales.orders" in str(err.value)
    assert "mesh build --domain sales" in str(err.value)
