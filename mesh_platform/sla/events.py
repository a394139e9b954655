"""One product's gate evaluation (or freshness evaluation) in one run: the SLA history's event.

The status tells a judgement of the data from a failure of the platform: a gate event is
``published``, ``blocked`` (a blocking check failed) or ``infrastructure_error`` (the catalog or
the warehouse failed: no check judged the data); a freshness event is ``fresh``, ``stale`` or
``infrastructure_error``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh_platform.products.publish import Publication

# How publish_products (mesh_platform.assets.dbt) words a publication that raised: the catalog or
# the warehouse failed (catalog down, disk full, a crash), no check judged the data.
INFRASTRUCTURE_FAILURE = "publication to Iceberg failed"
INFRASTRUCTURE_ERROR = "infrastructure_error"
STATUSES = {
    "gate": ("published", "blocked", INFRASTRUCTURE_ERROR),
    "freshness": ("fresh", "stale", INFRASTRUCTURE_ERROR),
}


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


def event_to_json(event: GateEvent) -> dict[str, Any]:
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


def event_from_json(entry: Mapping[str, Any]) -> GateEvent:
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
