"""Access control and federated query against one real build of the sample mesh.

Deny by default, column grants, row filters, masking per reader (through every shape of query
and export), expiring grants and revoked clearances, SQL refusals and the engine lock-down, the
audit log, time travel, interoperability with plain DuckDB, and cross-domain consumption.

Edits to ``principals.yaml`` and descriptors are made on the built copy and restored in
``finally`` (or made on a separate copy), so every test sees the sample's grants.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import pytest

from mesh_platform.access.consumption import consumption_problems
from mesh_platform.access.principals import AccessDeniedError
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.dbt.project import load_manifest, prepare
from mesh_platform.domain import load_domain
from mesh_platform.duckdb_ext import extension_path
from mesh_platform.errors import MeshError, ProductNotPublishedError
from mesh_platform.query.audit import AuditLog
from mesh_platform.query.engine import QuerySession, parse_at, query
from mesh_platform.query.sql import QueryRefusedError, check_query
from mesh_platform.read import read_product
from mesh_platform.testing import copy_mesh, edited, run_mesh

pytestmark = pytest.mark.e2e

SF = 0.01
CUSTOMERS_COLUMNS = (
    "customer_key",
    "customer_name",
    "full_name",
    "email",
    "phone",
    "nation_key",
    "market_segment",
    "account_balance",
)
MARKETING_COLUMNS = ["customer_key", "nation_key", "market_segment"]
CARE_SEGMENTS = {"HOUSEHOLD", "BUILDING"}
TRUNCATED = re.compile(r"^.{0,2}\*\*\*$")
SALES_DESCRIPTOR = "dbt_projects/sales/models/products/products.yml"
CLEARANCE = "    clearances: [pii:phone]\n"
MARKETING_GRANT = (
    '              purpose: "Segment customers by market and nation; no contact details needed."\n'
    "              expires: 2027-12-31\n"
)


@pytest.fixture(scope="module")
def built(sample_build: Mesh) -> Mesh:
    """The session's build of the sample mesh (shared: every file edited here is restored)."""
    return sample_build


@pytest.fixture(scope="module")
def owner_customers(built: Mesh) -> dict[int, dict[str, Any]]:
    """sales.customers as its owner reads it (every column and row, in clear)."""
    with QuerySession("sales", mesh=built) as session:
        rows = session.sql("SELECT * FROM sales.customers").to_pylist()
    return {row["customer_key"]: row for row in rows}


@pytest.fixture(scope="module")
def clear_phones(owner_customers: dict[int, dict[str, Any]]) -> set[str]:
    phones = {row["phone"] for row in owner_customers.values() if row["phone"]}
    assert len(phones) > 100
    return phones


def _audit(mesh: Mesh) -> AuditLog:
    return AuditLog(mesh.state_dir / "audit" / "queries.jsonl")


def _leaked(value: Any, secrets: set[str]) -> list[str]:
    text = str(value)
    return sorted(s for s in secrets if s in text)


def _sorted_rows(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=lambda row: tuple((v is None, 0 if v is None else v) for v in row))


def _warehouse_file(mesh: Mesh, table: str) -> Path:
    files = sorted((mesh.state_dir / "warehouse" / "sales" / table).rglob("*.parquet"))
    assert files, f"no data file of sales.{table} in the warehouse"
    return files[0]


# -- 1. deny by default ---------------------------------------------------------------------


@pytest.mark.parametrize("principal", ["team:campaigns", "user:alice"])
def test_no_grant_is_denied_before_anything_is_read(built, principal):
    session = QuerySession(principal, mesh=built)

    def no_table_state(address):
        raise AssertionError(f"table state of {address} read for a refused reader")

    session.catalog.table_state = no_table_state  # the decision must come first
    with session, pytest.raises(AccessDeniedError) as info:
        session.sql("SELECT * FROM sales.customers")
    exc = info.value
    assert "sales.customers" in exc.what and principal in exc.what
    assert "deny by default" in exc.what
    assert "grants" in exc.fix and SALES_DESCRIPTOR in exc.fix
    assert str(exc.path) == SALES_DESCRIPTOR
    leaked = [c for c in CUSTOMERS_COLUMNS if c in str(exc)]
    assert not leaked, f"the refusal reveals column names {leaked}: {exc}"
    assert session._conn is None, "a DuckDB connection was opened for a refused query"
    assert session.last_snapshots == {}


def test_denial_through_query_and_read_product(built):
    with pytest.raises(AccessDeniedError, match=r"sales\.customers"):
        query("SELECT count(*) FROM sales.customers", as_="user:alice", mesh=built)
    with pytest.raises(AccessDeniedError, match=r"sales\.customers"):
        read_product("sales.customers", as_="team:campaigns", mesh=built)
    with pytest.raises(MeshError, match="principal"):
        read_product("sales.customers", mesh=built)  # anonymous: nothing is read


def test_one_denied_product_refuses_the_whole_query(built):
    """carol may read sales.customers, not sales.orders: the join is refused, nothing runs."""
    with QuerySession("user:carol", mesh=built) as session:
        with pytest.raises(AccessDeniedError, match=r"sales\.orders"):
            session.sql(
                "SELECT c.phone, o.total_price FROM sales.customers c "
                "JOIN sales.orders o USING (customer_key)"
            )
        assert session._conn is None


@pytest.mark.parametrize("principal", ["user:mallory", "team:nobody", "root; DROP", "../x"])
def test_unknown_principal_is_refused_naming_principals_yaml(built, principal):
    with QuerySession(principal, mesh=built) as session:
        with pytest.raises(AccessDeniedError) as info:
            session.sql("SELECT * FROM sales.customers")
        assert session._conn is None
    exc = info.value
    if principal.startswith(("user:", "team:")):
        assert f"unknown principal '{principal}'" in exc.what
        assert "principals.yaml" in str(exc)
    leaked = [c for c in CUSTOMERS_COLUMNS if c in str(exc)]
    assert not leaked, f"the refusal reveals column names {leaked}: {exc}"


# -- 2. column grants -----------------------------------------------------------------------


def test_column_grant_limits_select_star(built, owner_customers):
    with QuerySession("marketing", mesh=built) as session:
        table = session.sql("SELECT * FROM sales.customers")
        assert table.column_names == MARKETING_COLUMNS
        assert table.num_rows == len(owner_customers)  # no row filter for marketing
        names, _ = session.rows("SELECT c.* FROM sales.customers AS c LIMIT 1")
        assert names == MARKETING_COLUMNS
        for column in ("email", "phone", "full_name", "account_balance"):
            with pytest.raises(MeshError, match="query failed"):
                session.sql(f"SELECT customer_key, {column} FROM sales.customers")


# -- 3. row filter --------------------------------------------------------------------------


def test_row_filter_keeps_only_granted_rows(built, owner_customers):
    expected = sum(r["market_segment"] in CARE_SEGMENTS for r in owner_customers.values())
    with QuerySession("sales", mesh=built) as owner:
        (owner_count,) = owner.rows(
            "SELECT count(*) FROM sales.customers WHERE market_segment IN ('HOUSEHOLD', 'BUILDING')"
        )[1][0]
    assert owner_count == expected > 0
    with QuerySession("user:carol", mesh=built) as carol:
        table = carol.sql("SELECT * FROM sales.customers")
        assert table.column_names == [
            "customer_key",
            "full_name",
            "email",
            "phone",
            "market_segment",
        ]
        assert table.num_rows == owner_count < len(owner_customers)
        assert set(table.column("market_segment").to_pylist()) == CARE_SEGMENTS
        # the filter is applied under the query: a reader's own predicates cannot widen it
        _, rows = carol.rows(
            "SELECT count(*) FILTER (WHERE market_segment NOT IN ('HOUSEHOLD', 'BUILDING')) "
            "AS others, count(*) AS total FROM sales.customers WHERE true OR 1 = 1"
        )
        assert rows == [(0, owner_count)]


# -- 4. masking per reader ------------------------------------------------------------------

MASKING_QUERIES = [
    "SELECT * FROM sales.customers",
    "SELECT a.phone, b.phone AS phone_b FROM sales.customers AS a "
    "JOIN sales.customers AS b ON a.customer_key = b.customer_key",
    "SELECT min(phone) AS lo, max(phone) AS hi, string_agg(phone, ',') AS every_phone, "
    "list(DISTINCT phone) AS phones FROM sales.customers",
    "WITH c AS (SELECT customer_key, phone FROM sales.customers) SELECT phone FROM c",
    "SELECT phone FROM (SELECT * FROM sales.customers WHERE customer_key > 0) AS s",
    "SELECT phone FROM sales.customers UNION SELECT phone FROM sales.customers",
    "SELECT phone FROM sales.customers UNION ALL SELECT upper(phone) FROM sales.customers",
    "SELECT phone, count(*) AS n FROM sales.customers GROUP BY phone ORDER BY phone",
]


def _assert_all_truncated(values: list[Any], what: str) -> None:
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    assert flat, f"{what}: no phone served"
    clear = [v for v in flat if v is not None and not TRUNCATED.match(v)]
    assert not clear, f"{what}: {len(clear)} phone(s) served in clear, e.g. {clear[:3]}"


def test_phone_is_stored_in_clear_and_served_clear_to_cleared_readers(
    built, owner_customers, clear_phones
):
    matching = [p for p in clear_phones if TRUNCATED.match(p)]
    assert not matching, "the owner should read phones stored in clear"
    visible = {
        k: r["phone"] for k, r in owner_customers.items() if r["market_segment"] in CARE_SEGMENTS
    }
    with QuerySession("user:carol", mesh=built) as carol:
        table = carol.sql("SELECT customer_key, phone FROM sales.customers")
    served = dict(
        zip(
            table.column("customer_key").to_pylist(), table.column("phone").to_pylist(), strict=True
        )
    )
    assert served == visible  # cleared for pii:phone: clear values
    # email is hashed on publication and full_name redacted: the clearance for phone lifts
    # neither
    with QuerySession("user:carol", mesh=built) as carol:
        rows = carol.sql("SELECT email, full_name FROM sales.customers").to_pylist()
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["email"]) for r in rows)
    assert {r["full_name"] for r in rows} == {"[redacted]"}


def test_a_new_member_of_a_cleared_team_reads_phones_in_clear(built, clear_phones):
    principals = built.root / "principals.yaml"
    eve = "  - id: user:eve\n    member_of: [team:customer-care]\n"
    original = principals.read_text()
    with edited(principals, original, original + eve):
        with QuerySession("user:eve", mesh=built) as session:
            phones = session.sql("SELECT phone FROM sales.customers").column("phone").to_pylist()
        assert phones and set(phones) <= clear_phones
    # removed from principals.yaml: unknown on the next query
    with pytest.raises(AccessDeniedError, match="unknown principal 'user:eve'"):
        query("SELECT phone FROM sales.customers", as_="user:eve", mesh=built)


def test_revoked_clearance_masks_phones_everywhere_on_the_next_query(
    built, owner_customers, clear_phones, tmp_path
):
    """A reader granted the phone column but not cleared for pii:phone sees it truncated,
    through every query shape and export; the clearance is removed between two queries of the
    same session, and restored."""
    principals = built.root / "principals.yaml"
    visible = [r["phone"] for r in owner_customers.values() if r["market_segment"] in CARE_SEGMENTS]
    probe = visible[0]
    with QuerySession("user:carol", mesh=built) as carol:
        before = carol.sql("SELECT phone FROM sales.customers").column("phone").to_pylist()
        assert set(before) <= clear_phones
        with edited(principals, CLEARANCE, ""):
            for sql in MASKING_QUERIES:
                table = carol.sql(sql)
                assert table.num_rows > 0, sql
                assert not _leaked(table.to_pylist(), clear_phones), f"clear phone in: {sql}"
                for name in table.column_names:
                    if name.startswith("phone"):
                        _assert_all_truncated(table.column(name).to_pylist(), sql)
            lo, hi = carol.rows("SELECT min(phone), max(phone) FROM sales.customers")[1][0]
            _assert_all_truncated([lo, hi], "min/max")
            # predicates see the masked value too: no probing for a clear number
            for predicate in (f"phone = '{probe}'", f"phone LIKE '{probe[:6]}%'"):
                _, rows = carol.rows(f"SELECT count(*) FROM sales.customers WHERE {predicate}")
                assert rows == [(0,)], f"{predicate} matched masked phones"
            # exports through the CLI
            result = run_mesh(
                built.root, "query", "--as", "user:carol", "--format", "csv",
                "SELECT customer_key, phone FROM sales.customers",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            exported = list(csv.DictReader(io.StringIO(result.stdout)))
            assert len(exported) == len(visible)
            _assert_all_truncated([r["phone"] for r in exported], "CLI csv")
            assert not _leaked(result.stdout + result.stderr, clear_phones)
            out = tmp_path / "customers.parquet"
            result = run_mesh(
                built.root, "query", "--as", "user:carol", "--format", "parquet",
                "-o", str(out), "SELECT * FROM sales.customers",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            import pyarrow.parquet as pq

            exported = pq.read_table(out)
            assert exported.num_rows == len(visible)
            _assert_all_truncated(exported.column("phone").to_pylist(), "CLI parquet")
            assert not _leaked(exported.to_pylist(), clear_phones)
            raw = out.read_bytes()
            assert not [p for p in clear_phones if p.encode() in raw]
        # clearance restored: clear again on the next query, same session
        after = carol.sql("SELECT phone FROM sales.customers").column("phone").to_pylist()
        assert sorted(after) == sorted(before)


def test_removed_membership_stops_access_on_the_next_query(built):
    principals = built.root / "principals.yaml"
    carol = "  - id: user:carol\n    description: Customer-care agent.\n"
    membership = carol + "    member_of: [team:customer-care]\n"
    with QuerySession("user:carol", mesh=built) as session:
        assert session.sql("SELECT count(*) AS n FROM sales.customers").num_rows == 1
        with (
            edited(principals, membership, carol),
            pytest.raises(AccessDeniedError, match="no grant"),
        ):
            session.sql("SELECT count(*) AS n FROM sales.customers")
        assert session.sql("SELECT count(*) AS n FROM sales.customers").num_rows == 1


# -- 5. expired grants ----------------------------------------------------------------------


def test_expired_grant_is_refused_on_the_next_query(built):
    descriptor = built.root / SALES_DESCRIPTOR
    expired = MARKETING_GRANT.replace("2027-12-31", "2020-01-01")
    with QuerySession("marketing", mesh=built) as session:
        assert session.sql("SELECT * FROM sales.customers").column_names == MARKETING_COLUMNS
        with edited(descriptor, MARKETING_GRANT, expired):
            with pytest.raises(AccessDeniedError) as info:
                session.sql("SELECT * FROM sales.customers")
            assert "expired on 2020-01-01" in info.value.what
            assert "sales.customers" in info.value.what
            assert "renewal" in info.value.fix and SALES_DESCRIPTOR in info.value.fix
            # the other grants of the same descriptor are untouched
            assert session.sql("SELECT count(*) AS n FROM sales.orders").num_rows == 1
        table = session.sql("SELECT * FROM sales.customers")
        assert table.column_names == MARKETING_COLUMNS and table.num_rows > 0


# -- 6. SQL refusals and the engine lock-down -----------------------------------------------

REFUSED_SQL = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_parquet('/data/warehouse/sales/customers/data/x.parquet')",
    "SELECT * FROM parquet_scan('/data/x.parquet')",
    "SELECT * FROM iceberg_scan('/data/warehouse/sales/customers')",
    "SELECT * FROM '/etc/passwd'",
    'SELECT * FROM "/data/warehouse/sales/customers/data/x.parquet"',
    "SELECT * FROM sales.customers, LATERAL read_csv('/etc/passwd')",
    "SELECT (SELECT count(*) FROM read_csv('/etc/passwd')) AS n",
    "SELECT 1 AS x UNION SELECT * FROM read_csv('/etc/passwd')",
    "ATTACH '/tmp/x.db' AS x",
    "DETACH x",
    "COPY (SELECT 1) TO '/tmp/x.csv'",
    "COPY sales.customers TO '/tmp/x.csv'",
    "EXPORT DATABASE '/tmp/x'",
    "SET threads=1",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA database_list",
    "CALL pragma_version()",
    "SELECT getenv('HOME')",
    "SELECT current_setting('threads')",
    "SELECT * FROM duckdb_views()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_catalog.pg_tables",
    "SELECT * FROM system.main.duckdb_tables",
    "SELECT 1; SELECT 2",
    "SELECT * FROM sales.customers; DROP TABLE x",
    "DESCRIBE sales.customers",
    "SUMMARIZE sales.customers",
    "CREATE TABLE x AS SELECT 1",
    "CREATE OR REPLACE VIEW sales.customers AS SELECT 1",
    "DROP VIEW sales.customers",
    "INSERT INTO sales.customers VALUES (1)",
    "SELECT 1 INTO x",
    "USE sales",
    "SELECT * FROM customers",
    "SELECT * FROM mesh.sales.customers",
    "SELECT * FROM sales.customers AT (VERSION => 1)",
    'SELECT * FROM "sales"."customers; DROP TABLE x"',
    'SELECT * FROM "sales"."../../etc/passwd"',
    'SELECT * FROM sales."customers"" --"',
    'SELECT * FROM "sales/../logistics"."shipments"',
    "SELECT * FROM sales.customers WHERE",
]


@pytest.mark.parametrize("sql", REFUSED_SQL)
def test_check_query_refuses(sql):
    with pytest.raises(QueryRefusedError) as info:
        check_query(sql)
    assert info.value.fix


def test_allowed_sql_is_regenerated_and_literals_redacted():
    checked = check_query(
        "WITH c AS (SELECT * FROM sales.customers) SELECT c.market_segment, count(*) FROM c "
        "JOIN logistics.nations_v2 n USING (nation_key) WHERE c.market_segment = 'HOUSEHOLD' "
        "GROUP BY 1"
    )
    assert sorted(str(a) for a in checked.addresses) == ["logistics.nations_v2", "sales.customers"]
    assert "HOUSEHOLD" in checked.sql and "HOUSEHOLD" not in checked.redacted
    assert "?" in checked.redacted


def test_refusals_through_a_session_execute_nothing(built, tmp_path):
    data_file = _warehouse_file(built, "customers")
    target = tmp_path / "x.csv"
    refused = [
        f"SELECT * FROM read_parquet('{data_file}')",
        f'SELECT * FROM "{data_file}"',
        f"SELECT * FROM '{data_file}'",
        f"COPY (SELECT * FROM sales.customers) TO '{target}'",
        "SELECT * FROM information_schema.tables",
        'SELECT * FROM "sales"."customers; DROP TABLE x"',
        'SELECT * FROM "sales"."../../etc/passwd"',
        "SELECT getenv('HOME')",
        "SELECT 1; SELECT 2",
    ]
    with QuerySession("marketing", mesh=built) as session:
        for sql in refused:
            with pytest.raises(QueryRefusedError):
                session.sql(sql)
        assert session._conn is None, "a refused query opened the engine"
        with pytest.raises(MeshError, match="no product"):  # well-formed, but no such product
            session.sql("SELECT * FROM sales.no_such_table")
        assert session._conn is None
    assert not target.exists()


def test_engine_is_locked_down(built, tmp_path):
    """Defence in depth: the session's own connection cannot reach files, settings or other
    databases, even if SQL got past the checks."""
    raw_contacts = built.raw_dir("sales") / "customer_contact.parquet"  # clear personal data
    assert raw_contacts.is_file()
    with QuerySession("marketing", mesh=built) as session:
        assert session.sql("SELECT count(*) AS n FROM sales.customers").num_rows == 1
        conn = session._conn
        assert conn is not None
        for sql in (
            "SELECT * FROM read_csv('/etc/passwd')",
            "SET threads = 1",
            f"ATTACH '{tmp_path / 'x.db'}' AS x",
            "SET enable_external_access = true",
            "SET allowed_directories = ['/']",
            "SET lock_configuration = false",
            f"SELECT * FROM read_parquet('{raw_contacts}')",
            f"SELECT * FROM '{raw_contacts}'",
            f"SELECT * FROM read_text('{built.root / 'principals.yaml'}')",
            f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'",
            "INSTALL httpfs",
            "LOAD httpfs",
        ):
            with pytest.raises(duckdb.Error):
                conn.execute(sql).fetchall()
        assert session.sql("SELECT count(*) AS n FROM sales.customers").num_rows == 1
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()


# -- 7. audit log ---------------------------------------------------------------------------


def test_every_query_is_audited_without_data(built, owner_customers, clear_phones):
    log = _audit(built)
    before = len(list(log.entries()))
    probe = next(r for r in owner_customers.values() if r["market_segment"] == "HOUSEHOLD")
    with QuerySession("user:carol", mesh=built) as carol:
        n = (
            carol.sql(
                "SELECT count(*) AS n FROM sales.customers WHERE market_segment = 'HOUSEHOLD'"
            )
            .column("n")[0]
            .as_py()
        )
        snapshot = carol.last_snapshots["sales.customers"]
    with QuerySession("sales", mesh=built) as owner:
        found = owner.sql(
            f"SELECT customer_key FROM sales.customers WHERE phone = '{probe['phone']}' "
            f"OR email = '{probe['email']}'"
        )
        assert found.num_rows >= 1
    with QuerySession("user:alice", mesh=built) as alice, pytest.raises(AccessDeniedError):
        alice.sql("SELECT * FROM sales.customers")
    with QuerySession("marketing", mesh=built) as marketing:
        with pytest.raises(QueryRefusedError):
            marketing.sql("SELECT * FROM read_csv('/etc/passwd')")
        with pytest.raises(MeshError):
            marketing.sql("SELECT email FROM sales.customers")

    lines = list(log.entries())[before:]
    # A query that reaches the engine is on record before it runs ("started"), then its
    # outcome under the same id; refusals and denials are decided before: one line.
    started = [e["id"] for e in lines if e["status"] == "started"]
    entries = [e for e in lines if e["status"] != "started"]
    assert started == [entries[0]["id"], entries[1]["id"], entries[4]["id"]]
    assert [(e["principal"], e["status"]) for e in entries] == [
        ("user:carol", "ok"),
        ("sales", "ok"),
        ("user:alice", "denied"),
        ("marketing", "refused"),
        ("marketing", "failed"),
    ]
    ok, owned, denied, refused, failed = entries
    assert ok["rows"] == 1 and n > 0
    assert ok["products"] == [
        {
            "address": "sales.customers",
            "snapshot_id": snapshot,
            "masked": [],
            "row_filter": True,
            "owner": False,
        }
    ]
    assert ok["query"].count("?") == 1 and "HOUSEHOLD" not in ok["query"]
    assert owned["rows"] == found.num_rows and owned["products"][0]["owner"] is True
    assert probe["phone"] not in owned["query"] and probe["email"] not in owned["query"]
    assert owned["query"].count("?") == 2
    assert denied["products"] == [{"address": "sales.customers"}]  # no snapshot: nothing read
    assert "no grant" in denied["reason"]
    assert "rows" not in denied and "rows" not in refused
    assert refused["products"] == [] and "read_csv" in refused["reason"]
    assert failed["reason"] == "BinderException"
    assert all(isinstance(e["duration_ms"], float) and e["at"] for e in entries)

    text = log.path.read_text()
    raw = duckdb.connect()
    contacts = raw.execute(
        f"SELECT email, full_name FROM '{built.raw_dir('sales') / 'customer_contact.parquet'}'"
    ).fetchall()
    raw.close()
    secrets = clear_phones | {e for e, _ in contacts} | {f for _, f in contacts}
    secrets |= {r["email"] for r in owner_customers.values()}  # even hashed values
    assert len(secrets) > 2 * len(owner_customers)
    assert not _leaked(text, secrets), "personal data in the audit log"
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"


# -- 8. time travel -------------------------------------------------------------------------


def test_parse_at():
    assert parse_at(None) is None
    assert parse_at("123") == 123
    assert parse_at(" 42 ") == 42
    moment = parse_at("2026-11-24T18:00:00")
    assert moment == dt.datetime(2026, 11, 24, 18, tzinfo=dt.UTC)
    shifted = parse_at("2026-11-24T18:00:00+02:00")
    assert shifted.utcoffset() == dt.timedelta(hours=2)
    with pytest.raises(MeshError, match="neither a snapshot id nor a timestamp"):
        parse_at("yesterday")


def test_time_travel(built):
    with QuerySession("sales", mesh=built) as session:
        sql = "SELECT * FROM sales.customers ORDER BY customer_key"
        current = session.rows(sql)
        snapshot = session.last_snapshots["sales.customers"]
        assert session.rows(sql, at=snapshot) == current
        assert session.last_snapshots == {"sales.customers": snapshot}
        assert session.rows(sql, at=dt.datetime.now(dt.UTC)) == current
        assert session.rows(sql, at=parse_at(str(snapshot))) == current

        with pytest.raises(MeshError, match="no published snapshot 123456789"):
            session.rows(sql, at=123456789)
        with pytest.raises(ProductNotPublishedError, match="no published snapshot at that time"):
            session.rows(sql, at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        with pytest.raises(MeshError, match="no time zone"):
            session.rows(sql, at=dt.datetime(2026, 1, 1))

        join = "SELECT count(*) FROM sales.orders o JOIN sales.customers c USING (customer_key)"
        with pytest.raises(MeshError, match="pins one product"):
            session.rows(join, at=snapshot)
        count = session.rows(join)[1]
        pins = dict(session.last_snapshots)
        assert session.rows(join, at=pins)[1] == count
    assert read_product(
        "sales.customers", as_="sales", snapshot_id=snapshot, mesh=built
    ).num_rows == len(current[1])

    result = run_mesh(
        built.root, "query", "--as", "sales", "--at", str(snapshot), "--format", "json",
        "SELECT count(*) AS n FROM sales.customers",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == [{"n": len(current[1])}]
    result = run_mesh(
        built.root, "query", "--as", "sales", "--at", "1", "SELECT * FROM sales.customers"
    )
    assert result.returncode == 1
    assert "no published snapshot 1 " in result.stderr and "Traceback" not in result.stderr


# -- 9. interoperability --------------------------------------------------------------------


def test_every_product_reads_the_same_with_plain_duckdb(built):
    catalog = sqlite3.connect(built.state_dir / "catalog" / "catalog.db")
    try:
        tables = catalog.execute(
            "SELECT table_namespace, table_name, metadata_location FROM iceberg_tables "
            "WHERE metadata_location IS NOT NULL ORDER BY 1, 2"
        ).fetchall()
    finally:
        catalog.close()
    addresses = {f"{ns}.{name}" for ns, name, _ in tables}
    assert {
        "sales.orders",
        "sales.order_lines",
        "sales.customers",
        "logistics.shipments",
        "logistics.suppliers",
        "logistics.parts",
        "logistics.nations",
        "logistics.nations_v2",
        "marketing.customer_segments",
        "marketing.revenue_by_nation_segment",
        "marketing.late_delivery_impact",
        "marketing.segment_summary",
        "mesh.sla_history",
    } <= addresses

    plain = duckdb.connect()
    plain.execute("SET autoinstall_known_extensions = false")
    plain.execute("SET autoload_known_extensions = false")
    plain.execute(f"LOAD '{extension_path('avro')}'")
    plain.execute(f"LOAD '{extension_path('iceberg')}'")
    try:
        for namespace, name, location in tables:
            path = location.removeprefix("file://")
            cursor = plain.execute(f"SELECT * FROM iceberg_scan('{path}')")
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            # as the owning domain; the platform's own tables (mesh.*) are readable by anyone
            reader = "sales" if namespace == "mesh" else namespace
            with QuerySession(reader, mesh=built) as session:
                platform_names, platform_rows = session.rows(f"SELECT * FROM {namespace}.{name}")
            assert platform_names == names, f"{namespace}.{name}"
            assert len(rows) > 0, f"{namespace}.{name} is empty"
            assert _sorted_rows(platform_rows) == _sorted_rows(rows), f"{namespace}.{name}"
    finally:
        plain.close()


# -- 10. cross-domain consumption -----------------------------------------------------------


def test_marketing_consumes_only_what_it_is_granted(built):
    manifest = load_manifest(load_domain(built, "marketing"))
    assert consumption_problems(built, "marketing", manifest) == []
    expired = consumption_problems(built, "marketing", manifest, today=dt.date(2028, 1, 1))
    # logistics.nations (major 1) is past its sunset by then: it names its successor instead
    sunset = [p for p in expired if p.startswith("consumes logistics.nations ")]
    assert len(sunset) == 1 and "read its successor logistics.nations_v2" in sunset[0]
    assert len(expired) == 5 and all("expired on 2027-12-31" in p for p in expired
                                     if p not in sunset)  # fmt: skip

    staged = duckdb.connect(str(built.duckdb_path("marketing")), read_only=True)
    try:
        columns = staged.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'sales' "
            "AND table_name = 'customers' ORDER BY ordinal_position"
        ).fetchall()
        assert [c for (c,) in columns] == MARKETING_COLUMNS
        rows = staged.execute("SELECT count(*) FROM sales.customers").fetchone()[0]
        personal = staged.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE column_name IN ('email', 'phone', 'full_name')"
        ).fetchall()
    finally:
        staged.close()
    assert rows == 1500
    assert personal == [], f"personal data staged in marketing's DuckDB: {personal}"


def test_consumption_without_a_grant_is_reported(built, tmp_path):
    """A copy of the mesh where logistics revoked marketing's grant on shipments."""
    root = copy_mesh(tmp_path / "mesh")
    for domain in ("logistics", "marketing", "sales"):
        target = root / "dbt_projects" / domain / "target"
        target.mkdir()
        for name in ("manifest.json", "mesh_prepared.json"):
            shutil.copy2(built.root / "dbt_projects" / domain / "target" / name, target / name)
    mesh = load_mesh(root)
    mesh.ensure_state_dir()
    schema = root / "dbt_projects/logistics/models/products/products.yml"
    text = schema.read_text()
    grant = (
        '            - {to: marketing, purpose: "Customer segmentation and revenue analytics in '
        'marketing.", expires: 2027-12-31}\n'
    )
    assert text.index(grant) < text.index("- name: suppliers")  # shipments' first grant
    schema.write_text(text.replace(grant, "", 1))
    prepare(mesh, load_domain(mesh, "logistics"))
    manifest = load_manifest(load_domain(mesh, "marketing"))
    problems = consumption_problems(mesh, "marketing", manifest)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.startswith("consumes logistics.shipments")
    assert "dbt_projects/marketing/models/staging/sources.yml" in problem
    assert "no grant" in problem
    assert "fix:" in problem and "grants" in problem
    assert "dbt_projects/logistics/models/products/products.yml" in problem


# -- 11. the products listing ---------------------------------------------------------------


def _row(output: str, address: str) -> list[str]:
    line = next(line for line in output.splitlines() if f" {address} " in line).strip()
    assert line.startswith("│") and line.endswith("│"), line
    return [cell.strip() for cell in line[1:-1].split("│")]


def test_products_listing_shows_columns_only_to_granted_readers(built):
    result = run_mesh(built.root, "products", "--as", "marketing")
    assert result.returncode == 0, result.stderr[-3000:]
    row = _row(result.stdout, "sales.customers")
    assert row[-2] == "granted"
    assert row[-1] == "customer_key, nation_key, market_segment"

    result = run_mesh(built.root, "products", "--as", "team:campaigns")
    assert result.returncode == 0, result.stderr[-3000:]
    row = _row(result.stdout, "sales.customers")
    assert row[-2] == "no grant (deny by default)" and row[-1] == ""

    result = run_mesh(built.root, "products")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sales.customers" in result.stdout
    listed = [c for c in CUSTOMERS_COLUMNS if c in result.stdout]
    assert not listed, f"`mesh products` without --as lists column names {listed}"
    assert "columns" not in result.stdout


# -- the query checker must not be fooled by CTE scopes ---------------------------------------


def test_a_cte_name_cannot_smuggle_a_file_read_past_the_checks(built, clear_phones):
    """Regression: a CTE named like a file, defined in a subquery, does not cover a reference to
    that name outside the subquery: DuckDB would read the file there (a replacement scan), and
    the table's own data directory is readable by the engine while the query reads
    sales.customers, bypassing the column grant and the phone mask. CTE names must be plain
    identifiers, and a bare table name is a CTE only where that CTE is in scope."""
    data_file = _warehouse_file(built, "customers")
    sql = (
        f'SELECT b.* FROM (WITH "{data_file}" AS (SELECT 1 AS one) SELECT one FROM '
        f'"{data_file}") AS a, "{data_file}" AS b, sales.customers AS c LIMIT 5'
    )
    with QuerySession("marketing", mesh=built) as session:
        try:
            table = session.sql(sql)
        except MeshError:
            return  # refused (by the checker or the engine): nothing leaked
    leaked = [name for name in table.column_names if name not in MARKETING_COLUMNS]
    phones = _leaked(table.to_pylist(), clear_phones)
    pytest.fail(
        "check_query accepted a file-named table outside its CTE's scope; marketing read the "
        "raw Iceberg data file of sales.customers "
        f"through a replacement scan: ungranted columns {sorted(leaked)}, clear phones "
        f"{phones[:3]}"
    )
