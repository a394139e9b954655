"""Column-level lineage: which columns each column of the mesh is computed from, and what reads it.

Computed with sqlglot over each domain's compiled SQL (the prepared manifest's
``compiled_code``, :mod:`mesh_platform.dbt.project`), model by model in dependency order:

- the tables a model's SQL names are resolved to manifest nodes by their relation name; a
  mesh-input source (``meta.mesh_domain``) *is* the producer's product, so lineage crosses
  domains there (a product's node is its address, ``sales.customers``; other nodes keep dbt's
  unique id);
- ``qualify`` expands stars and qualifies columns against the columns known so far (a mesh
  input's from its descriptor, an upstream model's from its own analysed SQL, a raw source's
  or seed's from its declared columns);
- each output column's *derivation* comes from ``sqlglot.lineage`` (the columns its value is
  computed from); the columns a model *uses* anywhere (joins, filters, grouping too) from the
  query's scopes. A dropped column breaks every model that uses it, even one that only joins
  on it; a retyped column changes the values of the columns derived from it.

Python products are opaque: their declared inputs are known, not which columns their code reads,
so they count as using every column of each input, and their columns' derivation is unknown. A
model whose SQL sqlglot cannot analyse is opaque too (its ``problem`` says why). Unqualified
columns that could come from several tables whose columns are unknown stay unresolved.

One domain's lineage is cached per manifest (path, modification time) and the input columns it
was computed with, so ``mesh describe``, the catalog and ``mesh diff`` analyse each manifest once
per process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import lineage as sqlglot_lineage
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope

from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import input_domain, is_product
from mesh_platform.dbt.project import load_manifest, manifest_path
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import descriptor_from_node
from mesh_platform.products.inventory import python_inputs
from mesh_platform.products.registry import Directory, load_directory

DIALECT = "duckdb"
ANY_COLUMN = "*"  # an opaque consumer (Python product) uses every column of its input
ColumnRef = tuple[str, str]  # (node key, column)


@dataclass(frozen=True)
class LineageNode:
    """A relation of the mesh: a product (key: its address), a private model, a raw source or a
    seed (key: dbt's unique id)."""

    key: str
    domain: str
    kind: str  # product | model | source | seed | python
    name: str
    file: str = ""
    problem: str | None = None  # why its SQL could not be analysed (then opaque)

    @property
    def label(self) -> str:
        return self.key if self.kind in ("product", "python") else f"{self.domain}:{self.name}"


@dataclass
class Lineage:
    """Column edges of one domain, or of the whole mesh (domains merged)."""

    nodes: dict[str, LineageNode] = field(default_factory=dict)
    columns: dict[str, list[str]] = field(default_factory=dict)  # node -> output columns
    derives: dict[ColumnRef, set[ColumnRef]] = field(default_factory=dict)  # one hop upstream
    uses: dict[str, set[ColumnRef]] = field(default_factory=dict)  # node -> columns it reads
    depends: dict[str, set[str]] = field(default_factory=dict)  # node -> nodes it reads
    problems: dict[str, str] = field(default_factory=dict)  # domain -> why it has no lineage
    # product address -> (consumer domain, file declaring the input): dbt sources, Python inputs
    inputs: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    def merge(self, other: Lineage) -> None:
        self.nodes.update(other.nodes)
        self.columns.update(other.columns)
        for ref, ups in other.derives.items():
            self.derives.setdefault(ref, set()).update(ups)
        for key, used in other.uses.items():
            self.uses.setdefault(key, set()).update(used)
        for key, deps in other.depends.items():
            self.depends.setdefault(key, set()).update(deps)
        self.problems.update(other.problems)
        for address, where in other.inputs.items():
            self.inputs.setdefault(address, set()).update(where)

    # -- questions -----------------------------------------------------------------------------

    def upstream(self, key: str, column: str) -> list[ColumnRef]:
        """Every column ``key.column`` is computed from, nearest first (across domains)."""
        return _closure([(key, column)], lambda ref: sorted(self.derives.get(ref, ())))

    def derived_from(self, key: str, column: str) -> list[ColumnRef]:
        """Every column computed from ``key.column`` (transitively, across domains)."""
        down = self._reverse_derives()
        return _closure([(key, column)], lambda ref: sorted(down.get(ref, ())))

    def direct_users(self, key: str, column: str) -> list[str]:
        """Nodes whose SQL reads ``key.column`` anywhere (or, opaque, any column of ``key``)."""
        return sorted(
            node
            for node, used in self.uses.items()
            if (key, column) in used or (key, ANY_COLUMN) in used
        )

    def downstream_nodes(self, keys: Iterable[str]) -> list[str]:
        """Every node built (transitively) from any of ``keys``, the keys excluded."""
        dependants: dict[str, set[str]] = {}
        for node, deps in self.depends.items():
            for dep in deps:
                dependants.setdefault(dep, set()).add(node)
        start = list(keys)
        found = _closure(
            [(k, "") for k in start], lambda r: [(d, "") for d in dependants.get(r[0], ())]
        )
        return sorted({k for k, _ in found} - set(start))

    def _reverse_derives(self) -> dict[ColumnRef, set[ColumnRef]]:
        down: dict[ColumnRef, set[ColumnRef]] = {}
        for ref, ups in self.derives.items():
            for up in ups:
                down.setdefault(up, set()).add(ref)
        return down


def _closure(start: list[ColumnRef], step: Any) -> list[ColumnRef]:
    """Breadth-first: what ``step`` reaches from ``start`` (not ``start`` itself), nearest first."""
    seen, order, todo = set(start), [], deque(start)
    while todo:
        for nxt in step(todo.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                order.append(nxt)
                todo.append(nxt)
    return order


# -- one domain --------------------------------------------------------------------------------


def _relation(name: str | None) -> tuple[str, ...] | None:
    """(catalog, db, table) of a relation name, lower case as DuckDB resolves unquoted names."""
    if not name:
        return None
    try:
        table = sqlglot.to_table(name, dialect=DIALECT)
    except SqlglotError:
        return None
    return tuple(p.lower() for p in (table.catalog, table.db, table.name) if p)


def _node_key(domain: str, uid: str, node: Mapping[str, Any]) -> tuple[str, str]:
    """(key, kind) of a manifest node: products by address, inputs by the producer's address."""
    if is_product(node):
        try:
            return str(descriptor_from_node(domain, node).address), "product"
        except MeshError:
            return uid, "model"
    if producer := input_domain(node):
        return f"{producer}.{node['name']}", "product"
    return uid, str(node.get("resource_type"))


def _order(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Models in dependency order (upstream first); a cycle keeps manifest order."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(uid: str, path: frozenset[str]) -> None:
        if uid in seen or uid in path:
            return
        for dep in (models[uid].get("depends_on") or {}).get("nodes") or []:
            if dep in models:
                visit(dep, path | {uid})
        seen.add(uid)
        done.append(uid)

    for uid in models:
        visit(uid, frozenset())
    return done


def _analyse(
    sql: str, schema: dict[str, Any], tables: Mapping[tuple[str, ...], str]
) -> tuple[list[str], dict[str, set[ColumnRef]], set[ColumnRef]]:
    """Output columns, each one's derivation, and every column used, of one SELECT."""
    tree = qualify(
        sqlglot.parse_one(sql, dialect=DIALECT), schema=schema, dialect=DIALECT,
        validate_qualify_columns=False, identify=False,
    )  # fmt: skip

    def key_of(table: exp.Table) -> str | None:
        parts = tuple(p.lower() for p in (table.catalog, table.db, table.name) if p)
        return tables.get(parts) or tables.get(parts[-2:]) or tables.get(parts[-1:])

    used: set[ColumnRef] = set()
    for scope in traverse_scope(tree):
        for column in scope.columns:
            source = scope.sources.get(column.table)
            if isinstance(source, exp.Table) and (key := key_of(source)):
                used.add((key, column.name))
    outputs = list(tree.named_selects)
    derives: dict[str, set[ColumnRef]] = {}
    for name, root in sqlglot_lineage(None, tree, schema=schema, dialect=DIALECT).items():
        derives[name] = {
            (key, node.name.split(".")[-1])
            for node in root.walk()
            if isinstance(node.expression, exp.Table) and (key := key_of(node.expression))
        }
    return outputs, derives, used


def _schema_add(schema: dict[str, Any], relation: tuple[str, ...], columns: Sequence[str]) -> None:
    if len(relation) != 3 or not columns:
        return
    catalog, db, table = relation
    schema.setdefault(catalog, {}).setdefault(db, {})[table] = {c: "unknown" for c in columns}


def domain_lineage(
    domain: str, manifest: Mapping[str, Any], product_columns: Mapping[str, Sequence[str]]
) -> Lineage:
    """The lineage of one domain's manifest; ``product_columns``: the columns of each product
    (address -> names) its mesh inputs resolve to."""
    result = Lineage()
    nodes = {**manifest.get("nodes", {}), **manifest.get("sources", {})}
    keys: dict[str, str] = {}
    tables: dict[tuple[str, ...], str] = {}
    schema: dict[str, Any] = {}
    for uid, node in nodes.items():
        if node.get("resource_type") not in ("model", "source", "seed", "snapshot"):
            continue
        key, kind = _node_key(domain, uid, node)
        keys[uid] = key
        if kind == "product" and node.get("resource_type") == "source":
            declared = list(product_columns.get(key, ()))
            file = f"dbt_projects/{domain}/{node.get('original_file_path', '')}"
            result.inputs.setdefault(key, set()).add((domain, file))
        else:
            name = node["name"]
            if node.get("resource_type") == "source":
                name = f"{node.get('source_name')}.{name}"
            file = f"dbt_projects/{domain}/{node.get('original_file_path', '')}"
            result.nodes[key] = LineageNode(key, domain, kind, name, file)
            declared = list((node.get("columns") or {}).keys())
        if relation := _relation(node.get("relation_name")):
            for i in range(len(relation)):
                tables.setdefault(relation[i:], key)
            if node.get("resource_type") != "model":
                _schema_add(schema, relation, declared)
        if node.get("resource_type") != "model":
            result.columns.setdefault(key, declared)
    models = {u: n for u, n in nodes.items() if n.get("resource_type") == "model"}
    for uid in _order(models):
        _model(result, keys[uid], models[uid], keys, schema, tables)
    return result


def _model(
    result: Lineage, key: str, node: Mapping[str, Any], keys: Mapping[str, str],
    schema: dict[str, Any], tables: Mapping[tuple[str, ...], str],
) -> None:  # fmt: skip
    deps = {keys[d] for d in (node.get("depends_on") or {}).get("nodes") or [] if d in keys}
    result.depends[key] = deps
    declared = list((node.get("columns") or {}).keys())
    sql = node.get("compiled_code")
    problem = None
    outputs, derives, used = declared, {}, set()
    if not sql:
        problem = "no compiled SQL in the manifest (run `mesh prepare`)"
    else:
        try:
            outputs, derives, used = _analyse(sql, schema, tables)
        except Exception as exc:  # isolation: one model's SQL never breaks the others' lineage
            problem = f"sqlglot could not analyse its SQL ({type(exc).__name__}: {exc})"[:300]
    if problem:  # opaque: it may use any column of what it depends on
        used = {(d, ANY_COLUMN) for d in deps}
        result.nodes[key] = replace(result.nodes[key], problem=problem)
    if "*" in outputs and declared:  # a star over columns nobody declared: trust the contract
        outputs = declared
    result.columns[key] = outputs or declared
    result.uses[key] = used
    for column, ups in derives.items():
        result.derives[(key, column)] = ups
    _schema_add(schema, _relation(node.get("relation_name")) or (), result.columns[key])


# -- the mesh ----------------------------------------------------------------------------------

_CACHE: dict[str, tuple[Any, Lineage]] = {}  # manifest path -> (stamp, lineage)


def mesh_lineage(
    mesh: Mesh,
    directory: Directory | None = None,
    *,
    extra_columns: Mapping[str, Sequence[str]] | None = None,
) -> Lineage:
    """The lineage of every domain's prepared manifest and Python products. ``extra_columns``:
    more columns per product address, e.g. the columns a base revision had (``mesh diff``), so
    a consumer's star over a product still expands to a column the product has since dropped.
    A domain without a manifest is listed in ``problems`` (no lineage for it)."""
    directory = directory or load_directory(mesh, refresh=False)
    columns: dict[str, list[str]] = {
        a: [c.name for c in d.columns] for a, d in directory.descriptors.items()
    }
    for address, extra in (extra_columns or {}).items():
        columns[address] = list(dict.fromkeys([*columns.get(address, []), *extra]))
    result = Lineage()
    for name in list_domain_names(mesh):
        try:
            domain = load_domain(mesh, name)
            path = manifest_path(domain)
            manifest = load_manifest(domain)
        except MeshError as exc:
            result.problems[name] = exc.what
            continue
        inputs = sorted(
            f"{input_domain(n)}.{n['name']}"
            for n in manifest.get("sources", {}).values()
            if input_domain(n)
        )
        stamp = (path.stat().st_mtime_ns, tuple((a, tuple(columns.get(a, ()))) for a in inputs))
        hit = _CACHE.get(str(path))
        if hit is None or hit[0] != stamp:
            hit = (stamp, domain_lineage(name, manifest, columns))
            _CACHE[str(path)] = hit
        result.merge(hit[1])
    for address, inputs in python_inputs(mesh).items():
        descriptor = directory.descriptors.get(address)
        domain_name = address.split(".")[0]
        file = descriptor.source_file if descriptor else ""
        result.nodes[address] = LineageNode(address, domain_name, "python", address, file)
        result.columns[address] = columns.get(address, [])
        result.depends[address] = set(inputs)
        result.uses[address] = {(i, ANY_COLUMN) for i in inputs}
        for i in inputs:
            result.inputs.setdefault(i, set()).add((domain_name, file))
    return result
