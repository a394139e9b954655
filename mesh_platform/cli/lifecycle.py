"""``mesh deprecations`` and ``mesh retire``: the end of a product's life (the model:
:mod:`mesh_platform.products.lifecycle`), and the report of tables nobody declares any more,
shared by ``mesh check`` and ``mesh maintain``."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os

import click
from rich.markup import escape
from rich.table import Table

from mesh_platform.addressing import ProductAddress
from mesh_platform.cli.common import console, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.cli.options import format_option
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError, printable
from mesh_platform.products.lifecycle import (
    OrphanTable,
    Retirement,
    load_retirements,
    past_sunset,
)
from mesh_platform.products.registry import load_directory
from mesh_platform.products.retirement import retire as retire_product
from mesh_platform.sla.deprecation import due_events, notify_deprecations, readers


class _ConsoleLog:
    """The alert sinks' ``log`` for a command: the log sink's lines go to stderr."""

    def info(self, message: str) -> None:
        console.print(escape(printable(message)), highlight=False)

    warning = info

    def error(self, message: str) -> None:
        console.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False)


def print_orphans(orphans: list[OrphanTable]) -> None:
    """One warning per product table no descriptor declares, with the fix (not an error: the
    table still serves whoever reads it by snapshot, until it is retired)."""
    for orphan in orphans:
        console.print(
            f"[yellow]warning:[/] table {escape(orphan.table)} in namespace "
            f"{escape(orphan.namespace)} ({escape(orphan.address)}) is declared by no "
            f"descriptor: {escape(orphan.why)}\n  fix: {escape(orphan.fix)}",
            highlight=False,
        )


def orphans_json(orphans: list[OrphanTable]) -> list[dict[str, str]]:
    return [
        {"address": o.address, "namespace": o.namespace, "table": o.table, "why": o.why,
         "fix": o.fix}
        for o in orphans
    ]  # fmt: skip


@click.command()
@click.argument("address")
@click.option("--reason", required=True, help="Why it is retired (kept in the record).")
@click.option(
    "--force", is_flag=True,
    help="Retire it although principals still hold live grants or domains still consume it.",
)  # fmt: skip
@click.option("--by", metavar="PRINCIPAL", help="Who retires it (default: $MESH_PRINCIPAL, else "
              "user:<login>).")  # fmt: skip
@click.pass_context
@mesh_command
def retire(ctx: click.Context, address: str, reason: str, force: bool, by: str | None) -> None:
    """Retire a product after its sunset: drop its Iceberg table and every file of it, and
    record who retired it, when, why and its last snapshot (`mesh products` lists it as retired
    ever after). Refused while its descriptor still declares it before its sunset, while a
    principal holds a live grant to it or a domain consumes it (--force --reason overrides the
    last two). Running it again finishes an interrupted retirement; a finished one is
    reported."""
    mesh = load_context_mesh(ctx)
    if not reason.strip():
        raise MeshError("--reason is empty", fix="say why the product is retired: --reason TEXT")
    who = by or os.environ.get("MESH_PRINCIPAL") or f"user:{getpass.getuser()}"
    outcome = retire_product(
        mesh, ProductAddress.parse(address), by=who, reason=reason.strip(), force=force
    )
    r = outcome.retirement
    if outcome.already:
        out.print(f"{r.address} was already retired on {r.finished_at} by {r.retired_by}",
                  highlight=False)  # fmt: skip
        return
    forced = f"; forced past: {'; '.join(r.consumers)}" if r.consumers else ""
    out.print(
        escape(printable(
            f"retired {r.address}: catalog entry dropped, {outcome.removed_files} file(s) "
            f"removed from {r.table_location}; last snapshot {r.last_snapshot_id}; by "
            f"{r.retired_by}: {r.reason}{forced}"
        )),
        highlight=False,
    )  # fmt: skip


@click.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option("--notify", is_flag=True, help="Send the notices due now (each only once).")
@format_option("table", "json")
@click.pass_context
@mesh_command
def deprecations(ctx: click.Context, domains: tuple[str, ...], notify: bool, fmt: str) -> None:
    """Deprecated products: since when, their sunset, their successor, who still reads them
    and the notices due. --notify sends those to the owner and every reader through the
    alert sinks of mesh.yaml (the SLA monitor and every build send them too)."""
    mesh = load_context_mesh(ctx)
    today = dt.date.today()
    days = mesh.settings.alerts.deprecation_notice_days
    rows = []
    for d in sorted(load_directory(mesh).descriptors.values(), key=lambda d: str(d.address)):
        if d.body.status != "deprecated" or (domains and d.domain not in domains):
            continue
        consumers = [r for r, _ in readers(mesh, d, today)[1:]]  # after the owner
        rows.append({
            "address": str(d.address), "version": d.body.version,
            "deprecated_on": str(d.body.deprecated_on), "sunset_on": str(d.body.sunset_on),
            "past_sunset": past_sunset(d, today), "successor": d.successor,
            "consumers": consumers, "due": [e for e, _ in due_events(d, today, days)],
        })  # fmt: skip
    sent = []
    if notify:
        for domain in sorted({r["address"].split(".")[0] for r in rows}):
            sent += notify_deprecations(mesh, _ConsoleLog(), domain=domain)
    if fmt == "json":
        click.echo(json.dumps({"deprecated": rows, "sent": [n.__dict__ for n in sent],
                               "retired": [r.__dict__ for r in load_retirements(mesh).values()]},
                              indent=2))  # fmt: skip
        return
    table = Table(title=f"deprecated products ({len(rows)})")
    for column in ("product", "version", "deprecated", "sunset", "successor", "consumers"):
        table.add_column(column, overflow="fold")
    for r in rows:
        sunset = r["sunset_on"] + (" [red](past)[/]" if r["past_sunset"] else "")
        table.add_row(r["address"], r["version"], r["deprecated_on"], sunset,
                      r["successor"] or "-", ", ".join(r["consumers"]) or "-")  # fmt: skip
    out.print(table)
    if notify:
        out.print(f"{len(sent)} notice(s) sent", highlight=False)


def retirement_text(r: Retirement) -> str:
    """One retirement, as `mesh describe` and `mesh products` show it."""
    state = f"retired on {r.finished_at}" if r.finished else "retirement unfinished (run "
    state += "" if r.finished else f"`mesh retire {r.address}` again)"
    forced = f"; forced past: {'; '.join(r.consumers)}" if r.consumers else ""
    successor = f"; successor: {r.successor}" if r.successor else ""
    return (
        f"{r.address}{f' (version {r.version})' if r.version else ''}: {state} by "
        f"{r.retired_by}: {r.reason}; last snapshot {r.last_snapshot_id}{successor}{forced}"
    )


def retired_of(mesh: Mesh, address: str) -> Retirement | None:
    """The retirement of ``address`` (an address or URN), if it was retired."""
    try:
        key = str(ProductAddress.parse(address))
    except MeshError:
        return None
    return load_retirements(mesh).get(key)
