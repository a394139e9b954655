"""Freshness SLA with a controlled clock: breach, recorded history, one alert per recipient,
recovery."""

from __future__ import annotations

import datetime as dt
import json
import logging

from mesh_platform.duckdb_ext import connect
from mesh_platform.sla.alerts import alert_on
from mesh_platform.sla.events import GateEvent
from mesh_platform.sla.freshness import evaluate_freshness, recorded, to_record
from mesh_platform.sla.history import read_history, record
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.testing import ORDERS, declare_orders, publish_from_duckdb

LOG = logging.getLogger("test_freshness")


def test_breach_and_recovery_with_a_controlled_clock(mesh):
    declare_orders(mesh)  # sales.orders, a Python-declared product
    yml = mesh.root / "domains/sales/products/orders.yml"
    yml.write_text(yml.read_text().replace("  version: 1.0.0\n",
                                           "  version: 1.0.0\n  sla: {freshness: {max_age: 2h}}\n"))  # fmt: skip
    conn = connect()
    conn.execute("CREATE TABLE v AS SELECT range AS order_key FROM range(10)")
    catalog = open_catalog(mesh)
    never = evaluate_freshness(mesh, "sales")
    assert [(e.published, e.detail) for e in never] == [(False, "never published (max age 2h)")]
    first = publish_from_duckdb(catalog, ORDERS, conn, "main.v", properties={})
    published = dt.datetime.now(dt.UTC)

    def tick(hours: float):
        events = evaluate_freshness(mesh, "sales", now=published + dt.timedelta(hours=hours))
        record(mesh, events, catalog)
        return events, alert_on(mesh, events, LOG)

    (fresh,), notes = tick(1)
    assert fresh.published and fresh.snapshot_id == first.snapshot_id and notes == []
    (stale,), notes = tick(3)
    assert not stale.published and "old, max age 2h" in stale.detail
    assert [(n.event, n.recipient) for n in notes] == [("freshness_breached", "team:sales")]
    _, notes = tick(4)
    assert notes == []  # still breached: the same incident, nobody told twice
    publish_from_duckdb(catalog, ORDERS, conn, "main.v", properties={})
    (recovered,), notes = tick(0.5)  # a new snapshot: fresh again
    assert recovered.published
    assert [(n.event, n.recipient) for n in notes] == [("recovered", "team:sales")]
    history = read_history(mesh, addresses=["sales.orders"])
    assert history.column("kind").to_pylist() == ["freshness"] * 4
    # (the recovery tick's clock is earlier than the breach's: history is ordered by time)
    assert sorted(history.column("passed").to_pylist()) == [False, False, True, True]
    alerts = [json.loads(line) for line in
              (mesh.state_dir / "alerts/alerts.jsonl").read_text().splitlines()]  # fmt: skip
    assert [a["event"] for a in alerts] == ["freshness_breached", "recovered"]
    catalog.engine.dispose()


def _evaluation(at: dt.datetime, fresh: bool, snapshot: int | None, address="sales.orders"):
    return GateEvent(at, address, "sla_monitor", fresh, snapshot, {"freshness": fresh},
                     () if fresh else ("freshness",), None, 0.0, "", kind="freshness")  # fmt: skip


def test_the_monitor_records_a_change_of_freshness_not_every_tick(mesh):
    """Each tick of each domain's monitor was a commit of mesh.sla_history under its one lock;
    an unchanged evaluation is now recorded once an hour, a change at once."""
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    minutes = lambda n: t0 + dt.timedelta(minutes=n)  # noqa: E731

    def tick(*events):
        chosen = to_record(mesh, "sales", events)
        recorded(mesh, "sales", chosen)
        return [(e.address, e.published, e.snapshot_id) for e in chosen]

    assert tick(_evaluation(t0, False, None)) == [("sales.orders", False, None)]  # first
    assert tick(_evaluation(minutes(5), False, None)) == []  # the same: not again
    assert tick(_evaluation(minutes(10), True, 7), _evaluation(minutes(10), True, 1, "sales.c")) \
        == [("sales.orders", True, 7), ("sales.c", True, 1)]  # fmt: skip
    assert tick(_evaluation(minutes(15), True, 8)) == [("sales.orders", True, 8)]  # new snapshot
    assert tick(_evaluation(minutes(20), False, 8)) == [("sales.orders", False, 8)]  # stale
    assert tick(_evaluation(minutes(79), False, 8)) == []
    assert tick(_evaluation(minutes(80), False, 8)) == [("sales.orders", False, 8)]  # an hour on
    assert to_record(mesh, "logistics", [_evaluation(t0, True, 1)])  # each domain its own
    state = mesh.state_dir / "sla" / "freshness" / "sales.json"
    state.write_text("{not json")  # damaged: everything is recorded again, nothing lost
    assert tick(_evaluation(minutes(81), False, 8)) == [("sales.orders", False, 8)]
    assert json.loads(state.read_text())["sales.orders"]["outcome"] == [False, 8, "stale"]
