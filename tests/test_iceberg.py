import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError, ProductNotPublishedError
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.testing import publish_from_duckdb, read_published

ORDERS = ProductAddress("sales", "orders")


def _data_files(table) -> list[str]:
    return [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]


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
    assert _data_files(table)
    for path in _data_files(table):
        assert path.startswith(f"{mesh.state_dir}/warehouse/sales/")


def test_catalog_uses_wal_on_sqlite(mesh):
    catalog = open_catalog(mesh)
    with catalog.engine.connect() as connection:
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert mode == "wal"


def test_a_pinned_snapshot_keeps_its_rows_after_a_newer_publication(mesh, conn):
    catalog = open_catalog(mesh)
    published = publish_from_duckdb(catalog, ORDERS, conn, "main.orders", properties={})
    assert read_published(mesh, ORDERS)[1] == 100
    # the producer publishes again (a full replacement: the old file is a DELETED entry now)
    conn.execute("DELETE FROM orders WHERE order_key >= 10")
    newer = publish_from_duckdb(catalog, ORDERS, conn, "main.orders", properties={})
    assert newer.snapshot_id != published.snapshot_id
    assert read_published(mesh, ORDERS, published.snapshot_id)[1] == 100
    assert read_published(mesh, ORDERS)[1] == 10


def test_widening_a_column_evolves_the_table(mesh, conn):
    catalog = open_catalog(mesh)
    conn.execute("CREATE TABLE narrow AS SELECT range::INTEGER AS order_key FROM range(5)")
    conn.execute(
        "CREATE TABLE wide AS SELECT range::BIGINT AS order_key, 'n' AS note FROM range(7)"
    )
    publish_from_duckdb(catalog, ORDERS, conn, "main.narrow", properties={})
    publish_from_duckdb(catalog, ORDERS, conn, "main.wide", properties={})
    table = catalog.load_table(("sales", "orders"))
    assert str(table.schema().find_field("order_key").field_type) == "long"
    assert table.schema().column_names == ["order_key", "note"]
    assert table.scan().to_arrow().num_rows == 7


def test_incompatible_type_change_is_refused_and_keeps_the_table(mesh, conn):
    catalog = open_catalog(mesh)
    first = publish_from_duckdb(catalog, ORDERS, conn, "main.orders", properties={})
    conn.execute("CREATE TABLE broken AS SELECT 'k' || range AS order_key FROM range(3)")
    with pytest.raises(MeshError) as err:
        publish_from_duckdb(catalog, ORDERS, conn, "main.broken", properties={})
    assert "sales.orders" in str(err.value)
    assert "major version" in str(err.value)
    table = catalog.load_table(("sales", "orders"))
    assert table.current_snapshot().snapshot_id == first.snapshot_id
    assert table.scan().to_arrow().num_rows == 100


def test_paths_with_spaces_and_quotes_stay_in_the_state_dir(tmp_path, conn):
    root = tmp_path / "it's a mesh"
    root.mkdir()
    (root / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(root)
    mesh.ensure_state_dir()
    catalog = open_catalog(mesh)
    publish_from_duckdb(catalog, ORDERS, conn, "main.orders", properties={})
    for path in _data_files(catalog.load_table(("sales", "orders"))):
        assert path.startswith(f"{mesh.state_dir}/warehouse/")
    assert [p.name for p in tmp_path.iterdir()] == ["it's a mesh"]


def test_reading_an_unpublished_product_says_what_to_build(mesh):
    with pytest.raises(ProductNotPublishedError) as err:
        read_published(mesh, ORDERS)
    assert "sales.orders" in str(err.value)
    assert "mesh build --domain sales" in str(err.value)
