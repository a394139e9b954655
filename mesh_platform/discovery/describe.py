"""``mesh describe``: one product in full, for a person deciding whether to use it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mesh_platform.config import Mesh
from mesh_platform.discovery.catalog import ProductRecord
from mesh_platform.discovery.lineage_view import lineage_table
from mesh_platform.products.registry import load_directory

HISTORY_SHOWN = 10


def sibling_versions(mesh: Mesh, record: ProductRecord) -> list[tuple[str, str, str]]:
    """(address, version, status) of every major version of the same product."""

    name = record.descriptor.name
    return sorted(
        (address, d.body.version, d.body.status)
        for address, d in load_directory(mesh).descriptors.items()
        if d.domain == record.domain and d.name == name
    )


def _facts(record: ProductRecord) -> Any:
    d = record.descriptor
    body = d.body
    lines = [
        f"[bold]purpose[/]      {escape(body.purpose)}",
        f"[bold]description[/]  {escape(d.description.strip())}",
        f"[bold]owner[/]        team {escape(body.owner.team)} <{escape(body.owner.contact)}>",
        f"[bold]built with[/]   {d.built_with}, declared in {escape(d.source_file)}",
    ]
    if body.deprecated_on:
        sunset = f", sunset on {body.sunset_on.isoformat()}" if body.sunset_on else ""
        lines.append(f"[bold yellow]deprecated[/]   since {body.deprecated_on.isoformat()}{sunset}")
    if body.partition_by:
        lines.append(
            f"[bold]partitioned[/]  by {body.partition_by.granularity} of "
            f"{body.partition_by.column} (incremental)"
        )
    if body.tags:
        lines.append(f"[bold]tags[/]         {escape(', '.join(body.tags))}")

    return "\n".join(lines)


def _schema_table(record: ProductRecord) -> Any:
    d = record.descriptor
    schema = Table(title="schema (the enforced contract)", title_justify="left")
    for column in ("column", "type", "classification", "masking", "description"):
        schema.add_column(column, overflow="fold")
    for c in d.columns:
        masking = f"{c.masking} at {c.masking_at}" if c.masking else ""
        schema.add_row(
            c.name, c.data_type or "", c.classification or "", masking, escape(c.description)
        )

    return schema


def _sla_table(record: ProductRecord, now: dt.datetime) -> Any:
    body = record.descriptor.body
    fresh, detail = record.freshness(now)
    sla = Table(title=f"SLA: {record.sla_status(now)}", title_justify="left")
    sla.add_column("promise")
    sla.add_column("state", overflow="fold")
    if body.sla.freshness:
        sla.add_row(f"freshness: max age {body.sla.freshness.max_age}", f"{fresh} ({detail})")
    for e in body.sla.expectations:
        sla.add_row(e.label(), "checked by the gate on every batch")
    if body.sla.volume:
        sla.add_row(f"volume {body.sla.volume.model_dump(exclude_none=True)}", "gate check")
    for check in record.checks:
        at = f" at {check.at}" if check.at else ""
        sla.add_row(f"check {check.name}", f"{check.status}{at}")

    return sla


def _grants_table(record: ProductRecord, now: dt.datetime) -> Any:
    body = record.descriptor.body
    grants = Table(title="who may read it (deny by default; owners always)", title_justify="left")
    for column in ("principal", "purpose", "expires", "columns", "rows"):
        grants.add_column(column, overflow="fold")
    for g in body.grants:
        expired = " (expired)" if g.expired(now.date()) else ""
        grants.add_row(
            g.to, escape(g.purpose), f"{g.expires.isoformat()}{expired}",
            ", ".join(g.columns) if g.columns else "all", escape(g.rows or "all"),
        )  # fmt: skip

    return grants


def _lineage(record: ProductRecord, mesh: Mesh) -> Any:
    upstream = ", ".join(record.upstream) or "(none: built from its domain's own sources)"
    downstream = ", ".join(record.downstream) or "(no product is built from it)"
    lineage = [f"[bold]upstream[/]     {upstream}", f"[bold]downstream[/]   {downstream}"]
    versions = sibling_versions(mesh, record)
    if len(versions) > 1:
        lineage.append(
            "[bold]versions[/]     " + ", ".join(f"{a} {v} ({s})" for a, v, s in versions)
        )

    return "\n".join(lineage)


def _history_table(record: ProductRecord) -> Any:
    history = Table(
        title=f"snapshots on main (last {HISTORY_SHOWN} of {len(record.history)})",
        title_justify="left",
    )
    for column in ("snapshot", "published (UTC)", "rows", "batch"):
        history.add_column(column)
    for s in reversed(record.history[-HISTORY_SHOWN:]):
        history.add_row(
            str(s.snapshot_id), s.published_at, f"{s.rows:,}" if s.rows is not None else "",
            s.batch_id or "",
        )  # fmt: skip
    if not record.history:
        history.add_row("not published yet", "", "", "")
    return history


def render_text(record: ProductRecord, mesh: Mesh, now: dt.datetime | None = None) -> Any:
    d = record.descriptor
    body = d.body
    now = now or dt.datetime.now(dt.UTC)
    head = Text.assemble(
        (f"{record.address}", "bold"),
        f"  {record.urn}  version {body.version} ({body.status})\n",
    )
    access = (
        f'read it: mesh query --as <principal> "SELECT * FROM {record.address}"; to get '
        f"access, ask team {body.owner.team} ({body.owner.contact}) for a grant in "
        f"{d.source_file}"
    )
    return Group(
        head, _facts(record), "", _schema_table(record), _sla_table(record, now),
        _grants_table(record, now), _lineage(record, mesh), lineage_table(mesh, record.address),
        "", _history_table(record),
        escape(access),
    )  # fmt: skip
