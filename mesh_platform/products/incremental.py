"""Which partitions of a partitioned product changed since its last publication, and when a
domain's incremental models must be rebuilt from their sources.

The platform keeps, in the domain's own DuckDB, one fingerprint per partition of each product it
published (row count and the sum of row hashes), with the Iceberg snapshot they describe. A run
fingerprints the newly built model (one scan in DuckDB, cheap next to writing), and only the
partitions whose fingerprint differs, appeared or vanished are staged and replaced in Iceberg.
This holds for any way the model was built (dbt incremental, full refresh, late corrections).

State derived from the table, never trusted over it: the fingerprints are used only when main is
the snapshot they describe *and* that snapshot still holds what they say, checked from its
manifests before every incremental run (no data is read): each data file exists with the size
its manifest records, and the row count of each partition (the files' record counts) equals the
recorded one. Otherwise (another writer, a rollback, a lost or truncated file, expired state, a
new table, a full refresh) every partition is republished, with the reason in the run's log.

Deletions in the source: a dbt incremental model only adds and replaces recent rows, so rows
removed from its source (a corrected raw file, another scale factor) would stay in it forever.
The domain's DuckDB therefore also records the raw landing (its ``_landing.json``: scale factor,
per-file row counts and checksums) its incremental models were last built from; when the landing
differs, the run is a dbt ``--full-refresh`` (:func:`landing_change`), and the fingerprints then
see the vanished rows and partitions. (That the files match their landing record is the
landing's own check, sources.tpch.)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import quote_ident
from mesh_platform.storage import warehouse
from mesh_platform.storage.metadata import COMPACTION_PROPERTY, is_published
from mesh_platform.storage.partitioning import partition_transform

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

    from mesh_platform.storage.partitioning import Partitioning

STATE_SCHEMA = "mesh_state"
STATE_TABLE = f"{STATE_SCHEMA}.partition_fingerprints"
LANDING_TABLE = f"{STATE_SCHEMA}.landing_built"
LANDING_FILE = "_landing.json"  # as sources.tpch writes it

Fingerprints = dict[dt.date | None, tuple[int, int]]
EPOCH = dt.date(1970, 1, 1)


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


def _ensure_state(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (product VARCHAR, part DATE, rows BIGINT, "
        "fingerprint VARCHAR, snapshot_id BIGINT)"
    )
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {LANDING_TABLE} (landing VARCHAR, recorded_at TIMESTAMP)"
    )


def _recorded(conn: duckdb.DuckDBPyConnection, product: str) -> tuple[Fingerprints, int | None]:
    _ensure_state(conn)
    rows = conn.execute(
        f"SELECT part, rows, fingerprint, snapshot_id FROM {STATE_TABLE} WHERE product = ?",
        [product],
    ).fetchall()
    snapshots = {r[3] for r in rows}
    snapshot = snapshots.pop() if len(snapshots) == 1 else None
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}, snapshot


def _label(partition: dt.date | None, granularity: str) -> str:
    if partition is None:
        return "(null)"
    return partition.strftime({"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}[granularity])


def _partition_start(value: Any, granularity: str) -> dt.date | None:
    """The first day of a partition from its Iceberg transform value (days, months or years
    since 1970; a day may come back as a date already)."""
    if value is None or isinstance(value, dt.date):
        return value
    if granularity == "day":
        return EPOCH + dt.timedelta(days=int(value))
    if granularity == "month":
        return dt.date(1970 + int(value) // 12, int(value) % 12 + 1, 1)
    return dt.date(1970 + int(value), 1, 1)


def _file_size(table: Table, location: str) -> int | None:
    """Bytes of a data file (local: stat; object store: the table's FileIO); None if absent."""
    try:
        if not warehouse.is_remote(location):
            return warehouse.local_path(location).stat().st_size
        return len(table.io.new_input(location))
    except (FileNotFoundError, NotADirectoryError):
        return None


def verify(
    table: Table, snapshot: Snapshot, recorded: Fingerprints, partitioning: Partitioning
) -> str | None:
    """Why ``recorded`` does not describe ``snapshot`` (None: it does). From the manifests
    only: every live data file exists with its recorded size, the snapshot has no delete files,
    every file is partitioned by the product's column and granularity, and each partition's
    row count (the sum of its files' record counts) is the recorded one."""
    from pyiceberg.manifest import (
        ManifestContent,  # heavy: pyiceberg (~2 s), only when Iceberg is read or written
    )

    column_id = table.schema().find_field(partitioning.column).field_id
    transform = partition_transform(partitioning.granularity)
    specs = table.specs()
    snapshot_id = snapshot.snapshot_id
    counts: dict[dt.date | None, int] = {}
    damaged: list[str] = []  # missing or resized files, with their partition
    try:
        for manifest in snapshot.manifests(table.io):
            if manifest.content != ManifestContent.DATA:
                return f"snapshot {snapshot_id} has delete files"
            spec = specs.get(manifest.partition_spec_id)
            fields = [] if spec is None else spec.fields
            index = next(
                (
                    i
                    for i, f in enumerate(fields)
                    if (f.source_id, f.transform) == (column_id, transform)
                ),
                None,
            )
            if index is None:
                return (
                    f"snapshot {snapshot_id} has data files not partitioned by "
                    f"{partitioning.granularity} of {partitioning.column}"
                )
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                data = entry.data_file
                start = _partition_start(data.partition[index], partitioning.granularity)
                counts[start] = counts.get(start, 0) + data.record_count
                label = _label(start, partitioning.granularity)
                size = _file_size(table, data.file_path)
                if size is None:
                    damaged.append(f"data file {data.file_path} (partition {label}) is missing")
                elif size != data.file_size_in_bytes:
                    damaged.append(
                        f"data file {data.file_path} (partition {label}) changed size: {size} "
                        f"bytes, {data.file_size_in_bytes} in its manifest"
                    )
    except OSError as exc:  # a manifest list or manifest unreadable: let the rewrite say more
        return f"the manifests of snapshot {snapshot_id} cannot be read ({exc})"
    if damaged:
        more = f" (and {len(damaged) - 1} other file(s))" if len(damaged) > 1 else ""
        return f"snapshot {snapshot_id}: {damaged[0]}{more}"
    expected = {p: n for p, (n, _) in recorded.items()}
    for part in sorted(set(counts) | set(expected), key=lambda d: (d is None, d)):
        if counts.get(part, 0) != expected.get(part, 0):
            return (
                f"partition {_label(part, partitioning.granularity)} holds "
                f"{counts.get(part, 0)} row(s) in snapshot {snapshot_id}, "
                f"{expected.get(part, 0)} recorded"
            )
    return None


def plan(
    conn: duckdb.DuckDBPyConnection,
    product: str,
    relation: str,
    partitioning: Partitioning,
    table: Table | None,
    *,
    full_refresh: bool = False,
) -> PartitionPlan:
    """The partitions to replace: all (``changed=None``), some, or none (``changed=()``)."""

    current = fingerprint(conn, relation, partitioning)
    everything = replace(partitioning, changed=None)

    def republish(why: str) -> PartitionPlan:
        return PartitionPlan(everything, current, f"{why}: republishing every partition")

    if full_refresh:
        return republish("full refresh")
    recorded, snapshot_id = _recorded(conn, product)
    main = table.current_snapshot() if table is not None else None
    if table is None or main is None or not is_published(main):
        return PartitionPlan(everything, current, "first publication")
    if snapshot_id is None or _published_from(table, main) != snapshot_id:
        return republish("main is not the snapshot last published from here")
    if not any(f.name.startswith(partitioning.column) for f in table.spec().fields):
        return PartitionPlan(everything, current, "table not partitioned")
    if (mismatch := verify(table, main, recorded, partitioning)) is not None:
        return republish(f"the table does not match the recorded state: {mismatch}")
    changed = sorted(
        (p for p in set(current) | set(recorded) if current.get(p) != recorded.get(p)),
        key=lambda d: (d is None, d),
    )
    if None in changed:  # rows without a partition value cannot be replaced selectively
        return PartitionPlan(everything, current, "null partition key")
    return PartitionPlan(
        replace(partitioning, changed=tuple(changed)),
        current,
        f"{len(changed)} of {len(current)} partition(s) changed",
    )


def _published_from(table: Table, main: Any) -> int:
    """The snapshot whose content main holds: main's head, or, when ``mesh maintain`` compacted
    it since (same rows, new files: storage.compaction), the snapshot the compaction rewrote.
    (The manifests are still verified against the recorded state.)"""
    snapshot = main
    while snapshot is not None and (snapshot.summary or {}).get(COMPACTION_PROPERTY):
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id or 0)
    return snapshot.snapshot_id if snapshot is not None else main.snapshot_id


def record(
    conn: duckdb.DuckDBPyConnection, product: str, fingerprints: Fingerprints, snapshot_id: int
) -> None:
    """Remember what main now holds (after a successful publication)."""
    _ensure_state(conn)
    conn.execute("BEGIN")
    conn.execute(f"DELETE FROM {STATE_TABLE} WHERE product = ?", [product])
    conn.executemany(
        f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, ?)",
        [[product, p, n, str(h), snapshot_id] for p, (n, h) in fingerprints.items()],
    )
    conn.execute("COMMIT")


# --- the raw landing the incremental models were built from ---------------------------------


def landing_state(raw_dir: Path) -> dict[str, Any] | None:
    """What a raw landing holds, as its ``_landing.json`` records it (the source, its scale
    factor, each file's row count and, where the landing records them, sizes and checksums).
    None when nothing is landed."""
    try:
        state = json.loads((raw_dir / LANDING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(value, dict) or not value:
        return {path: value}
    found: dict[str, Any] = {}
    for key, item in value.items():
        found.update(_leaves(item, f"{path}.{key}" if path else str(key)))
    return found


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 24 else text[:20] + "..."


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two landings, settings (scale factor...) before per-table figures
    (row counts, checksums...)."""
    old, new = _leaves(before), _leaves(now)
    changed = [k for k in set(old) | set(new) if old.get(k) != new.get(k)]
    return [
        f"{key}: {_short(old.get(key))} -> {_short(new.get(key))}"
        for key in sorted(changed, key=lambda k: (k.count("."), k))
    ]


def landing_change(conn: duckdb.DuckDBPyConnection, state: dict[str, Any]) -> str | None:
    """Why the domain's incremental models must be rebuilt from their sources (a dbt full
    refresh): the raw landing ``state`` differs from the one they were last built from, or
    none was recorded. None: the same landing."""
    _ensure_state(conn)
    row = conn.execute(f"SELECT landing FROM {LANDING_TABLE}").fetchone()
    if row is None:
        return "no record of the raw landing the incremental models were built from"
    try:
        before = json.loads(row[0])
    except ValueError:
        return "the record of the raw landing is unreadable"
    if before == state:
        return None
    found = _differences(before, state) or ["content"]
    shown = "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")
    return f"the raw landing changed since the incremental models were built ({shown})"


def record_landing(conn: duckdb.DuckDBPyConnection, state: dict[str, Any]) -> None:
    """Remember the landing the incremental models were just built from (after dbt built them
    all)."""
    _ensure_state(conn)
    conn.execute("BEGIN")
    conn.execute(f"DELETE FROM {LANDING_TABLE}")
    conn.execute(
        f"INSERT INTO {LANDING_TABLE} VALUES (?, now()::TIMESTAMP)",
        [json.dumps(state, sort_keys=True)],
    )
    conn.execute("COMMIT")
