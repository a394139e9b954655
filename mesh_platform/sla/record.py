"""Record the gate's events in the SLA history, then alert: the one call every publisher makes.

Never raises: the products are already published (or blocked) when their history is written,
and a history or alert failure must not undo that; each failure is logged with its fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mesh_platform.config import Mesh
from mesh_platform.products.platform import HISTORY
from mesh_platform.sla.alerts import alert_on
from mesh_platform.sla.events import GateEvent
from mesh_platform.sla.history import record, summarize_events


def record_safely(
    mesh: Mesh,
    events: Iterable[GateEvent],
    log: Any,
    catalog: Any = None,
    *,
    record_only: Iterable[GateEvent] | None = None,
) -> bool:
    """record(), then alert owners and consumers (mesh_platform.sla.alerts); logs instead of
    raising: the products are already published (or blocked) when their history is written,
    and a history or alert failure must not undo that. ``record_only``: the events to write
    to the history (all by default); the alerts see all of them. Returns whether those are
    kept: written, or journaled for the next writer."""
    events = list(events)
    to_write = events if record_only is None else list(record_only)
    kept = True
    try:
        outcome = record(mesh, to_write, catalog)  # none: only what the journal holds
        if outcome.error:
            log.warning(
                f"SLA history: {HISTORY} refused {len(to_write)} event(s) ({outcome.error}); kept "
                f"in {outcome.journal} ({outcome.journaled} waiting), written by the next run or "
                "`mesh sla` (fix: check the catalog and the warehouse)"
            )
        elif outcome.replayed:
            log.info(f"SLA history: {outcome.replayed} journaled event(s) written to {HISTORY}")
        for path in outcome.unreadable:
            log.error(
                f"SLA history: journal file {path} cannot be read, its events are not in "
                f"{HISTORY} (fix: inspect it, then delete it)"
            )
    except Exception as exc:  # MeshError: not even journaled; anything else: a bug, said so
        log.error(
            f"SLA history: could not record {len(to_write)} event(s) in {HISTORY}: {exc} "
            f"({summarize_events(to_write)})"
        )
        kept = False
    try:
        alert_on(mesh, events, log)
    except Exception as exc:
        log.error(f"SLA alerts: could not evaluate incidents: {exc}")
    return kept
