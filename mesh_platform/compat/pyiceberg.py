"""Private pyiceberg APIs (0.12) the platform uses, each checked by ``tests/test_compat.py``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.io import FileIO
    from pyiceberg.manifest import DataFile
    from pyiceberg.schema import Schema
    from pyiceberg.table.metadata import TableMetadata


def pyarrow_to_schema_without_ids(schema: pa.Schema) -> Schema:
    """``schema`` as an Iceberg schema whose fields carry no ids, to compare new rows' types with
    a published table's by Iceberg's promotion rules (``pyiceberg.io.pyarrow
    ._pyarrow_to_schema_without_ids``; the public ``pyarrow_to_schema`` needs field ids, or a
    name mapping covering every column, which columns a batch adds do not have)."""
    from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids  # heavy: pyiceberg (~3 s)

    return _pyarrow_to_schema_without_ids(schema)


def data_files_with_relaxed_nullability(
    io: FileIO, metadata: TableMetadata, files: Iterable[str]
) -> Iterator[DataFile]:
    """pyiceberg's ``DataFile`` of each Parquet file (``parquet_file_to_data_file``, what
    ``add_files`` builds: statistics, partition), checked against the table's current schema
    with its top-level columns made optional: DuckDB writes every column optional, and
    pyiceberg refuses an optional file column for a required table column. The caller has
    proved the required columns free of nulls (storage/datafiles.py)."""
    from pyiceberg.io.pyarrow import parquet_file_to_data_file  # heavy: pyiceberg (~3 s)
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField

    schema = metadata.schema()
    relaxed = Schema(
        *[
            NestedField(f.field_id, f.name, f.field_type, required=False, doc=f.doc)
            for f in schema.fields
        ],
        schema_id=schema.schema_id,
    )
    schemas = [relaxed if s.schema_id == schema.schema_id else s for s in metadata.schemas]
    checked = metadata.model_copy(update={"schemas": schemas})
    for location in files:
        yield parquet_file_to_data_file(io, checked, location)
