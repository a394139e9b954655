"""Which files an Iceberg table still references, and the folders deleted files leave empty:
what maintenance and quarantine must keep, and what they may tidy (no pyiceberg import: the
table objects are handed in)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from mesh_platform.storage import warehouse

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot


def referenced_files(table: Table, *, exclude: Collection[int] = ()) -> set[str]:
    """Every file the table's metadata still references (data, manifests, lists, metadata),
    spelled as ``warehouse.normalise`` does (local: resolved paths; object store: URLs);
    the files of the snapshots in ``exclude`` only if another snapshot references them."""
    files = {table.metadata_location}
    files |= {entry.metadata_file for entry in table.metadata.metadata_log}
    for snapshot in table.snapshots():
        if snapshot.snapshot_id not in exclude:
            files |= snapshot_files(table, snapshot)
    return {warehouse.normalise(f) for f in files}


def snapshot_files(table: Table, snapshot: Snapshot) -> set[str]:
    """A snapshot's manifest list, manifests and data files (raw spellings)."""
    io = table.io
    files = {snapshot.manifest_list}
    for manifest in snapshot.manifests(io):
        files.add(manifest.manifest_path)
        for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
            files.add(entry.data_file.file_path)
    return files


def remove_empty_folders(table_location: str, deleted: Iterable[str]) -> None:
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
