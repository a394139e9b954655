"""What changed in a product's contract between two revisions, and which changes break consumers.

The rule set, in one place (:data:`RULES`; ``mesh diff --format json`` carries it):

======================================  ========  ==============================================
change                                  breaking  why
======================================  ========  ==============================================
product removed                         yes       its consumers lose it (no, once it was
                                                  deprecated and its sunset date has passed)
column removed                          yes       SQL naming it fails
column renamed                          yes       the same, under the old name
column retyped                          yes       values and casts change
column widened (Iceberg promotion)      no        int -> bigint, float -> double, a decimal's
                                                  precision up at the same scale
column added                            no        nobody reads it yet
classification stricter                 yes       public < internal < confidential < pii:<kind>
                                                  (or another pii kind): readers not cleared see
                                                  masks or lose access
masking added, other method, now at     yes       the values readers get change
publication (was at read)
grant removed, fewer columns, a row     yes       the principal reads less (for that principal)
filter added or changed, earlier expiry
anything else (descriptions, purpose,   no        reported
SLA, looser classification or grant)
======================================  ========  ==============================================

**Versioning rule**: a breaking change needs a new major version. The major is part of the
address (``sales.customers_v2``), so a breaking change under an unchanged address is refused; it
ships as the next major (a dbt model version, or the descriptor's major for an unversioned model)
while the previous major keeps serving its consumers until its sunset. A product whose base
status is ``draft`` promises nothing yet: its breaking changes are listed, not refused.

**Renames** are found best effort: a removed and an added column are a rename when they have the
same type and either the same non-empty description or the same position, and no other removed
or added column matches them as well (ambiguous matches stay a removal plus an addition).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.descriptor_columns import Column

RULES: tuple[tuple[str, bool, str], ...] = (
    ("product_removed", True, "consumers lose the product (not breaking once its sunset passed)"),
    ("column_removed", True, "SQL that names the column fails"),
    ("column_renamed", True, "SQL that names the old column fails"),
    ("column_retyped", True, "values and casts change"),
    ("column_widened", False, "an Iceberg promotion: old data reads unchanged"),
    ("column_added", False, "nobody reads it yet"),
    ("classification_stricter", True, "readers not cleared see masks or lose access"),
    ("classification_looser", False, "more readers may see it: a governance review, not a break"),
    ("masking_changed", True, "the values readers get change"),
    ("masking_loosened", False, "fewer readers see masks: a governance review, not a break"),
    ("grant_removed", True, "the principal loses the product"),
    ("grant_narrowed", True, "the principal loses columns, rows or time"),
    ("grant_widened", False, "the principal reads more"),
    ("grant_added", False, "a new reader"),
    ("description_changed", False, "documentation"),
    ("status_changed", False, "lifecycle (deprecation is announced, not a break)"),
)
BREAKING = {kind for kind, breaking, _ in RULES if breaking}
_LEVELS = {None: 0, "public": 0, "internal": 1, "confidential": 2}


@dataclass(frozen=True)
class Change:
    kind: str  # a kind of RULES
    message: str
    column: str | None = None  # the column consumers know (the base revision's name)
    principal: str | None = None  # grant changes: whose grant
    columns: tuple[str, ...] | None = None  # grant changes: columns lost (None: all)

    @property
    def breaking(self) -> bool:
        return self.kind in BREAKING


@dataclass(frozen=True)
class ProductDiff:
    """One product between two revisions: ``base`` None when added, ``head`` None when
    removed; ``head`` of a higher major when the product moved to a new major version."""

    base: ProductDescriptor | None
    head: ProductDescriptor | None
    changes: tuple[Change, ...]

    @property
    def address(self) -> str:
        return str((self.base or self.head).address)  # type: ignore[union-attr]

    @property
    def major_bump(self) -> bool:
        return bool(self.base and self.head and self.head.body.major > self.base.body.major)

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    @property
    def violations(self) -> list[Change]:
        """Breaking changes without the major version bump the versioning rule asks for (a
        draft promises nothing yet: its changes are listed, never refused)."""
        draft = self.base is not None and self.base.body.status == "draft"
        return [] if self.major_bump or draft else self.breaking


# -- types --------------------------------------------------------------------------------------

_ALIASES = {
    "int": "integer", "int4": "integer", "signed": "integer", "int8": "bigint", "long": "bigint",
    "int2": "smallint", "short": "smallint", "int1": "tinyint", "float4": "float",
    "real": "float", "float8": "double", "doubleprecision": "double", "text": "varchar",
    "string": "varchar", "char": "varchar", "bpchar": "varchar", "numeric": "decimal",
    "bool": "boolean", "logical": "boolean", "datetime": "timestamp",
    "timestampwithtimezone": "timestamptz",
}  # fmt: skip
_INTS = ["tinyint", "smallint", "integer", "bigint"]


def normalise_type(data_type: str | None) -> str:
    """A DuckDB type name in one spelling (``INT`` and ``integer`` are one type; a varchar's
    length is ignored, as DuckDB ignores it)."""
    text = re.sub(r"\s+", "", (data_type or "").lower())
    base, _, args = text.partition("(")
    base = _ALIASES.get(base, base)
    if base == "varchar":
        return "varchar"
    if base == "decimal" and not args:
        return "decimal(18,3)"  # DuckDB's default
    return f"{base}({args}" if args else base


def _decimal(t: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"decimal\((\d+),(\d+)\)", t)
    return (int(match.group(1)), int(match.group(2))) if match else None


def type_change(old: str | None, new: str | None) -> str | None:
    """None (same type), "column_widened" (an Iceberg promotion) or "column_retyped"."""
    a, b = normalise_type(old), normalise_type(new)
    if a == b:
        return None
    if a in _INTS and b in _INTS and _INTS.index(b) > _INTS.index(a):
        return "column_widened"
    if (a, b) == ("float", "double"):
        return "column_widened"
    da, db = _decimal(a), _decimal(b)
    if da and db and da[1] == db[1] and db[0] > da[0]:
        return "column_widened"
    return "column_retyped"


# -- columns --------------------------------------------------------------------------------------


def _renames(base: list[Column], head: list[Column]) -> dict[str, str]:
    """old name -> new name for the removed/added pairs that are unambiguously a rename."""
    head_names = {c.name for c in head}
    base_names = {c.name for c in base}
    removed = [(i, c) for i, c in enumerate(base) if c.name not in head_names]
    added = [(i, c) for i, c in enumerate(head) if c.name not in base_names]

    def match(old: tuple[int, Column], new: tuple[int, Column]) -> bool:
        (i, a), (j, b) = old, new
        if normalise_type(a.data_type) != normalise_type(b.data_type):
            return False
        same_text = bool(a.description.strip()) and a.description.strip() == b.description.strip()
        return same_text or i == j

    found = {}
    for old in removed:
        candidates = [new for new in added if match(old, new)]
        if len(candidates) == 1 and sum(match(o, candidates[0]) for o in removed) == 1:
            found[old[1].name] = candidates[0][1].name
    return found


def _level(classification: str | None) -> int:
    return 3 if (classification or "").startswith("pii:") else _LEVELS.get(classification, 1)


def _classification(name: str, a: Column, b: Column) -> list[Change]:
    if a.classification == b.classification:
        return []
    shown = f"column {name}: classification {a.classification or 'none'} -> " + (
        b.classification or "none"
    )
    other_kind = _level(a.classification) == _level(b.classification) == 3  # pii:x -> pii:y
    if _level(b.classification) > _level(a.classification) or other_kind:
        return [Change("classification_stricter", shown, column=name)]
    return [Change("classification_looser", shown, column=name)]


def _masking(name: str, a: Column, b: Column) -> list[Change]:
    old = (a.masking, a.masking_at if a.masking else None)
    new = (b.masking, b.masking_at if b.masking else None)
    if old == new:
        return []
    shown = (
        f"column {name}: masking {a.masking or 'none'}"
        + (f" at {a.masking_at}" if a.masking else "")
        + f" -> {b.masking or 'none'}"
        + (f" at {b.masking_at}" if b.masking else "")
    )
    loosened = b.masking is None or (a.masking == b.masking and b.masking_at == "read")
    return [Change("masking_loosened" if loosened else "masking_changed", shown, column=name)]


def column_changes(base: list[Column], head: list[Column]) -> list[Change]:
    """Removed, renamed, retyped, widened and added columns, then classification, masking and
    description changes of the columns both revisions have."""
    renames = _renames(base, head)
    by_name = {c.name: c for c in head}
    changes = []
    for a in base:
        if a.name in renames:
            new = renames[a.name]
            changes.append(Change("column_renamed", f"column {a.name} renamed to {new}", a.name))
            b = by_name[new]
        elif a.name not in by_name:
            changes.append(Change("column_removed", f"column {a.name} removed", a.name))
            continue
        else:
            b = by_name[a.name]
        if kind := type_change(a.data_type, b.data_type):
            word = "widened" if kind == "column_widened" else "retyped"
            changes.append(Change(kind, f"column {a.name} {word}: {a.data_type} -> "
                                        f"{b.data_type}", a.name))  # fmt: skip
        changes += _classification(a.name, a, b) + _masking(a.name, a, b)
        if a.description.strip() != b.description.strip():
            changes.append(Change("description_changed", f"column {a.name}: description",
                                  a.name))  # fmt: skip
    known = {c.name for c in base} | set(renames.values())
    changes += [Change("column_added", f"column {c.name} added") for c in head
                if c.name not in known]  # fmt: skip
    return changes


# -- grants -------------------------------------------------------------------------------------


def _access(d: ProductDescriptor) -> dict[str, tuple[frozenset[str] | None, frozenset[str] | None,
                                                     dt.date]]:  # fmt: skip
    """principal -> (columns or None for all, row filters or None for all rows, last expiry):
    several grants to one principal add up."""
    found: dict[str, tuple[frozenset[str] | None, frozenset[str] | None, dt.date]] = {}
    for g in d.body.grants:
        cols = None if g.columns is None else frozenset(g.columns)
        rows = None if g.rows is None else frozenset([" ".join(g.rows.split())])
        if g.to in found:
            c0, r0, e0 = found[g.to]
            cols = None if c0 is None or cols is None else c0 | cols
            rows = None if r0 is None or rows is None else r0 | rows
            found[g.to] = (cols, rows, max(e0, g.expires))
        else:
            found[g.to] = (cols, rows, g.expires)
    return found


def grant_changes(base: ProductDescriptor, head: ProductDescriptor) -> list[Change]:
    """Per principal: a grant removed or narrowed (breaking), added or widened."""
    a, b = _access(base), _access(head)
    base_cols = [c.name for c in base.columns]
    head_cols = {c.name for c in head.columns}
    changes = []
    for who, (cols, rows, expires) in sorted(a.items()):
        if who not in b:
            changes.append(Change("grant_removed", f"grant to {who} removed", principal=who))
            continue
        new_cols, new_rows, new_expires = b[who]
        had = set(base_cols if cols is None else cols) & head_cols
        lost = had - set(head_cols if new_cols is None else new_cols)
        narrowed = []
        if lost:
            narrowed.append(f"columns {', '.join(sorted(lost))}")
        if new_rows is not None and new_rows != rows:
            narrowed.append("rows (a row filter added or changed)")
        if new_expires < expires:
            narrowed.append(f"expiry {expires} -> {new_expires}")
        if narrowed:
            changes.append(Change(
                "grant_narrowed", f"grant to {who} narrowed: {'; '.join(narrowed)}",
                principal=who, columns=tuple(sorted(lost)) if lost else None,
            ))  # fmt: skip
        elif (
            (cols is not None and (new_cols is None or new_cols - cols))  # all: not a change
            or (rows is not None and new_rows is None)
            or new_expires > expires
        ):
            changes.append(Change("grant_widened", f"grant to {who} widened", principal=who))
    changes += [Change("grant_added", f"grant to {who} added", principal=who)
                for who in sorted(set(b) - set(a))]  # fmt: skip
    return changes


# -- products -----------------------------------------------------------------------------------


def compare(
    base: ProductDescriptor | None, head: ProductDescriptor | None, today: dt.date
) -> list[Change]:
    """Every change from ``base`` to ``head`` (either may be None: added, removed)."""
    if base is None:
        return []
    if head is None:
        body = base.body
        if body.status == "deprecated" and body.sunset_on and body.sunset_on < today:
            return [Change("status_changed", f"retired after its sunset on {body.sunset_on}")]
        return [Change("product_removed", f"product {base.address} removed")]
    changes = column_changes(base.columns, head.columns) + grant_changes(base, head)
    if base.body.status != head.body.status:
        changes.append(Change("status_changed", f"status {base.body.status} -> "
                                                f"{head.body.status}"))  # fmt: skip
    return changes


def pair(
    base: Mapping[str, ProductDescriptor], head: Mapping[str, ProductDescriptor]
) -> list[tuple[ProductDescriptor | None, ProductDescriptor | None]]:
    """Products of two revisions side by side: by address; a base product whose address is
    gone is compared with the highest new major of the same product (a major bump), else it
    was removed; a head product left over was added (a new product, or a new major beside the
    old one)."""
    pairs: list[tuple[ProductDescriptor | None, ProductDescriptor | None]] = []
    used: set[str] = set()
    for address, b in sorted(base.items()):
        if address in head:
            pairs.append((b, head[address]))
            used.add(address)
            continue
        newer = [h for a, h in head.items() if a not in base and h.domain == b.domain
                 and h.name == b.name and h.body.major > b.body.major]  # fmt: skip
        successor = max(newer, key=lambda h: h.body.major, default=None)
        if successor is not None:
            used.add(str(successor.address))
        pairs.append((b, successor))
    pairs += [(None, h) for a, h in sorted(head.items()) if a not in used and a not in base]
    return pairs


def diff_products(
    base: Mapping[str, ProductDescriptor],
    head: Mapping[str, ProductDescriptor],
    today: dt.date | None = None,
) -> list[ProductDiff]:
    """The diff of every product of two revisions (address -> descriptor each)."""
    today = today or dt.date.today()
    return [ProductDiff(b, h, tuple(compare(b, h, today))) for b, h in pair(base, head)]
