"""A product's column-level lineage for people: ``mesh describe`` and the HTML catalog.

For each column of a product (from :mod:`mesh_platform.products.lineage`): what it is computed
from inside its domain (private models, raw sources), the other domains' product columns it
comes from (through the domain's mesh-input sources), the product columns computed from it, and
the models and products that read it anywhere (joins and filters included; a Python product,
whose column use is not known, reads every column of its inputs).
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from mesh_platform.config import Mesh
from mesh_platform.products.lineage import ANY_COLUMN, ColumnRef, Lineage, mesh_lineage


def _label(lineage: Lineage, ref: ColumnRef) -> str:
    key, column = ref
    node = lineage.nodes.get(key)
    name = node.label if node is not None else key
    return name if column == ANY_COLUMN else f"{name}.{column}"


def column_lineage(lineage: Lineage, address: str) -> list[dict[str, Any]]:
    """Per column of the product at ``address``: upstream within its domain and across domains,
    downstream product columns, and the other relations that read it (JSON-able)."""
    node = lineage.nodes.get(address)
    if node is None:
        return []

    def where(refs: list[ColumnRef], keep: Any) -> list[str]:
        return [_label(lineage, r) for r in refs if (n := lineage.nodes.get(r[0])) and keep(n)]

    rows = []
    for column in lineage.columns.get(address, []):
        upstream = lineage.upstream(address, column)
        rows.append({
            "column": column,
            "upstream_domain": where(upstream, lambda n: n.domain == node.domain),
            "upstream_mesh": where(
                upstream, lambda n: n.domain != node.domain and n.kind == "product"
            ),
            "downstream": where(
                lineage.derived_from(address, column), lambda n: n.kind in ("product", "python")
            ),
            "read_by": [lineage.nodes[k].label for k in lineage.direct_users(address, column)
                        if k in lineage.nodes],
        })  # fmt: skip
    return rows


def lineage_table(mesh: Mesh, address: str) -> Any:
    """``mesh describe``'s column lineage table of one product."""
    lineage = mesh_lineage(mesh)
    table = Table(title="column lineage (sqlglot over the compiled SQL)", title_justify="left")
    for heading in ("column", "from (this domain)", "from (other domains)", "feeds", "read by"):
        table.add_column(heading, overflow="fold")
    for row in column_lineage(lineage, address):
        table.add_row(
            row["column"],
            *(escape(", ".join(row[k]) or "-") for k in
              ("upstream_domain", "upstream_mesh", "downstream", "read_by")),
        )  # fmt: skip
    node = lineage.nodes.get(address)
    if node is not None and node.problem:
        table.caption = f"its SQL could not be analysed: {escape(node.problem)}"
    elif node is not None and node.kind == "python":
        table.caption = "built in Python: which input columns it reads is not known"
    return table
