"""Reading one product as Arrow, under the reader's grants and masks: at its current snapshot, a
given snapshot id, or a point in time.

from mesh_platform.read import read_product
orders = read_product("sales.orders", as_="marketing")
yesterday = read_product("sales.orders", as_="marketing",
                         as_of=datetime(2026, 11, 24, tzinfo=UTC))

The same access path as ``mesh query`` (:mod:`mesh_platform.query.engine`): deny by default,
granted columns and rows only, personal data masked unless the reader is cleared, audited. With
``MESH_ENDPOINT`` set (the production profile), through the query service with ``MESH_TOKEN``
(:mod:`mesh_platform.query.remote`).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.query.remote import open_session

if TYPE_CHECKING:
    import pyarrow as pa


def read_product(
    address: str | ProductAddress,
    *,
    as_: str | None = None,
    snapshot_id: int | None = None,
    as_of: datetime | None = None,
    mesh: Mesh | None = None,
) -> pa.Table:
    """The product's rows as principal ``as_`` (default $MESH_PRINCIPAL) sees them, optionally
    time-travelled (one of snapshot_id, as_of).

    Every failure is a MeshError naming the product and the fix; the ones that are not the
    caller's: ``CatalogUnavailableError`` (the catalog cannot be read: never "not published"),
    ``UnreadableMetadataError`` (its metadata is missing or corrupt: ``mesh repair``),
    ``SnapshotExpiredError`` (``as_of`` before the oldest snapshot maintenance kept),
    ``ProductNotPublishedError`` (not published yet, or not yet at ``as_of``)."""

    if snapshot_id is not None and as_of is not None:
        raise MeshError("pass snapshot_id or as_of, not both", fix="choose one way to travel")
    principal = as_ or os.environ.get("MESH_PRINCIPAL")
    if not principal:
        raise MeshError(
            "read_product needs a principal: the mesh reads nothing for an anonymous reader",
            fix="pass as_='<domain|team:t|user:u>' or set MESH_PRINCIPAL",
        )
    address = ProductAddress.parse(address) if isinstance(address, str) else address
    with open_session(principal, mesh=mesh) as session:
        return session.sql(
            f"SELECT * FROM {address.domain}.{address.table}",
            at=snapshot_id if snapshot_id is not None else as_of,
        )
