"""Table maintenance: expire old snapshots, drop stale audit branches, remove orphan files;
quarantine a blocked batch that holds personal data.

Orphans are files under a table's location that no live snapshot or metadata references: left by
a publisher killed mid-write, or freed by expiring snapshots. Only files older than a safety
margin are removed, so a publication in flight (whose files are not committed yet) is never hit.

A batch blocked by an ordinary check stays on its audit branch for inspection until
:func:`maintain` drops it. A batch blocked because it holds personal data is quarantined at once
(:func:`quarantine_batch`): kept, its clear values would be readable by any engine given the
warehouse, in its data files and in the column bounds of its manifests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import ManifestEntryStatus
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


def referenced_files(table: Table, *, exclude: Collection[int] = ()) -> set[str]:
    """Every file the table's metadata still references (data, manifests, lists, metadata),
    spelled as ``warehouse.normalise`` does (local: resolved paths; object store: URLs);
    the files of the snapshots in ``exclude`` only if another snapshot references them."""
    io = table.io
    files = {table.metadata_location}
    files |= {entry.metadata_file for entry in table.metadata.metadata_log}
    for snapshot in table.snapshots():
        if snapshot.snapshot_id in exclude:
            continue
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


@dataclass(frozen=True)
class Quarantine:
    """What quarantining a batch removed (never what the batch held)."""

    address: ProductAddress
    branch: str
    snapshot_ids: tuple[int, ...]  # the batch's snapshots, expired from the table's metadata
    deleted_files: tuple[str, ...]  # its data files, manifests and manifest lists


QUARANTINE_ATTEMPTS = 3


def quarantine_batch(
    catalog: SqlCatalog,
    address: ProductAddress,
    branch: str,
    data_files: Iterable[str] = (),
    *,
    attempts: int = QUARANTINE_ATTEMPTS,
) -> Quarantine:
    """Remove a blocked batch from the warehouse now: drop its audit branch, expire the
    snapshots it committed, delete the data files it added and the manifests and manifest
    lists written for it (their column bounds are values of its rows).

    Main is untouched: only snapshots off main's history are expired, only files no other
    snapshot references are deleted (a manifest the batch carried over from main is main's).
    Metadata JSON files stay (they hold no column values). ``data_files``: the files the batch
    wrote, deleted even if the commit that would have registered them never happened. The
    caller holds the product's lock (iceberg.product_lock), so main does not move meanwhile;
    a commit lost to another writer (``mesh maintain`` takes no lock) is retried. If the
    metadata still cannot be changed, the files are deleted all the same (the branch is left
    unreadable, for maintenance to drop) and CommitFailedException is raised.
    """
    table = catalog.load_table(address.iceberg_identifier)
    main_line: set[int] = set()
    snapshot = table.current_snapshot()
    while snapshot is not None:
        main_line.add(snapshot.snapshot_id)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None

    batch = []
    ref = table.metadata.refs.get(branch)
    current = ref.snapshot_id if ref is not None else None
    while current is not None and current not in main_line:
        snapshot = table.snapshot_by_id(current)
        if snapshot is None:
            break
        batch.append(snapshot)
        current = snapshot.parent_snapshot_id
    ids = {s.snapshot_id for s in batch}

    written = set(data_files)
    for snapshot in batch:
        written.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.added_snapshot_id not in ids:
                continue  # carried over from main
            written.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                # ADDED: written by the batch; EXISTING and DELETED entries are main's files
                if entry.status == ManifestEntryStatus.ADDED:
                    written.add(entry.data_file.file_path)

    failure: CommitFailedException | None = None
    for attempt in range(1, attempts + 1):
        try:
            table = catalog.load_table(address.iceberg_identifier)
            if branch in table.metadata.refs:
                with table.manage_snapshots() as refs:
                    refs.remove_branch(branch)
                table = catalog.load_table(address.iceberg_identifier)
            if left := sorted(i for i in ids if table.snapshot_by_id(i) is not None):
                table.maintenance.expire_snapshots().by_ids(left).commit()
            failure = None
            break
        except CommitFailedException as exc:
            failure = exc
            time.sleep(random.uniform(0.05, 0.2) * attempt)

    table = catalog.load_table(address.iceberg_identifier)
    live = referenced_files(table, exclude=ids)
    deleted = sorted(f for f in written if warehouse.normalise(f) not in live)
    for location in deleted:
        warehouse.delete(location, table.io.properties)
    _remove_empty_folders(table.location(), deleted)
    if failure is not None:
        raise failure
    return Quarantine(address, branch, tuple(sorted(ids)), tuple(deleted))


def _remove_empty_folders(table_location: str, deleted: Iterable[str]) -> None:
    """Local warehouse: remove the folders the deleted files leave empty, up to the table's
    data/ and metadata/ folders (a partitioned batch's folder names carry partition values)."""
    if warehouse.is_remote(table_location):
        return  # object stores have no folders
    root = warehouse.local_path(table_location).resolve()
    keep = {root, root / "data", root / "metadata"}
    for location in deleted:
        folder = warehouse.local_path(location).resolve().parent
        while folder not in keep and folder.is_relative_to(root):
            try:
                folder.rmdir()
            except OSError:  # not empty (another batch's files) or gone
                break
            folder = folder.parent
