"""The clients analysts use, against the query service: psql, psycopg 3 (bound parameters, text
and binary results, prepared statements), SQLAlchemy 2 with pandas, and the ADBC PostgreSQL
driver (Arrow). Each reads exactly what the embedded engine reads for the same principal and
query, on the session's sample mesh: a decimal, a date and a NULL included, compared value by
value (a decimal a client reads as a float within a float's precision, dates as ISO dates).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import os
import subprocess
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from mesh_platform.query.engine import QuerySession

PSQL = "/usr/bin/psql"
ANALYST = "user:alice"  # a campaign analyst: reads marketing's products, no sales product
SEGMENTS = (
    "SELECT customer_key, lifetime_revenue, first_order_date, last_order_date, value_tier, "
    "order_count FROM marketing.customer_segments WHERE customer_key <= {limit} "
    "AND value_tier <> {tier} ORDER BY customer_key"
)
ALL_SEGMENTS = SEGMENTS.format(limit=60, tier="''")
LATE = (
    "SELECT order_year, region_name, ship_mode, net_revenue, late_share, avg_days_late "
    "FROM marketing.late_delivery_impact ORDER BY order_year, region_name, ship_mode"
)
NULL_TEXT = "<NULL>"
SEGMENTS_ADDRESS = ("marketing", "customer_segments")


@pytest.fixture(scope="module")
def engine_rows(sample_build):
    """What the embedded engine reads, as the analyst, for each query of this module."""

    def read(sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with QuerySession(ANALYST, mesh=sample_build) as session:
            return session.rows(sql)

    return read


@pytest.fixture(scope="module")
def segments(engine_rows) -> tuple[list[str], list[tuple[Any, ...]]]:
    names, rows = engine_rows(ALL_SEGMENTS)
    values = [v for row in rows for v in row]
    # the comparison is only worth something if the rows hold each kind of value
    assert any(isinstance(v, decimal.Decimal) for v in values), "no decimal in the rows"
    assert any(isinstance(v, dt.date) for v in values), "no date in the rows"
    assert any(v is None for v in values), "no NULL in the rows"
    return names, rows


def _same(served: Any, expected: Any) -> bool:
    """One value as a client read it against the engine's (Decimal vs float within a float's
    precision; dates against dates or ISO text)."""
    if expected is None or served is None:
        return served is None and expected is None
    if isinstance(served, float) or isinstance(expected, float):
        return math.isclose(float(served), float(expected), rel_tol=1e-12, abs_tol=1e-9)
    if isinstance(expected, dt.date) and isinstance(served, str):
        return served == expected.isoformat()
    return type(served) is type(expected) and served == expected


def assert_same_rows(served: list, expected: list[tuple[Any, ...]]) -> None:
    assert len(served) == len(expected), f"{len(served)} rows served, {len(expected)} expected"
    for number, (got, want) in enumerate(zip(served, expected, strict=True)):
        assert len(got) == len(want), f"row {number}: {got!r} vs {want!r}"
        for column, (a, b) in enumerate(zip(got, want, strict=True)):
            assert _same(a, b), f"row {number} column {column}: served {a!r}, engine {b!r}"


# -- psql -----------------------------------------------------------------------------------


def psql(service, user: str, secret: str, *args: str) -> subprocess.CompletedProcess:
    """psql as a user runs it (the secret in PGPASSWORD, never on the command line)."""
    env = {**os.environ, "PGPASSWORD": secret, "PGCONNECT_TIMEOUT": "10"}
    conninfo = f"host=127.0.0.1 port={service.port} user={user} dbname=mesh"
    command = [PSQL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "\t", "-P"]
    command += [f"null={NULL_TEXT}", conninfo, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def _text(value: Any) -> Any:
    """A value as psql prints it (floats compared as numbers, NULL as None)."""
    if value is None or isinstance(value, float):
        return value
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def test_psql_reads_what_the_engine_reads(service, token, segments, engine_rows):
    for sql, (names, expected) in ((ALL_SEGMENTS, segments), (LATE, engine_rows(LATE))):
        result = psql(service, ANALYST, token(ANALYST), "-c", sql)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.rstrip("\n").split("\n")
        served = [[None if v == NULL_TEXT else v for v in line.split("\t")] for line in lines]
        assert len(served[0]) == len(names)
        assert_same_rows(served, [tuple(_text(v) for v in row) for row in expected])


# -- psycopg 3 -------------------------------------------------------------------------------


def test_psycopg_binds_parameters_and_reads_what_the_engine_reads(
    service, token, segments, engine_rows
):
    """An int and a text parameter bound (``%s``: $1, $2 on the wire); the same rows in text
    and in binary results, and through a prepared statement."""
    names, expected = engine_rows(SEGMENTS.format(limit=60, tier="'high'"))
    assert expected and len(expected) < len(segments[1]), "the text parameter filters nothing"
    assert any(v is None for row in expected for v in row)
    sql = SEGMENTS.format(limit="%s", tier="%s")
    with psycopg.connect(service.dsn(ANALYST, token(ANALYST)), autocommit=True) as conn:
        cursor = conn.execute(sql, (60, "high"))
        assert [c.name for c in cursor.description] == names
        oids = [c.type_code for c in cursor.description]
        assert oids == [20, 1700, 1082, 1082, 25, 20]  # int8 numeric date date text int8
        assert_same_rows(cursor.fetchall(), expected)
        with conn.cursor(binary=True) as binary:
            binary.execute(sql, (60, "high"))
            assert_same_rows(binary.fetchall(), expected)
        for _ in range(3):  # a named prepared statement from the first execution on
            prepared = conn.execute(sql, (60, "high"), prepare=True)
            assert_same_rows(prepared.fetchall(), expected)
        assert conn.execute(sql, (0, "high")).fetchall() == []  # the int is bound, not ignored
        late = conn.execute(LATE).fetchall()
    assert_same_rows(late, engine_rows(LATE)[1])
    assert any(isinstance(v, float) for row in late for v in row)


# -- SQLAlchemy 2 and pandas ---------------------------------------------------------------


def test_sqlalchemy_and_pandas_read_what_the_engine_reads(
    service, token, segments, engine_rows, sample_build
):
    names, expected = segments
    engine = sa.create_engine(service.url(ANALYST, token(ANALYST), scheme="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(
                sa.text(SEGMENTS.format(limit=":most", tier=":tier")),
                conn,
                params={"most": 60, "tier": ""},
            )
            inspector = sa.inspect(conn)
            tables = inspector.get_table_names(schema="marketing")
            columns = inspector.get_columns("customer_segments", schema="marketing")
            assert not inspector.has_table("customers", schema="sales")
    finally:
        engine.dispose()
    assert list(frame.columns) == names
    assert pd.api.types.is_integer_dtype(frame["customer_key"])
    assert pd.api.types.is_float_dtype(frame["lifetime_revenue"])  # read_sql: decimals as float
    served = [
        tuple(None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row)
        for row in frame.itertuples(index=False, name=None)
    ]
    assert_same_rows(served, expected)
    # reflection: the analyst's products of the domain and each column with its type
    with QuerySession(ANALYST, mesh=sample_build) as session:
        readable = session.readable()
    assert sorted(tables) == sorted(a.table for a in readable if a.domain == "marketing")
    shape = next(c for a, c in readable.items() if (a.domain, a.table) == SEGMENTS_ADDRESS)
    assert [c["name"] for c in columns] == [name for name, _ in shape]
    kinds = {c["name"]: c["type"] for c in columns}
    assert isinstance(kinds["customer_key"], sa.BIGINT)
    assert isinstance(kinds["lifetime_revenue"], sa.NUMERIC)
    assert (kinds["lifetime_revenue"].precision, kinds["lifetime_revenue"].scale) == (18, 2)
    assert isinstance(kinds["first_order_date"], sa.DATE)
    assert isinstance(kinds["value_tier"], sa.TEXT)


# -- ADBC (Arrow) ----------------------------------------------------------------------------


def test_adbc_reads_arrow_with_sensible_types(service, token, sample_build):
    with QuerySession(ANALYST, mesh=sample_build) as session:
        expected = session.sql(ALL_SEGMENTS)
    with adbc.connect(service.url(ANALYST, token(ANALYST))) as conn, conn.cursor() as cursor:
        cursor.execute(ALL_SEGMENTS)
        table = cursor.fetch_arrow_table()
    assert table.column_names == expected.column_names
    schema = table.schema
    assert schema.field("customer_key").type == pa.int64()
    assert schema.field("order_count").type == pa.int64()
    assert schema.field("first_order_date").type == pa.date32()
    assert pa.types.is_string(schema.field("value_tier").type)
    # PostgreSQL's numeric is an exact decimal the driver hands over as text, typed by metadata
    revenue = schema.field("lifetime_revenue")
    decimal_type = expected.schema.field("lifetime_revenue").type
    assert pa.types.is_decimal(decimal_type)
    assert revenue.metadata[b"POSTGRESQL:type"] == b"numeric"
    typmod = ((decimal_type.precision << 16) | decimal_type.scale) + 4
    assert int(revenue.metadata[b"POSTGRESQL:typmod"]) == typmod
    assert pa.types.is_string(getattr(revenue.type, "storage_type", revenue.type))
    served = table.to_pylist()
    for row in served:
        if row["lifetime_revenue"] is not None:
            row["lifetime_revenue"] = decimal.Decimal(row["lifetime_revenue"])
    assert served == expected.to_pylist()
    assert any(r["first_order_date"] is None for r in served)
