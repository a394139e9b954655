"""DuckDB column types as ODCS logical types (``logicalType``, its options, ``items``, ``map``).

A type without an ODCS equivalent maps to nothing: the contract still states it as the
``physicalType``.
"""

from __future__ import annotations

import re
from typing import Any

_INTEGER_FORMATS = {
    "tinyint": "i8", "int1": "i8", "smallint": "i16", "int2": "i16", "short": "i16",
    "integer": "i32", "int": "i32", "int4": "i32", "signed": "i32", "bigint": "i64",
    "int8": "i64", "long": "i64", "hugeint": "i128", "int128": "i128", "utinyint": "u8",
    "usmallint": "u16", "uinteger": "u32", "ubigint": "u64", "uhugeint": "u128",
}  # fmt: skip
_FLOAT_FORMATS = {"real": "f32", "float4": "f32", "float": "f32", "double": "f64",
                  "float8": "f64", "double precision": "f64"}  # fmt: skip
_DECIMALS = {"decimal", "numeric", "dec"}
_STRINGS = {"varchar", "char", "bpchar", "text", "string", "nvarchar", "character varying",
            "character", "json", "bit", "bitstring", "interval", "enum"}  # fmt: skip
_STRING_FORMATS = {"uuid": "uuid", "blob": "binary", "bytea": "binary", "binary": "binary",
                   "varbinary": "binary"}  # fmt: skip
_TIMESTAMPS = {"timestamp", "datetime", "timestamp_s", "timestamp_ms", "timestamp_us",
               "timestamp_ns", "timestamp without time zone"}  # fmt: skip
_TIMESTAMPS_TZ = {"timestamptz", "timestamp with time zone"}
_SIZED_STRINGS = {"varchar", "nvarchar", "character varying", "char", "bpchar", "character"}
_BOOLEANS = {"boolean", "bool", "logical"}


def _split_top_level(text: str) -> list[str]:
    """'varchar, struct(a int, b int)' -> ['varchar', 'struct(a int, b int)']."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def logical_type(data_type: str | None) -> dict[str, Any]:
    """ODCS ``logicalType`` (+ ``logicalTypeOptions``, ``items``, ``map``) of a DuckDB type;
    {} when the type has no ODCS equivalent (the physical type still says it)."""
    if not data_type:
        return {}
    text = " ".join(data_type.strip().lower().split())
    if match := re.fullmatch(r"(.+?)\s*\[\s*\d*\s*\]", text):  # LIST (x[]) or ARRAY (x[3])
        return {"logicalType": "array", "items": _item(match.group(1))}
    base, _, args = text.partition("(")
    base, args = base.strip(), args.rsplit(")", 1)[0]
    if base == "list" and args:
        return {"logicalType": "array", "items": _item(args)}
    if base == "map" and len(kv := _split_top_level(args)) == 2:
        return {"logicalType": "map", "map": {"key": _item(kv[0]), "value": _item(kv[1])}}
    if base == "struct":
        return {"logicalType": "object"}
    if base in _INTEGER_FORMATS:
        return {"logicalType": "integer", "logicalTypeOptions": {"format": _INTEGER_FORMATS[base]}}
    if base in _FLOAT_FORMATS:
        return {"logicalType": "number", "logicalTypeOptions": {"format": _FLOAT_FORMATS[base]}}
    if base in _DECIMALS:
        return {"logicalType": "number"}
    if base in _BOOLEANS:
        return {"logicalType": "boolean"}
    if base == "date":
        return {"logicalType": "date"}
    if base in ("time", "timetz", "time with time zone"):
        return {"logicalType": "time", "logicalTypeOptions": {"timezone": base != "time"}}
    if base in _TIMESTAMPS or base in _TIMESTAMPS_TZ:
        return {"logicalType": "timestamp",
                "logicalTypeOptions": {"timezone": base in _TIMESTAMPS_TZ}}  # fmt: skip
    if base in _STRING_FORMATS:
        return {"logicalType": "string", "logicalTypeOptions": {"format": _STRING_FORMATS[base]}}
    if base in _STRINGS:
        if base in _SIZED_STRINGS and args.strip().isdigit():
            return {"logicalType": "string", "logicalTypeOptions": {"maxLength": int(args)}}
        return {"logicalType": "string"}
    return {}


def _item(data_type: str) -> dict[str, Any]:
    return {**logical_type(data_type), "physicalType": data_type.strip()}
