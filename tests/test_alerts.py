"""SLA alerts: one notification per recipient per incident (opening and recovery), to the owner
and every consumer domain, through the log, file and webhook sinks (a loopback server)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from mesh_platform.config import load_mesh
from mesh_platform.sla.alerts import alert_on, recipients
from mesh_platform.sla.events import GateEvent

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
LOG = logging.getLogger("test_alerts")


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def webhook():
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", _Hook.received
    server.shutdown()


def _mesh(prepared_mesh, tmp_path, url):
    # The shared copy's dbt manifests (read-only) with this test's own state.
    return load_mesh(
        prepared_mesh.root,
        state_dir=tmp_path / "state",
        alerts={"sinks": [{"type": "log"}, {"type": "file"}, {"type": "webhook", "url": url}]},
    )


def _event(minutes: int, published: bool, run: str) -> GateEvent:
    return GateEvent(
        T0 + dt.timedelta(minutes=minutes), "sales.customers", run, published,
        7 if published else None, {"expectations": published},
        () if published else ("expectations",), 10, 0.1,
    )  # fmt: skip


def test_recipients_are_the_owner_and_every_consumer_domain(prepared_mesh):
    assert recipients(prepared_mesh, "sales.customers") == [
        ("team:sales", "sales-data@example.com"),
        ("marketing", None),
    ]
    assert recipients(prepared_mesh, "marketing.customer_segments") == [
        ("team:marketing", "marketing-analytics@example.com")  # its Python consumer is its own
    ]


def test_one_notification_per_recipient_per_incident(prepared_mesh, tmp_path, webhook):
    url, received = webhook
    mesh = _mesh(prepared_mesh, tmp_path, url)
    first = alert_on(mesh, [_event(0, False, "run-1")], LOG)
    retry = alert_on(mesh, [_event(5, False, "run-2")], LOG)  # the same incident, retried
    fixed = alert_on(mesh, [_event(10, True, "run-3")], LOG)
    quiet = alert_on(mesh, [_event(15, True, "run-4")], LOG)  # nothing open: nothing to say
    assert [(n.event, n.recipient) for n in first] == [
        ("gate_failed", "team:sales"), ("gate_failed", "marketing"),
    ]  # fmt: skip
    assert retry == [] and quiet == []
    assert [(n.event, n.recipient) for n in fixed] == [
        ("recovered", "team:sales"), ("recovered", "marketing"),
    ]  # fmt: skip
    assert [(r["event"], r["recipient"]) for r in received] == [
        ("gate_failed", "team:sales"), ("gate_failed", "marketing"),
        ("recovered", "team:sales"), ("recovered", "marketing"),
    ]  # fmt: skip
    assert len({r["incident"] for r in received}) == 1
    assert "expectations" in received[0]["cause"] and received[0]["contact"]
    lines = (mesh.state_dir / "alerts" / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == received  # the file sink got the same
    again = alert_on(mesh, [_event(20, False, "run-5")], LOG)  # a new incident
    assert len(again) == 2 and again[0].incident != first[0].incident


def test_a_failing_sink_does_not_stop_the_others(prepared_mesh, tmp_path, caplog):
    mesh = _mesh(prepared_mesh, tmp_path, "http://127.0.0.1:9/unreachable")
    with caplog.at_level(logging.INFO, logger="test_alerts"):
        notes = alert_on(mesh, [_event(0, False, "run-1")], LOG)
    assert len(notes) == 2
    assert "webhook sink failed" in caplog.text
    assert "SLA alert [gate_failed] sales.customers -> team:sales" in caplog.text
    assert len((mesh.state_dir / "alerts" / "alerts.jsonl").read_text().splitlines()) == 2
    # delivery was attempted once: a retry of the run does not resend
    assert alert_on(mesh, [_event(5, False, "run-2")], LOG) == []


def test_an_infrastructure_error_tells_consumers_the_previous_snapshot_is_still_served(
    prepared_mesh, tmp_path, webhook
):
    """A publication the platform failed (publish_products' wording) is not a failed gate:
    consumers hear that the previous snapshot is still served, the owner gets the cause."""
    from mesh_platform.products.publish import Publication
    from mesh_platform.products.registry import load_directory

    url, received = webhook
    mesh = _mesh(prepared_mesh, tmp_path, url)
    descriptor = load_directory(mesh).descriptors["sales.customers"]
    failed = Publication(
        descriptor, error="publication to Iceberg failed: [Errno 28] No space left on device"
    )
    event = GateEvent.of(failed, "run-1", at=T0)
    assert event.status == "infrastructure_error" and event.infrastructure_error
    notes = alert_on(mesh, [event], LOG)
    assert [(n.event, n.recipient) for n in notes] == [
        ("infrastructure_error", "team:sales"), ("infrastructure_error", "marketing"),
    ]  # fmt: skip
    owner, consumer = (n.cause for n in notes)
    assert consumer == "not published: infrastructure error, previous snapshot still served"
    assert "No space left on device" in owner and "mesh build --domain sales" in owner
    assert "check" not in consumer and "blocked" not in owner
    assert [r["cause"] for r in received] == [owner, consumer]
    retry = GateEvent.of(failed, "run-2", at=T0 + dt.timedelta(minutes=5))
    assert alert_on(mesh, [retry], LOG) == []  # the same incident: told once
    fixed = alert_on(mesh, [_event(10, True, "run-3")], LOG)
    assert [n.event for n in fixed] == ["recovered", "recovered"]
    assert fixed[0].incident == notes[0].incident


def test_a_freshness_evaluation_that_could_not_read_the_catalog_alerts_nobody(
    prepared_mesh, tmp_path
):
    mesh = _mesh(prepared_mesh, tmp_path, "http://127.0.0.1:9/unused")
    unknown = GateEvent(T0, "sales.customers", "sla_monitor", False, None, {}, (), None, 0.0,
                        "freshness unknown: the snapshot could not be read (OperationalError)",
                        kind="freshness", status="infrastructure_error")  # fmt: skip
    assert alert_on(mesh, [unknown], LOG) == []
    stale = GateEvent(T0, "sales.customers", "sla_monitor", False, 7, {"freshness": False},
                      ("freshness",), None, 0.0, "snapshot 7 is 30.0 h old",
                      kind="freshness")  # fmt: skip
    assert [n.event for n in alert_on(mesh, [stale], LOG)] == ["freshness_breached"] * 2
    assert alert_on(mesh, [unknown], LOG) == []  # nor closes an open one
