"""What a batch's schema changes in a published table's, field by field at every depth, by
Iceberg's evolution rules: what ``union_by_name`` (storage/wap.py) would add or widen, and what
it cannot take (a dropped field, a type Iceberg cannot promote to).

Fields are matched by name and their types compared by structure, never by field id: the new
rows' schema has no ids (it comes from DuckDB's Arrow output), the published one has the
table's. pyiceberg's list, map and struct types compare their element and field ids, so an
unchanged ``list<string>`` column is not equal to itself across a publication, and
``promote`` refuses every nested type. A nested field is named by its path
(``address.zip``, ``tags.element``, ``prices.value``), as pyiceberg names it.

Nullability is not compared: DuckDB's Arrow output marks every field nullable at every depth;
which top-level columns are required is the contract's (``not_null`` constraints), applied by
storage/tablespec.py (a column dropping its constraint is relaxed, which readers of optional
fields do not notice; one gaining it is tightened once main proves it free of nulls).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyiceberg.schema import Schema
    from pyiceberg.types import IcebergType


@dataclass
class SchemaChanges:
    """What the new schema does to the published one; each entry names a column or a nested
    field by its path. ``type_changes`` and ``widened`` read ``path: old -> new``."""

    added: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    type_changes: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)

    @property
    def breaking(self) -> bool:
        """Whether a published consumer would break: a field gone (or renamed) or retyped."""
        return bool(self.dropped or self.type_changes)


def compare_schemas(old: Schema, new: Schema) -> SchemaChanges:
    """The changes ``new`` makes to ``old`` (ids ignored; see the module docstring)."""
    changes = SchemaChanges()
    _compare("", old.as_struct(), new.as_struct(), changes)
    for entries in (changes.added, changes.dropped, changes.type_changes, changes.widened):
        entries.sort()
    return changes


def render(kind: IcebergType) -> str:
    """``kind`` as a type name without field ids: ``struct<city: string, zip: int>``."""
    # heavy: pyiceberg (~2 s), only when a batch's schema is compared
    from pyiceberg.types import ListType, MapType, StructType

    if isinstance(kind, StructType):
        return f"struct<{', '.join(f'{f.name}: {render(f.field_type)}' for f in kind.fields)}>"
    if isinstance(kind, ListType):
        return f"list<{render(kind.element_type)}>"
    if isinstance(kind, MapType):
        return f"map<{render(kind.key_type)}, {render(kind.value_type)}>"
    return str(kind)


def _compare(path: str, old: IcebergType, new: IcebergType, changes: SchemaChanges) -> None:
    # heavy: pyiceberg (~2 s), only when a batch's schema is compared
    from pyiceberg.exceptions import ResolveError
    from pyiceberg.schema import promote
    from pyiceberg.types import ListType, MapType, StructType

    def at(name: str) -> str:
        return f"{path}.{name}" if path else name

    if isinstance(old, StructType) and isinstance(new, StructType):
        before = {f.name: f.field_type for f in old.fields}
        after = {f.name: f.field_type for f in new.fields}
        changes.dropped += [at(name) for name in before if name not in after]
        changes.added += [at(name) for name in after if name not in before]
        for name in before.keys() & after.keys():
            _compare(at(name), before[name], after[name], changes)
    elif isinstance(old, ListType) and isinstance(new, ListType):
        _compare(at("element"), old.element_type, new.element_type, changes)
    elif isinstance(old, MapType) and isinstance(new, MapType):
        # Keys are the map's identity: Iceberg evolves no field of a key, so any change breaks.
        if render(old.key_type) != render(new.key_type):
            changes.type_changes.append(
                f"{at('key')}: {render(old.key_type)} -> {render(new.key_type)}"
            )
        _compare(at("value"), old.value_type, new.value_type, changes)
    elif old.is_primitive and new.is_primitive:
        if old == new:
            return
        try:
            promote(old, new)
            changes.widened.append(f"{path}: {old} -> {new}")
        except ResolveError:
            changes.type_changes.append(f"{path}: {old} -> {new}")
    else:  # a list became a struct, a column became a list...
        changes.type_changes.append(f"{path}: {render(old)} -> {render(new)}")
