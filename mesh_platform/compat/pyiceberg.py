"""Private pyiceberg APIs (0.12) the platform uses, each checked by ``tests/test_compat.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.schema import Schema


def pyarrow_to_schema_without_ids(schema: pa.Schema) -> Schema:
    """``schema`` as an Iceberg schema whose fields carry no ids, to compare new rows' types with
    a published table's by Iceberg's promotion rules (``pyiceberg.io.pyarrow
    ._pyarrow_to_schema_without_ids``; the public ``pyarrow_to_schema`` needs field ids, or a
    name mapping covering every column, which columns a batch adds do not have)."""
    from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids  # heavy: pyiceberg (~3 s)

    return _pyarrow_to_schema_without_ids(schema)
