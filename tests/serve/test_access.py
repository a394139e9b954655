"""Access through the query service is the embedded engine's, query by query: grants, masks and
row filters; what a principal's tools see when they browse (information_schema, pg_catalog,
psql's ``\\dt`` and ``\\d``); and the SQL guard's refusals, each an error the session survives.

Every expectation is the embedded engine's answer for the same principal and query
(``QuerySession(p).rows``, ``.readable()``), plus a few fixed facts of the sample mesh so that
a comparison of two empty answers cannot pass.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from mesh_platform.access.principals import AccessDeniedError
from mesh_platform.query.engine import QuerySession
from mesh_platform.testing import edited

PSQL = "/usr/bin/psql"
PRINCIPALS = ["sales", "marketing", "user:carol", "user:alice"]
QUERIES = {
    # personal data: email hashed and full_name redacted at publication, phone masked at read
    "pii": "SELECT * FROM sales.customers ORDER BY customer_key",
    # carol's grant keeps two market segments; marketing's every row but three columns
    "rows": "SELECT market_segment, count(*) AS customers FROM sales.customers "
    "GROUP BY market_segment ORDER BY market_segment",
    "join": "SELECT n.region_name, count(*) AS orders, sum(o.total_price) AS revenue "
    "FROM sales.orders AS o JOIN sales.customers AS c ON c.customer_key = o.customer_key "
    "JOIN logistics.nations AS n ON n.nation_key = c.nation_key "
    "GROUP BY n.region_name ORDER BY n.region_name",
    "segments": "SELECT * FROM marketing.customer_segments WHERE customer_key <= 200 "
    "ORDER BY customer_key",
}
# who may not read what the query names (the sample's grants)
DENIED = {
    ("user:carol", "join"),  # no grant on sales.orders
    ("user:carol", "segments"),
    ("user:alice", "pii"),  # campaigns read marketing's products, not sales'
    ("user:alice", "rows"),
    ("user:alice", "join"),
}
CARE_SEGMENTS = {"HOUSEHOLD", "BUILDING"}
TRUNCATED = re.compile(r"^.{0,2}\*\*\*$")
CLEARANCE = "    clearances: [pii:phone]\n"
# how psql names the DuckDB types the products' columns have (format_type)
PG_NAMES = {"BIGINT": "bigint", "INTEGER": "integer", "VARCHAR": "text", "DATE": "date",
            "DOUBLE": "double precision", "BOOLEAN": "boolean",
            "TIMESTAMP WITH TIME ZONE": "timestamp with time zone"}  # fmt: skip


@pytest.fixture(scope="module")
def connect(service, token):
    """One autocommit psycopg connection per principal, opened on first use."""
    opened: dict[str, psycopg.Connection] = {}

    def get(principal: str) -> psycopg.Connection:
        if principal not in opened:
            dsn = service.dsn(principal, token(principal))
            opened[principal] = psycopg.connect(dsn, autocommit=True)
        return opened[principal]

    yield get
    for conn in opened.values():
        conn.close()


@pytest.fixture(scope="module")
def readable(sample_build):
    """What each principal may read, as the engine shapes it (products, columns, types)."""
    shapes = {}
    for principal in [*PRINCIPALS, "user:dana"]:
        with QuerySession(principal, mesh=sample_build) as session:
            shapes[principal] = session.readable()
    return shapes


def _key(address) -> tuple[str, str]:
    return (address.domain, address.table)


def _engine(sample_build, principal: str, sql: str):
    with QuerySession(principal, mesh=sample_build) as session:
        return session.rows(sql)


def psql(service, token, principal: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PGPASSWORD": token(principal), "PGCONNECT_TIMEOUT": "10"}
    conninfo = f"host=127.0.0.1 port={service.port} user={principal} dbname=mesh"
    command = [PSQL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"]
    return subprocess.run(
        [*command, conninfo, *args], env=env, capture_output=True, text=True, timeout=60
    )


# -- grants, masks and row filters: the engine's, query by query ---------------------------


@pytest.mark.parametrize("query", list(QUERIES))
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_the_service_reads_what_the_engine_reads(sample_build, connect, principal, query):
    sql = QUERIES[query]
    try:
        names, expected = _engine(sample_build, principal, sql)
    except AccessDeniedError as exc:
        assert (principal, query) in DENIED, f"the engine refuses {principal}: {exc.what}"
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            connect(principal).execute(sql)
        assert refused.value.sqlstate == "42501"
        assert refused.value.diag.message_primary == exc.what
        return
    assert (principal, query) not in DENIED, f"the engine lets {principal} run {query}"
    assert expected, "the engine reads no row: nothing is compared"
    cursor = connect(principal).execute(sql)
    assert [c.name for c in cursor.description] == names
    assert cursor.fetchall() == expected  # Decimal, date, str, int and NULL, exactly


def test_masks_row_filters_and_column_grants_hold_through_the_service(connect):
    """The comparisons above, pinned to what the sample's grants mean (so that two equally
    wrong answers cannot agree)."""
    carol = connect("user:carol").execute(QUERIES["pii"])
    names = [c.name for c in carol.description]
    assert names == ["customer_key", "full_name", "email", "phone", "market_segment"]
    rows = [dict(zip(names, row, strict=True)) for row in carol.fetchall()]
    assert {r["market_segment"] for r in rows} == CARE_SEGMENTS
    assert {r["full_name"] for r in rows} == {"[redacted]"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["email"]) for r in rows)
    assert not [r["phone"] for r in rows if TRUNCATED.match(r["phone"])]  # cleared: in clear
    (owner_count,) = connect("sales").execute("SELECT count(*) FROM sales.customers").fetchone()
    assert len(rows) < owner_count
    marketing = connect("marketing").execute("SELECT * FROM sales.customers LIMIT 1")
    assert [c.name for c in marketing.description] == [
        "customer_key",
        "nation_key",
        "market_segment",
    ]
    with pytest.raises(psycopg.Error) as hidden:
        connect("marketing").execute("SELECT email FROM sales.customers")
    assert "email" in str(hidden.value)


def test_a_revoked_clearance_masks_phones_on_the_next_query(sample_build, connect):
    """principals.yaml is read per query: without customer-care's clearance, carol reads
    phones truncated through the service exactly as through the engine; restored, in clear."""
    sql = "SELECT customer_key, phone FROM sales.customers ORDER BY customer_key"
    principals = sample_build.root / "principals.yaml"
    with edited(principals, CLEARANCE, ""):
        masked = connect("user:carol").execute(sql).fetchall()
        assert masked == _engine(sample_build, "user:carol", sql)[1]
    assert masked and all(TRUNCATED.match(phone) for _, phone in masked)
    clear = connect("user:carol").execute(sql).fetchall()
    assert [k for k, _ in clear] == [k for k, _ in masked]
    assert not [p for _, p in clear if TRUNCATED.match(p)]


def test_a_narrowed_grant_applies_to_the_next_query(sample_build, connect):
    """The service reads descriptors again when a file changes (a kernel watch, not a stat of
    every file per query): a grant narrowed in the dbt YAML binds carol's very next query,
    and its restoration the one after."""
    sql = "SELECT DISTINCT market_segment FROM sales.customers ORDER BY 1"
    products = sample_build.root / "dbt_projects" / "sales" / "models" / "products" / "products.yml"
    rows = "rows: \"market_segment IN ('HOUSEHOLD', 'BUILDING')\""
    before = connect("user:carol").execute(sql).fetchall()
    assert before == [("BUILDING",), ("HOUSEHOLD",)]
    with edited(products, rows, "rows: \"market_segment = 'HOUSEHOLD'\""):
        assert connect("user:carol").execute(sql).fetchall() == [("HOUSEHOLD",)]
    assert connect("user:carol").execute(sql).fetchall() == before


# -- introspection: only what the principal may read ----------------------------------------


@pytest.mark.parametrize("principal", [*PRINCIPALS, "user:dana"])
def test_information_schema_shows_only_what_the_principal_reads(connect, readable, principal):
    shapes = readable[principal]
    expected = [
        (a.domain, a.table, name, kind)
        for a in sorted(shapes, key=_key)
        for name, kind in shapes[a]
    ]
    served = connect(principal).execute(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
        "ORDER BY table_schema, table_name, ordinal_position"
    )
    assert served.fetchall() == expected
    tables = connect(principal).execute(
        "SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2"
    )
    assert tables.fetchall() == [(a.domain, a.table) for a in sorted(shapes, key=_key)]
    if principal in ("user:alice", "user:dana"):
        assert not [a for a in shapes if a.domain == "sales"]  # absent, not merely empty


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_psql_lists_and_describes_only_what_the_principal_reads(
    service, token, readable, principal
):
    shapes = readable[principal]
    listed = psql(service, token, principal, "-c", r"\dt *.*")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("|") for line in listed.stdout.splitlines() if line]
    assert sorted((r[0], r[1]) for r in rows) == sorted((a.domain, a.table) for a in shapes)
    assert {r[2] for r in rows} == {"table"}

    described = psql(service, token, principal, "-c", r"\d sales.customers")
    customers = next((c for a, c in shapes.items() if str(a) == "sales.customers"), None)
    if customers is None:  # not readable: psql finds no such relation
        assert described.returncode != 0
        assert 'Did not find any relation named "sales.customers"' in described.stderr
        return
    assert described.returncode == 0, described.stderr
    columns = [line.split("|")[:2] for line in described.stdout.splitlines() if line]
    assert columns == [[name, _pg_name(kind)] for name, kind in customers]


def _pg_name(duckdb_type: str) -> str:
    if duckdb_type.startswith("DECIMAL("):
        return "numeric" + duckdb_type[len("DECIMAL") :].replace(" ", "")
    return PG_NAMES[duckdb_type]


def test_the_catalog_types_columns_as_results_are_typed(connect):
    """pg_attribute's type of each column (joined to pg_type, as drivers and BI tools map
    them) is the type the column's values are sent as."""
    conn = connect("user:alice")
    for table in ("customer_segments", "late_delivery_impact"):
        result = conn.execute(f"SELECT * FROM marketing.{table} LIMIT 0")
        sent = [(c.name, c.type_code) for c in result.description]
        typed = conn.execute(
            "SELECT a.attname, t.oid FROM pg_catalog.pg_attribute a "
            "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
            "WHERE n.nspname = 'marketing' AND c.relname = %s AND a.attnum > 0 "
            "ORDER BY a.attnum",
            (table,),
        )
        assert typed.fetchall() == sent
    assert (701 in {oid for _, oid in sent}) and (1700 in {oid for _, oid in sent})


# -- the SQL guard through the service ------------------------------------------------------

REFUSED = [
    ("COPY sales.orders TO '{tmp}/orders.csv'", {"42601", "0A000"}),
    ("COPY (SELECT * FROM sales.orders) TO '{tmp}/orders.csv'", {"42601", "0A000"}),
    ("SELECT * FROM read_parquet('/etc/passwd')", {"42601"}),
    ("SELECT * FROM read_csv('/etc/passwd')", {"42601"}),
    ("ATTACH '{tmp}/x.db' AS x", {"42601"}),
    ("ATTACH 'x.db'", {"42601"}),
    ("SET enable_external_access = true", {"42704"}),
    ("SELECT * FROM pg_settings", {"42601"}),
    ("SELECT * FROM sales.orders o, read_csv('/etc/passwd') p", {"42601"}),
    ("CREATE TABLE sales.copied AS SELECT * FROM sales.orders", {"42601"}),
]


@pytest.mark.parametrize(("sql", "codes"), REFUSED, ids=[s for s, _ in REFUSED])
def test_the_guard_refuses_and_the_session_goes_on(sample_build, connect, tmp_path, sql, codes):
    conn = connect("sales")
    (orders,) = conn.execute("SELECT count(*) FROM sales.orders").fetchone()
    with pytest.raises(psycopg.Error) as refused:
        conn.execute(sql.format(tmp=tmp_path))
    assert refused.value.sqlstate in codes, (refused.value.sqlstate, str(refused.value))
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert not (sample_build.root / "x.db").exists()
    assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (orders,)
    # what a refused SET asked for did not happen: files stay out of reach
    with pytest.raises(psycopg.Error) as still:
        conn.execute("SELECT * FROM read_csv('/etc/passwd')")
    assert still.value.sqlstate == "42601"


def test_a_failing_catalog_query_is_the_clients_error_not_the_services(connect):
    """A catalog query that DuckDB rejects (a column that does not exist) is the client's SQL
    failing (42000, with DuckDB's reason), not an internal error; the session goes on."""
    conn = connect("user:carol")
    with pytest.raises(psycopg.Error) as failed:
        conn.execute("SELECT no_such_column FROM information_schema.tables")
    assert failed.value.sqlstate == "42000", (failed.value.sqlstate, str(failed.value))
    assert "no_such_column" in str(failed.value)
    assert conn.execute("SELECT count(*) > 0 FROM information_schema.tables").fetchone() == (True,)


def test_a_refused_statement_after_a_good_one_is_refused_through_psql(service, token):
    """psql sends both statements in one simple query: the first runs, the second is refused
    (42601), psql exits with an error; the next session reads as before."""
    result = psql(service, token, "sales", "-c", "SELECT 1; SELECT * FROM read_csv('/etc/passwd')")
    assert result.returncode != 0
    assert "42601" in result.stderr and "read_csv" in result.stderr
    assert "root:" not in result.stdout + result.stderr
    again = psql(service, token, "sales", "-c", "SELECT count(*) > 0 FROM sales.orders")
    assert (again.returncode, again.stdout.strip()) == (0, "t")


def test_the_service_wrote_nothing_into_the_mesh(sample_build):
    """No refused ATTACH or COPY left a file where the service runs (its working directory
    is the mesh root)."""
    assert not list(Path(sample_build.root).glob("*.db"))
    assert not list(Path(sample_build.root).glob("*.csv"))
