"""Iceberg table metadata, read with the standard library: which snapshot of a product is
published, which columns it holds, which data files it reads.

Table state is read from the catalog row (:class:`Catalog`: sqlite3, or psycopg2 on
PostgreSQL) and the table's metadata JSON: importing pyiceberg costs ~3 s and loading DuckDB's
iceberg extension ~0.3 s, which would make every ``mesh query`` feel slow. The snapshot's data
files are planned from its Avro manifests (DuckDB's avro extension) and read as Parquet.

Every path taken from the catalog row or the table's metadata (the metadata file, the table's
location, manifest lists, manifests, data files) is checked to lie inside the table's warehouse
folder ``<warehouse>/<domain>/<table>`` before anything is read from it
(:func:`mesh_platform.storage.warehouse.check_inside`); :attr:`TableState.location` is the
checked location, the one folder the query engine lets DuckDB read.

Longer than ~450 lines because the table state, the snapshot's file plan and the catalog row
reader are the one read path the query engine trusts; kept together, each check is seen once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gzip
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from mesh_platform.addressing import ProductAddress, quote_ident, quote_literal
from mesh_platform.config import Mesh
from mesh_platform.errors import (
    MeshError,
    ProductNotPublishedError,
    SnapshotExpiredError,
    UnreadableMetadataError,
    catalog_unavailable,
    one_line,
)
from mesh_platform.storage import preflight, warehouse
from mesh_platform.storage.catalog import load_product_table, open_catalog
from mesh_platform.urls import pg_connect_args, redact

# Snapshot summary properties the platform writes.
INITIAL_PROPERTY = "mesh.initial"  # the empty snapshot audit branches start from
BATCH_PROPERTY = "mesh.batch_id"  # the batch (run) a snapshot committed
# The columns' classification and masking a snapshot was published under (JSON).
CLASSIFICATION_PROPERTY = "mesh.classification"
# On a compaction's snapshots (storage.compaction): its id. The content is main's before it,
# with the summary of the batch that published it (run, classification...) carried over.
COMPACTION_PROPERTY = "mesh.compaction"


def is_published(snapshot: Any) -> bool:
    """Whether a main snapshot (pyiceberg's, or a :class:`Snapshot`) holds published data (not
    the empty initial one)."""
    return snapshot is not None and (snapshot.summary or {}).get(INITIAL_PROPERTY) != "true"


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: int
    timestamp_ms: int
    columns: tuple[str, ...]
    summary: dict[str, str]
    manifest_list: str = ""
    parent_snapshot_id: int | None = None  # None too when maintenance expired the parent
    sequence_number: int = 0  # 1: the table's first snapshot (the empty initial one)

    def classification(self) -> dict[str, dict[str, Any]] | None:
        """The columns' classification and masking this snapshot was published under (None:
        published without a record, or an unreadable one: readers then mask strictly)."""
        raw = self.summary.get(CLASSIFICATION_PROPERTY)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None


@dataclass(frozen=True)
class TableState:
    """One product table's metadata, as read from its current metadata file."""

    address: ProductAddress
    metadata_path: str  # checked: inside the table's warehouse folder
    location: str  # the table's root folder, checked: the table's warehouse folder or inside it
    properties: dict[str, str]
    current: Snapshot | None  # main's head, None if nothing was ever published
    main_history: tuple[Snapshot, ...]  # main's published snapshots, oldest first
    schema_count: int = 1  # >1: files may differ in columns (added ones)
    # Published snapshots older than main_history[0] existed and were expired by maintenance
    # (its parent is gone and it replaced rows, so the parent was not the empty initial one).
    history_expired: bool = False
    created_ms: int | None = None  # when the table was created, if its metadata log still says
    snapshot_count: int = 0  # every snapshot the metadata keeps (main's, branches', the initial)

    def _when(self, ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")

    def snapshot(self, snapshot_id: int | None = None, as_of_ms: int | None = None) -> Snapshot:
        """Main's head, a published snapshot by id, or main's snapshot at a time."""
        if snapshot_id is not None:
            for snap in self.main_history:
                if snap.snapshot_id == snapshot_id:
                    return snap
            oldest = (
                f"; oldest kept: {self.main_history[0].snapshot_id} published "
                f"{self._when(self.main_history[0].timestamp_ms)}"
                if self.history_expired and self.main_history
                else ""
            )
            raise MeshError(
                f"product {self.address} has no published snapshot {snapshot_id} (it never was "
                f"main, was an audit-branch batch, or has expired{oldest})",
                fix="use a snapshot id from the product's history (`mesh describe "
                f"{self.address}` lists them), or --at TIMESTAMP",
            )
        if as_of_ms is not None:
            before = [s for s in self.main_history if s.timestamp_ms <= as_of_ms]
            if not before:
                raise self._nothing_at(as_of_ms)
            return before[-1]
        if self.current is None:
            raise ProductNotPublishedError(
                f"product {self.address} has no published snapshot",
                fix=f"build its domain: `mesh build --domain {self.address.domain}`",
            )
        return self.current

    def _nothing_at(self, as_of_ms: int) -> MeshError:
        """Why main held no published snapshot at ``as_of_ms``: not published yet then, or
        its snapshots of that time were expired by maintenance."""
        if not self.main_history:
            return ProductNotPublishedError(
                f"product {self.address} had no published snapshot at that time (it has none yet)",
                fix=f"build its domain: `mesh build --domain {self.address.domain}`",
            )
        oldest = self._when(self.main_history[0].timestamp_ms)
        created = self.created_ms
        if not self.history_expired or (created is not None and as_of_ms < created):
            first = "first published" if not self.history_expired else "created"
            moment = oldest if not self.history_expired else self._when(created or 0)
            return ProductNotPublishedError(
                f"product {self.address} had no published snapshot at that time: it was not "
                f"published yet (it was {first} {moment})",
                fix=f"choose a time at or after {oldest}, or drop --at to read the current "
                "snapshot",
            )
        return SnapshotExpiredError(
            f"product {self.address}: the snapshots of that time were expired by maintenance "
            f"(oldest kept: {oldest}, snapshot {self.main_history[0].snapshot_id})",
            fix=f"choose a time at or after {oldest}, or drop --at to read the current "
            "snapshot; `mesh maintain --retain` and --keep-last set how much history is kept",
        )


@functools.lru_cache(maxsize=256)
def _table_state(
    address: ProductAddress,
    metadata_location: str,
    storage: tuple[tuple[str, str], ...],
    warehouse_root: str,
) -> TableState:
    # A metadata file never changes once written (a commit writes a new one): cache by path.
    return read_table_state(
        address, metadata_location, dict(storage), warehouse_root=warehouse_root
    )


def read_table_state(
    address: ProductAddress,
    metadata_location: str,
    storage: dict[str, str] | None = None,
    *,
    warehouse_root: str | None = None,
) -> TableState:
    """The table state of ``address`` from its metadata file.

    ``storage``: the warehouse's pyiceberg-style properties (s3.*) for a remote location.
    ``warehouse_root``: the mesh's warehouse (``Mesh.warehouse``); the metadata file and the
    table's location must lie in ``<warehouse_root>/<domain>/<table>`` (else
    :class:`~mesh_platform.storage.warehouse.LocationError`, before the file is read). Without
    it (a caller holding a metadata location the platform just wrote), the folder is the one
    the metadata file's own path implies (``<folder>/metadata/<file>``).
    """
    if warehouse_root is not None:
        folder = warehouse.table_folder(warehouse_root, *address.iceberg_identifier)
    else:
        folder = str(metadata_location).rsplit("/", 2)[0]
    product = str(address)
    location = warehouse.check_inside(
        folder, metadata_location, product=product, what="its metadata file"
    )
    meta = _read_metadata(product, location, storage or {})
    table_location = warehouse.check_inside(
        folder,
        meta.get("location", location.rsplit("/", 2)[0]),
        product=product,
        what="the table location in its metadata",
    )
    try:
        return _state_from_metadata(address, location, table_location, meta)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # valid JSON, wrong shape
        raise UnreadableMetadataError(
            product,
            f"its current metadata file {location} is not valid Iceberg table metadata "
            f"(a field is missing or has the wrong type: {one_line(exc)})",
            file=location,
        ) from None


def _read_metadata(product: str, location: str, storage: dict[str, str]) -> dict[str, Any]:
    """The metadata file's JSON object; a missing, unreadable or corrupt file is an
    UnreadableMetadataError naming the product and the file (never a parse error)."""
    try:
        raw = warehouse.read_bytes(location, storage)
    except FileNotFoundError:
        raise UnreadableMetadataError(
            product, f"its current metadata file {location} is missing", file=location
        ) from None
    except OSError as exc:
        raise UnreadableMetadataError(
            product,
            f"its current metadata file {location} could not be read ({one_line(exc)})",
            file=location,
            fix="check that the warehouse is reachable and readable by you, then retry; if the "
            f"file is damaged, run `mesh repair --product {product}`",
        ) from None
    try:
        if location.endswith(".gz.metadata.json"):
            raw = gzip.decompress(raw)
        meta = json.loads(raw)
    except (ValueError, OSError, EOFError) as exc:  # JSON, UTF-8, gzip: truncated or garbled
        raise UnreadableMetadataError(
            product,
            f"its current metadata file {location} is corrupt: not valid JSON "
            f"({len(raw)} bytes; {one_line(exc)})",
            file=location,
        ) from None
    if not isinstance(meta, dict):
        raise UnreadableMetadataError(
            product,
            f"its current metadata file {location} is not an Iceberg table metadata object",
            file=location,
        )
    return meta


def _state_from_metadata(
    address: ProductAddress, location: str, table_location: str, meta: dict[str, Any]
) -> TableState:
    schemas = {
        s["schema-id"]: tuple(f["name"] for f in s.get("fields", []))
        for s in meta.get("schemas", [])
    }
    current_schema = schemas.get(meta.get("current-schema-id"), ())
    snapshots = {}
    for s in meta.get("snapshots", []):
        snapshots[s["snapshot-id"]] = Snapshot(
            s["snapshot-id"],
            s["timestamp-ms"],
            schemas.get(s.get("schema-id"), current_schema),
            {str(k): str(v) for k, v in (s.get("summary") or {}).items()},
            s.get("manifest-list") or "",  # checked when the snapshot is planned (data_files)
            s.get("parent-snapshot-id"),
            int(s.get("sequence-number") or 0),
        )
    # snapshot-log is main's history (branch commits do not enter it).
    history = [
        snapshots[e["snapshot-id"]]
        for e in meta.get("snapshot-log", [])
        if e["snapshot-id"] in snapshots
    ]
    history = [s for s in history if s.summary.get(INITIAL_PROPERTY) != "true"]
    main = ((meta.get("refs") or {}).get("main") or {}).get("snapshot-id")
    main = main if main is not None else meta.get("current-snapshot-id")
    current = snapshots.get(main) if main is not None else None
    if current is not None and current.summary.get(INITIAL_PROPERTY) == "true":
        current = None
    oldest = history[0] if history else None
    expired = oldest is not None and _expired_before(oldest, snapshots)
    log = meta.get("metadata-log") or []
    created = (
        int(log[0]["timestamp-ms"])
        if log and str(log[0].get("metadata-file", "")).rsplit("/", 1)[-1].startswith("00000-")
        else None
    )
    return TableState(
        address,
        location,
        table_location,
        {str(k): str(v) for k, v in (meta.get("properties") or {}).items()},
        current,
        tuple(history),
        max(1, len(schemas)),
        expired,
        created,
        len(snapshots),
    )


def _expired_before(oldest: Snapshot, snapshots: dict[int, Snapshot]) -> bool:
    """Whether published snapshots older than ``oldest`` (main's oldest kept) were expired.

    A first publication's parent is the empty initial snapshot (sequence number 1), so it is
    the table's second snapshot; a republication's parent is the snapshot deleting the rows it
    replaces (staged in the same commit), whose own parent is the previous publication.
    Expiry removes parents and clears the survivors' parent ids (pyiceberg), so: a parent still
    there tells directly; without one, a sequence number above 2 or rows it did not add say
    that something was published before (a batch rejected before the first publication also
    counts, the one case read as expired when it was not)."""
    parent = snapshots.get(oldest.parent_snapshot_id) if oldest.parent_snapshot_id else None
    if parent is not None:
        return parent.summary.get(INITIAL_PROPERTY) != "true"
    return oldest.sequence_number > 2 or _replaced_rows(oldest.summary)


def _replaced_rows(summary: dict[str, str]) -> bool:
    """Whether a snapshot found rows before it (it deleted some, or kept some it did not add)."""

    def number(key: str) -> int:
        value = summary.get(key, "0")
        return int(value) if value.isdigit() else 0

    deleted = number("deleted-records") or number("deleted-data-files")
    return bool(deleted) or number("total-records") != number("added-records")


class UnsupportedTableError(MeshError):
    """A table layout the read path does not handle (delete files)."""


def data_files(conn: Any, state: TableState, snapshot: Snapshot) -> list[str]:
    """The live data files of ``snapshot``: its manifest list, then its manifests (Avro, read
    by DuckDB's avro extension), minus deleted entries.

    The platform publishes copy-on-write (pyiceberg writes no delete files); a snapshot that
    holds delete files (written by another engine) is refused rather than read wrongly. The
    manifest list, each manifest and each data file must lie in the table's (checked) location:
    each is checked before it is read, and the files returned are the checked paths.
    """

    def checked(path: str, what: str) -> str:
        return warehouse.check_inside(state.location, path, product=str(state.address), what=what)

    def read(sql: str, what: str, files: list[str]) -> list[Any]:
        try:
            return conn.execute(sql).fetchall()
        except duckdb.Error as exc:  # missing, truncated or garbled Avro
            listing = files[0] if len(files) == 1 else f"{files[0]} (or another of {len(files)})"
            raise UnreadableMetadataError(
                str(state.address),
                f"{what} of snapshot {snapshot.snapshot_id}, {listing}, could not be read "
                f"({one_line(exc)[:300]})",
                file=files[0],
            ) from None

    if not snapshot.manifest_list:
        raise UnsupportedTableError(
            f"product {state.address} snapshot {snapshot.snapshot_id} has no manifest list",
            fix="republish the product through the platform",
        )
    manifest_list = checked(
        snapshot.manifest_list, f"the manifest list of snapshot {snapshot.snapshot_id}"
    )
    manifests = read(
        f"SELECT manifest_path, content FROM read_avro({quote_literal(manifest_list)})",
        "the manifest list",
        [manifest_list],
    )
    if any(content != 0 for _, content in manifests):
        raise UnsupportedTableError(
            f"product {state.address} snapshot {snapshot.snapshot_id} holds delete files "
            "(merge-on-read), which the mesh's read path does not apply",
            fix="rewrite the table copy-on-write (publish it again through the platform)",
        )
    if not manifests:
        return []
    paths = [checked(p, f"a manifest of snapshot {snapshot.snapshot_id}") for p, _ in manifests]
    listing = ", ".join(quote_literal(p) for p in paths)
    entries = read(
        f"SELECT status, data_file.content, data_file.file_path FROM read_avro([{listing}])",
        "a manifest",
        paths,
    )
    if any(content != 0 for status, content, _ in entries if status != 2):
        raise UnsupportedTableError(
            f"product {state.address} snapshot {snapshot.snapshot_id} lists delete files",
            fix="rewrite the table copy-on-write (publish it again through the platform)",
        )
    return [
        checked(path, f"a data file of snapshot {snapshot.snapshot_id}")
        for status, _, path in entries
        if status != 2  # 2: DELETED
    ]


def scan_sql(
    files: list[str], state: TableState, columns: tuple[str, ...], *, listing: str | None = None
) -> str:
    """A relation reading ``files``; an empty snapshot is an empty relation of its columns.
    ``listing``: SQL naming the file list instead of the literal list (the query engine binds
    it to a session variable, so no statement text carries a path)."""
    if not files:
        nulls = ", ".join(f"NULL AS {quote_ident(c)}" for c in columns) or "NULL AS _"
        return f"(SELECT {nulls} WHERE false)"
    if listing is None:
        listing = "[" + ", ".join(quote_literal(f) for f in files) + "]"
    # Files written before a column was added lack it: match columns by name (Iceberg's name
    # mapping: the platform's Parquet files carry no field ids; renames need a new major).
    union = ", union_by_name = true" if state.schema_count > 1 else ""
    return f"read_parquet({listing}{union})"


CATALOG_BUSY_SECONDS = 10  # how long a read waits for a catalog another process holds locked


class Catalog:
    """Metadata locations of product tables (the pyiceberg SqlCatalog's own table)."""

    def __init__(self, mesh: Mesh) -> None:
        preflight.check(mesh)  # production: the servers answer (a clear error, once per process)
        self.mesh = mesh
        self.uri = mesh.catalog_uri
        # The warehouse's s3.* properties, for remote metadata files.
        self.storage = tuple(sorted(warehouse.s3_properties(mesh).items()))
        self._sqlite: sqlite3.Connection | None = None  # read-only; each SELECT sees commits
        self._postgres: Any = None  # psycopg2 connection (autocommit: each SELECT sees commits)

    def metadata_location(self, address: ProductAddress) -> str | None:
        """The product's current metadata file, None if the catalog has no such table (never
        published). Any other failure to read the catalog (locked, unreadable, not a catalog,
        disk full) is a CatalogUnavailableError: it never reads as "not published"."""
        namespace, table = address.iceberg_identifier
        if self.uri.startswith("sqlite:///"):
            return self._sqlite_location(address, namespace, table)
        if self.uri.startswith("postgresql"):
            return self._postgres_location(namespace, table)
        # Other URIs: through pyiceberg.
        found = load_product_table(open_catalog(self.mesh), address)
        return found.metadata_location if found is not None else None

    def _unavailable(self, cause: BaseException | str) -> MeshError:
        return catalog_unavailable(redact(self.uri), cause, state_dir=self.mesh.state_dir)

    def _sqlite_location(self, address: ProductAddress, namespace: str, table: str) -> str | None:
        db = Path(self.uri.removeprefix("sqlite:///"))
        if not db.is_file():
            if db.exists() or not db.parent.is_dir():  # a folder in its place; no catalog folder
                raise self._unavailable(
                    f"{db} is not a file" if db.exists() else f"{db.parent} does not exist"
                )
            raise ProductNotPublishedError(
                f"product {address} has no published snapshot: nothing was ever published with "
                f"this state dir (no catalog file {db})",
                fix=f"build its domain: `mesh build --domain {address.domain}`; if the mesh was "
                "built, check state_dir in mesh.yaml or MESH_STATE_DIR (now "
                f"{self.mesh.state_dir})",
            )
        try:
            if self._sqlite is None:
                self._sqlite = sqlite3.connect(
                    f"file:{db}?mode=ro", uri=True, timeout=CATALOG_BUSY_SECONDS,
                    check_same_thread=False,
                )  # fmt: skip
            row = self._sqlite.execute(
                "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = ? AND "
                "table_namespace = ? AND table_name = ?",
                (self.mesh.settings.catalog.name, namespace, table),
            ).fetchone()
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(
                "no such table: iceberg_tables"
            ):  # the catalog was created, nothing was ever published
                return None
            self.close()  # the next read opens a fresh connection
            raise self._unavailable(exc) from None
        return row[0] if row else None

    def _postgres_location(self, namespace: str, table: str) -> str | None:
        """The catalog row on PostgreSQL, read with psycopg2 (not pyiceberg: its import costs
        seconds); pyiceberg's SqlCatalog and Iceberg's JdbcCatalog share this table."""
        import psycopg2  # heavy: ~0.1 s, and only a PostgreSQL catalog needs it

        try:
            if self._postgres is None:
                self._postgres = psycopg2.connect(**pg_connect_args(self.uri), connect_timeout=10)
                self._postgres.autocommit = True
            with self._postgres.cursor() as cursor:
                try:
                    cursor.execute(
                        "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = %s "
                        "AND table_namespace = %s AND table_name = %s",
                        (self.mesh.settings.catalog.name, namespace, table),
                    )
                except psycopg2.errors.UndefinedTable:  # nothing was ever published
                    return None
                row = cursor.fetchone()
        except psycopg2.Error as exc:
            self.close()
            raise self._unavailable(exc) from None
        return row[0] if row else None

    def close(self) -> None:
        if self._sqlite is not None:
            with contextlib.suppress(sqlite3.Error):
                self._sqlite.close()
            self._sqlite = None
        if self._postgres is not None:
            with contextlib.suppress(Exception):  # a connection the server dropped
                self._postgres.close()
            self._postgres = None

    def table_state(self, address: ProductAddress) -> TableState:
        location = self.metadata_location(address)
        if location is None:
            raise ProductNotPublishedError(
                f"product {address} has no published snapshot (no Iceberg table yet)",
                fix=f"build its domain: `mesh build --domain {address.domain}`",
            )
        return _table_state(address, location, self.storage, self.mesh.warehouse)
