"""Fault 5: raw landing verifies every file before use instead of trusting that it exists.

Faults are injected into a domain's raw area (the Parquet files TPC-H dbgen landed and their
``_landing.json`` manifest): a truncated file, a valid file holding 55% of lineitem, a file
rewritten to the same size with one value changed, a corrupt manifest. The landing tests call
the landing function on a tmp raw area (about a second each); two tests run the real thing on
one mesh built with `mesh build --domain sales`: `mesh build` re-lands the bad files and
publishes exactly what the fresh build published, and a run that may not regenerate (Dagster
run config ``regenerate: false``, launched with `dagster job execute`) stops naming the files
and publishes nothing.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError
from mesh_platform.sources.landing import LANDING_FILE, QUARANTINE_DIR
from mesh_platform.sources.tpch import TpchSource, land_tpch
from mesh_platform.testing import MESH, SF, build_sample_mesh, published_scan, run_mesh, user_env

pytestmark = pytest.mark.e2e  # module-scoped builds of the sample mesh

SALES_RAW = ("orders", "lineitem", "customer", "customer_contact")
SMALL_SF = 0.002  # landing tests: dbgen in about a second
PRODUCTS = ("sales.order_lines", "sales.orders", "sales.customers")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path: Path) -> int:
    conn = connect()
    try:
        return conn.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()[0]
    finally:
        conn.close()


def _same_rows(a: Path, b: Path) -> bool:
    """The two Parquet files hold the same rows (as a multiset)."""
    conn = connect()
    try:
        diff = (
            "SELECT count(*) FROM "
            "(SELECT * FROM read_parquet(?) EXCEPT ALL SELECT * FROM read_parquet(?))"
        )
        return all(
            conn.execute(diff, [str(x), str(y)]).fetchone()[0] == 0 for x, y in ((a, b), (b, a))
        )
    finally:
        conn.close()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _keep_share(path: Path, share: float) -> int:
    """Rewrite ``path`` as a valid Parquet file with only the first ``share`` of its rows."""
    keep = int(_rows(path) * share)
    tmp = path.with_name("tampered.tmp")
    conn = connect()
    try:
        conn.execute(
            f"COPY (SELECT * FROM read_parquet(?) LIMIT {keep}) TO '{tmp}' "
            "(FORMAT parquet, COMPRESSION zstd)",
            [str(path)],
        )
    finally:
        conn.close()
    tmp.replace(path)
    return keep


def _same_size_rewrite(path: Path) -> int:
    """Rewrite customer ``path`` with one account balance changed and the same byte size (and
    rows and schema): only the checksum can tell. The customer key whose balance changed."""
    size = path.stat().st_size
    tmp = path.with_name("tampered.tmp")
    conn = connect()
    try:
        for key in range(1, 200):
            conn.execute(
                "COPY (SELECT * REPLACE (CASE WHEN c_custkey = ? "
                "THEN (c_acctbal + 1)::DECIMAL(15, 2) ELSE c_acctbal END AS c_acctbal) "
                f"FROM read_parquet(?)) TO '{tmp}' "
                "(FORMAT parquet, COMPRESSION zstd)",
                [key, str(path)],
            )
            if tmp.stat().st_size == size:
                tmp.replace(path)
                return key
    finally:
        conn.close()
    pytest.fail("no same-size rewrite of customer found (DuckDB's Parquet writer changed?)")


def _quarantined(raw_dir: Path) -> dict[str, Path]:
    """Every file set aside in the raw area's quarantine, by name."""
    root = raw_dir.parent / QUARANTINE_DIR
    return {p.name: p for p in root.glob("*/*")} if root.is_dir() else {}


@pytest.fixture
def landed(tmp_path: Path) -> tuple[Path, Path]:
    """The sales raw tables landed at SMALL_SF, and a pristine copy of them (the reference)."""
    raw = tmp_path / "domain" / "raw"
    land_tpch(raw, SALES_RAW, SMALL_SF)
    reference = tmp_path / "reference"
    shutil.copytree(raw, reference)
    return raw, reference


def test_a_truncated_file_is_quarantined_and_landed_again(landed):
    raw, reference = landed
    _truncate(raw / "lineitem.parquet")
    truncated = _sha256(raw / "lineitem.parquet")
    log: list[str] = []

    landing = land_tpch(raw, SALES_RAW, SMALL_SF, log=log.append)

    assert landing.generated
    [finding] = landing.findings
    assert finding.path == raw / "lineitem.parquet"
    assert "not a readable Parquet file" in finding.problem
    moved = _quarantined(raw)
    assert finding.moved_to == moved["lineitem.parquet"]
    assert _sha256(moved["lineitem.parquet"]) == truncated  # kept as found, not deleted
    assert LANDING_FILE in moved  # with the manifest it failed against
    assert any(
        m.startswith(f"raw landing: {raw / 'lineitem.parquet'}: not a readable") for m in log
    )
    assert f"raw landing: moved {raw / 'lineitem.parquet'} to {finding.moved_to}" in log
    assert _same_rows(raw / "lineitem.parquet", reference / "lineitem.parquet")
    assert landing.row_counts["lineitem"] == _rows(reference / "lineitem.parquet")
    # the repaired landing verifies: the next build lands nothing
    assert not land_tpch(raw, SALES_RAW, SMALL_SF).generated


def test_a_valid_file_with_55_percent_of_the_rows_is_detected_and_landed_again(landed):
    raw, reference = landed
    expected = _rows(reference / "lineitem.parquet")
    kept = _keep_share(raw / "lineitem.parquet", 0.55)

    landing = land_tpch(raw, SALES_RAW, SMALL_SF)

    [finding] = landing.findings
    assert finding.problem == f"{kept:,} rows, expected {expected:,}"
    assert _rows(_quarantined(raw)["lineitem.parquet"]) == kept
    # the counts reported are the files', and the file holds every row again
    assert landing.row_counts["lineitem"] == _rows(raw / "lineitem.parquet") == expected
    assert _same_rows(raw / "lineitem.parquet", reference / "lineitem.parquet")


def test_a_same_size_rewrite_of_one_value_is_caught_by_the_checksum(landed):
    raw, reference = landed
    before = (raw / "customer.parquet").stat().st_size
    key = _same_size_rewrite(raw / "customer.parquet")
    assert (raw / "customer.parquet").stat().st_size == before
    assert _rows(raw / "customer.parquet") == _rows(reference / "customer.parquet")

    landing = land_tpch(raw, SALES_RAW, SMALL_SF)

    [finding] = landing.findings
    assert finding.path == raw / "customer.parquet"
    assert "content differs from the landing" in finding.problem
    assert "sha256" in finding.problem
    assert not _same_rows(_quarantined(raw)["customer.parquet"], reference / "customer.parquet")
    assert _same_rows(raw / "customer.parquet", reference / "customer.parquet"), key


@pytest.mark.parametrize(
    "manifest",
    [b'{"manifest_version": 2, "tables": {"orders"', b"\x00\xff garbage", b'{"tables": []}'],
    ids=["truncated-json", "binary", "old-or-foreign-format"],
)
def test_a_corrupt_manifest_is_recovered_without_a_traceback(landed, manifest):
    """Nothing vouches for the files any more: each is compared with its regenerated copy;
    identical ones are replaced, the others (here a tampered orders) quarantined."""
    raw, reference = landed
    (raw / LANDING_FILE).write_bytes(manifest)
    _keep_share(raw / "orders.parquet", 0.9)
    tampered = _sha256(raw / "orders.parquet")

    landing = land_tpch(raw, SALES_RAW, SMALL_SF)

    assert landing.generated
    assert landing.findings[0].path == raw / LANDING_FILE
    moved = _quarantined(raw)
    assert moved[LANDING_FILE].read_bytes() == manifest
    assert _sha256(moved["orders.parquet"]) == tampered
    for table in SALES_RAW:
        assert _same_rows(raw / f"{table}.parquet", reference / f"{table}.parquet"), table
    assert not land_tpch(raw, SALES_RAW, SMALL_SF).generated


@pytest.mark.parametrize("fault", ["file", "manifest"])
def test_a_source_that_cannot_regenerate_stops_naming_the_file_and_the_fix(landed, fault):
    raw, _ = landed
    if fault == "file":
        kept = _keep_share(raw / "lineitem.parquet", 0.55)
        bad = raw / "lineitem.parquet"
    else:
        (raw / LANDING_FILE).write_text("{ not json")
        bad = raw / LANDING_FILE
    as_found = {p.name: p.read_bytes() for p in raw.iterdir()}

    with pytest.raises(MeshError) as caught:
        land_tpch(raw, SALES_RAW, SMALL_SF, source=TpchSource(regenerable=False))

    message = str(caught.value)
    assert str(bad) in message
    assert "cannot regenerate" in message
    if fault == "file":
        assert f"{kept:,} rows, expected" in message
    else:
        assert "not valid JSON" in message
    assert "restore" in caught.value.fix
    # the raw area is kept exactly as found, for whoever restores it; nothing set aside
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == as_found
    assert not _quarantined(raw)


# --- end to end: one mesh, built with `mesh build --domain sales` ----------------------------


def _fingerprint(mesh: Mesh, address: str) -> tuple[int, int]:
    """(rows, order-free sum of row hashes) of the product's main snapshot, read through the
    read path's storage layer."""
    with published_scan(mesh, address) as (conn, scan, _):
        return conn.sql(f"SELECT count(*), sum(hash(t)::HUGEINT) FROM {scan} AS t").fetchone()


def _snapshot_ids(mesh: Mesh) -> dict[str, int]:
    from mesh_platform.storage.metadata import Catalog

    catalog = Catalog(mesh)
    return {
        a: catalog.table_state(ProductAddress.parse(a)).snapshot(None).snapshot_id for a in PRODUCTS
    }


@pytest.fixture(scope="module")
def sales(tmp_path_factory: pytest.TempPathFactory) -> tuple[Mesh, dict]:
    """A built mesh (sales only) and what its fresh build published: the reference."""
    mesh = build_sample_mesh(tmp_path_factory.mktemp("landing") / "mesh", "--domain", "sales")
    return mesh, {a: _fingerprint(mesh, a) for a in PRODUCTS}


def test_a_run_that_may_not_regenerate_stops_and_publishes_nothing(sales, tmp_path):
    """Launched from Dagster with ``regenerate: false`` (keep the raw area as found): the run
    fails naming the file, what is wrong and the fix; no product moves."""
    mesh, _ = sales
    lineitem = mesh.raw_dir("sales") / "lineitem.parquet"
    good = tmp_path / "lineitem.parquet"
    shutil.copy2(lineitem, good)
    kept = _keep_share(lineitem, 0.55)
    tampered = _sha256(lineitem)
    before = _snapshot_ids(mesh)
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n  sales_raw_landing:\n    config:\n"
        f"      scale_factor: {SF}\n      regenerate: false\n"
    )
    command = [Path(MESH).with_name("dagster"), "job", "execute", "-j", "sales_build"]
    command += ["-f", "domains/sales/definitions.py", "-a", "defs", "-c", str(config)]
    try:
        result = subprocess.run(
            command,
            cwd=mesh.root,
            env={**user_env(), "DAGSTER_HOME": str(mesh.dagster_home)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 1, output[-4000:]
        assert f"{lineitem}: {kept:,} rows, expected 60,175" in output, output[-4000:]
        assert "cannot regenerate" in output and "fix: restore" in output
        assert "Dependencies for step sales_dbt failed" in output  # nothing built from it
        assert _snapshot_ids(mesh) == before
        assert _sha256(lineitem) == tampered  # kept as found
        assert not _quarantined(mesh.raw_dir("sales"))
    finally:
        shutil.copy2(good, lineitem)


def test_mesh_build_relands_bad_raw_files_and_publishes_the_reference_rows(sales):
    """The reviewers' case: a truncated customer file and a valid lineitem with 55% of its rows.
    The build quarantines both, lands them again, and publishes exactly what the fresh build
    published (order_lines: 60,175 rows, not 33,000); Dagster's row counts are the files'."""
    mesh, reference = sales
    raw = mesh.raw_dir("sales")
    _truncate(raw / "customer.parquet")
    _keep_share(raw / "lineitem.parquet", 0.55)

    result = run_mesh(mesh.root, "build", "--scale", str(SF), "--domain", "sales")
    output = result.stdout + result.stderr

    assert result.returncode == 0, output[-6000:]
    moved = _quarantined(raw)
    assert {"customer.parquet", "lineitem.parquet"} <= set(moved)
    for name in ("customer.parquet", "lineitem.parquet"):  # the log says what and where
        assert f"{raw / name}: " in output and f"moved {raw / name} to {moved[name]}" in output
    assert "not a readable Parquet file" in output and "rows, expected 60,175" in output
    assert {a: _fingerprint(mesh, a) for a in PRODUCTS} == reference
    assert reference["sales.order_lines"][0] == 60_175
    recorded = re.search(r"sales/raw/lineitem\s*│\s*materialized\s*│\s*([\d,]+)", output)
    assert recorded and int(recorded[1].replace(",", "")) == _rows(raw / "lineitem.parquet")
