"""Usage and cost per product (`mesh usage`, `mesh describe`, the HTML catalog) against the
session's build of the sample mesh.

Reads come from real queries through QuerySession, as a few principals (one without a grant,
one whose SQL fails): counted exactly on a private audit log, and as differences on the built
mesh's own log, which other test modules append to. Bytes and snapshots are compared with the
files on disk and pyiceberg's view of the table; build times with Dagster's run history.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from mesh_platform.access.principals import AccessDeniedError
from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.discovery.html import write_catalog
from mesh_platform.discovery.usage import size
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError
from mesh_platform.products.usage import audit_path, read_usage
from mesh_platform.query.audit import AuditLog
from mesh_platform.query.engine import QuerySession
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.metadata import Catalog, data_files
from mesh_platform.testing import audit_lines, run_mesh

pytestmark = pytest.mark.e2e

ORDERS, CUSTOMERS = "sales.orders", "sales.customers"
LIMIT = 7
STAGING = "dbt run: stage consumed products"  # the line of a consumer's dbt run (dbt/inputs.py)
READ = f"SELECT order_key FROM sales.orders LIMIT {LIMIT}"
JOIN = (
    "SELECT count(*) AS n FROM sales.orders AS o JOIN sales.customers AS c "
    "ON o.customer_key = c.customer_key"
)


def _queries(mesh: Mesh, audit: AuditLog | None = None) -> None:
    """marketing reads orders twice and joins it with customers once, logistics reads it
    once, user:alice (no grant) is denied twice, and marketing's misspelt column fails."""
    for principal, reads in (("marketing", 2), ("logistics", 1)):
        with QuerySession(principal, mesh=mesh, audit=audit) as session:
            for _ in range(reads):
                assert session.sql(READ).num_rows == LIMIT
    with QuerySession("marketing", mesh=mesh, audit=audit) as session:
        assert session.sql(JOIN).num_rows == 1
        with pytest.raises(MeshError):
            session.sql("SELECT no_such_column FROM sales.orders")
    with QuerySession("user:alice", mesh=mesh, audit=audit) as session:
        for _ in range(2):
            with pytest.raises(AccessDeniedError):
                session.sql(READ)


def _usage_json(mesh: Mesh, *args: str) -> dict:
    result = run_mesh(mesh.root, "usage", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _reads(report: dict, address: str) -> dict:
    (product,) = [p for p in report["products"] if p["address"] == address]
    return product["reads"]


def test_reads_per_product_from_the_audit_log(sample_build, tmp_path):
    log = tmp_path / "queries.jsonl"
    _queries(sample_build, AuditLog(log))
    # marketing's build staged its inputs: one line for all, each product's rows in it
    staging = next(e for e in audit_lines(sample_build) if e.get("query") == STAGING)
    (staged,) = [p["rows"] for p in staging["products"] if p["address"] == ORDERS]
    assert 0 < staged < staging["rows"]
    with log.open("a") as out:
        out.write(json.dumps(staging) + "\n")
    usage = read_usage(log)
    orders, customers = usage.of(ORDERS), usage.of(CUSTOMERS)
    assert (orders.ok, orders.denied, orders.failed) == (5, 2, 1)
    assert orders.readers == 2  # marketing, logistics: a denied principal does not read
    assert [(r.principal, r.queries) for r in orders.top_readers] == [
        ("marketing", 4),
        ("logistics", 1),
    ]
    assert orders.rows == 3 * LIMIT + 1 + staged  # the join's one row counts for both
    assert (customers.ok, customers.denied, customers.failed) == (2, 0, 0)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    last_ok = max(e["at"] for e in lines if e.get("status") == "ok")
    assert orders.last_read == dt.datetime.fromisoformat(last_ok)
    never = usage.of("logistics.parts")
    assert (never.queries, never.readers, never.rows, never.last_read) == (0, 0, 0, None)
    assert usage.corrupt == 0 and usage.lines == len(lines)

    # the window: nothing was read after now
    later = read_usage(log, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    assert later.of(ORDERS).queries == 0 and later.lines == len(lines)

    # a query killed mid-way (its start on record, no outcome) counts as failed; a damaged line
    # and a last line cut by a crash are skipped and counted, the figures stay
    started = next(e for e in lines if e.get("status") == "started")
    with log.open("a") as out:
        out.write(json.dumps({**started, "id": "killed"}) + "\n")
        out.write('{"at": "2026-12-0\x00\x00 garbage\n')
        out.write(json.dumps(lines[-1])[:40])
    damaged = read_usage(log)
    assert damaged.corrupt == 2 and damaged.lines == len(lines) + 3
    again = damaged.of(ORDERS)
    assert (again.ok, again.denied, again.failed, again.rows) == (5, 2, 2, orders.rows)


def test_mesh_usage_reports_reads_build_time_bytes_and_snapshots(sample_build):
    before = _usage_json(sample_build, ORDERS)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    _queries(sample_build)
    after = _usage_json(sample_build, ORDERS)
    delta = {
        k: _reads(after, ORDERS)[k] - _reads(before, ORDERS)[k]
        for k in ("ok", "denied", "failed", "rows_returned")
    }
    assert delta == {"ok": 4, "denied": 2, "failed": 1, "rows_returned": 3 * LIMIT + 1}
    reads = _reads(after, ORDERS)
    assert dt.datetime.fromisoformat(reads["last_read"]) >= started
    readers = {r["principal"] for r in reads["top_readers"]}
    assert {"marketing", "logistics"} <= readers and "user:alice" not in readers
    assert reads["distinct_readers"] >= 2
    assert after["audit_log"]["path"] == str(audit_path(sample_build))

    (product,) = after["products"]
    storage, builds = product["storage"], product["builds"]
    address = ProductAddress.parse(ORDERS)
    state = Catalog(sample_build).table_state(address)
    conn = connect(extensions=("avro",))
    try:
        files = data_files(conn, state, state.snapshot())
    finally:
        conn.close()
    assert storage["snapshot_id"] == state.current.snapshot_id
    assert storage["data_files"] == len(files)
    assert storage["published_bytes"] == sum(os.path.getsize(f) for f in files) > 0
    table = open_catalog(sample_build).load_table(address.iceberg_identifier)
    assert storage["snapshots_kept"] == len(table.metadata.snapshots) >= 1

    # built once by the session's build: its step's and its publication's durations
    assert builds["materializations"] >= 1
    assert 0 < builds["publish_seconds_last"] <= builds["build_seconds_last"]
    assert builds["build_seconds_median"] > 0
    built_at = dt.datetime.fromisoformat(builds["last_built"])
    assert abs(built_at.timestamp() - state.current.timestamp_ms / 1000) < 600


def test_usage_table_describe_and_catalog_show_it(sample_build, tmp_path):
    _queries(sample_build)
    table = run_mesh(sample_build.root, "usage", "--days", "7")
    assert table.returncode == 0, table.stderr
    assert "last 7 days" in table.stdout and "audit log:" in table.stdout
    rows = [line for line in table.stdout.splitlines() if ORDERS in line]
    assert rows and "never built" not in rows[0] and "not published" not in rows[0]
    assert "Traceback" not in table.stderr

    text = run_mesh(sample_build.root, "describe", ORDERS)
    assert text.returncode == 0, text.stderr
    described = run_mesh(sample_build.root, "describe", ORDERS, "--format", "json")
    usage = json.loads(described.stdout)["usage"]
    reads = usage["reads"]
    assert reads["ok"] >= 4 and reads["denied"] >= 2 and reads["failed"] >= 1
    assert f"{reads['queries']:,} queries in 30 days" in text.stdout
    assert f"{reads['distinct_readers']} reader(s)" in text.stdout
    assert f"{usage['storage']['snapshots_kept']} snapshot(s) kept" in text.stdout
    assert f"details: mesh usage {ORDERS}" in text.stdout

    page = write_catalog(sample_build, tmp_path / "site").read_text()
    article = page[page.index(f'<article class="product" id="product-{ORDERS}"') :]
    article = article[: article.index("</article>")]
    assert '<section class="card usage">' in article
    assert f'<dd class="queries">{reads["queries"]} ({reads["ok"]} ok,' in article
    published = usage["storage"]["published_bytes"]
    assert f"{size(published)} in {usage['storage']['data_files']} file(s)" in article
    assert "marketing" in article[article.index('class="readers"') :]


def test_an_unknown_address_gets_the_closest_one(sample_build):
    result = run_mesh(sample_build.root, "usage", "sales.ordrs")
    assert result.returncode == 1
    assert (
        "no product sales.ordrs" in result.stderr and "did you mean sales.orders" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_damaged_audit_log_is_reported_not_fatal(mesh: Mesh):
    log = audit_path(mesh)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text('{"at": "2026-12-03T00:00:00+00:00", "event": "login"}\nnot json\n{"at"')
    result = run_mesh(mesh.root, "usage")
    assert result.returncode == 0, result.stderr
    assert "2 line(s) of the audit log are not audit records" in result.stderr
    report = json.loads(run_mesh(mesh.root, "usage", "--format", "json").stdout)
    assert report["audit_log"] == {"path": str(log), "lines": 3, "corrupt_lines_skipped": 2}
    assert report["products"]  # the platform's own product, never read nor built here
    for product in report["products"]:
        assert product["reads"]["queries"] == 0 and product["builds"]["materializations"] == 0
