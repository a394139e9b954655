"""``mesh retire``: remove a product for good, once nobody can still depend on it.

Refused while anything still reads it: a descriptor that still declares it before its sunset,
a live grant to another principal, a domain whose dbt sources or Python inputs consume it (read
from freshly prepared manifests). ``force`` with a reason overrides the grants and consumers,
and the record says which were overridden.

The order makes a crash harmless. Under the product's publication lock (no publisher or
maintenance mid-flight):

1. the retirement is recorded (who, when, why, main's last snapshot, the table's folder) in
   ``<state>/lifecycle/retirements.json`` before anything is dropped;
2. the catalog entry is dropped (readers now get "retired", never a half-deleted table);
3. every file under the table's own warehouse folder is removed, with the warehouse's file
   removal that maintenance uses (never a path outside that folder: not pyiceberg's
   ``purge_table``, which deletes whatever the metadata lists, wherever it points);
4. the record is marked finished.

A rerun (or ``mesh repair --product``) finds an unfinished record and carries on from step 2:
dropping a dropped entry and removing removed files are no-ops. A finished retirement is
reported as such; ``publication_stops`` keeps a still-declared retired product from being
published again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, replace

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError, UnreadableMetadataError
from mesh_platform.products.lifecycle import (
    Retirement,
    load_retirements,
    past_sunset,
    record_retirement,
)
from mesh_platform.products.registry import Directory, load_directory
from mesh_platform.sla.alerts import recipients
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import load_product_table, open_catalog
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.references import remove_empty_folders


class RetirementRefusedError(MeshError):
    """Something still depends on the product: its grants, its consumers or its descriptor."""


@dataclass(frozen=True)
class RetireOutcome:
    retirement: Retirement
    already: bool  # it was retired before this call: nothing was done
    removed_files: int = 0


def blockers(
    mesh: Mesh, address: ProductAddress, directory: Directory, today: dt.date
) -> tuple[list[str], list[str]]:
    """(what only --force overrides: live grants and consuming domains; what nothing
    overrides: a descriptor that still declares it before its sunset)."""
    key = str(address)
    descriptor = directory.descriptors.get(key)
    soft: list[str] = []
    hard: list[str] = []
    if descriptor is not None:
        body = descriptor.body
        if not past_sunset(descriptor, today):
            sunset = f", sunset_on {body.sunset_on}" if body.sunset_on else ""
            hard.append(
                f"{descriptor.source_file} still declares it (version {body.version}, status "
                f"{body.status}{sunset}): deprecate it with a sunset_on date and wait for it to "
                "pass, or remove its descriptor"
            )
        for grant in body.grants:
            if grant.to != descriptor.domain and not grant.expired(today):
                soft.append(f"live grant to {grant.to} (expires {grant.expires})")
    for recipient, _ in recipients(mesh, key):
        if not recipient.startswith("team:") and recipient != address.domain:
            soft.append(f"domain {recipient} consumes it (its dbt sources or Python inputs)")
    return soft, hard


def retire(
    mesh: Mesh,
    address: ProductAddress,
    *,
    by: str,
    reason: str,
    force: bool = False,
    today: dt.date | None = None,
) -> RetireOutcome:
    """Retire ``address`` (see the module's docstring); raises RetirementRefusedError naming
    every dependant and the fix."""
    key = str(address)
    record = load_retirements(mesh).get(key)
    if record is not None and record.finished:
        return RetireOutcome(record, already=True)
    if record is None:
        today = today or dt.date.today()
        directory = load_directory(mesh)  # re-prepares changed projects: fresh consumers
        soft, hard = blockers(mesh, address, directory, today)
        if hard or (soft and not force):
            _refuse(address, soft, hard, force)
        descriptor = directory.descriptors.get(key)
        record = Retirement(
            address=key,
            retired_by=by,
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            reason=reason,
            forced=bool(soft),
            last_snapshot_id=None,
            table_location=None,
            version=descriptor.body.version if descriptor else None,
            successor=descriptor.successor if descriptor else None,
            consumers=soft,
        )
    return RetireOutcome(*_drop(mesh, address, record))


def _refuse(address: ProductAddress, soft: list[str], hard: list[str], force: bool) -> None:
    why = "; ".join(hard + soft)
    if hard:
        fix = (
            "retire a product after its sunset: mark it `status: deprecated`, `deprecated_on` and "
            "`sunset_on`, publish its successor as a new major beside it (a dbt model version), "
            f"and run `mesh retire {address}` after the sunset date (or remove its descriptor "
            "first)"
        )
    else:
        fix = (
            "move the consumers to its successor and remove its grants, or retire it anyway with "
            f"`mesh retire {address} --force --reason <why>`"
        )
    raise RetirementRefusedError(f"product {address} cannot be retired: {why}", fix=fix)


def _drop(mesh: Mesh, address: ProductAddress, record: Retirement) -> tuple[Retirement, bool, int]:
    """Steps 1-4 under the product's lock; (the finished record, False, files removed)."""
    from pyiceberg.exceptions import NoSuchTableError  # heavy: pyiceberg (~3 s)

    catalog = open_catalog(mesh)
    folder = warehouse.table_folder(mesh.warehouse, *address.iceberg_identifier)
    try:
        with product_lock(catalog, address):
            table = None
            # Unreadable metadata: the entry and the folder still go (a catalog that cannot be
            # read raises: nothing is recorded).
            with contextlib.suppress(UnreadableMetadataError):
                table = load_product_table(catalog, address)
            if table is not None and record.table_location is None:
                location = warehouse.check_inside(
                    folder, table.location(), product=str(address), what="table location"
                )
                record = replace(
                    record,
                    last_snapshot_id=table.metadata.current_snapshot_id,
                    table_location=location,
                )
            elif record.table_location is None:
                if record.version is None and not warehouse.list_files(folder, catalog.properties):
                    raise MeshError(
                        f"no product or table {address} to retire",
                        fix="list products with `mesh products`, undeclared tables with "
                        "`mesh check`",
                    )
                record = replace(record, table_location=warehouse.normalise(folder))
            record_retirement(mesh, record)  # 1: on record before anything is dropped
            with contextlib.suppress(NoSuchTableError):
                catalog.drop_table(address.iceberg_identifier)  # 2
            removed = _remove_folder(record.table_location or folder, catalog.properties)  # 3
            record = replace(
                record, finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            )
            record_retirement(mesh, record)  # 4
    finally:
        catalog.engine.dispose()
    return record, False, removed


def _remove_folder(folder: str, properties: dict[str, str]) -> int:
    """Remove every file under the table's folder (and, locally, the folder); the count."""
    files = [location for location, _ in warehouse.list_files(folder, properties)]
    for location in files:
        warehouse.delete(warehouse.check_inside(folder, location, product=folder, what="file"),
                         properties)  # fmt: skip
    remove_empty_folders(folder, files)
    if not warehouse.is_remote(folder):
        root = warehouse.local_path(folder)
        for path in (root / "data", root / "metadata", root):
            with contextlib.suppress(OSError):  # not there, or not empty (a newer file: kept)
                path.rmdir()
    return len(files)
