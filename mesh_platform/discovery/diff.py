"""``mesh diff --base REF``: every product's contract against a base revision, and who breaks.

The base's descriptors are read from git without a checkout
(:mod:`mesh_platform.products.revision`), the working tree's from the registry (its changed dbt
projects prepared again), and compared by the one rule set of
:mod:`mesh_platform.products.changes`. For each breaking change the report names who breaks:

- **consuming domains**: the dbt sources and Python inputs that read the product
  (:attr:`Lineage.inputs`), down to the column: the models whose compiled SQL uses the changed
  column (:mod:`mesh_platform.products.lineage`, sqlglot), and the products built from them,
  with their columns computed from it. A grant change concerns its principal's consumption only;
- **readers**: principals whose queries read the affected columns in the last ``days`` days,
  from the audit log (:mod:`mesh_platform.query.readers`).

A breaking change without a major version bump is a violation (the command exits 1); so is a
product whose current descriptor cannot be read (fail closed: it is not reported as removed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from mesh_platform.access.principals import load_principals
from mesh_platform.config import Mesh
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import MeshError
from mesh_platform.products.changes import RULES, Change, ProductDiff, diff_products
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.lineage import Lineage, mesh_lineage
from mesh_platform.products.registry import load_directory
from mesh_platform.products.revision import read_revision
from mesh_platform.query.audit import AuditLog
from mesh_platform.query.readers import ColumnRead, column_reads

VERSIONING_RULE = (
    "a breaking change needs a new major version: ship it as the next major "
    "(<product>_v<N+1>, a dbt model version) beside the current one until its sunset"
)


def _principal_filter(mesh: Mesh, principal: str | None) -> Any:
    """A test of a reader's principal: any (no principal), else acting as ``principal``."""
    if principal is None:
        return lambda who: True
    try:
        principals = load_principals(mesh.root, set(list_domain_names(mesh)))
    except MeshError:
        return lambda who: who == principal
    cache: dict[str, bool] = {}

    def acts_as(who: str) -> bool:
        if who not in cache:
            try:
                cache[who] = principal in principals.resolve(who).acts_as
            except MeshError:
                cache[who] = who == principal
        return cache[who]

    return acts_as


def _columns_of(change: Change) -> list[str] | None:
    """The base columns a change concerns (None: the whole product)."""
    if change.column is not None:
        return [change.column]
    if change.kind == "grant_narrowed" and change.columns:
        return list(change.columns)
    return None


# Changes after which a consumer's SQL fails (the column or the product is gone from its
# input): everything built from a model that uses it breaks. After the others (a new type,
# classification or mask) the values change: the users and the columns derived from it.
_FAILS = {"product_removed", "column_removed", "column_renamed", "grant_removed", "grant_narrowed"}


def _consumers(
    lineage: Lineage, address: str, columns: list[str] | None, only: str | None, fails: bool
) -> list[dict[str, Any]]:
    """Per consuming domain: its inputs, the models using the columns, the products they feed."""
    if columns is None:
        direct = sorted(n for n, deps in lineage.depends.items() if address in deps)
    else:
        direct = sorted({n for c in columns for n in lineage.direct_users(address, c)})
    derived: dict[str, set[str]] = {}
    for column in columns or lineage.columns.get(address, []):
        for key, col in lineage.derived_from(address, column):
            derived.setdefault(key, set()).add(col)
    if fails:
        affected = direct + lineage.downstream_nodes(direct)
    else:  # the users, what is computed from it, and who reads that (a Python product, say)
        readers = {n for k, cols in derived.items() for c in cols
                   for n in lineage.direct_users(k, c)}  # fmt: skip
        affected = sorted(set(direct) | set(derived) | readers)
    domains: dict[str, dict[str, Any]] = {}
    for domain, file in sorted(lineage.inputs.get(address, ())):
        if only is None or domain == only:
            entry = domains.setdefault(domain, {"domain": domain, "inputs": [], "models": [],
                                                "products": []})  # fmt: skip
            entry["inputs"].append(file)
    for key in affected:
        node = lineage.nodes.get(key)
        if node is None or (only is not None and node.domain != only):
            continue
        entry = domains.setdefault(node.domain, {"domain": node.domain, "inputs": [],
                                                 "models": [], "products": []})  # fmt: skip
        if key in direct:
            opaque = node.kind == "python" or bool(node.problem)  # column use unknown
            entry["models"].append(
                {"name": node.label, "kind": node.kind, "file": node.file, "opaque": opaque}
            )
        if node.kind in ("product", "python"):
            entry["products"].append({"address": key, "columns": sorted(derived.get(key, ())),
                                      "uses_directly": key in direct})  # fmt: skip
    return list(domains.values())


def _readers(
    reads: Sequence[ColumnRead], address: str, columns: list[str] | None, keep: Any
) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for r in reads:
        used = r.columns.get(address)
        if used is None or not keep(r.principal):
            continue
        hit = sorted(used if columns is None else used & set(columns))
        if not hit and columns is not None:
            continue
        entry = found.setdefault(r.principal, {"principal": r.principal, "queries": 0,
                                               "last_read": None, "columns": set(),
                                               "exact": True})  # fmt: skip
        entry["queries"] += 1
        entry["columns"].update(hit)
        entry["exact"] = entry["exact"] and r.exact
        entry["last_read"] = max(filter(None, [entry["last_read"], r.at.isoformat()]))
    return [{**e, "columns": sorted(e["columns"])} for _, e in sorted(found.items())]


def _product_entry(
    mesh: Mesh, diff: ProductDiff, lineage: Lineage, reads: Sequence[ColumnRead]
) -> dict[str, Any]:
    base, head = diff.base, diff.head
    status = "added" if base is None else "removed" if head is None else (
        "major bump" if diff.major_bump else "changed" if diff.changes else "unchanged"
    )  # fmt: skip
    changes = []
    for change in diff.changes:
        item: dict[str, Any] = {"kind": change.kind, "breaking": change.breaking,
                                "message": change.message, "column": change.column,
                                "principal": change.principal}  # fmt: skip
        if change.breaking and base is not None:
            columns = _columns_of(change)
            keep = _principal_filter(mesh, change.principal)
            item["consumers"] = _consumers(
                lineage, diff.address, columns, change.principal, change.kind in _FAILS
            )
            item["readers"] = _readers(reads, diff.address, columns, keep)
            item["allowed"] = change not in diff.violations
            item["allowed_by"] = (
                "major bump" if diff.major_bump else "draft" if item["allowed"] else None
            )
        changes.append(item)
    return {
        "address": diff.address,
        "status": status,
        "base": None if base is None else {"address": str(base.address),
                                           "version": base.body.version},
        "head": None if head is None else {"address": str(head.address),
                                           "version": head.body.version,
                                           "file": head.source_file},
        "major_bump": diff.major_bump,
        "breaking": len(diff.breaking),
        "violations": len(diff.violations),
        "changes": changes,
    }  # fmt: skip


def diff_report(
    mesh: Mesh, base_ref: str, *, days: int = 30, now: dt.datetime | None = None
) -> dict[str, Any]:
    """The comparison of every product with ``base_ref``, JSON-able (``mesh diff``)."""
    now = now or dt.datetime.now(dt.UTC)
    revision = read_revision(mesh, base_ref)
    directory = load_directory(mesh)  # changed projects prepared again: the working tree
    domains = set(list_domain_names(mesh))  # not the platform's own products
    head = {a: d for a, d in directory.descriptors.items() if d.domain in domains}
    unreadable = _unreadable(directory.problems, revision.descriptors, head)
    base = {a: d for a, d in revision.descriptors.items() if a not in unreadable}
    diffs = diff_products(base, head, now.date())
    base_columns = {a: [c.name for c in d.columns] for a, d in base.items()}
    lineage = mesh_lineage(mesh, directory, extra_columns=base_columns)
    columns: dict[str, list[str]] = {a: [c.name for c in d.columns]
                                     for a, d in directory.descriptors.items()}  # fmt: skip
    for address, names in base_columns.items():
        columns[address] = list(dict.fromkeys([*columns.get(address, []), *names]))
    breaking = {d.address for d in diffs if d.breaking}
    reads = column_reads(AuditLog(mesh.state_dir / "audit" / "queries.jsonl"), columns,
                         since=now - dt.timedelta(days=days), addresses=breaking)  # fmt: skip
    products = [_product_entry(mesh, d, lineage, reads) for d in diffs]
    problems = [{"subject": s, "problem": p} for s, p in sorted(unreadable.items())]
    problems += [{"subject": s, "problem": f"at {base_ref}: {p}"}
                 for s, p in sorted(revision.problems.items())]  # fmt: skip
    violations = sum(p["violations"] for p in products) + len(unreadable)
    return {
        "base": {"ref": base_ref, "commit": revision.commit},
        "audit_days": days,
        "rules": [{"kind": k, "breaking": b, "why": w} for k, b, w in RULES],
        "versioning_rule": VERSIONING_RULE,
        "breaking": sum(p["breaking"] for p in products),
        "violations": violations,
        "products": products,
        "problems": problems,
        "lineage_problems": {d: p for d, p in sorted(lineage.problems.items())},
    }


def _unreadable(
    problems: Mapping[str, str],
    base: Mapping[str, ProductDescriptor],
    head: Mapping[str, ProductDescriptor],
) -> dict[str, str]:
    """Base products whose current descriptor cannot be read: compared with nothing, they would
    look removed; they are reported as problems instead (fail closed)."""
    found = {}
    for address, d in base.items():
        if address in head:
            continue
        why = problems.get(f"{d.domain}.*") or problems.get(f"{d.domain}.{d.name}")
        if why:
            found[address] = f"its current descriptor cannot be read: {why}"
    return found
