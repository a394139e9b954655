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
    cut: str | None = None  # the producer run whose cut was read (None: its main, no cuts)


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


def pinned_inputs(
    mesh: Mesh, session: Any, addresses: tuple[ProductAddress, ...]
) -> dict[str, Any]:
    """producer domain -> the consistent cut (products.cuts) a consumer of ``addresses`` reads,
    passing over cuts whose snapshots are no longer on main's history. A catalog or metadata
    error is raised, never read as an expired snapshot."""
    from mesh_platform.products.cuts import consistent_snapshots, cuts_folder

    def readable(address: str, snapshot_id: int) -> bool:
        state = session.catalog.table_state(ProductAddress.parse(address))
        return any(s.snapshot_id == snapshot_id for s in state.main_history)

    pinned = consistent_snapshots(mesh, addresses, exists=readable)
    for domain, cut in pinned.items():
        if cut.run_id is not None:
            continue
        # No marker at all: fine for products published by tools; but a product a run
        # published (its snapshot names the run) means the markers were lost or cannot be
        # listed, and reading main could mix runs: stop.
        for address in (a for a in addresses if a.domain == domain):
            current = session.catalog.table_state(address).current
            if current is not None and (current.summary or {}).get("mesh.run_id"):
                raise MeshError(
                    f"{address} was published by run {current.summary['mesh.run_id']} of "
                    f"domain {domain}, but no cut marker of that domain can be read in "
                    f"{cuts_folder(mesh, domain)}: its products cannot be read as one cut",
                    fix=f"run the producer again (`mesh build --domain {domain}`): its run "
                    "writes the marker; check that the warehouse folder is readable",
                )
    return pinned


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
    addresses = tuple(a for a, _ in consumed)
    pinned = pinned_inputs(mesh, session, addresses)
    at = {a: s for p in pinned.values() for a, s in p.snapshots.items()}
    read = session.resolve(addresses, at)  # refusals before anything is read
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
                    "cut": s.cut,
                    "masked": list(s.masked),
                }
                for s in staged
            ],
            "rows": sum(s.row_count for s in staged),
        }
    )
    return staged
