"""``mesh doctor``: the deployment profile and whether each of its servers answers (a light
command: it imports neither Dagster nor pyiceberg)."""

from __future__ import annotations

import click

from mesh_platform.cli.common import fail, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.storage.preflight import probes
from mesh_platform.urls import redact


@click.command()
@click.pass_context
@mesh_command
def doctor(ctx: click.Context) -> None:
    """Show the deployment profile and check that each of its servers answers (exit 1 if not).

    Secrets are never printed: URLs lose their password, keys are not shown.
    """
    mesh = load_context_mesh(ctx)
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
        fail(f"{failed} server(s) of the {mesh.settings.profile} profile do not answer")
