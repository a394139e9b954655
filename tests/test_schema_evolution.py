"""Nested columns (list, struct, map) through the gate's schema check, on a real tmp Iceberg
catalog and real DuckDB: an unchanged product republishes (its nested field ids are not its
schema), a compatible nested change evolves the table, and a breaking one still blocks, naming
the field."""

from __future__ import annotations

from typing import Any

import pytest
from pyiceberg.schema import Schema
from pyiceberg.types import IntegerType, ListType, LongType, NestedField, StringType, StructType

from mesh_platform.addressing import ProductAddress
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.publish import publish_product
from mesh_platform.storage.evolution import compare_schemas
from mesh_platform.testing import published_scan

ADDRESS = ProductAddress("sales", "baskets")
BASE = "range AS basket_key"
TAGS = "['a', 'b' || range] AS tags"
ADDRESS_STRUCT = "{'city': 'Lyon', 'zip': 69000::INTEGER} AS address"
PRICES = "MAP {'eur': range::BIGINT} AS prices"
LINES = "[{'sku': 'x' || range, 'qty': 2::INTEGER}] AS lines"
NESTED = f"{BASE}, {TAGS}, {ADDRESS_STRUCT}, {PRICES}, {LINES}"


def descriptor() -> ProductDescriptor:
    """``sales.baskets``: a key and nested columns, nothing personal (the real data policies
    run and pass)."""
    columns: dict[str, Any] = {
        name: {"data_type": kind, "config": {"meta": {"classification": "internal"}}}
        for name, kind in {
            "basket_key": "bigint",
            "tags": "varchar[]",
            "address": "struct(city varchar, zip integer)",
            "prices": "map(varchar, bigint)",
            "lines": "struct(sku varchar, qty integer)[]",
        }.items()
    }
    node = {
        "resource_type": "model",
        "access": "public",
        "name": "baskets",
        "description": "One row per basket.",
        "original_file_path": "models/products/baskets.sql",
        "config": {
            "meta": {
                "mesh": {
                    "purpose": "Baskets and their lines for the merchandising team.",
                    "owner": {"team": "sales", "contact": "sales-data@example.com"},
                    "version": "1.0.0",
                }
            }
        },
        "columns": columns,
    }
    return descriptor_from_node("sales", node)


def publish(catalog, conn, select: str, batch: str, **kwargs):
    conn.execute(f"CREATE OR REPLACE TABLE main.b_{batch} AS SELECT {select} FROM range(3)")
    return publish_product(
        catalog, descriptor(), conn, f"main.b_{batch}", batch_id=batch, run_id=f"run-{batch}",
        **kwargs,
    )  # fmt: skip


def main_id(catalog) -> int:
    return catalog.load_table(ADDRESS.iceberg_identifier).current_snapshot().snapshot_id


def test_an_unchanged_nested_product_republishes_and_reads_back(mesh, catalog, duck):
    first = publish(catalog, duck, NESTED, "b1")
    assert first.published, first.error
    again = publish(catalog, duck, NESTED.replace("'b' || range", "'c' || range"), "b2")

    assert again.published, again.error
    outcome = again.outcomes["schema_compatible"]
    assert outcome.passed and outcome.description == "compatible", outcome.description
    assert not any(outcome.metadata.values()), outcome.metadata
    assert main_id(catalog) == again.snapshot_id != first.snapshot_id
    with published_scan(mesh, ADDRESS) as (conn, scan, _):
        rows = conn.execute(
            f"SELECT tags, address, prices, lines FROM {scan} WHERE basket_key = 2"
        ).fetchone()
    assert rows == (["a", "c2"], {"city": "Lyon", "zip": 69000}, {"eur": 2},
                    [{"sku": "x2", "qty": 2}])  # fmt: skip


@pytest.mark.parametrize(
    ("select", "key", "entry"),
    [
        pytest.param(
            NESTED.replace("69000::INTEGER}", "69000::INTEGER, 'country': 'FR'}"),
            "added", "address.country", id="struct-field-added",
        ),
        pytest.param(
            NESTED.replace("2::INTEGER}]", "2::BIGINT}]"),
            "widened", "lines.element.qty: int -> long", id="nested-field-widened",
        ),
    ],
)  # fmt: skip
def test_a_compatible_nested_change_publishes_and_evolves_the_table(
    catalog, duck, select, key, entry
):
    assert publish(catalog, duck, NESTED, "b1").published
    publication = publish(catalog, duck, select, "b2")

    assert publication.published, publication.error
    assert publication.outcomes["schema_compatible"].metadata[key] == [entry]
    schema = catalog.load_table(ADDRESS.iceberg_identifier).schema()
    path, _, kind = entry.partition(": ")
    field = schema.find_field(path)
    assert str(field.field_type) == (kind.split(" -> ")[1] if kind else "string")


def test_a_blocked_batch_takes_back_the_nested_field_it_added(mesh, catalog, duck):
    """Main's readers never see a field that no published snapshot has."""
    assert publish(catalog, duck, NESTED, "b1").published
    before = catalog.load_table(ADDRESS.iceberg_identifier).schema()
    added = NESTED.replace("69000::INTEGER}", "69000::INTEGER, 'country': 'FR'}")

    blocked = publish(catalog, duck, added, "b2", failed_elsewhere=["dbt test x"])

    assert not blocked.published
    assert blocked.outcomes["schema_compatible"].metadata["added"] == ["address.country"]
    after = catalog.load_table(ADDRESS.iceberg_identifier).schema()
    assert compare_schemas(before, after).added == []
    with published_scan(mesh, ADDRESS) as (conn, scan, _):
        address = conn.execute(f"SELECT address FROM {scan} LIMIT 1").fetchone()[0]
    assert address == {"city": "Lyon", "zip": 69000}


@pytest.mark.parametrize(
    ("select", "key", "entry"),
    [
        pytest.param(
            NESTED.replace("69000::INTEGER", "'69000'"),
            "type_changes", "address.zip: int -> string", id="struct-field-retyped",
        ),
        pytest.param(
            NESTED.replace(", 'zip': 69000::INTEGER", ""),
            "dropped", "address.zip", id="struct-field-removed",
        ),
        pytest.param(
            NESTED.replace("range::BIGINT}", "range::INTEGER}"),
            "type_changes", "prices.value: long -> int", id="map-value-narrowed",
        ),
        pytest.param(
            NESTED.replace("['a', 'b' || range]", "[1, range]"),
            "type_changes", "tags.element: string -> long", id="list-element-retyped",
        ),
        pytest.param(
            NESTED.replace("['a', 'b' || range] AS tags", "'a' AS tags"),
            "type_changes", "tags: list<string> -> string", id="list-became-a-column",
        ),
        pytest.param(
            NESTED.replace("MAP {'eur'", "MAP {1"),
            "type_changes", "prices.key: string -> int", id="map-key-retyped",
        ),
    ],
)  # fmt: skip
def test_a_breaking_nested_change_is_blocked_naming_the_field(catalog, duck, select, key, entry):
    assert publish(catalog, duck, NESTED, "b1").published
    before = main_id(catalog)
    schema = catalog.load_table(ADDRESS.iceberg_identifier).schema()

    publication = publish(catalog, duck, select, "b2")

    assert not publication.published
    assert publication.failed_checks == ["schema_compatible"]
    outcome = publication.outcomes["schema_compatible"]
    assert outcome.metadata[key] == [entry], outcome.metadata
    assert entry.split(":")[0] in outcome.description
    assert publication.stage is None  # refused before anything was staged
    table = catalog.load_table(ADDRESS.iceberg_identifier)
    assert table.current_snapshot().snapshot_id == before
    assert table.schema() == schema


def test_field_ids_are_not_part_of_the_comparison():
    """The published table's ids against a batch's (none: -1), at every depth."""

    def schema(first_id: int, zip_type) -> Schema:
        address = StructType(
            NestedField(first_id + 3, "city", StringType(), required=False),
            NestedField(first_id + 4, "zip", zip_type, required=False),
        )
        return Schema(
            NestedField(first_id, "tags", ListType(first_id + 2, StringType(), False), False),
            NestedField(first_id + 1, "address", address, required=False),
        )

    assert compare_schemas(schema(1, IntegerType()), schema(-50, IntegerType())).breaking is False
    widened = compare_schemas(schema(1, IntegerType()), schema(-50, LongType()))
    assert widened.widened == ["address.zip: int -> long"] and not widened.breaking
    narrowed = compare_schemas(schema(1, LongType()), schema(-50, IntegerType()))
    assert narrowed.type_changes == ["address.zip: long -> int"] and narrowed.breaking


def test_a_product_never_published_takes_the_schema_of_its_next_batch(mesh, catalog, duck):
    """Its first batch was blocked (the table exists, with that batch's columns): the next batch
    drops a column and retypes another; no reader ever saw them, so nothing breaks."""
    blocked = publish(catalog, duck, NESTED, "b1", failed_elsewhere=["dbt test x"])
    assert not blocked.published
    changed = f"{BASE}, {ADDRESS_STRUCT.replace('69000::INTEGER', chr(39) + 'A1' + chr(39))}"

    publication = publish(catalog, duck, changed, "b2")

    assert publication.published, publication.error
    assert publication.outcomes["schema_compatible"].description.startswith("first publication")
    schema = catalog.load_table(ADDRESS.iceberg_identifier).schema()
    assert [f.name for f in schema.fields] == ["basket_key", "address"]
    assert str(schema.find_field("address.zip").field_type) == "string"
    with published_scan(mesh, ADDRESS) as (conn, scan, _):
        assert conn.execute(f"SELECT address FROM {scan} LIMIT 1").fetchone()[0] == {
            "city": "Lyon",
            "zip": "A1",
        }
