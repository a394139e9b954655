import pytest

from mesh_platform.addressing import (
    ProductAddress,
    name_problem,
    quote_ident,
    suggest_name,
    validate_name,
)
from mesh_platform.assets.keys import internal_asset_key, product_key, raw_asset_key
from mesh_platform.errors import InvalidNameError


@pytest.mark.parametrize("name", ["sales", "order_lines", "q3_revenue", "a" * 63])
def test_valid_names(name):
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "non-empty"),
        ("Sales", "snake_case"),
        ("order-lines", "snake_case"),
        ("1st", "snake_case"),
        ("../../x", "snake_case"),
        ("a__b", "__"),
        ("trailing_", "__"),
        ("a" * 64, "limit"),
        ("raw", "reserved"),
        ("internal", "reserved"),
        ("main", "reserved"),
    ],
)
def test_invalid_names(name, why):
    assert why in name_problem(name)


def test_validate_name_error_names_value_place_and_fix():
    with pytest.raises(InvalidNameError) as err:
        validate_name("product", "Order Lines", where="dbt_projects/sales/models/x.yml")
    message = str(err.value)
    assert "'Order Lines'" in message
    assert "dbt_projects/sales/models/x.yml" in message
    assert "'order_lines'" in message  # the suggested fix


@pytest.mark.parametrize(
    ("raw", "suggested"),
    [("Order Lines", "order_lines"), ("9lives", "x_9lives"), ("raw", "raw_data")],
)
def test_suggestions_follow_the_rule(raw, suggested):
    assert suggest_name(raw) == suggested
    assert name_problem(suggest_name(raw)) is None


def test_product_address_maps_to_one_key_and_one_table():
    address = ProductAddress.parse("sales.orders")
    assert str(address) == "sales.orders"
    assert product_key(address).path == ["sales", "orders"]
    assert address.iceberg_identifier == ("sales", "orders")
    assert address.table_name("mesh") == "mesh.sales.orders"


@pytest.mark.parametrize("bad", ["sales", "sales.orders.v1", "Sales.orders", "sales.raw"])
def test_bad_addresses_rejected(bad):
    with pytest.raises(InvalidNameError):
        ProductAddress.parse(bad)


def test_raw_and_internal_keys_cannot_collide_with_products():
    assert raw_asset_key("sales", "orders").path == ["sales", "raw", "orders"]
    assert internal_asset_key("sales", "stg_orders").path == ["sales", "internal", "stg_orders"]
    with pytest.raises(InvalidNameError):
        ProductAddress("sales", "raw")


def test_quote_ident_refuses_injection():
    assert quote_ident("main") == '"main"'
    for bad in ['x"; drop table y; --', "a b", "../x"]:
        with pytest.raises(InvalidNameError):
            quote_ident(bad)
