"""Freshness, evaluated continuously: is a fresh published snapshot of each product available?

Each domain's code location has a sensor (``<domain>_sla_monitor``, :mod:`mesh_platform.
orchestration`) that evaluates its products every few minutes: the age of main's snapshot
against the descriptor's ``max_age``. A product whose snapshot cannot be read (the catalog
is locked or down, its metadata unreadable) is not called stale: its evaluation has status
``infrastructure_error`` and alerts nobody. Every evaluation opens or closes a freshness
incident (:mod:`mesh_platform.sla.alerts`); the SLA history (kind ``freshness``) records each
change, and an unchanged evaluation hourly (:func:`to_record`).
Dagster's own freshness policy (from the same ``max_age``) shows the state on the asset.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mesh_platform.config import Mesh
from mesh_platform.errors import ProductNotPublishedError
from mesh_platform.files import write_atomically
from mesh_platform.formats import describe_duration
from mesh_platform.products.registry import load_directory
from mesh_platform.sla.events import INFRASTRUCTURE_ERROR, GateEvent
from mesh_platform.storage.metadata import Catalog

if TYPE_CHECKING:
    from mesh_platform.products.descriptor import ProductDescriptor


def evaluate_freshness(
    mesh: Mesh, domain: str, *, now: dt.datetime | None = None, run_id: str = "sla_monitor"
) -> list[GateEvent]:
    """One freshness evaluation per product of ``domain`` that declares a freshness SLA."""

    now = now or dt.datetime.now(dt.UTC)
    catalog = Catalog(mesh)
    events = []
    try:
        own = load_directory(mesh, refresh=False, domains={domain}).descriptors  # not the mesh's
        for _, d in sorted(own.items()):
            if d.domain == domain and d.body.sla.freshness is not None:
                events.append(_evaluate(catalog, d, now, run_id))
    finally:
        catalog.close()
    return events


def _evaluate(catalog: Catalog, d: ProductDescriptor, now: dt.datetime, run_id: str) -> GateEvent:
    sla = d.body.sla.freshness
    assert sla is not None
    address = str(d.address)
    try:
        current = catalog.table_state(d.address).current
    except ProductNotPublishedError:
        current = None
    except Exception as exc:  # the catalog or the metadata could not be read: unknown, not stale
        error = (str(exc).strip().splitlines() or [""])[0]
        detail = (
            f"freshness unknown: the snapshot could not be read ({type(exc).__name__}: {error})"
        )
        return GateEvent(now, address, run_id, False, None, {}, (), None, 0.0, detail[:500],
                         kind="freshness", status=INFRASTRUCTURE_ERROR)  # fmt: skip
    if current is None:
        fresh, snapshot, detail = False, None, f"never published (max age {sla.max_age})"
    else:
        published = dt.datetime.fromtimestamp(current.timestamp_ms / 1000, dt.UTC)
        age = now - published
        fresh, snapshot = age <= sla.timedelta, current.snapshot_id
        detail = f"snapshot {snapshot} is {describe_duration(age)} old, max age {sla.max_age}"
    failed = () if fresh else ("freshness",)
    return GateEvent(now, address, run_id, fresh, snapshot, {"freshness": fresh}, failed, None,
                     0.0, detail, kind="freshness")  # fmt: skip


# An unchanged evaluation is recorded again after this long: the history shows the monitor ran.
RECORD_UNCHANGED_AFTER = dt.timedelta(hours=1)


def _outcome(event: GateEvent) -> list:
    return [event.published, event.snapshot_id, event.status]


def to_record(mesh: Mesh, domain: str, events: Sequence[GateEvent]) -> list[GateEvent]:
    """The evaluations worth a row of the SLA history: a product's first, one whose outcome
    (fresh, snapshot, status) changed since the last recorded, and an unchanged one an hour
    after the last. Every tick of every domain's monitor was an Iceberg commit of
    ``mesh.sla_history`` under its one lock (at 50 domains the monitors queued for it; at 500,
    100 commits a minute): now a mesh whose products stay fresh commits hourly per domain.
    Alerts see every evaluation all the same. What was recorded is kept per domain in
    ``<state>/sla/freshness/<domain>.json`` (call :func:`recorded` once written)."""
    last = _recorded_state(mesh, domain)
    chosen = []
    for event in events:
        before = last.get(event.address)
        if (
            before is None
            or before.get("outcome") != _outcome(event)
            or event.recorded_at - dt.datetime.fromisoformat(before["at"]) >= RECORD_UNCHANGED_AFTER
        ):
            chosen.append(event)
    return chosen


def recorded(mesh: Mesh, domain: str, events: Sequence[GateEvent]) -> None:
    """Remember ``events`` as the domain's last recorded evaluations (after record_safely)."""
    if not events:
        return
    state = _recorded_state(mesh, domain)
    for event in events:
        state[event.address] = {"outcome": _outcome(event), "at": event.recorded_at.isoformat()}
    path = _state_path(mesh, domain)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(state, indent=1, sort_keys=True) + "\n")


def _state_path(mesh: Mesh, domain: str):
    return mesh.state_dir / "sla" / "freshness" / f"{domain}.json"


def _recorded_state(mesh: Mesh, domain: str) -> dict[str, dict]:
    try:
        state = json.loads(_state_path(mesh, domain).read_text())
    except (OSError, ValueError):  # none yet, or damaged: record everything again
        return {}
    return state if isinstance(state, dict) else {}
