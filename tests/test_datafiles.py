"""The data files the platform writes, on a tmp sqlite catalog: they carry the table's Iceberg
field ids at every depth, are zstd, split above the target size, sorted by the table's sort
order; the schema carries the contract's docs, required columns and identifier fields; a
column made required over nulls (in the batch, or kept from main) fails closed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyiceberg.schema import index_name_by_id
from pyiceberg.table.sorting import SortDirection

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import MeshError
from mesh_platform.governance.layout import PartitionFileSize
from mesh_platform.governance.policy import PolicyContext
from mesh_platform.products.descriptor import descriptor_from_node
from mesh_platform.storage import datafiles
from mesh_platform.storage.partitioning import Partitioning
from mesh_platform.storage.tablespec import TableSpec
from mesh_platform.storage.wap import write_audit_publish
from tests.test_descriptor import node

ORDERS = ProductAddress("sales", "orders")
SPEC = TableSpec(
    docs={"order_key": "Order identifier.", "address": "Where it ships."},
    required=("order_key",),
    identifier=("order_key",),
    sort_by=("order_date", "order_key"),
)


@pytest.fixture
def conn(duck):
    duck.execute(
        """CREATE TABLE orders AS SELECT
             (10000 - range)::BIGINT AS order_key,
             DATE '2024-01-01' + (range % 60)::INT AS order_date,
             {'city': 'c' || range, 'zip': range::INT} AS address,
             [range, range + 1] AS tags,
             MAP([('k' || range)], [range::DOUBLE]) AS prices,
             md5(range::VARCHAR) AS note
           FROM range(10000)"""
    )
    return duck


def publish(catalog, conn, relation="main.orders", spec=SPEC, **kwargs):
    result = write_audit_publish(
        catalog, ORDERS, conn, relation, batch_id=kwargs.pop("batch_id", "b1"), properties={},
        spec=spec, **kwargs,
    )  # fmt: skip
    assert result.published_snapshot_id is not None
    return catalog.load_table(ORDERS.iceberg_identifier), result


def live_files(table):
    return [task.file.file_path for task in table.scan().plan_files()]


def test_files_carry_the_tables_field_ids_at_every_depth_and_are_zstd(catalog, conn):
    table, _ = publish(catalog, conn)
    schema = table.schema()
    expected = {name: i for i, name in index_name_by_id(schema).items()}
    for location in live_files(table):
        meta = pq.read_metadata(location.removeprefix("file://"))
        ids = datafiles.parquet_field_ids(meta.schema.to_arrow_schema())
        assert ids == {path: expected[path] for path in ids}
        assert set(ids) == set(expected)  # nested fields included: address.zip, tags.element...
        assert datafiles.needs_rewrite(meta, schema) == []
        codecs = {meta.row_group(0).column(c).compression for c in range(meta.num_columns)}
        assert codecs == {"ZSTD"}
    assert table.properties[datafiles.CODEC_PROPERTY] == "zstd"
    assert table.properties[datafiles.FILE_SIZE_PROPERTY] == str(256 * 1024 * 1024)


def test_a_file_duckdb_writes_plainly_needs_a_rewrite(catalog, conn, tmp_path):
    table, _ = publish(catalog, conn)
    conn.execute(f"COPY orders TO '{tmp_path}/plain.parquet' (FORMAT parquet)")
    reasons = datafiles.needs_rewrite(pq.read_metadata(tmp_path / "plain.parquet"), table.schema())
    assert any("field ids" in r for r in reasons) and any("SNAPPY" in r for r in reasons)


def test_a_large_output_is_split_into_files_of_the_target_size(catalog, conn):
    table, _ = publish(catalog, conn)
    written = datafiles.write_data_files(
        conn, "main.orders", table, target_file_size_bytes=64 * 1024,
        row_group_size_bytes=16 * 1024,
    )  # fmt: skip
    assert len(written.files) >= 3 and written.rows == 10000
    assert all(Path(f).stat().st_size < 200_000 for f in written.files)
    assert sum(pq.read_metadata(f).num_rows for f in written.files) == 10000


def test_a_large_partition_is_split_too(catalog, conn):
    part = Partitioning("order_date", "year")  # one partition of 10,000 rows
    table, _ = publish(catalog, conn, partitioning=part)
    written = datafiles.write_data_files(
        conn, "main.orders", table, partitioning=part, target_file_size_bytes=64 * 1024,
        row_group_size_bytes=16 * 1024,
    )  # fmt: skip
    assert len(written.files) >= 3 and written.rows == 10000
    assert all("/_mesh_partition=2024-01-01/" in f for f in written.files)


def test_files_follow_the_sort_order_and_the_table_declares_it(catalog, conn):
    table, _ = publish(catalog, conn)
    order = table.sort_order()
    names = [table.schema().find_column_name(f.source_id) for f in order.fields]
    assert names == ["order_date", "order_key"]
    assert all(f.direction == SortDirection.ASC for f in order.fields)
    rows = pq.read_table(live_files(table)[0].removeprefix("file://")).select(
        ["order_date", "order_key"]
    ).to_pylist()  # fmt: skip
    assert rows == sorted(rows, key=lambda r: (r["order_date"], r["order_key"]))


def test_the_schema_carries_docs_required_columns_and_the_key(catalog, conn):
    table, _ = publish(catalog, conn)
    schema = table.schema()
    assert schema.find_field("order_key").doc == "Order identifier."
    assert schema.find_field("address").doc == "Where it ships."
    assert schema.find_field("order_key").required
    assert not schema.find_field("note").required
    assert schema.identifier_field_names() == {"order_key"}
    assert table.scan().to_arrow().num_rows == 10000  # pyiceberg reads the required column


def test_a_batch_with_nulls_in_a_required_column_is_refused_and_leaves_nothing(catalog, conn):
    table, _ = publish(catalog, conn)
    before = (table.current_snapshot().snapshot_id, len(live_files(table)))
    data = catalog.properties["warehouse"].removeprefix("file://")
    files_before = sorted(p for p in _parquet_files(data))
    conn.execute("CREATE TABLE holes AS SELECT * REPLACE (CASE WHEN order_key % 7 = 0 "
                 "THEN NULL ELSE order_key END AS order_key) FROM orders")  # fmt: skip
    with pytest.raises(MeshError, match=r"order_key \(1428 null\(s\)\)"):
        publish(catalog, conn, "main.holes", batch_id="b2")
    table = catalog.load_table(ORDERS.iceberg_identifier)
    assert (table.current_snapshot().snapshot_id, len(live_files(table))) == before
    assert sorted(_parquet_files(data)) == files_before  # the refused files were deleted


def test_a_column_becomes_required_only_once_main_proves_it_holds_no_nulls(catalog, conn):
    loose = TableSpec(docs=SPEC.docs)
    table, _ = publish(catalog, conn, spec=loose)
    assert not table.schema().find_field("order_key").required  # the contract said nothing
    table, _ = publish(catalog, conn, batch_id="b2")  # now it declares not null: proved, set
    assert table.schema().find_field("order_key").required
    assert table.schema().identifier_field_names() == {"order_key"}
    table, _ = publish(catalog, conn, spec=loose, batch_id="b3")  # relaxed again: always safe
    assert not table.schema().find_field("order_key").required
    assert table.schema().identifier_field_names() == set()


def test_an_incremental_batch_cannot_make_required_a_column_main_holds_nulls_in(catalog, conn):
    part = Partitioning("order_date", "month")
    conn.execute("CREATE TABLE holes AS SELECT * REPLACE (CASE WHEN order_key % 7 = 0 "
                 "THEN NULL ELSE order_key END AS order_key) FROM orders")  # fmt: skip
    loose = TableSpec()
    publish(catalog, conn, "main.holes", spec=loose, partitioning=part)
    one_month = Partitioning("order_date", "month", (dt.date(2024, 1, 1),))
    conn.execute("CREATE TABLE january AS SELECT * FROM orders WHERE order_date < '2024-02-01'")
    with pytest.raises(MeshError, match="--full-refresh") as err:
        publish(catalog, conn, "main.january", partitioning=one_month, batch_id="b2")
    assert "order_key" in str(err.value)
    table = catalog.load_table(ORDERS.iceberg_identifier)
    assert not table.schema().find_field("order_key").required
    table, _ = publish(catalog, conn, partitioning=part, batch_id="b3")  # a full refresh does it
    assert table.schema().find_field("order_key").required


def _parquet_files(root):
    return [str(p) for p in Path(root).rglob("*.parquet")]


def test_a_writer_given_no_spec_keeps_what_the_table_declares(catalog, conn):
    publish(catalog, conn)  # the contract's spec: required key, sort order
    table, _ = publish(catalog, conn, spec=None, batch_id="rewrite")  # a tool, a rewrite
    assert table.schema().find_field("order_key").required
    assert table.schema().identifier_field_names() == {"order_key"}
    assert len(table.sort_order().fields) == 2
    assert table.schema().find_field("order_key").doc == "Order identifier."


def test_a_granularity_that_writes_tiny_files_warns_with_the_fix(mesh, catalog, conn):
    raw = node(partition_by={"column": "order_date", "granularity": "day"})
    raw["columns"]["order_date"] = {"name": "order_date", "data_type": "date"}
    descriptor = descriptor_from_node("sales", raw)
    part = Partitioning("order_date", "day")
    conn.execute("CREATE TABLE dated AS SELECT order_key, order_date, note AS email, "
                 "note AS phone, order_key::DOUBLE AS amount FROM orders")  # fmt: skip
    publish(catalog, conn, "main.dated", spec=TableSpec(), partitioning=part)
    ctx = PolicyContext("sales", [descriptor], mesh=mesh)
    (warning,) = PartitionFileSize().evaluate(ctx)
    assert warning.subject == "sales.orders" and warning.file == descriptor.source_file
    assert "partitioned by day of order_date, its 60 data files average" in warning.message
    assert "remove its `partition_by`" in warning.fix
    assert (
        list(
            PartitionFileSize().evaluate(
                PolicyContext("sales", [descriptor], mesh=mesh, params={"min_file_mb": 0.001})
            )
        )
        == []
    )
