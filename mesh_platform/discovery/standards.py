"""``mesh export``: a product in the open standards of the Bitol project (LF AI & Data), as YAML.

- ``odcs``: its data contract in the Open Data Contract Standard v3 (``kind: DataContract``);
- ``odps``: its product descriptor in the Open Data Product Standard v1 (``kind: DataProduct``).

Both are derived from the product's record (:mod:`mesh_platform.discovery.catalog`), so they work
before anything is published. The mapping, field by field:

ODCS ``id`` is the product's URN, ``name`` its address; the mesh's draft / active / deprecated
are the standard's statuses of the same names (``retired`` once a deprecated version's sunset date
has passed). ``schema`` is one object, the Iceberg table, whose properties are the columns: the
DuckDB type as ``physicalType`` and its ``logicalType``; the classification; personal data as
critical data elements; ``required`` / ``unique`` / ``primaryKey`` from dbt's constraints and the
descriptor's expectations; the partition column as ``partitioned``. Each Great Expectations
expectation becomes one quality rule: a library metric (``nullValues``, ``duplicateValues``,
``invalidValues``, ``rowCount``) where one says the same thing, else a ``custom`` rule run by the
``great-expectations`` engine; every such rule carries the original expectation in its custom
property ``greatExpectations``. The volume check is a ``custom`` rule of the ``mesh`` engine.
Freshness is the SLA property ``latency`` (a sunset date ``endOfLife``), the grants are
``roles`` (expiry, columns and row filter as custom properties), the server is the mesh's
Iceberg catalog (its URL without any password), the owner is ``team`` and ``support``. What has
no field in the standard (address, lineage, masking, partitioning, ...) is a custom property.

ODPS ``id`` is the URN too; one output port (the table, whose ``contractId`` is the ODCS ``id``)
and one input port per upstream product (its URN as ``contractId``).

The official JSON Schemas validate both documents (``--validate``, and the tests): ODCS's ships
in the ``open-data-contract-standard`` package, ODPS's is vendored in ``schemas/`` (see its
README). Both checks need the dev dependencies ``jsonschema`` and ``open-data-contract-standard``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.discovery.catalog import ProductRecord
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import Column, Expectation, ProductDescriptor

ODCS_API_VERSION = "v3.2.0"
ODPS_API_VERSION = "v1.0.0"
FORMATS = ("odcs", "odps")
STANDARD_NAMES = {
    "odcs": f"Open Data Contract Standard {ODCS_API_VERSION}",
    "odps": f"Open Data Product Standard {ODPS_API_VERSION}",
}
ODPS_SCHEMA_FILE = "odps-json-schema-v1.0.0.json"
GX_ENGINE = "great-expectations"
GX_PROPERTY = "greatExpectations"  # the custom property holding a rule's original expectation
MESH_ENGINE = "mesh"
OUTPUT_PORT_TYPE = "tables"

# --- DuckDB types -> ODCS logical types ---------------------------------------------------------

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


# --- small helpers -------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """YAML-loaded values (dates, tuples, sets) as the JSON types the standards' schemas take."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)


def _prop(name: str, value: Any, description: str | None = None) -> dict[str, Any]:
    out = {"property": name, "value": _jsonable(value)}
    if description:
        out["description"] = description
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)")


def safe_uri(uri: str) -> str:
    """A catalog or warehouse location fit to publish: no password, no raw spaces."""
    from mesh_platform.storage.preflight import redact, url_secrets

    if url_secrets(uri):  # as SQLAlchemy parses it: a password may hold '/', '#', '?'
        uri = redact(uri).replace(":***@", "@")
    if (match := _AUTHORITY.match(uri)) and "@" in match.group(2):
        userinfo, _, host = match.group(2).rpartition("@")
        user = userinfo.split(":", 1)[0]
        uri = match.group(1) + (f"{user}@" if user else "") + host + uri[match.end() :]
    return quote(uri, safe=":/?#[]@!$&'()*+,;=%~-._")


def _latency(max_age: str) -> tuple[int, str]:
    """'26h' -> (26, 'h'); minutes as 'min' ('m' would read as months)."""
    match = re.fullmatch(r"(\d+)\s*([mhd])", max_age.strip())
    if match is None:  # the descriptor validated it: cannot happen
        raise ValueError(f"duration {max_age!r}")
    return int(match.group(1)), {"m": "min", "h": "h", "d": "d"}[match.group(2)]


def status_of(descriptor: ProductDescriptor, today: dt.date | None = None) -> str:
    """The standards' status (their values: proposed, draft, active, deprecated, retired)."""
    body = descriptor.body
    today = today or dt.date.today()
    if body.status == "deprecated" and body.sunset_on is not None and today > body.sunset_on:
        return "retired"  # no longer published
    return body.status  # draft | active | deprecated: the same words in both standards


def _successors(
    descriptor: ProductDescriptor, descriptors: Mapping[str, ProductDescriptor]
) -> list[ProductDescriptor]:
    """Newer major versions of the same product."""
    return sorted(
        (
            d
            for d in descriptors.values()
            if d.domain == descriptor.domain
            and d.name == descriptor.name
            and d.body.major > descriptor.body.major
        ),
        key=lambda d: d.body.major,
    )


_MASKED = {"hash": "hashed", "redact": "redacted", "truncate": "truncated",
           "tokenise": "tokenised"}  # fmt: skip


def _masking_text(column: Column) -> str:
    if not column.masking:
        return "not masked"
    verb = _MASKED.get(column.masking, column.masking)
    if column.masking_at == "publication":
        return f"{verb} on publication"
    return f"stored in clear, {verb} on read for readers not cleared for it"


def _header(
    api_version: str, kind: str, record: Any, descriptors: Any, today: dt.date
) -> dict[str, Any]:
    """The fields both standards open with: identity, version, status, domain, description."""
    d = record.descriptor
    header: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "id": record.urn,
        "name": record.address,
        "version": d.body.version,
        "status": status_of(d, today),
        "domain": d.domain,
        "description": _description(record, descriptors, today),
    }
    if d.body.tags:
        header["tags"] = list(d.body.tags)
    return header


def _description(
    record: ProductRecord, descriptors: Mapping[str, ProductDescriptor], today: dt.date
) -> dict[str, str]:
    d = record.descriptor
    body = d.body
    usage = (
        f'Query it by address: mesh query --as <principal> "SELECT ... FROM {record.address}" '
        "(SQL over the published Iceberg snapshot, under the reader's grant and masks; "
        f"--at for time travel). To get access, ask team {body.owner.team} "
        f"({body.owner.contact}) for a grant in {d.source_file}."
    )
    limitations = [
        f"Deny by default: only the owning domain ({d.domain}) and the principals its grants "
        "name (the data contract's roles) may read it, each until its grant expires, some "
        "limited to columns or rows."
    ]
    if pii := [c for c in d.columns if c.pii_kind]:
        listing = "; ".join(f"{c.name} ({c.classification}, {_masking_text(c)})" for c in pii)
        limitations.append(f"Contains personal data: {listing}.")
    if body.status == "deprecated":
        text = f"Deprecated since {body.deprecated_on.isoformat()}"  # type: ignore[union-attr]
        if body.sunset_on:
            verb = "was" if status_of(d, today) == "retired" else "is"
            text += f"; it {verb} published until {body.sunset_on.isoformat()}"
        if successors := _successors(d, descriptors):
            newest = successors[-1]
            text += f"; use {newest.address} (version {newest.body.version}) instead"
        limitations.append(text + ".")
    elif body.status == "draft":
        limitations.append("Draft: the contract is not final yet and may change.")
    return {"purpose": body.purpose, "usage": usage, "limitations": " ".join(limitations)}


def _support(descriptor: ProductDescriptor) -> list[dict[str, Any]]:
    owner = descriptor.body.owner
    return [
        {
            "channel": "email",
            "url": f"mailto:{owner.contact}",
            "description": f"Team {owner.team}, owner of {descriptor.address}: questions, "
            "issues and access requests.",
            "tool": "email",
            "scope": "interactive",
        }
    ]


def _lineage_properties(record: ProductRecord) -> list[dict[str, Any]]:
    props = []
    if record.upstream:
        props.append(_prop("upstreamProducts", record.upstream, "Products it is built from."))
    if record.downstream:
        props.append(_prop("downstreamProducts", record.downstream, "Products built from it."))
    return props


def _identity_properties(record: ProductRecord) -> list[dict[str, Any]]:
    d = record.descriptor
    props = [
        _prop("meshAddress", record.address, "Address of the product in the mesh."),
        _prop("builtWith", d.built_with),
        _prop("sourceFile", d.source_file, "File declaring the product, from the mesh root."),
    ]
    if d.body.deprecated_on:
        props.append(_prop("deprecatedOn", d.body.deprecated_on))
    if d.body.sunset_on:
        props.append(_prop("sunsetOn", d.body.sunset_on, "Last day it is published."))
    return props


# --- quality: Great Expectations -> ODCS ---------------------------------------------------------

_DIMENSIONS = {
    "expect_column_values_to_not_be_null": "completeness",
    "expect_column_values_to_be_null": "completeness",
    "expect_table_row_count_to_be_between": "completeness",
    "expect_column_values_to_be_unique": "uniqueness",
    "expect_compound_columns_to_be_unique": "uniqueness",
    "expect_column_proportion_of_unique_values_to_be_between": "uniqueness",
    "expect_column_min_to_be_between": "accuracy",
    "expect_column_max_to_be_between": "accuracy",
    "expect_column_mean_to_be_between": "accuracy",
    "expect_column_sum_to_be_between": "accuracy",
}  # every other expectation checks values against a rule: conformity


def _count_operator(mostly: Any) -> dict[str, Any] | None:
    """No failing row, or at most (1 - mostly) of them."""
    if mostly is None or (_is_number(mostly) and mostly >= 1):
        return {"mustBe": 0, "unit": "rows"}
    if _is_number(mostly) and 0 <= mostly < 1:
        return {"mustBeLessOrEqualTo": round((1 - mostly) * 100, 6), "unit": "percent"}
    return None


def _library_metric(expectation: Expectation) -> dict[str, Any] | None:
    """The ODCS library metric saying exactly what the expectation checks, if there is one."""
    kwargs = dict(expectation.kwargs)
    mostly = kwargs.pop("mostly", None)
    keys = set(kwargs)
    kind = expectation.type
    count = _count_operator(mostly)
    if count is None:
        return None
    if kind == "expect_column_values_to_not_be_null" and keys == {"column"}:
        return {"metric": "nullValues", **count}
    if kind == "expect_column_values_to_be_unique" and keys == {"column"}:
        return {"metric": "duplicateValues", **count}
    if (
        kind == "expect_column_values_to_be_in_set"
        and keys == {"column", "value_set"}
        and isinstance(kwargs["value_set"], list | tuple)
    ):
        valid = _jsonable(kwargs["value_set"])
        return {"metric": "invalidValues", "arguments": {"validValues": valid}, **count}
    if (
        kind == "expect_column_values_to_match_regex"
        and keys == {"column", "regex"}
        and isinstance(kwargs["regex"], str)
    ):
        return {"metric": "invalidValues", "arguments": {"pattern": kwargs["regex"]}, **count}
    if kind == "expect_compound_columns_to_be_unique" and keys == {"column_list"}:
        return {"metric": "duplicateValues",
                "arguments": {"properties": list(kwargs["column_list"])}, **count}  # fmt: skip
    if kind == "expect_table_row_count_to_be_between" and mostly is None:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if not keys <= {"min_value", "max_value"} or (low is None and high is None):
            return None
        if any(v is not None and not _is_number(v) for v in (low, high)):
            return None
        if low is not None and high is not None:
            bound = {"mustBe": low} if low == high else {"mustBeBetween": [low, high]}
        elif low is not None:
            bound = {"mustBeGreaterOrEqualTo": low}
        else:
            bound = {"mustBeLessOrEqualTo": high}
        return {"metric": "rowCount", **bound, "unit": "rows"}
    return None


def quality_rule(expectation: Expectation) -> dict[str, Any]:
    """One ODCS quality rule for one Great Expectations expectation of the descriptor."""
    kwargs = _jsonable(expectation.kwargs)
    target = (
        expectation.column
        or ", ".join(expectation.kwargs.get("column_list") or [])
        or ("the table")
    )
    args = ", ".join(
        f"{k}={json.dumps(v)}" for k, v in kwargs.items() if k not in ("column", "column_list")
    )
    description = (
        f"Great Expectations {expectation.type} on {target}"
        + (f" ({args})" if args else "")
        + ". Checked on the staged rows before every publication; a failure blocks it."
    )
    rule: dict[str, Any] = {"name": expectation.label(), "description": description}
    if (metric := _library_metric(expectation)) is not None:
        rule |= {"type": "library", **metric}
    else:
        rule |= {
            "type": "custom",
            "engine": GX_ENGINE,
            "implementation": {"type": expectation.type, "kwargs": kwargs},
        }
    rule |= {
        "dimension": _DIMENSIONS.get(expectation.type, "conformity"),
        "severity": "error",
        "customProperties": [
            _prop(
                GX_PROPERTY,
                {"type": expectation.type, "kwargs": kwargs},
                "The descriptor's expectation this rule comes from.",
            )
        ],
    }
    return rule


def _volume_rule(descriptor: ProductDescriptor) -> dict[str, Any] | None:
    volume = descriptor.body.sla.volume
    if volume is None or (volume.min_ratio is None and volume.max_ratio is None):
        return None
    bounds = []
    if volume.min_ratio is not None:
        bounds.append(f"at least {volume.min_ratio:g}x")
    if volume.max_ratio is not None:
        bounds.append(f"at most {volume.max_ratio:g}x")
    effect = "a failure blocks it" if volume.blocking else "a failure is only a warning"
    return {
        "name": "volume",
        "description": f"Each new snapshot has {' and '.join(bounds)} the rows of the published "
        f"one. Checked before every publication; {effect}.",
        "type": "custom",
        "engine": MESH_ENGINE,
        "implementation": _jsonable({"check": "volume", **volume.model_dump(exclude_none=True)}),
        "dimension": "completeness",
        "severity": "error" if volume.blocking else "warning",
    }


# --- dbt constraints -----------------------------------------------------------------------------


def contract_constraints(mesh: Mesh, descriptor: ProductDescriptor) -> dict[str, list[str]]:
    """Column -> dbt constraint types (not_null, unique, primary_key) of a dbt product's
    enforced contract, from its prepared manifest ({} for Python products or no manifest). A
    model-level primary key lists its columns in order under the key ``""``."""
    if descriptor.built_with != "dbt":
        return {}
    from mesh_platform.dbt.nodes import is_product
    from mesh_platform.dbt.project import load_manifest
    from mesh_platform.domain import load_domain

    try:
        manifest = load_manifest(load_domain(mesh, descriptor.domain))
    except MeshError:
        return {}
    for node in manifest.get("nodes", {}).values():
        if not is_product(node) or node.get("name") != descriptor.name:
            continue
        version = node.get("version")
        if version is not None and str(version) != str(descriptor.body.major):
            continue
        found: dict[str, list[str]] = {}
        for name, column in (node.get("columns") or {}).items():
            kinds = [c.get("type") for c in column.get("constraints") or () if c.get("type")]
            if kinds:
                found[name] = kinds
        for constraint in node.get("constraints") or ():
            columns = list(constraint.get("columns") or ())
            if constraint.get("type") == "primary_key" and columns:
                found[""] = columns
            elif constraint.get("type") in ("not_null", "unique"):
                for name in columns:
                    found.setdefault(name, []).append(constraint["type"])
        return found
    return {}


def _keys(
    descriptor: ProductDescriptor, constraints: Mapping[str, list[str]]
) -> tuple[set[str], set[str], list[str]]:
    """(required columns, unique columns, primary key columns in order)."""
    expectations = descriptor.body.sla.expectations

    def expected(kind: str) -> set[str]:
        return {
            e.column
            for e in expectations
            if e.type == kind and e.column and (e.kwargs.get("mostly") in (None, 1, 1.0))
        }

    names = [c.name for c in descriptor.columns]
    primary = list(constraints.get("", ())) or [
        n for n in names if "primary_key" in constraints.get(n, ())
    ]
    required = expected("expect_column_values_to_not_be_null") | set(primary)
    required |= {n for n in names if "not_null" in constraints.get(n, ())}
    unique = expected("expect_column_values_to_be_unique")
    unique |= {n for n in names if "unique" in constraints.get(n, ())}
    if not primary:  # none declared: a single column promised unique and never null is the key
        candidates = [n for n in names if n in unique and n in required]
        primary = candidates if len(candidates) == 1 else []
    if len(primary) == 1:
        unique.add(primary[0])
    return required, unique, primary


# --- ODCS ----------------------------------------------------------------------------------------


def _odcs_property(
    column: Column,
    position: int,
    *,
    required: set[str],
    unique: set[str],
    primary: list[str],
    partition_column: str | None,
    rules: list[dict[str, Any]],
) -> dict[str, Any]:
    prop: dict[str, Any] = {"name": column.name}
    types = logical_type(column.data_type)
    prop |= {k: v for k, v in types.items() if k in ("logicalType", "logicalTypeOptions")}
    if column.data_type:
        prop["physicalType"] = column.data_type
    prop |= {k: v for k, v in types.items() if k in ("items", "map")}
    if column.description.strip():
        prop["description"] = column.description.strip()
    if column.name in primary:
        prop["primaryKey"] = True
        prop["primaryKeyPosition"] = primary.index(column.name) + 1
    prop["required"] = column.name in required
    prop["unique"] = column.name in unique
    if column.name == partition_column:
        prop["partitioned"] = True
        prop["partitionKeyPosition"] = 1
    if column.classification:
        prop["classification"] = column.classification
    prop["criticalDataElement"] = column.pii_kind is not None
    if rules:
        prop["quality"] = rules
    custom = [_prop("ordinalPosition", position)]
    if column.pii_kind:
        custom.append(_prop("piiKind", column.pii_kind))
    if column.masking:
        custom.append(_prop("masking", column.masking, "How the value is masked."))
        custom.append(
            _prop(
                "maskingAt",
                column.masking_at,
                "publication: stored masked for every reader; read: stored in clear, masked "
                "by the mesh's read paths for readers not cleared for its class.",
            )
        )
    prop["customProperties"] = custom
    return prop


def odcs_contract(
    mesh: Mesh,
    record: ProductRecord,
    *,
    descriptors: Mapping[str, ProductDescriptor] | None = None,
    constraints: Mapping[str, list[str]] | None = None,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """The product's data contract as an ODCS v3 document (a plain JSON-compatible dict)."""
    d = record.descriptor
    body = d.body
    today = today or dt.date.today()
    descriptors = descriptors if descriptors is not None else _descriptors(mesh)
    constraints = constraints if constraints is not None else contract_constraints(mesh, d)
    required, unique, primary = _keys(d, constraints)
    names = {c.name for c in d.columns}

    by_column: dict[str, list[dict[str, Any]]] = {}
    table_rules: list[dict[str, Any]] = []
    for expectation in body.sla.expectations:
        rule = quality_rule(expectation)
        if expectation.column in names:
            by_column.setdefault(expectation.column, []).append(rule)  # type: ignore[arg-type]
        else:
            table_rules.append(rule)
    if volume := _volume_rule(d):
        table_rules.append(volume)

    partition = body.partition_by
    table: dict[str, Any] = {
        "name": d.address.table,
        "physicalName": str(d.address),
        "physicalType": "table",
        "logicalType": "object",
        "businessName": d.name.replace("_", " "),
        "description": d.description.strip(),
    }
    if body.status == "deprecated":
        table["deprecated"] = True
    if body.tags:
        table["tags"] = list(body.tags)
    table["properties"] = [
        _odcs_property(
            column,
            i,
            required=required,
            unique=unique,
            primary=primary,
            partition_column=partition.column if partition else None,
            rules=by_column.get(column.name, []),
        )
        for i, column in enumerate(d.columns, start=1)
    ]
    if table_rules:
        table["quality"] = table_rules
    table_props = [_prop("icebergTable", ".".join(d.address.iceberg_identifier))]
    if partition:
        table_props.append(
            _prop(
                "partitionBy",
                partition.model_dump(),
                f"Iceberg partition transform {partition.granularity}({partition.column}); "
                "a run republishes only the partitions whose rows changed.",
            )
        )
    table_props.append(_prop("incremental", d.incremental))
    table["customProperties"] = table_props

    sla: list[dict[str, Any]] = []
    if fresh := body.sla.freshness:
        amount, unit = _latency(fresh.max_age)
        sla.append(
            {
                "property": "latency",
                "value": amount,
                "unit": unit,
                "description": f"The published snapshot is at most {fresh.max_age} old "
                "(time since its Iceberg commit on main): the freshness SLA.",
            }
        )
    if body.sunset_on:
        sla.append(
            {
                "property": "endOfLife",
                "value": body.sunset_on.isoformat(),
                "description": "Last day this deprecated version is published.",
            }
        )

    roles = []
    for grant in body.grants:
        kind = grant.to.split(":", 1)[0] if ":" in grant.to else "domain"
        props = [
            _prop("principalType", kind),
            _prop("expires", grant.expires, "Last day the grant is valid."),
            _prop("columns", grant.columns or "all", "Columns the grant covers."),
            _prop("rows", grant.rows or "all", "SQL predicate on the rows the grant covers."),
        ]
        roles.append(
            {
                "role": grant.to,
                "description": grant.purpose,
                "access": "read",
                "firstLevelApprovers": f"team:{body.owner.team}",
                "customProperties": props,
            }
        )

    catalog = mesh.settings.catalog.name
    server = {
        "server": catalog,
        "type": "iceberg",
        "description": f"The mesh's Iceberg catalog (pyiceberg SQL catalog); the product is table "
        f"{d.domain}.{d.address.table}.",
        "catalog": catalog,
        "catalogUrl": safe_uri(mesh.catalog_uri),
        "namespace": d.domain,
        "warehouse": safe_uri(mesh.warehouse),
        "customProperties": [
            _prop("catalogType", "sql"),
            _prop("table", ".".join(d.address.iceberg_identifier)),
        ],
    }

    contract = _header(ODCS_API_VERSION, "DataContract", record, descriptors, today)
    contract |= {
        "schema": [table],
        "servers": [server],
        "team": {
            "name": body.owner.team,
            "description": f"Owning team of {record.address} (principal team:{body.owner.team}); "
            "it decides who may read the product.",
            "members": [{"username": body.owner.contact, "role": "owner"}],
        },
        "support": _support(d),
    }
    if roles:
        contract["roles"] = roles
    if sla:
        contract["slaProperties"] = sla
    contract["customProperties"] = _identity_properties(record) + _lineage_properties(record)
    return contract


# --- ODPS ----------------------------------------------------------------------------------------


def odps_product(
    mesh: Mesh,
    record: ProductRecord,
    *,
    descriptors: Mapping[str, ProductDescriptor] | None = None,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """The product as an ODPS v1 document: one output port (its table and contract), one input
    port per upstream product."""
    d = record.descriptor
    body = d.body
    today = today or dt.date.today()
    descriptors = descriptors if descriptors is not None else _descriptors(mesh)

    inputs = []
    for address in record.upstream:
        upstream = descriptors.get(address)
        if upstream is not None:
            contract_id, version = upstream.address.urn, upstream.body.version
        else:  # not resolvable now (an invalid descriptor): its address still names the major
            parsed = ProductAddress.parse(address)
            contract_id, version = parsed.urn, f"{parsed.major}.x"
        inputs.append({"name": address, "version": version, "contractId": contract_id})

    output: dict[str, Any] = {
        "name": record.address,
        "description": d.description.strip(),
        "type": OUTPUT_PORT_TYPE,
        "version": body.version,
        "contractId": record.urn,
    }
    if inputs:
        output["inputContracts"] = [
            {"id": p["contractId"], "version": p["version"]} for p in inputs
        ]

    product = _header(ODPS_API_VERSION, "DataProduct", record, descriptors, today)
    if inputs:
        product["inputPorts"] = inputs
    product |= {
        "outputPorts": [output],
        "support": _support(d),
        "team": [
            {
                "username": body.owner.contact,
                "name": body.owner.team,
                "description": f"Owning team (principal team:{body.owner.team}).",
                "role": "owner",
            }
        ],
    }
    custom = _identity_properties(record)
    if fresh := body.sla.freshness:
        custom.append(_prop("freshnessMaxAge", fresh.max_age, "Oldest a published snapshot "
                            "may be (the contract's latency SLA)."))  # fmt: skip
    if record.downstream:
        custom.append(_prop("downstreamProducts", record.downstream, "Products built from it."))
    if record.current is not None:
        custom.append(
            _prop(
                "publishedSnapshot",
                {
                    "snapshotId": record.current.snapshot_id,
                    "publishedAt": record.current.published_at,
                    "rows": record.current.rows,
                },
                "Main's head when the document was exported.",
            )
        )
    product["customProperties"] = custom
    return product


# --- documents, validation, files ----------------------------------------------------------------


def _descriptors(mesh: Mesh) -> Mapping[str, ProductDescriptor]:
    from mesh_platform.query.directory import load_directory

    return load_directory(mesh).descriptors


def build_document(
    mesh: Mesh,
    record: ProductRecord,
    fmt: str,
    *,
    descriptors: Mapping[str, ProductDescriptor] | None = None,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """The ``fmt`` ('odcs' or 'odps') document of ``record``'s product."""
    if fmt == "odcs":
        return odcs_contract(mesh, record, descriptors=descriptors, today=today)
    if fmt == "odps":
        return odps_product(mesh, record, descriptors=descriptors, today=today)
    raise MeshError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value.strip() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(document: Mapping[str, Any], *, header: str | None = None) -> str:
    text = yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return text


def official_schema(fmt: str) -> dict[str, Any]:
    """The standard's official JSON Schema: ODCS from the installed open-data-contract-standard
    package, ODPS vendored beside this module."""
    if fmt == "odcs":
        try:
            text = (
                resources.files("open_data_contract_standard")
                .joinpath("schema.json")
                .read_text("utf-8")
            )
        except ModuleNotFoundError as exc:
            raise MeshError(
                "the ODCS JSON Schema is not installed (package open-data-contract-standard)",
                fix="install the dev dependencies (`uv sync`), or export without --validate",
            ) from exc
    elif fmt == "odps":
        text = resources.files(__package__).joinpath("schemas", ODPS_SCHEMA_FILE).read_text("utf-8")
    else:
        raise MeshError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
    return json.loads(text)


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_URI_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*$")


def format_checker(validator_class: Any) -> Any:
    """The draft's format checker, plus 'uri' and 'date-time' when jsonschema's optional
    packages for them are not installed (they are not dependencies here)."""
    import jsonschema

    checker = jsonschema.FormatChecker(validator_class.FORMAT_CHECKER.checkers)
    if "uri" not in checker.checkers:

        @checker.checks("uri")
        def _uri(value: object) -> bool:
            if not isinstance(value, str):
                return True
            return bool(_URI_SCHEME.match(value) and _URI_CHARS.match(value))

    if "date-time" not in checker.checkers:

        @checker.checks("date-time", raises=ValueError)
        def _date_time(value: object) -> bool:
            if not isinstance(value, str):
                return True
            if "T" not in value.upper():
                return False
            return (
                dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00")).tzinfo is not None
            )

    return checker


def validator(fmt: str) -> Any:
    """A jsonschema validator of the standard's official schema (its draft, from $schema)."""
    try:
        import jsonschema
    except ModuleNotFoundError as exc:
        raise MeshError(
            "validating needs the jsonschema package",
            fix="install the dev dependencies (`uv sync`), or export without --validate",
        ) from exc
    schema = official_schema(fmt)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=format_checker(cls))


def validation_errors(document: Mapping[str, Any], fmt: str) -> list[str]:
    """Every way ``document`` breaks the standard's schema, as 'path: message' ([] if valid)."""
    errors = sorted(validator(fmt).iter_errors(document), key=lambda e: list(map(str, e.path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and one rename: the file is either
    the previous one or the complete new one. MeshError (naming the file) when it cannot be."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise MeshError(
            f"cannot write {path}: it is a directory",
            fix=f"pass a file name, e.g. --output {path / 'product.yaml'}",
            path=path,
        )
    if not parent.is_dir():
        raise MeshError(
            f"cannot write {path}: its directory {parent} does not exist (or is not a directory)",
            fix=f"create the directory first (mkdir -p {parent}) or pass another --output",
            path=path,
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise MeshError(
            f"cannot write {path}: the file is read-only",
            fix=f"make it writable (chmod u+w {path}) or pass another --output",
            path=path,
        )
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise MeshError(
            f"cannot write {path}: {exc.strerror or exc}; nothing was written",
            fix=f"make {parent} writable (and {path.name} a writable file), or pass another "
            "--output",
            path=path,
        ) from exc


def find_product(mesh: Mesh, address: str) -> ProductRecord:
    """The record of one product (address or URN); UnknownProductError names the closest."""
    from mesh_platform.discovery.catalog import product_records

    if address.startswith("urn:"):
        address = str(ProductAddress.parse(address))
    # find_record() without the Dagster check results: an export does not show them.
    (record,) = product_records(mesh, addresses=[address], with_checks=False)
    return record


def export_product(
    mesh: Mesh,
    address: str,
    fmt: str,
    *,
    output: Path | None = None,
    validate: bool = False,
    today: dt.date | None = None,
) -> str:
    """``mesh export``: the product's ``fmt`` document as YAML; written atomically to ``output``
    when given (after rendering and, with ``validate``, validating: an error writes nothing)."""
    if fmt not in FORMATS:
        raise MeshError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
    record = find_product(mesh, address)
    document = build_document(mesh, record, fmt, today=today)
    if validate and (errors := validation_errors(document, fmt)):
        listing = "\n".join(f"  - {e}" for e in errors[:20])
        raise MeshError(
            f"the {fmt} document of {record.address} breaks the {STANDARD_NAMES[fmt]} "
            f"schema ({len(errors)} problem(s)):\n{listing}",
            fix="report it: mesh_platform/discovery/standards.py maps descriptors to the standards",
        )
    header = (
        f"{STANDARD_NAMES[fmt]} document of {record.address} ({record.urn}),\n"
        f"generated by `mesh export` from {record.descriptor.source_file}."
    )
    text = to_yaml(document, header=header)
    if output is not None:
        write_atomically(Path(output), text)
    return text


def export_all(
    mesh: Mesh, records: Iterable[ProductRecord], fmt: str, *, today: dt.date | None = None
) -> dict[str, dict[str, Any]]:
    """address -> ``fmt`` document, for many records at once (one directory load)."""
    descriptors = _descriptors(mesh)
    return {
        r.address: build_document(mesh, r, fmt, descriptors=descriptors, today=today)
        for r in records
    }
