"""Compaction: a table of many small files (or of files in an old format) rewritten into
target-size files through write-audit-publish, so readers see one consistent snapshot and no row
is lost or duplicated.

Why through write-audit-publish: a rewrite is a publication whose content must not change. Under
the product's publication lock (:func:`~mesh_platform.storage.locks.product_lock`, so no
publisher moves main meanwhile), main's current content is staged on an audit branch by
:func:`~mesh_platform.storage.wap.stage_to_audit`, whose files are written by the very function
that writes every batch (``storage.datafiles.write_data_files``): the rewrite gets whatever the
writer does (field ids, zstd, row groups, file sizes, one file set per partition of the current
spec). The staged
snapshot is then checked against main (same row count, same checksum of every row: DuckDB's
``sum(hash(row))``, order-free and sensitive to a duplicated or lost row) and published by
fast-forward. A reader that planned main before keeps reading its snapshot (its files stay until
snapshot expiry); one that plans after reads the new files: old or new, never a mix.

What needs a rewrite is judged from the manifests (file count and size per partition) and the
Parquet footers (field ids, codec), read cheaply with pyarrow, never from the data:

- a partition holds more files than its bytes need at :data:`TARGET_FILE_BYTES` each;
- a file is larger than :data:`MAX_FILE_BYTES`, or was written under an older partition spec;
- a file lacks the Iceberg field ids of the table's schema, nested fields included (readers
  without name mapping cannot read it), or is not zstd (``datafiles.needs_rewrite``).

A staged rewrite that would not improve the table (a format problem the files did not have, or
no fewer problems nor files) is discarded before publication and reported: maintenance never
churns.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from mesh_platform.addressing import ProductAddress, quote_literal
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import ConcurrentPublishError, MeshError
from mesh_platform.storage import warehouse
from mesh_platform.storage.datafiles import TARGET_FILE_SIZE_BYTES, needs_rewrite
from mesh_platform.storage.health import write_version_hint
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.metadata import (
    BATCH_PROPERTY,
    COMPACTION_PROPERTY,
    INITIAL_PROPERTY,
    is_published,
)
from mesh_platform.storage.partitioning import Partitioning
from mesh_platform.storage.quarantine import quarantine_batch
from mesh_platform.storage.wap import AuditStage, publish_audited, stage_to_audit

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

MiB = 1024 * 1024
TARGET_FILE_BYTES = TARGET_FILE_SIZE_BYTES  # what the writer splits a large output into
MAX_FILE_BYTES = 512 * MiB
SMALL_FILE_BYTES = 8 * MiB
# Summary entries of a publication that describe its batch, not the product's content.
_BATCH_ONLY = {BATCH_PROPERTY, INITIAL_PROPERTY, "mesh.rows", "mesh.partitions_replaced"}
_VIEW = "main.mesh_compaction_source"


@dataclass(frozen=True)
class FileFacts:
    """One data file of main's snapshot, from its manifest entry and its Parquet footer."""

    path: str
    size: int
    rows: int
    spec_id: int
    partition: tuple
    codecs: frozenset[str]  # of its column chunks (empty: no row group)
    field_ids: bool  # every field, nested ones too, carries the table schema's field id


@dataclass
class CompactionReport:
    """What compaction did to one product (a dry run: what it would do)."""

    address: ProductAddress
    reasons: list[str] = field(default_factory=list)  # empty: nothing to rewrite
    files_before: int = 0
    bytes_before: int = 0
    files_after: int | None = None  # a dry run: the estimate
    bytes_after: int | None = None
    snapshot_id: int | None = None  # main's new head (published)
    dry_run: bool = False
    skipped: str | None = None  # why nothing was rewritten (run again, or nothing to gain)
    seconds: float = 0.0


def file_facts(table: Table, snapshot: Snapshot | None = None) -> list[FileFacts]:
    """The data files of ``snapshot`` (main's head by default) with their footer facts."""
    snapshot_id = snapshot.snapshot_id if snapshot is not None else None
    facts: list[FileFacts] = []
    for task in table.scan(snapshot_id=snapshot_id).plan_files():
        data = task.file
        codecs, ids = _footer(data.file_path, table)
        facts.append(
            FileFacts(
                data.file_path, data.file_size_in_bytes, data.record_count, data.spec_id,
                tuple(data.partition), codecs, ids,
            )
        )  # fmt: skip
    return facts


def _footer(location: str, table: Table) -> tuple[frozenset[str], bool]:
    """A Parquet file's codecs and whether it carries the field ids of the table's schema."""
    # heavy: pyarrow.parquet (~0.3 s), only when files are judged
    import pyarrow.parquet as pq

    if warehouse.is_remote(location):
        filesystem = warehouse.arrow_filesystem(table.io.properties)
        footer = pq.read_metadata(location.split("://", 1)[1], filesystem=filesystem)
    else:
        footer = pq.read_metadata(warehouse.local_path(location))
    codecs = {
        footer.row_group(g).column(c).compression
        for g in range(footer.num_row_groups)
        for c in range(footer.num_columns)
    }
    ids = not any("field ids" in r for r in needs_rewrite(footer, table.schema()))
    return frozenset(codecs), ids


def rewrite_reasons(facts: list[FileFacts], current_spec_id: int) -> list[str]:
    """Why these files need a rewrite (empty: they do not); see the module's doc."""
    return layout_reasons(facts, current_spec_id) + format_reasons(facts)


def layout_reasons(facts: list[FileFacts], current_spec_id: int) -> list[str]:
    """Too many files for their bytes, files too large, files of an older partition spec."""
    groups: dict[tuple, list[FileFacts]] = defaultdict(list)
    for f in facts:
        groups[(f.spec_id, f.partition)].append(f)
    reasons = []
    extra = sum(len(g) - wanted_files(g) for g in groups.values() if len(g) > wanted_files(g))
    if extra:
        small = sum(1 for f in facts if f.size < SMALL_FILE_BYTES)
        reasons.append(f"{len(facts)} files where {len(facts) - extra} would do ({small} small)")
    if large := sum(1 for f in facts if f.size > MAX_FILE_BYTES):
        reasons.append(f"{large} file(s) over {MAX_FILE_BYTES // MiB} MB")
    if old := sum(1 for f in facts if f.spec_id != current_spec_id):
        reasons.append(f"{old} file(s) of an older partition spec")
    return reasons


def format_reasons(facts: list[FileFacts]) -> list[str]:
    """Files without field ids, files not zstd."""
    reasons = []
    if no_ids := sum(1 for f in facts if not f.field_ids):
        reasons.append(f"{no_ids} file(s) without Iceberg field ids")
    if not_zstd := sum(1 for f in facts if f.codecs and f.codecs != {"ZSTD"}):
        reasons.append(f"{not_zstd} file(s) not zstd")
    return reasons


def wanted_files(files: list[FileFacts]) -> int:
    """The files one partition's bytes need at TARGET_FILE_BYTES each."""
    return max(1, math.ceil(sum(f.size for f in files) / TARGET_FILE_BYTES))


def table_partitioning(table: Table) -> Partitioning | None:
    """The Partitioning the writer uses for the table's current spec (None: unpartitioned);
    MeshError for a spec the mesh does not write (not one day, month or year field)."""
    # heavy: pyiceberg (~2 s), only when a table is compacted
    from pyiceberg.transforms import DayTransform, MonthTransform, YearTransform

    fields = table.spec().fields
    if not fields:
        return None
    kinds = {DayTransform: "day", MonthTransform: "month", YearTransform: "year"}
    granularity = kinds.get(type(fields[0].transform)) if len(fields) == 1 else None
    if granularity is None:
        raise MeshError(
            f"table {table.name()}: its partition spec {table.spec()} is not one the mesh "
            "writes (one day, month or year field); it is not compacted",
            fix="compact it with the engine that wrote it",
        )
    return Partitioning(table.schema().find_column_name(fields[0].source_id), granularity)


def compact(
    catalog: SqlCatalog,
    address: ProductAddress,
    *,
    dry_run: bool = False,
    lock_wait: timedelta = timedelta(seconds=60),
) -> CompactionReport:
    """Rewrite ``address``'s table if it needs it (see the module's doc), under its publication
    lock: staged, checked (rows and checksum equal to main's), published by fast-forward. A
    dry run reports the reasons and the estimated files after. A lock busy for ``lock_wait``
    leaves the product alone (``skipped``). A check that fails discards the rewrite and raises
    MeshError: main is untouched."""
    # heavy: pyiceberg (~2 s), only when a table is compacted
    from pyiceberg.exceptions import NoSuchTableError

    start = time.perf_counter()
    report = CompactionReport(address, dry_run=dry_run)
    try:
        with product_lock(catalog, address, timeout=lock_wait.total_seconds()):
            try:
                _compact_locked(catalog, address, report)
            finally:  # a discarded rewrite commits too (its branch dropped)
                if not dry_run:
                    write_version_hint(catalog.load_table(address.iceberg_identifier))
    except ConcurrentPublishError:
        report.skipped = "publication in progress (its lock stayed busy); run again"
    except NoSuchTableError:
        report.skipped = "no longer in the catalog (dropped meanwhile)"
    except MeshError:
        raise
    except Exception as exc:  # unreadable metadata or files, a refused write...
        raise MeshError(
            f"product {address}: its compaction failed ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); main is untouched",
            fix=f"check the table (`mesh repair --product {address} --dry-run`), then run "
            "`mesh maintain` again",
        ) from exc
    report.seconds = time.perf_counter() - start
    return report


def _compact_locked(catalog: SqlCatalog, address: ProductAddress, report: CompactionReport) -> None:
    table = catalog.load_table(address.iceberg_identifier)
    main = table.current_snapshot()
    if not is_published(main):
        return
    facts = file_facts(table)
    report.files_before, report.bytes_before = len(facts), sum(f.size for f in facts)
    report.reasons = rewrite_reasons(facts, table.spec().spec_id)
    if not report.reasons:
        return
    try:
        partitioning = table_partitioning(table)
    except MeshError as exc:  # a table another engine partitions its own way
        report.skipped = exc.what
        return
    if report.dry_run:
        groups: dict[tuple, list[FileFacts]] = defaultdict(list)
        for f in facts:
            groups[f.partition if partitioning else ()].append(f)
        report.files_after = sum(wanted_files(g) for g in groups.values())
        return
    conn = connect(extensions=("iceberg",))
    try:
        warehouse.configure_duckdb(conn, table.io.properties)
        stage = _stage_rewrite(catalog, address, conn, table, main, partitioning)
        try:
            staged = catalog.load_table(address.iceberg_identifier)
            after = file_facts(staged, staged.snapshot_by_id(stage.snapshot_id))
            unequal = _check(conn, table.metadata_location, main, stage)
            no_gain = _no_gain(facts, after, table.spec().spec_id)
            if not unequal and not no_gain:
                report.snapshot_id = publish_audited(catalog, stage)
        except BaseException:
            quarantine_batch(catalog, address, stage.branch, stage.data_files)
            raise
    finally:
        conn.close()
    if unequal or no_gain:  # discarded: the branch, its snapshots and files go at once
        quarantine_batch(catalog, address, stage.branch, stage.data_files)
        if unequal:
            raise MeshError(
                f"product {address}: its rewrite was discarded, main is untouched: {unequal}",
                fix="report it (a bug of the writer); the table stays as it was",
            )
        report.skipped = no_gain
        return
    report.files_after, report.bytes_after = len(after), sum(f.size for f in after)


def _stage_rewrite(
    catalog: SqlCatalog,
    address: ProductAddress,
    conn: duckdb.DuckDBPyConnection,
    table: Table,
    main: Snapshot,
    partitioning: Partitioning | None,
) -> AuditStage:
    """Stage main's content, read back by DuckDB's iceberg_scan, as a new batch (wap)."""
    conn.execute(
        f"CREATE OR REPLACE VIEW {_VIEW} AS SELECT * FROM iceberg_scan("
        f"{quote_literal(warehouse.engine_path(table.metadata_location))}, "
        f"snapshot_from_id = {int(main.snapshot_id)})"
    )
    batch = f"compact-{uuid.uuid4().hex[:12]}"
    summary = main.summary.additional_properties if main.summary is not None else {}
    carried = {k: v for k, v in summary.items() if k.startswith("mesh.") and k not in _BATCH_ONLY}
    return stage_to_audit(
        catalog, address, conn, _VIEW, batch_id=batch,
        properties={**carried, COMPACTION_PROPERTY: batch}, partitioning=partitioning,
    )  # fmt: skip


def checksum(conn: duckdb.DuckDBPyConnection, metadata_location: str, snapshot_id: int) -> tuple:
    """(rows, sum of the rows' hashes) of a snapshot, read by DuckDB's iceberg_scan."""
    location = quote_literal(warehouse.engine_path(metadata_location))
    return conn.execute(
        f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM iceberg_scan({location}, "
        f"snapshot_from_id = {int(snapshot_id)}) t"
    ).fetchone()


def _check(
    conn: duckdb.DuckDBPyConnection, metadata_location: str, main: Snapshot, stage: AuditStage
) -> str:
    """Why the staged rewrite is not main's content ("" if it is)."""
    before = checksum(conn, metadata_location, main.snapshot_id)
    after = checksum(conn, stage.metadata_location, stage.snapshot_id)
    if before != after:
        return (
            f"main has {before[0]} rows (checksum {before[1]}), the rewrite {after[0]} ({after[1]})"
        )
    return ""


def _no_gain(before: list[FileFacts], after: list[FileFacts], spec_id: int) -> str:
    """Why publishing the rewrite would not improve the table ("" if it would): it must not
    bring a format problem the files did not have (pyiceberg's zstd files with field ids
    rewritten by a writer without them), and must leave fewer problems or fewer files."""
    worse = _format_problems(after) - _format_problems(before)
    fewer = len(rewrite_reasons(after, spec_id)) < len(rewrite_reasons(before, spec_id))
    if not worse and (fewer or len(after) < len(before)):
        return ""
    left = "; ".join(rewrite_reasons(after, spec_id)) or "the same files"
    return f"rewrite discarded: the writer's files would have {left} (nothing to gain yet)"


def _format_problems(facts: list[FileFacts]) -> set[str]:
    return {"field ids" for f in facts if not f.field_ids} | {
        "zstd" for f in facts if f.codecs and f.codecs != {"ZSTD"}
    }
