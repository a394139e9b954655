"""Cross-domain consumption: a domain reads other domains' products only under its grants.

A domain declares what it consumes as dbt sources bound to mesh addresses (``meta.mesh_domain``).
At load (code location, ``mesh check``) every consumed product must exist and grant the domain
read access (this module); at run time each is staged into the domain's DuckDB at one pinned
snapshot (:mod:`mesh_platform.dbt.inputs`), through the same access path as a federated query.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from mesh_platform.access.grants import plan_read
from mesh_platform.access.principals import load_principals
from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import consumed_products
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import LoadProblem, MeshError
from mesh_platform.products.registry import load_directory


def consumption_problems(
    mesh: Mesh,
    domain: str,
    manifest: Mapping[str, Any],
    *,
    today: dt.date | None = None,
    refresh: bool = False,
) -> list[str]:
    """Every consumed product that does not exist or does not grant ``domain`` read access.

    ``refresh``: re-prepare a producer whose project files changed before reading its grants
    (``mesh check``: a grant just edited counts); a loading code location reads the manifests
    as prepared (other locations may be preparing them now)."""
    consumed = consumed_products(manifest)
    if not consumed:
        return []
    principal = load_principals(mesh.root, set(list_domain_names(mesh))).resolve(domain)
    producers = {address.domain for address, _ in consumed}
    directory = load_directory(mesh, refresh=refresh, domains=producers)
    problems = []
    for address, node in consumed:
        source = f"dbt_projects/{domain}/{node.get('original_file_path', '')}"
        try:
            descriptor = directory.get(address)
            names = [c.name for c in descriptor.columns]
            plan_read(principal, descriptor, stored_columns=names, today=today)
        except MeshError as exc:
            what = f"consumes {address} (source in {source}): {exc.what}"
            problems.append(LoadProblem(what, fix=exc.fix, file=source))
    return problems
