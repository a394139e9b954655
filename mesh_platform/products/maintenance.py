"""Maintenance of the mesh's products (`mesh maintain`): every published product of the selected
domains maintained by :func:`mesh_platform.storage.maintenance.maintain`, each under its
publication lock, the snapshots consumers read next (:mod:`mesh_platform.products.cuts`) never
expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.products.cuts import load_cuts, protected_snapshots
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.maintenance import MaintenanceReport, maintain


@dataclass(frozen=True)
class ProductMaintenance:
    """One product's maintenance: its report, or the error that stopped it."""

    product: str  # the table's address, e.g. sales.nations_v2 (major 2 of nations)
    report: MaintenanceReport | None = None
    error: MeshError | None = None


def maintain_products(
    mesh: Mesh,
    domains: Iterable[str],
    *,
    retain: timedelta,
    keep_last: int,
    orphan_margin: timedelta,
    lock_wait: timedelta,
    dry_run: bool = False,
) -> Iterator[ProductMaintenance]:
    """Maintain each product table of ``domains`` in turn, yielding its outcome as it is done.
    A product whose table cannot be maintained (a MeshError) is yielded with the error; the
    others are still maintained."""
    catalog = open_catalog(mesh)
    namespaces = catalog.list_namespaces()
    for domain in domains:
        if (domain,) not in namespaces:
            continue
        protected = protected_snapshots(load_cuts(mesh, domain))
        for _, name in catalog.list_tables(domain):
            product = f"{domain}.{name}"
            try:
                report = maintain(
                    catalog,
                    ProductAddress.parse(product),
                    retain=retain,
                    keep_last=keep_last,
                    orphan_margin=orphan_margin,
                    dry_run=dry_run,
                    lock_wait=lock_wait,
                    protect=protected.get(product, set()),
                )
            except MeshError as exc:
                yield ProductMaintenance(product, error=exc)
                continue
            yield ProductMaintenance(product, report=report)
