"""``mesh export``: a product in the open standards of the Bitol project (LF AI & Data), as YAML.

- ``odcs``: its data contract in the Open Data Contract Standard v3 (``kind: DataContract``),
  built with the official models of the ``open-data-contract-standard`` package (:mod:`.odcs`);
- ``odps``: its product descriptor in the Open Data Product Standard v1.1 (``kind: DataProduct``,
  :mod:`.odps`).

Both are derived from the product's record (:mod:`mesh_platform.discovery.catalog`), so they work
before anything is published. The mapping, field by field:

ODCS ``id`` is the product's URN, ``name`` its address; the mesh's draft / active / deprecated
are the standard's statuses of the same names (``retired`` once a deprecated version's sunset date
has passed). ``schema`` is one object, the Iceberg table, whose properties are the columns: the
DuckDB type as ``physicalType`` and its ``logicalType`` (:mod:`.odcs_types`); the classification;
personal data as critical data elements; ``required`` / ``unique`` / ``primaryKey`` from dbt's
constraints and the descriptor's expectations; the partition column as ``partitioned``. Each
Great Expectations expectation becomes one quality rule in a form the standard defines, so that
ODCS tools execute it (:mod:`.odcs_quality`): a library metric (``nullValues``,
``duplicateValues``, ``invalidValues``, ``rowCount`` with its bounds) or, for a "between" on
column values, a ``sql`` rule; what has no standard form stays a ``custom`` rule that says ODCS
tools skip it (the volume check, which compares two snapshots, is one). Every rule carries the
original expectation in its custom property ``greatExpectations``. Freshness is the SLA property
``latency`` (a sunset date ``endOfLife``), the grants are ``roles`` (expiry, columns and row
filter as custom properties), the owner is ``team`` and ``support``. The server is the product's
table in the mesh's catalog as the standard's ``iceberg`` server (catalog URL without any
password, namespace, warehouse), the form datacontract-cli opens: ``datacontract test`` runs an
export unchanged, told only the catalog type (the mesh root's datacontract-config.yaml); it
reads the stored data with the platform's credentials, the owner's view. What has no field in
the standard (address, lineage, masking, partitioning, ...) is a custom property
(:mod:`.standard_fields` holds what both standards share).

ODPS ``id`` is the URN too; one output port (the table, whose ``contractId`` is the ODCS ``id``)
and one input port per upstream product (its URN as ``contractId``); ``team`` is an object with
its ``members``, as in ODCS.

The official JSON Schemas validate both documents (``--validate``, and the tests;
:mod:`.validation`): ODCS's ships in the ``open-data-contract-standard`` package, ODPS's is
vendored in ``schemas/`` (its README gives the source, commit and date). Validation uses
``jsonschema``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.discovery import odcs, odps
from mesh_platform.discovery.catalog import ProductRecord, product_records
from mesh_platform.discovery.standard_fields import FORMATS, unknown_format
from mesh_platform.discovery.validation import validation_errors
from mesh_platform.errors import MeshError
from mesh_platform.files import write_atomically
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.registry import load_directory

STANDARD_NAMES = {
    "odcs": f"Open Data Contract Standard {odcs.API_VERSION}",
    "odps": f"Open Data Product Standard {odps.API_VERSION}",
}


def build_document(
    mesh: Mesh,
    record: ProductRecord,
    fmt: str,
    *,
    descriptors: Mapping[str, ProductDescriptor] | None = None,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """The ``fmt`` ('odcs' or 'odps') document of ``record``'s product."""
    if fmt not in FORMATS:
        raise unknown_format(fmt)
    descriptors = descriptors if descriptors is not None else load_directory(mesh).descriptors
    if fmt == "odcs":
        return odcs.odcs_contract(mesh, record, descriptors=descriptors, today=today)
    return odps.odps_product(record, descriptors=descriptors, today=today)


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


def write_export(path: Path, text: str) -> None:
    """Write an exported document atomically (:func:`mesh_platform.files.write_atomically`):
    the file is either the previous one or the complete new one. MeshError (naming the file,
    with the fix for ``--output``) when it cannot be."""
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
    try:
        write_atomically(path, text)
    except OSError as exc:
        raise MeshError(
            f"cannot write {path}: {exc.strerror or exc}; nothing was written",
            fix=f"make {parent} writable (and {path.name} a writable file), or pass another "
            "--output",
            path=path,
        ) from exc


def find_product(mesh: Mesh, address: str) -> ProductRecord:
    """The record of one product (address or URN); UnknownProductError names the closest."""
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
        raise unknown_format(fmt)
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
        write_export(Path(output), text)
    return text


def export_all(
    mesh: Mesh, records: Iterable[ProductRecord], fmt: str, *, today: dt.date | None = None
) -> dict[str, dict[str, Any]]:
    """address -> ``fmt`` document, for many records at once (one directory load)."""
    descriptors = load_directory(mesh).descriptors
    return {
        r.address: build_document(mesh, r, fmt, descriptors=descriptors, today=today)
        for r in records
    }
