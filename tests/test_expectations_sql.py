"""The expectations DuckDB evaluates (products.expectations_sql) give Great Expectations' own
verdicts, figures and messages on the same staged rows; the others are still Great
Expectations'."""

from __future__ import annotations

import decimal
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mesh_platform.duckdb_ext import connect
from mesh_platform.products.descriptor_sla import Expectation
from mesh_platform.products.expectations import run_suite

ROWS = pa.table(
    {
        "a": pa.array([1, 1, None, 3, 4, 5, 6, 7], pa.int64()),
        "b": pa.array([0.05, 0.2, None, -1.0, 0.1, 0.0, 0.1, 0.09], pa.float64()),
        "c": pa.array(["F", "X", None, "O", "O", "F", "P", "F"]),
        "d": pa.array(
            [decimal.Decimal(x) for x in ("1.50", "0.00", "2.25", "9.99", "0.01", "3", "4", "5")],
            pa.decimal128(15, 2),
        ),
        "n": pa.array([None] * 8, pa.int64()),
    }
)

SUITES = {
    "passing": [
        {"expect_column_values_to_not_be_null": {"column": "d"}},
        {"expect_column_values_to_be_between": {"column": "d", "min_value": 0}},
        {"expect_column_values_to_be_in_set": {"column": "c", "value_set": ["F", "O", "P", "X"]}},
        {"expect_table_row_count_to_be_between": {"min_value": 1, "max_value": 8}},
        {"expect_column_values_to_be_unique": {"column": "d"}},
        {"expect_column_values_to_be_between": {"column": "n", "min_value": 0}},
    ],
    "failing": [
        {"expect_column_values_to_not_be_null": {"column": "a"}},
        {"expect_column_values_to_be_between": {"column": "b", "min_value": 0, "max_value": 0.1}},
        {"expect_column_values_to_be_between": {"column": "b", "min_value": 0, "mostly": 0.5}},
        {"expect_column_values_to_be_between":
            {"column": "b", "min_value": 0, "max_value": 0.1, "strict_max": True}},
        {"expect_column_values_to_be_in_set": {"column": "c", "value_set": ["F", "O"]}},
        {"expect_column_values_to_not_be_in_set": {"column": "c", "value_set": ["X"]}},
        {"expect_column_values_to_be_unique": {"column": "a"}},
        {"expect_column_values_to_be_null": {"column": "a", "mostly": 0.1}},
        {"expect_table_row_count_to_be_between": {"min_value": 10}},
        {"expect_column_values_to_be_between": {"column": "d", "max_value": 3.5}},
        {"expect_column_values_to_be_in_set": {"column": "a", "value_set": [1, 3]}},
    ],
}  # fmt: skip


def _descriptor(expectations):
    return types.SimpleNamespace(
        body=types.SimpleNamespace(
            sla=types.SimpleNamespace(
                expectations=[Expectation.model_validate(e) for e in expectations]
            )
        ),
        columns=[types.SimpleNamespace(name=n) for n in ROWS.column_names],
        pii_columns={},
        address="sales.probe",
        source_file="dbt_projects/sales/models/products/products.yml",
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    path = tmp_path_factory.mktemp("staged") / "part-0.parquet"
    pq.write_table(ROWS, path)
    conn = connect()
    source = f"read_parquet(['{path}'])"
    kinds = dict(
        conn.execute(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {source})"
        ).fetchall()
    )
    yield conn, source, kinds
    conn.close()


def _load(columns):
    return ROWS.select(list(columns)) if columns is not None else ROWS


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_duckdb_gives_great_expectations_results(staged, suite):
    descriptor = _descriptor(SUITES[suite])
    by_gx = run_suite(descriptor, _load)
    by_sql = run_suite(descriptor, _load, sql=staged)
    assert by_gx.metadata["engine"] == "great_expectations"
    assert by_sql.metadata["engine"] == "duckdb"
    assert (by_sql.passed, by_sql.description) == (by_gx.passed, by_gx.description)
    assert by_sql.passed == (suite == "passing")
    assert by_sql.metadata["rows_checked"] == by_gx.metadata["rows_checked"] == ROWS.num_rows
    gx_results, sql_results = by_gx.metadata["results"], by_sql.metadata["results"]
    assert list(sql_results) == list(gx_results)
    for label, expected in gx_results.items():
        got = sql_results[label]
        assert set(got) == set(expected), label
        for key, value in expected.items():
            assert got[key] == pytest.approx(value), (label, key)


def test_what_sql_does_not_state_is_left_to_great_expectations(staged):
    descriptor = _descriptor(
        [
            {"expect_column_values_to_not_be_null": {"column": "a"}},
            {"expect_column_values_to_match_regex": {"column": "c", "regex": "^[FOP]$"}},
            {"expect_column_values_to_be_in_set": {"column": "a", "value_set": ["1"]}},  # types
        ]
    )
    outcome = run_suite(descriptor, _load, sql=staged)
    assert outcome.metadata["engine"] == "duckdb+great_expectations"
    assert run_suite(descriptor, _load).description == outcome.description
    assert "expect_column_values_to_match_regex(c) (1 row(s) unexpected)" in outcome.description
