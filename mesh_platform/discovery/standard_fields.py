"""What the two Bitol standards (ODCS and ODPS) say the same way about a product.

Its identity and status, the description (purpose, usage, limitations), support, and the custom
properties both documents carry (address, source file, deprecation dates, lineage). Custom
properties and support channels have the same shape in both standards: they are built with the
official ODCS models (:mod:`open_data_contract_standard.model`) and dumped for ODPS.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from open_data_contract_standard.model import CustomProperty, Support

from mesh_platform.discovery.catalog import ProductRecord
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.descriptor_columns import Column
from mesh_platform.urls import redact, url_secrets

FORMATS = ("odcs", "odps")


def unknown_format(fmt: str) -> MeshError:
    return MeshError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")


def jsonable(value: Any) -> Any:
    """YAML-loaded values (dates, tuples, sets) as the JSON types the standards' schemas take."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)


def custom_property(name: str, value: Any, description: str | None = None) -> CustomProperty:
    return CustomProperty(property=name, value=jsonable(value), description=description or None)


def dumped(items: list[Any]) -> list[dict[str, Any]]:
    """Official models as the plain dicts of the document."""
    return [item.model_dump(by_alias=True, exclude_none=True) for item in items]


_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)")


def safe_uri(uri: str) -> str:
    """A catalog or warehouse location fit to publish: no password, no raw spaces."""
    if url_secrets(uri):  # as SQLAlchemy parses it: a password may hold '/', '#', '?'
        uri = redact(uri).replace(":***@", "@")
    if (match := _AUTHORITY.match(uri)) and "@" in match.group(2):
        userinfo, _, host = match.group(2).rpartition("@")
        user = userinfo.split(":", 1)[0]
        uri = match.group(1) + (f"{user}@" if user else "") + host + uri[match.end() :]
    return quote(uri, safe=":/?#[]@!$&'()*+,;=%~-._")


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


def header(
    api_version: str,
    kind: str,
    record: ProductRecord,
    descriptors: Mapping[str, ProductDescriptor],
    today: dt.date,
) -> dict[str, Any]:
    """The fields both standards open with: identity, version, status, domain, description."""
    d = record.descriptor
    fields: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "id": record.urn,
        "name": record.address,
        "version": d.body.version,
        "status": status_of(d, today),
        "domain": d.domain,
        "description": description(record, descriptors, today),
    }
    if d.body.tags:
        fields["tags"] = list(d.body.tags)
    return fields


def description(
    record: ProductRecord, descriptors: Mapping[str, ProductDescriptor], today: dt.date
) -> dict[str, str]:
    """Purpose, usage (how to query it and ask for access) and limitations."""
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


def support(descriptor: ProductDescriptor) -> list[Support]:
    owner = descriptor.body.owner
    return [
        Support(
            channel="email",
            url=f"mailto:{owner.contact}",
            description=f"Team {owner.team}, owner of {descriptor.address}: questions, "
            "issues and access requests.",
            tool="email",
            scope="interactive",
        )
    ]


def lineage_properties(record: ProductRecord) -> list[CustomProperty]:
    props = []
    if record.upstream:
        props.append(
            custom_property("upstreamProducts", record.upstream, "Products it is built from.")
        )
    if record.downstream:
        props.append(downstream_property(record))
    return props


def downstream_property(record: ProductRecord) -> CustomProperty:
    return custom_property("downstreamProducts", record.downstream, "Products built from it.")


def identity_properties(record: ProductRecord) -> list[CustomProperty]:
    d = record.descriptor
    props = [
        custom_property("meshAddress", record.address, "Address of the product in the mesh."),
        custom_property("builtWith", d.built_with),
        custom_property(
            "sourceFile", d.source_file, "File declaring the product, from the mesh root."
        ),
    ]
    if d.body.deprecated_on:
        props.append(custom_property("deprecatedOn", d.body.deprecated_on))
    if d.body.sunset_on:
        props.append(custom_property("sunsetOn", d.body.sunset_on, "Last day it is published."))
    return props
