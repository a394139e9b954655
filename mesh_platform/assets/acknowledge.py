"""Acknowledge what was committed: batches on main that Dagster never heard of.

A run publishes a product with an Iceberg commit, then reports the materialisation to Dagster
(after every product of the step is published), and the SLA history row. A run killed between
the two leaves main at its new snapshot with no materialisation, no history row and no sensor
event: consumers never run on it, and the UI shows the product as not materialised.

The commit is the truth: every snapshot a run publishes carries its batch id and run id in its
summary (storage.wap). :func:`acknowledge_committed` walks each product's main back from its
head to the newest snapshot Dagster knows (a materialisation with its snapshot id) and reports
each snapshot in between whose run has ended, as a runless materialisation with the same
metadata a run reports (the consumers' sensors fire on it), plus its SLA history row. The
product's lock (storage.locks.product_lock) makes two acknowledgers (the next run, the SLA
monitor) take turns, and each looks again under the lock: exactly once.

Runs still going are left alone: they report their own materialisations.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.keys import product_key
from mesh_platform.assets.specs import SNAPSHOT_METADATA
from mesh_platform.products.cuts import record_cut
from mesh_platform.sla.events import GateEvent
from mesh_platform.sla.history import read_history
from mesh_platform.sla.record import record_safely
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.metadata import BATCH_PROPERTY, COMPACTION_PROPERTY, is_published

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table

    from mesh_platform.config import Mesh

ACKNOWLEDGED_LATE = "mesh/acknowledged_late"
RUN_PROPERTY = "mesh.run_id"
MAX_WALK = 50  # snapshots of main looked at per product, newest first
_ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass(frozen=True)
class Acknowledged:
    address: ProductAddress
    snapshot_id: int
    batch_id: str
    run_id: str
    rows: int | None
    committed_at: dt.datetime


def known_snapshots(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int = 200) -> set[int]:
    """The snapshot ids Dagster has materialisations of (the newest ``limit``)."""
    known = set()
    for record in instance.fetch_materializations(key, limit=limit).records:
        materialization = record.asset_materialization
        if materialization is None or SNAPSHOT_METADATA not in materialization.metadata:
            continue
        value = materialization.metadata[SNAPSHOT_METADATA].value
        if str(value).isdigit():
            known.add(int(str(value)))
    return known


def unacknowledged(
    instance: dg.DagsterInstance, table: Table, address: ProductAddress
) -> list[Acknowledged]:
    """Snapshots of main, oldest first, published by a run that has ended without reporting
    them. The walk stops at the newest snapshot Dagster knows, and at the first one that cannot
    be judged yet (its run still going, or written by a tool without a run): an older batch is
    never reported above a newer one."""
    from pyiceberg.table.snapshots import ancestors_of  # heavy: pyiceberg (~3 s)

    known = known_snapshots(instance, product_key(address))
    missing: list[Acknowledged] = []
    seen: set[str] = set()
    main_line = ancestors_of(table.current_snapshot(), table.metadata)
    for snapshot in itertools.islice(main_line, MAX_WALK):
        if snapshot.snapshot_id in known or not is_published(snapshot):
            break
        summary = snapshot.summary or {}
        if summary.get(COMPACTION_PROPERTY):  # a rewrite of main by `mesh maintain`: no batch
            continue
        run_id, batch_id = summary.get(RUN_PROPERTY), summary.get(BATCH_PROPERTY)
        if batch_id not in seen:  # a batch that replaced rows commits two snapshots: its head
            run = instance.get_run_by_id(run_id) if run_id and batch_id else None
            if run is None or run.status not in _ENDED:
                break
            seen.add(batch_id)
            rows = summary.get("total-records")
            missing.append(
                Acknowledged(
                    address,
                    snapshot.snapshot_id,
                    batch_id,
                    run_id,
                    int(rows) if rows and rows.isdigit() else None,
                    dt.datetime.fromtimestamp(snapshot.timestamp_ms / 1000, dt.UTC),
                )
            )
    return missing[::-1]


def acknowledge_committed(
    instance: dg.DagsterInstance,
    mesh: Mesh,
    domain: str,
    log: Any,
    catalog: SqlCatalog | None = None,
) -> list[Acknowledged]:
    """Report every committed-but-unreported batch of ``domain``'s products (see module).

    Per batch, under the product's lock: its history row (unless the dead run wrote it), its
    cut marker, then the materialisation, last, because it is what marks the batch as known: a
    crash in between leaves the batch to be acknowledged again, never half-done and forgotten."""

    own = catalog is None
    catalog = catalog or open_catalog(mesh)
    done: list[Acknowledged] = []
    try:
        if (domain,) not in catalog.list_namespaces():
            return []
        for _, name in catalog.list_tables(domain):
            address = ProductAddress.parse(f"{domain}.{name}")
            table = catalog.load_table(address.iceberg_identifier)
            if not unacknowledged(instance, table, address):
                continue  # the common case: no lock taken
            with product_lock(catalog, address):
                table = catalog.load_table(address.iceberg_identifier)
                for item in unacknowledged(instance, table, address):  # again, under the lock
                    _acknowledge(instance, mesh, item, log)
                    done.append(item)
    finally:
        if own:
            catalog.engine.dispose()
    return done


def _acknowledge(instance: dg.DagsterInstance, mesh: Mesh, item: Acknowledged, log: Any) -> None:

    history = read_history(mesh, since=item.committed_at, addresses=[str(item.address)])
    if not any(
        r["run_id"] == item.run_id and r["snapshot_id"] == item.snapshot_id
        for r in history.select(["run_id", "snapshot_id"]).to_pylist()
    ):
        event = GateEvent(
            recorded_at=dt.datetime.now(dt.UTC),
            address=str(item.address),
            run_id=item.run_id,
            published=True,
            snapshot_id=item.snapshot_id,
            checks={},
            failed=(),
            rows=item.rows,
            seconds=0.0,
            detail=f"acknowledged late: committed by run {item.run_id}, which ended before "
            "reporting it",
        )
        record_safely(mesh, [event], log)
    # What the dead run committed is a cut of its own (products.cuts), dated by its commit:
    # consumers that need only these products may read them; others skip the run.
    record_cut(
        mesh, item.address.domain, item.run_id, f"acknowledged-{item.address.table}",
        {str(item.address): item.snapshot_id}, at=item.committed_at,
    )  # fmt: skip
    instance.report_runless_asset_event(_materialization(item))
    log.warning(
        f"{item.address}: snapshot {item.snapshot_id} (batch {item.batch_id}) was committed by "
        f"run {item.run_id}, which ended before reporting it: recorded now"
    )


def _materialization(item: Acknowledged) -> dg.AssetMaterialization:
    metadata: dict[str, Any] = {
        "mesh/address": str(item.address),
        SNAPSHOT_METADATA: str(item.snapshot_id),
        "mesh/batch_id": item.batch_id,
        "mesh/run_id": item.run_id,
        ACKNOWLEDGED_LATE: True,
    }
    if item.rows is not None:
        metadata["dagster/row_count"] = item.rows
    return dg.AssetMaterialization(
        asset_key=product_key(item.address),
        description=f"Snapshot {item.snapshot_id}, published by run {item.run_id} (which ended "
        "before reporting it), recorded by the platform.",
        metadata=metadata,
    )
