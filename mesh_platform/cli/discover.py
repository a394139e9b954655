"""``mesh products``, ``mesh describe``, ``mesh catalog`` and ``mesh export``: the product
catalog, for a consumer finding and understanding products (a list, one product in full, a
static HTML page, the open standards' documents). ``mesh query`` reads them:
:mod:`mesh_platform.cli.query`."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from mesh_platform.access.listing import ProductAccess, product_access
from mesh_platform.access.principals import Principal, load_principals
from mesh_platform.cli.common import console, fail, load_context_mesh, out
from mesh_platform.cli.lifecycle import retired_of, retirement_text
from mesh_platform.cli.main import mesh_command
from mesh_platform.cli.options import format_option
from mesh_platform.discovery.catalog import ProductRecord, find_record, product_records
from mesh_platform.discovery.catalog import search as search_records
from mesh_platform.discovery.describe import render_text
from mesh_platform.discovery.html import catalog_command
from mesh_platform.discovery.lineage_view import column_lineage
from mesh_platform.discovery.standards import export_product
from mesh_platform.discovery.usage import DEFAULT_DAYS, describe_lines, usage_report
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import MeshError, printable
from mesh_platform.products.lifecycle import load_retirements
from mesh_platform.products.lineage import mesh_lineage
from mesh_platform.products.registry import UnknownProductError
from mesh_platform.sla.report import brief, product_attainment


@click.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option("--search", metavar="TEXT", help="Only products whose address, purpose, "
              "description, owner, tags or columns mention TEXT.")  # fmt: skip
@click.option("--as", "as_", metavar="PRINCIPAL", help="Show what PRINCIPAL may read of each.")
@format_option("table", "json")
@click.pass_context
@mesh_command
def products(
    ctx: click.Context, domains: tuple[str, ...], search: str | None, as_: str | None, fmt: str
) -> None:
    """List the mesh's products: address, owner, version, status, last published snapshot and
    time, rows, check status. With --as, PRINCIPAL's access and the columns it may read
    (columns are shown only to readers with a grant)."""
    mesh = load_context_mesh(ctx)
    known = list_domain_names(mesh)
    if unknown := [d for d in domains if d not in known]:
        raise MeshError(
            f"unknown domain(s): {', '.join(unknown)} (domains: {', '.join(known)})",
            fix="pass a folder of domains/",
        )
    records = product_records(mesh, with_lineage=False, keep_unreadable=True)
    if domains:
        records = [r for r in records if r.domain in domains]
    if search:
        records = search_records(records, search)
    principal = load_principals(mesh.root, set(known)).resolve(as_) if as_ else None
    access: dict[str, ProductAccess] = {}
    if principal is not None:
        access = {r.address: product_access(principal, r.descriptor) for r in records}
    retired = [r for r in load_retirements(mesh).values() if not domains or
               r.address.split(".")[0] in domains]  # fmt: skip
    if fmt == "json":
        rows = [_product_json(r, access.get(r.address)) for r in records]
        rows += [{**asdict(r), "status": "retired"} for r in retired]
        click.echo(json.dumps(rows, indent=2))
    else:
        out.print(_products_table(records, principal, access))
        if not records:
            out.print("no product matches" + (f" {search!r}" if search else ""))
        for r in retired:
            out.print(escape(retirement_text(r)), highlight=False)
    _unreadable(records)


def _product_json(r: ProductRecord, access: ProductAccess | None) -> dict[str, Any]:
    row = {
        "address": r.address, "domain": r.domain, "owner": r.descriptor.body.owner.team,
        "version": r.descriptor.body.version, "status": r.descriptor.body.status,
        "purpose": r.descriptor.body.purpose,
        "snapshot_id": r.current.snapshot_id if r.current else None,
        "published_at": r.current.published_at if r.current else None,
        "rows": r.current.rows if r.current else None,
        "check_status": r.check_status, "sla_status": r.sla_status(),
        "problem": r.to_dict()["problem"],
    }  # fmt: skip
    if access is not None:
        row["access"], row["columns"] = access.state, access.columns
    return row


def _products_table(
    records: list[ProductRecord], principal: Principal | None, access: dict[str, ProductAccess]
) -> Table:
    title = "mesh products" + (f" as {principal.id}" if principal else "")
    table = Table(title=f"{title} ({len(records)})")
    for column in ("address", "owner", "version", "published (UTC)", "rows", "checks"):
        table.add_column(column, overflow="fold")
    if principal:
        table.add_column("access", overflow="fold")
        table.add_column("columns (masked*)", overflow="fold")
    for r in records:
        published = (
            f"{r.current.published_at.replace('T', ' ')[:16]}\n{r.current.snapshot_id}"
            if r.current
            else "[red]unreadable[/] (see below)"
            if r.problem
            else "not published"
        )
        rows_text = f"{r.current.rows:,}" if r.current and r.current.rows is not None else ""
        row = [
            r.address, r.descriptor.body.owner.team,
            f"{r.descriptor.body.version} {r.descriptor.body.status}", published, rows_text,
            r.check_status,
        ]  # fmt: skip
        if principal:
            row += [escape(access[r.address].state), escape(", ".join(access[r.address].columns))]
        table.add_row(*row)
    return table


def _unreadable(records: list[ProductRecord]) -> None:
    """Each listed product whose table could not be read, with its file and fix; exit 1."""
    broken = [r for r in records if r.problem is not None]
    for r in broken:
        console.print(f"[bold red]error:[/] {escape(printable(str(r.problem)))}", highlight=False)
    if broken:
        fail(f"{len(broken)} product(s) could not be read: {', '.join(r.address for r in broken)}")


@click.command()
@click.argument("address")
@format_option("text", "json")
@click.pass_context
@mesh_command
def describe(ctx: click.Context, address: str, fmt: str) -> None:
    """Show one product in full: purpose, owner, schema and classification, SLA and whether it
    holds, who may read it, upstream and downstream products, snapshots, versions, usage."""
    mesh = load_context_mesh(ctx)
    retired = retired_of(mesh, address)
    try:
        record = find_record(mesh, address)
    except UnknownProductError:
        if retired is None:
            raise
        click.echo(json.dumps(asdict(retired), indent=2) if fmt == "json" else
                   retirement_text(retired))  # fmt: skip
        return
    if retired is not None and fmt == "text":
        out.print(f"[bold yellow]retired[/]  {escape(retirement_text(retired))}")
    (week,) = product_attainment(mesh, since=timedelta(days=7), addresses=[record.address])
    (usage,) = usage_report(mesh, [record.address], days=DEFAULT_DAYS).products
    if fmt == "json":
        data = record.to_dict()
        data["retired"] = asdict(retired) if retired is not None else None
        data["column_lineage"] = column_lineage(mesh_lineage(mesh), record.address)
        data["attainment_7d"] = {
            "freshness": week.freshness, "freshness_target": week.freshness_target,
            "freshness_budget_left": week.freshness_budget_left, "quality": week.quality,
            "quality_target": week.quality_target, "runs": week.runs,
            "quality_budget_left": week.quality_budget_left,
        }  # fmt: skip
        data["usage"] = usage.to_dict()
        click.echo(json.dumps(data, indent=2, default=str))
        return
    out.print(render_text(record, mesh), highlight=False)
    out.print(f"[bold]SLA, last 7 days[/]  {escape(brief(week))}  (details: mesh sla)")
    out.print(describe_lines(usage, DEFAULT_DAYS), highlight=False)


@click.command()
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write index.html to (created if missing).",
)  # fmt: skip
@click.pass_context
@mesh_command
def catalog(ctx: click.Context, output: Path) -> None:
    """Write the product catalog as one static HTML page (DIR/index.html): every domain and
    product with schema, classification, SLA, lineage, versions and how to get access.
    Self-contained: open it from disk, no server and no network."""
    index = catalog_command(load_context_mesh(ctx), output)
    out.print(f"catalog written: {index}\nopen {index.as_uri()}", highlight=False, soft_wrap=True)


@click.command()
@click.argument("address")
@click.option(
    "--format", "fmt", type=click.Choice(["odcs", "odps"]), required=True,
    help="odcs: the data contract (Open Data Contract Standard v3); odps: the product descriptor "
    "(Open Data Product Standard v1.1).",
)  # fmt: skip
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
    help="Write the YAML to this file (atomically) instead of standard output.",
)  # fmt: skip
@click.option(
    "--validate", is_flag=True,
    help="Check the document against the standard's official JSON Schema before writing it "
    "(jsonschema; ODCS's schema comes with open-data-contract-standard, ODPS's is vendored).",
)  # fmt: skip
@click.pass_context
@mesh_command
def export(ctx: click.Context, address: str, fmt: str, output: Path | None, validate: bool) -> None:
    """Export a product in an open standard, as YAML: its data contract (ODCS, Bitol Open Data
    Contract Standard v3) or its product descriptor (ODPS, Bitol Open Data Product Standard
    v1.1). ADDRESS is a product address (sales.orders) or URN. datacontract-cli runs an exported
    contract as is from the mesh root (datacontract test FILE; its datacontract-config.yaml is
    there): it reads the stored table with the catalog's credentials, the owner's view, before
    read-time masks."""
    mesh = load_context_mesh(ctx)
    text = export_product(mesh, address, fmt, output=output, validate=validate)
    if output is None:
        click.echo(text, nl=False)
    else:
        console.print(f"{fmt} document of {escape(address)} written to {escape(str(output))}")
