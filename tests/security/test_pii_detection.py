"""Security class 4 (part): personal data the gate must see wherever it hides.

The gate's ``pii_detection`` runs for real (DuckDB over the Parquet staged on a tmp sqlite
Iceberg catalog) on values nested in lists, structs, maps and JSON text, and on digits stored
as numbers; TPC-H's keys, prices and dates (dbgen, SF 0.01) must not hit, and no outcome may
carry a value. The static ``pii_column_names`` policy blocks a column whose name says personal
data but is classified otherwise, and a waiver lifts it.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.governance.builtin import pii_name_kind
from mesh_platform.governance.data import (
    SQL_MACROS,
    NumberStats,
    PiiDetection,
    PiiMaskingVerified,
    luhn_valid,
    number_hits,
)
from mesh_platform.governance.policy import (
    PolicyContext,
    Violation,
    evaluate_static,
    load_policy_set,
)
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.gate import GateContext
from mesh_platform.products.outcomes import CheckOutcome
from mesh_platform.products.publish import Publication, publish_product

SOURCE = "dbt_projects/sales/models/products/products.yml"
EMAIL = "jane.doe@example.com"
TODAY = dt.date(2025, 6, 1)


# --- helpers ----------------------------------------------------------------------------------


def node(name: str, columns: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """A public dbt model node; ``columns``: name -> (data_type, classification)."""
    return {
        "resource_type": "model",
        "access": "public",
        "name": name,
        "description": "Rows for the personal-data detection tests.",
        "original_file_path": f"models/products/{name}.sql",
        "patch_path": "sales://models/products/products.yml",
        "config": {
            "meta": {
                "mesh": {
                    "purpose": "Exercise the governance policies.",
                    "owner": {"team": "sales", "contact": "sales-data@example.com"},
                    "version": "1.0.0",
                    "sla": {"freshness": {"max_age": "26h"}},
                    "grants": [{"to": "marketing", "purpose": "Tests.", "expires": "2099-12-31"}],
                }
            },
            "contract": {"enforced": True},
        },
        "columns": {
            c: {
                "data_type": t,
                "description": "A column.",
                "config": {"meta": {"classification": k}},
            }
            for c, (t, k) in columns.items()
        },
    }


def descriptor(name: str, columns: dict[str, tuple[str, str]]) -> ProductDescriptor:
    return descriptor_from_node("sales", node(name, columns))


def scan(catalog, conn, name: str, select: str, **types: str) -> Publication:
    """Publish ``SELECT <select>`` as product sales.<name> (every column classified internal,
    ``types`` gives the declared data types) through the real gate."""
    conn.execute(f"CREATE OR REPLACE TABLE main.{name} AS SELECT {select}")
    columns = {c: (t, "internal") for c, t in types.items()}
    return publish_product(
        catalog, descriptor(name, columns), conn, f"main.{name}", batch_id="b1", run_id="run-b1"
    )


def detection(publication: Publication) -> CheckOutcome:
    return publication.outcomes["pii_detection"]


def assert_blocked(publication: Publication, path: str, kind: str, count: int) -> CheckOutcome:
    outcome = detection(publication)
    assert not publication.published
    assert "pii_detection" in publication.failed_checks
    assert outcome.metadata["hits"].get(path, {}).get(kind) == count, outcome.metadata
    assert f"column {path}: {kind} in {count} " in outcome.description, outcome.description
    return outcome


def assert_no_value(publication: Publication, *secrets: str) -> None:
    for text in (str(publication.outcomes), repr(publication.outcomes), publication.error or ""):
        for secret in secrets:
            assert secret not in text


def with_luhn(payload: str) -> str:
    """``payload`` followed by its Luhn check digit."""
    for digit in "0123456789":
        if luhn_valid(payload + digit):
            return payload + digit
    raise AssertionError(payload)


def nanp(k: int) -> int:
    """A valid-shaped North American number (area and exchange 200-999) derived from k."""
    return (200 + k * 37 % 800) * 10**7 + (200 + k * 53 % 800) * 10**4 + k * 7919 % 10000


@pytest.fixture
def conn(duck):
    return duck


# --- 1. strings at any depth --------------------------------------------------------------------

NESTED = [
    # (select of column `details`, declared type, path reported, kind)
    (f"['note', '{EMAIL}']", "varchar[]", "details[]", "email"),
    (f"{{'label': 'home', 'email': '{EMAIL}'}}", "struct(label varchar, email varchar)",
     "details.email", "email"),
    (f"MAP {{'{EMAIL}': 'primary'}}", "map(varchar, varchar)", "details{key}", "email"),
    (f"MAP {{'primary': '{EMAIL}'}}", "map(varchar, varchar)", "details{value}", "email"),
    (f"[{{'kind': 'work', 'email': '{EMAIL}'}}]", "struct(kind varchar, email varchar)[]",
     "details[].email", "email"),
    (f"{{'people': [MAP {{'k': ['x', '{EMAIL}']}}]}}",
     "struct(people map(varchar, varchar[])[])", "details.people[]{value}[]", "email"),
    (f"'{{\"contact\": \"{EMAIL}\"}}'", "varchar", "details", "email"),  # JSON text
    ("['4111 1111 1111 1111']", "varchar[]", "details[]", "credit_card"),
    ("{'tel': '+1 212-555-0142'}", "struct(tel varchar)", "details.tel", "phone"),
]  # fmt: skip


@pytest.mark.parametrize(("select", "data_type", "path", "kind"), NESTED)
def test_personal_data_nested_at_any_depth_blocks(catalog, conn, select, data_type, path, kind):
    publication = scan(
        catalog, conn, "nested", f"range AS k, {select} AS details FROM range(3)",
        k="bigint", details=data_type,
    )  # fmt: skip
    assert_blocked(publication, path, kind, 3)
    assert_no_value(publication, EMAIL, "4111 1111", "212-555-0142")


def test_nested_harmless_values_pass(catalog, conn):
    publication = scan(
        catalog, conn, "nested_ok",
        "range AS k, [{'kind': 'work', 'tags': MAP {'a': 'b'}}] AS details, "
        "['AUTOMOBILE', 'Customer#000000001', '1994-01-01'] AS labels FROM range(3)",
        k="bigint", details="struct(kind varchar, tags map(varchar, varchar))[]",
        labels="varchar[]",
    )  # fmt: skip
    assert publication.published, publication.error
    assert detection(publication).metadata["hits"] == {}
    assert (
        detection(publication).metadata["fields_scanned"] == 5
    )  # k, kind, tags{key,value}, labels[]


def test_a_json_typed_parquet_column_is_scanned_as_text(catalog, conn, tmp_path):
    """A JSON column (DuckDB writes Parquet's JSON logical type; Iceberg stores a string)."""
    from mesh_platform.storage.catalog import ensure_namespace
    from mesh_platform.storage.wap import AuditStage

    path = tmp_path / "json.parquet"
    conn.execute(
        f'COPY (SELECT range AS k, \'{{"contact": "{EMAIL}"}}\'::JSON AS doc FROM range(2)) '
        f"TO '{path}' (FORMAT parquet)"
    )
    assert conn.sql(f"SELECT typeof(doc) FROM '{path}' LIMIT 1").fetchone() == ("JSON",)
    ensure_namespace(catalog, "sales")
    schema = pa.schema([("k", pa.int64()), ("doc", pa.string())])
    table = catalog.create_table(("sales", "docs"), schema=schema)
    d = descriptor("docs", {"k": ("bigint", "internal"), "doc": ("json", "internal")})
    stage = AuditStage(ProductAddress("sales", "docs"), "b1", "audit-b1", 0, None, 2, "",
                       data_files=(str(path),))  # fmt: skip
    outcome = PiiDetection().evaluate(GateContext(d, stage, table))
    assert not outcome.passed
    assert outcome.metadata["hits"] == {"doc": {"email": 2}}
    assert EMAIL not in str(outcome)


def test_every_card_in_a_value_is_checked_not_only_the_first(catalog, conn):
    value = "old 4111 1111 1111 1112 (expired), new 4111 1111 1111 1111"
    publication = scan(catalog, conn, "cards", f"1 AS k, '{value}' AS note", k="bigint",
                       note="varchar")  # fmt: skip
    assert_blocked(publication, "note", "credit_card", 1)
    assert_no_value(publication, "4111 1111 1111 1111", "4111111111111111")


# --- 2. digits stored as numbers -------------------------------------------------------------


def _numbers(conn, name: str, values: list[int], sql_type: str) -> str:
    conn.execute(
        f"CREATE OR REPLACE TABLE main.{name} AS SELECT row_number() OVER () AS k, "
        f"CAST(v AS {sql_type}) AS v FROM (SELECT unnest(?::HUGEINT[]) AS v)",
        [values],
    )
    return f"main.{name}"


def publish_numbers(catalog, conn, name, values, sql_type, *, column="v") -> Publication:
    relation = _numbers(conn, name, values, sql_type)
    if column != "v":
        conn.execute(f"ALTER TABLE {relation} RENAME v TO {column}")
    d = descriptor(name, {"k": ("bigint", "internal"), column: (sql_type.lower(), "internal")})
    return publish_product(catalog, d, conn, relation, batch_id="b1", run_id="run-b1")


PHONES = [nanp(k) for k in range(50)]
CARDS = [int(with_luhn(f"4{k:014d}")) for k in range(1, 80, 3)]  # Visa, 16 digits


@pytest.mark.parametrize(
    ("values", "sql_type", "kind"),
    [
        (PHONES, "BIGINT", "phone"),
        ([10**10 + p for p in PHONES], "BIGINT", "phone"),  # with the country code 1
        (PHONES, "DOUBLE", "phone"),
        (PHONES, "DECIMAL(12,2)", "phone"),
        (CARDS, "BIGINT", "credit_card"),
        (CARDS, "DECIMAL(19,0)", "credit_card"),
        ([int(with_luhn(f"37{k:012d}")) for k in range(1, 40)], "BIGINT", "credit_card"),  # Amex
    ],
)
def test_phone_and_card_digits_in_number_columns_block(catalog, conn, values, sql_type, kind):
    publication = publish_numbers(catalog, conn, "numbers", values, sql_type)
    assert_blocked(publication, "v", kind, len(values))
    assert_no_value(publication, *(str(v) for v in values[:5]))


def test_a_nan_does_not_hide_phones_in_a_double_column(catalog, conn):
    relation = _numbers(conn, "doubles", PHONES, "DOUBLE")
    conn.execute(
        f"INSERT INTO {relation} VALUES (0, 0), (0, 'NaN'::DOUBLE), (0, 'Infinity'::DOUBLE)"
    )
    d = descriptor("doubles", {"k": ("bigint", "internal"), "v": ("double", "internal")})
    publication = publish_product(catalog, d, conn, relation, batch_id="b1", run_id="r1")
    assert_blocked(publication, "v", "phone", len(PHONES))


def test_ssn_shaped_numbers_block_only_where_a_name_says_national_id(catalog, conn):
    ssns = [123_45_6789 + 7919 * k for k in range(40)]
    select = (
        "k, {'ssn': v} AS person FROM (SELECT row_number() OVER () AS k, unnest(?::BIGINT[]) AS v)"
    )
    conn.execute(f"CREATE TABLE main.people AS SELECT {select}", [ssns])
    d = descriptor("people", {"k": ("bigint", "internal"),
                              "person": ("struct(ssn bigint)", "internal")})  # fmt: skip
    publication = publish_product(catalog, d, conn, "main.people", batch_id="b1", run_id="r1")
    assert_blocked(publication, "person.ssn", "national_id", 40)
    assert_no_value(publication, "123456789")
    # the same nine digits in a column named like a key: a key
    plain = publish_numbers(catalog, conn, "refs", ssns, "BIGINT", column="reference")
    assert plain.published, plain.error
    assert detection(plain).metadata["hits"] == {}


@pytest.mark.parametrize(
    ("why", "values", "sql_type"),
    [
        # phone-shaped (area 600, exchange 200) but dense: keys
        ("10-digit sequential keys", list(range(6_002_000_000, 6_002_000_500)), "BIGINT"),
        ("sparse sequential keys (TPC-H style)",
         [6_002_000_000 + 32 * (k // 8) + k % 8 for k in range(500)], "BIGINT"),
        ("epoch seconds", list(range(1_700_000_000, 1_800_000_000, 199_999)), "BIGINT"),
        ("epoch milliseconds", list(range(1_700_000_000_000, 1_800_000_000_000, 199_999_999)),
         "BIGINT"),
        ("random 63-bit ids", [random.Random(7).getrandbits(63) for _ in range(300)], "BIGINT"),
        ("card-shaped sequence, Luhn-valid one in ten",
         list(range(4_000_000_000_000_000, 4_000_000_000_000_300)), "DECIMAL(19,0)"),
        ("exchange starting with 1 (not a NANP number)",
         [2_121_230_000 + k for k in range(0, 5000, 97)], "BIGINT"),
    ],
)  # fmt: skip
def test_numbers_that_are_not_personal_data_pass(catalog, conn, why, values, sql_type):
    publication = publish_numbers(catalog, conn, "not_pii", values, sql_type)
    assert publication.published, (why, publication.error)
    assert detection(publication).metadata["hits"] == {}, why


def test_digits_alone_in_text_are_read_as_numbers(catalog, conn):
    phones = ", ".join(f"'{p}'" for p in PHONES[:20])
    publication = scan(catalog, conn, "texts", f"unnest([{phones}]) AS contact",
                       contact="varchar")  # fmt: skip
    assert_blocked(publication, "contact", "phone", 20)
    assert_no_value(publication, str(PHONES[0]))
    keys = scan(catalog, conn, "text_keys",
                "CAST(6002000000 + range AS VARCHAR) AS ref FROM range(200)", ref="varchar")  # fmt: skip
    assert keys.published, keys.error


# --- 3. the column-level rules and the SQL Luhn -----------------------------------------------


def test_number_rules_need_a_majority_and_no_sequence():
    assert number_hits(NumberStats(values=10, phones=4, phone_distinct=4, phone_span=10**9)) == {}
    assert number_hits(NumberStats(values=10, phones=6, phone_distinct=6, phone_span=10**9)) == {
        "phone": 6
    }
    # dense: six distinct phone-shaped values within a span of 100 are keys
    assert number_hits(NumberStats(values=10, phones=6, phone_distinct=6, phone_span=100)) == {}
    assert number_hits(NumberStats(values=1, phones=1, phone_distinct=1, phone_span=1)) == {
        "phone": 1
    }
    assert number_hits(NumberStats(values=10, cards=4)) == {}
    assert number_hits(NumberStats(values=10, cards=5)) == {"credit_card": 5}
    assert number_hits(NumberStats(values=10, national_ids=5)) == {"national_id": 5}
    assert number_hits(NumberStats(values=0)) == {}


def test_the_sql_luhn_agrees_with_the_python_one(duck):
    for macro in SQL_MACROS:
        duck.execute(macro)
    rng = random.Random(3)
    numbers = [str(rng.randrange(10**12, 10**19)) for _ in range(2000)]
    numbers += [with_luhn(n[:-1]) for n in numbers[:200]]
    got = duck.execute(
        "SELECT list_transform(?::VARCHAR[], lambda s: mesh_luhn(CAST(s AS UBIGINT)))", [numbers]
    ).fetchone()[0]
    assert got == [luhn_valid(n) for n in numbers]
    assert 0.05 < sum(got[:2000]) / 2000 < 0.15  # about one in ten random numbers
    assert all(got[2000:])


# --- 4. TPC-H: keys, prices, balances, dates and quantities never hit -------------------------


@pytest.fixture(scope="module")
def tpch(tmp_path_factory) -> Path:
    """TPC-H SF 0.01 as Parquet, columns named as the sample mesh's products name them."""
    from mesh_platform.duckdb_ext import connect

    folder = tmp_path_factory.mktemp("tpch")
    c = connect(extensions=("tpch",))
    c.execute("CALL dbgen(sf=0.01)")
    tables = {
        "customers": "SELECT c_custkey AS customer_key, c_name AS customer_name, "
        "c_nationkey AS nation_key, c_mktsegment AS market_segment, c_acctbal AS "
        "account_balance, c_address AS address_text, c_comment AS comment FROM customer",
        "orders": "SELECT o_orderkey AS order_key, o_custkey AS customer_key, o_orderstatus AS "
        "order_status, o_totalprice AS total_price, o_orderdate AS order_date, "
        "o_orderpriority AS order_priority, o_clerk AS clerk, o_shippriority AS ship_priority, "
        "o_comment AS comment FROM orders",
        "order_lines": "SELECT l_orderkey AS order_key, l_linenumber AS line_number, l_partkey "
        "AS part_key, l_suppkey AS supplier_key, l_shipdate AS ship_date, l_quantity AS "
        "quantity, l_extendedprice AS extended_price, l_discount AS discount, l_tax AS tax, "
        "CAST(l_extendedprice * (1 - l_discount) AS DECIMAL(18, 2)) AS net_revenue, "
        "l_returnflag AS return_flag, l_linestatus AS line_status, l_shipinstruct AS "
        "ship_instructions, l_shipmode AS ship_mode, l_comment AS comment FROM lineitem",
        "suppliers": "SELECT s_suppkey AS supplier_key, s_name AS supplier_name, s_nationkey AS "
        "nation_key, s_acctbal AS account_balance FROM supplier",
        "parts": "SELECT p_partkey AS part_key, p_name AS part_name, p_mfgr AS manufacturer, "
        "p_brand AS brand, p_type AS part_type, p_size AS size, p_container AS container, "
        "p_retailprice AS retail_price FROM part",
        "phones": "SELECT c_custkey AS customer_key, c_phone AS contact FROM customer",
    }
    for name, select in tables.items():
        c.execute(f"COPY ({select}) TO '{folder / name}.parquet' (FORMAT parquet)")
    c.close()
    return folder


@pytest.mark.parametrize("table", ["customers", "orders", "order_lines", "suppliers", "parts"])
def test_tpch_columns_do_not_hit(catalog, conn, tpch, table):
    relation = conn.sql(f"SELECT * FROM '{tpch / table}.parquet'")
    conn.execute(f"CREATE TABLE main.{table} AS SELECT * FROM relation")
    types = dict(zip(relation.columns, (str(t).lower() for t in relation.types), strict=True))
    d = descriptor(table, {c: (t, "internal") for c, t in types.items()})
    publication = publish_product(catalog, d, conn, f"main.{table}", batch_id="b1", run_id="r1")
    outcome = detection(publication)
    assert publication.published, publication.error
    assert outcome.passed and outcome.metadata["hits"] == {}
    assert outcome.metadata["columns_scanned"] == sorted(c for c, t in types.items() if t != "date")


def test_tpch_phone_text_still_hits(catalog, conn, tpch):
    """The same data with TPC-H's phone column: the scan is not blind, only precise."""
    conn.execute(f"CREATE TABLE main.phones AS SELECT * FROM '{tpch / 'phones'}.parquet'")
    d = descriptor("phones", {"customer_key": ("bigint", "internal"),
                              "contact": ("varchar", "internal")})  # fmt: skip
    publication = publish_product(catalog, d, conn, "main.phones", batch_id="b1", run_id="r1")
    assert_blocked(publication, "contact", "phone", 1500)


# --- 5. the static policy: names that say personal data -------------------------------------


def violations(
    tmp_path: Path, columns: dict[str, tuple[str, str]], governance: str = ""
) -> list[Violation]:
    (tmp_path / "governance.yaml").write_text(governance)
    n = node("contacts", columns)
    d = descriptor_from_node("sales", n)
    policy_set = load_policy_set(tmp_path, known_products=[str(d.address)])
    ctx = PolicyContext("sales", [d], {str(d.address): n}, today=TODAY)
    return [v for v in evaluate_static(policy_set, ctx) if v.policy == "pii_column_names"]


def test_a_column_named_like_personal_data_but_classified_internal_blocks(tmp_path):
    (v,) = violations(tmp_path, {"k": ("bigint", "internal"),
                                 "customer_email": ("varchar", "internal")})  # fmt: skip
    assert v.blocking and v.severity == "error"
    assert (v.subject, v.column, v.file) == ("sales.contacts", "customer_email", SOURCE)
    assert "email" in v.message and "'internal'" in v.message
    assert "pii:email" in v.fix and "masking" in v.fix
    assert "governance.yaml" in v.fix and "policy: pii_column_names" in v.fix
    assert "sales.contacts" in v.fix
    line = v.line()
    assert all(s in line for s in ("pii_column_names", "sales.contacts", "customer_email", SOURCE))


def test_a_waiver_lifts_the_name_policy_for_that_product(tmp_path):
    waiver = (
        "waivers:\n  - {product: sales.contacts, policy: pii_column_names, "
        "reason: 'customer_email holds the shared support inbox', expires: 2025-12-31}\n"
    )
    (v,) = violations(tmp_path, {"customer_email": ("varchar", "internal")}, waiver)
    assert not v.blocking
    assert v.waived_by == "customer_email holds the shared support inbox"
    expired = waiver.replace("2025-12-31", "2025-05-31")
    (v,) = violations(tmp_path, {"customer_email": ("varchar", "internal")}, expired)
    assert v.blocking


@pytest.mark.parametrize(
    ("column", "kind"),
    [("e_mail", "email"), ("phone_number", "phone"), ("ssn", "national_id"),
     ("passport_no", "national_id"), ("iban", "iban"), ("card_number", "credit_card"),
     ("credit_card", "credit_card"), ("birth_date", "date_of_birth"), ("dob", "date_of_birth"),
     ("home_address", "address"), ("first_name", "name"), ("last_name", "name"),
     ("full_name", "name"), ("contact_name", "name"), ("ip_address", "ip_address"),
     ("client_ip", "ip_address"), ("email_address", "email")],
)  # fmt: skip
def test_personal_data_names_trigger_with_their_kind(tmp_path, column, kind):
    assert pii_name_kind(column) == kind
    (v,) = violations(tmp_path, {column: ("varchar", "confidential")})
    assert f"pii:{kind}" in v.fix and v.blocking


@pytest.mark.parametrize(
    "column",
    ["phonetic_code", "addressable_market", "customer_name", "supplier_name", "part_name",
     "nation_name", "email_count", "has_phone", "zip_code", "clerk", "ship_instructions",
     "phone_book_key"],
)  # fmt: skip
def test_names_that_only_contain_the_letters_do_not_trigger(tmp_path, column):
    assert pii_name_kind(column) is None
    assert violations(tmp_path, {column: ("varchar", "internal")}) == []


def test_a_nested_field_named_like_personal_data_triggers(tmp_path):
    (v,) = violations(tmp_path, {"contact": ("struct(label varchar, email varchar)", "internal")})
    assert v.column == "contact" and "'email'" in v.message and "pii:email" in v.fix


def test_columns_classified_as_personal_data_do_not_trigger(tmp_path):
    columns = {"email": ("varchar", "pii:email"), "full_name": ("varchar", "pii:name")}
    n = node("contacts", columns)
    for c in n["columns"].values():
        c["config"]["meta"]["masking"] = "hash"
    (tmp_path / "governance.yaml").write_text("")
    d = descriptor_from_node("sales", n)
    ctx = PolicyContext("sales", [d], {str(d.address): n}, today=TODAY)
    assert evaluate_static(load_policy_set(tmp_path), ctx) == []


def test_both_pii_checks_are_marked_personal_data():
    assert PiiDetection.personal_data is True
    assert PiiMaskingVerified.personal_data is True
