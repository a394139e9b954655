"""Table maintenance: expire old snapshots, drop stale audit branches, remove orphan files.

Orphans are files under a table's location that no live snapshot or metadata references: left by
a publisher killed mid-write, or freed by expiring snapshots. Only files older than a safety
margin are removed, so a publication in flight (whose files are not committed yet) is never hit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from mesh_platform.addressing import ProductAddress
from mesh_platform.storage import warehouse

AUDIT_PREFIX = "audit-"


@dataclass
class MaintenanceReport:
    address: ProductAddress
    expired_snapshots: list[int] = field(default_factory=list)
    removed_branches: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    dry_run: bool = False


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata still references (data, manifests, lists, metadata),
    spelled as ``warehouse.normalise`` does (local: resolved paths; object store: URLs)."""
    io = table.io
    files = {table.metadata_location}
    files |= {entry.metadata_file for entry in table.metadata.metadata_log}
    for snapshot in table.snapshots():
        files.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            files.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                files.add(entry.data_file.file_path)
    return {warehouse.normalise(f) for f in files}


def maintain(
    catalog: SqlCatalog,
    address: ProductAddress,
    *,
    retain: timedelta,
    keep_last: int = 5,
    orphan_margin: timedelta = timedelta(hours=1),
    dry_run: bool = False,
    now: float | None = None,
) -> MaintenanceReport:
    """Expire snapshots older than ``retain`` (keeping main's last ``keep_last``), drop audit
    branches older than ``retain``, then remove orphan files older than ``orphan_margin``."""
    now_ms = int((now if now is not None else time.time()) * 1000)
    report = MaintenanceReport(address, dry_run=dry_run)
    table = catalog.load_table(address.iceberg_identifier)
    cutoff = now_ms - int(retain.total_seconds() * 1000)

    stale = [
        name
        for name, ref in table.metadata.refs.items()
        if name.startswith(AUDIT_PREFIX)
        and table.snapshot_by_id(ref.snapshot_id).timestamp_ms < cutoff
    ]
    report.removed_branches = stale
    if stale and not dry_run:
        with table.manage_snapshots() as refs:
            for name in stale:
                refs.remove_branch(name)
        table = catalog.load_table(address.iceberg_identifier)

    keep: set[int] = set()
    snapshot = table.current_snapshot()
    while snapshot is not None and len(keep) < keep_last:
        keep.add(snapshot.snapshot_id)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    heads = {ref.snapshot_id for ref in table.metadata.refs.values()}
    expire = [
        s.snapshot_id
        for s in table.snapshots()
        if s.timestamp_ms < cutoff and s.snapshot_id not in keep | heads
    ]
    report.expired_snapshots = expire
    if expire and not dry_run:
        table.maintenance.expire_snapshots().by_ids(expire).commit()
        table = catalog.load_table(address.iceberg_identifier)

    live = referenced_files(table)
    # File ages are always judged on the real clock: `now` only shifts snapshot retention.
    margin_cutoff = time.time() - orphan_margin.total_seconds()
    for location, mtime in warehouse.list_files(table.location(), table.io.properties):
        if location not in live and mtime < margin_cutoff:
            report.orphan_files.append(location)
            if not dry_run:
                warehouse.delete(location, table.io.properties)
    return report
