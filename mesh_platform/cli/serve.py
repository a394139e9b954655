"""``mesh serve``: the authenticated query service (PostgreSQL protocol) over the mesh.

Alone in its module: the service imports the query engine and the protocol codec, not Dagster.
"""

from __future__ import annotations

import asyncio

import click

from mesh_platform.cli.common import console, load_context_mesh
from mesh_platform.cli.main import mesh_command
from mesh_platform.serve.server import Server


@click.command()
@click.option("--host", help="Address to listen on (mesh.yaml serve.host; default 127.0.0.1).")
@click.option("--port", type=int, help="PostgreSQL protocol port (serve.port; default 5433).")
@click.pass_context
@mesh_command
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the mesh's products to SQL clients, BI tools and notebooks, under each login's grants.

    Clients connect with the PostgreSQL protocol (psql, psycopg, ADBC, SQLAlchemy): user = the
    principal, password = a token from `mesh token create` (or an OpenID Connect JWT when
    serve.oidc is configured). Off loopback, serve.tls is required.

        mesh serve --port 5433
        psql "host=127.0.0.1 port=5433 user=user:carol dbname=mesh" -c "SELECT 1"
    """
    server = Server(load_context_mesh(ctx), host=host, port=port)
    asyncio.run(server.run(banner=_banner))


def _banner(server: Server) -> None:
    host, port = server.bound or (server.host, server.port)
    settings = server.settings
    methods = ["token"] + (["oidc (" + settings.oidc.issuer + ")"] if settings.oidc else [])
    console.print(f"mesh serve: listening on {host}:{port} (PostgreSQL protocol)", highlight=False)
    console.print(
        f"  tls: {'on' if server.tls_context else 'off (loopback only)'}; "
        f"auth: {', '.join(methods)}; max connections: {settings.max_connections}",
        highlight=False,
    )
    if server.health_port is not None:
        console.print(
            f"  health: http://{host}:{server.health_port}/healthz, /readyz", highlight=False
        )
    console.print("  stop: Ctrl-C or SIGTERM (running queries drain first)", highlight=False)
