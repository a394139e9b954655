"""What a step reports once its products are published or blocked (dbt and Python assets alike):
late acknowledgements, the step's cut marker, each product's materialisation metadata (snapshot,
inputs, SLA figures) and its gate checks as Dagster check results."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import dagster as dg

from mesh_platform.assets.acknowledge import acknowledge_committed
from mesh_platform.assets.checks import check_result
from mesh_platform.assets.specs import SNAPSHOT_METADATA
from mesh_platform.config import Mesh
from mesh_platform.products.cuts import record_cut
from mesh_platform.products.publish import Publication
from mesh_platform.sla.report import asset_figures

REPORTED = "mesh_reported"
"""``extra`` key of a run log record that `mesh build` prints itself, from the run's outcome (a
blocked product's message is the step's failure): its console leaves the record out unless
--verbose (mesh_platform.build)."""


def acknowledge(context: Any, mesh: Mesh, domain: str) -> None:
    """Report batches an earlier run committed and died before reporting
    (assets.acknowledge), before this run publishes anything of its own."""

    try:
        acknowledge_committed(context.instance, mesh, domain, context.log)
    except Exception as exc:  # the run itself will meet a broken catalog and say so
        context.log.warning(f"could not look for unreported batches of {domain}: {exc}")


def record_step_cut(
    context: Any, mesh: Mesh, domain: str, step: str, publications: Iterable[Publication]
) -> str | None:
    """Write this step's cut marker (products.cuts): what it left on main, what it did not
    publish. Returns why it could not be written (the step then fails, after reporting what
    it published): consumers keep reading the previous cut, consistent but older."""

    publications = list(publications)
    published = {str(p.descriptor.address): p.snapshot_id for p in publications if p.published}
    blocked = {
        str(p.descriptor.address): (p.error or "not published")[:300]
        for p in publications
        if not p.published
    }
    try:
        record_cut(mesh, domain, context.run_id, step, published, blocked)
    except Exception as exc:
        return (
            f"the run's cut marker could not be written ({exc}); consumers keep reading the "
            "previous complete cut: run the domain again"
        )
    return None


def sla_figures(context: Any, mesh: Mesh, addresses: list[str]) -> dict[str, dict]:
    """The products' current SLA figures (30 days), for their materialisations."""
    if not addresses:
        return {}
    try:
        return asset_figures(mesh, addresses)
    except Exception as exc:  # figures are informative: never fail a run for them
        context.log.warning(f"SLA figures not computed: {exc}")
        return {}


def materialization_metadata(publication: Publication, inputs: Mapping[str, int]) -> dict[str, Any]:
    stage = publication.stage
    assert publication.snapshot_id is not None
    metadata: dict[str, Any] = {
        "mesh/address": str(publication.descriptor.address),
        "mesh/version": publication.descriptor.body.version,
        SNAPSHOT_METADATA: str(publication.snapshot_id),
        "mesh/publish_seconds": round(publication.seconds, 3),
        **({"mesh/inputs": dict(inputs)} if inputs else {}),
        **({"mesh/partitions": publication.partitions} if publication.partitions else {}),
    }
    if stage is not None:  # None: a partitioned product with no changed partition
        metadata.update(
            {
                "dagster/row_count": stage.total_rows,
                "mesh/rows_written": stage.row_count,
                "mesh/iceberg_metadata": stage.metadata_location,
                "mesh/batch_id": stage.batch_id,
            }
        )
    return metadata


def check_results(
    context: dg.AssetExecutionContext, publication: Publication
) -> Iterator[dg.AssetCheckResult]:
    """One result per gate check evaluated, only for checks selected in this run."""
    selected = context.selected_asset_check_keys
    for name, outcome in publication.outcomes.items():
        result = check_result(publication.descriptor, name, outcome)
        if dg.AssetCheckKey(result.asset_key, name) in selected:
            yield result
