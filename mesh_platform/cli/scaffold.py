"""``mesh new domain`` and ``mesh new product``: scaffolding for a new domain team."""

from __future__ import annotations

import click
from rich.markup import escape

from mesh_platform import scaffold
from mesh_platform.cli.common import load_context_mesh, out
from mesh_platform.cli.main import mesh_command


@click.group()
def new() -> None:
    """Scaffold a new domain or a new product."""


def _report_scaffold(result: scaffold.Scaffolded, what: str) -> None:
    out.print(f"[bold green]{escape(what)}[/]")
    for path in result.created:
        out.print(f"  created  {escape(str(path))}")
    for path in result.changed:
        out.print(f"  updated  {escape(str(path))}")
    out.print("next:")
    for command in result.next_commands:
        out.print(f"  {escape(command)}")


@new.command("domain")
@click.argument("name")
@click.option("--owner", "team", required=True, metavar="TEAM", help="Owning team, e.g. finance.")
@click.option("--contact", metavar="EMAIL", help="Owners' contact (default: TEAM@example.com).")
@click.option("--description", help="What the domain owns and why (one or two sentences).")
@click.pass_context
@mesh_command
def new_domain(
    ctx: click.Context, name: str, team: str, contact: str | None, description: str | None
) -> None:
    """Create domain NAME: code location, dbt project with an example product, a test, its
    owning team in principals.yaml, the workspace.yaml entry and its Iceberg namespace."""
    mesh = load_context_mesh(ctx)
    result = scaffold.new_domain(mesh, name, team=team, contact=contact, description=description)
    _report_scaffold(result, f"domain {name} created (owner team:{team})")


@new.command("product")
@click.argument("domain")
@click.argument("name")
@click.pass_context
@mesh_command
def new_product(ctx: click.Context, domain: str, name: str) -> None:
    """Add a product skeleton NAME (model + descriptor) to DOMAIN."""
    result = scaffold.new_product(load_context_mesh(ctx), domain, name)
    _report_scaffold(result, f"product {domain}.{name} added (status draft)")
