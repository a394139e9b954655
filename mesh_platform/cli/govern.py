"""``mesh check``, ``mesh sla`` and ``mesh audit``: the commands of governance (policies,
service levels, who read what)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from mesh_platform.cli.common import console, load_context_mesh, out
from mesh_platform.cli.lifecycle import orphans_json, print_orphans
from mesh_platform.cli.main import mesh_command
from mesh_platform.cli.options import duration_option, format_option, selected_domains
from mesh_platform.errors import printable, printable_value
from mesh_platform.governance.evaluate import check_domain
from mesh_platform.governance.policy import Violation
from mesh_platform.governance.report import junit_report
from mesh_platform.products.lifecycle import find_orphans
from mesh_platform.products.registry import load_directory
from mesh_platform.query.audit import AuditLog
from mesh_platform.sla.attainment import Attainment
from mesh_platform.sla.report import journal_note, product_attainment


@click.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@format_option("table", "json", "junit")
@click.pass_context
@mesh_command
def check(ctx: click.Context, domains: tuple[str, ...], fmt: str) -> None:
    """Evaluate every governance policy without building anything; exit 1 on a blocking one."""
    mesh = load_context_mesh(ctx)
    results = {name: check_domain(mesh, name) for name in selected_domains(mesh, domains)}
    blocking = sum(v.blocking for vs in results.values() for v in vs)
    directory = load_directory(mesh)
    orphans = find_orphans(mesh, directory.descriptors, directory.problems)
    orphans = [o for o in orphans if not domains or o.namespace in domains]
    if fmt == "json":
        out.print_json(json.dumps({
            "blocking": blocking, "orphan_tables": orphans_json(orphans),
            "violations": [
                {"domain": d, "policy": v.policy, "subject": v.subject, "column": v.column,
                 "message": v.message, "fix": v.fix, "file": v.file, "line": v.at,
                 "severity": v.severity,
                 "waived_by": v.waived_by, "blocking": v.blocking}
                for d, vs in results.items() for v in vs
            ],
        }))  # fmt: skip
    elif fmt == "junit":
        click.echo(junit_report(results))
    else:
        _print_violations(results, blocking)
    if fmt != "json":
        print_orphans(orphans)  # warnings (stderr): tables no descriptor declares any more
    if blocking:
        raise SystemExit(1)


def _print_violations(results: dict[str, list[Violation]], blocking: int) -> None:
    table = Table(title=f"mesh check: {blocking} blocking violation(s)")
    for column in ("domain", "policy", "product / column", "problem and fix", "file"):
        table.add_column(column, overflow="fold")  # folded, never cut: the line is at the end
    for d, vs in results.items():
        for v in vs:
            state = "waived" if v.waived_by else v.severity
            subject = v.subject + (f" / {v.column}" if v.column else "")
            cells = (d, f"{v.policy} ({state})", subject, f"{v.message}\nfix: {v.fix}", v.where)
            # escaped: `columns[email]` is a field's name, not rich markup
            table.add_row(*(escape(printable(c)) for c in cells))
    out.print(table)
    if not any(results.values()):
        out.print(f"{len(results)} domain(s) comply with every policy")
    elif not blocking:
        warnings = sum(len(vs) for vs in results.values())
        out.print(f"no blocking violation; {warnings} warning(s) or waiver(s) above")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


@click.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option("--product", "products_", multiple=True, metavar="ADDRESS",
              help="Only this product (repeatable).")  # fmt: skip
@click.option("--since", default="7d", show_default=True, help="Window: '12h', '7d', '30d'.")
@format_option("table", "json")
@click.pass_context
@mesh_command
def sla(
    ctx: click.Context, domains: tuple[str, ...], products_: tuple[str, ...], since: str, fmt: str
) -> None:
    """SLA attainment per product over a window: freshness (share of time a fresh published
    snapshot was available), quality (share of gate runs that passed), the error budget left
    against the descriptor's targets, and the last breach with its cause."""
    window = duration_option(since)
    mesh = load_context_mesh(ctx)
    results = product_attainment(mesh, since=window, domains=domains, addresses=products_)
    if note := journal_note(mesh):  # events the catalog refused: counted, not yet in the table
        console.print(f"[yellow]note:[/] {escape(printable(note))}", highlight=False)
    if fmt == "json":
        click.echo(json.dumps([_attainment_json(a) for a in results], indent=2))
        return
    table = Table(title=f"SLA attainment, last {since}")
    for column in ("product", "freshness", "budget", "quality (runs)", "budget", "last breach"):
        table.add_column(column, overflow="fold")
    for a in results:
        breach = (
            f"{a.last_breach.at.isoformat(timespec='minutes')} {a.last_breach.kind}: "
            f"{a.last_breach.cause}"
            if a.last_breach
            else "none"
        )
        style = "" if a.met else "red"
        table.add_row(
            a.address,
            f"{_percent(a.freshness)} / {_percent(a.freshness_target)}",
            _percent(a.freshness_budget_left),
            f"{_percent(a.quality)} / {_percent(a.quality_target)} ({a.runs})",
            _percent(a.quality_budget_left),
            escape(breach),
            style=style,
        )
    out.print(table)


def _attainment_json(a: Attainment) -> dict[str, Any]:
    return {
        "address": a.address, "since": a.since.isoformat(), "until": a.until.isoformat(),
        "freshness": a.freshness, "freshness_target": a.freshness_target,
        "freshness_budget_left": a.freshness_budget_left, "quality": a.quality,
        "quality_target": a.quality_target, "quality_budget_left": a.quality_budget_left,
        "runs": a.runs, "failed_runs": a.failed_runs, "met": a.met,
        "last_breach": None if a.last_breach is None else {
            "at": a.last_breach.at.isoformat(), "kind": a.last_breach.kind,
            "cause": a.last_breach.cause,
        },
    }  # fmt: skip


@click.command()
@click.option("--limit", default=20, show_default=True, help="Show the last N queries.")
@click.option("--as", "as_", metavar="PRINCIPAL", help="Only this principal's queries.")
@click.pass_context
@mesh_command
def audit(ctx: click.Context, limit: int, as_: str | None) -> None:
    """Show the query audit log: who read which products at which snapshots (never data)."""
    mesh = load_context_mesh(ctx)
    # A query has a "started" line and an outcome line with the same id; one without an
    # outcome was killed (or is still running).
    by_id: dict[str, dict[str, Any]] = {}
    for e in AuditLog(mesh.state_dir / "audit" / "queries.jsonl").entries():
        if as_ is None or e.get("principal") == as_:
            by_id[e.get("id") or f"line-{len(by_id)}"] = e
    entries = list(by_id.values())[-limit:]
    table = Table(title=f"query audit log (last {len(entries)})")
    for column in ("at", "principal", "status", "products @ snapshot", "rows", "query"):
        table.add_column(column)
    for e in entries:
        products = ", ".join(
            f"{p['address']}@{p.get('snapshot_id', '-')}" for p in e.get("products", [])
        )
        status = e.get("status", "?")
        if status == "started":
            status = "unfinished (killed, or still running)"
        status += f": {e['reason']}" if e.get("reason") else ""
        cells = (e.get("at", ""), e.get("principal", ""), status, products,
                 str(e.get("rows", "")), e.get("query") or "")  # fmt: skip
        table.add_row(*(escape(printable_value(c)) for c in cells))
    out.print(table)
