"""Arrow results as PostgreSQL rows: column types as PostgreSQL type oids, values in PostgreSQL's
text format.

A batch is converted column by column with Arrow's compute kernels (numbers, dates, timestamps
and strings to text), and only the framing of each ``DataRow`` is done per row, so a large
result costs little more than its bytes. Types without a PostgreSQL counterpart a client knows
(lists, structs, maps) are sent as ``json`` text.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import struct
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# PostgreSQL's built-in type oids (src/include/catalog/pg_type.dat) and their sizes
BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON = 16, 17, 20, 21, 23, 25, 114
FLOAT4, FLOAT8, DATE, TIME, TIMESTAMP, TIMESTAMPTZ = 700, 701, 1082, 1083, 1114, 1184
INTERVAL, NUMERIC, UUID = 1186, 1700, 2950
_SIZES = {BOOL: 1, INT8: 8, INT2: 2, INT4: 4, FLOAT4: 4, FLOAT8: 8, DATE: 4, TIME: 8,
          TIMESTAMP: 8, TIMESTAMPTZ: 8, INTERVAL: 16, UUID: 16}  # fmt: skip
NULL = struct.pack("!i", -1)


@dataclass(frozen=True)
class Column:
    name: str
    oid: int
    size: int  # typlen: -1 variable
    modifier: int = -1  # typmod: numeric precision/scale


def pg_type(arrow_type: pa.DataType) -> tuple[int, int]:
    """(type oid, modifier) of an Arrow type as PostgreSQL names it."""
    if pa.types.is_boolean(arrow_type):
        return BOOL, -1
    if pa.types.is_int8(arrow_type) or pa.types.is_int16(arrow_type):
        return INT2, -1
    if pa.types.is_int32(arrow_type) or pa.types.is_uint8(arrow_type):
        return INT4, -1
    if pa.types.is_int64(arrow_type) or pa.types.is_uint16(arrow_type):
        return INT8, -1
    if pa.types.is_integer(arrow_type):  # uint32/64: wider than int8
        return NUMERIC, -1
    if pa.types.is_float16(arrow_type) or pa.types.is_float32(arrow_type):
        return FLOAT4, -1
    if pa.types.is_float64(arrow_type):
        return FLOAT8, -1
    if pa.types.is_decimal(arrow_type):
        return NUMERIC, ((arrow_type.precision << 16) | arrow_type.scale) + 4
    if pa.types.is_date(arrow_type):
        return DATE, -1
    if pa.types.is_time(arrow_type):
        return TIME, -1
    if pa.types.is_timestamp(arrow_type):
        return (TIMESTAMPTZ if arrow_type.tz else TIMESTAMP), -1
    if pa.types.is_duration(arrow_type) or pa.types.is_interval(arrow_type):
        return INTERVAL, -1
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return BYTEA, -1
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return TEXT, -1
    if pa.types.is_nested(arrow_type):
        return JSON, -1
    return TEXT, -1


def columns(schema: pa.Schema) -> list[Column]:
    out = []
    for field in schema:
        oid, modifier = pg_type(field.type)
        out.append(Column(field.name, oid, _SIZES.get(oid, -1), modifier))
    return out


def text_values(array: pa.Array, oid: int) -> list[bytes | None]:
    """One column of a batch as PostgreSQL text values (None for NULL)."""
    if oid == BOOL:
        return [None if v is None else (b"t" if v else b"f") for v in array.to_pylist()]
    if oid == TIMESTAMPTZ:
        array = pc.strftime(array, format="%Y-%m-%d %H:%M:%S.%f+00", timezone="UTC")
    elif oid == TIMESTAMP:
        array = pc.strftime(array, format="%Y-%m-%d %H:%M:%S.%f")
    elif oid == BYTEA:
        return [None if v is None else b"\\x" + v.hex().encode() for v in array.to_pylist()]
    elif oid in (JSON, INTERVAL):
        return [None if v is None else _json(v, oid).encode() for v in array.to_pylist()]
    elif oid in (FLOAT4, FLOAT8):
        return [None if v is None else _float(v) for v in array.to_pylist()]
    elif oid != TEXT:
        array = pc.cast(array, pa.string())
    return [None if v is None else v.encode() for v in array.to_pylist()]


def _float(value: float) -> bytes:
    if value != value:
        return b"NaN"
    if value in (float("inf"), float("-inf")):
        return b"Infinity" if value > 0 else b"-Infinity"
    return repr(value).encode()


def _json(value: Any, oid: int) -> str:
    if oid == INTERVAL:
        return _interval(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def _interval(value: Any) -> str:
    """An interval in PostgreSQL's ISO 8601 format (IntervalStyle iso_8601 reads it back)."""
    if hasattr(value, "total_seconds"):  # a timedelta
        return f"PT{value.total_seconds():g}S"
    months, days, nanoseconds = value  # MonthDayNano
    return f"P{months}M{days}DT{nanoseconds / 1e9:g}S"


def data_rows(batch: pa.RecordBatch, described: list[Column]) -> list[bytes]:
    """The ``DataRow`` message of each row of one batch."""
    values = [text_values(batch.column(i), c.oid) for i, c in enumerate(described)]
    count = struct.pack("!h", len(described))
    out = []
    for row in zip(*values, strict=True):
        body = bytearray(count)
        for value in row:
            if value is None:
                body += NULL
            else:
                body += struct.pack("!i", len(value))
                body += value
        out.append(b"D" + struct.pack("!i", len(body) + 4) + body)
    return out


_EPOCH_2000 = 946_684_800  # PostgreSQL's binary dates and times count from 2000-01-01


def parameter_text(raw: bytes, oid: int, binary: bool) -> str:
    """A bound parameter as PostgreSQL text: as sent (text format), or decoded from the
    binary format of its type (drivers such as psycopg send numbers in binary)."""
    if not binary:
        return raw.decode()
    if oid in (TEXT, 1043, 1042, 19, 0, JSON, 3802):  # text, varchar, bpchar, name, unknown
        return raw.decode()
    formats = {INT2: "!h", INT4: "!i", INT8: "!q", 26: "!I", FLOAT4: "!f", FLOAT8: "!d"}
    if oid in formats:
        (value,) = struct.unpack(formats[oid], raw)
        return repr(value) if isinstance(value, float) else str(value)
    if oid == BOOL:
        return "t" if raw == b"\x01" else "f"
    if oid == BYTEA:
        return "\\x" + raw.hex()
    if oid == DATE:
        (days,) = struct.unpack("!i", raw)
        return str(dt.date(2000, 1, 1) + dt.timedelta(days=days))
    if oid in (TIMESTAMP, TIMESTAMPTZ):
        (micros,) = struct.unpack("!q", raw)
        moment = dt.datetime(2000, 1, 1) + dt.timedelta(microseconds=micros)
        return moment.isoformat(sep=" ") + ("+00" if oid == TIMESTAMPTZ else "")
    if oid == NUMERIC:
        return _numeric(raw)
    raise ValueError(f"a parameter of type oid {oid} in binary format")


def _numeric(raw: bytes) -> str:
    """PostgreSQL's binary numeric: base-10000 digits, a weight, a sign and a scale."""
    ndigits, weight, sign, scale = struct.unpack("!hhHh", raw[:8])
    if sign == 0xC000:
        return "NaN"
    digits = struct.unpack(f"!{ndigits}h", raw[8 : 8 + 2 * ndigits])
    value = decimal.Decimal(0)
    for i, digit in enumerate(digits):
        value += decimal.Decimal(digit).scaleb(4 * (weight - i))
    text = f"{value:.{scale}f}"
    return f"-{text}" if sign == 0x4000 else text
