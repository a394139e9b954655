"""Product descriptors: built from a dbt manifest node, validated with errors that name the
product, the file and the fix; the addresses (major versions, URNs) derived from them."""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any

import pytest

from mesh_platform.addressing import ProductAddress, name_problem, validate_name
from mesh_platform.assets.keys import product_key
from mesh_platform.errors import InvalidNameError
from mesh_platform.formats import parse_duration
from mesh_platform.products.descriptor import DescriptorError, descriptor_from_node
from mesh_platform.products.descriptor_sla import SUPPORTED_EXPECTATIONS, Expectation, Freshness

YAML_FILE = "dbt_projects/sales/models/products/schema.yml"
SQL_FILE = "dbt_projects/sales/models/products/orders.sql"


def node(**mesh_overrides: Any) -> dict[str, Any]:
    """A minimal public dbt model node as it appears in manifest.json."""
    mesh = {
        "purpose": "Order headers for revenue reporting across the mesh.",
        "owner": {"team": "sales", "contact": "sales-data@example.com"},
        "version": "1.2.0",
        "status": "active",
        "sla": {
            "freshness": {"max_age": "26h"},
            "expectations": [
                {"expect_column_values_to_not_be_null": {"column": "order_key"}},
                {"expect_column_values_to_match_regex": {"column": "email", "regex": "@"}},
            ],
            "volume": {"min_ratio": 0.5},
        },
        "grants": [{"to": "marketing", "purpose": "Revenue by segment.", "expires": "2099-12-31"}],
    }
    mesh.update(mesh_overrides)
    return {
        "resource_type": "model",
        "access": "public",
        "name": "orders",
        "unique_id": "model.sales.orders",
        "description": "  One row per customer order.  ",
        "original_file_path": "models/products/orders.sql",
        "patch_path": "sales://models/products/schema.yml",
        "config": {"materialized": "table", "meta": {"mesh": mesh}},
        "columns": {
            "order_key": {
                "name": "order_key",
                "data_type": "bigint",
                "description": "Order id.",
                "config": {"meta": {"classification": "public"}},
            },
            "email": {
                "name": "email",
                "data_type": "varchar",
                "description": "Customer email.",
                "config": {"meta": {"classification": "pii:email"}},
            },
            "phone": {
                "name": "phone",
                "data_type": "varchar",
                "meta": {"classification": "pii:phone"},  # dbt < 1.10 puts meta here
            },
            "amount": {"name": "amount", "data_type": "double", "description": ""},
        },
    }


# --- a valid descriptor ---------------------------------------------------------------------


def test_a_valid_node_gives_address_urn_pii_and_iceberg_properties():
    d = descriptor_from_node("sales", node())
    assert d.address == ProductAddress("sales", "orders", 1)
    assert str(d.address) == "sales.orders"
    assert d.address.urn == "urn:mesh:sales:orders:v1"
    assert d.body.major == 1
    assert d.description == "  One row per customer order.  "
    assert d.source_file == YAML_FILE  # the YAML that describes it, from patch_path
    assert d.pii_columns == {"email": "email", "phone": "phone"}
    assert [c.name for c in d.columns] == ["order_key", "email", "phone", "amount"]
    assert d.column("order_key").data_type == "bigint"
    assert d.column("missing") is None
    assert d.incremental is False
    assert d.body.sla.freshness.timedelta == dt.timedelta(hours=26)
    assert [e.label() for e in d.body.sla.expectations] == [
        "expect_column_values_to_not_be_null(order_key)",
        "expect_column_values_to_match_regex(email)",
    ]
    assert d.body.owner.dagster_owners == ["team:sales", "sales-data@example.com"]

    props = d.iceberg_properties()
    assert props["mesh.address"] == "sales.orders"
    assert props["mesh.urn"] == "urn:mesh:sales:orders:v1"
    assert props["mesh.version"] == "1.2.0"
    assert props["mesh.status"] == "active"
    assert props["mesh.owner"] == "sales"
    assert props["mesh.contact"] == "sales-data@example.com"
    assert props["comment"] == "One row per customer order."
    classifications = {
        k.removeprefix("mesh.classification."): v
        for k, v in props.items()
        if k.startswith("mesh.classification.")
    }
    # one property per classified column; the unclassified column gets none
    assert classifications == {"order_key": "public", "email": "pii:email", "phone": "pii:phone"}
    assert "mesh.deprecated_on" not in props
    assert all(isinstance(v, str) for v in props.values())


def test_source_file_falls_back_to_the_sql_file_and_incremental_is_read():
    raw = node()
    del raw["patch_path"]
    raw["config"]["materialized"] = "incremental"
    d = descriptor_from_node("sales", raw)
    assert d.source_file == SQL_FILE
    assert d.incremental is True


def test_descriptor_under_node_meta_is_read_too():
    raw = node()
    raw["meta"] = {"mesh": raw["config"].pop("meta")["mesh"]}
    assert descriptor_from_node("sales", raw).body.version == "1.2.0"


def test_a_dbt_model_version_two_is_major_two():
    raw = node(version="2.0.1")
    raw["version"] = 2
    d = descriptor_from_node("sales", raw)
    assert d.address == ProductAddress("sales", "orders", 2)
    assert d.address.table == "orders_v2"
    props = d.iceberg_properties()
    assert props["mesh.address"] == "sales.orders_v2"
    assert props["mesh.urn"] == "urn:mesh:sales:orders:v2"


def test_deprecation_date_reaches_the_table_properties():
    d = descriptor_from_node("sales", node(status="deprecated", deprecated_on="2025-03-01"))
    assert d.body.deprecated_on == dt.date(2025, 3, 1)
    assert d.iceberg_properties()["mesh.deprecated_on"] == "2025-03-01"
    assert d.iceberg_properties()["mesh.status"] == "deprecated"


# --- invalid descriptors --------------------------------------------------------------------


def _without_mesh(raw):
    del raw["config"]["meta"]["mesh"]


def _set(*path, value):
    def mutate(raw):
        target = raw["config"]["meta"]["mesh"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _classify(column, value):
    def mutate(raw):
        raw["columns"][column]["config"]["meta"]["classification"] = value

    return mutate


def _dbt_version(v):
    def mutate(raw):
        raw["version"] = v

    return mutate


def _description(text):
    def mutate(raw):
        raw["description"] = text

    return mutate


@pytest.mark.parametrize(
    ("mutate", "in_message"),
    [
        pytest.param(_without_mesh, "has no descriptor", id="no-mesh-block"),
        pytest.param(_set("version", value="1.2"), "semantic version", id="bad-semver"),
        pytest.param(_set("version", value="v1.0.0"), "semantic version", id="semver-prefix"),
        pytest.param(_set("status", value="deprecated"), "deprecated_on", id="deprecated-no-date"),
        pytest.param(
            _set("deprecated_on", value="2025-01-01"), "only for status", id="date-not-deprecated"
        ),
        pytest.param(_set("status", value="retired"), "status", id="unknown-status"),
        pytest.param(
            _set("sla", "expectations", value=[{"expect_column_to_be_shiny": {"column": "x"}}]),
            "expect_column_to_be_shiny",
            id="unknown-expectation",
        ),
        pytest.param(_classify("email", "pii:shoe_size"), "pii:shoe_size", id="bad-pii-kind"),
        pytest.param(_classify("email", "secret"), "'secret'", id="bad-level"),
        pytest.param(
            _set("owner", value={"team": "sales", "contact": "the sales team"}),
            "owner.contact",
            id="bad-contact",
        ),
        pytest.param(
            _set("owner", value={"team": "sales team", "contact": "a@b.co"}),
            "owner.team",
            id="bad-team",
        ),
        pytest.param(_set("purpose", value="tbd"), "purpose", id="short-purpose"),
        pytest.param(
            _set("sla", "freshness", value={"max_age": "2 weeks"}), "2 weeks", id="bad-age"
        ),
        pytest.param(_set("sla", "volume", value={"min_ratio": -1}), "min_ratio", id="neg-ratio"),
        pytest.param(_set("purpos", value="typo"), "purpos", id="unknown-field"),
        pytest.param(_dbt_version(2), "v2", id="dbt-version-vs-major"),
        pytest.param(_description("   "), "no description", id="no-description"),
    ],
)
def test_invalid_descriptor_names_product_file_and_fix(mutate, in_message):
    raw = node()
    mutate(raw)
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node("sales", raw)
    message = str(err.value)
    assert in_message in message
    assert "product sales.orders" in message
    assert YAML_FILE in message  # the file to edit
    assert err.value.path is not None and str(err.value.path) == YAML_FILE
    assert err.value.fix.strip()
    assert "fix: " in message


def test_dbt_version_mismatch_fix_gives_the_version_to_use():
    raw = node()
    raw["version"] = 3
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node("sales", raw)
    assert "1.2.0" in err.value.what
    assert "'3.0.0'" in err.value.fix


def test_every_problem_of_a_descriptor_is_reported_at_once():
    raw = node(version="one", status="deprecated")
    raw["config"]["meta"]["mesh"]["owner"]["contact"] = "nobody"
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node("sales", raw)
    message = str(err.value)
    assert "version" in message
    assert "contact" in message


@pytest.mark.parametrize(
    ("domain", "name"),
    [("sales", "orders_v3"), ("Sales", "orders"), ("raw", "orders"), ("sales", "Orders")],
)
def test_a_descriptor_whose_address_breaks_the_naming_rule_is_rejected(domain, name):
    raw = node()
    raw["name"] = name
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node(domain, raw)
    assert f"{domain}.{name}" in str(err.value)


# --- addresses ------------------------------------------------------------------------------


def test_major_two_address():
    address = ProductAddress("sales", "orders", 2)
    assert address.table == "orders_v2"
    assert str(address) == "sales.orders_v2"
    assert product_key(address).path == ["sales", "orders_v2"]
    assert address.iceberg_identifier == ("sales", "orders_v2")
    assert address.urn == "urn:mesh:sales:orders:v2"
    assert address.table_name("mesh") == "mesh.sales.orders_v2"
    assert address != ProductAddress("sales", "orders")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sales.orders", ProductAddress("sales", "orders", 1)),
        ("sales.orders_v2", ProductAddress("sales", "orders", 2)),
        ("sales.order_lines_v12", ProductAddress("sales", "order_lines", 12)),
        ("urn:mesh:sales:orders:v1", ProductAddress("sales", "orders", 1)),
        ("urn:mesh:sales:orders:v2", ProductAddress("sales", "orders", 2)),
    ],
)
def test_parse_accepts_the_three_forms(text, expected):
    assert ProductAddress.parse(text) == expected


@pytest.mark.parametrize("major", [1, 2, 3, 10])
def test_parse_round_trips(major):
    address = ProductAddress("logistics", "shipments", major)
    assert ProductAddress.parse(str(address)) == address
    assert ProductAddress.parse(address.urn) == address
    assert ProductAddress.parse(ProductAddress.parse(address.urn).urn) == address


@pytest.mark.parametrize(
    "bad",
    [
        "urn:mesh:sales:orders",
        "urn:mesh:sales:orders:2",
        "urn:mesh:sales:orders:v0",
        "urn:mesh:sales:orders:v02",
        "urn:mesh:sales:orders:v2:extra",
        "urn:mesh:Sales:orders:v1",
        "urn:mesh:sales:orders_v2:v2",
        "urn:mesh::orders:v1",
        "sales.orders_v1",  # major 1 has no suffix; 'orders_v1' is not a product name
        "sales.orders_v0",
    ],
)
def test_bad_urns_and_suffixes_are_rejected(bad):
    with pytest.raises(InvalidNameError):
        ProductAddress.parse(bad)


@pytest.mark.parametrize("major", [0, -1, "2"])
def test_major_must_be_a_positive_integer(major):
    with pytest.raises(InvalidNameError):
        ProductAddress("sales", "orders", major)


@pytest.mark.parametrize("name", ["orders_v3", "orders_v1", "orders_v12"])
def test_a_product_name_with_a_version_suffix_breaks_the_naming_rule(name):
    assert "_v<number>" in name_problem(name)
    with pytest.raises(InvalidNameError):
        ProductAddress("sales", name)
    assert name_problem("orders_v3x") is None  # only a trailing suffix is the version


def test_the_suggested_fix_for_a_suffixed_name_follows_the_rule():
    with pytest.raises(InvalidNameError) as err:
        validate_name("product", "orders_v3")
    suggested = re.search(r"e\.g\. '([^']*)'", err.value.fix).group(1)
    assert name_problem(suggested) is None, f"suggested {suggested!r} breaks the rule too"


# --- expectations and durations -------------------------------------------------------------


def test_every_supported_expectation_exists_in_great_expectations():
    import great_expectations.expectations as gxe

    missing = []
    for name in sorted(SUPPORTED_EXPECTATIONS):
        camel = "".join(part.capitalize() for part in name.split("_"))
        if not hasattr(gxe, camel):
            missing.append(f"{name} ({camel})")
    assert not missing, missing
    assert len(SUPPORTED_EXPECTATIONS) >= 10


def test_expectation_short_and_long_forms():
    short = Expectation.model_validate(
        {"expect_compound_columns_to_be_unique": {"column_list": ["a", "b"]}}
    )
    assert short.type == "expect_compound_columns_to_be_unique"
    assert short.columns == ["a", "b"]
    assert short.column is None
    assert short.label() == "expect_compound_columns_to_be_unique(a,b)"
    table_level = Expectation.model_validate({"expect_table_row_count_to_be_between": None})
    assert table_level.kwargs == {}
    assert table_level.columns == []
    assert table_level.label() == "expect_table_row_count_to_be_between(table)"
    long = Expectation.model_validate(
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}}
    )
    assert long.columns == ["id"] and long.label() == "expect_column_values_to_be_unique(id)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", dt.timedelta(minutes=90)),
        ("26h", dt.timedelta(hours=26)),
        ("7d", dt.timedelta(days=7)),
        (" 7d ", dt.timedelta(days=7)),
        ("0m", dt.timedelta(0)),
        ("12 h", dt.timedelta(hours=12)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected
    assert Freshness(max_age=text).timedelta == expected


@pytest.mark.parametrize("bad", ["", "h", "7", "7w", "-1h", "1.5h", "26H", "2 weeks", "h26"])
def test_parse_duration_rejects_other_forms(bad):
    with pytest.raises(ValueError, match="90m"):
        parse_duration(bad)


def test_descriptor_is_immutable_and_node_is_not_modified():
    raw = node()
    before = copy.deepcopy(raw)
    d = descriptor_from_node("sales", raw)
    assert raw == before
    with pytest.raises(ValueError):
        d.name = "other"  # frozen: the derived address cannot drift


# --- what the contract says of the Iceberg table ---------------------------------------------


def test_the_table_spec_carries_docs_not_null_columns_the_key_and_the_sort_order():
    raw = node(sort_by=["order_key"])
    raw["columns"]["order_key"]["constraints"] = [{"type": "not_null", "name": None}]
    raw["columns"]["email"]["constraints"] = [{"type": "not_null"}]
    raw["constraints"] = [{"type": "primary_key", "columns": ["order_key"]}]  # model level
    spec = descriptor_from_node("sales", raw).table_spec()
    assert spec.docs == {"order_key": "Order id.", "email": "Customer email."}
    assert spec.required == ("order_key", "email")
    assert spec.identifier == ("order_key",)
    assert spec.sort_by == ("order_key",)


SORTED_YAML = """\
models:
  - name: orders
    config:
      meta:
        mesh:
          sort_by: [order_kye]
"""


def test_a_sort_column_that_is_not_a_column_is_named_with_file_line_and_fix():
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node("sales", node(sort_by=["order_kye"]), yaml_text=SORTED_YAML)
    assert "line 6: mesh.sort_by[0]:" in err.value.what
    assert "'order_kye' is not a column of the product; did you mean 'order_key'?" in (
        err.value.what
    )
    assert YAML_FILE in err.value.what
    assert err.value.line == 6 and "sort by columns of the product" in err.value.fix


def test_a_primary_key_on_a_double_column_is_refused():
    raw = node()
    raw["columns"]["amount"]["constraints"] = [{"type": "primary_key"}]
    with pytest.raises(DescriptorError, match="identifier fields cannot be float or double"):
        descriptor_from_node("sales", raw)
