"""Quarantine: a blocked batch that holds personal data leaves the warehouse at once.

A batch the gate blocks stays on its audit branch for inspection until ``mesh maintain`` drops
it. A batch blocked because it holds personal data cannot wait: kept, its clear values would be
readable by any engine given the warehouse, in its data files and in the column bounds of its
manifests. :func:`quarantine_batch` removes it (write-audit-publish calls it, still holding the
product's lock).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh_platform.addressing import ProductAddress
from mesh_platform.storage import warehouse
from mesh_platform.storage.references import referenced_files, remove_empty_folders

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.exceptions import CommitFailedException


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
    caller holds the product's lock (locks.product_lock), so main does not move meanwhile;
    a commit lost to another writer (one without the lock: a catalog that has none) is
    retried. If the metadata still cannot be changed, the files are deleted all the same (the
    branch is left unreadable, for maintenance to drop) and CommitFailedException is raised.
    """
    # heavy: pyiceberg (~2 s), only when a batch is quarantined
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.manifest import ManifestEntryStatus
    from pyiceberg.table.snapshots import ancestors_of

    table = catalog.load_table(address.iceberg_identifier)
    main_line = {s.snapshot_id for s in ancestors_of(table.current_snapshot(), table.metadata)}
    ref = table.metadata.refs.get(branch)
    head = table.snapshot_by_id(ref.snapshot_id) if ref is not None else None
    # The branch's own snapshots: its head and parents down to main's history (a walk stops
    # at a parent that is gone).
    batch = list(
        itertools.takewhile(
            lambda s: s.snapshot_id not in main_line, ancestors_of(head, table.metadata)
        )
    )
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
    remove_empty_folders(table.location(), deleted)
    if failure is not None:
        raise failure
    return Quarantine(address, branch, tuple(sorted(ids)), tuple(deleted))
