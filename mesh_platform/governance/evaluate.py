"""One evaluation of the static policies, used at deploy time (code location load) and in CI
(`mesh check`): the same violations, with the same files and fixes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from mesh_platform.access.consumption import consumption_problems
from mesh_platform.config import Mesh
from mesh_platform.dbt.checks import manifest_problems
from mesh_platform.dbt.nodes import is_product
from mesh_platform.dbt.project import load_manifest, prepare
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import LoadProblem, MeshError
from mesh_platform.governance.policy import (
    DATA_POLICY_IDS,
    PolicyContext,
    Violation,
    evaluate_static,
    load_policy_set,
)
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.inventory import (
    product_descriptors,
    python_descriptors,
    python_products,
)


def all_product_addresses(mesh: Mesh, domains: Collection[str] | None = None) -> set[str]:
    """Addresses declared in the mesh (prepared manifests; of ``domains`` only, if given), for
    waiver validation."""

    found: set[str] = set()
    names = list_domain_names(mesh)
    for name in names if domains is None else [n for n in names if n in domains]:
        try:
            manifest = load_manifest(load_domain(mesh, name), cache=False)
        except MeshError:
            continue
        for node in manifest.get("nodes", {}).values():
            if is_product(node):
                try:
                    found.add(str(descriptor_from_node(name, node).address))
                except MeshError:
                    found.add(f"{name}.{node['name']}")
        for yml in (mesh.domains_dir / name / "products").glob("*.yml"):
            found.add(f"{name}.{yml.stem}")
    return found


def evaluate_domain(
    mesh: Mesh,
    domain: str,
    descriptors: Sequence[ProductDescriptor],
    nodes: Mapping[str, Mapping[str, Any]],
    *,
    today: dt.date | None = None,
    complete: bool = True,
) -> list[Violation]:
    """Every static policy on one domain's products (``complete``: False when some of them
    failed to load, so their absence is not a finding)."""
    policy_set = load_policy_set(
        mesh.root, known_products=lambda named: all_product_addresses(mesh, named)
    )

    ctx = PolicyContext(
        domain,
        list(descriptors),
        nodes,
        today=today or dt.date.today(),
        mesh_root=mesh.root,
        domains=frozenset(list_domain_names(mesh)),
        mesh=mesh,
        complete=complete,
    )
    return evaluate_static(policy_set, ctx)


def check_domain(mesh: Mesh, name: str, *, today: dt.date | None = None) -> list[Violation]:
    """Everything that would stop the domain from deploying, without building anything:
    load-time problems of its dbt project and descriptors, then every static policy.

    Reads fresh declarations: the domain's dbt project, and those of the producers it
    consumes from, are prepared again when their files changed since they were, so a producer's
    grant edited a moment ago counts (its stale manifest would report compliance from the old
    grant)."""

    domain = load_domain(mesh, name)
    prepare(mesh, domain)
    manifest = load_manifest(domain)
    problems = manifest_problems(domain, manifest, list_domain_names(mesh))
    descriptors = (
        {} if problems else product_descriptors(name, manifest, project_dir=domain.dbt_project_dir)
    )
    python, python_problems = python_descriptors(
        domain, python_products(mesh, name), {str(d.address) for d in descriptors.values()}
    )
    problems += python_problems
    if not problems:
        problems += consumption_problems(mesh, name, manifest, today=today, refresh=True)
    found = [_load_violation(name, p) for p in problems]
    nodes = {str(d.address): manifest["nodes"][uid] for uid, d in descriptors.items()}
    found += evaluate_domain(
        mesh, name, [*descriptors.values(), *(d for _, d in python)], nodes, today=today,
        complete=not problems,
    )  # fmt: skip
    return found


def _load_violation(domain: str, problem: str) -> Violation:
    """A load-time problem as a blocking violation, with its file, line and fix."""
    what, fix = LoadProblem.parts(problem)
    file = getattr(problem, "file", None) or f"dbt_projects/{domain}"
    fix = fix or f"correct it in {file}, then `mesh check --domain {domain}`"
    subject = getattr(problem, "subject", None) or f"domain {domain}"
    return Violation("descriptor", subject, what, fix, file,
                     at=getattr(problem, "line", None))  # fmt: skip


def gate_exemptions(mesh: Mesh, address: str, *, today: dt.date | None = None) -> dict[str, str]:
    """Data policies (gate checks) that do not block ``address``: set to 'warn' by the council,
    or waived for this product. check name -> why."""

    policy_set = load_policy_set(mesh.root)
    today = today or dt.date.today()
    exempt = {}
    for policy in sorted(DATA_POLICY_IDS):
        if waiver := policy_set.waiver_for(address, policy, today):
            exempt[policy] = f"waived until {waiver.expires}: {waiver.reason}"
        elif policy_set.severity(policy) == "warn":
            exempt[policy] = f"severity warn in {policy_set.path}"
    return exempt
