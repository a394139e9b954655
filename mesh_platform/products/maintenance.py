"""Maintenance of the mesh's products (`mesh maintain`): every published product of the selected
domains (and the platform's own tables, such as ``mesh.sla_history``) maintained by
:func:`mesh_platform.storage.maintenance.maintain`, then compacted when its files need it
(:func:`mesh_platform.storage.compaction.compact`, through write-audit-publish), each under its
publication lock, the snapshots consumers read next (:mod:`mesh_platform.products.cuts`) never
expired. A table maintenance could not read or had to skip is not compacted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from mesh_platform.addressing import PLATFORM_NAMESPACE, ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.products.cuts import load_cuts, protected_snapshots
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.compaction import CompactionReport, compact
from mesh_platform.storage.maintenance import MaintenanceReport, maintain


@dataclass(frozen=True)
class ProductMaintenance:
    """One product's maintenance: its reports, or the error that stopped it."""

    product: str  # the table's address, e.g. sales.nations_v2 (major 2 of nations)
    report: MaintenanceReport | None = None
    error: MeshError | None = None
    compaction: CompactionReport | None = None  # None: not compacted (--no-compact)


def maintain_products(
    mesh: Mesh,
    domains: Iterable[str],
    *,
    retain: timedelta,
    keep_last: int,
    orphan_margin: timedelta,
    lock_wait: timedelta,
    dry_run: bool = False,
    compaction: bool = True,
    platform: bool = False,
) -> Iterator[ProductMaintenance]:
    """Maintain and compact (``compaction``) each product table of ``domains`` in turn, and of
    the platform's namespace if ``platform``, yielding each outcome as it is done. A product
    whose table cannot be maintained (a MeshError) is yielded with the error; the others are
    still maintained."""
    catalog = open_catalog(mesh)
    namespaces = catalog.list_namespaces()
    for domain in [*domains, *([PLATFORM_NAMESPACE] if platform else [])]:
        if (domain,) not in namespaces:
            continue
        protected = protected_snapshots(load_cuts(mesh, domain)) if domain in domains else {}
        for _, name in catalog.list_tables(domain):
            product = f"{domain}.{name}"
            address = ProductAddress.parse(product)
            compacted, report = None, None
            try:
                report = maintain(
                    catalog,
                    address,
                    retain=retain,
                    keep_last=keep_last,
                    orphan_margin=orphan_margin,
                    dry_run=dry_run,
                    lock_wait=lock_wait,
                    protect=protected.get(product, set()),
                    rejected_retention=mesh.settings.tables.rejected_retention,
                )
                if compaction and not report.skipped:
                    compacted = compact(catalog, address, dry_run=dry_run, lock_wait=lock_wait)
            except MeshError as exc:
                yield ProductMaintenance(product, report, exc, compacted)
                continue
            yield ProductMaintenance(product, report=report, compaction=compacted)
