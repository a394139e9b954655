"""``mesh usage``: who reads each product and what it costs, for owners deciding what to keep,
optimise or retire (reads from the query audit log, build times from Dagster's run history,
bytes and snapshots from the tables' metadata: :mod:`mesh_platform.discovery.usage`)."""

from __future__ import annotations

import json

import click
from rich.markup import escape

from mesh_platform.cli.common import console, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.cli.options import format_option
from mesh_platform.discovery.usage import DEFAULT_DAYS, usage_report, usage_table


@click.command()
@click.argument("address", required=False)
@click.option(
    "--days", type=click.IntRange(min=1), default=DEFAULT_DAYS, show_default=True,
    help="Count reads of the last N days.",
)  # fmt: skip
@format_option("table", "json")
@click.pass_context
@mesh_command
def usage(ctx: click.Context, address: str | None, days: int, fmt: str) -> None:
    """Usage and cost per product (or of ADDRESS): queries ok/denied/failed, distinct readers,
    last read and rows returned (audit log, last --days); build time (last and median of recent
    builds), published bytes and snapshots kept."""
    mesh = load_context_mesh(ctx)
    report = usage_report(mesh, [address] if address else None, days=days)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(usage_table(report))
        audit = report.audit
        out.print(
            f"audit log: {audit.lines:,} lines read ({escape(str(audit.path))})", highlight=False
        )
        problems = [p for p in report.products if p.problem]
        for p in problems:
            console.print(f"[yellow]warning:[/] {escape(p.problem or '')}", highlight=False)
    if report.audit.corrupt:
        console.print(
            f"[yellow]warning:[/] {report.audit.corrupt:,} line(s) of the audit log are not "
            f"audit records (damaged, or cut by a crash) and were skipped: "
            f"{escape(str(report.audit.path))}",
            highlight=False,
        )
