"""Class 2: the SQL surface is an allowlist, and nothing a reader can reach shows the salt,
a data file path or a grant's row filter."""

from __future__ import annotations

import duckdb
import pytest

from mesh_platform.query.engine import QuerySession
from mesh_platform.query.sql import QueryRefusedError, check_query
from mesh_platform.query.surface import ALLOWED_FUNCTIONS

INTROSPECTION = [
    "SELECT pg_get_viewdef('sales.customers')",
    "SELECT getvariable('mesh_pii_salt')",
    "SELECT current_query()",
    "SELECT current_setting('allowed_directories')",
    "SELECT json_serialize_plan('SELECT * FROM sales.customers')",
    "SELECT json_serialize_sql('SELECT 1')",
    "SELECT stats(customer_key) FROM sales.customers",
    "SELECT pg_sleep(1)",
    "SELECT sleep_ms(10)",
    "SELECT write_log('x')",
    "SELECT version()",
    "SELECT nextval('s')",
    "SELECT col_description(1, 1)",
    "SELECT has_table_privilege('sales.customers', 'select')",
    "SELECT * FROM duckdb_views()",
    "SELECT * FROM duckdb_functions()",
    "SELECT * FROM pragma_table_info('sales.customers')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT sql FROM duckdb_views",
    "SELECT * FROM information_schema.views",
    "SELECT * FROM pg_catalog.pg_views",
    "SELECT customer_key FROM sales.customers WHERE getenv('HOME') IS NOT NULL",
    "SELECT x.lower() FROM (SELECT current_schema() AS x)",
    "SELECT list_transform([1], x -> getvariable('mesh_pii_salt'))",
    "SELECT customer_key FROM sales.customers ORDER BY current_database()",
]


@pytest.mark.parametrize("sql", INTROSPECTION)
def test_functions_off_the_allowlist_are_refused_by_name(sql):
    with pytest.raises(QueryRefusedError) as info:
        check_query(sql)
    assert (
        "allowlist" in str(info.value)
        or "products only" in str(info.value)
        or ("not a product address" in str(info.value))
    ), str(info.value)


def test_the_allowlist_names_only_functions_that_exist_and_compute():
    names = {
        n
        for (n,) in duckdb.connect()
        .execute("SELECT DISTINCT function_name FROM duckdb_functions()")
        .fetchall()
    }
    dangerous = {n for n in names if n.startswith(("pg_", "current_", "duckdb_", "read_", "has_"))}
    dangerous |= {"getvariable", "getenv", "stats", "sleep_ms", "write_log", "version", "query",
                  "query_table", "json_serialize_plan", "nextval", "currval", "current_query",
                  "parse_duckdb_log_message", "error", "setseed"}  # fmt: skip
    assert not (ALLOWED_FUNCTIONS & dangerous) - {"current_date", "current_timestamp"}


@pytest.mark.e2e
def test_no_view_or_statement_carries_the_salt_a_path_or_a_filter(attacked_mesh):
    """Read the session's DuckDB catalog as the platform could: every view definition is free of
    the salt, the warehouse paths and the row filter's literal values."""
    salt = attacked_mesh.pii_salt()
    with QuerySession("team:customer-care", mesh=attacked_mesh) as session:
        rows = session.rows("SELECT email, phone FROM sales.customers LIMIT 5")[1]
        assert rows and all(len(email) == 64 for email, _ in rows)  # hashed with the salt
        views = session._conn.execute("SELECT sql FROM duckdb_views() WHERE NOT internal")
        definitions = " ".join(sql for (sql,) in views.fetchall())
    assert "customers" in definitions or "read_parquet" in definitions
    assert salt not in definitions
    assert str(attacked_mesh.state_dir) not in definitions
    assert ".parquet" not in definitions


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM (SUMMARIZE 'state/warehouse/sales/customers/data/*.parquet') s, "
        "(SELECT count(*) FROM sales.customers) g",
        "SELECT * FROM (SUMMARIZE 'duckdb_views') s",
        "SELECT * FROM (DESCRIBE sales.customers) d",
        "SELECT * FROM sales.customers PIVOT (count(*) FOR phone IN ('x'))",
        "SELECT * FROM sales.customers, (VALUES (1)) v(x)",
        "SELECT * FROM sales.customers, LATERAL (SELECT 1)",
        "SELECT $1 FROM sales.customers",
    ],
)
def test_syntax_off_the_allowlist_is_refused_by_construct(sql):
    """Constructs DuckDB reads as tables or files without sqlglot seeing a table (SUMMARIZE
    'path', DESCRIBE) and any syntax not reviewed: refused by the node allowlist."""
    with pytest.raises(QueryRefusedError):
        check_query(sql)


@pytest.mark.e2e
def test_the_engine_reads_only_the_snapshots_data_files(attacked_mesh):
    """The second wall: even SQL that slipped past the guard could open only the exact data
    files of the snapshots read, not a folder, a glob, metadata or another product's file."""
    with QuerySession("team:customer-care", mesh=attacked_mesh) as session:
        session.rows("SELECT count(*) FROM sales.customers")
        conn = session._conn
        warehouse = attacked_mesh.state_dir / "warehouse"
        for sql in (
            f"SELECT count(*) FROM read_parquet('{warehouse}/sales/customers/data/*.parquet')",
            f"SELECT count(*) FROM read_parquet('{warehouse}/sales/orders/**/*.parquet')",
            f"SELECT * FROM read_text('{warehouse}/sales/customers/metadata/*')",
            f"SELECT * FROM read_text('{attacked_mesh.state_dir}/secrets/pii_salt')",
        ):
            with pytest.raises(duckdb.Error, match=r"Permission|disabled"):
                conn.execute(sql).fetchall()


@pytest.mark.e2e
def test_refusals_on_record_carry_no_literal(attacked_mesh):
    import json

    path = attacked_mesh.state_dir / "audit" / "queries.jsonl"
    with QuerySession("team:customer-care", mesh=attacked_mesh) as session:
        for sql in (
            "SELECT * FROM 'Jane Doe +1-415-555-0100'",
            "SELECT * FROM sales.customers AT (VERSION => 1) WHERE phone = '+1-415-555-0100'",
            'SELECT "Jane Doe +1-415-555-0100"(1) FROM sales.customers',
            "SELECT * FROM sales.customers WHERE phone = '+1-415-555-0100",
        ):
            with pytest.raises(QueryRefusedError) as info:
                session.rows(sql)
            assert "555" not in str(info.value)
            last = json.loads(path.read_text().splitlines()[-1])
            assert last["status"] == "refused"
            said = json.dumps({k: v for k, v in last.items() if k != "id"})  # a random id
            assert "555" not in said and "Jane" not in said, last  # may hold the digits 555
