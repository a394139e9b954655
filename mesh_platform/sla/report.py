"""``mesh sla``: attainment per product over a window, from the mesh's own records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from mesh_platform.addressing import PLATFORM_NAMESPACE, ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.errors import ProductNotPublishedError
from mesh_platform.products.platform import HISTORY
from mesh_platform.products.registry import load_directory
from mesh_platform.sla.attainment import Attainment, attainment
from mesh_platform.sla.events import INFRASTRUCTURE_ERROR
from mesh_platform.sla.history import read_history
from mesh_platform.sla.journal import journal_dir, pending
from mesh_platform.storage.metadata import Catalog


def product_attainment(
    mesh: Mesh,
    *,
    since: dt.timedelta,
    domains: Iterable[str] = (),
    addresses: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> list[Attainment]:
    """Attainment of every selected product over ``[now - since, now)``."""

    now = now or dt.datetime.now(dt.UTC)
    start = now - since
    directory = load_directory(mesh)
    wanted = list(addresses)
    for address in wanted:
        directory.get(ProductAddress.parse(address))  # unknown: suggests the closest
    domains = set(domains)
    selected = [
        d
        for a, d in sorted(directory.descriptors.items())
        if d.domain != PLATFORM_NAMESPACE
        and (not wanted or a in wanted)
        and (not domains or d.domain in domains)
    ]
    # Written first if journaled (the catalog refused them earlier), counted either way.
    history = read_history(mesh, since=start, addresses=[str(d.address) for d in selected])
    runs: dict[str, list[tuple[dt.datetime, bool, str]]] = {}
    for row in history.to_pylist():
        if row["kind"] != "gate" or row["status"] == INFRASTRUCTURE_ERROR:
            continue  # quality is what the gate judged: not freshness, not a platform failure
        cause = (
            f"gate failed: {row['failed_checks']}"
            if row["failed_checks"]
            else (row["detail"] or "not published")
        )
        runs.setdefault(row["address"], []).append((row["recorded_at"], bool(row["passed"]), cause))
    catalog = Catalog(mesh)
    results = []
    try:
        for d in selected:
            try:
                state = catalog.table_state(d.address)
                published = [
                    dt.datetime.fromtimestamp(s.timestamp_ms / 1000, dt.UTC)
                    for s in state.main_history
                ]
            except ProductNotPublishedError:  # not published yet (other errors: said)
                published = []
            sla = d.body.sla
            results.append(
                attainment(
                    str(d.address),
                    published=published,
                    max_age=sla.freshness.timedelta if sla.freshness else None,
                    runs=runs.get(str(d.address), []),
                    since=start,
                    until=now,
                    freshness_target=sla.targets.freshness,
                    quality_target=sla.targets.quality,
                )
            )
    finally:
        catalog.close()
    return results


def journal_note(mesh: Mesh) -> str | None:
    """What `mesh sla` must add when SLA events wait in the local journal (the catalog refused
    them): they are counted in the attainment, but not yet queryable in ``mesh.sla_history``."""

    waiting = pending(mesh)
    notes = []
    if waiting.events:
        notes.append(
            f"{len(waiting)} SLA event(s) wait in {journal_dir(mesh)}, not yet in {HISTORY} (the "
            f"catalog refused them: {waiting.why}); they are counted above and are written by "
            "the next run or `mesh sla` once the catalog takes writes"
        )
    notes += [
        f"journal file {path} cannot be read: its events are not counted (fix: inspect it, "
        "then delete it)"
        for path in waiting.unreadable
    ]
    return "\n".join(notes) or None


def asset_figures(mesh: Mesh, addresses: Iterable[str], *, days: int = 30) -> dict[str, dict]:
    """Current SLA figures per product, for its Dagster materialisation metadata."""
    figures = {}
    for a in product_attainment(mesh, since=dt.timedelta(days=days), addresses=addresses):
        row: dict = {f"mesh/sla_runs_{days}d": a.runs}
        if a.freshness is not None:
            row[f"mesh/sla_freshness_{days}d"] = round(a.freshness, 4)
            row["mesh/sla_freshness_budget_left"] = round(a.freshness_budget_left, 4)
        if a.quality is not None:
            row[f"mesh/sla_quality_{days}d"] = round(a.quality, 4)
            row["mesh/sla_quality_budget_left"] = round(a.quality_budget_left, 4)
        if a.last_breach is not None:
            row["mesh/sla_last_breach"] = (
                f"{a.last_breach.at.isoformat(timespec='minutes')} {a.last_breach.kind}: "
                f"{a.last_breach.cause}"
            )
        figures[a.address] = row
    return figures


def brief(a: Attainment) -> str:
    """One line for `mesh describe`."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    text = (
        f"freshness {pct(a.freshness)} (target {pct(a.freshness_target)}, budget left "
        f"{pct(a.freshness_budget_left)}); quality {pct(a.quality)} of {a.runs} run(s) (target "
        f"{pct(a.quality_target)}, budget left {pct(a.quality_budget_left)})"
    )
    if a.last_breach is not None:
        text += (
            f"; last breach {a.last_breach.at.isoformat(timespec='minutes')} "
            f"({a.last_breach.kind}): {a.last_breach.cause}"
        )
    return text
