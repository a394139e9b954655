"""The production profile on real servers: PostgreSQL (Debian's package) for the Dagster instance
and the Iceberg catalog, an S3 API server (moto_server) for the warehouse, both on loopback and
started by scripts/services.sh (idempotent; .ci/run starts them too).

Each test gets its own database and warehouse prefix. The sample mesh is built end to end on the
profile through the `mesh` command, queried across domains, read by an independent engine
straight from the object store. The write-path reliability tests (concurrent and killed
publishers) run against PostgreSQL in tests/test_wap.py, parametrised over both profiles.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.warehouse import configure_duckdb, s3_properties
from mesh_platform.testing import MESH, SF, copy_mesh, drop_profile, fresh_profile, why
from mesh_platform.urls import pg_connect_args

pytestmark = pytest.mark.production


def run_mesh(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}
    return subprocess.run(
        [MESH, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**base, **env, "COLUMNS": "1000"},
        cwd=root,
        check=False,
    )


# -- the sample mesh end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def built(services, tmp_path_factory):
    root = copy_mesh(tmp_path_factory.mktemp("production") / "mesh")
    env = fresh_profile(services)
    result = run_mesh(root, env, "build", "--scale", str(SF))
    yield root, env, result
    drop_profile(services, env)


def _mesh(root: Path, env: dict[str, str], monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_mesh(root)


def test_the_sample_mesh_builds_on_postgresql_and_object_storage(built, monkeypatch):
    import psycopg2

    root, env, result = built
    assert result.returncode == 0, why(result)
    mesh = _mesh(root, env, monkeypatch)
    # the catalog rows are in PostgreSQL, every file in the bucket, nothing in the local state
    conn = psycopg2.connect(**pg_connect_args(env["MESH_CATALOG__URI"]))
    with conn.cursor() as cursor:
        cursor.execute("SELECT table_namespace || '.' || table_name, metadata_location "
                       "FROM iceberg_tables")  # fmt: skip
        tables = dict(cursor.fetchall())
    conn.close()
    assert {"sales.orders", "logistics.nations_v2", "marketing.segment_summary",
            "mesh.sla_history"} <= set(tables)  # fmt: skip
    assert all(loc.startswith(env["MESH_CATALOG__WAREHOUSE"] + "/") for loc in tables.values())
    assert not (mesh.state_dir / "catalog" / "catalog.db").exists()
    assert not [p for p in (mesh.state_dir / "warehouse").rglob("*") if p.is_file()]
    # the Dagster instance keeps its runs in PostgreSQL, and dagster.yaml holds no credential
    config = (mesh.dagster_home / "dagster.yaml").read_text()
    assert "MESH_POSTGRES_URL" in config and env["MESH_POSTGRES_URL"] not in config
    instance = dg.DagsterInstance.from_config(str(mesh.dagster_home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    runs = instance.get_runs()
    assert sorted(r.tags.get("mesh/domain") for r in runs) == ["logistics", "marketing", "sales"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert not list(mesh.dagster_home.glob("history/runs/*.db"))  # no sqlite run storage


def test_an_independent_engine_reads_the_products_from_the_object_store(built, monkeypatch):
    """DuckDB's own iceberg extension, on the table metadata in S3 (no platform read path),
    reads the rows the platform's query API serves to the owner."""
    from mesh_platform.query.engine import QuerySession

    root, env, result = built
    assert result.returncode == 0, why(result)
    mesh = _mesh(root, env, monkeypatch)
    catalog = open_catalog(mesh)
    conn = connect(extensions=("iceberg",))
    configure_duckdb(conn, s3_properties(mesh))
    for address in ("sales.orders", "logistics.shipments", "marketing.revenue_by_nation_segment"):
        table = catalog.load_table(tuple(address.split(".")))
        independent = conn.execute(
            f"SELECT count(*), sum(hash(t)) FROM iceberg_scan('{table.metadata_location}') t"
        ).fetchone()
        with QuerySession(address.split(".")[0], mesh=mesh) as owner:
            served = owner.sql(f"SELECT count(*) AS n, sum(hash(t)) AS h FROM {address} t")
        assert independent == (served.column("n")[0].as_py(), served.column("h")[0].as_py())
        assert independent[0] > 0


def test_federated_query_joins_domains_under_grants_on_the_production_profile(built):
    import json

    root, env, result = built
    assert result.returncode == 0, why(result)
    joined = run_mesh(root, env, "query", "--as", "marketing", "--format", "json",
                      "SELECT n.region, count(*) AS customers FROM sales.customers c "
                      "JOIN logistics.nations_v2 n USING (nation_key) GROUP BY ALL")  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    rows = json.loads(joined.stdout)
    assert len(rows) == 5 and sum(r["customers"] for r in rows) == 1500  # TPC-H SF 0.01
    # masks and grants hold on this profile too: carol (cleared for phones) sees them in clear,
    # marketing has no grant on the phone column
    carol = run_mesh(root, env, "query", "--as", "user:carol", "--format", "json",
                     "SELECT phone FROM sales.customers LIMIT 3")  # fmt: skip
    assert carol.returncode == 0, carol.stderr
    assert all("***" not in r["phone"] for r in json.loads(carol.stdout))
    denied = run_mesh(root, env, "query", "--as", "marketing", "SELECT phone FROM sales.customers")
    assert denied.returncode == 1 and "phone" in denied.stderr
    assert env["AWS_SECRET_ACCESS_KEY"] not in denied.stderr + joined.stderr


def test_doctor_reports_every_server(built):
    root, env, _ = built
    result = run_mesh(root, env, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ("profile: production", "Dagster instance storage", "Iceberg catalog",
                     "bucket mesh-warehouse", ": ok"):  # fmt: skip
        assert expected in result.stdout
    password = env["MESH_POSTGRES_URL"].split(":")[2].split("@")[0]
    assert password not in result.stdout + result.stderr


# -- bad configuration: a clear error at start-up, never a secret ----------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "password authentication failed"),
        ("unreachable database", "PostgreSQL 127.0.0.1:1/"),
        ("missing bucket", "bucket no-such-bucket at http://127.0.0.1:"),
        ("unreachable endpoint", "bucket mesh-warehouse at http://127.0.0.1:1"),
        ("missing variable", "MESH_POSTGRES_URL (the Dagster instance's PostgreSQL) is not set"),
    ],
)
def test_a_broken_profile_fails_at_start_up_naming_what_was_tried(services, tmp_path, request,
                                                                  case, expected):  # fmt: skip
    env = fresh_profile(services)
    original = dict(env)
    request.addfinalizer(lambda: drop_profile(services, original))
    secret = env["MESH_POSTGRES_URL"].split(":")[2].split("@")[0]
    if case == "wrong password":
        for key in ("MESH_POSTGRES_URL", "MESH_CATALOG__URI"):
            env[key] = env[key].replace(f":{secret}@", ":not-the-password@")
        secret = "not-the-password"
    elif case == "unreachable database":
        for key in ("MESH_POSTGRES_URL", "MESH_CATALOG__URI"):
            env[key] = re.sub(r"@127\.0\.0\.1:\d+/", "@127.0.0.1:1/", env[key])  # any port
    elif case == "missing bucket":
        env["MESH_CATALOG__WAREHOUSE"] = "s3://no-such-bucket/wh"
    elif case == "unreachable endpoint":
        env["MESH_S3_ENDPOINT"] = "http://127.0.0.1:1"
    else:
        env.pop("MESH_POSTGRES_URL")
    root = copy_mesh(tmp_path / "mesh")
    for command in (("build", "--domain", "sales", "--scale", str(SF)),
                    ("query", "--as", "sales", "SELECT count(*) FROM sales.orders")):  # fmt: skip
        result = run_mesh(root, env, *command)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output[-2000:]
        assert expected in output, output[-2000:]
        assert "Traceback" not in output
        assert secret not in output and env["AWS_SECRET_ACCESS_KEY"] not in output
