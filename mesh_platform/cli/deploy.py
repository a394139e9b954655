"""``mesh deploy trino|helm|s3-policies``: configuration for running the mesh at scale
(:mod:`mesh_platform.deploy`)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from mesh_platform.cli.common import console, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.deploy.helm import write_helm
from mesh_platform.deploy.s3 import write_s3_policies
from mesh_platform.deploy.trino import write_trino


@click.group()
def deploy() -> None:
    """Generate configuration for running the mesh at scale (mesh_platform/deploy/)."""


def _print_written(paths: list[Path]) -> None:
    for path in paths:
        out.print(f"  wrote {escape(str(path))}", highlight=False)


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
    config, paths = write_trino(load_context_mesh(ctx), output, etc_dir=trino_etc)
    _print_written(paths)
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
    config, paths = write_helm(load_context_mesh(ctx), output, image=image, secret=secret)
    _print_written(paths)
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
    policies, paths = write_s3_policies(load_context_mesh(ctx), output)
    _print_written(paths)
    out.print(
        f"object-store policies for {len(policies.inputs)} domain(s); apply each to that "
        "domain's own credentials (aws iam put-user-policy / mc admin policy create: see "
        "README.md), and regenerate after a grant changes.",
        highlight=False,
    )
    for note in policies.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
