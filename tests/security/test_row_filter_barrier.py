"""Class 1: a grant's row filter is a barrier. The reader's expressions never see a hidden row,
whatever the optimiser does: no error, result or statistic depends on rows the filter drops.

The oracle: every attack runs twice, once through the mesh as mallory (row-filtered grants) and
once in plain DuckDB over a table holding exactly the rows mallory may see. Results must be the
same rows; no error may name a value only hidden rows hold; and a query of one predicate must
fail exactly when it fails over the visible rows (with several conjuncts DuckDB may choose
another evaluation order among the reader's own predicates, on visible rows: not a leak).
"""

from __future__ import annotations

import itertools
from typing import Any

import duckdb
import pytest

from mesh_platform.errors import MeshError
from mesh_platform.query.engine import QuerySession
from mesh_platform.query.sql import QueryRefusedError
from mesh_platform.testing import ATTACKER, CUSTOMERS_FILTER, ORDER_LINES_FILTER

pytestmark = pytest.mark.e2e

VISIBLE_COLUMNS = "customer_key, customer_name, nation_key, market_segment, account_balance"


@pytest.fixture(scope="module")
def oracle(attacked_mesh):
    """Plain DuckDB holding exactly what mallory may see (the owner's rows, filtered by hand),
    and the hidden rows' balances and keys (what an attack would try to learn)."""
    with QuerySession("sales", mesh=attacked_mesh) as owner:
        visible = owner.sql(
            f"SELECT {VISIBLE_COLUMNS} FROM sales.customers WHERE {CUSTOMERS_FILTER}"
        )
        hidden = owner.rows(
            f"SELECT account_balance, customer_key FROM sales.customers WHERE NOT ({CUSTOMERS_FILTER})"
        )[1]
        lines = owner.sql(f"SELECT * FROM sales.order_lines WHERE {ORDER_LINES_FILTER}")
        hidden_prices = owner.rows(
            f"SELECT DISTINCT extended_price FROM sales.order_lines WHERE NOT ({ORDER_LINES_FILTER})"
        )[1]
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA sales")
    conn.register("visible_customers", visible)
    conn.register("visible_lines", lines)
    conn.execute("CREATE TABLE sales.customers AS SELECT * FROM visible_customers")
    conn.execute("CREATE TABLE sales.order_lines AS SELECT * FROM visible_lines")
    assert hidden and visible.num_rows
    visible_prices = set(lines.column("extended_price").to_pylist())
    hidden_only = sorted({p for (p,) in hidden_prices} - visible_prices)
    shown = {str(v) for v in visible.column("account_balance").to_pylist()}
    shown |= {str(v) for v in lines.column("extended_price").to_pylist()}
    secrets = ({str(b) for b, _ in hidden} | {str(p) for (p,) in hidden_prices}) - shown
    oracle = _Oracle(conn, secrets, hidden, hidden_only)
    yield oracle
    conn.close()


class _Oracle(tuple):
    """(plain DuckDB, hidden-only values as text, hidden (balance, key) rows), and the hidden-only
    extended prices of sales.order_lines as ``.hidden_prices``."""

    def __new__(cls, conn, secrets, hidden, hidden_prices):
        self = super().__new__(cls, (conn, secrets, hidden))
        self.hidden_prices = hidden_prices
        return self


def _outcome(run) -> tuple[str, Any]:
    try:
        return "rows", sorted(map(repr, run()))
    except (MeshError, duckdb.Error) as exc:
        return "error", str(exc)


# Expressions that fail (or behave differently) on some values: if the mesh evaluated them on
# hidden rows, the error (or the count) would reveal those rows.
FAILING = [
    # fail only on hidden rows: any error at all is a leak
    "CAST(CASE WHEN market_segment = 'BUILDING' THEN 0 ELSE account_balance END AS UTINYINT) = 0",
    "CAST(CASE WHEN market_segment = 'BUILDING' THEN '1' ELSE market_segment END AS INTEGER) = 1",
    "CAST(CASE WHEN market_segment = 'BUILDING' THEN 1 ELSE customer_key END AS UTINYINT) > 0",
    "CAST(CASE WHEN market_segment <> 'BUILDING' THEN customer_name ELSE '1' END AS INTEGER) = 1",
    "CAST(nullif(market_segment, 'BUILDING') AS DATE) IS NULL",
    # fail on visible and hidden rows alike: the error must name a visible value
    "CAST(account_balance AS UTINYINT) = 0",
    "CAST(account_balance AS TINYINT) > 0",
    "CAST(CAST(account_balance AS BIGINT) AS USMALLINT) > 0",
    "CAST(customer_key AS UTINYINT) = 0",
    "CAST(customer_name AS INTEGER) = 1",
    "CAST(market_segment AS DATE) IS NULL",
    "CAST(right(customer_name, 3) AS UTINYINT) = 1",
    "strptime(market_segment, '%Y') IS NULL",
    "CAST(CASE WHEN market_segment <> 'BUILDING' THEN 'x' ELSE '1' END AS INTEGER) = 1",
    "CAST(CASE WHEN account_balance IS NULL THEN 'x' ELSE '1' END AS INTEGER) = 1",
    "CAST(nation_key * 10000000 AS SMALLINT) > 0",
    "CAST(account_balance * 1000000000000000 AS HUGEINT) > 0",
    "CAST(substring(market_segment, 1, 1) AS INTEGER) = 0",
    "CAST(account_balance AS UTINYINT) BETWEEN 0 AND 255",
]
RANGES = ["", "account_balance BETWEEN -1000 AND 0 AND ", "account_balance > 5000 AND ",
          "customer_key < 100 AND ", "nation_key = 3 AND "]  # fmt: skip


@pytest.mark.parametrize(("prefix", "expression"), list(itertools.product(RANGES, FAILING)))
def test_failing_expressions_see_only_granted_rows(attacked_mesh, oracle, prefix, expression):
    conn, secrets, _ = oracle
    sql = f"SELECT customer_key FROM sales.customers WHERE {prefix}{expression}"
    with QuerySession(ATTACKER, mesh=attacked_mesh) as session:
        mesh = _outcome(lambda: session.rows(sql)[1])
    plain = _outcome(lambda: conn.execute(sql).fetchall())
    _same(sql, mesh, plain, secrets, strict=not prefix)


def _same(sql: str, mesh: tuple, plain: tuple, secrets: set[str], *, strict: bool) -> None:
    if mesh[0] == "error":
        leaked = [s for s in secrets if s in mesh[1]]
        assert not leaked, f"{sql}: the error names hidden values {leaked[:3]}: {mesh[1]}"
    if strict or (mesh[0] == plain[0] == "rows"):
        assert mesh == plain or (mesh[0] == plain[0] == "error"), (
            f"{sql}: mesh {mesh}, plain DuckDB over the visible rows {plain}"
        )


@pytest.mark.parametrize(
    "sql",
    [
        # the predicate inside a join, a subquery, a CTE, a HAVING, an aggregate FILTER
        "SELECT count(*) FROM sales.customers a JOIN sales.customers b "
        "ON CAST(a.account_balance AS UTINYINT) = b.nation_key",
        "SELECT count(*) FROM (SELECT * FROM sales.customers) WHERE "
        "CAST(account_balance AS UTINYINT) = 0",
        "WITH c AS (SELECT * FROM sales.customers) SELECT count(*) FROM c "
        "WHERE CAST(account_balance AS UTINYINT) = 0",
        "SELECT nation_key FROM sales.customers GROUP BY 1 "
        "HAVING min(CAST(account_balance AS UTINYINT)) = 0",
        "SELECT count(*) FILTER (WHERE CAST(account_balance AS UTINYINT) = 0) FROM sales.customers",
        "SELECT count(*) FROM sales.customers WHERE customer_key IN "
        "(SELECT customer_key FROM sales.customers WHERE CAST(account_balance AS UTINYINT) = 0)",
        "SELECT count(*) FROM sales.order_lines WHERE CAST(extended_price AS USMALLINT) > 0",
        "SELECT count(*) FROM sales.order_lines WHERE CAST(order_date AS VARCHAR) > '1995' "
        "AND CAST(extended_price AS UTINYINT) > 0",
        "SELECT max(order_date), min(order_date), count(*) FROM sales.order_lines",
        "SELECT max(account_balance), min(account_balance) FROM sales.customers",
    ],
)
def test_shapes_of_query_see_only_granted_rows(attacked_mesh, oracle, sql):
    conn, secrets, _ = oracle
    with QuerySession(ATTACKER, mesh=attacked_mesh) as session:
        mesh = _outcome(lambda: session.rows(sql)[1])
    plain = _outcome(lambda: conn.execute(sql).fetchall())
    _same(sql, mesh, plain, secrets, strict=" AND " not in sql)


def test_single_column_oracles_on_hidden_values(attacked_mesh, oracle):
    """An expression over one column that fails on exactly one hidden value (DuckDB pushes such
    expressions into the Parquet scan, beside the grant's filter): an error would say the
    hidden value exists. 40 hidden balances and keys, each probed: never an error."""
    conn, _, hidden = oracle
    hidden = hidden[:: max(1, len(hidden) // 20)][:20]
    probes = [
        f"CAST(CASE WHEN account_balance = {balance} THEN 300 ELSE 0 END AS UTINYINT) = 0"
        for balance, _ in hidden
    ] + [
        f"CAST(CASE WHEN customer_key = {key} THEN 300 ELSE 0 END AS UTINYINT) = 0"
        for _, key in hidden
    ]
    with QuerySession(ATTACKER, mesh=attacked_mesh) as session:
        for probe in probes:
            sql = f"SELECT count(*) FROM sales.customers WHERE {probe}"
            mesh = _outcome(lambda q=sql: session.rows(q)[1])
            assert mesh == _outcome(lambda q=sql: conn.execute(q).fetchall()), (
                f"{sql}: {mesh} (the probe saw a hidden row)"
            )


def test_single_column_oracles_on_a_product_without_masks(attacked_mesh, oracle):
    """sales.order_lines: mallory's plan there has no salted mask (whose session variable
    already keeps DuckDB from pushing predicates through the projection), so the barrier alone
    stands between the probes and the hidden lines."""
    conn, _, _ = oracle
    hidden_only = oracle.hidden_prices
    assert hidden_only
    with QuerySession(ATTACKER, mesh=attacked_mesh) as session:
        for price in hidden_only[:: max(1, len(hidden_only) // 30)][:30]:
            probe = f"CAST(CASE WHEN extended_price = {price} THEN 300 ELSE 0 END AS UTINYINT) = 0"
            sql = f"SELECT count(*) FROM sales.order_lines WHERE {probe}"
            mesh = _outcome(lambda q=sql: session.rows(q)[1])
            assert mesh == _outcome(lambda q=sql: conn.execute(q).fetchall()), (
                f"{sql}: {mesh} (the probe saw a hidden row)"
            )


def test_range_probes_beyond_the_visible_extremes(attacked_mesh, oracle):
    """The shape DuckDB pushes into the Parquet scan (a cast of one column's arithmetic,
    compared to a constant): each probe succeeds on every visible value and fails on any
    value beyond the visible extremes, which only hidden rows hold. Through the mesh it never
    fails. (Whether a plain filter leaks here depends on DuckDB's adaptive filter order for
    this data; the barrier's power is shown on data where it does leak, below.)"""
    conn, _, _ = oracle
    probes = []
    for table, column in (("customers", "account_balance"), ("order_lines", "extended_price"),
                          ("customers", "customer_key"), ("order_lines", "order_key")):  # fmt: skip
        low, high = conn.execute(
            f"SELECT min({column}), max({column}) FROM sales.{table}"
        ).fetchone()
        probes += [
            (table, f"CAST({high} - {column} AS UBIGINT) >= 0"),
            (table, f"CAST({column} - {low} AS UBIGINT) >= 0"),
            (table, f"CAST({high} - {column} AS UBIGINT) >= 0 AND {column} > {low}"),
        ]
    probes.append(("customers", "CAST(8 - length(market_segment) AS UTINYINT) = 0"))
    probes.append(("order_lines", "CAST(1994 - year(order_date) AS UTINYINT) >= 0"))
    with QuerySession(ATTACKER, mesh=attacked_mesh) as session:
        for table, probe in probes:
            sql = f"SELECT count(*) FROM sales.{table} WHERE {probe}"
            mesh = _outcome(lambda q=sql: session.rows(q)[1])
            plain = _outcome(lambda q=sql: conn.execute(q).fetchall())
            assert plain[0] == "rows", f"{sql}: the probe fails on visible rows: {plain}"
            assert mesh == plain, f"{sql}: {mesh} (the probe saw a hidden row)"


def test_bisection_recovers_nothing_beyond_the_granted_rows(attacked_mesh, oracle):
    """The reported attack: bisect a hidden balance with BETWEEN and a failing cast. Every
    probe's outcome equals plain DuckDB's over the visible rows, so it measures those only."""
    conn, _, _ = oracle
    low, high = -1000, 10000
    with QuerySession(ATTACKER, mesh=attacked_mesh) as session:
        for _ in range(12):
            mid = (low + high) / 2
            sql = (
                "SELECT count(*) FROM sales.customers WHERE account_balance BETWEEN "
                f"{low} AND {mid} AND CAST(account_balance * 0 + 300 AS UTINYINT) = 0"
            )
            mesh, plain = (
                _outcome(lambda q=sql: session.rows(q)[1]),
                _outcome(lambda q=sql: conn.execute(q).fetchall()),
            )
            assert mesh[0] == plain[0], sql
            low, high = (low, mid) if mesh[0] == "error" else (mid, high)


def test_statistics_of_hidden_rows_are_out_of_reach(attacked_mesh):
    with QuerySession(ATTACKER, mesh=attacked_mesh) as session:
        for sql in (
            "SELECT stats(account_balance) FROM sales.customers",
            "SELECT * FROM parquet_metadata('x')",
        ):
            with pytest.raises(QueryRefusedError):
                session.rows(sql)


def test_the_barrier_holds_where_a_plain_filter_leaks(tmp_path):
    """On data where DuckDB provably evaluates the reader's predicate before a plain filter
    (a one-column cast pushed into the Parquet scan), the plan's barrier holds: the same
    attacks through ``ReadPlan.select_sql`` never error, and the plain filter does."""
    from mesh_platform.access.grants import ReadPlan
    from mesh_platform.addressing import ProductAddress

    path = tmp_path / "t.parquet"
    conn = duckdb.connect()
    conn.execute(
        "COPY (SELECT i, CASE WHEN i % 2 = 0 THEN 'A' ELSE 'B' END AS seg, "
        "CAST(CASE WHEN i % 2 = 0 THEN 5 ELSE 1000 + i END AS DECIMAL(15, 2)) AS bal "
        f"FROM range(100000) r(i)) TO '{path}' (FORMAT parquet)"
    )
    attacks = [
        "CAST(bal AS UTINYINT) = 5",
        "i > 3 AND CAST(bal AS UTINYINT) = 5",
        "CAST(bal AS UTINYINT) BETWEEN 0 AND 10",
        "CAST(bal AS USMALLINT) > 0 AND CAST(bal AS UTINYINT) = 5",
    ]
    for row_filter in ("seg = 'A'", "seg IN ('A', 'C')", "(seg = 'A') OR (seg = 'C')"):
        plan = ReadPlan(
            ProductAddress.parse("sales.t"), ATTACKER, ("i", "seg", "bal"), row_filter=row_filter
        )
        source = f"read_parquet('{path}')"
        conn.execute(f"CREATE OR REPLACE VIEW fenced AS {plan.select_sql(source)}")
        conn.execute(f"CREATE OR REPLACE VIEW plain AS SELECT * FROM {source} WHERE {row_filter}")
        leaks = 0
        for attack in attacks:
            assert conn.execute(f"SELECT count(*) FROM fenced WHERE {attack}").fetchone()[0] > 0
            try:
                conn.execute(f"SELECT count(*) FROM plain WHERE {attack}").fetchall()
            except duckdb.ConversionException:
                leaks += 1
        assert leaks, f"{row_filter}: a plain filter no longer leaks here; the test lost its power"
    conn.close()
