"""``COPY (query) TO STDOUT``: results as a copy stream, the way Arrow-native drivers read them.

The ADBC PostgreSQL driver (and psql's ``\\copy``) fetch a result as ``COPY (<query>) TO
STDOUT``, in PostgreSQL's binary copy format (``FORMAT binary``) or its text format. The query
inside runs exactly as any other statement (routed, translated and checked the same way); only
the encoding of its rows differs. Binary values follow PostgreSQL's send functions for each
type (big-endian integers and floats, dates and timestamps counted from 2000-01-01, numeric as
base-10000 digits), as the "COPY" reference page's "Binary Format" section describes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from sqlglot.tokens import Tokenizer, TokenType

from mesh_platform.query.sql import QueryRefusedError
from mesh_platform.serve import results as r

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # header: no flags, no extension
TRAILER = struct.pack("!h", -1)
_EPOCH = dt.date(2000, 1, 1)
_EPOCH_TS = dt.datetime(2000, 1, 1)
_EPOCH_TSZ = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def parse_copy(text: str) -> tuple[str, bool]:
    """The query of ``COPY (<query>) TO STDOUT [[WITH] (FORMAT binary|text)]`` and whether the
    format is binary; anything else (a table, a file, FROM, CSV options) is refused."""
    refused = QueryRefusedError(
        "only COPY (<query>) TO STDOUT [(FORMAT binary|text)] is served",
        fix="COPY a query's result to the client; the mesh is read-only and reads no files",
    )
    tokens = Tokenizer().tokenize(text)
    if len(tokens) < 5 or tokens[1].token_type != TokenType.L_PAREN:
        raise refused
    depth, end = 0, None
    for i, token in enumerate(tokens[1:], start=1):
        depth += {TokenType.L_PAREN: 1, TokenType.R_PAREN: -1}.get(token.token_type, 0)
        if depth == 0:
            end = i
            break
    if end is None:
        raise refused
    inner = text[tokens[1].end + 1 : tokens[end].start]
    tail = [t.text.upper() for t in tokens[end + 1 :]]
    if tail[:2] != ["TO", "STDOUT"]:
        raise refused
    options = [w for w in tail[2:] if w not in {"WITH", "(", ")"}]
    if options in ([], ["FORMAT", "TEXT"]):
        return inner, False
    if options in (["FORMAT", "BINARY"], ["BINARY"]):
        return inner, True
    raise refused


def _numeric(value: decimal.Decimal) -> bytes:
    """PostgreSQL's binary numeric: base-10000 digit groups around the decimal point, the
    weight of the first group, the sign and the display scale."""
    if value.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    scale = max(0, -int(value.as_tuple().exponent))
    whole, _, fraction = format(abs(value), "f").partition(".")
    whole = whole.lstrip("0")
    whole = whole.zfill((len(whole) + 3) // 4 * 4)
    fraction = fraction.ljust((len(fraction) + 3) // 4 * 4, "0")
    groups = [int(whole[i : i + 4]) for i in range(0, len(whole), 4)]
    weight = len(groups) - 1
    groups += [int(fraction[i : i + 4]) for i in range(0, len(fraction), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    head = struct.pack("!hhHh", len(groups), weight, 0x4000 if value < 0 else 0, scale)
    return head + struct.pack(f"!{len(groups)}h", *groups)


def _interval(value: Any) -> bytes:
    if isinstance(value, dt.timedelta):
        micros = value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds
        return struct.pack("!qii", micros, 0, 0)
    months, days, nanoseconds = value
    return struct.pack("!qii", nanoseconds // 1000, days, months)


def _timestamp(value: dt.datetime) -> bytes:
    delta = value - (_EPOCH_TSZ if value.tzinfo is not None else _EPOCH_TS)
    return struct.pack("!q", delta // dt.timedelta(microseconds=1))


def _time(value: dt.time) -> bytes:
    micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000
    return struct.pack("!q", micros + value.microsecond)


_ENCODERS: dict[int, Callable[[Any], bytes]] = {
    r.BOOL: lambda v: b"\x01" if v else b"\x00",
    r.INT2: lambda v: struct.pack("!h", v),
    r.INT4: lambda v: struct.pack("!i", v),
    r.INT8: lambda v: struct.pack("!q", v),
    r.FLOAT4: lambda v: struct.pack("!f", v),
    r.FLOAT8: lambda v: struct.pack("!d", v),
    r.TEXT: lambda v: v.encode(),
    r.BYTEA: bytes,
    r.DATE: lambda v: struct.pack("!i", (v - _EPOCH).days),
    r.TIME: _time,
    r.TIMESTAMP: _timestamp,
    r.TIMESTAMPTZ: _timestamp,
    r.INTERVAL: _interval,
    r.NUMERIC: lambda v: _numeric(v if isinstance(v, decimal.Decimal) else decimal.Decimal(v)),
    r.UUID: lambda v: (v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))).bytes,
}


def binary_rows(batch: pa.RecordBatch, described: list[r.Column]) -> list[bytes]:
    """Each row of ``batch`` in the binary copy format (without the stream's header)."""
    columns = []
    for i, column in enumerate(described):
        if column.oid in (r.JSON, r.TEXT) or column.oid not in _ENCODERS:
            columns.append(r.text_values(batch.column(i), column.oid))  # text is its binary
            continue
        encode = _ENCODERS[column.oid]
        columns.append([None if v is None else encode(v) for v in batch.column(i).to_pylist()])
    count = struct.pack("!h", len(described))
    rows = []
    for values in zip(*columns, strict=True):
        row = bytearray(count)
        for value in values:
            row += r.NULL if value is None else struct.pack("!i", len(value)) + value
        rows.append(bytes(row))
    return rows


def text_rows(batch: pa.RecordBatch, described: list[r.Column]) -> list[bytes]:
    """Each row of ``batch`` in the text copy format: tab-separated, ``\\N`` for NULL, with
    backslash, tab, newline and carriage return escaped."""
    columns = [r.text_values(batch.column(i), c.oid) for i, c in enumerate(described)]
    rows = []
    for values in zip(*columns, strict=True):
        fields = [b"\\N" if v is None else _escape(v) for v in values]
        rows.append(b"\t".join(fields) + b"\n")
    return rows


def _escape(value: bytes) -> bytes:
    return (
        value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
    )  # fmt: skip


def copy_data(data: bytes) -> bytes:
    """A ``CopyData`` message of ``data``."""
    return b"d" + struct.pack("!i", len(data) + 4) + data


def binary_data_rows(batch: pa.RecordBatch, described: list[r.Column]) -> list[bytes]:
    """``DataRow`` messages with every value in its type's binary format (a DataRow's body is
    the binary copy format's row)."""
    return [b"D" + struct.pack("!i", len(row) + 4) + row for row in binary_rows(batch, described)]
