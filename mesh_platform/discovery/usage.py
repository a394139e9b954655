"""Usage and cost per product, for people: ``mesh usage``, the usage lines of ``mesh describe``
and the usage card of the HTML catalog all show one :class:`UsageReport`.

It joins three sources, each read once per command: the query audit log (reads, readers, rows:
:func:`mesh_platform.products.usage.read_usage`), Dagster's run history (build and publication
times: :func:`mesh_platform.assets.history.build_history`) and each product's table metadata
(published bytes, snapshots kept: :func:`mesh_platform.products.usage.storage_usage`). A
product never read shows zeros, one never built "never built"; a product whose table cannot be
read keeps its reads and names the problem; corrupt audit lines are counted and reported.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from rich.table import Table

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.history import BuildHistory, build_history
from mesh_platform.config import Mesh
from mesh_platform.errors import CatalogUnavailableError, MeshError
from mesh_platform.products.registry import load_directory
from mesh_platform.products.usage import (
    AuditUsage,
    ReadUsage,
    StorageUsage,
    audit_path,
    read_usage,
    storage_usage,
)
from mesh_platform.storage.metadata import Catalog

DEFAULT_DAYS = 30


@dataclass(frozen=True)
class ProductUsage:
    address: str
    reads: ReadUsage
    builds: BuildHistory
    storage: StorageUsage | None  # None: no table yet (or unreadable: see problem)
    problem: str | None = None  # why its table could not be read

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "reads": self.reads.to_dict(),
            "builds": self.builds.to_dict(),
            "storage": self.storage.to_dict() if self.storage else None,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class UsageReport:
    days: int
    since: dt.datetime
    audit: AuditUsage
    products: list[ProductUsage]

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "since": self.since.isoformat(timespec="seconds"),
            "audit_log": {
                "path": str(self.audit.path),
                "lines": self.audit.lines,
                "corrupt_lines_skipped": self.audit.corrupt,
            },
            "products": [p.to_dict() for p in self.products],
        }


def usage_report(
    mesh: Mesh,
    addresses: Iterable[str] | None = None,
    *,
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> UsageReport:
    """Usage of every product (or of ``addresses``, each checked: an unknown one is an error
    with the closest address), reads counted over the last ``days``."""
    directory = load_directory(mesh)
    if addresses is None:
        wanted = sorted(directory.descriptors)
    else:
        wanted = [str(directory.get(ProductAddress.parse(a)).address) for a in addresses]
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    audit = read_usage(audit_path(mesh), since)
    parsed = [directory.descriptors[a].address for a in wanted]
    builds = build_history(mesh, parsed)
    products = []
    catalog = Catalog(mesh)
    try:
        for address in parsed:
            storage, problem = None, None
            try:
                storage = storage_usage(catalog, address)
            except CatalogUnavailableError:
                raise
            except MeshError as exc:  # this product's metadata: say so, keep its other figures
                problem = exc.what
            key = str(address)
            products.append(ProductUsage(key, audit.of(key), builds[key], storage, problem))
    finally:
        catalog.close()
    return UsageReport(days, since, audit, products)


# -- rendering ---------------------------------------------------------------------------------


def size(n: int | None) -> str:
    """Bytes for people (binary units)."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n:,} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def when(value: dt.datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M")


def reads_text(u: ProductUsage, days: int) -> str:
    r = u.reads
    if not r.queries:
        return f"not queried in the last {days} days"
    return (
        f"{r.queries:,} queries in {days} days ({r.ok:,} ok, {r.denied:,} denied, "
        f"{r.failed:,} failed), {r.readers} reader(s), last read {when(r.last_read)} UTC, "
        f"{r.rows:,} rows returned"
    )


def cost_text(u: ProductUsage) -> str:
    b, s = u.builds, u.storage
    if b.materializations:
        built = (
            f"build {seconds(b.last_seconds)} last, {seconds(b.median_seconds)} median of "
            f"{b.materializations}; publication {seconds(b.last_publish_seconds)}"
        )
    else:
        built = "never built"
    if u.problem:
        stored = f"table unreadable: {u.problem}"
    elif s is None or s.snapshot_id is None:
        stored = "nothing published"
    else:
        stored = (
            f"{size(s.published_bytes)} published in {s.data_files} file(s), "
            f"{s.snapshots_kept} snapshot(s) kept"
        )
    return f"{built}; {stored}"


def describe_lines(u: ProductUsage, days: int) -> str:
    """The short usage section of ``mesh describe`` (rich markup)."""
    return (
        f"[bold]usage[/]        {escape(reads_text(u, days))}\n"
        f"[bold]cost[/]         {escape(cost_text(u))}  (details: mesh usage {u.address})"
    )


def usage_table(report: UsageReport) -> Table:
    title = (
        f"usage and cost per product (reads: last {report.days} days, since "
        f"{when(report.since)} UTC)"
    )
    table = Table(title=title)
    for column in ("product", "ok/denied/failed", "readers", "last read (UTC)", "rows returned",
                   "build last/median", "published", "snapshots kept"):  # fmt: skip
        table.add_column(column, overflow="fold")
    for u in report.products:
        r, b, s = u.reads, u.builds, u.storage
        published = (
            "[red]unreadable[/]" if u.problem
            else size(s.published_bytes) if s and s.snapshot_id is not None
            else "not published"
        )  # fmt: skip
        table.add_row(
            u.address, f"{r.ok:,} / {r.denied:,} / {r.failed:,}", str(r.readers),
            when(r.last_read), f"{r.rows:,}",
            f"{seconds(b.last_seconds)} / {seconds(b.median_seconds)}" if b.materializations
            else "never built",
            published, str(s.snapshots_kept) if s else "-",
        )  # fmt: skip
    return table
