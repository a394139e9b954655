"""Reading a product as Arrow: at its current snapshot, a given snapshot id, or a point in time.

from mesh_platform.read import read_product
orders = read_product("sales.orders")
yesterday = read_product("sales.orders", as_of=datetime(2026, 11, 24, tzinfo=UTC))
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.errors import MeshError, ProductNotPublishedError
from mesh_platform.storage.iceberg import is_published, load_product_table, open_catalog


def read_product(
    address: str | ProductAddress,
    *,
    snapshot_id: int | None = None,
    as_of: datetime | None = None,
    mesh: Mesh | None = None,
) -> pa.Table:
    """The product's published rows, optionally time-travelled (one of snapshot_id, as_of)."""
    if snapshot_id is not None and as_of is not None:
        raise MeshError("pass snapshot_id or as_of, not both", fix="choose one way to travel")
    address = ProductAddress.parse(address) if isinstance(address, str) else address
    mesh = mesh or load_mesh()
    catalog = open_catalog(mesh)
    table = load_product_table(catalog, address)
    if table is None or not is_published(table.current_snapshot()):
        raise ProductNotPublishedError(
            f"product {address} has no published snapshot",
            fix=f"build its domain: `mesh build --domain {address.domain}`",
        )
    if as_of is not None:
        if as_of.tzinfo is None:
            raise MeshError(
                f"as_of={as_of.isoformat()} has no time zone",
                fix="pass an aware datetime, e.g. datetime(..., tzinfo=UTC)",
            )
        snapshot = table.snapshot_as_of_timestamp(int(as_of.timestamp() * 1000))
        if not is_published(snapshot):
            raise ProductNotPublishedError(
                f"product {address} had no published snapshot at {as_of.isoformat()}",
                fix="choose a later time (see the snapshot history in the Dagster UI)",
            )
        snapshot_id = snapshot.snapshot_id
    if snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None:
        raise MeshError(
            f"product {address} has no snapshot {snapshot_id} (expired, or never existed)",
            fix="use a snapshot id from the product's history",
        )
    return table.scan(snapshot_id=snapshot_id).to_arrow()
