"""``mesh up``, ``mesh status``, ``mesh down``: the production topology on one machine
(mesh_platform/deploy/topology.py)."""

from __future__ import annotations

import click
from rich.table import Table

from mesh_platform.cli.common import console, fail, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.config import Mesh
from mesh_platform.dbt.project import prepare as prepare_domain
from mesh_platform.deploy import topology
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.instance import create_instance_storage, prepare_dagster_home


@click.command()
@click.option("--port", default=3000, show_default=True, help="Port of the Dagster webserver.")
@click.option("--serve-port", type=int, help="Port of the query service (default: a free one).")
@click.option("--no-query", is_flag=True, help="Leave the query service (`mesh serve`) out.")
@click.option(
    "--restart", "restart", metavar="DOMAIN|SERVICE",
    help="Restart only DOMAIN's code server (its dbt manifest prepared first: its new code), "
    "or the daemon, the webserver or the query service; the rest keeps serving.",
)  # fmt: skip
@click.pass_context
@mesh_command
def up(
    ctx: click.Context, port: int, serve_port: int | None, no_query: bool, restart: str | None
) -> None:
    """Start what a cluster runs, as processes of this machine: a gRPC code server per domain,
    the Dagster daemon, the webserver and the query service. They run in the background until
    `mesh down`; `mesh status` shows them.

        mesh up --port 3000
        mesh up --restart sales      # sales' new code; the other domains keep serving
        mesh up --restart daemon     # after the daemon died
    """
    mesh = load_context_mesh(ctx)
    home = prepare_dagster_home(mesh)  # the servers checked first on the production profile
    if restart:
        _restart(mesh, restart, home)
        return
    create_instance_storage(home)  # before a code server per domain opens it at once
    started = topology.up(
        mesh,
        home,
        webserver_port=port,
        serve_port=serve_port,
        query_service=not no_query,
        progress=lambda message: console.print(message, highlight=False),
    )
    out.print(
        f"mesh up: {len(started.services)} processes; Dagster UI on "
        f"http://{topology.HOST}:{port}; logs in {topology.topology_dir(mesh) / 'logs'}; "
        "`mesh down` stops them"
    )


def _restart(mesh: Mesh, name: str, home: str) -> None:
    """Restart one service; a domain's manifest is prepared first, and a domain whose dbt
    project cannot be prepared keeps its running code server (its old code)."""
    if name in list_domain_names(mesh):
        prepare_domain(mesh, load_domain(mesh, name))  # DomainError: nothing was stopped
    service, load_error = topology.restart(mesh, name, home)
    out.print(f"{service.name} restarted (pid {service.pid}, port {service.port})")
    if load_error:
        fail(
            f"code location {name} serves no definitions: its code does not load (the UI shows "
            f"this error on the location; the other domains keep serving):\n{load_error}\n"
            f"fix: correct domains/{name}/ (`mesh check` names the problem), then "
            f"`mesh up --restart {name}`"
        )


@click.command()
@click.pass_context
@mesh_command
def status(ctx: click.Context) -> None:
    """Show each process `mesh up` started: pid, port, running, healthy. Exit 1 unless all
    are healthy."""
    mesh = load_context_mesh(ctx)
    rows = topology.status(mesh)
    if not rows:
        out.print("nothing is up (`mesh up` starts the topology)")
        raise SystemExit(1)
    table = Table("service", "pid", "port", "running", "healthy", "detail")
    for row in rows:
        table.add_row(
            row.name, str(row.pid or "-"), str(row.port or "-"), "yes" if row.alive else "no",
            "yes" if row.healthy else "no", row.detail,
        )  # fmt: skip
    out.print(table)
    raise SystemExit(0 if all(r.healthy for r in rows) else 1)


@click.command()
@click.option("--grace", default=topology.GRACE_SECONDS, show_default=True,
              help="Seconds each process has to stop after SIGTERM before SIGKILL.")  # fmt: skip
@click.pass_context
@mesh_command
def down(ctx: click.Context, grace: float) -> None:
    """Stop every process `mesh up` started (SIGTERM, then SIGKILL after --grace seconds)."""
    mesh = load_context_mesh(ctx)
    killed = topology.down(mesh, grace=grace)
    if killed:
        out.print(f"stopped; {', '.join(killed)} needed SIGKILL after {grace:.0f} s")
    else:
        out.print("stopped")
