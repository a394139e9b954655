"""SLA attainment and error budgets, computed from known histories (a controlled clock)."""

import datetime as dt

import pytest

from mesh_platform.sla.attainment import (
    Attainment,
    attainment,
    freshness_attainment,
    quality_attainment,
)
from mesh_platform.testing import ORDERS, declare_orders

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)


def test_freshness_is_the_covered_share_of_the_window():
    published = [T0 + 40 * H, T0, T0 + 10 * H]  # any order
    share, breach = freshness_attainment(published, 24 * H, T0, T0 + 48 * H)
    # fresh [0h, 34h) and [40h, 48h): 42 of 48 hours; stale from 34h to 40h
    assert share == pytest.approx(42 / 48)
    assert breach.kind == "freshness" and breach.at == T0 + 34 * H
    assert "stale for 6.0 h" in breach.cause


def test_freshness_recovers_and_a_final_gap_counts_until_now():
    share, breach = freshness_attainment([T0], 24 * H, T0, T0 + 36 * H)
    assert share == pytest.approx(24 / 36)
    assert breach.at == T0 + 24 * H and "12.0 h" in breach.cause


def test_freshness_is_measured_from_the_first_publication_inside_the_window():
    share, breach = freshness_attainment([T0 + 12 * H], 24 * H, T0, T0 + 24 * H)
    assert share == 1.0 and breach is None
    assert freshness_attainment([], 24 * H, T0, T0 + 24 * H) == (None, None)
    # a window that ends before the first publication measures nothing
    assert freshness_attainment([T0 + 30 * H], 24 * H, T0, T0 + 24 * H) == (None, None)


def test_snapshots_before_the_window_still_cover_its_start():
    share, _ = freshness_attainment([T0 - 20 * H], 24 * H, T0, T0 + 8 * H)
    assert share == pytest.approx(4 / 8)


def test_quality_is_the_share_of_gate_runs_that_published():
    runs = [(T0 + i * H, i != 3, f"run {i}") for i in range(10)]
    share, total, failed, breach = quality_attainment(runs)
    assert (share, total, failed) == (0.9, 10, 1)
    assert breach.at == T0 + 3 * H and breach.cause == "run 3"
    assert quality_attainment([]) == (None, 0, 0, None)


def test_error_budget_left_against_the_target():
    assert Attainment.budget_left(0.99, 0.95) == pytest.approx(0.8)  # spent 1% of 5%
    assert Attainment.budget_left(0.9, 0.95) == pytest.approx(-1.0)  # overspent twice
    assert Attainment.budget_left(1.0, 1.0) == 1.0
    assert Attainment.budget_left(0.5, 1.0) == -float("inf")
    assert Attainment.budget_left(None, 0.99) is None


def test_attainment_combines_both_and_reports_the_latest_breach():
    runs = [(T0 + 2 * H, True, ""), (T0 + 30 * H, False, "gate failed: expectations")]
    result = attainment(
        "sales.orders",
        published=[T0, T0 + 2 * H],
        max_age=24 * H,
        runs=[*runs, (T0 - 5 * H, False, "before the window")],
        since=T0,
        until=T0 + 48 * H,
        freshness_target=0.9,
        quality_target=0.95,
    )
    assert result.freshness == pytest.approx(26 / 48)
    assert (result.runs, result.failed_runs, result.quality) == (2, 1, 0.5)
    assert result.last_breach.kind == "quality" and result.last_breach.at == T0 + 30 * H
    assert not result.met
    no_sla = attainment("x.y", published=[T0], max_age=None, runs=[], since=T0,
                        until=T0 + H, freshness_target=0.99, quality_target=0.95)  # fmt: skip
    assert no_sla.freshness is None and no_sla.quality is None and no_sla.met


def test_history_round_trip(mesh):
    from mesh_platform.sla.events import GateEvent
    from mesh_platform.sla.history import read_history, record

    events = [
        GateEvent(T0 + i * H, "sales.orders", f"run-{i}", i != 1, None if i == 1 else i,
                  {"expectations": i != 1}, ("expectations",) if i == 1 else (), 10 * i, 0.5)
        for i in range(3)
    ]  # fmt: skip
    record(mesh, events[:2])
    record(mesh, events[2:])  # appends
    history = read_history(mesh)
    assert history.column("passed").to_pylist() == [True, False, True]
    assert history.column("failed_checks").to_pylist() == ["", "expectations", ""]
    later = read_history(mesh, since=T0 + H, addresses=["sales.orders"])
    assert later.column("run_id").to_pylist() == ["run-1", "run-2"]
    assert read_history(mesh, addresses=["logistics.parts"]).num_rows == 0


_OLD_COLUMNS = 12  # mesh.sla_history as first written: no event_id, no status


def test_a_history_table_of_the_older_schema_gains_ids_and_a_status(mesh):
    """Rows written before ``status`` existed read with a derived one (an old publication that
    raised is an infrastructure error, not a blocked batch); the next append evolves the table."""
    import pyarrow as pa

    from mesh_platform.products.platform import HISTORY
    from mesh_platform.sla.events import GateEvent
    from mesh_platform.sla.history import _schema, read_history, record
    from mesh_platform.storage.catalog import ensure_namespace, open_catalog

    old = pa.schema(list(_schema())[:_OLD_COLUMNS])
    rows = [
        ("gate", True, True, ""),
        ("gate", False, False, "not published: expectations failed"),
        ("gate", False, False, "publication to Iceberg failed: database is locked"),
        ("freshness", False, False, "snapshot 1 is 30.0 h old, max age 24h"),
    ]
    catalog = open_catalog(mesh)
    ensure_namespace(catalog, "mesh")
    table = catalog.create_table(HISTORY.iceberg_identifier, schema=old)
    table.append(pa.Table.from_pylist([
        {"recorded_at": T0 + i * H, "kind": kind, "address": "sales.orders", "run_id": f"old-{i}",
         "published": published, "passed": passed, "failed_checks": "", "checks": "{}",
         "seconds": 0.1, "detail": detail}
        for i, (kind, published, passed, detail) in enumerate(rows)
    ], schema=old))  # fmt: skip
    assert read_history(mesh).column("status").to_pylist() == [
        "published", "blocked", "infrastructure_error", "stale",
    ]  # fmt: skip
    record(mesh, [GateEvent(T0 + 5 * H, "sales.orders", "new", True, 3, {}, (), 1, 0.1)])
    evolved = catalog.load_table(HISTORY.iceberg_identifier)
    assert evolved.schema().find_field("status") and evolved.schema().find_field("event_id")
    history = read_history(mesh)
    assert history.column("status").to_pylist()[-1] == "published"
    assert history.column("event_id").to_pylist()[:4] == [None] * 4
    assert history.column("event_id").to_pylist()[-1].startswith("gate:sales.orders:new:")
    catalog.engine.dispose()


def test_quality_counts_what_the_gate_judged_only(mesh):
    """A publication the platform failed and a freshness evaluation are not gate runs: they
    neither count against the quality budget nor as runs."""
    from mesh_platform.sla.events import INFRASTRUCTURE_ERROR, GateEvent
    from mesh_platform.sla.history import record
    from mesh_platform.sla.report import product_attainment

    declare_orders(mesh)
    record(mesh, [
        GateEvent(T0, "sales.orders", "r1", True, 1, {}, (), 10, 0.1),
        GateEvent(T0 + H, "sales.orders", "r2", False, None, {"expectations": False},
                  ("expectations",), 10, 0.1, "not published: expectations failed"),
        GateEvent(T0 + 2 * H, "sales.orders", "r3", False, None, {}, (), None, 0.1,
                  "publication to Iceberg failed: [Errno 28] No space left on device"),
        GateEvent(T0 + 3 * H, "sales.orders", "sla_monitor", False, None, {}, (), None, 0.0,
                  "freshness unknown", kind="freshness", status=INFRASTRUCTURE_ERROR),
        GateEvent(T0 + 4 * H, "sales.orders", "sla_monitor", False, 1, {"freshness": False},
                  ("freshness",), None, 0.0, "stale", kind="freshness"),
    ])  # fmt: skip
    (orders,) = product_attainment(mesh, since=24 * H, now=T0 + 12 * H)
    assert (orders.runs, orders.failed_runs, orders.quality) == (2, 1, 0.5)
    assert orders.last_breach.cause == "gate failed: expectations"


def test_a_freshness_evaluation_that_cannot_read_the_snapshot_is_unknown_not_stale(mesh):
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.sla.freshness import evaluate_freshness
    from mesh_platform.storage.catalog import open_catalog
    from mesh_platform.storage.warehouse import local_path
    from mesh_platform.testing import publish_from_duckdb

    declare_orders(mesh)
    yml = mesh.root / "domains/sales/products/orders.yml"
    yml.write_text(yml.read_text().replace("  version: 1.0.0\n",
                                           "  version: 1.0.0\n  sla: {freshness: {max_age: 2h}}\n"))  # fmt: skip
    conn = connect()
    conn.execute("CREATE TABLE v AS SELECT range AS order_key FROM range(10)")
    catalog = open_catalog(mesh)
    publish_from_duckdb(catalog, ORDERS, conn, "main.v", properties={})
    metadata = local_path(catalog.load_table(ORDERS.iceberg_identifier).metadata_location)
    good = metadata.read_bytes()
    metadata.write_text("{not json")  # unreadable metadata: nothing is known of its age
    (unknown,) = evaluate_freshness(mesh, "sales")
    assert unknown.status == "infrastructure_error" and not unknown.failed
    assert unknown.detail.startswith("freshness unknown: the snapshot could not be read")
    metadata.write_bytes(good)
    (fresh,) = evaluate_freshness(mesh, "sales")
    assert fresh.status == "fresh" and fresh.published
    catalog.engine.dispose()
