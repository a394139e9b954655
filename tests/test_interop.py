"""Engines the mesh's team never wrote read every product of the sample mesh as the mesh does.

Each product's table (main, the snapshot the mesh read) is read with pyiceberg, DuckDB's iceberg
extension (loaded from its wheel: nothing is downloaded), polars (``scan_iceberg``) and Daft
(``read_iceberg``), and compared with what its owner reads through the mesh's own engine
(``QuerySession``: every row and column, masks at read not applied to the owner): row count,
and per column the non-null count and a checksum of the values as text (so each engine's Arrow
types, large or not, compare alike). Every data file's Parquet footer carries the Iceberg field
ids of the table's schema, nested fields included: no reader needs a name mapping.
"""

from __future__ import annotations

import json
from typing import Any

import daft
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.schema import index_name_by_id

from mesh_platform.addressing import PLATFORM_NAMESPACE, quote_ident
from mesh_platform.config import Mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.registry import load_directory
from mesh_platform.query.engine import QuerySession
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.datafiles import parquet_field_ids
from mesh_platform.testing import run_mesh

pytestmark = pytest.mark.e2e

ENGINES = ("pyiceberg", "duckdb-iceberg", "polars", "daft")


@pytest.fixture(scope="module")
def products(sample_build: Mesh) -> list[tuple[str, str]]:
    """(address, principal reading it as its owner) of every published product."""
    found = []
    for address, descriptor in sorted(load_directory(sample_build).descriptors.items()):
        owner = descriptor.domain
        if owner == PLATFORM_NAMESPACE:  # the platform's tables: readable by every domain
            owner = "sales"
        found.append((address, owner))
    assert len(found) >= 12, found
    return found


@pytest.fixture(scope="module")
def duck():
    conn = connect(extensions=("iceberg",))  # from the duckdb-extension-iceberg wheel
    yield conn
    conn.close()


def checksums(duck, table: pa.Table) -> tuple[int, dict[str, Any]]:
    """Rows, and per column (non-null values, sum of the hashes of their text)."""
    duck.register("_t", table)
    columns = [quote_ident(c) for c in table.column_names]
    parts = ["count(*)"] + [
        f"count({c}), sum(hash({c}::VARCHAR)::HUGEINT) FILTER (WHERE {c} IS NOT NULL)"
        for c in columns
    ]
    row = duck.execute(f"SELECT {', '.join(parts)} FROM _t").fetchone()
    duck.unregister("_t")
    return row[0], {
        name: (row[1 + 2 * i], row[2 + 2 * i]) for i, name in enumerate(table.column_names)
    }


def read_with(engine: str, duck, table) -> pa.Table:
    if engine == "pyiceberg":
        return table.scan().to_arrow()
    if engine == "duckdb-iceberg":
        location = warehouse.engine_path(table.metadata_location)
        return duck.execute(f"SELECT * FROM iceberg_scan('{location}')").to_arrow_table()
    if engine == "polars":
        return pl.scan_iceberg(table).collect().to_arrow()
    return daft.read_iceberg(table).to_arrow()


def test_every_engine_reads_every_product_as_the_mesh_does(sample_build, products, duck):
    catalog = open_catalog(sample_build)
    differences = []
    for address, owner in products:
        with QuerySession(owner, mesh=sample_build) as session:
            mine = session.sql(f"SELECT * FROM {address}")
            read_snapshot = session.last_snapshots[address]
        table = catalog.load_table(tuple(address.split(".")))
        assert table.current_snapshot().snapshot_id == read_snapshot, address  # like for like
        rows, expected = checksums(duck, mine)
        assert rows > 0, address
        for engine in ENGINES:
            theirs = read_with(engine, duck, table)
            assert theirs.column_names == mine.column_names, (address, engine)
            got_rows, got = checksums(duck, theirs)
            if got_rows != rows:
                differences.append(f"{address} {engine}: {got_rows} rows, the mesh {rows}")
            differences += [
                f"{address} {engine} {column}: {got[column]} != {value}"
                for column, value in expected.items()
                if got[column] != value
            ]
    assert not differences, "\n".join(differences)


def test_every_data_file_carries_the_iceberg_field_ids(sample_build, products):
    catalog = open_catalog(sample_build)
    wrong = []
    for address, _owner in products:
        table = catalog.load_table(tuple(address.split(".")))
        schema = table.schema()
        for task in table.scan().plan_files():
            location = warehouse.engine_path(task.file.file_path)
            found = parquet_field_ids(pq.read_metadata(location).schema.to_arrow_schema())
            expected = {name: i for i, name in index_name_by_id(schema).items()}
            if found != expected:
                wrong.append(f"{address} {location}: {found} != {expected}")
    assert not wrong, "\n".join(wrong)


def test_mesh_check_warns_of_a_granularity_that_writes_tiny_files(sample_build):
    # sales.orders is partitioned by month: at the sample's scale, files of a few kilobytes
    result = run_mesh(sample_build.root, "check", "--domain", "sales", "--format", "json")
    found = [
        v for v in json.loads(result.stdout)["violations"] if v["policy"] == "partition_file_size"
    ]
    assert [v["subject"] for v in found] == ["sales.orders"], result.stdout[-3000:]
    (warning,) = found
    assert warning["severity"] == "warn" and not warning["blocking"]
    assert warning["message"].startswith("partitioned by month of order_date, its ")
    assert warning["file"] == "dbt_projects/sales/models/products/products.yml"
    assert warning["line"] and "partition_by" in warning["fix"]


def test_every_schema_carries_its_contract(sample_build, products):
    """Column docs, required columns (not_null) and identifier fields (primary key) as each
    product's contract declares them; the sort order where one is declared. (The platform's
    own ``mesh.sla_history`` is appended by pyiceberg, not published through a contract.)"""
    catalog = open_catalog(sample_build)
    directory = load_directory(sample_build)
    wrong = []
    for address, _owner in products:
        if address.startswith(f"{PLATFORM_NAMESPACE}."):
            continue
        descriptor = directory.descriptors[address]
        table = catalog.load_table(tuple(address.split(".")))
        schema, spec = table.schema(), descriptor.table_spec()
        found = (
            {f.name: f.doc for f in schema.fields if f.doc},
            tuple(f.name for f in schema.fields if f.required),
            set(schema.identifier_field_names()),
            [schema.find_column_name(f.source_id) for f in table.sort_order().fields],
        )
        wanted = (
            {k: v.strip() for k, v in spec.docs.items()},
            spec.required,
            set(spec.identifier),
            list(spec.sort_by),
        )
        if found != wanted:
            wrong.append(f"{address}: {found} != {wanted}")
    assert not wrong, "\n".join(wrong)
    customers = catalog.load_table(("sales", "customers"))
    assert [f.name for f in customers.schema().fields if f.required] == ["customer_key"]
    assert len(customers.sort_order().fields) == 2  # the sample declares sort_by
