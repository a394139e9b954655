"""What a product's contract says about its Iceberg table, applied to the table: column docs,
required columns, identifier fields (the primary key), the sort order and the file layout.

The descriptor (model layer) hands storage plain data, a :class:`TableSpec`; storage applies it
by Iceberg's rules, failing closed:

- **docs** and **relaxations** (a column no longer declared not null becomes optional, an
  identifier field no longer declared is dropped) are safe at any time: applied before a
  batch is staged, with the batch's schema (``union_by_name``);
- **tightening** (an optional column declared not null becomes required) is an incompatible
  change for Iceberg: a reader of old data would meet nulls in a required column. A new table
  is created with its required columns; on an existing one, a column becomes required only
  *after* a publication, when main's data files prove by their null counts (from the
  manifests) that it holds none. A batch that keeps older rows with nulls (an incremental run
  replacing some partitions) is refused before anything is written
  (:func:`check_tightening`); a full refresh replaces them. The batch's own rows are checked
  by the writer (storage/datafiles.py): a null in a required column refuses the batch;
- **identifier fields** are set with the tightening (Iceberg requires them required, and not
  float or double);
- the **sort order** is the table's Iceberg sort order; the writer orders its files by it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import MeshError
from mesh_platform.storage.datafiles import (
    FILE_SIZE_PROPERTY,
    TARGET_FILE_SIZE_BYTES,
    layout_properties,
)

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table

    from mesh_platform.storage.partitioning import Partitioning

DOC_KEY = b"doc"  # pyiceberg reads an Arrow field's doc from this metadata key


@dataclass(frozen=True)
class TableSpec:
    """A product's table as its contract declares it (top-level columns, by name)."""

    docs: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()  # not null (a primary key's columns included)
    identifier: tuple[str, ...] = ()  # the primary key
    sort_by: tuple[str, ...] = ()
    target_file_size_bytes: int = TARGET_FILE_SIZE_BYTES

    @classmethod
    def of_table(cls, table: Table | None) -> TableSpec:
        """What ``table`` declares now: a writer given no spec (a rewrite, a tool) keeps it."""
        if table is None:
            return cls()
        schema = table.schema()
        size = table.properties.get(FILE_SIZE_PROPERTY)
        return cls(
            required=tuple(f.name for f in schema.fields if f.required),
            identifier=tuple(sorted(schema.identifier_field_names())),
            sort_by=tuple(_sort_names(table)),
            target_file_size_bytes=int(size) if size else TARGET_FILE_SIZE_BYTES,
        )

    def properties(self) -> dict[str, str]:
        """The table's ``write.*`` properties (storage/datafiles.layout_properties)."""
        return layout_properties(self.target_file_size_bytes)

    def arrow_schema(self, batch: pa.Schema, existing: Schema | None) -> pa.Schema:
        """``batch`` with each column's doc, and not nullable where the column is required
        and may be so now: on a new table (``existing`` None), or already required in it.
        Other required columns are tightened after publication (:func:`tighten`)."""
        already = {f.name for f in existing.fields if f.required} if existing is not None else None
        fields = []
        for column in batch:
            required = column.name in self.required and (already is None or column.name in already)
            metadata = dict(column.metadata or {})
            if doc := self.docs.get(column.name, "").strip():
                metadata[DOC_KEY] = doc.encode()
            fields.append(column.with_nullable(not required).with_metadata(metadata or None))
        return pa.schema(fields, metadata=batch.metadata)


def relax(catalog: SqlCatalog, table: Table, address: ProductAddress, spec: TableSpec) -> Table:
    """Before a batch is staged (and its schema merged): drop identifier fields and required
    flags the contract no longer declares (always safe). The table as it is after."""
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import CommitFailedException

    schema = table.schema()
    identifier = set(schema.identifier_field_names())
    loose = [f.name for f in schema.fields if f.required and f.name not in spec.required]
    if not loose and identifier <= set(spec.identifier):
        return table
    with contextlib.suppress(CommitFailedException), table.update_schema() as update:
        update.set_identifier_fields(*(identifier & set(spec.identifier)))
        for name in loose:
            update.make_column_optional(name)
    return catalog.load_table(address.iceberg_identifier)


def set_sort_order(
    catalog: SqlCatalog, table: Table, address: ProductAddress, spec: TableSpec
) -> Table:
    """The table's Iceberg sort order from ``sort_by`` (ascending; none: unsorted)."""
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import CommitFailedException

    if _sort_names(table) == list(spec.sort_by):
        return table
    with contextlib.suppress(CommitFailedException), table.update_sort_order() as order:
        for name in spec.sort_by:
            order.asc(name, _identity())
    return catalog.load_table(address.iceberg_identifier)


def _identity():
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.transforms import IdentityTransform

    return IdentityTransform()


def _sort_names(table: Table) -> list[str]:
    schema = table.schema()
    return [schema.find_column_name(f.source_id) or "" for f in table.sort_order().fields]


def main_null_counts(table: Table, columns: list[str]) -> dict[str, int | None]:
    """Nulls in each of ``columns`` over main's live data files, from the manifests (None: a
    file does not say, so it cannot be proved free of nulls)."""
    snapshot = table.current_snapshot()
    counts: dict[str, int | None] = {c: 0 for c in columns}
    if snapshot is None:
        return counts
    ids = {c: table.schema().find_field(c).field_id for c in columns}
    for manifest in snapshot.manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            nulls = entry.data_file.null_value_counts or {}
            for column, field_id in ids.items():
                if counts[column] is not None:
                    found = nulls.get(field_id)
                    counts[column] = None if found is None else counts[column] + found
    return counts


def _pending(table: Table, spec: TableSpec) -> list[str]:
    """Columns the contract declares required that the table does not have required yet."""
    names = {f.name: f for f in table.schema().fields}
    return [c for c in spec.required if c in names and not names[c].required]


def check_tightening(
    table: Table, address: ProductAddress, spec: TableSpec, partitioning: Partitioning | None
) -> None:
    """Refuse, before anything is written, a batch after which a column the contract declares
    required could not become so: it keeps main's older rows (some partitions replaced) and
    those hold nulls in the column (or do not say)."""
    if partitioning is None or partitioning.changed is None:
        return  # the batch replaces every row: its own are checked by the writer
    pending = _pending(table, spec)
    bad = {c: n for c, n in main_null_counts(table, pending).items() if n != 0}
    if bad:
        listed = ", ".join(f"{c} ({'not counted' if n is None else f'{n} null(s)'})"
                           for c, n in bad.items())  # fmt: skip
        raise MeshError(
            f"product {address}: the contract declares column(s) not null that the published "
            f"table holds nulls in: {listed}; Iceberg cannot make them required over those rows",
            fix=f"republish every partition: `mesh build --full-refresh --product {address}` "
            "(or remove the `not_null` constraint)",
        )


def tighten(catalog: SqlCatalog, address: ProductAddress, spec: TableSpec) -> list[str]:
    """After a publication: make required the columns the contract declares not null whose
    data on main proves to hold none, then set the identifier fields. Returns the columns
    left optional (their files do not prove it): they stay so, and so does the key."""
    # heavy: pyiceberg (~2 s), only after a publication
    from pyiceberg.exceptions import CommitFailedException

    table = catalog.load_table(address.iceberg_identifier)
    pending = _pending(table, spec)
    counts = main_null_counts(table, pending)
    proven = [c for c, n in counts.items() if n == 0]
    left = [c for c, n in counts.items() if n != 0]
    identifier = [] if set(spec.identifier) & set(left) else list(spec.identifier)
    if not proven and set(table.schema().identifier_field_names()) == set(identifier):
        return left
    try:
        with table.update_schema(allow_incompatible_changes=True) as update:
            for name in proven:
                update.update_column(name, required=True)
            update.set_identifier_fields(*identifier)
    except CommitFailedException:
        return left  # a concurrent writer: the next publication tightens
    except ValueError as exc:  # an identifier field Iceberg refuses (float, double, nested)
        raise MeshError(
            f"product {address}: its primary key {', '.join(spec.identifier)} cannot be the "
            f"table's identifier fields ({exc})",
            fix="declare a primary key of integer, string, date or decimal columns",
        ) from exc
    return left
