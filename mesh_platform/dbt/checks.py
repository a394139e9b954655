"""Load-time checks of a domain's dbt manifest against the mesh's rules.

Pure functions over the manifest: every problem is collected (not just the first), each naming
the node and the file that declares it, so a domain team fixes them all in one pass. They include
the isolation checks (:mod:`mesh_platform.dbt.isolation`): a domain's SQL reads only its ref()
and source() relations, never another domain's files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mesh_platform.addressing import ProductAddress, name_problem
from mesh_platform.config import load_mesh
from mesh_platform.dbt.isolation import isolation_problems
from mesh_platform.dbt.nodes import input_domain, is_product
from mesh_platform.domain import Domain
from mesh_platform.errors import LoadProblem, MeshError
from mesh_platform.products.descriptor import descriptor_from_node
from mesh_platform.products.descriptor_lines import did_you_mean


def _where(node: Mapping[str, Any]) -> str:
    return node.get("original_file_path") or node.get("path") or "?"


def _file(domain: Domain, node: Mapping[str, Any]) -> str:
    return f"dbt_projects/{domain.name}/{_where(node)}"


def _raw_dir(domain: Domain) -> Path:

    return load_mesh(domain.code_dir.parent.parent).raw_dir(domain.name)


def manifest_problems(
    domain: Domain,
    manifest: Mapping[str, Any],
    known_domains: Iterable[str],
    *,
    raw_dir: Path | None = None,
) -> list[str]:
    """Every way the domain's dbt project breaks the mesh's rules (empty when compliant).

    ``raw_dir``: the domain's raw area, the only place its sources may read files from
    (default: from the mesh holding the domain, as ``mesh prepare`` rendered it).
    """
    known = set(known_domains)
    raw_tables = set(domain.spec.raw.tables) if domain.spec.raw else set()
    problems: list[str] = []
    addresses: dict[str, str] = {}
    for node in manifest.get("nodes", {}).values():
        if is_product(node):
            problems += _product_problems(domain, node, addresses)
    for node in manifest.get("sources", {}).values():
        problems += _source_problems(domain, node, known, raw_tables)
    raw_dir = raw_dir if raw_dir is not None else _raw_dir(domain)
    return problems + isolation_problems(domain.name, manifest, raw_dir=raw_dir)


def _product_problems(
    domain: Domain, node: Mapping[str, Any], addresses: dict[str, str]
) -> list[str]:
    """A public model's problems: its name, its descriptor, its contract (``addresses``: the
    addresses seen so far, each with the model declaring it)."""
    problems: list[str] = []
    if problem := name_problem(node["name"]):
        problems.append(LoadProblem(
            f"product {node['name']!r} {problem} ({_where(node)})",
            fix="rename the model (and its file) in snake_case", file=_file(domain, node),
        ))  # fmt: skip
    else:
        try:
            descriptor = descriptor_from_node(domain.name, node, project_dir=domain.dbt_project_dir)
        except MeshError as exc:
            version = str(node.get("version") or 1)
            suffix = f"_v{version}" if version.isdigit() and int(version) > 1 else ""
            subject = f"{domain.name}.{node['name']}{suffix}"
            problems.append(LoadProblem.of(exc, subject=subject))
        else:
            address = str(descriptor.address)
            if address in addresses:
                problems.append(LoadProblem(
                    f"product {address} is declared twice ({addresses[address]} and "
                    f"{node['unique_id']})", file=descriptor.source_file,
                    fix="give each major version its own dbt model version",
                ))  # fmt: skip
            addresses[address] = node["unique_id"]
    if not (node.get("config", {}).get("contract") or {}).get("enforced"):
        problems.append(LoadProblem(
            f"product {node['name']!r} is public without an enforced contract "
            f"({_where(node)})", file=_file(domain, node),
            fix="add `contract: {enforced: true}` to the model's config and a data_type "
            "per column",
        ))  # fmt: skip
    return problems


def _source_problems(
    domain: Domain, node: Mapping[str, Any], known: set[str], raw_tables: set[str]
) -> list[str]:
    """A source's problems: a raw table the domain lands, or another domain's product."""
    where = f"source {node['source_name']}.{node['name']} ({_where(node)})"
    producer = input_domain(node)
    file = _file(domain, node)
    if producer is None:
        if node["name"] in raw_tables:
            return []
        return [LoadProblem(
            f"{where} is neither a raw table of domains/{domain.name}/domain.yaml "
            f"(raw.tables: {sorted(raw_tables) or 'none'}) nor a mesh input", file=file,
            fix=f"list {node['name']!r} in raw.tables of domains/{domain.name}/domain.yaml, "
            "or mark the source a mesh input (meta: {mesh_domain: <producer>})",
        )]  # fmt: skip
    if problem := name_problem(producer):
        return [LoadProblem(
            f"{where}: mesh_domain {producer!r} {problem}", file=file,
            fix="name the producing domain as its folder in domains/ is named",
        )]  # fmt: skip
    if producer == domain.name:
        return [LoadProblem(
            f"{where}: a domain reads its own products with ref(), not as input", file=file,
            fix=f"remove the source and ref() the model instead (ref('{node['name']}'))",
        )]  # fmt: skip
    if producer not in known:
        close = did_you_mean(producer, sorted(known))
        return [LoadProblem(
            f"{where}: mesh_domain {producer!r} is not a domain of this mesh "
            f"(domains: {', '.join(sorted(known))})"
            + (f"; did you mean {close!r}?" if close else ""), file=file,
            fix=f"set mesh_domain to {close!r}" if close
            else "set mesh_domain to one of the mesh's domains",
        )]  # fmt: skip
    try:
        ProductAddress.parse(f"{producer}.{node['name']}")
    except MeshError as exc:
        return [LoadProblem(f"{where}: {exc.what}", fix=exc.fix, file=file)]
    return []
