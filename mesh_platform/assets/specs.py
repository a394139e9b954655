"""What Dagster shows of a product, derived from its descriptor (dbt and Python products alike)."""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_shared.check import CheckError

from mesh_platform.products.descriptor import ProductDescriptor

# The materialisation metadata that says which Iceberg snapshot a run published: sensors,
# acknowledgement of late commits and the CLI read it.
SNAPSHOT_METADATA = "mesh/iceberg_snapshot_id"


def product_tags(descriptor: ProductDescriptor) -> dict[str, str]:
    body = descriptor.body
    return {
        "mesh/domain": descriptor.domain,
        "mesh/layer": "product",
        "mesh/access": "public",
        "mesh/version": body.version,
        "mesh/major": str(body.major),
        "mesh/status": body.status,
        "mesh/built_with": descriptor.built_with,
        "mesh/pii": "true" if descriptor.pii_columns else "false",
        **({"mesh/incremental": "true"} if descriptor.incremental else {}),
    }


def _column_tags(classification: str | None) -> dict[str, str]:
    if classification is None:
        return {"classification": "unclassified"}
    if classification.startswith("pii:"):
        return {"classification": "pii", "pii": classification[4:]}
    return {"classification": classification}


def column_schema(descriptor: ProductDescriptor) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=col.name,
                type=col.data_type or "unknown",
                description=col.description or None,
                tags=_column_tags(col.classification),
            )
            for col in descriptor.columns
        ]
    )


def table_uri(descriptor: ProductDescriptor, warehouse: str) -> str:
    """Where the Iceberg table lives (pyiceberg 0.12's SqlCatalog layout: <warehouse>/<ns>/<t>;
    tests/test_ui_browser.py checks it against the catalog)."""
    namespace, table = descriptor.address.iceberg_identifier
    return f"{warehouse.rstrip('/')}/{namespace}/{table}"


def product_metadata(
    descriptor: ProductDescriptor, catalog_name: str, warehouse: str
) -> dict[str, Any]:
    body = descriptor.body
    sla: dict[str, Any] = {}
    if body.sla.freshness:
        sla["freshness_max_age"] = body.sla.freshness.max_age
    if body.sla.expectations:
        sla["expectations"] = [e.label() for e in body.sla.expectations]
    if body.sla.volume:
        sla["volume"] = body.sla.volume.model_dump(exclude_none=True)
    metadata: dict[str, Any] = {
        "mesh/address": str(descriptor.address),
        "mesh/urn": descriptor.address.urn,
        "mesh/version": body.version,
        "mesh/status": body.status,
        "mesh/purpose": body.purpose,
        "mesh/owner": f"{body.owner.team} <{body.owner.contact}>",
        "mesh/grants": [
            {"to": g.to, "purpose": g.purpose, "expires": g.expires.isoformat()}
            | ({"columns": g.columns} if g.columns else {})
            | ({"rows": g.rows} if g.rows else {})
            for g in body.grants
        ]
        or "(owner only)",
        "mesh/sla": sla,
        "mesh/descriptor": descriptor.source_file,
        "dagster/table_name": descriptor.address.table_name(catalog_name),
        "dagster/column_schema": column_schema(descriptor),
    }
    if pii := descriptor.pii_columns:
        metadata["mesh/pii_columns"] = ", ".join(f"{c} ({k})" for c, k in sorted(pii.items()))
    if body.deprecated_on:
        metadata["mesh/deprecated_on"] = body.deprecated_on.isoformat()
    if warehouse:
        metadata["dagster/uri"] = table_uri(descriptor, warehouse)
    return metadata


def freshness_policy(descriptor: ProductDescriptor, schedule: Any = None) -> Any:
    """Dagster's freshness policy from the descriptor's max age. For a product of a scheduled
    domain whose max age fits in one schedule interval: a cron policy (by each scheduled time,
    a snapshot at most max age old); otherwise a time window of max age. None without a
    freshness SLA."""
    freshness = descriptor.body.sla.freshness
    if freshness is None:
        return None
    if schedule is not None:
        try:
            return dg.FreshnessPolicy.cron(
                deadline_cron=schedule.cron,
                lower_bound_delta=freshness.timedelta,
                timezone=schedule.timezone,
            )
        except CheckError:  # max age longer than the schedule's interval (26h on a daily run)
            pass
    return dg.FreshnessPolicy.time_window(fail_window=freshness.timedelta)
