"""How long each product takes to build, from Dagster's run history: the cost side of
``mesh usage`` (:mod:`mesh_platform.products.usage` has the reads and the storage).

A product is built by a step of its domain's run: the domain's dbt step builds and publishes
all its dbt products at once, a Python product has a step of its own. For each of a product's
recent materialisations (the newest :data:`RECENT`), two durations:

- the **build**: the step that materialised it, from its start to its end (Dagster's step
  stats). For a dbt product this is shared with the domain's other dbt products: it is what
  refreshing the product costs, not its part alone;
- the **publication**: its own write-audit-publish (schema check, write, gate, commit), which
  the step records in the materialisation (``mesh/publish_seconds``).

A materialisation without a run (a late acknowledgement of a committed batch) has neither and
is only counted. Durations come from the instance's own storage (sqlite or PostgreSQL), one
query per product and one per run, whatever the number of products a run built.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.keys import product_key
from mesh_platform.config import Mesh
from mesh_platform.instance import get_instance

RECENT = 20  # materialisations looked at per product
PUBLISH_SECONDS = "mesh/publish_seconds"


@dataclass(frozen=True)
class BuildHistory:
    """A product's recent builds (seconds; None when none was measured)."""

    materializations: int  # among the newest RECENT
    last_built: dt.datetime | None
    last_seconds: float | None  # the step of the newest materialisation with a run
    median_seconds: float | None
    last_publish_seconds: float | None
    median_publish_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "materializations": self.materializations,
            "last_built": self.last_built.isoformat(timespec="seconds")
            if self.last_built
            else None,
            "build_seconds_last": self.last_seconds,
            "build_seconds_median": self.median_seconds,
            "publish_seconds_last": self.last_publish_seconds,
            "publish_seconds_median": self.median_publish_seconds,
            "recent": RECENT,
        }


NEVER_BUILT = BuildHistory(0, None, None, None, None, None)


def build_history(mesh: Mesh, addresses: Iterable[ProductAddress]) -> dict[str, BuildHistory]:
    """address -> its recent builds, for every address (NEVER_BUILT when Dagster has no
    materialisation of it, or the mesh has no instance yet: nothing was ever built)."""
    addresses = list(addresses)
    if not (mesh.dagster_home / "dagster.yaml").is_file():
        return {str(a): NEVER_BUILT for a in addresses}
    instance = get_instance(mesh)
    records = {
        str(a): instance.fetch_materializations(product_key(a), limit=RECENT).records
        for a in addresses
    }
    steps: dict[tuple[str, str], float] = {}
    for run_id in sorted({r.run_id for rs in records.values() for r in rs if r.run_id}):
        for stat in instance.get_run_step_stats(run_id):
            if stat.start_time is not None and stat.end_time is not None:
                steps[(run_id, stat.step_key)] = round(stat.end_time - stat.start_time, 3)
    return {address: _history(rs, steps) for address, rs in records.items()}


def _history(records: list[dg.EventLogRecord], steps: dict[tuple[str, str], float]) -> BuildHistory:
    """``records`` newest first."""
    if not records:
        return NEVER_BUILT
    built = [
        seconds
        for r in records
        if (seconds := steps.get((r.run_id, r.event_log_entry.step_key or ""))) is not None
    ]
    published = [s for r in records if (s := _publish_seconds(r)) is not None]
    return BuildHistory(
        len(records),
        dt.datetime.fromtimestamp(records[0].timestamp, dt.UTC),
        built[0] if built else None,
        round(statistics.median(built), 3) if built else None,
        published[0] if published else None,
        round(statistics.median(published), 3) if published else None,
    )


def _publish_seconds(record: dg.EventLogRecord) -> float | None:
    materialization = record.asset_materialization
    entry = materialization.metadata.get(PUBLISH_SECONDS) if materialization else None
    value = getattr(entry, "value", None)
    return float(value) if isinstance(value, int | float) else None
