"""``mesh repair``: bring a product whose current metadata is broken back to a readable state.

A product's current metadata is the file its catalog row points at, and through it main's
snapshot: its manifest list, manifests and data files. A full disk, a bad copy, a faulty tool or
a hand edit can leave one of them missing or corrupt; every reader then fails closed, naming the
file (:class:`~mesh_platform.errors.UnreadableMetadataError`). :func:`repair`:

1. takes the product's publication lock without waiting (``locks.product_lock``): while a
   publication holds it, nothing is touched and the repair is refused;
2. checks the current state as a reader needs it: the metadata file loads (pyiceberg's own
   parser), and main's snapshot is whole (manifest list and manifests read, data files exist).
   A whole product is left alone;
3. otherwise rolls the catalog pointer back to the newest metadata file that is whole and known
   to have been committed: the catalog row's previous metadata location, then the files listed
   in a readable metadata file's metadata log, newest first (a file merely lying in the folder
   may be the loser of a commit race, whose main was never published: it is used only when it
   is the sole file of its version number). The pointer moves with a compare-and-swap on the
   catalog row, so a concurrent writer that moved the table makes the repair fail instead;
4. a batch the chosen file holds on an audit branch, ahead of main, was usually published by
   the very commit that broke (publication is the last commit of a run): when the caller's
   ``acknowledged`` says it was published (a Dagster materialisation recorded that snapshot,
   which is reported only after publication), main is fast-forwarded to it again, as
   publication does; otherwise it stays on its branch, reported;
5. says what the rollback loses: main before and after, and every snapshot the broken file
   knew (or, when it cannot be parsed, every snapshot whose manifest list was written after
   the chosen file) that the chosen file does not. The row's previous metadata location becomes
   the chosen file's own predecessor (readers and maintenance may read it); the broken file is
   left in place, unreferenced (``mesh maintain`` removes it after its orphan margin);
6. if no whole metadata file is left, drops the catalog entry (the files stay in the warehouse,
   the history is unreadable anyway) so that ``mesh build --full-refresh --product P``
   recreates the table from its sources (the CLI prints that command).

Nothing here deletes a file. Longer than ~450 lines because each of these steps guards a healthy
product against a wrong repair, and they are checked by reading them together (the report is in
:mod:`mesh_platform.storage.repair_report`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.io import FileIO, load_file_io
from pyiceberg.serializers import FromInputFile
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import ancestors_of
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import ConcurrentPublishError, MeshError, catalog_unavailable, one_line
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import catalog_row
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.metadata import INITIAL_PROPERTY
from mesh_platform.storage.repair_report import RepairReport, SnapshotNote, snapshot_note

_VERSION = re.compile(r"^(\d+)-.*\.metadata\.json$")
_MANIFEST_LIST = re.compile(r"^snap-(-?\d+)-")


class RepairRefusedError(MeshError):
    """The repair cannot act now (a publication holds the product's lock, the table moved)."""


def _main_id(metadata: TableMetadata) -> int | None:
    main = metadata.refs.get("main")
    return main.snapshot_id if main is not None else metadata.current_snapshot_id


def _published(metadata: TableMetadata, snapshot_id: int | None) -> bool:
    snapshot = metadata.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    summary = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
    return snapshot is not None and summary.get(INITIAL_PROPERTY) != "true"


class _Table:
    """One product's table: its catalog row, folder and file IO."""

    def __init__(self, catalog: SqlCatalog, address: ProductAddress) -> None:
        self.catalog = catalog
        self.address = address
        self.folder = warehouse.table_folder(
            catalog.properties["warehouse"], *address.iceberg_identifier
        )
        self.io: FileIO = load_file_io(catalog.properties, self.folder)

    def row(self) -> tuple[str, str | None] | None:
        try:
            found = catalog_row(self.catalog, self.address)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from exc
        return (found.metadata_location, found.previous_metadata_location) if found else None

    def _unavailable(self, exc: Exception) -> MeshError:
        return catalog_unavailable(
            self.catalog.engine.url.render_as_string(hide_password=True), exc
        )

    def inside(self, location: str) -> bool:
        return warehouse.contains(self.folder, location)

    def load(self, location: str) -> TableMetadata:
        """The metadata file parsed as pyiceberg loads a table (any failure raises)."""
        if not self.inside(location):
            raise ValueError(f"it lies outside the table's folder {self.folder}")
        return FromInputFile.table_metadata(self.io.new_input(location))

    def problem(self, metadata: TableMetadata, snapshot_id: int | None = None) -> str | None:
        """Why main's snapshot of ``metadata`` (or ``snapshot_id``) cannot be read whole
        (None: it can)."""
        if not self.inside(metadata.location):
            return f"its table location {metadata.location} lies outside {self.folder}"
        snapshot_id = _main_id(metadata) if snapshot_id is None else snapshot_id
        if snapshot_id is None:
            return None
        snapshot = metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            return f"main points at snapshot {snapshot_id}, which it does not list"
        try:
            manifests = snapshot.manifests(self.io)
        except Exception as exc:
            _refuse_if_storage(exc, snapshot.manifest_list)
            return f"the manifest list {snapshot.manifest_list} cannot be read ({one_line(exc)})"
        for manifest in manifests:
            try:
                entries = manifest.fetch_manifest_entry(self.io, discard_deleted=True)
            except Exception as exc:
                _refuse_if_storage(exc, manifest.manifest_path)
                return f"the manifest {manifest.manifest_path} cannot be read ({one_line(exc)})"
            for entry in entries:
                path = entry.data_file.file_path
                if not self.inside(path):
                    return f"the data file {path} lies outside {self.folder}"
                if why := _not_parquet(self.io, path):
                    return f"the data file {path} of snapshot {snapshot_id} {why}"
        return None

    def _listing(self) -> list[str]:
        """The files of the table's metadata folder, as locations of the folder's kind."""
        folder = warehouse.join(self.folder, "metadata")
        files = [location for location, _ in warehouse.list_files(folder, self.catalog.properties)]
        if self.folder.startswith("file://"):
            files = [f if "://" in f else f"file://{f}" for f in files]
        return files

    def metadata_files(self) -> list[str]:
        """The metadata files in the table's metadata folder."""
        return [location for location in self._listing() if location.endswith(".metadata.json")]

    def manifest_lists(self) -> dict[int, str]:
        """snapshot id -> its manifest list file, from the names in the metadata folder."""
        found = {}
        for location in self._listing():
            if match := _MANIFEST_LIST.match(location.rsplit("/", 1)[-1]):
                found[int(match.group(1))] = location
        return found


class StorageAccessError(MeshError):
    """A file could not be read for a reason that is not its content (permissions, the object
    store refusing, an I/O error): repair must not mistake it for corruption."""


def _refuse_if_storage(exc: BaseException, location: str) -> None:
    """Raise StorageAccessError when ``exc`` is an access or I/O failure rather than a missing
    or corrupt file: repair then changes nothing (dropping or rolling back on a permission
    error would throw away a healthy product)."""
    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
            raise StorageAccessError(
                f"{location} cannot be read ({one_line(cause)}): an access or storage error, "
                "not corrupt metadata; repair changed nothing",
                fix="restore read access to the warehouse (permissions, credentials, the "
                "object store), then run the command again",
            ) from exc


def _not_parquet(io: FileIO, path: str) -> str | None:
    """Why ``path`` is not a whole Parquet file (missing, truncated: no footer), or None."""
    source = io.new_input(path)
    if not source.exists():
        return "is missing"
    try:
        size = len(source)
        with source.open(seekable=True) as stream:
            head = stream.read(4)
            stream.seek(max(0, size - 4))
            tail = stream.read(4)
    except OSError as exc:
        _refuse_if_storage(exc, path)
        return f"cannot be read ({one_line(exc)})"
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        return f"is not a whole Parquet file ({size} bytes: truncated or corrupt)"
    return None


def _version(location: str) -> int | None:
    match = _VERSION.match(location.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def _same(a: str, b: str) -> bool:
    return a.removeprefix("file://") == b.removeprefix("file://")


def _candidates(
    table: _Table, broken: str, previous: str | None, parsed: dict[str, TableMetadata]
) -> list[tuple[str, str]]:
    """(location, how it is known to be committed), best first: the row's previous location,
    the files a readable metadata file's log lists (newest first), then files alone at their
    version number in the folder. Only versions older than the broken file's."""
    ceiling = _version(broken)
    files = table.metadata_files()

    def older(location: str) -> bool:
        version = _version(location)
        return ceiling is None or (version is not None and version < ceiling)

    ordered: list[tuple[str, str]] = []
    if previous and older(previous):
        ordered.append((previous, "the catalog's previous metadata location"))
    logged: dict[str, int] = {}
    for metadata in parsed.values():
        for entry in metadata.metadata_log:
            logged[entry.metadata_file] = entry.timestamp_ms
    for location in sorted(logged, key=lambda loc: _version(loc) or -1, reverse=True):
        if older(location):
            ordered.append((location, "listed in the metadata log of a committed file"))
    by_version: dict[int, list[str]] = {}
    for location in files:
        if (version := _version(location)) is not None:
            by_version.setdefault(version, []).append(location)
    for version in sorted(by_version, reverse=True):
        if len(by_version[version]) == 1 and older(by_version[version][0]):
            ordered.append((by_version[version][0], "the only file of its version in the folder"))
    seen: list[str] = []
    result = []
    for location, why in ordered:
        if any(_same(location, s) for s in seen) or _same(location, broken):
            continue
        seen.append(location)
        result.append((location, why))
    return result


Acknowledged = Callable[[ProductAddress, int], bool]


def repair(
    catalog: SqlCatalog,
    address: ProductAddress,
    *,
    dry_run: bool = False,
    acknowledged: Acknowledged | None = None,
    drop: bool = False,
) -> RepairReport:
    """Check ``address``'s current metadata and, if it is broken, roll the catalog pointer back
    to the newest whole committed metadata file (or, with ``drop``, drop the catalog entry when
    none is left: never on an access error, which raises StorageAccessError);
    refuses while a publication holds the product's lock. ``acknowledged(address, snapshot)``:
    whether that snapshot's publication was acknowledged (the orchestrator's record); a batch
    it vouches for is published again. See the module's docstring."""
    table = _Table(catalog, address)
    try:
        with product_lock(catalog, address, timeout=0):
            return _repair(table, dry_run=dry_run, acknowledged=acknowledged, drop=drop)
    except ConcurrentPublishError:
        raise RepairRefusedError(
            f"product {address}: a publication holds its lock right now; repair refused, "
            "nothing was changed",
            fix=f"wait for the running `mesh build` of domain {address.domain} (or its run in "
            f"the Dagster UI) to finish, then run `mesh repair --product {address}` again",
        ) from None


def _repair(
    table: _Table, *, dry_run: bool, acknowledged: Acknowledged | None, drop: bool = False
) -> RepairReport:
    address = table.address
    found = table.row()
    if found is None:
        raise MeshError(
            f"product {address} has no table in the catalog: nothing to repair",
            fix=f"publish it: `mesh build --domain {address.domain}`",
        )
    broken, previous = found
    parsed: dict[str, TableMetadata] = {}
    current: TableMetadata | None = None
    try:
        current = table.load(broken)
        parsed[broken] = current
        problem = table.problem(current)
    except StorageAccessError:
        raise
    except Exception as exc:
        _refuse_if_storage(exc, broken)
        problem = f"it cannot be loaded ({one_line(exc)[:300]})"
    report = RepairReport(address, broken, problem)
    if current is not None:
        report.main_before = snapshot_note(current, _main_id(current))
    if problem is None:
        return report

    chosen = _choose(table, report, previous, parsed)
    if chosen is None:
        report.action = "dropped" if drop and not dry_run else "would drop"
        if drop and not dry_run:
            try:
                table.catalog.drop_table(address.iceberg_identifier)
            except SQLAlchemyError as exc:
                raise table._unavailable(exc) from exc
        return report

    location, why, metadata = chosen
    report.restored, report.restored_from = location, why
    main_after = _main_id(metadata)
    report.main_after = (
        snapshot_note(metadata, main_after) if _published(metadata, main_after) else None
    )
    kept = {s.snapshot_id for s in metadata.snapshots}
    if current is not None:
        report.lost = [
            note
            for s in current.snapshots
            if s.snapshot_id not in kept
            and (note := snapshot_note(current, s.snapshot_id)) is not None
            and _published(current, s.snapshot_id)
        ]
    else:
        report.lost_unknown = sorted(i for i in table.manifest_lists() if i not in kept)
    report.action = "would roll back" if dry_run else "rolled back"
    chosen_batch = _acknowledged_batch(table, report, metadata, acknowledged)
    if chosen_batch is not None:
        report.republished = chosen_batch
        report.main_after = SnapshotNote(
            chosen_batch.snapshot_id, chosen_batch.when, chosen_batch.batch_id, ("main",)
        )
        report.lost = [n for n in report.lost if n.snapshot_id != chosen_batch.snapshot_id]
    if not dry_run:
        log = metadata.metadata_log
        _move_pointer(table, broken, location, log[-1].metadata_file if log else location)
        if chosen_batch is not None:
            _fast_forward(table, chosen_batch)
    return report


def _choose(
    table: _Table, report: RepairReport, previous: str | None, parsed: dict[str, TableMetadata]
) -> tuple[str, str, TableMetadata] | None:
    """The newest whole committed metadata file (location, how it is known to be committed,
    its metadata), or None; the files passed over are added to the report, the files parsed
    to ``parsed`` (their metadata logs name older committed files)."""
    tried: set[str] = set()
    while True:
        pending = [
            c for c in _candidates(table, report.broken, previous, parsed) if c[0] not in tried
        ]
        if not pending:
            return None
        location, why = pending[0]
        tried.add(location)
        try:
            metadata = table.load(location)
        except Exception as exc:
            _refuse_if_storage(exc, location)
            report.skipped.append((location, f"cannot be loaded ({one_line(exc)[:200]})"))
            continue
        parsed[location] = metadata  # its metadata log names older committed files
        if why_not := table.problem(metadata):
            report.skipped.append((location, why_not))
            continue
        return location, why, metadata


def _acknowledged_batch(
    table: _Table,
    report: RepairReport,
    metadata: TableMetadata,
    acknowledged: Acknowledged | None,
) -> SnapshotNote | None:
    """The newest batch staged ahead of main in ``metadata`` whose publication was
    acknowledged and which reads whole (to publish again); every other one staged ahead is
    added to the report with why it stays on its branch."""
    vouched, left = [], []
    for note in _staged_ahead(metadata):
        if acknowledged is None or not acknowledged(table.address, note.snapshot_id):
            why = "no acknowledged publication records it (the broken commit may have published it)"
        elif broken_batch := table.problem(metadata, note.snapshot_id):
            why = f"it was published, but cannot be read whole: {broken_batch}"
        else:
            vouched.append(note)
            continue
        left.append((note, why))
    chosen_batch = max(vouched, key=lambda s: s.when) if vouched else None
    report.staged = left + [
        (n, "a newer acknowledged batch was published instead")
        for n in vouched
        if n is not chosen_batch
    ]
    return chosen_batch


def _staged_ahead(metadata: TableMetadata) -> list[SnapshotNote]:
    """Heads of audit branches that descend from main and are not main: batches staged and not
    (or no longer) published in ``metadata``."""
    main = _main_id(metadata)
    found = []
    for name, ref in sorted(metadata.refs.items()):
        if name == "main" or ref.snapshot_id == main:
            continue
        # Without main, every branch's walk ends where main is (nowhere): all are ahead.
        descends = main is None or any(
            s.snapshot_id == main
            for s in ancestors_of(metadata.snapshot_by_id(ref.snapshot_id), metadata)
        )
        if descends and (note := snapshot_note(metadata, ref.snapshot_id)) is not None:
            found.append(note)
    return found


def _fast_forward(table: _Table, batch: SnapshotNote) -> None:
    """Publish ``batch`` again as publication does: main to its snapshot, its branch removed
    (the caller holds the product's lock; the commit checks main did not move)."""
    loaded = table.catalog.load_table(table.address.iceberg_identifier)
    with loaded.manage_snapshots() as refs:
        refs.set_current_snapshot(snapshot_id=batch.snapshot_id)
        for branch in batch.refs:
            if branch != "main":
                refs.remove_branch(branch)


def _move_pointer(table: _Table, expected: str, location: str, previous: str) -> None:
    """Point the catalog row at ``location`` (and its previous location at ``previous``) if it
    still points at ``expected``."""
    namespace, name = table.address.iceberg_identifier
    try:
        with Session(table.catalog.engine) as session, session.begin():
            result = session.execute(
                update(IcebergTables)
                .where(
                    IcebergTables.catalog_name == table.catalog.name,
                    IcebergTables.table_namespace == namespace,
                    IcebergTables.table_name == name,
                    IcebergTables.metadata_location == expected,
                )
                .values(metadata_location=location, previous_metadata_location=previous)
            )
            moved = result.rowcount
    except SQLAlchemyError as exc:
        raise table._unavailable(exc) from exc
    if moved != 1:
        raise RepairRefusedError(
            f"product {table.address}: its table moved while it was being repaired (a writer "
            "that does not take the product's lock); nothing was changed",
            fix=f"run `mesh repair --product {table.address}` again",
        )
