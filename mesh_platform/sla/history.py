"""The SLA history: every gate evaluation of every product, kept in the mesh itself.

One row per product per run (``kind = 'gate'``): when, which run, whether the batch was
published and at which snapshot, each check's result, the rows staged and how long publication
took. Rows go to the platform's own Iceberg table ``mesh.sla_history`` (namespace ``mesh`` is
reserved: no domain can take it), so the history is as durable as the products, can be time
travelled, and is queryable with ``mesh query`` like any product (every principal may read it:
it holds no data of the products, only their outcomes).

Appending is one Iceberg commit per domain run (pyiceberg ``append`` of a small Arrow table).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import PLATFORM_NAMESPACE, ProductAddress
from mesh_platform.config import Mesh

if TYPE_CHECKING:
    import pyarrow as pa

    from mesh_platform.products.publish import Publication

HISTORY = ProductAddress(PLATFORM_NAMESPACE, "sla_history")
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
            }
            for e in events
        ],
        schema=_schema(),
    )


def record(mesh: Mesh, events: Iterable[GateEvent], catalog: Any = None) -> None:
    """Append ``events`` to ``mesh.sla_history`` (created on first use)."""
    from pyiceberg.exceptions import NoSuchTableError

    from mesh_platform.storage.iceberg import ensure_namespace, open_catalog

    data = to_arrow(events)
    if data.num_rows == 0:
        return
    own = catalog is None
    catalog = catalog or open_catalog(mesh)
    try:
        try:
            table = catalog.load_table(HISTORY.iceberg_identifier)
        except NoSuchTableError:
            ensure_namespace(catalog, PLATFORM_NAMESPACE)
            table = catalog.create_table_if_not_exists(
                HISTORY.iceberg_identifier,
                schema=data.schema,
                properties={
                    "comment": "Gate evaluations of every product (mesh_platform.sla.history)",
                    "mesh.address": str(HISTORY),
                    "mesh.owner": "platform",
                },
            )
        table.append(data)
    finally:
        if own:
            catalog.engine.dispose()


def read_history(
    mesh: Mesh, *, since: dt.datetime | None = None, addresses: Iterable[str] | None = None
) -> pa.Table:
    """The recorded events (all, or since a time, or of some products), oldest first."""
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In

    from mesh_platform.storage.iceberg import open_catalog

    catalog = open_catalog(mesh)
    try:
        try:
            table = catalog.load_table(HISTORY.iceberg_identifier)
        except NoSuchTableError:
            return _schema().empty_table()
        condition: Any = AlwaysTrue()
        if since is not None:
            condition = GreaterThanOrEqual("recorded_at", since.isoformat())
        if addresses is not None:
            condition = And(condition, In("address", set(addresses)))
        return table.scan(row_filter=condition).to_arrow().sort_by("recorded_at")
    finally:
        catalog.engine.dispose()


def record_safely(mesh: Mesh, events: Iterable[GateEvent], log: Any, catalog: Any = None) -> None:
    """record(), then alert owners and consumers (mesh_platform.sla.alerts); logs instead of
    raising: the products are already published (or blocked) when their history is written,
    and a history or alert failure must not undo that."""
    events = list(events)
    try:
        record(mesh, events, catalog)
    except Exception as exc:
        log.error(
            f"SLA history: could not record {len(events)} gate evaluation(s) in {HISTORY}: "
            f"{exc} (fix: check the catalog and warehouse; `mesh sla` misses these runs)"
        )
    try:
        from mesh_platform.sla.alerts import alert_on

        alert_on(mesh, events, log)
    except Exception as exc:
        log.error(f"SLA alerts: could not evaluate incidents: {exc}")
