"""The ``mesh`` command line: the platform's push-button entry points.

Every command loads the mesh from the nearest mesh.yaml (or $MESH_ROOT) and reports problems as
one clear message with the fix, never a traceback, unless --verbose (or --debug) is given: to
`mesh`, or to a command that has its own --verbose (`mesh build --verbose`).

This module holds the group, its global options, the error handling of every command
(:func:`mesh_command`) and the registration of the commands, which live in the modules of
:data:`COMMANDS` grouped by audience. A command's module is imported only when the command runs
(click's lazily loaded subcommands): ``mesh query`` does not import Dagster, and ``mesh --help``
imports no command module at all (it reads their short help from their source).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from mesh_platform.cli.common import fail, load_context_mesh
from mesh_platform.config import private_umask
from mesh_platform.errors import (
    MeshError,
    StateDirError,
    disk_full,
    is_disk_full,
    nearly_full,
    one_line,
)

# command -> its module under mesh_platform.cli (the command is the module's object of that name)
COMMANDS: Mapping[str, str] = {
    "prepare": "build", "build": "build", "ui": "build", "workspace": "build",
    "maintain": "operate", "repair": "operate", "doctor": "doctor",
    "retire": "lifecycle", "deprecations": "lifecycle",
    "check": "govern", "sla": "govern", "audit": "govern", "diff": "diff", "usage": "usage",
    "products": "discover", "describe": "discover", "catalog": "discover", "export": "discover",
    "query": "query", "serve": "serve", "token": "token",
    "new": "scaffold", "adopt": "adopt",
    "deploy": "deploy", "up": "topology", "status": "topology", "down": "topology",
}  # fmt: skip


class LazyGroup(click.Group):
    """A group whose subcommands are imported by name when used (click's documented "lazily
    loading subcommands" pattern); its help lists them without importing any."""

    def __init__(self, *args: Any, lazy_subcommands: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_subcommands:
            return super().get_command(ctx, cmd_name)
        module = importlib.import_module(self._module(cmd_name))
        command = getattr(module, cmd_name)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module.__name__}.{cmd_name} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their short help, as click lists them, read from the docstrings in
        the commands' source: listing them imports none of them."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            if name in self.lazy_subcommands:
                command = click.Command(name, help=self._docstring(name))
            elif (command := super().get_command(ctx, name)) is None or command.hidden:
                continue
            rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _module(self, cmd_name: str) -> str:
        return f"{__package__}.{self.lazy_subcommands[cmd_name]}"

    def _docstring(self, cmd_name: str) -> str | None:
        return _docstrings(self._module(cmd_name)).get(cmd_name)


@functools.cache
def _docstrings(module: str) -> dict[str, str | None]:
    """The docstrings of the functions of ``module``, read from its source (not imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return {}
    tree = ast.parse(Path(spec.origin).read_text())
    return {n.name: ast.get_docstring(n) for n in tree.body if isinstance(n, ast.FunctionDef)}


@click.group(
    cls=LazyGroup,
    lazy_subcommands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Mesh root (directory with mesh.yaml). Default: nearest one upwards, or $MESH_ROOT.",
)
@click.option(
    "--verbose", "--debug", "debug", is_flag=True,
    help="Show tracebacks instead of short error messages.",
)  # fmt: skip
def cli(root: Path | None, debug: bool) -> None:
    """mesh: build, run and inspect a data mesh of domains on Dagster, dbt, DuckDB and Iceberg."""
    private_umask()  # every file a command writes (state, spills, exports) is the owner's only


DiskFullHandler = Callable[[str], str]


def mesh_command(
    fn: Callable[..., Any] | None = None, *, on_disk_full: DiskFullHandler | None = None
) -> Any:
    """Turn MeshError, and the failures of the machine a command may meet anywhere (a full
    disk, a state database that cannot be used), into a clear message and exit code 1
    (--verbose shows the traceback: the group's, or the command's own). Anything else is a
    fault of the platform and keeps its traceback.

    ``on_disk_full(why)``: what the command does when a full disk stops it (``mesh build``
    fails the Dagster runs it left unfinished), returning a sentence for the message."""
    if fn is None:
        return functools.partial(mesh_command, on_disk_full=on_disk_full)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug") or ctx.params.get("verbose")
        if ctx.info_name in _STATE_WRITERS:
            _keep_disk_reserve(ctx)
        try:
            return fn(*args, **kwargs)
        except MeshError as exc:
            if debug:
                raise
            if isinstance(exc, StateDirError) and (
                error := _machine_failure(ctx, exc, on_disk_full)
            ):
                fail(str(error))  # "not writable" because the disk is full: say so
            fail(str(exc))
        except Exception as exc:
            error = _machine_failure(ctx, exc, on_disk_full)
            if error is None or debug:
                raise
            fail(str(error))

    return wrapper


def _machine_failure(
    ctx: click.Context, exc: Exception, on_disk_full: DiskFullHandler | None
) -> MeshError | None:
    """The MeshError of an expected failure of the machine (not of the platform's code): no
    space left on a disk, or a sqlite state database (the catalog, Dagster's storage) that is
    locked or cannot be opened. None for anything else."""
    from sqlalchemy.exc import OperationalError  # heavy: ~0.2 s, only once a command failed

    try:
        state_dir = load_context_mesh(ctx).state_dir
    except MeshError:
        state_dir = Path.cwd()
    # sqlite reports some writes on a full disk as a "disk I/O error" (its WAL's shared memory)
    io_error = "disk i/o error" in str(exc).lower()
    if is_disk_full(exc) or (io_error and nearly_full(state_dir)):
        error = disk_full(exc, state_dir, doing=f"`mesh {ctx.info_name}`")
        (state_dir / DISK_RESERVE).unlink(missing_ok=True)  # room to record the failure
        note = on_disk_full(error.what) if on_disk_full else ""
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
_STATE_WRITERS = frozenset({"build", "maintain", "repair", "prepare", "ui", "retire"})
DISK_RESERVE = ".disk-reserve"
DISK_RESERVE_BYTES = 2 * 2**20


def _keep_disk_reserve(ctx: click.Context) -> None:
    """Create the state dir's reserve file if it is missing and there is room (best effort)."""
    try:
        state_dir = load_context_mesh(ctx).state_dir
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


if __name__ == "__main__":
    cli()
