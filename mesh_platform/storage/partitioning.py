"""Partitioned products: a date column and its granularity (day, month, year) and the Iceberg
partition field that goes with it (storage/datafiles.py writes the files, one folder per
partition)."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh_platform.addressing import ProductAddress, quote_ident

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table
    from pyiceberg.transforms import Transform


@dataclass(frozen=True)
class Partitioning:
    """A product partitioned by a date column, and which partitions this batch replaces."""

    column: str
    granularity: str  # day | month | year
    changed: tuple[dt.date, ...] | None = None  # None: every partition (a full rewrite)

    @property
    def sql_expr(self) -> str:
        """DuckDB expression of a row's partition (the first day of its day/month/year)."""
        return f"date_trunc('{self.granularity}', {quote_ident(self.column)})::DATE"

    def end(self, start: dt.date) -> dt.date:
        if self.granularity == "day":
            return start + dt.timedelta(days=1)
        if self.granularity == "month":
            return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
        return start.replace(year=start.year + 1)

    def replaced_rows(self) -> BooleanExpression:
        """Iceberg filter of the rows this batch replaces (whole partitions)."""
        # heavy: pyiceberg (~2 s), only when a partitioned product is published
        from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, LessThan, Or

        if self.changed is None:
            return AlwaysTrue()
        ranges = [
            And(
                GreaterThanOrEqual(self.column, start.isoformat()),
                LessThan(self.column, self.end(start).isoformat()),
            )
            for start in self.changed
        ]
        return ranges[0] if len(ranges) == 1 else Or(*ranges)


def partition_transform(granularity: str) -> Transform:
    """The Iceberg transform of a granularity (day, month, year)."""
    # heavy: pyiceberg (~2 s), only when a partitioned product is published
    from pyiceberg.transforms import DayTransform, MonthTransform, YearTransform

    return {"day": DayTransform, "month": MonthTransform, "year": YearTransform}[granularity]()


def ensure_partition_field(
    catalog: SqlCatalog, table: Table, address: ProductAddress, partitioning: Partitioning
) -> Table:
    """Partition the table by the descriptor's column and granularity (spec evolution: files
    written before keep their old spec until rewritten)."""
    # heavy: pyiceberg (~2 s), only when a partitioned product is published
    from pyiceberg.exceptions import CommitFailedException

    transform = partition_transform(partitioning.granularity)
    source_id = table.schema().find_field(partitioning.column).field_id
    if any(f.source_id == source_id and f.transform == transform for f in table.spec().fields):
        return table
    with contextlib.suppress(CommitFailedException), table.update_spec() as update:
        update.add_field(
            partitioning.column, transform, f"{partitioning.column}_{partitioning.granularity}"
        )
    return catalog.load_table(address.iceberg_identifier)
