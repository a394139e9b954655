"""What every ``mesh`` command shares: its consoles, its one way to fail and the mesh it works on.

Light on purpose: :mod:`mesh_platform.cli.main` imports it, and ``mesh --help`` pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from mesh_platform.config import Mesh, load_mesh
from mesh_platform.errors import printable

console = Console(stderr=True, soft_wrap=True)  # long paths in errors stay on one line
out = Console()


def fail(message: str) -> NoReturn:
    """Print ``message`` as the command's error and exit 1."""
    console.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False)
    raise SystemExit(1)


def load_context_mesh(ctx: click.Context, **overrides: Any) -> Mesh:
    """The mesh of the command line's --root (default: nearest mesh.yaml, or $MESH_ROOT)."""
    root = ctx.find_root().params.get("root")
    return load_mesh(Path(root) if root else None, **overrides)
