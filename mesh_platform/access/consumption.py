"""Cross-domain consumption: a domain reads other domains' products only under its grants.

A domain declares what it consumes as dbt sources bound to mesh addresses (``meta.mesh_domain``).
At load (code location, ``mesh check``) every consumed product must exist and grant the domain
read access; at run time each is staged into the domain's DuckDB at one pinned snapshot, through
the same access path as a federated query (granted columns and rows, masks), and the snapshot
ids are recorded on the run's materialisations.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh_platform.addressing import ProductAddress, quote_ident
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError


@dataclass(frozen=True)
class StagedInput:
    address: ProductAddress
    snapshot_id: int
    row_count: int
    relation: str
    masked: tuple[str, ...] = ()
    row_filter: str | None = None


def consumption_problems(
    mesh: Mesh, domain: str, manifest: Mapping[str, Any], *, today: dt.date | None = None
) -> list[str]:
    """Every consumed product that does not exist or does not grant ``domain`` read access."""
    from mesh_platform.access.grants import plan_read
    from mesh_platform.access.principals import load_principals
    from mesh_platform.dbt.nodes import consumed_products
    from mesh_platform.domain import list_domain_names
    from mesh_platform.query.directory import load_directory

    consumed = consumed_products(manifest)
    if not consumed:
        return []
    principal = load_principals(mesh.root, set(list_domain_names(mesh))).resolve(domain)
    directory = load_directory(mesh, refresh=False)  # other locations may be parsing now
    problems = []
    for address, node in consumed:
        source = f"dbt_projects/{domain}/{node.get('original_file_path', '')}"
        try:
            descriptor = directory.get(address)
            names = [c.name for c in descriptor.columns]
            plan_read(principal, descriptor, stored_columns=names, today=today)
        except MeshError as exc:
            problems.append(f"consumes {address} (source in {source}): {exc.what}; fix: {exc.fix}")
    return problems


def stage_inputs(mesh: Mesh, domain: str, manifest: Mapping[str, Any]) -> list[StagedInput]:
    """Copy each consumed product, as ``domain`` may read it, into the domain's DuckDB."""
    from mesh_platform.dbt.nodes import consumed_products
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.query.engine import QuerySession, governed_source
    from mesh_platform.storage.warehouse import configure_duckdb

    consumed = consumed_products(manifest)
    if not consumed:
        return []
    session = QuerySession(domain, mesh=mesh)
    read = session.resolve(tuple(a for a, _ in consumed))  # refusals before anything is read
    salt = session.salt_for([r.plan for r in read])
    mesh.duckdb_path(domain).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(mesh.duckdb_path(domain), extensions=("avro",))
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
                {"address": str(s.address), "snapshot_id": s.snapshot_id, "masked": list(s.masked)}
                for s in staged
            ],
            "rows": sum(s.row_count for s in staged),
        }
    )
    return staged
