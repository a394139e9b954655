"""Write-audit-publish: a product's new data is staged on an audit branch, the gate checks
exactly what was staged, and publication fast-forwards main to it.

Writing takes the fast path measured in FIELD-NOTES: DuckDB writes the Parquet files straight
into the table's data folder and pyiceberg registers them (metadata only) on branch
``audit-<batch>``, replacing the content there (or only the changed partitions). Main does not
move until the gate passes: readers keep the published snapshot. Publishers of one product take
turns (:func:`~mesh_platform.storage.locks.product_lock`); a batch the gate blocks for personal
data is quarantined at once (:mod:`mesh_platform.storage.quarantine`).

Longer than ~450 lines because staging, the gate's loop and publication share one batch's
invariants (the lock held throughout, restaging when main moved, the branch left or dropped),
which are checked by reading them together.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from mesh_platform.addressing import ProductAddress, quote_ident
from mesh_platform.compat.pyiceberg import pyarrow_to_schema_without_ids
from mesh_platform.errors import ConcurrentPublishError, MeshError
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import (
    ensure_namespace,
    is_concurrent_commit,
    load_product_table,
)
from mesh_platform.storage.datafiles import register_data_files, write_data_files
from mesh_platform.storage.evolution import compare_schemas
from mesh_platform.storage.health import (
    DEFAULT_REJECTED_RETENTION,
    HEALTH_PROPERTIES,
    branch_expiry_ms,
    drop_expired_batches,
    keep_branch_expiry,
    write_version_hint,
)
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.metadata import BATCH_PROPERTY, INITIAL_PROPERTY, is_published
from mesh_platform.storage.partitioning import Partitioning, ensure_partition_field
from mesh_platform.storage.quarantine import Quarantine, quarantine_batch
from mesh_platform.storage.tablespec import (
    TableSpec,
    check_tightening,
    relax,
    set_sort_order,
    tighten,
)

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

# pyiceberg's own commit retry replays a branch write on stale metadata; we retry ourselves
# instead, restaging from the current main (write_audit_publish). Metadata-file retention:
# storage.health.
TABLE_PROPERTIES = {"commit.retry.num-retries": "0", **HEALTH_PROPERTIES}


def _evolve_schema(
    catalog: SqlCatalog, table: Table, address: ProductAddress, arrow_schema: pa.Schema
) -> Table:
    """Add new columns and widen types by name (a no-op when nothing changed).

    Iceberg refuses incompatible changes (long -> string); that is a breaking change of the
    product, reported with the fix instead of pyiceberg's message alone.
    """
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import ValidationError as IcebergValidationError

    if not is_published(table.current_snapshot()):
        table = _forget_unpublished_columns(catalog, table, address, arrow_schema)
    try:
        with table.update_schema() as update:
            update.union_by_name(arrow_schema)
    except IcebergValidationError as exc:
        raise MeshError(
            f"product {address}: its new schema is incompatible with the published table ({exc})",
            fix="keep the column's type (or widen it: int -> bigint, float -> double), or "
            "publish the change as a new major version of the product",
        ) from exc
    return catalog.load_table(address.iceberg_identifier)


def _forget_unpublished_columns(
    catalog: SqlCatalog, table: Table, address: ProductAddress, arrow_schema: pa.Schema
) -> Table:
    """A table nothing was published to yet (its first batches were blocked) takes the new
    batch's columns as they are: no reader ever saw the old ones. Its columns (or nested
    fields) the batch drops or retypes are deleted; union_by_name then adds them back."""
    changes = compare_schemas(table.schema(), pyarrow_to_schema_without_ids(arrow_schema))
    paths = set()
    for path in changes.dropped + [c.split(": ")[0] for c in changes.type_changes]:
        parts = path.split(".")  # an element, key or value is retyped with its whole column
        paths.add(parts[0] if {"element", "key", "value"} & set(parts[1:]) else path)
    if not paths:
        return table
    with table.update_schema() as update:
        for path in sorted(paths):
            update.delete_column(path)
    return catalog.load_table(address.iceberg_identifier)


@dataclass(frozen=True)
class AuditStage:
    """New data of a product, committed to an audit branch and not yet visible on main."""

    address: ProductAddress
    batch_id: str
    branch: str
    snapshot_id: int  # head of the audit branch: exactly the data the gate checks
    base_snapshot_id: int | None  # main's head when staging started
    row_count: int
    metadata_location: str
    already_published: bool = False  # the batch is already on main: nothing to do
    data_files: tuple[str, ...] = ()  # the files this batch wrote (what the gate reads)
    total_rows: int = -1  # rows of the product at the staged snapshot (row_count: written)
    added_columns: tuple[str, ...] = ()  # schema evolution this batch made (reverted if blocked)


def audit_branch(batch_id: str) -> str:
    """Branch name of a batch: ``audit-<batch id>`` with the batch id reduced to [a-z0-9-]."""
    return "audit-" + re.sub(r"[^a-z0-9-]+", "-", batch_id.lower()).strip("-")


def _main_snapshot_with_batch(table: Table, batch_id: str) -> Snapshot | None:
    """The snapshot of main's history that committed ``batch_id``, if any."""
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.table.snapshots import ancestors_of

    return next(
        (
            snapshot
            for snapshot in ancestors_of(table.current_snapshot(), table.metadata)
            if (snapshot.summary or {}).get(BATCH_PROPERTY) == batch_id
        ),
        None,
    )


def is_ancestor(table: Table, ancestor_id: int, snapshot_id: int) -> bool:
    """Whether ``ancestor_id`` (a snapshot of the table: main's head) is ``snapshot_id`` or one
    of its parents."""
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.table.snapshots import ancestors_of

    return any(
        snapshot.snapshot_id == ancestor_id
        for snapshot in ancestors_of(table.snapshot_by_id(snapshot_id), table.metadata)
    )


def _prepare_table(
    catalog: SqlCatalog,
    address: ProductAddress,
    arrow_schema: pa.Schema,
    table_properties: Mapping[str, str] | None = None,
    partitioning: Partitioning | None = None,
    spec: TableSpec | None = None,
) -> Table:
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError

    ensure_namespace(catalog, address.domain)
    table = load_product_table(catalog, address)
    spec = spec if spec is not None else TableSpec.of_table(table)  # no spec: keep the table's
    # Docs and required flags (a new table's) from the contract (storage/tablespec.py).
    arrow_schema = spec.arrow_schema(arrow_schema, table.schema() if table is not None else None)
    # Descriptor properties (version, status...) are written at creation and after each
    # publication (write_audit_publish): a blocked batch must not advertise its new version.
    wanted = {"mesh.address": str(address), **spec.properties(), **TABLE_PROPERTIES}
    if table is None:
        try:
            table = catalog.create_table(
                address.iceberg_identifier,
                schema=arrow_schema,
                properties={"format-version": "2", **(table_properties or {}), **wanted},
            )
        except TableAlreadyExistsError:  # a concurrent first publisher won the race
            table = catalog.load_table(address.iceberg_identifier)
    if any(table.properties.get(k) != v for k, v in wanted.items()):
        # Descriptor changes (version, status, owner) reach the table; losing a race is fine.
        with contextlib.suppress(CommitFailedException), table.transaction() as tx:
            tx.set_properties(wanted)
        table = catalog.load_table(address.iceberg_identifier)
    if partitioning is not None:
        table = ensure_partition_field(catalog, table, address, partitioning)
    if table.current_snapshot() is None:
        # Branches need a snapshot to start from: an empty one, which readers treat as
        # "not published yet" (is_published). Losing this race is harmless.
        with contextlib.suppress(CommitFailedException):
            table.append(arrow_schema.empty_table(), snapshot_properties={INITIAL_PROPERTY: "true"})
        table = catalog.load_table(address.iceberg_identifier)
    else:
        table = _evolve_schema(catalog, relax(catalog, table, address, spec), address, arrow_schema)
    _check_location(catalog, table, address)
    return set_sort_order(catalog, table, address, spec)


def _check_location(catalog: SqlCatalog, table: Table, address: ProductAddress) -> None:
    """Refuse a table whose files would live outside its own folder of the warehouse (the
    catalog accepts any location): the rule every read path applies too."""
    root, location = catalog.properties["warehouse"], table.location()
    folder = warehouse.table_folder(root, *address.iceberg_identifier)
    if not warehouse.contains(folder, location):
        raise MeshError(
            f"product {address}: its table location {location} is outside its warehouse "
            f"folder {folder}",
            fix="drop the table from the catalog and publish again (its location is derived "
            "from the address)",
        )


def stage_to_audit(
    catalog: SqlCatalog,
    address: ProductAddress,
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    batch_id: str,
    properties: dict[str, str],
    table_properties: Mapping[str, str] | None = None,
    partitioning: Partitioning | None = None,
    spec: TableSpec | None = None,
    retention: timedelta = DEFAULT_REJECTED_RETENTION,
) -> AuditStage:
    """Write DuckDB ``relation`` as the new content of ``address`` on an audit branch: DuckDB
    writes the Parquet files into the table's data folder (the fast path, storage/datafiles.py)
    and pyiceberg registers them on branch ``audit-<batch>``, created at main's head, replacing
    the content there. Main does not move: readers keep the published snapshot. A batch already
    on main (a retried run) is reported, not written twice. ``spec``: what the contract says of
    the table (docs, required columns, key, sort order); the branch expires after ``retention``
    (its ``max-ref-age-ms``: storage.health)."""
    schema_name, table_name = relation.split(".")
    source = f"{quote_ident(schema_name)}.{quote_ident(table_name)}"
    arrow_schema: pa.Schema = conn.execute(f"SELECT * FROM {source} LIMIT 0").arrow().schema
    before = load_product_table(catalog, address)
    known = before.schema() if before is not None else None
    table = _prepare_table(catalog, address, arrow_schema, table_properties, partitioning, spec)
    added = ()  # columns and nested fields (address.country): reverted if the batch is blocked
    if known is not None:
        added = tuple(compare_schemas(known, pyarrow_to_schema_without_ids(arrow_schema)).added)
    branch = audit_branch(batch_id)
    if done := _main_snapshot_with_batch(table, batch_id):
        summary = done.summary or {}
        return AuditStage(
            address, batch_id, branch, done.snapshot_id, done.parent_snapshot_id,
            int(summary.get("mesh.rows", -1)), table.metadata_location, True,
            total_rows=int(summary.get("total-records", -1)),
        )  # fmt: skip

    main = table.current_snapshot()
    assert main is not None  # _prepare_table gives every table an initial snapshot
    if is_published(main) and spec is not None:
        check_tightening(table, address, spec, partitioning)
    expiry = branch_expiry_ms(retention)
    table = _branch_from_main(catalog, table, address, batch_id, main, expiry)
    data_files, row_count, replaced = _write_files(catalog, table, conn, source, partitioning,
                                                   spec)  # fmt: skip
    summary = {**properties, BATCH_PROPERTY: batch_id, "mesh.rows": str(row_count)}
    if partitioning is not None:
        summary["mesh.partitions_replaced"] = (
            "all" if partitioning.changed is None else str(len(partitioning.changed))
        )
    try:
        with table.transaction() as tx:
            if is_published(main):
                tx.delete(replaced, snapshot_properties=summary, branch=branch)
            if data_files:
                register_data_files(table, tx, data_files, snapshot_properties=summary,
                                    branch=branch)  # fmt: skip
            keep_branch_expiry(tx, branch, expiry)
    except Exception as exc:
        for data_file in data_files:  # nothing references them: do not leave orphans
            warehouse.delete(data_file, catalog.properties)
        if is_concurrent_commit(exc):
            raise _concurrent(address, batch_id, exc) from exc
        raise
    table = catalog.load_table(address.iceberg_identifier)
    staged = table.snapshot_by_id(table.metadata.refs[branch].snapshot_id)
    return AuditStage(
        address=address,
        batch_id=batch_id,
        branch=branch,
        snapshot_id=staged.snapshot_id,
        base_snapshot_id=main.snapshot_id,
        row_count=row_count,
        metadata_location=table.metadata_location,
        data_files=tuple(data_files),
        added_columns=added,
        total_rows=int((staged.summary or {}).get("total-records", row_count)),
    )


def _branch_from_main(
    catalog: SqlCatalog,
    table: Table,
    address: ProductAddress,
    batch_id: str,
    main: Snapshot,
    max_ref_age_ms: int,
) -> Table:
    """Create the batch's audit branch at main's head (replacing one an earlier attempt of the
    batch left); the table as it is after."""
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import CommitFailedException

    branch = audit_branch(batch_id)
    try:
        if branch in table.metadata.refs:  # left by an earlier attempt of this batch
            with table.manage_snapshots() as refs:
                refs.remove_branch(branch)
            table = catalog.load_table(address.iceberg_identifier)
        with table.manage_snapshots() as refs:
            refs.create_branch(main.snapshot_id, branch, max_ref_age_ms=max_ref_age_ms)
    except CommitFailedException as exc:
        raise _concurrent(address, batch_id, exc) from exc
    return catalog.load_table(address.iceberg_identifier)


def _write_files(
    catalog: SqlCatalog,
    table: Table,
    conn: duckdb.DuckDBPyConnection,
    source: str,
    partitioning: Partitioning | None,
    spec: TableSpec | None,
) -> tuple[list[str], int, BooleanExpression]:
    """The batch's data files (storage/datafiles.write_data_files), its rows, and the rows of
    main it replaces."""
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.expressions import AlwaysTrue

    written = write_data_files(
        conn, source, table, partitioning=partitioning,
        not_null=spec.required if spec is not None else (),
        catalog_properties=catalog.properties,
    )  # fmt: skip
    replaced = AlwaysTrue() if partitioning is None else partitioning.replaced_rows()
    return list(written.files), written.rows, replaced


def publish_audited(catalog: SqlCatalog, stage: AuditStage) -> int:
    """Fast-forward main to the audited snapshot; returns main's new head.

    pyiceberg's ``set_current_snapshot`` does not check ancestry: publishing a branch that does
    not descend from main's head would silently drop main's newer commits. We check it, and the
    commit itself asserts main is still at the head we checked, so a concurrent publisher makes
    this fail instead of losing data.
    """
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import CommitFailedException

    if stage.already_published:
        return stage.snapshot_id
    table = catalog.load_table(stage.address.iceberg_identifier)
    main = table.current_snapshot()
    if main is not None and not is_ancestor(table, main.snapshot_id, stage.snapshot_id):
        raise ConcurrentPublishError(
            f"product {stage.address}: main moved to snapshot {main.snapshot_id} since batch "
            f"{stage.batch_id} was staged on {stage.branch}; publishing would drop those rows",
            fix="run the product again: it restages from the new main and publishes",
        )
    try:
        with table.manage_snapshots() as refs:
            refs.set_current_snapshot(snapshot_id=stage.snapshot_id)
            refs.remove_branch(stage.branch)
    except CommitFailedException as exc:
        raise _concurrent(stage.address, stage.batch_id, exc) from exc
    return stage.snapshot_id


def _concurrent(address: ProductAddress, batch_id: str, exc: Exception) -> ConcurrentPublishError:
    return ConcurrentPublishError(
        f"product {address}: the table changed while batch {batch_id} was being written or "
        f"published ({exc})",
        fix="run the product again: it restages from the new main and publishes",
    )


Gate = Callable[[AuditStage], list[str]]
# Whether a batch the gate blocked (its failed checks) must be quarantined at once.
QuarantinePolicy = Callable[[list[str]], bool]
PUBLISH_ATTEMPTS = 5


@dataclass(frozen=True)
class WapResult:
    stage: AuditStage
    published_snapshot_id: int | None  # None: the gate failed, main is untouched
    failures: list[str]
    attempts: int
    quarantine: Quarantine | None = None  # blocked and removed from the warehouse at once


def write_audit_publish(
    catalog: SqlCatalog,
    address: ProductAddress,
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    batch_id: str,
    properties: dict[str, str],
    table_properties: Mapping[str, str] | None = None,
    partitioning: Partitioning | None = None,
    gate: Gate | None = None,
    quarantine_if: QuarantinePolicy | None = None,
    attempts: int = PUBLISH_ATTEMPTS,
    spec: TableSpec | None = None,
    retention: timedelta = DEFAULT_REJECTED_RETENTION,
) -> WapResult:
    """Stage ``relation`` on an audit branch, run ``gate`` on the stage, publish if it passes.

    ``gate`` returns the names of the blocking checks that failed (empty: publish). A blocked
    batch stays on its branch for inspection, unless ``quarantine_if`` says its failures
    call for quarantine (personal data): then it is removed from the warehouse at once
    (quarantine.quarantine_batch), still holding the product's lock. When
    another publisher moves main in between, the batch is restaged from the new main and the
    gate runs again, up to ``attempts`` times; then ConcurrentPublishError propagates. On a
    PostgreSQL catalog, publishers of one product take turns (``product_lock``), so every one
    of them publishes. ``spec``: what the contract says of the table (storage/tablespec.py);
    its required columns and key are set once a publication proves them.

    A blocked batch's branch expires after ``retention``; under the same lock, before staging,
    the blocked batches of the product past their expiry are removed, and at the end the
    table's version hint names its current metadata (storage.health).
    """
    with product_lock(catalog, address):
        drop_expired_batches(catalog, address, retention, keep=audit_branch(batch_id))
        result = _write_audit_publish(
            catalog, address, conn, relation,
            batch_id=batch_id, properties=properties, table_properties=table_properties,
            partitioning=partitioning, gate=gate, quarantine_if=quarantine_if, attempts=attempts,
            spec=spec, retention=retention,
        )  # fmt: skip
        write_version_hint(catalog.load_table(address.iceberg_identifier))
        return result


def _write_audit_publish(
    catalog: SqlCatalog,
    address: ProductAddress,
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    batch_id: str,
    properties: dict[str, str],
    table_properties: Mapping[str, str] | None,
    partitioning: Partitioning | None,
    gate: Gate | None,
    quarantine_if: QuarantinePolicy | None,
    attempts: int,
    spec: TableSpec | None,
    retention: timedelta,
) -> WapResult:
    for attempt in range(1, attempts + 1):
        try:
            stage = stage_to_audit(
                catalog, address, conn, relation,
                batch_id=batch_id, properties=properties, table_properties=table_properties,
                partitioning=partitioning, spec=spec, retention=retention,
            )  # fmt: skip
            if stage.already_published:
                return WapResult(stage, stage.snapshot_id, [], attempt)
            failures = gate(stage) if gate is not None else []
            if failures:
                _revert_added_columns(catalog, stage)
                if quarantine_if is not None and quarantine_if(failures):
                    quarantine = _quarantine(catalog, stage)
                    return WapResult(stage, None, failures, attempt, quarantine)
                return WapResult(stage, None, failures, attempt)
            published = publish_audited(catalog, stage)
            _set_properties(catalog, address, table_properties)
            if spec is not None:
                tighten(catalog, address, spec)
            return WapResult(stage, published, [], attempt)
        except ConcurrentPublishError:
            if attempt == attempts:
                _drop_branch(catalog, address, audit_branch(batch_id))  # nothing to inspect
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)  # de-synchronise the writers
    raise AssertionError("unreachable")  # pragma: no cover


def _drop_branch(catalog: SqlCatalog, address: ProductAddress, branch: str) -> None:
    """Best effort: remove a batch's audit branch (maintenance drops any left over)."""
    with contextlib.suppress(Exception):
        table = catalog.load_table(address.iceberg_identifier)
        if branch in table.metadata.refs:
            with table.manage_snapshots() as refs:
                refs.remove_branch(branch)


def _quarantine(catalog: SqlCatalog, stage: AuditStage) -> Quarantine:
    """Quarantine a blocked batch (quarantine.quarantine_batch); say so loudly if its branch
    could not be dropped (its files are deleted all the same)."""
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import CommitFailedException

    try:
        return quarantine_batch(catalog, stage.address, stage.branch, stage.data_files)
    except CommitFailedException as exc:
        raise MeshError(
            f"product {stage.address}: batch {stage.batch_id} held personal data; its files "
            f"were deleted but its branch {stage.branch} could not be dropped ({exc})",
            fix=f"drop the branch with `mesh maintain --domain {stage.address.domain}` (it "
            "drops audit branches older than --retain), or run the product again",
        ) from exc


def _revert_added_columns(catalog: SqlCatalog, stage: AuditStage) -> None:
    """Drop the columns and nested fields a blocked batch added, so main's readers see main's
    schema.

    (A widened type cannot be narrowed back in Iceberg; it reads the old data unchanged.)
    """
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import CommitFailedException

    if not stage.added_columns:
        return
    table = catalog.load_table(stage.address.iceberg_identifier)
    with contextlib.suppress(CommitFailedException), table.update_schema() as update:
        for name in stage.added_columns:
            update.delete_column(name)


def _set_properties(
    catalog: SqlCatalog, address: ProductAddress, properties: Mapping[str, str] | None
) -> None:
    # heavy: pyiceberg (~2 s), only when a batch is written
    from pyiceberg.exceptions import CommitFailedException

    if not properties:
        return
    table = catalog.load_table(address.iceberg_identifier)
    if any(table.properties.get(k) != v for k, v in properties.items()):
        with contextlib.suppress(CommitFailedException), table.transaction() as tx:
            tx.set_properties(dict(properties))
