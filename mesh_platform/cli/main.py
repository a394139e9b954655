"""The ``mesh`` command line: the platform's push-button entry points.

Every command loads the mesh from the nearest mesh.yaml (or $MESH_ROOT) and reports problems as
one clear message with the fix, never a traceback, unless --debug is given.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.errors import MeshError, StateDirError, printable, printable_value

console = Console(stderr=True, soft_wrap=True)  # long paths in errors stay on one line
out = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False)
    raise SystemExit(1)


def mesh_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MeshError, and the failures of the machine a command may meet anywhere (a full
    disk, a state database that cannot be used), into a clear message and exit code 1 (--debug
    shows the traceback). A full disk also fails the Dagster runs this process left unfinished.
    Anything else is a fault of the platform and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug")
        if ctx.info_name in _STATE_WRITERS:
            _keep_disk_reserve(ctx)
        try:
            return fn(*args, **kwargs)
        except MeshError as exc:
            if debug:
                raise
            if isinstance(exc, StateDirError) and (error := _machine_failure(ctx, exc)):
                _fail(str(error))  # "not writable" because the disk is full: say so
            _fail(str(exc))
        except Exception as exc:
            error = _machine_failure(ctx, exc)
            if error is None or debug:
                raise
            _fail(str(error))

    return wrapper


def _machine_failure(ctx: click.Context, exc: Exception) -> MeshError | None:
    """The MeshError of an expected failure of the machine (not of the platform's code): no
    space left on a disk, or a sqlite state database (the catalog, Dagster's storage) that is
    locked or cannot be opened. None for anything else."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from mesh_platform.errors import disk_full, is_disk_full, nearly_full, one_line

    try:
        state_dir = _mesh(ctx).state_dir
    except MeshError:
        state_dir = Path.cwd()
    # sqlite reports some writes on a full disk as a "disk I/O error" (its WAL's shared memory)
    io_error = "disk i/o error" in str(exc).lower()
    if is_disk_full(exc) or (io_error and nearly_full(state_dir)):
        error = disk_full(exc, state_dir, doing=f"`mesh {ctx.info_name}`")
        (state_dir / DISK_RESERVE).unlink(missing_ok=True)  # room to record the failure
        note = _fail_unfinished_runs(error.what)
        return MeshError(error.what + note, fix=error.fix) if note else error
    if isinstance(exc, sqlite3.OperationalError | OperationalError):
        return MeshError(
            f"a state database of the mesh (under {state_dir}) could not be used: "
            f"{one_line(exc)[:300]}",
            fix="if it is locked, another process holds it (a stuck `mesh` command): retry in a "
            "moment, or stop that process; otherwise check state_dir in mesh.yaml or "
            "MESH_STATE_DIR, and that its files are yours and readable",
        )
    return None


# Commands that write state (Dagster runs, the catalog, the warehouse): they keep a small file
# in reserve in the state dir, released when a disk-full error stops them, so the failure can
# still be recorded (the runs it left unfinished marked failed) on a disk that is full.
_STATE_WRITERS = frozenset({"build", "maintain", "repair", "prepare", "ui"})
DISK_RESERVE = ".disk-reserve"
DISK_RESERVE_BYTES = 2 * 2**20


def _keep_disk_reserve(ctx: click.Context) -> None:
    """Create the state dir's reserve file if it is missing and there is room (best effort)."""
    try:
        state_dir = _mesh(ctx).state_dir
    except MeshError:
        return  # the command itself reports the configuration's problem
    reserve = state_dir / DISK_RESERVE
    if not state_dir.is_dir() or reserve.exists():
        return
    try:
        fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, DISK_RESERVE_BYTES)
    except OSError:  # no room: no reserve (retried by the next command)
        os.close(fd)
        reserve.unlink(missing_ok=True)
        return
    os.close(fd)


def _fail_unfinished_runs(why: str) -> str:
    """Mark FAILED the Dagster runs this process started and could not finish (a full disk
    stopped it mid-run), and free their concurrency slots. Best effort, since the disk may
    still be full: returns a sentence for the error message."""
    if "dagster" not in sys.modules or not os.environ.get("DAGSTER_HOME"):
        return ""  # this command ran no Dagster run
    import socket

    import dagster as dg

    failed, left = [], []
    try:
        from mesh_platform.build import ORPHAN_HOST_TAG, ORPHAN_PID_TAG

        unfinished = [
            dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
        ]  # fmt: skip
        tags = {ORPHAN_PID_TAG: str(os.getpid()), ORPHAN_HOST_TAG: socket.gethostname()}
        instance = dg.DagsterInstance.get()
        records = instance.get_run_records(filters=dg.RunsFilter(statuses=unfinished, tags=tags))
    except Exception:  # the instance's storage cannot be read either
        return "; its Dagster run could not be marked failed: the next `mesh build` does it"
    for record in records:
        run = record.dagster_run
        try:
            instance.report_run_failed(run, message=f"run failed: {why}")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            failed.append(run.run_id)
        except Exception:
            left.append(run.run_id)
    note = f"; run {', '.join(failed)} marked failed" if failed else ""
    if left:
        note += (
            f"; run {', '.join(left)} could not be marked failed (no space to write it): the "
            "next `mesh build` does it"
        )
    return note


def _mesh(ctx: click.Context, **overrides: Any) -> Mesh:
    root = ctx.find_root().params.get("root")
    return load_mesh(Path(root) if root else None, **overrides)


def _selected_domains(mesh: Mesh, domains: tuple[str, ...]) -> list[str]:
    from mesh_platform.workspace import check_workspace

    names = [loc.name for loc in check_workspace(mesh)]
    unknown = [d for d in domains if d not in names]
    if unknown:
        raise MeshError(
            f"unknown domain(s): {', '.join(unknown)} (domains: {', '.join(names)})",
            fix="pass a domain listed in workspace.yaml",
            path=mesh.workspace_file,
        )
    return list(domains) or names


def _prepare(mesh: Mesh, domains: list[str], *, force: bool = False) -> None:
    from mesh_platform.dbt.project import prepare
    from mesh_platform.domain import load_domain

    for name in domains:
        start = time.perf_counter()
        changed = prepare(mesh, load_domain(mesh, name), force=force)
        verb = "prepared" if changed else "up to date"
        console.print(f"  dbt manifest {name}: {verb} ({time.perf_counter() - start:.1f}s)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Mesh root (directory with mesh.yaml). Default: nearest one upwards, or $MESH_ROOT.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of short error messages.")
def cli(root: Path | None, debug: bool) -> None:
    """mesh: build, run and inspect a data mesh of domains on Dagster, dbt, DuckDB and Iceberg."""
    from mesh_platform.config import private_umask

    private_umask()  # every file a command writes (state, spills, exports) is the owner's only


@cli.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option("--force", is_flag=True, help="Re-parse even when nothing changed.")
@click.pass_context
@mesh_command
def prepare(ctx: click.Context, domains: tuple[str, ...], force: bool) -> None:
    """Prepare the domains' dbt manifests (dbt deps + dbt parse), skipping unchanged projects."""
    mesh = _mesh(ctx)
    mesh.ensure_state_dir()
    _prepare(mesh, _selected_domains(mesh, domains), force=force)


@cli.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    help="TPC-H scale factor of the sources (default: scale_factor in mesh.yaml, 0.1).",
)
@click.option("--verbose", "-v", is_flag=True, help="Show Dagster's run log (INFO) on the console.")
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
@mesh_command
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
    from mesh_platform.build import (
        DomainOutcome,
        Stop,
        build_domain,
        build_order,
        domain_dependencies,
    )
    from mesh_platform.dbt.project import prepare
    from mesh_platform.domain import list_domain_names, load_domain
    from mesh_platform.instance import get_instance
    from mesh_platform.leases import reap_expired_runs
    from mesh_platform.workspace import check_workspace, load_location

    overrides = {"scale_factor": scale} if scale else {}
    mesh = _mesh(ctx, **overrides)
    mesh.ensure_state_dir()
    refreshed = _refreshed_products(domains, products, full_refresh)
    selected = _selected_domains(mesh, domains or tuple(dict.fromkeys(a.domain for a in refreshed)))
    refresh_note = ""
    if full_refresh:
        what = ", ".join(map(str, refreshed)) or "every product"
        refresh_note = f" · [bold]full refresh[/] of {what} (rebuilt from the sources)"
    console.print(
        f"[bold]mesh build[/] {', '.join(selected)} · TPC-H SF {mesh.settings.scale_factor} · "
        f"state {mesh.state_dir}{refresh_note}"
    )
    total_start = time.perf_counter()
    locations = {loc.name: loc for loc in check_workspace(mesh)}
    defs = {}
    outcomes = []
    # A domain that cannot be prepared or loaded is reported; the others are still built.
    # Every domain is prepared before any loads: a consumer's load checks its grants in the
    # producers' descriptors.
    broken: dict[str, MeshError] = {}
    for name in dict.fromkeys([*list_domain_names(mesh), *selected]):
        try:
            prepare(mesh, load_domain(mesh, name))
        except MeshError as exc:
            broken[name] = exc
    for name in selected:
        start = time.perf_counter()
        try:
            if name in broken:
                raise broken[name]
            defs[name] = load_location(mesh, locations[name])
        except MeshError as exc:
            console.print(f"  {name}: [red]cannot load[/]\n  {escape(str(exc))}", highlight=False)
            outcomes.append(DomainOutcome(name, False, 0.0, "-", error=str(exc)))
            continue
        console.print(f"  loaded code location {name} ({time.perf_counter() - start:.1f}s)")
    order = build_order(domain_dependencies(defs))
    # Before any domain builds: a mistyped --product must not surface after others were built.
    for address in refreshed:
        if address.domain not in defs:
            continue  # not loaded: reported above
        if address.asset_key not in defs[address.domain].resolve_asset_graph().get_all_asset_keys():
            raise MeshError(
                f"--product {address}: domain {address.domain} has no such product",
                fix=f"list its products with `mesh products --domain {address.domain}`",
            )
    instance = get_instance(mesh)
    # dead runs of the domains built here are reaped (and rebuilt) when their turn comes
    for reaped in reap_expired_runs(instance, exclude=order):
        console.print(f"  {escape(reaped.message)}", highlight=False)
    stop = Stop()  # SIGINT/SIGTERM: the running domain's run is canceled, no other starts

    def progress(domain: str, message: str) -> None:
        console.print(f"    [dim]{domain}[/] {escape(message)}", highlight=False)

    with stop.on_signals():
        for i, name in enumerate(order, 1):
            console.print(f"[bold]\\[{i}/{len(order)}] {name}[/]")
            outcome = build_domain(
                name,
                defs[name],
                instance,
                scale_factor=mesh.settings.scale_factor,
                progress=progress,
                log_level="INFO" if verbose else "WARNING",
                full_refresh=full_refresh,
                products=[str(a) for a in refreshed if a.domain == name],
                stop=stop,
            )
            if outcome.stopped and outcome.run_id == "-":
                console.print(f"  {name}: [red]{escape(outcome.error or 'stopped')}[/]")
                break
            mark = "[green]ok[/]" if outcome.success else "[red]FAILED[/]"
            mark = "[red]STOPPED[/]" if outcome.stopped else mark
            console.print(f"  {name}: {mark} in {outcome.seconds:.1f}s (run {outcome.run_id})")
            if outcome.error:
                console.print(f"  [red]{escape(outcome.error)}[/]", highlight=False)
            outcomes.append(outcome)
            if stop.requested:
                break

    table = Table(title=f"mesh build summary ({time.perf_counter() - total_start:.0f}s)")
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
    out.print(table)
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
        from mesh_platform.errors import disk_full, is_disk_full

        for outcome in failed:
            if outcome.error and is_disk_full(outcome.error):
                _fail(
                    str(
                        disk_full(
                            outcome.error, mesh.state_dir, doing=f"the build of {outcome.domain}"
                        )
                    )
                )
        _fail(build_failure_summary(outcomes))


def build_failure_summary(outcomes: list[Any]) -> str:
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


@cli.command()
@click.option("--port", default=3000, show_default=True, help="Port of the Dagster UI.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.pass_context
@mesh_command
def ui(ctx: click.Context, port: int, host: str) -> None:
    """Start the Dagster UI on workspace.yaml with the mesh's instance. Ctrl-C stops it."""
    from mesh_platform.instance import prepare_dagster_home
    from mesh_platform.workspace import check_workspace

    mesh = _mesh(ctx)
    mesh.ensure_state_dir()
    names = [loc.name for loc in check_workspace(mesh)]
    _prepare(mesh, names)
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


def _acknowledged(mesh: Mesh) -> Callable[[ProductAddress, int], bool]:
    """Whether a snapshot's publication was acknowledged: a Dagster materialisation of the
    product recorded it (materialisations are reported only after publication)."""

    def check(address: ProductAddress, snapshot_id: int) -> bool:
        if not (mesh.dagster_home / "dagster.yaml").is_file():
            return False
        from mesh_platform.instance import get_instance
        from mesh_platform.products.acknowledge import known_snapshots

        return snapshot_id in known_snapshots(get_instance(mesh), address.asset_key)

    return check


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


def _duration(text: str, option: str | None = None) -> timedelta:
    """A positive duration: a number and a unit s, m, h or d (``90s``, ``1.5h``, ``7d``);
    click.BadParameter naming ``option`` (e.g. ``'--retain'``) otherwise."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    try:
        value = timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError, OverflowError):
        raise click.BadParameter(
            f"{text!r}: use a number and a unit s, m, h or d (e.g. 7d)", param_hint=option
        ) from None
    if value <= timedelta(0):
        raise click.BadParameter(f"{text!r}: must be longer than zero", param_hint=option)
    return value


@cli.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option("--retain", default="7d", show_default=True, help="Keep snapshots this recent.")
@click.option(
    "--keep-last", default=5, show_default=True, type=click.IntRange(min=1),
    help="Always keep main's last N.",
)  # fmt: skip
@click.option(
    "--orphan-margin", default="1h", show_default=True,
    help="Remove unreferenced files only when older than this (at least 15m: a younger file "
    "may belong to a publication about to commit it).",
)  # fmt: skip
@click.option(
    "--lock-wait", default="60s", show_default=True,
    help="Wait this long for a publication of a product in progress, then skip the product "
    "(run again later).",
)  # fmt: skip
@click.option(
    "--dry-run", is_flag=True,
    help="Report every branch, snapshot and orphan file a run would remove (files that expiry "
    "and dropping branches would free included); change nothing.",
)  # fmt: skip
@click.option(
    "-v", "--verbose", is_flag=True,
    help="List every branch, snapshot and file removed (with --dry-run: that would be).",
)  # fmt: skip
@click.pass_context
@mesh_command
def maintain(
    ctx: click.Context,
    domains: tuple[str, ...],
    retain: str,
    keep_last: int,
    orphan_margin: str,
    lock_wait: str,
    dry_run: bool,
    verbose: bool,
) -> None:
    """Expire old snapshots, drop stale audit branches and remove orphan files of products.

    Each product is maintained under its publication lock: a product being published is
    waited for (--lock-wait), then skipped and reported (run again). A product whose table
    cannot be read is reported with the fix and left untouched; the others are maintained and
    the command exits 1 at the end."""
    from mesh_platform.addressing import ProductAddress
    from mesh_platform.products.cuts import load_cuts, protected_snapshots
    from mesh_platform.storage.iceberg import open_catalog
    from mesh_platform.storage.maintenance import MIN_ORPHAN_MARGIN, MaintenanceReport
    from mesh_platform.storage.maintenance import maintain as maintain_table

    retain_for = _duration(retain, "'--retain'")
    margin = _duration(orphan_margin, "'--orphan-margin'")
    wait = _duration(lock_wait, "'--lock-wait'")
    if margin < MIN_ORPHAN_MARGIN:
        floor = f"{int(MIN_ORPHAN_MARGIN.total_seconds() // 60)}m"
        raise click.BadParameter(
            f"{orphan_margin!r} is below the safe floor of {floor}: a younger unreferenced file "
            f"may belong to a publication about to commit it (use {floor} or more)",
            param_hint="'--orphan-margin'",
        )
    debug = ctx.find_root().params.get("debug")
    mesh = _mesh(ctx)
    selected = _selected_domains(mesh, domains)
    catalog = open_catalog(mesh)
    namespaces = catalog.list_namespaces()
    reports: list[MaintenanceReport] = []
    failed: list[tuple[str, MeshError]] = []
    table = Table(title="mesh maintain" + (" (dry run)" if dry_run else ""))
    for col in ("product", "result", "expired snapshots", "removed branches", "orphan files"):
        table.add_column(col)
    for domain in selected:
        if (domain,) not in namespaces:
            continue
        # What consumers read next (products.cuts) is never expired.
        protected = protected_snapshots(load_cuts(mesh, domain))
        for _, name in catalog.list_tables(domain):
            product = f"{domain}.{name}"
            try:
                report = maintain_table(
                    catalog,
                    ProductAddress.parse(product),  # nations_v2: major 2 of nations
                    retain=retain_for,
                    keep_last=keep_last,
                    orphan_margin=margin,
                    dry_run=dry_run,
                    lock_wait=wait,
                    protect=protected.get(product, set()),
                )
            except MeshError as exc:
                if debug:
                    raise
                failed.append((product, exc))
                table.add_row(escape(printable_value(product)), "[red]failed[/]", "-", "-", "-")
                continue
            reports.append(report)
            table.add_row(*_maintenance_row(report))
    out.print(table)
    if verbose:
        for report in reports:
            _print_maintenance_details(report)
    for report in reports:
        if report.skipped:
            console.print(
                f"[yellow]skipped[/] {report.address}: {escape(printable(report.skipped))}",
                highlight=False,
            )
    for _, exc in failed:
        console.print(f"[bold red]error:[/] {escape(printable(str(exc)))}", highlight=False)
    if failed:
        console.print(
            f"{len(failed)} product(s) could not be maintained: "
            + ", ".join(escape(printable_value(p)) for p, _ in failed),
            highlight=False,
        )
        raise SystemExit(1)


def _maintenance_row(report: Any) -> tuple[str, ...]:
    """One row of `mesh maintain`'s table (a MaintenanceReport)."""
    if report.skipped:
        return (str(report.address), "[yellow]skipped[/]", "-", "-", "-")
    branches = ", ".join(escape(printable_value(b)) for b in report.removed_branches) or "-"
    if report.kept_branches:
        kept = ", ".join(escape(printable_value(b)) for b in report.kept_branches)
        branches += f" (kept: {kept})"
    counts = report.orphan_counts()
    files = str(len(report.orphan_files))
    if counts:
        files += " (" + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + ")"
    result = "dry run" if report.dry_run else "ok"
    return (str(report.address), result, str(len(report.expired_snapshots)), branches, files)


def _print_maintenance_details(report: Any) -> None:
    """--verbose: each branch, snapshot and file a product's maintenance removed."""
    if report.skipped:
        return
    verb = "would remove" if report.dry_run else "removed"
    for name in report.removed_branches + report.kept_branches:
        what = verb if name in report.removed_branches else "kept"
        why = report.branch_reasons.get(name, "")
        out.print(
            f"{report.address}: {what} branch {escape(printable_value(name))} ({escape(why)})",
            highlight=False,
        )
    for snapshot_id in report.expired_snapshots:
        out.print(f"{report.address}: {verb} snapshot {snapshot_id}", highlight=False)
    for location in report.orphan_files:
        out.print(
            f"{report.address}: {verb} file {escape(printable_value(location))}", highlight=False
        )


@cli.command()
@click.option(
    "--product", "products_", multiple=True, required=True, metavar="DOMAIN.PRODUCT",
    help="The product to repair (repeatable).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Report what would be done; change nothing.")
@click.option(
    "--drop", is_flag=True,
    help="When no readable metadata file is left, remove the catalog entry (the files stay).",
)  # fmt: skip
@click.pass_context
@mesh_command
def repair(ctx: click.Context, products_: tuple[str, ...], dry_run: bool, drop: bool) -> None:
    """Bring a product whose current metadata is broken (a metadata file, manifest list,
    manifest or data file of main's snapshot missing or corrupt) back to a readable state.

    The catalog pointer is rolled back to the newest whole, committed metadata file, and every
    snapshot the rollback drops is listed. If no such file is left, the catalog entry is
    dropped only with --drop (never on an access error), and the command to republish the
    product from its sources is printed (`mesh build
    --full-refresh --product`, with the build options you use). Refused while a publication of
    the product is running. A readable product is left alone. Runbook: docs/operations.md, "A
    product's metadata is corrupt"."""
    from mesh_platform.storage.iceberg import open_catalog
    from mesh_platform.storage.repair import repair as repair_product

    mesh = _mesh(ctx)
    addresses = [ProductAddress.parse(p) for p in products_]
    catalog = open_catalog(mesh)
    rebuild: list[str] = []
    try:
        for address in addresses:
            report = repair_product(
                catalog, address, dry_run=dry_run, acknowledged=_acknowledged(mesh), drop=drop
            )
            for line in report.lines():
                out.print(escape(printable(line)), highlight=False)
            if report.needs_rebuild:
                rebuild.append(str(address))
    finally:
        catalog.engine.dispose()
    if not rebuild:
        return
    if not drop and not dry_run:
        raise MeshError(
            f"no readable metadata file is left for {', '.join(rebuild)}; nothing was changed",
            fix=f"`mesh repair --drop {' '.join(f'--product {a}' for a in rebuild)}` removes "
            "the catalog entry (the files stay), then republish from the sources with `mesh "
            f"build --full-refresh {' '.join(f'--product {a}' for a in rebuild)}`",
        )
    command = "mesh build --full-refresh " + " ".join(f"--product {a}" for a in rebuild)
    out.print(
        f"next: republish from the sources: {command} (with the options your builds use, "
        "e.g. --scale)",
        highlight=False,
    )


@cli.command()
@click.pass_context
@mesh_command
def doctor(ctx: click.Context) -> None:
    """Show the deployment profile and check that each of its servers answers (exit 1 if not).

    Secrets are never printed: URLs lose their password, keys are not shown.
    """
    from mesh_platform.storage.preflight import probes, redact

    mesh = _mesh(ctx)
    out.print(f"profile: {mesh.settings.profile}")
    out.print(f"catalog: {redact(mesh.catalog_uri)} (name {mesh.settings.catalog.name})")
    out.print(f"warehouse: {mesh.warehouse}")
    storage = f" (storage: {redact(mesh.postgres_url or '')})" if mesh.production else ""
    out.print(f"Dagster instance: {mesh.dagster_home}{storage}")
    failed = 0
    for probe in probes(mesh):
        failed += not probe.ok
        status = "ok" if probe.ok else f"FAILED: {probe.detail}"
        out.print(f"  {probe.service}: {probe.target}: {status}")
    if failed:
        _fail(f"{failed} server(s) of the {mesh.settings.profile} profile do not answer")


@cli.command()
@click.option("--write", is_flag=True, help="Rewrite workspace.yaml from domains/.")
@click.pass_context
@mesh_command
def workspace(ctx: click.Context, write: bool) -> None:
    """Check that workspace.yaml lists exactly the domains in domains/ (or --write it)."""
    from mesh_platform.workspace import check_workspace, render_workspace

    mesh = _mesh(ctx)
    if write:
        mesh.workspace_file.write_text(render_workspace(mesh))
        out.print(f"wrote {mesh.workspace_file}")
    names = [loc.name for loc in check_workspace(mesh)]
    out.print(f"workspace.yaml lists {len(names)} domain(s): {', '.join(names)}")


@cli.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "junit"]), default="table",
    show_default=True, help="Output format (junit: for CI test reports).",
)  # fmt: skip
@click.pass_context
@mesh_command
def check(ctx: click.Context, domains: tuple[str, ...], fmt: str) -> None:
    """Evaluate every governance policy without building anything; exit 1 on a blocking one."""
    import json

    from mesh_platform.governance.evaluate import check_domain

    mesh = _mesh(ctx)
    results = {name: check_domain(mesh, name) for name in _selected_domains(mesh, domains)}
    blocking = sum(v.blocking for vs in results.values() for v in vs)
    if fmt == "json":
        out.print_json(json.dumps({
            "blocking": blocking,
            "violations": [
                {"domain": d, "policy": v.policy, "subject": v.subject, "column": v.column,
                 "message": v.message, "fix": v.fix, "file": v.file, "severity": v.severity,
                 "waived_by": v.waived_by, "blocking": v.blocking}
                for d, vs in results.items() for v in vs
            ],
        }))  # fmt: skip
    elif fmt == "junit":
        click.echo(_junit(results))
    else:
        table = Table(title=f"mesh check: {blocking} blocking violation(s)")
        for column in ("domain", "policy", "product / column", "problem and fix", "file"):
            table.add_column(column)
        for d, vs in results.items():
            for v in vs:
                state = "waived" if v.waived_by else v.severity
                subject = v.subject + (f" / {v.column}" if v.column else "")
                table.add_row(d, f"{v.policy} ({state})", subject, f"{v.message}\nfix: {v.fix}",
                              v.file)  # fmt: skip
        out.print(table)
        if not any(results.values()):
            out.print(f"{len(results)} domain(s) comply with every policy")
    if blocking:
        raise SystemExit(1)


def _principal(as_: str | None) -> str:
    principal = as_ or os.environ.get("MESH_PRINCIPAL")
    if not principal:
        raise MeshError(
            "no principal: the mesh reads nothing for an anonymous reader",
            fix="pass --as <principal> (a domain, team:<t>, user:<u>) or set MESH_PRINCIPAL",
        )
    return principal


@cli.command()
@click.argument("sql")
@click.option("--as", "as_", metavar="PRINCIPAL", help="Read as this principal ($MESH_PRINCIPAL).")
@click.option("--at", metavar="SNAPSHOT|TIMESTAMP", help="Time travel: a snapshot id or ISO time.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
    show_default=True, help="Output format.",
)  # fmt: skip
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
    help="Write the result to this file instead of standard output.",
)  # fmt: skip
@click.pass_context
@mesh_command
def query(
    ctx: click.Context, sql: str, as_: str | None, at: str | None, fmt: str, output: Path | None
) -> None:
    """Run federated SQL over the mesh's products, under PRINCIPAL's grants and masks.

    Products are named by address, e.g.
    mesh query --as marketing "SELECT market_segment, count(*) FROM sales.customers GROUP BY 1"
    """
    from mesh_platform.query.engine import QuerySession, parse_at

    if fmt == "table" and output is not None:
        raise MeshError("--format table prints to the terminal", fix="use csv, json or parquet")
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise MeshError("parquet is binary: not written to a terminal", fix="pass --output FILE")
    with QuerySession(_principal(as_), mesh=_mesh(ctx)) as session:
        if fmt == "parquet":  # the only format that needs pyarrow (~0.4 s to import)
            import pyarrow.parquet as pq

            result = session.sql(sql, at=parse_at(at))
            pq.write_table(result, output if output is not None else sys.stdout.buffer)
            count = result.num_rows
        else:
            names, rows = session.rows(sql, at=parse_at(at))
            count = len(rows)
            _print_rows(fmt, names, rows, output)
    if output is not None:
        console.print(f"{count} row(s) written to {output}")


def _print_rows(fmt: str, names: list[str], rows: list[tuple], output: Path | None) -> None:
    if fmt == "table":
        table = Table(caption=f"{len(rows)} row(s)")
        for name in names:
            table.add_column(escape(printable_value(name)))
        for row in rows:
            table.add_row(*("" if v is None else escape(printable_value(v)) for v in row))
        out.print(table)
        return
    import contextlib

    with contextlib.ExitStack() as stack:
        target = (
            stack.enter_context(output.open("w", newline="")) if output is not None else sys.stdout
        )
        if fmt == "csv":
            import csv

            if output is None and sys.stdout.isatty():  # a terminal: no raw control characters
                names = [printable_value(n) for n in names]
                rows = [tuple(None if v is None else printable_value(v) for v in r) for r in rows]
            writer = csv.writer(target)
            writer.writerow(names)
            writer.writerows(rows)
        else:
            import json

            records = [dict(zip(names, row, strict=True)) for row in rows]
            target.write(json.dumps(records, default=str) + "\n")


@cli.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option("--search", metavar="TEXT", help="Only products whose address, purpose, "
              "description, owner, tags or columns mention TEXT.")  # fmt: skip
@click.option("--as", "as_", metavar="PRINCIPAL", help="Show what PRINCIPAL may read of each.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
@mesh_command
def products(
    ctx: click.Context, domains: tuple[str, ...], search: str | None, as_: str | None, fmt: str
) -> None:
    """List the mesh's products: address, owner, version, status, last published snapshot and
    time, rows, check status. With --as, PRINCIPAL's access and the columns it may read
    (columns are shown only to readers with a grant)."""
    import datetime as dt
    import json

    from mesh_platform.access.grants import plan_read
    from mesh_platform.access.principals import AccessDeniedError, load_principals
    from mesh_platform.discovery.catalog import product_records
    from mesh_platform.discovery.catalog import search as search_records
    from mesh_platform.domain import list_domain_names

    mesh = _mesh(ctx)
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
    principal = None
    if as_:
        principal = load_principals(mesh.root, set(known)).resolve(as_)
    access: dict[str, tuple[str, list[str]]] = {}
    for r in records if principal else ():
        d = r.descriptor
        try:
            plan = plan_read(
                principal, d, stored_columns=[c.name for c in d.columns], today=dt.date.today()
            )
        except AccessDeniedError as exc:
            access[r.address] = (exc.what.split(": ", 1)[-1], [])
        else:
            state = "owner" if plan.owner else "granted"
            if plan.row_filter:
                state += f" (rows: {plan.row_filter})"
            masked = {c.name for c in d.columns if c.masking} | set(plan.masks)
            access[r.address] = (state, [c + ("*" if c in masked else "") for c in plan.columns])
    if fmt == "json":
        rows = []
        for r in records:
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
            if principal:
                row["access"], row["columns"] = access[r.address]
            rows.append(row)
        click.echo(json.dumps(rows, indent=2))
        _unreadable(records)
        return
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
            state, cols = access[r.address]
            row += [escape(state), escape(", ".join(cols))]
        table.add_row(*row)
    out.print(table)
    if not records:
        out.print("no product matches" + (f" {search!r}" if search else ""))
    _unreadable(records)


def _unreadable(records: list[Any]) -> None:
    """Each listed product whose table could not be read, with its file and fix; exit 1."""
    broken = [r for r in records if r.problem is not None]
    for r in broken:
        console.print(f"[bold red]error:[/] {escape(printable(str(r.problem)))}", highlight=False)
    if broken:
        _fail(f"{len(broken)} product(s) could not be read: {', '.join(r.address for r in broken)}")


@cli.command()
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
    from mesh_platform.discovery.html import catalog_command

    index = catalog_command(_mesh(ctx), output)
    out.print(f"catalog written: {index}\nopen {index.as_uri()}", highlight=False, soft_wrap=True)


@cli.command()
@click.argument("address")
@click.option(
    "--format", "fmt", type=click.Choice(["odcs", "odps"]), required=True,
    help="odcs: the data contract (Open Data Contract Standard v3); odps: the product descriptor "
    "(Open Data Product Standard v1).",
)  # fmt: skip
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
    help="Write the YAML to this file (atomically) instead of standard output.",
)  # fmt: skip
@click.option(
    "--validate", is_flag=True,
    help="Check the document against the standard's official JSON Schema before writing it "
    "(needs the dev dependencies jsonschema and open-data-contract-standard).",
)  # fmt: skip
@click.pass_context
@mesh_command
def export(ctx: click.Context, address: str, fmt: str, output: Path | None, validate: bool) -> None:
    """Export a product in an open standard, as YAML: its data contract (ODCS, Bitol Open Data
    Contract Standard v3) or its product descriptor (ODPS, Bitol Open Data Product Standard v1).
    ADDRESS is a product address (sales.orders) or URN."""
    from mesh_platform.discovery.standards import export_product

    text = export_product(_mesh(ctx), address, fmt, output=output, validate=validate)
    if output is None:
        click.echo(text, nl=False)
    else:
        console.print(f"{fmt} document of {escape(address)} written to {escape(str(output))}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


@cli.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain (repeatable).")
@click.option("--product", "products_", multiple=True, metavar="ADDRESS",
              help="Only this product (repeatable).")  # fmt: skip
@click.option("--since", default="7d", show_default=True, help="Window: '12h', '7d', '30d'.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
@mesh_command
def sla(
    ctx: click.Context, domains: tuple[str, ...], products_: tuple[str, ...], since: str, fmt: str
) -> None:
    """SLA attainment per product over a window: freshness (share of time a fresh published
    snapshot was available), quality (share of gate runs that passed), the error budget left
    against the descriptor's targets, and the last breach with its cause."""
    import json

    from mesh_platform.sla.report import journal_note, product_attainment

    window = _duration(since)
    mesh = _mesh(ctx)
    results = product_attainment(mesh, since=window, domains=domains, addresses=products_)
    if note := journal_note(mesh):  # events the catalog refused: counted, not yet in the table
        console.print(f"[yellow]note:[/] {escape(printable(note))}", highlight=False)
    if fmt == "json":
        rows = [
            {
                "address": a.address, "since": a.since.isoformat(), "until": a.until.isoformat(),
                "freshness": a.freshness, "freshness_target": a.freshness_target,
                "freshness_budget_left": a.freshness_budget_left, "quality": a.quality,
                "quality_target": a.quality_target, "quality_budget_left": a.quality_budget_left,
                "runs": a.runs, "failed_runs": a.failed_runs, "met": a.met,
                "last_breach": None if a.last_breach is None else {
                    "at": a.last_breach.at.isoformat(), "kind": a.last_breach.kind,
                    "cause": a.last_breach.cause,
                },
            }
            for a in results
        ]  # fmt: skip
        click.echo(json.dumps(rows, indent=2))
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


@cli.group()
def new() -> None:
    """Scaffold a new domain or a new product."""


def _report_scaffold(result: Any, what: str) -> None:
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
    from mesh_platform.scaffold import new_domain as scaffold

    result = scaffold(_mesh(ctx), name, team=team, contact=contact, description=description)
    _report_scaffold(result, f"domain {name} created (owner team:{team})")


@new.command("product")
@click.argument("domain")
@click.argument("name")
@click.pass_context
@mesh_command
def new_product(ctx: click.Context, domain: str, name: str) -> None:
    """Add a product skeleton NAME (model + descriptor) to DOMAIN."""
    from mesh_platform.scaffold import new_product as scaffold

    result = scaffold(_mesh(ctx), domain, name)
    _report_scaffold(result, f"product {domain}.{name} added (status draft)")


@cli.command()
@click.argument("address")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.pass_context
@mesh_command
def describe(ctx: click.Context, address: str, fmt: str) -> None:
    """Show one product in full: purpose, owner, schema and classification, SLA and whether it
    holds, who may read it, upstream and downstream products, snapshots, versions."""
    import json

    from mesh_platform.discovery.catalog import find_record
    from mesh_platform.discovery.describe import render_text
    from mesh_platform.sla.report import brief, product_attainment

    mesh = _mesh(ctx)
    record = find_record(mesh, address)
    (week,) = product_attainment(mesh, since=timedelta(days=7), addresses=[record.address])
    if fmt == "json":
        data = record.to_dict()
        data["attainment_7d"] = {
            "freshness": week.freshness, "freshness_target": week.freshness_target,
            "freshness_budget_left": week.freshness_budget_left, "quality": week.quality,
            "quality_target": week.quality_target, "runs": week.runs,
            "quality_budget_left": week.quality_budget_left,
        }  # fmt: skip
        click.echo(json.dumps(data, indent=2, default=str))
        return
    out.print(render_text(record, mesh), highlight=False)
    out.print(f"[bold]SLA, last 7 days[/]  {escape(brief(week))}  (details: mesh sla)")


@cli.command()
@click.option("--limit", default=20, show_default=True, help="Show the last N queries.")
@click.option("--as", "as_", metavar="PRINCIPAL", help="Only this principal's queries.")
@click.pass_context
@mesh_command
def audit(ctx: click.Context, limit: int, as_: str | None) -> None:
    """Show the query audit log: who read which products at which snapshots (never data)."""
    from mesh_platform.query.audit import AuditLog

    mesh = _mesh(ctx)
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


@cli.group()
def deploy() -> None:
    """Generate configuration for running the mesh at scale (mesh_platform/deploy/)."""


@deploy.command("trino")
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write Trino's etc/ files to (created if missing).",
)  # fmt: skip
@click.option(
    "--trino-etc", default="/etc/trino", show_default=True,
    help="Where the files will live on the Trino coordinator (paths inside the properties).",
)  # fmt: skip
@click.pass_context
@mesh_command
def deploy_trino(ctx: click.Context, output: Path, trino_etc: str) -> None:
    """Write a Trino Iceberg catalog on the mesh's catalog and warehouse, and file-based access
    control rules expressing every grant (rules.json, group.txt). No credentials are written
    (Trino reads them from its environment); rules.json holds the masking salt (mode 0600)."""
    from mesh_platform.deploy.trino import write_trino

    config, paths = write_trino(_mesh(ctx), output, etc_dir=trino_etc)
    for path in paths:
        out.print(f"  wrote {escape(str(path))}", highlight=False)
    groups = sum(1 for users in config.identities.members.values() if users)
    out.print(
        f"Trino: {len(config.identities.users)} users, {groups} groups with members; copy the "
        f"files to {escape(trino_etc)} on the coordinator. rules.json holds the masking salt: "
        "readable by its owner only (0600).",
        highlight=False,
    )
    for note in config.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    for warning in config.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)


@deploy.command("helm")
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write values.yaml and values-user-deployments.yaml to.",
)  # fmt: skip
@click.option("--image", metavar="REPO:TAG", help="Image of the domains' code servers and runs.")
@click.option(
    "--secret", default="mesh-production", show_default=True,
    help="Kubernetes secret holding the mesh's environment (credentials, MESH_PII_SALT).",
)  # fmt: skip
@click.pass_context
@mesh_command
def deploy_helm(ctx: click.Context, output: Path, image: str | None, secret: str) -> None:
    """Write values for Dagster's Helm charts: one user-code deployment per domain of
    workspace.yaml, webserver and daemon with the K8sRunLauncher and the local instance's run
    and pool limits. No secrets are written."""
    from mesh_platform.deploy.helm import write_helm

    config, paths = write_helm(_mesh(ctx), output, image=image, secret=secret)
    for path in paths:
        out.print(f"  wrote {escape(str(path))}", highlight=False)
    out.print(f"Helm: one deployment per domain: {', '.join(config.locations)}", highlight=False)
    for warning in config.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)


@deploy.command("s3-policies")
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write <domain>.json and README.md to (created if missing).",
)  # fmt: skip
@click.pass_context
@mesh_command
def deploy_s3_policies(ctx: click.Context, output: Path) -> None:
    """Write one object-store (IAM JSON) policy per domain of the s3:// warehouse: read/write on
    the domain's own prefix, read on the platform's namespace and on the products it is granted,
    nothing of other domains. README.md says how to apply them (AWS IAM, MinIO)."""
    from mesh_platform.deploy.s3 import write_s3_policies

    policies, paths = write_s3_policies(_mesh(ctx), output)
    for path in paths:
        out.print(f"  wrote {escape(str(path))}", highlight=False)
    out.print(
        f"object-store policies for {len(policies.inputs)} domain(s); apply each to that "
        "domain's own credentials (aws iam put-user-policy / mc admin policy create: see "
        "README.md), and regenerate after a grant changes.",
        highlight=False,
    )
    for note in policies.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def _junit(results: dict) -> str:
    from xml.etree import ElementTree as ET

    suites = ET.Element("testsuites", name="mesh check")
    for domain, violations in results.items():
        suite = ET.SubElement(
            suites, "testsuite", name=domain, tests=str(max(1, len(violations))),
            failures=str(sum(v.blocking for v in violations)),
        )  # fmt: skip
        if not violations:
            ET.SubElement(suite, "testcase", classname=domain, name="all policies")
        for v in violations:
            case = ET.SubElement(
                suite, "testcase", classname=f"{domain}.{v.policy}",
                name=v.subject + (f".{v.column}" if v.column else ""), file=v.file,
            )  # fmt: skip
            if v.blocking:
                ET.SubElement(case, "failure", message=v.message).text = f"fix: {v.fix}"
            else:
                ET.SubElement(case, "skipped", message=v.waived_by or f"{v.severity}: {v.message}")
    return ET.tostring(suites, encoding="unicode")


if __name__ == "__main__":
    cli()
