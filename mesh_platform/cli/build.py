"""``mesh prepare``, ``mesh build``, ``mesh ui`` and ``mesh workspace``: the commands of a domain
team building its products."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from mesh_platform.addressing import ProductAddress
from mesh_platform.build import DomainOutcome, Stop
from mesh_platform.build_mesh import build_mesh, fail_unfinished_runs
from mesh_platform.cli.common import console, fail, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.cli.options import selected_domains
from mesh_platform.config import Mesh
from mesh_platform.dbt.project import prepare as prepare_domain
from mesh_platform.domain import load_domain
from mesh_platform.errors import DomainError, MeshError, disk_full, is_disk_full
from mesh_platform.instance import prepare_dagster_home
from mesh_platform.workspace import check_workspace, render_workspace


def _prepare(mesh: Mesh, domains: list[str], *, force: bool = False) -> list[DomainError]:
    """Prepare each domain; one that cannot be prepared is reported (its name, the problem and
    the fix) and the others are still prepared. Returns the errors."""
    failed: list[DomainError] = []
    for name in domains:
        start = time.perf_counter()
        try:
            changed = prepare_domain(mesh, load_domain(mesh, name), force=force)
        except DomainError as exc:
            failed.append(exc)
            console.print(f"  dbt manifest {name}: [red]cannot be prepared[/]", highlight=False)
            continue
        verb = "prepared" if changed else "up to date"
        console.print(f"  dbt manifest {name}: {verb} ({time.perf_counter() - start:.1f}s)")
    return failed


def _unprepared(failed: list[DomainError], total: int) -> str:
    """The message of the domains that could not be prepared, each with its fix."""
    lines = [f"{len(failed)} of {total} domain(s) could not be prepared:"]
    lines += [f"  {exc}" for exc in failed]
    if len(failed) < total:
        lines.append("The other domains are prepared: `mesh build` builds them and skips these.")
    return "\n".join(lines)


@click.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option("--force", is_flag=True, help="Re-parse even when nothing changed.")
@click.option(
    "--partial-ok",
    is_flag=True,
    help="Exit 0 when some (not all) domains cannot be prepared; they are still reported. "
    "For scripts that must not stop the whole mesh for one domain (scripts/bootstrap.sh).",
)
@click.pass_context
@mesh_command
def prepare(ctx: click.Context, domains: tuple[str, ...], force: bool, partial_ok: bool) -> None:
    """Prepare the domains' dbt manifests (dbt deps + dbt parse), skipping unchanged projects.

    A domain that cannot be prepared is reported with its fix and the others are prepared;
    the command exits 1 if any could not be (with --partial-ok: only if none could)."""
    mesh = load_context_mesh(ctx)
    mesh.ensure_state_dir()
    selected = selected_domains(mesh, domains)
    failed = _prepare(mesh, selected, force=force)
    if not failed:
        return
    message = _unprepared(failed, len(selected))
    if partial_ok and len(failed) < len(selected):
        console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)
        return
    fail(message)


class _ConsoleReport:
    """What `mesh build` prints as it goes (a :class:`~mesh_platform.build_mesh.BuildReport`)."""

    def loaded(self, domain: str, seconds: float) -> None:
        console.print(f"  loaded code location {domain} ({seconds:.1f}s)")

    def not_loaded(self, domain: str, error: MeshError) -> None:
        console.print(f"  {domain}: [red]cannot load[/]\n  {escape(str(error))}", highlight=False)

    def reaped(self, message: str) -> None:
        console.print(f"  {escape(message)}", highlight=False)

    def progress(self, domain: str, message: str) -> None:
        console.print(f"    [dim]{domain}[/] {escape(message)}", highlight=False)

    def starting(self, index: int, total: int, domain: str) -> None:
        console.print(f"[bold]\\[{index}/{total}] {domain}[/]")

    def never_started(self, outcome: DomainOutcome) -> None:
        console.print(f"  {outcome.domain}: [red]{escape(outcome.error or 'stopped')}[/]")

    def finished(self, outcome: DomainOutcome) -> None:
        mark = "[green]ok[/]" if outcome.success else "[red]FAILED[/]"
        mark = "[red]STOPPED[/]" if outcome.stopped else mark
        console.print(
            f"  {outcome.domain}: {mark} in {outcome.seconds:.1f}s (run {outcome.run_id})"
        )
        if outcome.error:
            console.print(f"  [red]{escape(outcome.error)}[/]", highlight=False)


@click.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    help="TPC-H scale factor of the sources (default: scale_factor in mesh.yaml, 0.1).",
)
@click.option(
    "--verbose", "-v", is_flag=True,
    help="Show Dagster's run log (INFO) on the console, and the tracebacks of failures.",
)  # fmt: skip
@click.option(
    "--full-refresh",
    is_flag=True,
    help="Rebuild from nothing: dbt --full-refresh (incremental models rebuilt from their "
    "sources) and every partition of partitioned products republished through the gate.",
)
@click.option(
    "--product",
    "products",
    multiple=True,
    metavar="DOMAIN.PRODUCT",
    help="With --full-refresh: only this product and what it is built from (repeatable).",
)
@click.pass_context
@mesh_command(on_disk_full=fail_unfinished_runs)
def build(
    ctx: click.Context,
    domains: tuple[str, ...],
    scale: float | None,
    verbose: bool,
    full_refresh: bool,
    products: tuple[str, ...],
) -> None:
    """Land sources, build and publish every domain's products through Dagster.

    Domains run in dependency order (producers before consumers), one recorded Dagster run
    each, so the UI (`mesh ui`) shows them. A failing domain does not stop the others.
    """
    overrides = {"scale_factor": scale} if scale else {}
    mesh = load_context_mesh(ctx, **overrides)
    mesh.ensure_state_dir()
    refreshed = _refreshed_products(domains, products, full_refresh)
    selected = selected_domains(mesh, domains or tuple(dict.fromkeys(a.domain for a in refreshed)))
    refresh_note = ""
    if full_refresh:
        what = ", ".join(map(str, refreshed)) or "every product"
        refresh_note = f" · [bold]full refresh[/] of {what} (rebuilt from the sources)"
    console.print(
        f"[bold]mesh build[/] {', '.join(selected)} · TPC-H SF {mesh.settings.scale_factor} · "
        f"state {mesh.state_dir}{refresh_note}"
    )
    total_start = time.perf_counter()
    stop = Stop()  # SIGINT/SIGTERM: the running domain's run is canceled, no other starts
    outcomes = build_mesh(
        mesh, selected, _ConsoleReport(), stop=stop, refreshed=refreshed,
        full_refresh=full_refresh, log_level="INFO" if verbose else "WARNING",
    )  # fmt: skip
    out.print(_summary_table(outcomes, time.perf_counter() - total_start))
    if stop.requested:
        console.print(
            f"[bold red]stopped:[/] mesh build was stopped by {stop.reason}: the domain's run "
            "was canceled (or never started) and no later domain was built; nothing of this "
            "build is left running.",
            highlight=False,
        )
        raise SystemExit(128 + stop.signum if stop.signum else 1)
    failed = [o for o in outcomes if not o.success]
    if failed:
        for outcome in failed:
            if outcome.error and is_disk_full(outcome.error):
                doing = f"the build of {outcome.domain}"
                fail(str(disk_full(outcome.error, mesh.state_dir, doing=doing)))
        fail(build_failure_summary(outcomes))


def _summary_table(outcomes: list[DomainOutcome], seconds: float) -> Table:
    table = Table(title=f"mesh build summary ({seconds:.0f}s)")
    for col in ("domain", "asset", "status", "rows"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for outcome in outcomes:
        if not outcome.assets:
            table.add_row(outcome.domain, "(code location)", "[red]not loaded[/]", "")
        for asset in outcome.assets:
            style = {"materialized": "green", "failed": "red"}.get(asset.status, "yellow")
            table.add_row(
                outcome.domain,
                asset.key,
                f"[{style}]{asset.status}[/]",
                f"{asset.rows:,}" if asset.rows is not None else "",
            )
    return table


def build_failure_summary(outcomes: list[DomainOutcome]) -> str:
    """What a failed `mesh build` really left: per domain, which products were published by this
    build and which were not (failed, blocked or not reached), never a blanket claim."""
    failed = [o.domain for o in outcomes if not o.success]
    lines = [f"{len(failed)} domain(s) failed: {', '.join(failed)}."]
    for outcome in outcomes:
        products = [a for a in outcome.assets if "/raw/" not in a.key and "/internal/" not in a.key]
        done = [a.key for a in products if a.status == "materialized"]
        missing = [a.key for a in products if a.status != "materialized"]
        if outcome.success:
            lines.append(f"  {outcome.domain}: ok, {len(done)} product(s) published")
        elif not outcome.assets:
            lines.append(f"  {outcome.domain}: not run (its code location did not load)")
        else:
            lines.append(
                f"  {outcome.domain}: published {', '.join(done) or 'nothing'}; not published "
                f"(they keep their previous snapshot): {', '.join(missing) or 'none'}"
            )
    lines.append("Details above and in the Dagster UI (`mesh ui`).")
    return "\n".join(lines)


def _refreshed_products(
    domains: tuple[str, ...], products: tuple[str, ...], full_refresh: bool
) -> list[ProductAddress]:
    """The products `mesh build --full-refresh --product` names, checked against --domain."""
    if products and not full_refresh:
        raise MeshError(
            "--product selects what a full refresh rebuilds; a build builds whole domains",
            fix=f"add --full-refresh (mesh build --full-refresh --product {products[0]}), or "
            "build the domain with --domain",
        )
    addresses = [ProductAddress.parse(p) for p in products]
    if domains and (outside := [str(a) for a in addresses if a.domain not in domains]):
        raise MeshError(
            f"product(s) {', '.join(outside)} not in the domain(s) built ({', '.join(domains)})",
            fix="drop --domain (the products' domains are built), or name the domain too",
        )
    return addresses


@click.command()
@click.option("--port", default=3000, show_default=True, help="Port of the Dagster UI.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.pass_context
@mesh_command
def ui(ctx: click.Context, port: int, host: str) -> None:
    """Start the Dagster UI on workspace.yaml with the mesh's instance. Ctrl-C stops it."""
    mesh = load_context_mesh(ctx)
    mesh.ensure_state_dir()
    names = [loc.name for loc in check_workspace(mesh)]
    if failed := _prepare(mesh, names):  # the UI shows them as code locations that fail
        console.print(f"[bold yellow]warning:[/] {escape(_unprepared(failed, len(names)))}")
    home = prepare_dagster_home(mesh)
    dagster = str(Path(sys.executable).with_name("dagster"))
    cmd = [dagster, "dev", "-w", str(mesh.workspace_file), "-h", host, "-p", str(port)]
    env = {**os.environ, **mesh.dbt_env(), "DAGSTER_HOME": home, "MESH_ROOT": str(mesh.root)}
    console.print(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={home}); Ctrl-C stops it.")
    # Own process group, default signal handling: the whole tree stops on Ctrl-C / SIGTERM.
    proc = subprocess.Popen(cmd, cwd=mesh.root, env=env, start_new_session=True)

    def _stop(*_: Any) -> None:
        raise KeyboardInterrupt

    # SIGHUP too: closing the terminal must not leave the webserver and daemon running.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        console.print("stopping the Dagster UI ...")
        code = _terminate_group(proc)
    raise SystemExit(code)


def _terminate_group(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """Stop the UI's whole process group: SIGINT, then SIGTERM, then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout if sig != signal.SIGKILL else None)
            break
        except subprocess.TimeoutExpired:
            console.print(f"the Dagster UI did not stop on {sig.name}; escalating")
    # Stopped by our own Ctrl-C / SIGTERM is a clean exit; a forced kill is not.
    return 0 if proc.returncode in (0, -signal.SIGINT, -signal.SIGTERM, 130) else 1


@click.command()
@click.option("--write", is_flag=True, help="Rewrite workspace.yaml from domains/.")
@click.pass_context
@mesh_command
def workspace(ctx: click.Context, write: bool) -> None:
    """Check that workspace.yaml lists exactly the domains in domains/ (or --write it)."""
    mesh = load_context_mesh(ctx)
    if write:
        mesh.workspace_file.write_text(render_workspace(mesh))
        out.print(f"wrote {mesh.workspace_file}")
    names = [loc.name for loc in check_workspace(mesh)]
    out.print(f"workspace.yaml lists {len(names)} domain(s): {', '.join(names)}")
