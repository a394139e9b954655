"""The options several ``mesh`` commands take, and their parsing: output formats, durations,
principals, domains."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import click

from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.formats import parse_duration
from mesh_platform.workspace import check_workspace

_FORMATS = {"junit": "junit: JUnit XML, for CI test reports"}


def format_option(*choices: str) -> Callable[[Any], Any]:
    """``--format`` (as ``fmt``) among ``choices``, the first the default."""
    said = "; ".join(_FORMATS[c] for c in choices if c in _FORMATS)
    return click.option(
        "--format", "fmt", type=click.Choice(list(choices)), default=choices[0],
        show_default=True, help="Output format" + (f" ({said})." if said else "."),
    )  # fmt: skip


def duration_option(text: str, option: str | None = None) -> timedelta:
    """A positive duration: a number and a unit s, m, h or d (``90s``, ``1.5h``, ``7d``);
    click.BadParameter naming ``option`` (e.g. ``'--retain'``) otherwise."""
    try:
        return parse_duration(text, command_line=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def principal_option(as_: str | None) -> str:
    """The principal of --as, else $MESH_PRINCIPAL; MeshError when there is none."""
    principal = as_ or os.environ.get("MESH_PRINCIPAL")
    if not principal:
        raise MeshError(
            "no principal: the mesh reads nothing for an anonymous reader",
            fix="pass --as <principal> (a domain, team:<t>, user:<u>) or set MESH_PRINCIPAL",
        )
    return principal


def selected_domains(mesh: Mesh, domains: tuple[str, ...]) -> list[str]:
    """The domains of --domain (all of workspace.yaml's when none), checked against it."""
    names = [loc.name for loc in check_workspace(mesh)]
    unknown = [d for d in domains if d not in names]
    if unknown:
        raise MeshError(
            f"unknown domain(s): {', '.join(unknown)} (domains: {', '.join(names)})",
            fix="pass a domain listed in workspace.yaml",
            path=mesh.workspace_file,
        )
    return list(domains) or names
