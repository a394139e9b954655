import duckdb
import pytest

from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError
from mesh_platform.sources.tpch import check_tables, land_tpch

SF = 0.002


def test_landing_matches_dbgen_and_is_idempotent(tmp_path):
    raw = tmp_path / "raw"
    first = land_tpch(raw, ["orders", "customer", "customer_contact", "nation"], SF)
    assert first.generated
    reference = connect(extensions=("tpch",))
    reference.execute("CALL dbgen(sf = ?)", [SF])
    for table in ("orders", "customer", "nation"):
        expected = reference.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert first.row_counts[table] == expected
        landed = duckdb.sql(f"SELECT count(*) FROM '{first.path(table)}'").fetchone()[0]
        assert landed == expected
    assert first.row_counts["customer_contact"] == first.row_counts["customer"]

    mtime = first.path("orders").stat().st_mtime_ns
    second = land_tpch(raw, ["orders", "customer", "customer_contact", "nation"], SF)
    assert not second.generated
    assert first.path("orders").stat().st_mtime_ns == mtime


def test_changed_scale_regenerates(tmp_path):
    raw = tmp_path / "raw"
    small = land_tpch(raw, ["nation", "supplier"], 0.001)
    larger = land_tpch(raw, ["nation", "supplier"], 0.01)
    assert larger.generated
    assert larger.row_counts["supplier"] > small.row_counts["supplier"]
    assert not list(tmp_path.glob(".raw-*"))  # no staging leftovers


def test_personal_data_is_deterministic_and_unique(tmp_path):
    a = land_tpch(tmp_path / "a", ["customer", "customer_contact"], SF)
    b = land_tpch(tmp_path / "b", ["customer", "customer_contact"], SF)
    query = "SELECT c_custkey, full_name, email, phone FROM '{}' ORDER BY c_custkey"
    rows_a = duckdb.sql(query.format(a.path("customer_contact"))).fetchall()
    rows_b = duckdb.sql(query.format(b.path("customer_contact"))).fetchall()
    assert rows_a == rows_b
    emails = [r[2] for r in rows_a]
    assert len(set(emails)) == len(emails)
    assert all("@" in e for e in emails)
    assert all(r[3].startswith("+1-") for r in rows_a)


def test_unknown_table_is_rejected():
    with pytest.raises(MeshError, match="orderz"):
        check_tables(["orders", "orderz"])
