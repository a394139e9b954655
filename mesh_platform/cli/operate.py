"""``mesh maintain`` and ``mesh repair``: the commands of the platform's operators that change
the warehouse (runbook: docs/operations.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import click
from rich.markup import escape
from rich.table import Table

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.acknowledge import known_snapshots
from mesh_platform.assets.keys import product_key
from mesh_platform.cli.common import console, load_context_mesh, out
from mesh_platform.cli.lifecycle import print_orphans
from mesh_platform.cli.main import mesh_command
from mesh_platform.cli.options import duration_option, selected_domains
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError, printable, printable_value
from mesh_platform.instance import get_instance
from mesh_platform.products.lifecycle import find_orphans, load_retirements
from mesh_platform.products.maintenance import maintain_products
from mesh_platform.products.registry import load_directory
from mesh_platform.products.retirement import retire as finish_retirement
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.compaction import CompactionReport
from mesh_platform.storage.maintenance import (
    MIN_ORPHAN_MARGIN,
    MaintenanceReport,
    check_orphan_margin,
)
from mesh_platform.storage.repair import repair as repair_product


@click.command()
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
    "--compact/--no-compact", default=True, show_default=True,
    help="Rewrite tables of many small files (or of files without field ids or zstd) into "
    "target-size files, through write-audit-publish.",
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
    compact: bool,
    verbose: bool,
) -> None:
    """Compact small files, expire old snapshots, drop stale audit branches and remove orphan
    files of products (and of the platform's own tables when no --domain is given).

    Each product is maintained under its publication lock: a product being published is
    waited for (--lock-wait), then skipped and reported (run again). A product whose table
    cannot be read is reported with the fix and left untouched; the others are maintained and
    the command exits 1 at the end."""
    retain_for = duration_option(retain, "'--retain'")
    margin = duration_option(orphan_margin, "'--orphan-margin'")
    wait = duration_option(lock_wait, "'--lock-wait'")
    _check_orphan_margin(orphan_margin, margin)
    debug = ctx.find_root().params.get("debug")
    mesh = load_context_mesh(ctx)
    selected = selected_domains(mesh, domains)
    reports: list[MaintenanceReport] = []
    compactions: list[CompactionReport] = []
    failed: list[tuple[str, MeshError]] = []
    table = Table(title="mesh maintain" + (" (dry run)" if dry_run else ""))
    for col in (
        "product", "result", "rewrite", "expired snapshots", "removed branches", "orphan files"
    ):  # fmt: skip
        table.add_column(col)
    for done in maintain_products(
        mesh, selected, retain=retain_for, keep_last=keep_last, orphan_margin=margin,
        lock_wait=wait, dry_run=dry_run, compaction=compact, platform=not domains,
    ):  # fmt: skip
        rewrite = _rewrite_cell(done.compaction)
        if done.error is not None:
            if debug:
                raise done.error
            failed.append((done.product, done.error))
            table.add_row(
                escape(printable_value(done.product)), "[red]failed[/]", rewrite, "-", "-", "-"
            )
        elif done.report is not None:
            reports.append(done.report)
            row = _maintenance_row(done.report)
            table.add_row(*row[:2], rewrite, *row[2:])
            if verbose and done.compaction is not None and done.compaction.reasons:
                compactions.append(done.compaction)
    out.print(table)
    directory = load_directory(mesh, refresh=False)  # as prepared: no dbt parse here
    orphans = find_orphans(mesh, directory.descriptors, directory.problems)
    print_orphans([o for o in orphans if not domains or o.namespace in domains])
    for report in compactions:
        why = f" ({escape(printable(report.skipped))})" if report.skipped else ""
        out.print(
            f"{report.address}: rewrite for {escape('; '.join(report.reasons))}{why}",
            highlight=False,
        )
    _print_maintenance_outcome(reports, failed, verbose=verbose)


def _rewrite_cell(report: CompactionReport | None) -> str:
    """The rewrite column: files before -> after (with --dry-run: the estimate), or not done
    (why: with --verbose)."""
    if report is None or (not report.reasons and not report.skipped):
        return "-"
    if report.skipped:
        return "[yellow]not rewritten[/]"
    after = "?" if report.files_after is None else str(report.files_after)
    return f"{report.files_before} -> {'~' if report.dry_run else ''}{after} files"


def _check_orphan_margin(text: str, margin: timedelta) -> None:
    """--orphan-margin is at least the library's safe floor (click.BadParameter otherwise)."""
    try:
        check_orphan_margin(margin)
    except MeshError:
        floor = f"{int(MIN_ORPHAN_MARGIN.total_seconds() // 60)}m"
        raise click.BadParameter(
            f"{text!r} is below the safe floor of {floor}: a younger unreferenced file "
            f"may belong to a publication about to commit it (use {floor} or more)",
            param_hint="'--orphan-margin'",
        ) from None


def _print_maintenance_outcome(
    reports: list[MaintenanceReport], failed: list[tuple[str, MeshError]], *, verbose: bool
) -> None:
    """After the table: the details (--verbose), the skipped and the failed products (exit 1)."""
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


def _maintenance_row(report: MaintenanceReport) -> tuple[str, ...]:
    """One row of `mesh maintain`'s table."""
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


def _print_maintenance_details(report: MaintenanceReport) -> None:
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


def _acknowledged(mesh: Mesh) -> Callable[[ProductAddress, int], bool]:
    """Whether a snapshot's publication was acknowledged: a Dagster materialisation of the
    product recorded it (materialisations are reported only after publication)."""

    def check(address: ProductAddress, snapshot_id: int) -> bool:
        if not (mesh.dagster_home / "dagster.yaml").is_file():
            return False
        return snapshot_id in known_snapshots(get_instance(mesh), product_key(address))

    return check


def _finish_retirements(
    mesh: Mesh, addresses: list[ProductAddress], *, dry_run: bool
) -> list[ProductAddress]:
    """Finish the retirements `mesh retire` started and did not finish (a crash); the
    addresses left to repair."""
    pending = {a for a, r in load_retirements(mesh).items() if not r.finished}
    for address in addresses:
        if str(address) not in pending:
            continue
        if dry_run:
            out.print(f"{address}: would finish its interrupted retirement", highlight=False)
            continue
        r = finish_retirement(mesh, address, by="", reason="").retirement
        out.print(f"{address}: retirement by {r.retired_by} finished ({r.reason})",
                  highlight=False)  # fmt: skip
    return [a for a in addresses if str(a) not in pending]


@click.command()
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
    the product is running. A readable product is left alone; a `mesh retire` of it that was
    interrupted is finished. Runbook: docs/operations.md, "A product's metadata is corrupt"."""
    mesh = load_context_mesh(ctx)
    addresses = [ProductAddress.parse(p) for p in products_]
    addresses = _finish_retirements(mesh, addresses, dry_run=dry_run)
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
