"""Freshness, evaluated continuously: is a fresh published snapshot of each product available?

Each domain's code location has a sensor (``<domain>_sla_monitor``, :mod:`mesh_platform.
orchestration`) that evaluates its products every few minutes: the age of main's snapshot
against the descriptor's ``max_age``. Every evaluation is recorded in the SLA history (kind
``freshness``) and opens or closes a freshness incident (:mod:`mesh_platform.sla.alerts`).
Dagster's own freshness policy (from the same ``max_age``) shows the state on the asset.
"""

from __future__ import annotations

import datetime as dt

from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.sla.history import GateEvent


def _hours(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


def evaluate_freshness(
    mesh: Mesh, domain: str, *, now: dt.datetime | None = None, run_id: str = "sla_monitor"
) -> list[GateEvent]:
    """One freshness evaluation per product of ``domain`` that declares a freshness SLA."""
    from mesh_platform.query.directory import Catalog, load_directory

    now = now or dt.datetime.now(dt.UTC)
    catalog = Catalog(mesh)
    events = []
    try:
        for address, d in sorted(load_directory(mesh, refresh=False).descriptors.items()):
            sla = d.body.sla.freshness
            if d.domain != domain or sla is None:
                continue
            try:
                current = catalog.table_state(d.address).current
            except MeshError:
                current = None
            if current is None:
                fresh, snapshot, detail = False, None, f"never published (max age {sla.max_age})"
            else:
                published = dt.datetime.fromtimestamp(current.timestamp_ms / 1000, dt.UTC)
                age = now - published
                fresh, snapshot = age <= sla.timedelta, current.snapshot_id
                detail = f"snapshot {snapshot} is {_hours(age)} old, max age {sla.max_age}"
            events.append(
                GateEvent(now, address, run_id, fresh, snapshot, {"freshness": fresh},
                          () if fresh else ("freshness",), None, 0.0, detail, kind="freshness")
            )  # fmt: skip
    finally:
        catalog.close()
    return events
