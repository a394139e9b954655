import hashlib
import json

import duckdb
import pytest

from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError
from mesh_platform.sources.landing import LANDING_FILE, read_manifest
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


def test_the_manifest_records_each_file_as_written(tmp_path):
    landing = land_tpch(tmp_path / "raw", ["nation", "customer", "customer_contact"], SF)
    manifest, problem = read_manifest(tmp_path / "raw")
    assert problem is None
    assert manifest.tables == landing.files
    for table, landed in manifest.tables.items():
        path = landing.path(table)
        assert landed.file == path.name
        assert landed.size_bytes == path.stat().st_size
        assert landed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        described = duckdb.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()
        assert landed.columns == {name: kind for name, kind, *_ in described}
        assert landed.rows == duckdb.sql(f"SELECT count(*) FROM '{path}'").fetchone()[0]


def test_a_landing_from_before_verification_is_landed_again(tmp_path):
    """A manifest of the first format (row counts only) vouches for nothing: the files are
    landed again, and the next call verifies them."""
    raw = tmp_path / "raw"
    first = land_tpch(raw, ["nation", "region"], SF)
    old = {"generator": "duckdb-tpch-dbgen", "generator_version": 1, "scale_factor": SF}
    (raw / LANDING_FILE).write_text(json.dumps({**old, "row_counts": first.row_counts}))
    upgraded = land_tpch(raw, ["nation", "region"], SF)
    assert upgraded.generated
    assert "predates verified landings" in upgraded.findings[0].problem
    assert upgraded.row_counts == first.row_counts
    assert not land_tpch(raw, ["nation", "region"], SF).generated


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
