"""A consumer domain's inputs, staged into its DuckDB before dbt runs.

Each consumed product (a dbt source bound to a mesh address, ``meta.mesh_domain``) is copied
into the domain's DuckDB at one pinned snapshot, taken from one consistent cut of its producer
(:func:`mesh_platform.products.cuts.pinned_inputs`), through the same access path as a federated
query (the consumer's granted columns and rows, masks: :mod:`mesh_platform.query.engine`); the
snapshot ids are recorded on the run's materialisations and in the audit log. Whether the
consumer may read them at all is decided at load by :mod:`mesh_platform.access.consumption`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh_platform.addressing import ProductAddress, quote_ident
from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import consumed_products
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.cuts import pinned_inputs
from mesh_platform.query.engine import QuerySession, governed_source
from mesh_platform.storage.warehouse import configure_duckdb


@dataclass(frozen=True)
class StagedInput:
    address: ProductAddress
    snapshot_id: int
    row_count: int
    relation: str
    masked: tuple[str, ...] = ()
    row_filter: str | None = None
    cut: str | None = None  # the producer run whose cut was read (None: its main, no cuts)


def stage_inputs(mesh: Mesh, domain: str, manifest: Mapping[str, Any]) -> list[StagedInput]:
    """Copy each consumed product, as ``domain`` may read it, into the domain's DuckDB."""
    consumed = consumed_products(manifest)
    if not consumed:
        return []
    session = QuerySession(domain, mesh=mesh)
    addresses = tuple(a for a, _ in consumed)
    pinned = pinned_inputs(mesh, session, addresses)
    at = {a: s for p in pinned.values() for a, s in p.snapshots.items()}
    read = session.resolve(addresses, at)  # refusals before anything is read
    salt = session.salt_for([r.plan for r in read])
    conn = connect(mesh.domain_duckdb(domain), extensions=("avro",))
    staged = []
    try:
        configure_duckdb(conn, dict(session.catalog.storage))  # s3:// warehouse: httpfs
        for item, (address, node) in zip(read, consumed, strict=True):
            schema = node["schema"]
            target = f"{quote_ident(schema)}.{quote_ident(address.table)}"
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            source = governed_source(conn, item, salt)
            conn.execute(f"CREATE OR REPLACE TABLE {target} AS {source}")
            rows = conn.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
            staged.append(
                StagedInput(
                    address,
                    item.snapshot_id,
                    rows,
                    f"{schema}.{address.table}",
                    tuple(sorted(item.plan.masks)),
                    item.plan.row_filter,
                    pinned[address.domain].run_id,
                )
            )
    finally:
        conn.close()
    session.audit.record(
        {
            "principal": domain,
            "query": "dbt run: stage consumed products",
            "status": "ok",
            "products": [
                {
                    "address": str(s.address),
                    "snapshot_id": s.snapshot_id,
                    "rows": s.row_count,  # this product's; the line's rows: all staged
                    "cut": s.cut,
                    "masked": list(s.masked),
                }
                for s in staged
            ],
            "rows": sum(s.row_count for s in staged),
        }
    )
    return staged
