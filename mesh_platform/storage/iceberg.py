"""Iceberg storage of the mesh: the catalog, publishing a product, reading one back.

Products are Apache Iceberg tables in a pyiceberg ``SqlCatalog``, one namespace per domain, so
any engine can read them. Writing takes the fast path measured in FIELD-NOTES: DuckDB writes the
Parquet file straight into the table's data folder and pyiceberg registers it (metadata only).
This module does a plain replace of the table's content; the gated write-audit-publish path
builds on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.exceptions import ValidationError as IcebergValidationError
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    LessThan,
    Or,
)
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import DayTransform, MonthTransform, YearTransform
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from mesh_platform.addressing import ProductAddress, quote_ident, quote_literal
from mesh_platform.config import Mesh, make_private_dir, private_umask
from mesh_platform.errors import (
    ConcurrentPublishError,
    MeshError,
    UnreadableMetadataError,
    catalog_unavailable,
    one_line,
)
from mesh_platform.storage import warehouse
from mesh_platform.storage.maintenance import Quarantine, quarantine_batch
from mesh_platform.storage.warehouse import local_path  # noqa: F401  (re-exported)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def open_catalog(mesh: Mesh) -> SqlCatalog:
    """The mesh's SqlCatalog. On sqlite: WAL journal and a busy timeout for concurrent writers.
    Production profile: PostgreSQL and the object store are checked first (storage.preflight).

    Every writer of tables comes through here: the process's files are made owner-only from
    now on (the sqlite catalog, its WAL, the local warehouse's data, manifests and metadata),
    whether or not the process set up the state dir itself."""
    from mesh_platform.storage import preflight

    private_umask()
    preflight.check(mesh)
    uri = mesh.catalog_uri
    try:
        if uri.startswith("sqlite:///"):
            make_private_dir(Path(uri.removeprefix("sqlite:///")).parent)
        catalog = _sql_catalog(
            mesh.settings.catalog.name, uri, mesh.warehouse, warehouse.s3_properties(mesh)
        )
    except (SQLAlchemyError, OSError) as exc:  # locked, disk full, not a database, no folder
        raise catalog_unavailable(preflight.redact(uri), exc, state_dir=mesh.state_dir) from exc
    if catalog.engine.dialect.name == "sqlite":

        @event.listens_for(catalog.engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - callback
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        catalog.engine.dispose()  # connections made before the listener get the pragmas too
    return catalog


def _sql_catalog(
    name: str, uri: str, location: str, properties: Mapping[str, str], attempts: int = 5
) -> SqlCatalog:
    """SqlCatalog, tolerating another process creating the catalog tables at the same moment
    (pyiceberg's CREATE TABLE of its own tables is not idempotent under a race: sqlite says
    OperationalError, PostgreSQL DuplicateTable or a unique violation of its type catalog)."""
    for attempt in range(attempts):
        try:
            return SqlCatalog(name, uri=uri, warehouse=location, **properties)
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def ensure_namespace(catalog: SqlCatalog, domain: str) -> None:
    # Two first publishers can race: the loser sees either error.
    with contextlib.suppress(NamespaceAlreadyExistsError, IntegrityError):
        catalog.create_namespace(domain, properties={"mesh.domain": domain})


def _evolve_schema(
    catalog: SqlCatalog, table: Table, address: ProductAddress, arrow_schema: pa.Schema
) -> Table:
    """Add new columns and widen types by name (a no-op when nothing changed).

    Iceberg refuses incompatible changes (long -> string); that is a breaking change of the
    product, reported with the fix instead of pyiceberg's message alone.
    """
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


@dataclass(frozen=True)
class PublishResult:
    address: ProductAddress
    snapshot_id: int
    row_count: int
    metadata_location: str
    seconds: float
    already_published: bool = False


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


PARTITION_TRANSFORMS = {"day": DayTransform, "month": MonthTransform, "year": YearTransform}


BATCH_PROPERTY = "mesh.batch_id"
# pyiceberg's own commit retry replays a branch write on stale metadata; we retry ourselves
# instead, restaging from the current main (write_audit_publish).
TABLE_PROPERTIES = {"commit.retry.num-retries": "0"}
INITIAL_PROPERTY = "mesh.initial"


def is_published(snapshot: Snapshot | None) -> bool:
    """Whether a main snapshot holds published data (not the empty initial one)."""
    return snapshot is not None and (snapshot.summary or {}).get(INITIAL_PROPERTY) != "true"


def load_product_table(catalog: SqlCatalog, address: ProductAddress) -> Table | None:
    """The product's table, None if the catalog has no such table (never published). A catalog
    that cannot be read is a CatalogUnavailableError, a current metadata file that cannot be
    loaded an UnreadableMetadataError naming it: neither ever reads as "not published"."""
    try:
        return catalog.load_table(address.iceberg_identifier)
    except NoSuchTableError:
        return None
    except SQLAlchemyError as exc:
        raise catalog_unavailable(
            catalog.engine.url.render_as_string(hide_password=True), exc
        ) from exc
    except (ValueError, KeyError, TypeError, OSError) as exc:  # JSON, pydantic, missing file
        location = _catalog_row_location(catalog, address)
        raise UnreadableMetadataError(
            str(address),
            f"its current metadata file {location} could not be loaded ({one_line(exc)[:300]})",
            file=location,
        ) from exc


def _catalog_row_location(catalog: SqlCatalog, address: ProductAddress) -> str:
    """The metadata location the catalog row points at (to name it in an error)."""
    from pyiceberg.catalog.sql import IcebergTables
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    namespace, table = address.iceberg_identifier
    try:
        with Session(catalog.engine) as session:
            found = session.scalar(
                select(IcebergTables.metadata_location).where(
                    IcebergTables.catalog_name == catalog.name,
                    IcebergTables.table_namespace == namespace,
                    IcebergTables.table_name == table,
                )
            )
    except SQLAlchemyError:
        found = None
    return found or "(unknown: the catalog row could not be read)"


def audit_branch(batch_id: str) -> str:
    """Branch name of a batch: ``audit-<batch id>`` with the batch id reduced to [a-z0-9-]."""
    return "audit-" + re.sub(r"[^a-z0-9-]+", "-", batch_id.lower()).strip("-")


def _main_snapshot_with_batch(table: Table, batch_id: str) -> Snapshot | None:
    """The snapshot of main's history that committed ``batch_id``, if any."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        if (snapshot.summary or {}).get(BATCH_PROPERTY) == batch_id:
            return snapshot
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return None


def is_ancestor(table: Table, ancestor_id: int, snapshot_id: int) -> bool:
    """Whether ``ancestor_id`` is ``snapshot_id`` or one of its parents."""
    current: int | None = snapshot_id
    while current is not None:
        if current == ancestor_id:
            return True
        snapshot = table.snapshot_by_id(current)
        current = snapshot.parent_snapshot_id if snapshot is not None else None
    return False


def _prepare_table(
    catalog: SqlCatalog,
    address: ProductAddress,
    arrow_schema: pa.Schema,
    table_properties: Mapping[str, str] | None = None,
    partitioning: Partitioning | None = None,
) -> Table:
    ensure_namespace(catalog, address.domain)
    table = load_product_table(catalog, address)
    # Descriptor properties (version, status...) are written at creation and after each
    # publication (write_audit_publish): a blocked batch must not advertise its new version.
    wanted = {"mesh.address": str(address), **TABLE_PROPERTIES}
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
        table = _ensure_partition_field(catalog, table, address, partitioning)
    if table.current_snapshot() is None:
        # Branches need a snapshot to start from: an empty one, which readers treat as
        # "not published yet" (is_published). Losing this race is harmless.
        with contextlib.suppress(CommitFailedException):
            table.append(arrow_schema.empty_table(), snapshot_properties={INITIAL_PROPERTY: "true"})
        table = catalog.load_table(address.iceberg_identifier)
    else:
        table = _evolve_schema(catalog, table, address, arrow_schema)
    _check_location(catalog, table, address)
    return table


def _ensure_partition_field(
    catalog: SqlCatalog, table: Table, address: ProductAddress, partitioning: Partitioning
) -> Table:
    """Partition the table by the descriptor's column and granularity (spec evolution: files
    written before keep their old spec until rewritten)."""
    transform = PARTITION_TRANSFORMS[partitioning.granularity]()
    source_id = table.schema().find_field(partitioning.column).field_id
    if any(f.source_id == source_id and f.transform == transform for f in table.spec().fields):
        return table
    with contextlib.suppress(CommitFailedException), table.update_spec() as update:
        update.add_field(
            partitioning.column, transform, f"{partitioning.column}_{partitioning.granularity}"
        )
    return catalog.load_table(address.iceberg_identifier)


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
) -> AuditStage:
    """Write DuckDB ``relation`` as the new content of ``address`` on an audit branch.

    Write: DuckDB writes one Parquet file into the table's data folder (the fast path) and
    pyiceberg registers it on branch ``audit-<batch>``, created at main's head, replacing the
    content there. Main does not move: readers keep the published snapshot. A batch already on
    main (a retried run) is reported, not written twice.
    """
    schema_name, table_name = relation.split(".")
    source = f"{quote_ident(schema_name)}.{quote_ident(table_name)}"
    arrow_schema: pa.Schema = conn.execute(f"SELECT * FROM {source} LIMIT 0").arrow().schema
    before = load_product_table(catalog, address)
    known = {f.name for f in before.schema().fields} if before is not None else None
    table = _prepare_table(catalog, address, arrow_schema, table_properties, partitioning)
    added = () if known is None else tuple(n for n in arrow_schema.names if n not in known)
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
    try:
        if branch in table.metadata.refs:  # left by an earlier attempt of this batch
            with table.manage_snapshots() as refs:
                refs.remove_branch(branch)
            table = catalog.load_table(address.iceberg_identifier)
        with table.manage_snapshots() as refs:
            refs.create_branch(main.snapshot_id, branch)
    except CommitFailedException as exc:
        raise _concurrent(address, batch_id, exc) from exc
    table = catalog.load_table(address.iceberg_identifier)

    warehouse.configure_duckdb(conn, catalog.properties)
    if partitioning is None:
        data_files = [warehouse.new_data_file(table.location())]
        conn.execute(
            f"COPY (SELECT * FROM {source}) TO {quote_literal(data_files[0])} (FORMAT parquet)"
        )
        row_count = conn.execute(f"SELECT count(*) FROM {source}").fetchone()[0]
        replaced: BooleanExpression = AlwaysTrue()
    else:
        data_dir = warehouse.new_data_folder(table.location())
        data_files, row_count = _copy_partitions(conn, source, data_dir, partitioning)
        replaced = partitioning.replaced_rows()
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
                tx.add_files([str(f) for f in data_files], snapshot_properties=summary,
                             branch=branch)  # fmt: skip
    except Exception as exc:
        for data_file in data_files:  # nothing references them: do not leave orphans
            warehouse.delete(data_file, catalog.properties)
        if _is_concurrent_commit(exc):
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


def _copy_partitions(
    conn: duckdb.DuckDBPyConnection, source: str, data_dir: str, partitioning: Partitioning
) -> tuple[list[str], int]:
    """DuckDB writes the rows of the changed partitions, one file per partition (add_files
    derives each file's partition from its column statistics)."""
    where = ""
    if partitioning.changed is not None:
        conn.execute("CREATE OR REPLACE TEMP TABLE _mesh_changed (p DATE)")
        conn.executemany(
            "INSERT INTO _mesh_changed VALUES (?)", [[d] for d in partitioning.changed]
        )
        where = f" WHERE {partitioning.sql_expr} IN (SELECT p FROM _mesh_changed)"
    batch_dir = warehouse.join(data_dir, f"batch-{uuid.uuid4()}")
    row_count = conn.execute(f"SELECT count(*) FROM {source}{where}").fetchone()[0]
    if row_count:
        conn.execute(
            f"COPY (SELECT *, strftime({partitioning.sql_expr}, '%Y-%m-%d') AS _mesh_partition "
            f"FROM {source}{where}) TO {quote_literal(batch_dir)} "
            "(FORMAT parquet, PARTITION_BY (_mesh_partition))"
        )
    if not warehouse.is_remote(batch_dir):  # DuckDB's glob() would read [ ] * ? in the path
        return sorted(str(p) for p in Path(batch_dir).rglob("*.parquet")), row_count
    pattern = quote_literal(warehouse.join(batch_dir, "**", "*.parquet"))
    files = [row[0] for row in conn.execute(f"SELECT file FROM glob({pattern})").fetchall()]
    return sorted(files), row_count


def publish_audited(catalog: SqlCatalog, stage: AuditStage) -> int:
    """Fast-forward main to the audited snapshot; returns main's new head.

    pyiceberg's ``set_current_snapshot`` does not check ancestry: publishing a branch that does
    not descend from main's head would silently drop main's newer commits. We check it, and the
    commit itself asserts main is still at the head we checked, so a concurrent publisher makes
    this fail instead of losing data.
    """
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


def _is_concurrent_commit(exc: Exception) -> bool:
    """A commit lost to a concurrent writer. pyiceberg 0.12 reports a branch write that lost
    the race as a ValueError about sequence numbers (its requirements only guard the branch,
    which is ours alone), not as CommitFailedException (measured with 4 writers)."""
    return isinstance(exc, CommitFailedException) or (
        isinstance(exc, ValueError) and "older than last sequence number" in str(exc)
    )


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
) -> WapResult:
    """Stage ``relation`` on an audit branch, run ``gate`` on the stage, publish if it passes.

    ``gate`` returns the names of the blocking checks that failed (empty: publish). A blocked
    batch stays on its branch for inspection, unless ``quarantine_if`` says its failures
    call for quarantine (personal data): then it is removed from the warehouse at once
    (maintenance.quarantine_batch), still holding the product's lock. When
    another publisher moves main in between, the batch is restaged from the new main and the
    gate runs again, up to ``attempts`` times; then ConcurrentPublishError propagates. On a
    PostgreSQL catalog, publishers of one product take turns (``product_lock``), so every one
    of them publishes.
    """
    with product_lock(catalog, address):
        return _write_audit_publish(
            catalog, address, conn, relation,
            batch_id=batch_id, properties=properties, table_properties=table_properties,
            partitioning=partitioning, gate=gate, quarantine_if=quarantine_if, attempts=attempts,
        )  # fmt: skip


PRODUCT_LOCK_TIMEOUT = "15min"
PRODUCT_LOCK_TIMEOUT_S = 15 * 60  # as PRODUCT_LOCK_TIMEOUT


@contextlib.contextmanager
def product_lock(
    catalog: SqlCatalog, address: ProductAddress, *, timeout: float | None = None
) -> Iterator[bool]:
    """One publisher of a product at a time, so that concurrent publishers all publish instead
    of exhausting their attempts. PostgreSQL: a session-level advisory lock keyed by catalog and
    address (released at the end, or by the server when a killed publisher's connection drops).
    sqlite (one machine): an exclusive ``flock`` on a lock file beside the catalog database
    (released by the kernel when a killed publisher's process ends). Other catalogs: none;
    publishers race optimistically and restage (write_audit_publish's attempts).

    Waits up to ``timeout`` seconds (default: PRODUCT_LOCK_TIMEOUT, what publishers wait; 0:
    one try), then raises ConcurrentPublishError. Yields whether the lock excludes the other
    holders (False on a catalog without one): ``mesh maintain`` takes it too, and only then
    may it treat an audit branch it finds as left by a finished or dead run."""
    wait = PRODUCT_LOCK_TIMEOUT_S if timeout is None else max(0.0, timeout)
    dialect = catalog.engine.dialect.name
    if dialect == "sqlite":
        with _file_lock(catalog, address, timeout=wait) as exclusive:
            yield exclusive
        return
    if dialect != "postgresql":
        yield False
        return
    from sqlalchemy import text

    digest = hashlib.blake2b(f"{catalog.name}:{address}".encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)
    busy = ConcurrentPublishError(
        f"product {address}: another publisher held it for over {_seconds(wait)}",
        fix="look for a stuck run of the product's domain (Dagster UI), then run again",
    )
    with catalog.engine.connect() as connection:
        try:
            if wait <= 0:  # lock_timeout 0 would mean: wait forever
                taken = connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
                ).scalar()
                connection.commit()
                if not taken:
                    raise busy
            else:
                connection.execute(text(f"SET lock_timeout = '{max(1, int(wait * 1000))}ms'"))
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                connection.execute(text("RESET lock_timeout"))  # the connection returns to a pool
                connection.commit()
        except DBAPIError as exc:
            if type(exc.orig).__name__ == "LockNotAvailable":
                raise busy from exc
            raise
        try:
            yield True
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
            except DBAPIError:
                # The connection is gone (so is its session lock): never let this replace the
                # publication's own outcome; the pool must not reuse the connection.
                connection.invalidate()


def _seconds(wait: float) -> str:
    return PRODUCT_LOCK_TIMEOUT if wait == PRODUCT_LOCK_TIMEOUT_S else f"{wait:g}s"


LOCK_POLL_S = 0.05


@contextlib.contextmanager
def _file_lock(
    catalog: SqlCatalog, address: ProductAddress, *, timeout: float = PRODUCT_LOCK_TIMEOUT_S
) -> Iterator[bool]:
    """``flock`` on ``<catalog dir>/locks/<catalog>.<address>.lock``; yields False (no lock)
    for an in-memory catalog, which no other process can open."""
    import fcntl

    database = catalog.engine.url.database
    if not database or database == ":memory:":
        yield False
        return
    folder = Path(database).parent / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(folder / f"{catalog.name}.{address}.lock", "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConcurrentPublishError(
                        f"product {address}: another publisher held it for over "
                        f"{_seconds(timeout)} (lock file {handle.name})",
                        fix="look for a stuck `mesh build` of the product's domain, then run again",
                    ) from None
                time.sleep(LOCK_POLL_S)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
) -> WapResult:
    for attempt in range(1, attempts + 1):
        try:
            stage = stage_to_audit(
                catalog, address, conn, relation,
                batch_id=batch_id, properties=properties, table_properties=table_properties,
                partitioning=partitioning,
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
    """Quarantine a blocked batch (maintenance.quarantine_batch); say so loudly if its branch
    could not be dropped (its files are deleted all the same)."""
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
    """Drop the columns a blocked batch added, so main's readers see main's schema.

    (A widened type cannot be narrowed back in Iceberg; it reads the old data unchanged.)
    """
    if not stage.added_columns:
        return
    table = catalog.load_table(stage.address.iceberg_identifier)
    with contextlib.suppress(CommitFailedException), table.update_schema() as update:
        for name in stage.added_columns:
            update.delete_column(name)


def _set_properties(
    catalog: SqlCatalog, address: ProductAddress, properties: Mapping[str, str] | None
) -> None:
    if not properties:
        return
    table = catalog.load_table(address.iceberg_identifier)
    if any(table.properties.get(k) != v for k, v in properties.items()):
        with contextlib.suppress(CommitFailedException), table.transaction() as tx:
            tx.set_properties(dict(properties))


def publish_from_duckdb(
    catalog: SqlCatalog,
    address: ProductAddress,
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    properties: dict[str, str],
    batch_id: str | None = None,
) -> PublishResult:
    """Write-audit-publish with no gate (tools and tests; domain runs gate on their checks)."""
    start = time.perf_counter()
    result = write_audit_publish(
        catalog, address, conn, relation,
        batch_id=batch_id or str(uuid.uuid4()), properties=properties,
    )  # fmt: skip
    assert result.published_snapshot_id is not None
    table = catalog.load_table(address.iceberg_identifier)
    return PublishResult(
        address=address,
        snapshot_id=result.published_snapshot_id,
        row_count=result.stage.row_count,
        metadata_location=table.metadata_location,
        seconds=time.perf_counter() - start,
        already_published=result.stage.already_published,
    )
