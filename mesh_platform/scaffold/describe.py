"""Descriptors for an adopted dbt project's products, written from what the built project shows.

For each model a team names as a product, :func:`learn` reads the built relation in the
domain's DuckDB: columns and types (DuckDB's ``information_schema``), the row count, and the
personal data in it. Personal data is *suggested* twice over, as the governance policies will
check it: by running the gate's detector over every value
(:func:`mesh_platform.governance.data.personal_data_hits`, counts only: kind and rows, never a
value) and by the column's name (:func:`mesh_platform.governance.builtin.pii_name_kind`).

:func:`descriptor_entry` writes the model's YAML entry the way the sample domains declare
products (``dbt_projects/sales/models/products/products.yml``): ``access: public``, an enforced
contract typed from the relation, the dbt docs' descriptions, a classification per column
(``pii:<kind>`` with a masking rule where personal data was found or is named, ``internal``
otherwise: both marked as suggestions in a comment), and a ``meta.mesh`` block. What only a
person can decide is written as a YAML string starting with :data:`TODO_MARKER`, each on its own
line: the purpose, the owners' contact (when not given), the freshness the team promises, who
is granted the product and why, and any description the dbt docs lack. `mesh check` blocks on
the marker, naming the file and the line (:func:`find_todos` finds them the same way).

The entry replaces the model's entry in the project's own YAML file (the lines of that entry
only: the rest of the file is kept byte for byte), or goes to ``<model>.yml`` beside the
model's SQL when the project did not describe it. The team's tests, constraints and other
properties of the model and its columns are kept.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import yaml

from mesh_platform.addressing import quote_ident
from mesh_platform.compat.pyiceberg import pyarrow_to_schema_without_ids
from mesh_platform.governance.builtin import nested_field_names, pii_name_kind
from mesh_platform.governance.data import personal_data_hits, schema_leaves
from mesh_platform.products.descriptor_lines import TODO_MARKER

# A personal-data kind's suggested mask: a hash keeps a key joinable, a name or an address is
# of no use hashed, a phone's first digits (the country) are kept.
SUGGESTED_MASKS = {"name": "redact", "address": "redact", "date_of_birth": "redact",
                   "phone": "truncate"}  # fmt: skip
DEFAULT_MASK = "hash"
GRANT_DAYS = 365
_OWN_KEYS = ("name", "description", "access", "config", "columns")  # written by the entry


@dataclass
class ColumnFacts:
    """One column of a built product: its type, its dbt docs and the personal data seen in it."""

    name: str
    data_type: str
    description: str = ""
    found: dict[str, int] = field(default_factory=dict)  # kind -> rows (values, nested)
    named: str | None = None  # the kind its name (or a nested field's) says

    @property
    def pii_kind(self) -> str | None:
        if self.found:
            return max(self.found.items(), key=lambda item: item[1])[0]
        return self.named

    def why(self, rows: int) -> str:
        """Why personal data is suggested, in kinds and counts only."""
        reasons = [f"{kind} in {n} of {rows} rows" for kind, n in sorted(self.found.items())]
        if self.named:
            reasons.append(f"its name says {self.named}")
        return "; ".join(reasons)


@dataclass
class ProductFacts:
    """What the built project shows of one model named as a product."""

    model: str
    relation: str
    rows: int
    columns: list[ColumnFacts]
    description: str
    sql_file: Path  # relative to the project
    yaml_file: Path | None  # the project's YAML file describing it (relative), if any

    @property
    def personal(self) -> list[ColumnFacts]:
        return [c for c in self.columns if c.pii_kind]


def learn(
    conn: duckdb.DuckDBPyConnection, node: Mapping[str, Any], relation: tuple[str, str, str]
) -> ProductFacts:
    """The facts of the model ``node`` (a manifest node) built as ``relation`` (database,
    schema, name) in the DuckDB of ``conn``."""
    database, schema, name = relation
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = ? "
        "AND table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [database, schema, name],
    ).fetchall()
    source = ".".join(quote_ident(p) for p in relation)
    count = int(conn.execute(f"SELECT count(*) FROM {source}").fetchone()[0])
    arrow = conn.execute(f"SELECT * FROM {source} LIMIT 0").arrow().schema
    hits = personal_data_hits(conn, source, schema_leaves(pyarrow_to_schema_without_ids(arrow)))
    documented = node.get("columns") or {}
    columns = []
    for column, data_type in rows:
        found: dict[str, int] = {}
        for path, kinds in hits.items():  # a nested field's hits count for its column
            if path == column or re.match(rf"{re.escape(column)}[.\[{{]", path):
                for kind, n in kinds.items():
                    found[kind] = max(found.get(kind, 0), n)
        names = [column, *nested_field_names(data_type if "(" in data_type else "")]
        named = next((k for n in names if (k := pii_name_kind(n))), None)
        description = str((documented.get(column) or {}).get("description") or "").strip()
        columns.append(ColumnFacts(column, data_type.lower(), description, found, named))
    patch = str(node.get("patch_path") or "")
    return ProductFacts(
        model=str(node["name"]),
        relation=source,
        rows=count,
        columns=columns,
        description=str(node.get("description") or "").strip(),
        sql_file=Path(str(node.get("original_file_path"))),
        yaml_file=Path(patch.split("://", 1)[1]) if "://" in patch else None,
    )


# -- the YAML entry ----------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    """``value`` as one YAML scalar on one line (quoted when it must be)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _todo(what: str) -> str:
    return json.dumps(f"{TODO_MARKER} {what}")


def _block(mapping: Mapping[str, Any], indent: str) -> list[str]:
    """Other properties of the team's entry, as block YAML at ``indent``."""
    if not mapping:
        return []
    text = yaml.safe_dump(dict(mapping), sort_keys=False, width=100, allow_unicode=True)
    return [indent + line if line else line for line in text.rstrip("\n").split("\n")]


def _column_lines(col: ColumnFacts, existing: Mapping[str, Any], rows: int, pad: str) -> list[str]:
    """A column's entry: name, type, description, classification (suggested) and the rest of
    what the team declared (tests, constraints, other meta)."""
    description = col.description or str(existing.get("description") or "").strip()
    config = dict(existing.get("config") or {})
    meta = {
        k: v
        for k, v in dict(config.pop("meta", None) or {}).items()
        if k not in ("classification", "masking", "masking_at")
    }
    lines = [
        f"{pad}- name: {_scalar(col.name)}",
        f"{pad}  data_type: {_scalar(col.data_type)}",
        f"{pad}  description: "
        + (_scalar(description) if description else _todo(f"what {col.name} holds")),
        f"{pad}  config:",
        f"{pad}    meta:",
    ]
    if kind := col.pii_kind:
        lines += [
            f"{pad}      classification: {_scalar('pii:' + kind)}  # suggested: personal data "
            f"({col.why(rows)})",
            f"{pad}      masking: {SUGGESTED_MASKS.get(kind, DEFAULT_MASK)}  # suggested: "
            "masked on publication",
        ]
    else:
        lines.append(
            f"{pad}      classification: internal  # suggested: no personal data found in "
            f"{rows} rows nor in its name"
        )
    lines += _block(meta, f"{pad}      ") + _block(config, f"{pad}    ")
    kept = {k: v for k, v in existing.items() if k not in ("name", "data_type", "description")}
    kept.pop("config", None)
    return lines + _block(kept, f"{pad}  ")


def descriptor_entry(
    facts: ProductFacts,
    existing: Mapping[str, Any],
    *,
    team: str,
    contact: str | None,
    today: dt.date,
    pad: str = "  ",
) -> str:
    """The model's entry in a ``models:`` list (``pad``: the indentation of its ``-``)."""
    inner = pad + "  "
    description = facts.description or str(existing.get("description") or "").strip()
    config = dict(existing.get("config") or {})
    for key in ("contract", "access"):
        config.pop(key, None)
    meta = dict(config.pop("meta", None) or {})
    meta.pop("mesh", None)
    owner_contact = (
        _scalar(contact)
        if contact
        else _todo(f"the owners' contact email, e.g. {team}-data@example.com")
    )
    expires = today + dt.timedelta(days=GRANT_DAYS)
    lines = [
        f"{pad}- name: {_scalar(facts.model)}",
        f"{inner}description: "
        + (_scalar(description) if description else _todo("what one row is, in a sentence or two")),
        f"{inner}access: public  # a product of the mesh (mesh adopt)",
        f"{inner}config:",
        f"{inner}  contract: {{enforced: true}}  # the columns below, typed as built",
        f"{inner}  meta:",
        *_block(meta, f"{inner}    "),
        f"{inner}    mesh:",
        f"{inner}      purpose: {_todo('why this product exists, for whom')}",
        f"{inner}      owner:",
        f"{inner}        team: {_scalar(team)}",
        f"{inner}        contact: {owner_contact}",
        f"{inner}      version: 1.0.0",
        f"{inner}      status: draft",
        f"{inner}      sla:",
        f"{inner}        freshness:",
        f"{inner}          max_age: "
        + _todo("how old the published data may get before consumers are alerted, e.g. 26h"),
        f"{inner}        volume: {{min_ratio: 0.5}}  # suggested: a batch under half the "
        "published rows is blocked",
        f"{inner}        expectations:",
        f"{inner}          - expect_table_row_count_to_be_between: {{min_value: 1}}",
        f"{inner}      grants:",
        f"{inner}        - to: {_scalar('team:' + team)}",
        f"{inner}          purpose: "
        + _todo(
            "who reads this product and why; add one grant per reader (a domain, "
            "team:<t> or user:<u>), with columns or rows to narrow it"
        ),
        f"{inner}          expires: {expires.isoformat()}",
        *_block(config, f"{inner}  "),
    ]
    kept = {k: v for k, v in existing.items() if k not in _OWN_KEYS}
    lines += _block(kept, inner)
    lines.append(f"{inner}columns:")
    declared = {
        str(c.get("name")): c for c in existing.get("columns") or [] if isinstance(c, Mapping)
    }
    for col in facts.columns:
        lines += _column_lines(col, declared.get(col.name, {}), facts.rows, inner + "  ")
    return "\n".join(lines) + "\n"


# -- writing it into the project's YAML ------------------------------------------------------


@dataclass(frozen=True)
class EntrySpan:
    """Where a model's entry sits in a YAML file: its lines [start, end) and its dash's
    indentation; ``data``: the entry as parsed."""

    start: int
    end: int
    pad: str
    data: Mapping[str, Any]


def find_entry(text: str, model: str) -> EntrySpan | None:
    """The entry of ``model`` in the ``models:`` list of a dbt YAML file's ``text``."""
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        return None
    lines = text.split("\n")
    for key, value in root.value:
        if key.value != "models" or not isinstance(value, yaml.SequenceNode):
            continue
        for index, item in enumerate(value.value):
            if not isinstance(item, yaml.MappingNode):
                continue
            names = [v.value for k, v in item.value if k.value == "name"]
            if names != [model] or value.flow_style:
                continue
            start = item.start_mark.line
            end_line, end_col = item.end_mark.line, item.end_mark.column
            end = end_line if not lines[end_line][:end_col].strip() else end_line + 1
            while end > start + 1 and (not lines[end - 1].strip() or
                                       lines[end - 1].lstrip().startswith("#")):  # fmt: skip
                end -= 1  # blank lines and comments after the entry stay in the file
            first = lines[start]
            dash = first.index("-") if first.lstrip().startswith("-") else item.start_mark.column
            data = (yaml.safe_load(text) or {})["models"][index]
            return EntrySpan(start, end, " " * dash, data if isinstance(data, Mapping) else {})
    return None


def spliced(text: str, span: EntrySpan, entry: str) -> str:
    """``text`` with the lines of ``span`` replaced by ``entry``."""
    lines = text.split("\n")
    return "\n".join([*lines[: span.start], *entry.rstrip("\n").split("\n"), *lines[span.end :]])


def find_todos(text: str) -> list[tuple[int, str, str]]:
    """(line, key, what) of every YAML string value that starts with :data:`TODO_MARKER`."""
    found = []
    pattern = re.compile(r"^\s*(?:-\s+)?([A-Za-z_][\w-]*):\s*[\"']?" + re.escape(TODO_MARKER))
    for number, line in enumerate(text.split("\n"), 1):
        if match := pattern.match(line):
            what = line.split(TODO_MARKER, 1)[1].strip().rstrip("\"'")
            found.append((number, match.group(1), what))
    return found


# Values that stand for a person's decision when a written descriptor is validated: the
# descriptor must be valid once every TODO is filled, whatever is filled in.
_FILLED = {"contact": "owners@example.com", "max_age": "26h"}


def filled(value: Any, key: str = "") -> Any:
    """``value`` with every TODO string replaced by a valid stand-in (for validation only)."""
    if isinstance(value, Mapping):
        return {k: filled(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [filled(v, key) for v in value]
    if isinstance(value, str) and value.startswith(TODO_MARKER):
        return _FILLED.get(key, "A decision of the owning team, written here.")
    return value
