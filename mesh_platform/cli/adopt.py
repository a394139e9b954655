"""``mesh adopt``: bring a domain team's existing dbt project into the mesh as a domain."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape

from mesh_platform.cli.common import console, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.scaffold.adopt import Adopted
from mesh_platform.scaffold.adopt import adopt as adopt_project


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--domain", "name", required=True, metavar="NAME", help="The new domain's name.")
@click.option(
    "--product",
    "products",
    multiple=True,
    required=True,
    metavar="MODEL",
    help="A model of the project to publish as a product (repeatable).",
)
@click.option("--owner", "team", metavar="TEAM", help="Owning team (default: the domain's name).")
@click.option("--contact", metavar="EMAIL", help="Owners' contact (default: left as a TODO).")
@click.option("--description", help="What the domain owns and why (one or two sentences).")
@click.pass_context
@mesh_command
def adopt(
    ctx: click.Context,
    path: Path,
    name: str,
    products: tuple[str, ...],
    team: str | None,
    contact: str | None,
    description: str | None,
) -> None:
    """Adopt the dbt project at PATH as domain NAME: copy it, wire it to the domain's DuckDB,
    build it once and describe the models named by --product, leaving TODO(mesh) for what only
    its owners can decide."""
    mesh = load_context_mesh(ctx)
    console.print(
        f"adopting {escape(str(path))} as domain {escape(name)} (prepare, build, describe)"
    )
    started = time.perf_counter()
    result = adopt_project(
        mesh, path, name, list(products), team=team, contact=contact, description=description
    )
    _report(result, time.perf_counter() - started)


def _report(result: Adopted, seconds: float) -> None:
    out.print(
        f"[bold green]domain {result.domain} adopted[/] from {escape(str(result.source))} "
        f"(copied; {seconds:.0f}s)",
        highlight=False,
    )
    for path in result.created:
        out.print(f"  created  {escape(str(path))}")
    for path in result.changed:
        out.print(f"  updated  {escape(str(path))}")
    out.print(
        f"  profile  dbt_projects/{result.domain}/profiles.yml: the domain's DuckDB (the "
        "team's profiles.yml was not copied)",
        soft_wrap=True,
    )
    out.print(f"  packages {escape(', '.join(result.packages) or 'none')}")
    out.print(f"  built    {escape(result.built)}")
    for step, took in result.seconds.items():
        out.print(f"  [dim]{escape(step)}: {took:.1f}s[/]")
    out.print("products:")
    for facts in result.products:
        personal = "; ".join(
            f"{c.name}: pii:{c.pii_kind} ({c.why(facts.rows)})" for c in facts.personal
        )
        out.print(
            f"  {result.domain}.{facts.model}: {facts.rows} rows, {len(facts.columns)} columns; "
            + escape(f"personal data suggested (masked): {personal}" if personal else
                     "no personal data found"),
            highlight=False,
        )  # fmt: skip
    for note in result.notes:
        out.print(f"  [yellow]{escape(note)}[/]")
    out.print(
        f"decisions left to the owners ({len(result.todos)} TODO(mesh), `mesh check` blocks):"
    )
    for todo in result.todos:
        what = todo.what.split(";")[0]
        out.print(
            f"  {escape(str(todo.file))}:{todo.line}  {todo.key}: {escape(what)}", soft_wrap=True
        )
    out.print("next:")
    for command in result.next_commands:
        out.print(f"  {escape(command)}")
