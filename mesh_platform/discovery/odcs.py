"""A product's data contract in the Open Data Contract Standard v3, built with the official models.

Every part is an object of :mod:`open_data_contract_standard.model` (the Bitol project's own
pydantic models); the document is their dump (``by_alias``, ``exclude_none``), so field names
and their order are the standard's. The mapping is described in :mod:`.standards`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from open_data_contract_standard.model import (
    DataQuality,
    Description,
    OpenDataContractStandard,
    Role,
    SchemaObject,
    SchemaProperty,
    Server,
    ServiceLevelAgreementProperty,
    Team,
    TeamMember,
)

from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import is_product
from mesh_platform.dbt.project import load_manifest
from mesh_platform.discovery.catalog import ProductRecord
from mesh_platform.discovery.odcs_quality import quality_rule, volume_rule
from mesh_platform.discovery.odcs_types import logical_type
from mesh_platform.discovery.standard_fields import (
    custom_property,
    header,
    identity_properties,
    lineage_properties,
    safe_uri,
    support,
)
from mesh_platform.domain import load_domain
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.descriptor_columns import Column

API_VERSION = "v3.2.0"

# --- dbt constraints -----------------------------------------------------------------------------


def _manifest_node(mesh: Mesh, descriptor: ProductDescriptor) -> dict[str, Any] | None:
    """The product's node in its domain's prepared dbt manifest (None: no manifest, no node)."""
    try:
        manifest = load_manifest(load_domain(mesh, descriptor.domain))
    except MeshError:
        return None
    for node in manifest.get("nodes", {}).values():
        if not is_product(node) or node.get("name") != descriptor.name:
            continue
        version = node.get("version")
        if version is not None and str(version) != str(descriptor.body.major):
            continue
        return node
    return None


def contract_constraints(mesh: Mesh, descriptor: ProductDescriptor) -> dict[str, list[str]]:
    """Column -> dbt constraint types (not_null, unique, primary_key) of a dbt product's
    enforced contract, from its prepared manifest ({} for Python products or no manifest). A
    model-level primary key lists its columns in order under the key ``""``."""
    if descriptor.built_with != "dbt" or (node := _manifest_node(mesh, descriptor)) is None:
        return {}
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


# --- the schema: one object (the table), one property per column ---------------------------------


def _column_property(
    column: Column,
    position: int,
    keys: tuple[set[str], set[str], list[str]],
    partition_column: str | None,
    rules: list[DataQuality],
) -> SchemaProperty:
    required, unique, primary = keys
    is_key = column.name in primary
    custom = [custom_property("ordinalPosition", position)]
    if column.pii_kind:
        custom.append(custom_property("piiKind", column.pii_kind))
    if column.masking:
        custom.append(custom_property("masking", column.masking, "How the value is masked."))
        custom.append(
            custom_property(
                "maskingAt",
                column.masking_at,
                "publication: stored masked for every reader; read: stored in clear, masked "
                "by the mesh's read paths for readers not cleared for its class.",
            )
        )
    return SchemaProperty(
        name=column.name,
        **logical_type(column.data_type),  # logicalType (+ options, items, map)
        physicalType=column.data_type or None,
        description=column.description.strip() or None,
        primaryKey=True if is_key else None,
        primaryKeyPosition=primary.index(column.name) + 1 if is_key else None,
        required=column.name in required,
        unique=column.name in unique,
        partitioned=True if column.name == partition_column else None,
        partitionKeyPosition=1 if column.name == partition_column else None,
        classification=column.classification or None,
        criticalDataElement=column.pii_kind is not None,
        quality=rules or None,
        customProperties=custom,
    )


def _table(
    mesh: Mesh, descriptor: ProductDescriptor, constraints: Mapping[str, list[str]] | None
) -> SchemaObject:
    """The Iceberg table: its columns, their rules, the table-level rules, partitioning."""
    d, body = descriptor, descriptor.body
    constraints = constraints if constraints is not None else contract_constraints(mesh, d)
    keys = _keys(d, constraints)
    names = {c.name for c in d.columns}
    by_column: dict[str, list[DataQuality]] = {}
    table_rules: list[DataQuality] = []
    for expectation in body.sla.expectations:
        rule = quality_rule(expectation)
        if expectation.column in names:
            by_column.setdefault(expectation.column, []).append(rule)  # type: ignore[arg-type]
        else:
            table_rules.append(rule)
    if volume := volume_rule(d):
        table_rules.append(volume)
    partition = body.partition_by
    table_props = [custom_property("icebergTable", ".".join(d.address.iceberg_identifier))]
    if partition:
        table_props.append(
            custom_property(
                "partitionBy",
                partition.model_dump(),
                f"Iceberg partition transform {partition.granularity}({partition.column}); "
                "a run republishes only the partitions whose rows changed.",
            )
        )
    table_props.append(custom_property("incremental", d.incremental))
    column_properties = [
        _column_property(
            column,
            i,
            keys,
            partition.column if partition else None,
            by_column.get(column.name, []),
        )
        for i, column in enumerate(d.columns, start=1)
    ]
    return SchemaObject(
        name=d.address.table,
        physicalName=str(d.address),
        physicalType="table",
        logicalType="object",
        businessName=d.name.replace("_", " "),
        description=d.description.strip(),
        deprecated=True if body.status == "deprecated" else None,
        tags=list(body.tags) or None,
        properties=column_properties,
        quality=table_rules or None,
        customProperties=table_props,
    )


# --- SLA, roles, server, team --------------------------------------------------------------------


def _latency(max_age: str) -> tuple[int, str]:
    """'26h' -> (26, 'h'); minutes as 'min' ('m' would read as months)."""
    match = re.fullmatch(r"(\d+)\s*([mhd])", max_age.strip())
    if match is None:  # the descriptor validated it: cannot happen
        raise ValueError(f"duration {max_age!r}")
    return int(match.group(1)), {"m": "min", "h": "h", "d": "d"}[match.group(2)]


def _sla(descriptor: ProductDescriptor) -> list[ServiceLevelAgreementProperty]:
    body = descriptor.body
    sla = []
    if fresh := body.sla.freshness:
        amount, unit = _latency(fresh.max_age)
        sla.append(
            ServiceLevelAgreementProperty(
                property="latency",
                value=amount,
                unit=unit,
                description=f"The published snapshot is at most {fresh.max_age} old "
                "(time since its Iceberg commit on main): the freshness SLA.",
            )
        )
    if body.sunset_on:
        sla.append(
            ServiceLevelAgreementProperty(
                property="endOfLife",
                value=body.sunset_on.isoformat(),
                description="Last day this deprecated version is published.",
            )
        )
    return sla


def _roles(descriptor: ProductDescriptor) -> list[Role]:
    """One read role per grant; the owning team approves."""
    body = descriptor.body
    roles = []
    for grant in body.grants:
        kind = grant.to.split(":", 1)[0] if ":" in grant.to else "domain"
        props = [
            custom_property("principalType", kind),
            custom_property("expires", grant.expires, "Last day the grant is valid."),
            custom_property("columns", grant.columns or "all", "Columns the grant covers."),
            custom_property(
                "rows", grant.rows or "all", "SQL predicate on the rows the grant covers."
            ),
        ]
        roles.append(
            Role(
                role=grant.to,
                description=grant.purpose,
                access="read",
                firstLevelApprovers=f"team:{body.owner.team}",
                customProperties=props,
            )
        )
    return roles


CATALOG_TYPE_ENV = "DATACONTRACT_ICEBERG_CATALOG_TYPE"
"""datacontract-cli's setting for the pyiceberg catalog type (``iceberg.catalog_type`` in its
datacontract-config.yaml, which the mesh root holds): the standard's ``iceberg`` server names a
catalog by URL only, and the tool takes an URL for a REST catalog unless told."""


def _server(mesh: Mesh, descriptor: ProductDescriptor) -> Server:
    """The product's Iceberg table in the mesh's catalog, as the standard's ``iceberg`` server:
    the catalog's URL (without any password) and the warehouse. ODCS tools read the table with
    pyiceberg from there: ``datacontract test`` run from the mesh root, whose
    datacontract-config.yaml tells it the catalog is a pyiceberg SQL catalog (the standard has no
    field for that; elsewhere ``DATACONTRACT_ICEBERG_CATALOG_TYPE=sql``). Secrets come
    from the tool's own settings, never from the contract: the catalog URL with its password
    (``DATACONTRACT_ICEBERG_CATALOG_URL``), the S3 keys (``DATACONTRACT_S3_ACCESS_KEY_ID``,
    ``DATACONTRACT_S3_SECRET_ACCESS_KEY``) and an S3-compatible endpoint
    (``DATACONTRACT_ICEBERG_S3_ENDPOINT``) for a warehouse on S3.

    Whoever runs them reads the stored data with the catalog's and the warehouse's credentials:
    the owner's view, before the mesh's read-time masks, row filters and grants, which only the
    mesh's read paths apply. Those credentials are the platform's, not a consumer's."""
    d = descriptor
    catalog = mesh.settings.catalog.name
    return Server(
        server=catalog,
        type="iceberg",
        description=f"The mesh's Iceberg catalog, a pyiceberg SQL catalog (datacontract-cli: "
        f"run it from the mesh root, or set {CATALOG_TYPE_ENV}=sql); the product is table "
        f"{d.domain}.{d.address.table}. Read "
        "directly, it is the stored data before read-time masks, row filters and grants: the "
        "owner's view. Consumers read through the mesh (mesh query, mesh serve).",
        environment=mesh.settings.profile,
        catalog=catalog,
        catalogUrl=safe_uri(mesh.catalog_uri),
        namespace=d.domain,
        warehouse=safe_uri(mesh.warehouse),
        customProperties=[
            custom_property("catalogType", "sql", "pyiceberg catalog type of catalogUrl."),
            custom_property("table", ".".join(d.address.iceberg_identifier)),
        ],
    )


def _team(record: ProductRecord) -> Team:
    owner = record.descriptor.body.owner
    return Team(
        name=owner.team,
        description=f"Owning team of {record.address} (principal team:{owner.team}); "
        "it decides who may read the product.",
        members=[TeamMember(username=owner.contact, role="owner")],
    )


# --- the contract --------------------------------------------------------------------------------


def odcs_model(
    mesh: Mesh,
    record: ProductRecord,
    *,
    descriptors: Mapping[str, ProductDescriptor],
    constraints: Mapping[str, list[str]] | None = None,
    today: dt.date | None = None,
) -> OpenDataContractStandard:
    """The product's data contract as the official ODCS model."""
    d = record.descriptor
    fields = header(API_VERSION, "DataContract", record, descriptors, today or dt.date.today())
    return OpenDataContractStandard(
        **(fields | {"description": Description(**fields["description"])}),
        schema=[_table(mesh, d, constraints)],
        servers=[_server(mesh, d)],
        team=_team(record),
        support=support(d),
        roles=_roles(d) or None,
        slaProperties=_sla(d) or None,
        customProperties=identity_properties(record) + lineage_properties(record),
    )


def odcs_contract(
    mesh: Mesh,
    record: ProductRecord,
    *,
    descriptors: Mapping[str, ProductDescriptor],
    constraints: Mapping[str, list[str]] | None = None,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """The product's data contract as an ODCS v3 document (a plain JSON-compatible dict)."""
    model = odcs_model(mesh, record, descriptors=descriptors, constraints=constraints, today=today)
    return model.model_dump(by_alias=True, exclude_none=True)
