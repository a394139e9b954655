"""``mesh token create|list|revoke``: the passwords of ``mesh serve``, issued to principals.

Alone in its module: issuing a token imports the tokens file's code, not the query engine or
Dagster. The secret is printed once, alone on standard output (so ``$(mesh token create ...)``
captures it); it is kept nowhere but as a hash (:mod:`mesh_platform.serve.tokens`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
from rich.markup import escape
from rich.table import Table

from mesh_platform.cli.common import console, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.errors import printable_value
from mesh_platform.serve.tokens import TOKEN_PATTERN, parse_expires, token_store

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


@click.group()
def token() -> None:
    """Issue, list and revoke the tokens principals log in to `mesh serve` with."""


def _expires(ctx: click.Context, param: click.Parameter, value: str) -> timedelta | None:
    try:
        return parse_expires(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@token.command("create")
@click.argument("principal")
@click.option(
    "--expires", default="30d", show_default=True, callback=_expires,
    help="How long the token is valid: 30d, 12h, 90m, or never.",
)  # fmt: skip
@click.option("--description", default="", help="What the token is for (shown by list).")
@click.pass_context
@mesh_command
def token_create(
    ctx: click.Context, principal: str, expires: timedelta | None, description: str
) -> None:
    """Issue a token for PRINCIPAL (a domain, team:<t> or user:<u>) and print it once."""
    mesh = load_context_mesh(ctx)
    secret, record = token_store(mesh).create(
        principal,
        expires=expires,
        description=description,
    )
    click.echo(secret)
    serve = mesh.settings.serve
    host = "<server>" if serve.host in WILDCARD_HOSTS else serve.host
    until = f"until {record.expires}" if record.expires else "until revoked"
    console.print(
        f"token {record.id} for {escape(record.principal)}, valid {until}. It is not shown "
        "again: keep it in a secret store. Log in with the principal as the user and the "
        f'token as the password: psql "host={escape(host)} port={serve.port} '
        f'user={escape(record.principal)} password=<the token>"',
        highlight=False,
    )


@token.command("list")
@click.pass_context
@mesh_command
def token_list(ctx: click.Context) -> None:
    """List the issued tokens (never their secrets): revoked and expired ones too."""
    records = token_store(load_context_mesh(ctx)).list()
    if not records:
        console.print("no tokens issued (issue one: mesh token create PRINCIPAL)")
        return
    table = Table(caption=f"{len(records)} token(s)")
    table.add_column("id", no_wrap=True, min_width=12)  # what `revoke` takes: never cut
    for column in ("principal", "created", "expires", "revoked", "description"):
        table.add_column(column, overflow="fold")
    for record in records:
        expires = _moment(record.expires) or "never"
        if record.revoked is None and record.expired():
            expires += " (expired)"
        table.add_row(
            record.id,
            escape(printable_value(record.principal)),
            _moment(record.created),
            expires,
            _moment(record.revoked),
            escape(printable_value(record.description)),
        )
    out.print(table)


def _moment(iso: str | None) -> str:
    """A kept time (ISO, UTC) as the table shows it: to the minute, in UTC."""
    if iso is None:
        return ""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
@mesh_command
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke the token TOKEN_ID: logins and open sessions with it are refused from now on."""
    if match := TOKEN_PATTERN.fullmatch(token_id):
        token_id = match.group(1)  # the whole token pasted: its id, never echoed
    record = token_store(load_context_mesh(ctx)).revoke(token_id)
    console.print(
        f"token {record.id} of {escape(record.principal)} revoked at {record.revoked}",
        highlight=False,
    )
