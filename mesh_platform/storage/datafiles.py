"""The Parquet data files of a product's table: the one place that writes them and registers them.

Every file the platform adds to a product's table is written by :func:`write_data_files`
(a batch's publication, storage/wap.py; a compaction's rewrite, ``mesh maintain``), so all of
them are laid out alike, in the form any Iceberg reader takes without help:

- **field ids**: each column, nested fields included, carries the Iceberg field id of the
  table's schema (DuckDB's ``FIELD_IDS``). Without them a reader must apply the table's name
  mapping, which some do not (Daft refused such files);
- **zstd**, **row groups of about 128 MB** and **files of about 256 MB at most**: a large
  output is split into several files (``FILE_SIZE_BYTES``; a partition too large for one file
  is written again, split). The same figures are the table's ``write.*`` properties
  (:func:`layout_properties`), so other writers of the table agree;
- **sorted** by the table's Iceberg sort order, when it has one;
- **no nulls in a required column**: the files' own statistics (DuckDB's ``RETURN_STATS``)
  are checked before anything references them; a batch that breaks it is deleted and refused.

:func:`register_data_files` registers them on a branch: pyiceberg's ``add_files`` refuses a file
whose column is optional where the table's is required, and DuckDB writes every column
optional (duckdb/duckdb#23051), so the files are registered with the required flags relaxed for
the check only, after the check above proved them free of nulls.

Known limit: Daft 0.7 reads lists and maps of these files through Iceberg wrongly ("list type
must have a single child, found 0"): DuckDB annotates them with the legacy LIST/MAP converted
types only, and Daft's field-id projection needs the logical type (a pyarrow-written file with
the same ids reads). pyiceberg, DuckDB and polars read them; the sample has no such column.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mesh_platform.addressing import quote_ident, quote_literal
from mesh_platform.compat.pyiceberg import data_files_with_relaxed_nullability
from mesh_platform.errors import MeshError
from mesh_platform.storage import warehouse

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table, Transaction
    from pyiceberg.types import IcebergType

    from mesh_platform.storage.partitioning import Partitioning

MB = 1024 * 1024
TARGET_FILE_SIZE_BYTES = 256 * MB  # a large output is split into files of about this size
ROW_GROUP_SIZE_BYTES = 128 * MB  # Iceberg's default (write.parquet.row-group-size-bytes)
# DuckDB counts a row group's bytes before compression: 64 MB of them come out as row groups of
# ~9 MB of zstd on the sample (parquet-mr's 128 MB count written bytes), and larger ones leave
# DuckDB's threads idle: order_lines at SF 1 took 3.0 s to write at 128 MB, 2.1 s at 64 MB.
DUCKDB_ROW_GROUP_SIZE_BYTES = 64 * MB
COMPRESSION = "zstd"  # Iceberg's default codec since 1.4
FILE_SIZE_PROPERTY = "write.target-file-size-bytes"
ROW_GROUP_PROPERTY = "write.parquet.row-group-size-bytes"
CODEC_PROPERTY = "write.parquet.compression-codec"
PARTITION_COLUMN = "_mesh_partition"  # the folder DuckDB writes a partition's rows into


def layout_properties(
    target_file_size_bytes: int = TARGET_FILE_SIZE_BYTES,
    row_group_size_bytes: int = ROW_GROUP_SIZE_BYTES,
) -> dict[str, str]:
    """The table properties that tell every writer of the table how its files are laid out."""
    return {
        "write.format.default": "parquet",
        CODEC_PROPERTY: COMPRESSION,
        FILE_SIZE_PROPERTY: str(target_file_size_bytes),
        ROW_GROUP_PROPERTY: str(row_group_size_bytes),
    }


@dataclass(frozen=True)
class WrittenFiles:
    """What :func:`write_data_files` wrote: the files (locations), their rows and bytes, and
    the nulls of each top-level column (from the files' statistics)."""

    files: tuple[str, ...]
    rows: int
    bytes: int
    null_counts: Mapping[str, int]


def write_data_files(
    conn: duckdb.DuckDBPyConnection,
    source: str,
    table: Table,
    *,
    partitioning: Partitioning | None = None,
    not_null: Collection[str] = (),
    target_file_size_bytes: int | None = None,
    row_group_size_bytes: int | None = None,
    catalog_properties: Mapping[str, str] | None = None,
) -> WrittenFiles:
    """Write the rows of ``source`` as new Parquet data files of ``table`` (not registered yet:
    :func:`register_data_files` does that, in the caller's commit).

    ``source``: what DuckDB selects the rows from, as SQL: a quoted relation
    (``"main"."orders"``) or a parenthesised query (``(SELECT * FROM read_parquet([...]))``);
    its columns must be the table's (by name; a batch's new columns are added to the table
    first). ``partitioning``: one folder per partition, only the partitions
    ``partitioning.changed`` names (all when None). ``not_null``: columns that must hold no
    null besides those the table's schema already requires. File size and row group size
    default to the table's ``write.*`` properties, then to Iceberg's figures above (a row
    group to at most DuckDB's 64 MB before compression, see above).

    ``catalog_properties``: the catalog's (pyiceberg) properties, for an object store's
    credentials. The files go into a fresh folder under the table's ``data/``. Raises
    MeshError, deleting what it wrote, when a required column holds nulls.

    A rewrite (compaction) reads the table's rows into ``source`` (the snapshot's files,
    ``(SELECT * FROM read_parquet([...]))``: columns as the table names them) and commits
    ``register_data_files`` with the delete of the files it replaces in one transaction, the
    way storage/wap.py stages a batch.
    """
    properties = table.properties
    file_size = target_file_size_bytes or int(
        properties.get(FILE_SIZE_PROPERTY, TARGET_FILE_SIZE_BYTES)
    )
    row_group = row_group_size_bytes or min(
        int(properties.get(ROW_GROUP_PROPERTY, ROW_GROUP_SIZE_BYTES)), DUCKDB_ROW_GROUP_SIZE_BYTES
    )
    warehouse.configure_duckdb(conn, catalog_properties or {})
    schema = table.schema()
    columns = [c[0] for c in conn.execute(f"SELECT * FROM {source} LIMIT 0").description]
    options = [
        "FORMAT parquet",
        f"COMPRESSION {COMPRESSION}",
        f"FIELD_IDS {field_ids_literal(schema, columns)}",
        f"ROW_GROUP_SIZE_BYTES {int(row_group)}",
        "ROW_GROUP_SIZE 1000000000",  # rows: the bytes decide
        "RETURN_STATS",
    ]
    order = sort_clause(table)
    folder = warehouse.join(warehouse.new_data_folder(table.location()), f"batch-{uuid.uuid4()}")
    with _insertion_order_relaxed(conn):  # DuckDB needs it for ROW_GROUP_SIZE_BYTES
        if partitioning is None:
            stats = _copy(conn, f"SELECT * FROM {source}{order}", folder,
                          [*options, f"FILE_SIZE_BYTES {int(file_size)}"])  # fmt: skip
        else:
            stats = _copy_partitions(conn, source, folder, partitioning, options, order,
                                     file_size, catalog_properties or {})  # fmt: skip
    written = _summarise(stats, catalog_properties or {})
    required = {f.name for f in schema.fields if f.required} | set(not_null)
    _refuse_nulls(table, written, sorted(required & set(columns)), catalog_properties or {})
    return written


def _copy(
    conn: duckdb.DuckDBPyConnection, query: str, target: str, options: Sequence[str]
) -> list[tuple[Any, ...]]:
    """One COPY of ``query`` to ``target``; DuckDB's statistics of each file it wrote."""
    return conn.execute(
        f"COPY ({query}) TO {quote_literal(target)} ({', '.join(options)})"
    ).fetchall()


def _copy_partitions(
    conn: duckdb.DuckDBPyConnection,
    source: str,
    folder: str,
    partitioning: Partitioning,
    options: Sequence[str],
    order: str,
    file_size: int,
    properties: Mapping[str, str],
) -> list[tuple[Any, ...]]:
    """One COPY writes every changed partition into its folder (add_files derives each file's
    partition from its column statistics). DuckDB cannot split files while it partitions:
    a partition whose file came out larger than ``file_size`` is written again, split."""
    where = ""
    if partitioning.changed is not None:
        conn.execute("CREATE OR REPLACE TEMP TABLE _mesh_changed (p DATE)")
        conn.executemany(
            "INSERT INTO _mesh_changed VALUES (?)", [[d] for d in partitioning.changed]
        )
        where = f" WHERE {partitioning.sql_expr} IN (SELECT p FROM _mesh_changed)"
    query = (
        f"SELECT *, strftime({partitioning.sql_expr}, '%Y-%m-%d') AS {PARTITION_COLUMN} "
        f"FROM {source}{where}{order}"
    )
    stats = _copy(conn, query, folder, [*options, f"PARTITION_BY ({PARTITION_COLUMN})"])
    kept = []
    for row in stats:
        if int(row[2]) <= file_size * 1.1:
            kept.append(row)
            continue
        partition = (row[5] or {}).get(PARTITION_COLUMN)
        split = warehouse.join(folder, f"{PARTITION_COLUMN}={partition}", f"split-{uuid.uuid4()}")
        query = (
            f"SELECT * FROM {source} WHERE {partitioning.sql_expr} = "
            f"{quote_literal(partition)}::DATE{order}"
        )
        kept += _copy(conn, query, split, [*options, f"FILE_SIZE_BYTES {int(file_size)}"])
        warehouse.delete(row[0], properties)
    return kept


def _summarise(stats: Iterable[tuple[Any, ...]], properties: Mapping[str, str]) -> WrittenFiles:
    """The files DuckDB wrote (an empty file is deleted: there is nothing to register)."""
    files, rows, size, nulls = [], 0, 0, {}
    for filename, count, file_bytes, _footer, columns, _partition in stats:
        if not count:
            warehouse.delete(filename, properties)
            continue
        files.append(filename)
        rows += int(count)
        size += int(file_bytes)
        for key, values in (columns or {}).items():
            if "null_count" in values:
                nulls[key] = nulls.get(key, 0) + int(values["null_count"])
    return WrittenFiles(tuple(sorted(files)), rows, size, nulls)


def _refuse_nulls(
    table: Table, written: WrittenFiles, required: Sequence[str], properties: Mapping[str, str]
) -> None:
    """Fail closed: delete the files and refuse when a required column holds nulls, or when
    the files' statistics cannot tell (a nested column)."""
    if not written.files:
        return
    found = {c: written.null_counts.get(_stats_key(c)) for c in required}
    bad = {c: n for c, n in found.items() if n != 0}
    if not bad:
        return
    for location in written.files:
        warehouse.delete(location, properties)
    name = ".".join(table.name()[-2:])
    listed = ", ".join(
        f"{c} ({'nulls not counted' if n is None else f'{n} null(s)'})" for c, n in bad.items()
    )
    raise MeshError(
        f"table {name}: required (not null) column(s) hold nulls in the new rows: {listed}; "
        "nothing was written",
        fix="fix the rows (the model's SQL), or remove the column's `not_null` constraint "
        "(a contract change: the column becomes optional)",
    )


def _stats_key(column: str) -> str:
    """A top-level column as DuckDB's RETURN_STATS names it (always quoted)."""
    return '"' + column.replace('"', '""') + '"'


@contextlib.contextmanager
def _insertion_order_relaxed(conn: duckdb.DuckDBPyConnection) -> Any:
    """Rows are written in the query's ORDER BY (the sort order) or in any order: DuckDB's
    ROW_GROUP_SIZE_BYTES works only when it need not preserve insertion order."""
    before = conn.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0]
    conn.execute("SET preserve_insertion_order = false")
    try:
        yield
    finally:
        conn.execute(f"SET preserve_insertion_order = {'true' if before else 'false'}")


def field_ids_literal(schema: Schema, columns: Sequence[str]) -> str:
    """DuckDB's ``FIELD_IDS`` value for ``columns`` (top-level names) from the Iceberg
    ``schema``: ``{"a": 1, "s": {__duckdb_field_id: 2, "x": 3}, "l": {__duckdb_field_id: 4,
    element: 5}, "m": {__duckdb_field_id: 6, key: 7, value: 8}}``."""
    fields = []
    for name in columns:
        try:
            field = schema.find_field(name)
        except ValueError as exc:
            raise MeshError(
                f"column {name!r} is not in the table's schema (columns: "
                f"{', '.join(f.name for f in schema.fields)})",
                fix="add the column to the table's schema before writing its files",
            ) from exc
        fields.append(f"{quote_ident(name)}: {_ids(field.field_id, field.field_type)}")
    return "{" + ", ".join(fields) + "}"


def _ids(field_id: int, kind: IcebergType) -> str:
    # heavy: pyiceberg (~2 s), only when files are written
    from pyiceberg.types import ListType, MapType, StructType

    if isinstance(kind, StructType):
        children = [f"{quote_ident(f.name)}: {_ids(f.field_id, f.field_type)}" for f in kind.fields]
    elif isinstance(kind, ListType):
        children = [f"element: {_ids(kind.element_id, kind.element_type)}"]
    elif isinstance(kind, MapType):
        children = [f"key: {_ids(kind.key_id, kind.key_type)}",
                    f"value: {_ids(kind.value_id, kind.value_type)}"]  # fmt: skip
    else:
        return str(field_id)
    return "{" + ", ".join([f"__duckdb_field_id: {field_id}", *children]) + "}"


def sort_clause(table: Table) -> str:
    """`` ORDER BY ...`` of the table's Iceberg sort order (identity fields), or ``""``."""
    # heavy: pyiceberg (~2 s), only when files are written
    from pyiceberg.table.sorting import NullOrder, SortDirection
    from pyiceberg.transforms import IdentityTransform

    terms = []
    schema = table.schema()
    for field in table.sort_order().fields:
        if not isinstance(field.transform, IdentityTransform):
            continue  # a bucket/truncate sort is another engine's to apply
        name = schema.find_column_name(field.source_id)
        direction = "DESC" if field.direction == SortDirection.DESC else "ASC"
        nulls = "NULLS FIRST" if field.null_order == NullOrder.NULLS_FIRST else "NULLS LAST"
        terms.append(f"{quote_ident(name)} {direction} {nulls}")
    return f" ORDER BY {', '.join(terms)}" if terms else ""


def register_data_files(
    table: Table,
    tx: Transaction,
    files: Sequence[str],
    *,
    snapshot_properties: Mapping[str, str],
    branch: str | None = None,
) -> None:
    """Register files :func:`write_data_files` wrote, in ``tx`` of ``table`` (one fast append
    on ``branch``): pyiceberg's ``add_files`` with the nullability check relaxed (see the
    module docstring; write_data_files proved the required columns free of nulls)."""
    with tx.update_snapshot(
        snapshot_properties=dict(snapshot_properties), branch=branch
    ).fast_append() as append:
        for data_file in data_files_with_relaxed_nullability(table.io, tx.table_metadata, files):
            append.append_data_file(data_file)


def parquet_field_ids(arrow_schema: pa.Schema) -> dict[str, int | None]:
    """Every field of a Parquet file's schema (``pyarrow.parquet`` metadata's Arrow schema) by
    path, as pyiceberg names them (``address.zip``, ``tags.element``, ``prices.key``), with
    its field id (``PARQUET:field_id``; None: none)."""
    found: dict[str, int | None] = {}

    def walk(field: pa.Field, path: str) -> None:
        value = (field.metadata or {}).get(b"PARQUET:field_id")
        found[path] = int(value) if value is not None else None
        kind = field.type
        if pa.types.is_map(kind):
            children = [("key", kind.key_field), ("value", kind.item_field)]
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            children = [("element", kind.value_field)]
        elif pa.types.is_struct(kind):
            children = [(kind.field(i).name, kind.field(i)) for i in range(kind.num_fields)]
        else:
            children = []
        for name, child in children:
            walk(child, f"{path}.{name}")

    for field in arrow_schema:
        walk(field, field.name)
    return found


def needs_rewrite(parquet_metadata: Any, schema: Schema) -> list[str]:
    """Why a data file (its ``pyarrow.parquet.FileMetaData``) is not laid out as
    :func:`write_data_files` writes them, for ``mesh maintain`` to rewrite it: fields (nested
    ones included) without the field ids of the table's ``schema``, a codec other than zstd.
    Empty: nothing to do. Reads the footer only; file sizes are the compaction's own measure."""
    reasons = []
    missing = []
    for path, found in parquet_field_ids(parquet_metadata.schema.to_arrow_schema()).items():
        try:
            expected = schema.find_field(path).field_id
        except ValueError:
            expected = None
        if found is None or found != expected:
            missing.append(path)
    if missing:
        reasons.append(f"no (or other) Iceberg field ids: {', '.join(missing)}")
    codecs = {
        parquet_metadata.row_group(g).column(c).compression
        for g in range(parquet_metadata.num_row_groups)
        for c in range(parquet_metadata.num_columns)
    }
    if codecs - {"ZSTD"}:
        reasons.append(f"compressed with {', '.join(sorted(codecs - {'ZSTD'}))}, not zstd")
    return reasons
