"""Freshness SLA with a controlled clock: breach, recorded history, one alert per recipient,
recovery."""

from __future__ import annotations

import datetime as dt
import json
import logging

from mesh_platform.duckdb_ext import connect
from mesh_platform.sla.alerts import alert_on
from mesh_platform.sla.freshness import evaluate_freshness
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
