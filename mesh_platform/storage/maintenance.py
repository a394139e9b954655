"""Table maintenance: expire old snapshots, drop stale audit branches, remove orphan files.

Maintenance must never hurt a reader or a writer, so :func:`maintain`:

- takes the product's publication lock (``locks.product_lock``: ``flock`` on a sqlite catalog,
  an advisory lock on PostgreSQL). While a publisher of the product is in write-audit-publish,
  maintenance waits a bounded time and otherwise leaves the product alone, reported as skipped
  ("publication in progress, run again"): it never races a publication;
- under the lock no publisher of the product is mid-flight, so an audit branch it finds was left
  by a finished run (a blocked batch, kept for inspection until its head is older than the
  branch's ``max-ref-age-ms``, or ``rejected_retention`` for a branch written without one:
  storage.health) or by a dead one (a branch still at a snapshot of main's history: created,
  nothing staged, dropped at once); a dropped branch's own snapshots are expired with it, so
  its files go as orphans;
- never deletes a file reachable from a catalog pointer (the row's metadata location and
  previous metadata location, the snapshot current in the latter: a reader may have just
  resolved it), the metadata log, or any snapshot that stays (every ref's history, the
  ``protect`` ids, main's last ``keep_last``). After listing the table's folder it reads the
  catalog row again: if the table moved meanwhile (a writer that does not take the lock),
  nothing of that product is deleted;
- deletes unreferenced files only when older than ``orphan_margin`` (at least
  :data:`MIN_ORPHAN_MARGIN`, see there), and only inside the table's own warehouse folder.

It sets the metadata-retention properties a table lacks and writes its version hint (never an
orphan): storage.health.

A dry run takes the lock too and reports exactly what a real run would remove: the branches, the
snapshots, and the orphan files, counting those that expiring and dropping branches would free.

A blocked batch stays on its audit branch for inspection until :func:`maintain` drops it (a batch
blocked because it holds personal data is quarantined at once instead:
:mod:`mesh_platform.storage.quarantine`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.serializers import FromInputFile
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of
from sqlalchemy.exc import SQLAlchemyError

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import ConcurrentPublishError, MeshError, UnreadableMetadataError
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import CatalogRow, catalog_row
from mesh_platform.storage.health import (
    AUDIT_PREFIX,
    DEFAULT_REJECTED_RETENTION,
    HEALTH_PROPERTIES,
    version_hint_location,
    write_version_hint,
)
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.references import (
    referenced_files,
    remove_empty_folders,
    snapshot_files,
)

T = TypeVar("T")

# The shortest orphan margin maintenance accepts: the time a publisher may hold a product's lock
# before the others call it stuck (locks.PRODUCT_LOCK_TIMEOUT). The lock already keeps
# maintenance away from a live write-audit-publish; the margin is the second line of defence,
# for writers the lock cannot see: a publisher whose PostgreSQL session (and so its advisory
# lock) dropped while it still writes, a tool writing into the warehouse without the lock, an
# object store's clock ahead of this host's. A file younger than this may be about to be
# committed; one older is either referenced or left by a run that is dead or stuck.
MIN_ORPHAN_MARGIN = timedelta(minutes=15)
DEFAULT_ORPHAN_MARGIN = timedelta(hours=1)
DEFAULT_LOCK_WAIT = timedelta(seconds=60)  # how long to wait for a publication to finish


class MaintenanceError(MeshError):
    """A product's table cannot be maintained (its catalog row cannot be read, its location is
    outside its folder, a file cannot be deleted). Unreadable metadata: UnreadableMetadataError."""


@dataclass
class MaintenanceReport:
    """What maintenance removed from one product (a dry run: what it would remove)."""

    address: ProductAddress
    expired_snapshots: list[int] = field(default_factory=list)
    removed_branches: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    dry_run: bool = False
    branch_reasons: dict[str, str] = field(default_factory=dict)  # branch -> why removed/kept
    kept_branches: list[str] = field(default_factory=list)  # audit branches spared
    table_location: str = ""
    skipped: str | None = None  # why the product was left untouched (run again)
    set_properties: list[str] = field(default_factory=list)  # health properties it lacked

    def orphan_counts(self) -> dict[str, int]:
        """Orphan files by the table folder they are in: ``data``, ``metadata`` (or ``other``)."""
        counts: dict[str, int] = {}
        root = warehouse.normalise(self.table_location) if self.table_location else ""
        for location in self.orphan_files:
            relative = location.removeprefix(root).lstrip("/")
            kind = relative.split("/", 1)[0] if "/" in relative else "other"
            kind = kind if kind in ("data", "metadata") else "other"
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def check_orphan_margin(margin: timedelta) -> None:
    """Refuse a margin below :data:`MIN_ORPHAN_MARGIN` (MeshError naming the floor)."""
    if margin < MIN_ORPHAN_MARGIN:
        raise MeshError(
            f"orphan margin {margin} is below the safe floor of {MIN_ORPHAN_MARGIN}: a file that "
            "young may belong to a publication about to commit it",
            fix=f"use an orphan margin of at least {_minutes(MIN_ORPHAN_MARGIN)}",
        )


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)}m"


def maintain(
    catalog: SqlCatalog,
    address: ProductAddress,
    *,
    retain: timedelta,
    keep_last: int = 5,
    orphan_margin: timedelta = DEFAULT_ORPHAN_MARGIN,
    dry_run: bool = False,
    now: float | None = None,
    protect: Collection[int] = (),
    lock_wait: timedelta = DEFAULT_LOCK_WAIT,
    rejected_retention: timedelta = DEFAULT_REJECTED_RETENTION,
) -> MaintenanceReport:
    """Drop stale audit branches, expire snapshots older than ``retain`` (keeping main's last
    ``keep_last``, every ref's head and the ``protect`` ids), then remove orphan files older
    than ``orphan_margin``: all under the product's publication lock (see the module's doc).

    A product whose lock stays busy for ``lock_wait`` (a publication in progress), or whose
    table moved during maintenance, is returned with ``skipped`` set and nothing deleted.
    Raises (nothing of the product changed or deleted): UnreadableMetadataError, its metadata,
    a manifest list or a manifest cannot be read; MaintenanceError, its catalog row cannot be
    read or its location is outside its folder; MeshError, an orphan margin below
    MIN_ORPHAN_MARGIN. ``now`` shifts snapshot and branch retention only (tests).
    ``rejected_retention``: how long a blocked batch's branch written without an expiry stays.
    """
    check_orphan_margin(orphan_margin)
    report = MaintenanceReport(address, dry_run=dry_run)
    with contextlib.ExitStack() as stack:
        try:
            exclusive = stack.enter_context(
                product_lock(catalog, address, timeout=lock_wait.total_seconds())
            )
        except ConcurrentPublishError:
            report.skipped = (
                f"publication in progress (its lock stayed busy for {lock_wait.total_seconds():g}s)"
                "; nothing changed, run again"
            )
            return report
        try:
            _maintain_locked(
                catalog, address, report, exclusive=exclusive, retain=retain,
                keep_last=keep_last, orphan_margin=orphan_margin, now=now, protect=protect,
                rejected_retention=rejected_retention,
            )  # fmt: skip
        except NoSuchTableError:
            report.skipped = "no longer in the catalog (dropped meanwhile)"
        except CommitFailedException as exc:
            report.orphan_files = []
            report.skipped = (
                f"the table changed while it was maintained ({exc}); nothing deleted, run again"
            )
    return report


def _maintain_locked(
    catalog: SqlCatalog,
    address: ProductAddress,
    report: MaintenanceReport,
    *,
    exclusive: bool,
    retain: timedelta,
    keep_last: int,
    orphan_margin: timedelta,
    now: float | None,
    protect: Collection[int],
    rejected_retention: timedelta,
) -> None:
    dry_run = report.dry_run
    pointers = _pointers(catalog, address)
    table = _readable(
        address,
        pointers.metadata_location or "(no metadata location)",
        lambda: catalog.load_table(address.iceberg_identifier),
    )
    report.table_location = table.location()
    _check_location(catalog, table, address)
    _plan_changes(
        table, report, exclusive=exclusive, retain=retain, keep_last=keep_last, now=now,
        protect=protect, rejected_retention=rejected_retention,
    )  # fmt: skip
    changes = bool(report.removed_branches or report.expired_snapshots or report.set_properties)

    # What stays referenced once the branches are dropped and the snapshots expired.
    expired = set(report.expired_snapshots)
    live = _readable(
        address,
        table.metadata_location,
        lambda: referenced_files(table, exclude=expired),
    )
    if not changes:  # else our own commit makes the current metadata the previous one
        live |= _previous_pointer_files(table, address, pointers.previous_metadata_location)

    if changes and not dry_run:
        table = _commit_changes(catalog, table, address, report)
        pointers = _pointers(catalog, address)
    if not dry_run:
        write_version_hint(table)
    expected = table.metadata_location
    live |= {warehouse.normalise(version_hint_location(table.location()))}
    live |= {warehouse.normalise(table.metadata_location)}
    live |= {warehouse.normalise(e.metadata_file) for e in table.metadata.metadata_log}
    live |= {
        warehouse.normalise(p)
        for p in (pointers.metadata_location, pointers.previous_metadata_location)
        if p
    }

    # File ages are always judged on the real clock: `now` only shifts snapshot retention.
    margin_cutoff = time.time() - orphan_margin.total_seconds()
    orphans = [
        location
        for location, mtime in warehouse.list_files(table.location(), table.io.properties)
        if location not in live and mtime < margin_cutoff
    ]
    after = _pointers(catalog, address)
    if after.metadata_location != expected:
        report.skipped = (
            f"its metadata moved from {expected} to {after.metadata_location} while it was "
            "maintained (a writer without the product's lock?); nothing deleted, run again"
        )
        return
    report.orphan_files = orphans
    if not dry_run:
        _delete_orphans(table, address, orphans)


def _plan_changes(
    table: Table,
    report: MaintenanceReport,
    *,
    exclusive: bool,
    retain: timedelta,
    keep_last: int,
    now: float | None,
    protect: Collection[int],
    rejected_retention: timedelta,
) -> None:
    """Fill the report's branches to drop, snapshots to expire and properties to set."""
    now_ms = int((now if now is not None else time.time()) * 1000)
    cutoff = now_ms - int(retain.total_seconds() * 1000)
    main_line = [s.snapshot_id for s in ancestors_of(table.current_snapshot(), table.metadata)]
    rejected_ms = int(rejected_retention.total_seconds() * 1000)
    _judge_branches(
        table, report, main_line, exclusive=exclusive, cutoff=cutoff, now_ms=now_ms,
        rejected_ms=rejected_ms,
    )  # fmt: skip
    staying = {
        ref.snapshot_id
        for name, ref in table.metadata.refs.items()
        if name not in report.removed_branches
    }
    keep = set(main_line[:keep_last]) | staying | set(protect)
    dropped = _branch_snapshots(table, report.removed_branches, main_line)
    report.expired_snapshots = sorted(
        s.snapshot_id
        for s in table.snapshots()
        if (s.timestamp_ms < cutoff or s.snapshot_id in dropped) and s.snapshot_id not in keep
    )
    report.set_properties = sorted(
        k for k, v in HEALTH_PROPERTIES.items() if table.properties.get(k) != v
    )


def _judge_branches(
    table: Table,
    report: MaintenanceReport,
    main_line: list[int],
    *,
    exclusive: bool,
    cutoff: int,
    now_ms: int,
    rejected_ms: int,
) -> None:
    """Sort the table's audit branches into the report's removed and kept ones, with why."""
    for name, ref in sorted(table.metadata.refs.items()):
        if not name.startswith(AUDIT_PREFIX):
            continue
        head = table.snapshot_by_id(ref.snapshot_id)
        if head is None:
            why = "its head snapshot is gone (a quarantined batch)"
        elif ref.snapshot_id in main_line:
            # Created at main's head, nothing staged: a live publisher would hold the lock.
            if not exclusive:
                report.kept_branches.append(name)
                report.branch_reasons[name] = (
                    "nothing staged, but without a lock on this catalog a live run cannot be "
                    "told from a dead one"
                )
                continue
            why = "nothing staged: left by a dead run"
        elif head.timestamp_ms < cutoff:
            why = "older than --retain"
        elif head.timestamp_ms + (ref.max_ref_age_ms or rejected_ms) < now_ms:
            why = "past its expiry (a blocked batch kept its retention)"
        else:
            report.kept_branches.append(name)
            report.branch_reasons[name] = "a blocked batch, kept to inspect until its expiry"
            continue
        report.removed_branches.append(name)
        report.branch_reasons[name] = why


def _branch_snapshots(table: Table, branches: Collection[str], main_line: list[int]) -> set[int]:
    """The snapshots of ``branches`` off main's history (what their batches committed)."""
    main = set(main_line)
    found: set[int] = set()
    for name in branches:
        head = table.snapshot_by_id(table.metadata.refs[name].snapshot_id)
        for snapshot in ancestors_of(head, table.metadata) if head is not None else ():
            if snapshot.snapshot_id in main:
                break
            found.add(snapshot.snapshot_id)
    return found


def _commit_changes(
    catalog: SqlCatalog, table: Table, address: ProductAddress, report: MaintenanceReport
) -> Table:
    """Set the missing health properties, drop the report's branches, then expire its
    snapshots; the table as it is after."""
    if report.set_properties:
        with table.transaction() as tx:
            tx.set_properties({k: HEALTH_PROPERTIES[k] for k in report.set_properties})
        table = catalog.load_table(address.iceberg_identifier)
    if report.removed_branches:
        with table.manage_snapshots() as refs:
            for name in report.removed_branches:
                refs.remove_branch(name)
        table = catalog.load_table(address.iceberg_identifier)
    if report.expired_snapshots:
        table.maintenance.expire_snapshots().by_ids(report.expired_snapshots).commit()
        table = catalog.load_table(address.iceberg_identifier)
    return table


def _delete_orphans(table: Table, address: ProductAddress, orphans: list[str]) -> None:
    for location in orphans:
        try:
            warehouse.delete(location, table.io.properties)
        except OSError as exc:
            raise MaintenanceError(
                f"product {address}: orphan file {location} could not be deleted ({exc})",
                fix="give this user write access to the table's folder in the warehouse, "
                f"then run `mesh maintain --domain {address.domain}` again",
            ) from exc
    remove_empty_folders(table.location(), orphans)


def _pointers(catalog: SqlCatalog, address: ProductAddress) -> CatalogRow:
    """The product's catalog row (where readers resolve it)."""
    try:
        row = catalog_row(catalog, address)
    except SQLAlchemyError as exc:
        raise _catalog_error(catalog, address, exc) from exc
    if row is None:
        raise NoSuchTableError(f"Table does not exist: {address}")
    return row


def _catalog_error(catalog: SqlCatalog, address: ProductAddress, exc: Exception) -> MeshError:
    return MaintenanceError(
        f"product {address}: the catalog database {catalog.engine.url.render_as_string()} "
        f"could not be read ({type(exc).__name__}: {exc}); nothing of it was changed",
        fix="check the catalog (`mesh doctor`; on sqlite, a long-running writer may hold it), "
        "then run `mesh maintain` again",
    )


def _readable(address: ProductAddress, location: str, read: Callable[[], T]) -> T:
    """``read()`` (a read of the table's metadata, manifests...), or UnreadableMetadataError
    naming the product, the file and the fix (`mesh repair`): maintenance fails closed."""
    try:
        return read()
    except MeshError:
        raise
    except SQLAlchemyError as exc:
        raise MaintenanceError(
            f"product {address}: the catalog could not be read ({type(exc).__name__}: {exc}); "
            "nothing of it was changed",
            fix="check the catalog (`mesh doctor`), then run `mesh maintain` again",
        ) from exc
    except Exception as exc:  # corrupt JSON or Avro, a missing file, a refused read...
        raise UnreadableMetadataError(
            str(address),
            f"its table cannot be read from {location} or a file it references "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); maintenance changed and "
            "deleted nothing of it",
            file=location,
        ) from exc


def _check_location(catalog: SqlCatalog, table: Table, address: ProductAddress) -> None:
    """Maintenance deletes inside the table's location: refuse one outside the product's own
    warehouse folder (the catalog accepts any location; a row pointing at the warehouse root
    would make every other table's files look like orphans)."""
    folder = warehouse.table_folder(catalog.properties["warehouse"], *address.iceberg_identifier)
    if not warehouse.contains(folder, table.location()):
        raise MaintenanceError(
            f"product {address}: its table location {table.location()} is outside its warehouse "
            f"folder {folder}; nothing of it was changed or deleted",
            fix="drop the table from the catalog and publish it again (its location is derived "
            "from the address)",
        )


def _previous_pointer_files(
    table: Table, address: ProductAddress, previous: str | None
) -> set[str]:
    """The files of the snapshot current in the catalog's previous metadata file: a reader that
    resolved the row just before the last commit reads them. Unreadable: none (such a reader
    fails anyway)."""
    if not previous:
        return set()
    try:
        metadata = FromInputFile.table_metadata(table.io.new_input(previous))
        snapshot = metadata.current_snapshot()
        if snapshot is None:
            return {warehouse.normalise(previous)}
        files = snapshot_files(table, snapshot)
    except Exception:  # gone or corrupt: nobody can read through it
        return {warehouse.normalise(previous)}
    return {warehouse.normalise(f) for f in (*files, previous)}
