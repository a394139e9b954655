"""The SLA history: every gate evaluation of every product, kept in the mesh itself.

One row per product per publication attempt (``kind = 'gate'``) and per freshness evaluation
(``kind = 'freshness'``): when, which run, its ``status``, whether the batch was published and
at which snapshot, each check's result, the rows staged and how long publication took. The
status tells a judgement of the data from a failure of the platform: a gate event is
``published``, ``blocked`` (a blocking check failed) or ``infrastructure_error`` (the catalog or
the warehouse failed: no check judged the data, main kept its snapshot); a freshness event is
``fresh``, ``stale`` or ``infrastructure_error`` (the catalog could not be read). Rows go to the
platform's own Iceberg table ``mesh.sla_history`` (namespace ``mesh`` is reserved: no domain can
take it), so the history is as durable as the products, can be time travelled, and is queryable
with ``mesh query`` like any product (every principal may read it: it holds no data of the
products, only their outcomes). Tables written before ``event_id`` and ``status`` existed gain
them on the next append (schema evolution); their old rows read with a derived status.

Nothing is dropped. Writers of the table take turns under the product lock
(:func:`mesh_platform.storage.iceberg.product_lock`: a file lock on sqlite, an advisory lock on
PostgreSQL; measured: 8 processes appending 8 events each without it lost 6 of 64 to commit
conflicts, pyiceberg's own retries exhausted), and a commit that still conflicts is retried on
a reloaded table. Events the catalog refuses (locked, down, disk full) are kept in a local
journal, ``<state>/sla/journal/*.jsonl`` (owner-only, like the quarantine records), and written
by the next :func:`record` or :func:`read_history`, exactly once: every event has a stable id
and the ids already in the table are skipped. Until then :func:`read_history` includes them
(:func:`pending` says how many, and why they wait).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import PLATFORM_NAMESPACE, ProductAddress
from mesh_platform.config import PRIVATE_FILE_MODE, Mesh, make_private_dir
from mesh_platform.errors import MeshError

if TYPE_CHECKING:
    import pyarrow as pa

    from mesh_platform.products.publish import Publication

HISTORY = ProductAddress(PLATFORM_NAMESPACE, "sla_history")
# How publish_products (mesh_platform.dbt.run) words a publication that raised: the catalog or
# the warehouse failed (catalog down, disk full, a crash), no check judged the data.
INFRASTRUCTURE_FAILURE = "publication to Iceberg failed"
INFRASTRUCTURE_ERROR = "infrastructure_error"
STATUSES = {
    "gate": ("published", "blocked", INFRASTRUCTURE_ERROR),
    "freshness": ("fresh", "stale", INFRASTRUCTURE_ERROR),
}
COMMIT_ATTEMPTS = 6  # each after pyiceberg's own retries, on a reloaded table
_COLUMNS = (
    ("recorded_at", "timestamp with time zone", "When the gate evaluated the batch (UTC)."),
    ("kind", "varchar", "'gate': a gate evaluation; 'freshness': a freshness evaluation."),
    ("address", "varchar", "The product's address."),
    ("run_id", "varchar", "The Dagster run (also the batch id)."),
    ("published", "boolean", "Whether the batch became main's snapshot."),
    ("snapshot_id", "bigint", "main's new snapshot, if published."),
    ("passed", "boolean", "Published, with no blocking check failed."),
    ("failed_checks", "varchar", "Blocking checks that failed, comma-separated."),
    ("checks", "varchar", "Every check's result, JSON {check: passed}."),
    ("rows", "bigint", "Rows of the staged snapshot."),
    ("seconds", "double", "Time the publication took."),
    ("detail", "varchar", "Why it was not published."),
    ("event_id", "varchar", "The event's stable id: kind, product, run and time."),
    (
        "status",
        "varchar",
        "gate: published | blocked (a check failed) | infrastructure_error (catalog or "
        "warehouse failed, main kept its snapshot); freshness: fresh | stale | "
        "infrastructure_error (the catalog could not be read).",
    ),
)


def history_descriptor() -> Any:
    """The descriptor of ``mesh.sla_history``: a platform product every principal may read."""
    from mesh_platform.products.descriptor import DescriptorBody, ProductDescriptor

    return ProductDescriptor(
        domain=HISTORY.domain,
        name=HISTORY.product,
        description="Every gate evaluation of every product: checks, rows, snapshot, duration.",
        body=DescriptorBody(
            purpose="SLA history of the mesh: attainment, error budgets, breaches (mesh sla).",
            owner={"team": "platform", "contact": "platform@example.com"},
            version="1.0.0",
        ),
        columns=[
            {"name": n, "data_type": t, "description": d, "classification": "internal"}
            for n, t, d in _COLUMNS
        ],
        source_file="mesh_platform/sla/history.py",
        built_with="python",
    )


def derive_status(kind: str, published: bool, detail: str | None) -> str:
    """The status of an event that does not say (the rows written before ``status`` existed);
    an infrastructure error of a freshness evaluation is always said explicitly."""
    if kind == "freshness":
        return "fresh" if published else "stale"
    if published:
        return "published"
    return INFRASTRUCTURE_ERROR if (detail or "").startswith(INFRASTRUCTURE_FAILURE) else "blocked"


@dataclass(frozen=True)
class GateEvent:
    """One product's gate evaluation in one run."""

    recorded_at: dt.datetime
    address: str
    run_id: str
    published: bool
    snapshot_id: int | None
    checks: Mapping[str, bool]  # check name -> passed (blocking failures make published False)
    failed: tuple[str, ...]  # blocking checks that failed
    rows: int | None
    seconds: float
    detail: str = ""
    kind: str = "gate"  # gate | freshness (published = a fresh snapshot was available)
    status: str = ""  # one of STATUSES[kind]; derived from the other fields when not given

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(
                self, "status", derive_status(self.kind, self.published, self.detail)
            )
        if self.status not in STATUSES.get(self.kind, ()):
            raise ValueError(f"SLA event of kind {self.kind!r} with status {self.status!r}")

    @property
    def event_id(self) -> str:
        """Stable across retries, the journal and its replay: what makes a replay exactly once
        (a retried step of the same run evaluates at another time: another event)."""
        at = self.recorded_at.astimezone(dt.UTC).isoformat(timespec="microseconds")
        return f"{self.kind}:{self.address}:{self.run_id}:{at}"

    @property
    def infrastructure_error(self) -> bool:
        """The platform failed, not the data: no check judged it."""
        return self.status == INFRASTRUCTURE_ERROR

    @classmethod
    def of(cls, publication: Publication, run_id: str, at: dt.datetime | None = None) -> GateEvent:
        stage = publication.stage
        return cls(
            recorded_at=at or dt.datetime.now(dt.UTC),
            address=str(publication.descriptor.address),
            run_id=run_id,
            published=publication.published,
            snapshot_id=publication.snapshot_id,
            checks={name: o.passed for name, o in publication.outcomes.items()},
            failed=tuple(publication.failed_checks),
            rows=stage.total_rows if stage is not None else None,
            seconds=round(publication.seconds, 3),
            detail=(publication.error or "")[:500],
        )


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("address", pa.string(), nullable=False),
            pa.field("run_id", pa.string()),
            pa.field("published", pa.bool_()),
            pa.field("snapshot_id", pa.int64()),
            pa.field("passed", pa.bool_()),
            pa.field("failed_checks", pa.string()),
            pa.field("checks", pa.string()),  # JSON: {check: passed}
            pa.field("rows", pa.int64()),
            pa.field("seconds", pa.float64()),
            pa.field("detail", pa.string()),
            pa.field("event_id", pa.string()),
            pa.field("status", pa.string()),
        ]
    )


def to_arrow(events: Iterable[GateEvent]) -> pa.Table:
    import pyarrow as pa

    events = list(events)
    return pa.Table.from_pylist(
        [
            {
                "recorded_at": e.recorded_at,
                "kind": e.kind,
                "address": e.address,
                "run_id": e.run_id,
                "published": e.published,
                "snapshot_id": e.snapshot_id,
                "passed": not e.failed and e.published,
                "failed_checks": ",".join(e.failed),
                "checks": json.dumps(dict(e.checks), sort_keys=True),
                "rows": e.rows,
                "seconds": e.seconds,
                "detail": e.detail,
                "event_id": e.event_id,
                "status": e.status,
            }
            for e in events
        ],
        schema=_schema(),
    )


def _to_json(event: GateEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "recorded_at": event.recorded_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "kind": event.kind,
        "status": event.status,
        "address": event.address,
        "run_id": event.run_id,
        "published": event.published,
        "snapshot_id": event.snapshot_id,
        "checks": dict(event.checks),
        "failed": list(event.failed),
        "rows": event.rows,
        "seconds": event.seconds,
        "detail": event.detail,
    }


def _from_json(entry: Mapping[str, Any]) -> GateEvent:
    return GateEvent(
        recorded_at=dt.datetime.fromisoformat(entry["recorded_at"]),
        address=entry["address"],
        run_id=entry["run_id"],
        published=bool(entry["published"]),
        snapshot_id=entry["snapshot_id"],
        checks={str(k): bool(v) for k, v in entry["checks"].items()},
        failed=tuple(entry["failed"]),
        rows=entry["rows"],
        seconds=float(entry["seconds"]),
        detail=entry["detail"],
        kind=entry["kind"],
        status=entry["status"],
    )


# The journal: events the catalog refused, one file per refusal.


def journal_dir(mesh: Mesh) -> Path:
    """Where events the catalog refused wait for the next record (owner-only)."""
    return mesh.state_dir / "sla" / "journal"


def _journal_files(mesh: Mesh) -> list[Path]:
    folder = journal_dir(mesh)
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def _journal(mesh: Mesh, events: list[GateEvent], why: str) -> Path:
    """Keep ``events`` in a new journal file, written whole or not at all (a temporary file
    renamed into place: a reader never sees half of it), created 0600 in a 0700 folder: its
    details can name files and hosts."""
    folder = make_private_dir(journal_dir(mesh))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
    tmp = folder / f".{path.name}.tmp"
    data = "".join(
        json.dumps({**_to_json(e), "why": why}, sort_keys=True) + "\n" for e in events
    ).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class Pending:
    """Events in the journal, not yet in ``mesh.sla_history``."""

    events: list[GateEvent]
    files: list[Path]  # the journal files holding them
    why: str | None  # why the catalog refused the latest of them
    unreadable: list[Path]  # journal files that cannot be parsed: kept, never replayed

    def __len__(self) -> int:
        return len(self.events)


def pending(mesh: Mesh) -> Pending:
    """The journal's events (each once, oldest first)."""
    events: dict[str, GateEvent] = {}
    files, unreadable = [], []
    why = None
    for path in _journal_files(mesh):
        try:
            entries = [json.loads(line) for line in path.read_text().splitlines() if line]
            found = [_from_json(entry) for entry in entries]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            unreadable.append(path)
            continue
        files.append(path)
        for entry, event in zip(entries, found, strict=True):
            events.setdefault(event.event_id, event)
            why = entry.get("why") or why
    return Pending(sorted(events.values(), key=lambda e: e.recorded_at), files, why, unreadable)


# Writing the table.


@dataclass(frozen=True)
class Recorded:
    """What :func:`record` did."""

    written: int  # events appended to mesh.sla_history (journaled ones replayed included)
    replayed: int  # of them, events journaled earlier
    journaled: int  # events waiting in the journal now (this call's refused ones included)
    error: str | None = None  # why the catalog refused them
    journal: Path | None = None  # the journal file this call's events were kept in
    unreadable: tuple[Path, ...] = ()  # journal files that cannot be parsed (never replayed)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _history_table(catalog: Any) -> Any:
    """``mesh.sla_history``, created on first use; a table of an older schema gains the new
    columns (optional, so its old rows and older writers stay valid)."""
    from pyiceberg.exceptions import NoSuchTableError

    from mesh_platform.storage.iceberg import ensure_namespace

    schema = _schema()
    try:
        table = catalog.load_table(HISTORY.iceberg_identifier)
    except NoSuchTableError:
        ensure_namespace(catalog, PLATFORM_NAMESPACE)
        return catalog.create_table_if_not_exists(
            HISTORY.iceberg_identifier,
            schema=schema,
            properties={
                "comment": "Gate evaluations of every product (mesh_platform.sla.history)",
                "mesh.address": str(HISTORY),
                "mesh.owner": "platform",
            },
        )
    have = {field.name for field in table.schema().fields}
    if not set(schema.names) <= have:
        with table.update_schema() as update:
            update.union_by_name(schema)
        table = catalog.load_table(HISTORY.iceberg_identifier)
    return table


def _append(catalog: Any, table: Any, data: pa.Table) -> None:
    """Append, retrying a commit another writer won (writers that do not take the lock, or
    other hosts' catalogs without one) on a reloaded table: a stale table object keeps failing
    (FIELD-NOTES)."""
    from mesh_platform.storage.iceberg import _is_concurrent_commit

    for attempt in range(COMMIT_ATTEMPTS):
        try:
            table.append(data)
            return
        except Exception as exc:
            if not _is_concurrent_commit(exc) or attempt == COMMIT_ATTEMPTS - 1:
                raise
        time.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
        table = catalog.load_table(HISTORY.iceberg_identifier)


def _not_recorded(table: Any, events: list[GateEvent]) -> list[GateEvent]:
    """``events`` whose ids are not in the table (a replay interrupted after its commit, or an
    append that failed after committing, must not write them twice)."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, In

    if not events:
        return []
    ids = {e.event_id for e in events}
    since = min(e.recorded_at for e in events)
    found = table.scan(
        row_filter=And(GreaterThanOrEqual("recorded_at", since.isoformat()), In("event_id", ids)),
        selected_fields=("event_id",),
    ).to_arrow()
    present = set(found.column("event_id").to_pylist())
    return [e for e in events if e.event_id not in present]


def record(mesh: Mesh, events: Iterable[GateEvent], catalog: Any = None) -> Recorded:
    """Append ``events`` to ``mesh.sla_history`` (created on first use), with every event the
    journal holds, in one commit under the table's lock.

    When the catalog refuses (locked, down, disk full), ``events`` go to the journal and the
    result says why; the next call writes them. Raises MeshError only when the journal cannot
    be written either: the events would be lost, and the caller must say so."""
    from mesh_platform.storage.iceberg import open_catalog, product_lock

    events = list(events)
    if not events and not _journal_files(mesh):
        return Recorded(0, 0, 0)
    own = catalog is None
    backlog = Pending([], [], None, [])
    try:
        if own:
            catalog = open_catalog(mesh)
        with product_lock(catalog, HISTORY):
            backlog = pending(mesh)  # read under the lock: no other replay in between
            table = _history_table(catalog)
            replay = _not_recorded(table, backlog.events)
            if replay or events:
                _append(catalog, table, to_arrow([*replay, *events]))
            for path in backlog.files:  # written (or already there): done with them
                path.unlink(missing_ok=True)
        return Recorded(
            len(replay) + len(events), len(replay), 0, unreadable=tuple(backlog.unreadable)
        )
    except Exception as exc:  # the catalog or the warehouse failed: keep them for the next run
        why = _why(exc)
        backlog = backlog if backlog.files else pending(mesh)
        waiting, unreadable = len(backlog), tuple(backlog.unreadable)
        if not events:
            return Recorded(0, 0, waiting, why, unreadable=unreadable)
        try:
            path = _journal(mesh, events, why)
        except OSError as journal_exc:
            raise MeshError(
                f"SLA history: {len(events)} event(s) could not be written to {HISTORY} ({why}) "
                f"nor kept in the journal {journal_dir(mesh)} ({_why(journal_exc)}); they are "
                f"lost: {_summary(events)}",
                fix="check the catalog and the state dir (free space, permissions); `mesh sla` "
                "misses these evaluations",
            ) from exc
        return Recorded(0, 0, waiting + len(events), why, path, unreadable)
    finally:
        if own and catalog is not None:
            catalog.engine.dispose()


def replay_journal(mesh: Mesh) -> Recorded:
    """Write the journaled events to ``mesh.sla_history`` now (if the catalog takes them)."""
    return record(mesh, [])


def _summary(events: list[GateEvent], limit: int = 20) -> str:
    shown = ", ".join(f"{e.address} {e.kind} {e.status} (run {e.run_id})" for e in events[:limit])
    return shown + (f" and {len(events) - limit} more" if len(events) > limit else "")


# Reading it.


def _conform(data: pa.Table) -> pa.Table:
    """``data`` with every column of the current schema (absent ones null), in its order, and a
    status on every row (rows written before ``status`` existed: derived)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = _schema()
    columns = [
        data.column(f.name).cast(f.type) if f.name in data.column_names
        else pa.nulls(data.num_rows, f.type)
        for f in schema
    ]  # fmt: skip
    data = pa.Table.from_arrays(columns, schema=schema)
    status = data.column("status")
    if status.null_count:
        freshness = pc.equal(data.column("kind"), "freshness")
        published = pc.fill_null(data.column("published"), False)
        infrastructure = pc.starts_with(
            pc.fill_null(data.column("detail"), ""), INFRASTRUCTURE_FAILURE
        )
        derived = pc.if_else(
            freshness,
            pc.if_else(published, "fresh", "stale"),
            pc.if_else(
                published, "published", pc.if_else(infrastructure, INFRASTRUCTURE_ERROR, "blocked")
            ),
        )
        data = data.set_column(
            schema.get_field_index("status"), "status", pc.coalesce(status, derived)
        )
    return data


def read_history(
    mesh: Mesh,
    *,
    since: dt.datetime | None = None,
    addresses: Iterable[str] | None = None,
    replay: bool = True,
) -> pa.Table:
    """The recorded events (all, or since a time, or of some products), oldest first.

    Journaled events are written first (``replay``); those the catalog still refuses are
    included all the same (see :func:`pending`): they happened, only their row is late."""
    import pyarrow as pa
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In

    from mesh_platform.storage.iceberg import open_catalog

    if replay and _journal_files(mesh):
        replay_journal(mesh)
    # The journal before the table: an event replayed in between is then in both (dropped
    # from the journal's below by id), never in neither.
    backlog = pending(mesh)
    wanted = set(addresses) if addresses is not None else None
    catalog = open_catalog(mesh)
    try:
        try:
            table = catalog.load_table(HISTORY.iceberg_identifier)
        except NoSuchTableError:
            data = _schema().empty_table()
        else:
            condition: Any = AlwaysTrue()
            if since is not None:
                condition = GreaterThanOrEqual("recorded_at", since.isoformat())
            if wanted is not None:
                condition = And(condition, In("address", wanted))
            data = _conform(table.scan(row_filter=condition).to_arrow())
    finally:
        catalog.engine.dispose()
    late = [
        e
        for e in backlog.events
        if (since is None or e.recorded_at >= since) and (wanted is None or e.address in wanted)
    ]
    if late:
        recorded = set(data.column("event_id").to_pylist())
        late = [e for e in late if e.event_id not in recorded]
        data = pa.concat_tables([data, to_arrow(late)])
    return data.sort_by("recorded_at")


def record_safely(mesh: Mesh, events: Iterable[GateEvent], log: Any, catalog: Any = None) -> None:
    """record(), then alert owners and consumers (mesh_platform.sla.alerts); logs instead of
    raising: the products are already published (or blocked) when their history is written,
    and a history or alert failure must not undo that."""
    events = list(events)
    try:
        outcome = record(mesh, events, catalog)
        if outcome.error:
            log.warning(
                f"SLA history: {HISTORY} refused {len(events)} event(s) ({outcome.error}); kept "
                f"in {outcome.journal} ({outcome.journaled} waiting), written by the next run or "
                "`mesh sla` (fix: check the catalog and the warehouse)"
            )
        elif outcome.replayed:
            log.info(f"SLA history: {outcome.replayed} journaled event(s) written to {HISTORY}")
        for path in outcome.unreadable:
            log.error(
                f"SLA history: journal file {path} cannot be read, its events are not in "
                f"{HISTORY} (fix: inspect it, then delete it)"
            )
    except Exception as exc:  # MeshError: not even journaled; anything else: a bug, said so
        log.error(
            f"SLA history: could not record {len(events)} event(s) in {HISTORY}: {exc} "
            f"({_summary(events)})"
        )
    try:
        from mesh_platform.sla.alerts import alert_on

        alert_on(mesh, events, log)
    except Exception as exc:
        log.error(f"SLA alerts: could not evaluate incidents: {exc}")
