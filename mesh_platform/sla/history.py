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
(:func:`mesh_platform.storage.locks.product_lock`: a file lock on sqlite, an advisory lock on
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
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import PLATFORM_NAMESPACE
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.products.platform import HISTORY
from mesh_platform.sla.events import (
    INFRASTRUCTURE_ERROR,
    INFRASTRUCTURE_FAILURE,
    GateEvent,
)
from mesh_platform.sla.journal import Pending, journal, journal_dir, journal_files, pending
from mesh_platform.storage.catalog import ensure_namespace, is_concurrent_commit, open_catalog
from mesh_platform.storage.health import HEALTH_PROPERTIES, write_version_hint
from mesh_platform.storage.locks import product_lock

if TYPE_CHECKING:
    import pyarrow as pa

COMMIT_ATTEMPTS = 6  # each after pyiceberg's own retries, on a reloaded table


def _schema() -> pa.Schema:
    import pyarrow as pa  # heavy: pyarrow (~0.3 s), kept off the import path of light commands

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
    import pyarrow as pa  # heavy: pyarrow (~0.3 s), kept off the import path of light commands

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
    from pyiceberg.exceptions import (
        NoSuchTableError,  # heavy: pyiceberg (~2 s), only when Iceberg is read or written
    )

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
                **HEALTH_PROPERTIES,
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

    for attempt in range(COMMIT_ATTEMPTS):
        try:
            table.append(data)
            return
        except Exception as exc:
            if not is_concurrent_commit(exc) or attempt == COMMIT_ATTEMPTS - 1:
                raise
        time.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
        table = catalog.load_table(HISTORY.iceberg_identifier)


def _not_recorded(table: Any, events: list[GateEvent]) -> list[GateEvent]:
    """``events`` whose ids are not in the table (a replay interrupted after its commit, or an
    append that failed after committing, must not write them twice)."""
    # heavy: pyiceberg (~2 s), only when Iceberg is read or written
    from pyiceberg.expressions import (
        And,
        GreaterThanOrEqual,
        In,
    )

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

    events = list(events)
    if not events and not journal_files(mesh):
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
                write_version_hint(catalog.load_table(HISTORY.iceberg_identifier))
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
            path = journal(mesh, events, why)
        except OSError as journal_exc:
            raise MeshError(
                f"SLA history: {len(events)} event(s) could not be written to {HISTORY} ({why}) "
                f"nor kept in the journal {journal_dir(mesh)} ({_why(journal_exc)}); they are "
                f"lost: {summarize_events(events)}",
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


def summarize_events(events: list[GateEvent], limit: int = 20) -> str:
    shown = ", ".join(f"{e.address} {e.kind} {e.status} (run {e.run_id})" for e in events[:limit])
    return shown + (f" and {len(events) - limit} more" if len(events) > limit else "")


# Reading it.


def _conform(data: pa.Table) -> pa.Table:
    """``data`` with every column of the current schema (absent ones null), in its order, and a
    status on every row (rows written before ``status`` existed: derived)."""
    import pyarrow as pa  # heavy: pyarrow (~0.3 s), kept off the import path of light commands

    # heavy: pyarrow (~0.3 s), kept off the import path of light commands
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
    import pyarrow as pa  # heavy: pyarrow (~0.3 s), kept off the import path of light commands
    from pyiceberg.exceptions import (
        NoSuchTableError,  # heavy: pyiceberg (~2 s), only when Iceberg is read or written
    )

    # heavy: pyiceberg (~2 s), only when Iceberg is read or written
    from pyiceberg.expressions import (
        AlwaysTrue,
        And,
        GreaterThanOrEqual,
        In,
    )

    if replay and journal_files(mesh):
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
