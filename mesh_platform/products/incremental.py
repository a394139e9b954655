"""Which partitions of a partitioned product changed since its last publication.

The platform keeps, in the domain's own DuckDB, one fingerprint per partition of each product it
published (row count and the sum of row hashes), with the Iceberg snapshot they describe. A run
fingerprints the newly built model (one scan in DuckDB, cheap next to writing), and only the
partitions whose fingerprint differs, appeared or vanished are staged and replaced in Iceberg.
This holds for any way the model was built (dbt incremental, full refresh, late corrections).

Safety: when main is not the snapshot the fingerprints describe (another writer, a rollback,
expired state), or the table is new, everything is republished.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh_platform.addressing import quote_ident

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.table import Table

    from mesh_platform.storage.iceberg import Partitioning

STATE_SCHEMA = "mesh_state"
STATE_TABLE = f"{STATE_SCHEMA}.partition_fingerprints"

Fingerprints = dict[dt.date | None, tuple[int, int]]


@dataclass(frozen=True)
class PartitionPlan:
    partitioning: Partitioning
    fingerprints: Fingerprints  # of the model as built now
    reason: str  # why everything, or what changed

    @property
    def unchanged(self) -> bool:
        return self.partitioning.changed == ()


def fingerprint(
    conn: duckdb.DuckDBPyConnection, relation: str, partitioning: Partitioning
) -> Fingerprints:
    schema, table = relation.split(".")
    source = f"{quote_ident(schema)}.{quote_ident(table)}"
    rows = conn.execute(
        f"SELECT {partitioning.sql_expr} AS p, count(*), sum(hash(t)::HUGEINT)::VARCHAR "
        f"FROM {source} AS t GROUP BY 1"
    ).fetchall()
    return {p: (int(n), int(h)) for p, n, h in rows}


def _recorded(conn: duckdb.DuckDBPyConnection, product: str) -> tuple[Fingerprints, int | None]:
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (product VARCHAR, part DATE, rows BIGINT, "
        "fingerprint VARCHAR, snapshot_id BIGINT)"
    )
    rows = conn.execute(
        f"SELECT part, rows, fingerprint, snapshot_id FROM {STATE_TABLE} WHERE product = ?",
        [product],
    ).fetchall()
    snapshots = {r[3] for r in rows}
    snapshot = snapshots.pop() if len(snapshots) == 1 else None
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}, snapshot


def plan(
    conn: duckdb.DuckDBPyConnection,
    product: str,
    relation: str,
    partitioning: Partitioning,
    table: Table | None,
) -> PartitionPlan:
    """The partitions to replace: all (``changed=None``), some, or none (``changed=()``)."""
    from dataclasses import replace

    from mesh_platform.storage.iceberg import is_published

    current = fingerprint(conn, relation, partitioning)
    recorded, snapshot_id = _recorded(conn, product)
    main = table.current_snapshot() if table is not None else None
    if table is None or not is_published(main):
        return PartitionPlan(replace(partitioning, changed=None), current, "first publication")
    if snapshot_id is None or main.snapshot_id != snapshot_id:
        return PartitionPlan(
            replace(partitioning, changed=None),
            current,
            "main is not the snapshot last published from here: republishing every partition",
        )
    if not any(f.name.startswith(partitioning.column) for f in table.spec().fields):
        return PartitionPlan(replace(partitioning, changed=None), current, "table not partitioned")
    changed = sorted(
        (p for p in set(current) | set(recorded) if current.get(p) != recorded.get(p)),
        key=lambda d: (d is None, d),
    )
    if None in changed:  # rows without a partition value cannot be replaced selectively
        return PartitionPlan(replace(partitioning, changed=None), current, "null partition key")
    return PartitionPlan(
        replace(partitioning, changed=tuple(changed)),
        current,
        f"{len(changed)} of {len(current)} partition(s) changed",
    )


def record(
    conn: duckdb.DuckDBPyConnection, product: str, fingerprints: Fingerprints, snapshot_id: int
) -> None:
    """Remember what main now holds (after a successful publication)."""
    _recorded(conn, product)  # creates the table
    conn.execute("BEGIN")
    conn.execute(f"DELETE FROM {STATE_TABLE} WHERE product = ?", [product])
    conn.executemany(
        f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, ?)",
        [[product, p, n, str(h), snapshot_id] for p, (n, h) in fingerprints.items()],
    )
    conn.execute("COMMIT")
