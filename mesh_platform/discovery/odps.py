"""A product in the Open Data Product Standard v1.1 (``kind: DataProduct``).

One output port (its table, whose ``contractId`` is the ODCS contract's ``id``) and one input
port per upstream product (its URN as ``contractId``). ODPS has no official Python models: the
document is a plain dict, checked against the vendored official JSON Schema (:mod:`.validation`);
the parts it shares with ODCS (support, custom properties) are the ODCS models' dumps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from mesh_platform.addressing import ProductAddress
from mesh_platform.discovery.catalog import ProductRecord
from mesh_platform.discovery.standard_fields import (
    custom_property,
    downstream_property,
    dumped,
    header,
    identity_properties,
    support,
)
from mesh_platform.products.descriptor import ProductDescriptor

API_VERSION = "v1.1.0"
OUTPUT_PORT_TYPE = "tables"


def _input_ports(
    record: ProductRecord, descriptors: Mapping[str, ProductDescriptor]
) -> list[dict[str, Any]]:
    inputs = []
    for address in record.upstream:
        upstream = descriptors.get(address)
        if upstream is not None:
            contract_id, version = upstream.address.urn, upstream.body.version
        else:  # not resolvable now (an invalid descriptor): its address still names the major
            parsed = ProductAddress.parse(address)
            contract_id, version = parsed.urn, f"{parsed.major}.x"
        inputs.append({"name": address, "version": version, "contractId": contract_id})
    return inputs


def _custom_properties(record: ProductRecord) -> list[dict[str, Any]]:
    body = record.descriptor.body
    custom = identity_properties(record)
    if fresh := body.sla.freshness:
        custom.append(custom_property("freshnessMaxAge", fresh.max_age, "Oldest a published "
                                      "snapshot may be (the contract's latency SLA)."))  # fmt: skip
    if record.downstream:
        custom.append(downstream_property(record))
    if record.current is not None:
        custom.append(
            custom_property(
                "publishedSnapshot",
                {
                    "snapshotId": record.current.snapshot_id,
                    "publishedAt": record.current.published_at,
                    "rows": record.current.rows,
                },
                "Main's head when the document was exported.",
            )
        )
    return dumped(custom)


def odps_product(
    record: ProductRecord,
    *,
    descriptors: Mapping[str, ProductDescriptor],
    today: dt.date | None = None,
) -> dict[str, Any]:
    """The product as an ODPS v1 document: one output port (its table and contract), one input
    port per upstream product."""
    d = record.descriptor
    body = d.body
    inputs = _input_ports(record, descriptors)
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
    product = header(API_VERSION, "DataProduct", record, descriptors, today or dt.date.today())
    if body.status == "deprecated":
        product["deprecated"] = True
    if inputs:
        product["inputPorts"] = inputs
    product |= {
        "outputPorts": [output],
        "support": dumped(support(d)),
        "team": {
            "name": body.owner.team,
            "description": f"Owning team of {record.address} (principal team:{body.owner.team}); "
            "it decides who may read the product.",
            "members": [{"username": body.owner.contact, "role": "owner"}],
        },
        "customProperties": _custom_properties(record),
    }
    return product
