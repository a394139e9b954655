"""Policies over how a product's table is laid out in files: a partition granularity that writes
tiny files.

A partitioned product writes at least one file per partition. When its partitions are small (a
month of orders is a few hundred kilobytes at the sample's scale), the table becomes many tiny
files: every reader opens each one, and object stores charge per request. Iceberg's own
guidance is files of hundreds of megabytes; below ``min_file_mb`` (8 MB by default) per file,
the partitioning costs more than it prunes. The measure is the published table's own (its main
snapshot's summary: total bytes over data files, about one per partition), so the warning
comes once a product was built, from ``mesh check``, with the granularity that would do.
"""

from __future__ import annotations

from collections.abc import Iterator

from mesh_platform.errors import MeshError
from mesh_platform.governance.policy import Policy, PolicyContext, Violation, register_policy
from mesh_platform.products.descriptor_lines import descriptor_source
from mesh_platform.storage.metadata import Catalog, is_published

MB = 1024 * 1024
# How many partitions of a granularity one of the next coarser holds, about.
_COARSER = {"day": ("month", 30), "month": ("year", 12)}


@register_policy
class PartitionFileSize(Policy):
    id = "partition_file_size"
    description = (
        "A partitioned product's files are not tiny: its published table's data files average "
        "at least min_file_mb (default 8) MB."
    )
    remedy = "partition by a coarser granularity, or do not partition the product"
    default_severity = "warn"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        partitioned = [d for d in ctx.descriptors if d.body.partition_by is not None]
        if ctx.mesh is None or not partitioned:
            return
        floor = float(ctx.params.get("min_file_mb", 8)) * MB
        try:
            catalog = Catalog(ctx.mesh)
        except MeshError:
            return  # the catalog's servers do not answer: the build says so
        try:
            for d in partitioned:
                try:
                    state = catalog.table_state(d.address)
                except MeshError:
                    continue  # not built yet (or unreadable: the read path says why)
                summary = state.current.summary if is_published(state.current) else {}
                files = int(summary.get("total-data-files", 0))
                size = int(summary.get("total-files-size", 0))
                if files < 2 or size / files >= floor:
                    continue
                granularity = d.body.partition_by.granularity
                yield self.violation(
                    d,
                    f"partitioned by {granularity} of {d.body.partition_by.column}, its "
                    f"{files} data files average {_size(size / files)} ({_size(size)} in "
                    f"all), under {_size(floor)}: readers open many tiny files",
                    fix=_advice(granularity, files, size, floor),
                    line=descriptor_source(ctx.mesh.root, d).line(("mesh", "partition_by")),
                )
        finally:
            catalog.close()


def _advice(granularity: str, files: int, size: int, floor: float) -> str:
    """The coarser granularity whose partitions would reach the floor, or no partitioning."""
    partitions = float(files)
    while granularity in _COARSER:
        granularity, ratio = _COARSER[granularity]
        partitions = max(1.0, partitions / ratio)
        if size / partitions >= floor:
            return (
                f"write `granularity: {granularity}` in its `partition_by` (about "
                f"{_size(size / partitions)} a partition), then `mesh build --full-refresh`"
            )
    return "remove its `partition_by` (the whole table fits in a few files), then `mesh build`"


def _size(n: float) -> str:
    return f"{n / MB:.1f} MB" if n >= MB / 10 else f"{n / 1024:.0f} KB"
