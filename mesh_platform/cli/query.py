"""``mesh query``: a consumer reading products with SQL, under its grants and masks.

Alone in its module: the commands of a consumer's read path import only what a query needs
(the query engine), not Dagster.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mesh_platform.cli.common import console, load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.cli.options import format_option, principal_option
from mesh_platform.errors import MeshError, printable_value
from mesh_platform.query.engine import parse_at
from mesh_platform.query.remote import open_session


@click.command()
@click.argument("sql")
@click.option("--as", "as_", metavar="PRINCIPAL", help="Read as this principal ($MESH_PRINCIPAL).")
@click.option("--at", metavar="SNAPSHOT|TIMESTAMP", help="Time travel: a snapshot id or ISO time.")
@format_option("table", "csv", "json", "parquet")
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

    Locally, --as tries a principal's grants (audited as impersonation). With MESH_ENDPOINT set
    (production), the query goes to the query service, logged in as --as with MESH_TOKEN.
    """
    if fmt == "table" and output is not None:
        raise MeshError("--format table prints to the terminal", fix="use csv, json or parquet")
    if fmt == "parquet" and output is None and sys.stdout.isatty():
        raise MeshError("parquet is binary: not written to a terminal", fix="pass --output FILE")
    with open_session(principal_option(as_), mesh=load_context_mesh(ctx)) as session:
        if fmt == "parquet":
            import pyarrow.parquet as pq  # heavy: ~0.4 s, only the parquet format needs it

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
    with contextlib.ExitStack() as stack:
        target = (
            stack.enter_context(output.open("w", newline="")) if output is not None else sys.stdout
        )
        if fmt == "csv":
            if output is None and sys.stdout.isatty():  # a terminal: no raw control characters
                names = [printable_value(n) for n in names]
                rows = [tuple(None if v is None else printable_value(v) for v in r) for r in rows]
            writer = csv.writer(target)
            writer.writerow(names)
            writer.writerows(rows)
        else:
            records = [dict(zip(names, row, strict=True)) for row in rows]
            target.write(json.dumps(records, default=str) + "\n")
