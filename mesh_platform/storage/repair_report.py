"""What ``mesh repair`` did (or would do) to one product, for people and as JSON
(:mod:`mesh_platform.storage.repair`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pyiceberg.table.metadata import TableMetadata

from mesh_platform.addressing import ProductAddress
from mesh_platform.storage.metadata import BATCH_PROPERTY


@dataclass(frozen=True)
class SnapshotNote:
    snapshot_id: int
    when: str  # ISO time (UTC), "" when unknown
    batch_id: str | None
    refs: tuple[str, ...] = ()  # the refs (main, audit-...) that pointed at it

    def describe(self) -> str:
        parts = [str(self.snapshot_id)]
        if self.when:
            parts.append(f"written {self.when}")
        if self.batch_id:
            parts.append(f"batch {self.batch_id}")
        if self.refs:
            parts.append(f"head of {', '.join(self.refs)}")
        return " ".join(parts)


@dataclass
class RepairReport:
    address: ProductAddress
    broken: str  # the metadata location the catalog pointed at
    problem: str | None  # why it is not whole; None: nothing to repair
    action: str = "none"  # none | rolled back | would roll back | dropped | would drop
    restored: str | None = None  # the metadata file the catalog points at now
    restored_from: str = ""  # how that file is known to have been committed
    main_before: SnapshotNote | None = None
    main_after: SnapshotNote | None = None
    lost: list[SnapshotNote] = field(default_factory=list)  # snapshots the rollback drops
    lost_unknown: list[int] = field(default_factory=list)  # written after; broken file unparsed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why not whole)
    republished: SnapshotNote | None = None  # an acknowledged batch main was moved to again
    staged: list[tuple[SnapshotNote, str]] = field(default_factory=list)  # left on a branch: why

    @property
    def needs_rebuild(self) -> bool:
        return self.action in ("dropped", "would drop")

    def lines(self) -> list[str]:
        """What happened, for people."""
        product = str(self.address)
        if self.problem is None:
            main = self.main_before.describe() if self.main_before else "no published snapshot"
            return [
                f"{product}: nothing to repair: its metadata {self.broken} and main's snapshot "
                f"({main}) are readable"
            ]
        out = [f"{product}: current metadata {self.broken} is broken: {self.problem}"]
        for location, why in self.skipped:
            out.append(f"  passed over {location}: {why}")
        if self.action in ("rolled back", "would roll back"):
            before = (
                self.main_before.describe()
                if self.main_before
                else "unknown (its metadata cannot be read)"
            )
            after = self.main_after.describe() if self.main_after else "nothing published"
            out.append(
                f"  {self.action} the catalog pointer to {self.restored} ({self.restored_from})"
            )
            out.append(f"  main before: {before}")
            out.append(f"  main after:  {after}")
            if self.lost:
                out.append("  snapshots only the broken metadata knew, no longer in the table:")
                out += [f"    - {note.describe()}" for note in self.lost]
            if self.lost_unknown:
                ids = ", ".join(str(i) for i in self.lost_unknown)
                out.append(
                    "  snapshots written after the restored file (the broken file cannot say "
                    f"whether it committed them): {ids}"
                )
            if self.republished is not None:
                verb = "republished" if self.action == "rolled back" else "would republish"
                out.append(
                    f"  {verb} {self.republished.describe()}: it had been published and "
                    "acknowledged (a Dagster materialisation recorded it) before its metadata "
                    "broke; main is at it again"
                )
            for note, why in self.staged:
                out.append(f"  not published: {note.describe()}, staged ahead of main: {why}")
            known = self.main_before is not None
            if not known and not self.lost_unknown:
                out.append(
                    "  no snapshot was written after the restored file: every snapshot the "
                    "broken commit can have held is in it"
                )
            if self.lost or self.lost_unknown or self.staged:
                out.append(
                    "  the data is not lost from the sources: `mesh build --domain "
                    f"{self.address.domain}` publishes the current sources again"
                )
            elif known:
                out.append("  no published snapshot was lost")
        elif self.needs_rebuild:
            out.append(
                f"  no readable metadata file is left: {self.action} the catalog entry (the "
                "table's history is unreadable; its files stay in the warehouse until `mesh "
                f"maintain` removes them); the table is recreated by `mesh build --full-refresh "
                f"--product {product}`"
            )
        return out


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def snapshot_note(metadata: TableMetadata, snapshot_id: int | None) -> SnapshotNote | None:
    """What a report says of snapshot ``snapshot_id`` of ``metadata`` (None: no snapshot)."""
    if snapshot_id is None:
        return None
    snapshot = metadata.snapshot_by_id(snapshot_id)
    refs = tuple(sorted(n for n, r in metadata.refs.items() if r.snapshot_id == snapshot_id))
    if snapshot is None:
        return SnapshotNote(snapshot_id, "", None, refs)
    summary = snapshot.summary.additional_properties if snapshot.summary else {}
    return SnapshotNote(
        snapshot_id, _when(snapshot.timestamp_ms), summary.get(BATCH_PROPERTY), refs
    )
