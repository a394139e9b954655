"""dbt's tests as the platform runs them (products.dbt_tests): from the SQL dbt compiled for the
sample's sales project, fused into one scan per relation where the test allows, each with dbt's
own verdict and failing-rows count; on staged files instead of the model when asked; a test
that cannot run blocks."""

from __future__ import annotations

import dataclasses

import pytest

from mesh_platform.dbt.project import load_manifest
from mesh_platform.domain import load_domain
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.dbt_tests import (
    FAILED_ROWS,
    dbt_tests,
    downstream,
    run_on_staged,
    run_tests,
    subject,
)

ORDERS = "model.sales.orders"


@pytest.fixture(scope="module")
def manifest(prepared_mesh):
    return load_manifest(load_domain(prepared_mesh, "sales"))


@pytest.fixture
def sales_db(tmp_path):
    """A DuckDB named as the sales domain's (dbt renders "sales"."main"."orders") with small
    orders, customers and order_lines tables that pass every test."""
    conn = connect(str(tmp_path / "sales.duckdb"))
    conn.execute(
        "CREATE TABLE customers AS SELECT i::BIGINT AS customer_key, 'x@y.z' AS email, "
        "1::BIGINT AS nation_key, 'BUILDING' AS market_segment FROM range(1, 11) t(i)"
    )
    conn.execute(
        "CREATE TABLE orders AS SELECT i::BIGINT AS order_key, (i % 10 + 1)::BIGINT AS "
        "customer_key, ['F', 'O', 'P'][i % 3 + 1] AS order_status, DATE '2024-01-01' + i::INT "
        "AS order_date FROM range(1, 101) t(i)"
    )
    conn.execute(
        "CREATE TABLE order_lines AS SELECT o.order_key, l::BIGINT AS line_number "
        "FROM orders o, range(1, 4) t(l)"
    )
    yield conn
    conn.close()


def _of(tests, model):
    return [t for t in tests if subject(t) == model]


def test_generic_tests_are_fused_and_the_rest_run_alone(manifest):
    tests = {t.name: t for t in dbt_tests(manifest)}
    fused = {n for n, t in tests.items() if t.fused}
    assert "unique_orders_order_key" in fused and "not_null_orders_order_key" in fused
    assert "accepted_values_orders_order_status__F__O__P" in fused
    assert "mesh_unique_combination_order_lines_order_key__line_number" in fused
    relationships = [n for n in tests if n.startswith("relationships_")]
    assert relationships and not fused & set(relationships)
    assert all(t.sql and t.severity == "error" for t in tests.values())
    assert (
        subject(tests["relationships_orders_customer_key__customer_key__ref_customers_"]) == ORDERS
    )
    assert "model.sales.order_lines" not in downstream(manifest, ["model.sales.customers"])


def test_passing_tests_pass_in_one_scan_per_relation(manifest, sales_db):
    tests = _of(dbt_tests(manifest), ORDERS)
    outcomes = run_tests(sales_db, tests)
    assert set(outcomes) == {t.name for t in tests}
    assert all(o.passed and o.blocking for o in outcomes.values()), outcomes
    fused = [n for n, o in outcomes.items() if o.metadata.get("mesh/fused_scan")]
    assert len(fused) == len([t for t in tests if t.fused]) >= 4


@pytest.mark.parametrize(
    ("breakage", "failing", "rows"),
    [
        ("UPDATE orders SET order_key = NULL WHERE order_key <= 2", "not_null_orders_order_key", 2),
        ("UPDATE orders SET order_key = 1 WHERE order_key <= 3", "unique_orders_order_key", 1),
        ("UPDATE orders SET order_status = 'X' WHERE order_key <= 5",
         "accepted_values_orders_order_status__F__O__P", 1),  # dbt counts failing values
        ("UPDATE orders SET customer_key = 99 WHERE order_key <= 4",
         "relationships_orders_customer_key__customer_key__ref_customers_", 4),
    ],
)  # fmt: skip
def test_a_failing_test_reports_dbts_count(manifest, sales_db, breakage, failing, rows):
    sales_db.execute(breakage)
    outcomes = run_tests(sales_db, _of(dbt_tests(manifest), ORDERS))
    failed = {n: o for n, o in outcomes.items() if not o.passed}
    assert set(failed) == {failing}, failed
    outcome = failed[failing]
    assert outcome.blocks and outcome.metadata[FAILED_ROWS] == rows
    assert f"{rows} failing row(s)" in outcome.description
    assert f"dbt test --select {failing}" in outcome.fix


def test_unique_combination_treats_nulls_as_dbt_groups_them(manifest, sales_db):
    sales_db.execute("INSERT INTO order_lines VALUES (NULL, NULL), (NULL, NULL)")
    tests = _of(dbt_tests(manifest), "model.sales.order_lines")
    outcomes = run_tests(sales_db, [t for t in tests if "unique_combination" in t.name])
    (outcome,) = outcomes.values()
    assert not outcome.passed and outcome.metadata[FAILED_ROWS] == 1


def test_staged_files_are_tested_not_the_model(manifest, sales_db, tmp_path):
    staged = tmp_path / "staged.parquet"
    sales_db.execute(
        f"COPY (SELECT * REPLACE (CASE WHEN order_key = 7 THEN NULL ELSE order_date END "
        f"AS order_date) FROM orders) TO '{staged}' (FORMAT parquet)"
    )
    tests = _of(dbt_tests(manifest), ORDERS)
    relation = manifest["nodes"][ORDERS]["relation_name"]
    outcomes = run_on_staged(
        sales_db, tests, relation=relation, files=[str(staged)], masked=[], snapshot_id=42
    )
    failed = {n for n, o in outcomes.items() if not o.passed}
    assert failed == {"not_null_orders_order_date"}
    assert "staged snapshot 42" in outcomes["not_null_orders_order_date"].description
    # a masked column is tested on the model in clear: the staged file's NULL is not read
    clear = run_on_staged(
        sales_db, tests, relation=relation, files=[str(staged)], masked=["order_date"],
        snapshot_id=42,
    )  # fmt: skip
    assert clear["not_null_orders_order_date"].passed
    assert "masked column" in clear["not_null_orders_order_date"].description


def test_warn_warns_and_a_test_that_cannot_run_blocks(manifest, sales_db):
    tests = {t.name: t for t in _of(dbt_tests(manifest), ORDERS)}
    sales_db.execute("UPDATE orders SET order_date = NULL WHERE order_key = 1")
    warn = dataclasses.replace(tests["not_null_orders_order_date"], severity="warn")
    uncompiled = dataclasses.replace(tests["unique_orders_order_key"], sql=None)
    broken = dataclasses.replace(
        tests["not_null_orders_customer_key"], sql="select nope from missing_table", fused=None
    )
    outcomes = run_tests(sales_db, [warn, uncompiled, broken])
    assert not outcomes[warn.name].passed and not outcomes[warn.name].blocks
    assert outcomes[warn.name].metadata[FAILED_ROWS] == 1
    for name in (uncompiled.name, broken.name):
        assert outcomes[name].blocks and "could not run" in outcomes[name].description
    assert "did not compile" in outcomes[uncompiled.name].description


class _Keys:
    """dagster-dbt's key of a node, as the sales code location's translator names it."""

    def get_asset_key(self, node):
        import dagster as dg

        return dg.AssetKey(["sales", node["name"]])


def test_a_step_runs_each_test_once_where_its_model_is(manifest, sales_db):
    from mesh_platform.assets.dbt_checks import plan_tests, run_before

    everything = {k for k in plan_tests(manifest, _Keys(), [], [], []).keys.values() if k}
    plan = plan_tests(manifest, _Keys(), everything, built=[ORDERS], failed_models=[])
    assert {t.name for t in plan.of_product[ORDERS]} == {
        t.name for t in dbt_tests(manifest) if subject(t) == ORDERS
    }
    before = {t.name for t in plan.before}
    assert "unique_customers_customer_key" in before and not before & {
        t.name for t in plan.of_product[ORDERS]
    }
    # a model that did not build: dbt build skipped the tests reading it, so does the step
    skipped = plan_tests(manifest, _Keys(), everything, [ORDERS], ["model.sales.customers"])
    names = {t.name for t in skipped.of_product[ORDERS] + skipped.before}
    assert "relationships_orders_customer_key__customer_key__ref_customers_" not in names
    assert "unique_customers_customer_key" not in names
    # a failed test run before publication blocks the products built from its model
    sales_db.execute("UPDATE customers SET customer_key = 1 WHERE customer_key = 2")
    outcomes, blocking = run_before(sales_db, manifest, plan)
    assert outcomes["unique_customers_customer_key"].blocks
    assert blocking["model.sales.customers"] == ["dbt test unique_customers_customer_key"]
    assert ORDERS not in blocking  # orders is not built from customers
