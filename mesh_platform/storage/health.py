"""What keeps a product's table healthy between publications: audit branches that expire,
metadata files that do not pile up, and a version hint that path-based readers follow.

- **Audit branches expire.** Every audit branch carries Iceberg's ``max-ref-age-ms`` (the
  mesh's ``tables.rejected_batch_retention``, default 24 h), so engines that honour ref
  retention drop it on their own, and it is set again on every commit to the branch (pyiceberg
  0.12 writes a branch's ref without its retention when it commits to it). A published batch's
  branch is dropped in the commit that fast-forwards main; a blocked batch's stays, readable by
  any engine given the warehouse, only until it is older than its expiry: the next publication
  of the product (:func:`drop_expired_batches`, under the product's lock) or ``mesh maintain``
  removes it with its snapshots and files. A batch blocked for personal data is never kept
  (:mod:`mesh_platform.storage.quarantine`).
- **Metadata files are bounded.** :data:`HEALTH_PROPERTIES` turn on Iceberg's
  ``write.metadata.delete-after-commit.enabled`` with ``write.metadata.previous-versions-max``:
  pyiceberg 0.12 honours both on commit (``Table._do_commit`` deletes the files that leave the
  metadata log; measured), so a table keeps at most that many previous metadata files, the
  catalog's previous pointer being the newest of them. ``mesh maintain`` removes what a writer
  without the properties left (files outside the log and the pointers).
- **Path readers find the current metadata.** A catalog knows where a table's current metadata
  is; a reader given only the table's folder does not. :func:`write_version_hint` writes
  ``metadata/version-hint.text`` naming the current metadata file (without
  ``.metadata.json``), atomically, after every publication: DuckDB's
  ``iceberg_scan('<table folder>')`` reads it with its default ``version_name_format``
  (``%s%s.metadata.json``). A path reader reads main's snapshot of that file, never an audit
  branch (branches are refs it does not follow).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from mesh_platform.addressing import ProductAddress
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import load_product_table
from mesh_platform.storage.quarantine import Quarantine, quarantine_batch

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table, Transaction

AUDIT_PREFIX = "audit-"
DEFAULT_REJECTED_RETENTION = timedelta(hours=24)
METADATA_VERSIONS_KEPT = 20
HEALTH_PROPERTIES = {
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": str(METADATA_VERSIONS_KEPT),
}
VERSION_HINT = "version-hint.text"


def branch_expiry_ms(retention: timedelta) -> int:
    """An audit branch's ``max-ref-age-ms``: the retention of a blocked batch (at least 1 ms)."""
    return max(1, int(retention.total_seconds() * 1000))


def keep_branch_expiry(tx: Transaction, branch: str, max_ref_age_ms: int) -> None:
    """Set ``branch``'s expiry again inside ``tx``, after the transaction's commits to it
    (pyiceberg rewrites the ref of a branch it commits to without its retention). The
    transaction's own requirement on the ref (its head before the commit) is kept."""
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.table.update.snapshot import ManageSnapshots

    ref = tx.table_metadata.refs.get(branch)
    if ref is None:
        return
    with ManageSnapshots(tx) as refs:
        refs.create_branch(ref.snapshot_id, branch, max_ref_age_ms=max_ref_age_ms)


def version_hint_location(table_location: str) -> str:
    return warehouse.join(table_location, "metadata", VERSION_HINT)


def write_version_hint(table: Table) -> str:
    """Write ``metadata/version-hint.text`` naming ``table``'s current metadata file; its
    location. Local: a temporary file renamed over the old hint (a reader sees the old name or
    the new one, never half of one); an object store's PUT is atomic by itself."""
    name = table.metadata_location.rsplit("/", 1)[-1].removesuffix(".metadata.json")
    location = version_hint_location(table.location())
    if warehouse.is_remote(location):
        with table.io.new_output(location).create(overwrite=True) as out:
            out.write(name.encode())
        return location
    path = warehouse.local_path(location)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".version-hint-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(name)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return location


@dataclass(frozen=True)
class ExpiredBatch:
    """An audit branch past its expiry, and what removing it removed."""

    branch: str
    removed: Quarantine


def expired_audit_branches(
    table: Table, retention: timedelta, *, now_ms: int | None = None, keep: str = ""
) -> list[str]:
    """The table's audit branches (``keep`` aside) whose head is older than the branch's
    ``max-ref-age-ms`` (``retention`` for a branch written before branches carried one). A
    branch still at a snapshot of main's history staged nothing: maintenance judges it."""
    # heavy: pyiceberg (~2 s), only when a batch is written or maintained
    from pyiceberg.table.snapshots import ancestors_of

    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    main_line = {s.snapshot_id for s in ancestors_of(table.current_snapshot(), table.metadata)}
    expired = []
    for name, ref in sorted(table.metadata.refs.items()):
        if not name.startswith(AUDIT_PREFIX) or name == keep or ref.snapshot_id in main_line:
            continue
        head = table.snapshot_by_id(ref.snapshot_id)
        age = ref.max_ref_age_ms if ref.max_ref_age_ms is not None else branch_expiry_ms(retention)
        if head is None or head.timestamp_ms + age < now_ms:
            expired.append(name)
    return expired


def drop_expired_batches(
    catalog: SqlCatalog,
    address: ProductAddress,
    retention: timedelta,
    *,
    keep: str = "",
    now_ms: int | None = None,
) -> list[ExpiredBatch]:
    """Remove the blocked batches of ``address`` kept past their expiry: their branches, their
    snapshots and their files (quarantine_batch; main untouched). The caller holds the product's
    lock (write-audit-publish does, before staging its own batch ``keep``)."""
    # heavy: pyiceberg (~2 s), only when a batch is written or maintained
    from pyiceberg.exceptions import CommitFailedException

    table = load_product_table(catalog, address)
    if table is None:  # never published: nothing to drop
        return []
    dropped = []
    for branch in expired_audit_branches(table, retention, now_ms=now_ms, keep=keep):
        # A commit lost to a writer without the lock: its files are gone all the same, and
        # maintenance drops the branch; the publication goes on.
        with contextlib.suppress(CommitFailedException):
            dropped.append(ExpiredBatch(branch, quarantine_batch(catalog, address, branch)))
    return dropped
