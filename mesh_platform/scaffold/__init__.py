"""Scaffolding: a new domain, or a new product in a domain, in one command.

``new_domain`` writes the code location (``domains/<name>/``: ``domain.yaml``, the domain
component ``defs/domain/defs.yaml`` and the ``dg.toml`` that make the folder a dg project, and the
``definitions.py`` workspace.yaml loads), the dbt project
(``dbt_projects/<name>/``: profiles for the embedded default, one example product with an
enforced contract, classification, SLA and a grant, passing every policy), a test
(``tests/test_domain_<name>.py``), the owning team in ``principals.yaml``, the
``workspace.yaml`` entry, and the domain's Iceberg namespace. ``new_product`` adds a product
skeleton (model + descriptor) to an existing domain.

Both validate everything first and write nothing until they can write everything: the input
(names, owner team, contact, description) is checked against the platform's rules
(:mod:`mesh_platform.addressing`); files are rendered into a staging folder beside their
destination and, before anything is moved into place, read back the way the platform will read
them (every YAML parsed, ``domain.yaml`` and each product descriptor validated by the loader's own
functions, the Python compiled). A scaffold that would write a file the loader refuses writes
nothing. If a later step fails, what was moved is removed again and the two shared files are
restored. Templates are packaged with the platform (``templates/``, ``string.Template``
placeholders).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Protocol

import yaml

from mesh_platform.addressing import (
    email_problem,
    name_problem,
    suggest_name,
    suggest_team,
    team_problem,
)
from mesh_platform.config import Mesh
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import MeshError
from mesh_platform.files import write_atomically
from mesh_platform.scaffold.names import sql_word_problem, taken_names, with_model
from mesh_platform.scaffold.validate import (
    ScaffoldError,
    validate_domain_scaffold,
    validate_principals,
    validate_product_yaml,
)
from mesh_platform.storage.catalog import ensure_namespace, open_catalog
from mesh_platform.workspace import render_workspace

TEMPLATES = Path(__file__).parent / "templates"
GRANT_YEARS = 1  # scaffolded grants expire a year after creation


@dataclass
class Scaffolded:
    created: list[Path] = field(default_factory=list)  # relative to the mesh root
    changed: list[Path] = field(default_factory=list)
    next_commands: list[str] = field(default_factory=list)


def _check_name(kind: str, name: str) -> None:
    if problem := name_problem(name):
        raise ScaffoldError(
            f"invalid {kind} name {name!r} (the NAME argument): {problem}; nothing was written",
            fix=f"use a snake_case name, e.g. {suggest_name(name)!r}",
        )
    if problem := sql_word_problem(name):  # a table named `select` breaks every query of it
        raise ScaffoldError(
            f"invalid {kind} name {name!r} (the NAME argument): it {problem}; nothing was written",
            fix=f"choose a name that says what it holds, e.g. {name}_{kind}s or "
            f"{'sales' if kind == 'domain' else 'daily'}_{name}",
        )


def _check_team(team: str, contact: str) -> None:
    if problem := team_problem(team):
        raise ScaffoldError(
            f"invalid owner team {team!r} (--owner): {problem}; nothing was written",
            fix=f"pass a lower-case team name, e.g. --owner {suggest_team(team)}",
        )
    if problem := email_problem(contact):
        raise ScaffoldError(
            f"invalid contact {contact!r} (--contact): {problem}; nothing was written",
            fix=f"pass --contact one plain email address, e.g. --contact {team}-data@example.com",
        )


def _check_description(description: str) -> str:
    """One line of printable text (whitespace, line breaks included, folded to single spaces)."""
    folded = " ".join(description.split())
    if len(folded) < 10:
        raise ScaffoldError(
            "the description (--description) is too short; nothing was written",
            fix="describe what the domain owns and why, in at least 10 characters",
        )
    if not folded.isprintable():
        raise ScaffoldError(
            f"the description (--description) {folded!r} holds control characters; "
            "nothing was written",
            fix="pass plain text: letters, digits, punctuation and spaces",
        )
    return folded


def _render(template: Path, values: dict[str, str]) -> str:
    try:
        return Template(template.read_text()).substitute(values)
    except (KeyError, ValueError) as exc:  # a broken packaged template: a platform bug
        raise MeshError(
            f"scaffold template {template} is broken ({exc})",
            fix="reinstall the platform (scripts/bootstrap.sh)",
        ) from exc


def _render_tree(source: Path, dest: Path, values: dict[str, str]) -> None:
    for template in sorted(source.rglob("*.tmpl")):
        target = dest / template.relative_to(source).with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_render(template, values))


def _writable(path: Path) -> None:
    """Fail before writing anything if ``path`` (a file to rewrite) cannot be written."""
    problem = None
    if path.exists() and not path.is_file():
        problem = "it is not a regular file"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = "it is not writable"
    elif not os.access(path.parent, os.W_OK):
        problem = "its folder is not writable"
    if problem:
        raise ScaffoldError(
            f"cannot update {path.name} ({problem}); nothing was written",
            fix=f"make {path} a writable file, then run the command again",
            path=path,
        )


def _with_team(text: str, team: str, domain: str) -> str | None:
    """principals.yaml with ``team:<team>`` declared (None if it already is)."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ScaffoldError(
            f"principals.yaml is not valid YAML ({exc}); nothing was written",
            fix="fix its syntax first",
        ) from exc
    principals = data.get("principals") if isinstance(data, Mapping) else None
    principals = principals if isinstance(principals, list) else []
    if any(str(p.get("id")) == f"team:{team}" for p in principals if isinstance(p, dict)):
        return None
    header = "" if text.strip() else "principals:\n"
    entry = (
        f"  - id: team:{team}\n"
        f"    description: Team owning the {domain} domain (added by `mesh new domain`).\n"
    )
    return (text if text.endswith("\n") or not text else text + "\n") + header + entry


def _check_new_domain(mesh: Mesh, name: str, paths: tuple[Path, ...]) -> None:
    """A new domain's name is free: no domain and none of its files exist yet."""
    existing = [p for p in paths if p.exists()]
    if name in list_domain_names(mesh) or existing:
        raise ScaffoldError(
            f"domain {name!r} already exists ({', '.join(str(p) for p in existing)}); "
            "nothing was written",
            fix=f"choose another name, or add a product with `mesh new product {name} <product>`",
        )


def _check_writable(mesh: Mesh, shared: tuple[Path, ...], tests_dir: Path) -> None:
    """Every file and folder the scaffold writes is writable, before anything is written."""
    for path in shared:
        _writable(path)
    for folder in (mesh.domains_dir, mesh.dbt_projects_dir, tests_dir):
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise ScaffoldError(
                f"{folder} is not writable; nothing was written", fix="fix its permissions"
            )


def _roll_back(moved: list[Path], backups: dict[Path, str | None]) -> None:
    """Remove what a failed scaffold moved into place; restore the shared files it changed."""
    for target in reversed(moved):
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    for shared, text in backups.items():
        if text is not None and shared.is_file() and shared.read_text() != text:
            write_atomically(shared, text)


class _Outcome(Protocol):
    """What a scaffold reports of the files it wrote (Scaffolded, adopt's Adopted)."""

    created: list[Path]
    changed: list[Path]


@contextlib.contextmanager
def _installed(
    mesh: Mesh, name: str, team: str, staged: list[tuple[Path, Path]], result: _Outcome
) -> Iterator[None]:
    """Move each staged (source, target) into place, add ``team`` to principals.yaml and the
    domain to workspace.yaml, run the body, then create the domain's Iceberg namespace. If
    anything fails, what was moved is removed and the shared files are restored; the paths
    moved or changed are recorded in ``result`` (relative to the mesh root) on success."""
    workspace, principals = mesh.workspace_file, mesh.root / "principals.yaml"
    moved: list[Path] = []
    backups: dict[Path, str | None] = {}
    try:
        for source, target in staged:
            os.rename(source, target)
            moved.append(target)
        # Shared files last: each is replaced atomically, and restored if a later step fails.
        for shared in (principals, workspace):
            backups[shared] = shared.read_text() if shared.is_file() else None
        if (team_text := _with_team(backups[principals] or "", team, name)) is not None:
            write_atomically(principals, team_text)
            result.changed.append(principals)
        write_atomically(workspace, render_workspace(mesh))
        result.changed.append(workspace)
        yield
        catalog = open_catalog(mesh)
        try:
            ensure_namespace(catalog, name)
        finally:
            catalog.engine.dispose()
    except BaseException:
        _roll_back(moved, backups)
        raise
    result.created = [p.relative_to(mesh.root) for p in moved]
    result.changed = [p.relative_to(mesh.root) for p in result.changed]


def new_domain(
    mesh: Mesh, name: str, *, team: str, contact: str | None = None, description: str | None = None
) -> Scaffolded:
    """Scaffold the domain ``name`` owned by ``team``; see the module docstring."""
    _check_name("domain", name)
    contact = f"{team}@example.com" if contact is None else contact
    _check_team(team, contact)
    code_dir, dbt_dir = mesh.domains_dir / name, mesh.dbt_projects_dir / name
    test_file = mesh.root / "tests" / f"test_domain_{name}.py"
    _check_new_domain(mesh, name, (code_dir, dbt_dir, test_file))
    description = _check_description(
        f"The {name} domain, owned by team {team}." if description is None else description
    )
    workspace, principals = mesh.workspace_file, mesh.root / "principals.yaml"
    _check_writable(mesh, (workspace, principals), test_file.parent)
    values = {
        "name": name,
        "team": team,
        "contact": contact,
        "description": description,
        "expires": (dt.date.today() + dt.timedelta(days=365 * GRANT_YEARS)).isoformat(),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".mesh-new-{name}-", dir=mesh.root))
    result = Scaffolded()
    try:
        _render_tree(TEMPLATES / "domain" / "code", staging / "code", values)
        _render_tree(TEMPLATES / "domain" / "dbt", staging / "dbt", values)
        (staging / "test.py").write_text(
            _render(TEMPLATES / "domain" / "test_domain.py.tmpl", values)
        )
        validate_domain_scaffold(mesh, name, staging, code_dir, dbt_dir, test_file)
        validate_principals(
            _with_team(principals.read_text() if principals.is_file() else "", team, name),
            principals,
        )
        staged = [(staging / "code", code_dir), (staging / "dbt", dbt_dir),
                  (staging / "test.py", test_file)]  # fmt: skip
        with _installed(mesh, name, team, staged, result):
            mesh.ensure_state_dir()
    except OSError as exc:
        raise ScaffoldError(
            f"could not scaffold domain {name!r}: {exc}; nothing was left behind",
            fix="fix the cause above and run the command again",
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.next_commands = [
        f"mesh prepare --domain {name}",
        f"mesh check --domain {name}",
        f"mesh build --domain {name}",
        f".venv/bin/pytest tests/test_domain_{name}.py",
        f"mesh new product {name} <product>",
    ]
    return result


def new_product(mesh: Mesh, domain: str, name: str) -> Scaffolded:
    """Add a product skeleton ``domain.name`` to an existing domain: a model and its entry in
    ``models/products/products.yml`` (added structurally: the file stays valid YAML and keeps
    its comments), with ``TODO(mesh):`` where the team must write (``mesh check`` blocks until
    each is filled)."""
    _check_name("product", name)
    spec = load_domain(mesh, domain)  # a clear error for an unknown domain
    products_dir = spec.dbt_project_dir / "models" / "products"
    yml, sql = products_dir / "products.yml", products_dir / f"{name}.sql"
    taken = taken_names(spec.dbt_project_dir, mesh.domains_dir / domain / "products", mesh.root)
    if name in taken or sql.exists():
        raise ScaffoldError(
            f"product {domain}.{name} cannot be added: the name is already used in domain "
            f"{domain} by {taken.get(name) or f'the model in {sql}'}; nothing was written",
            fix=f"choose another name (names in use in domain {domain}: "
            f"{', '.join(sorted(taken)) or 'none'})",
        )
    team = next(
        (o.removeprefix("team:") for o in spec.spec.owners if o.startswith("team:")), domain
    )
    contact = next((o for o in spec.spec.owners if email_problem(o) is None), f"{team}@example.com")
    values = {
        "domain": domain,
        "product": name,
        "team": team,
        "contact": contact,
        "expires": (dt.date.today() + dt.timedelta(days=365 * GRANT_YEARS)).isoformat(),
    }
    entry = _render(TEMPLATES / "product" / "model.yml.tmpl", values)
    shown = str(yml.relative_to(mesh.root))
    if yml.is_file():
        _writable(yml)
    new_text = with_model(yml.read_text() if yml.is_file() else "", entry, shown=shown)
    principals = mesh.root / "principals.yaml"
    _writable(principals)
    old_principals = principals.read_text() if principals.is_file() else ""
    team_text = _with_team(old_principals, team, domain)  # the skeleton grants the team
    validate_product_yaml(mesh, domain, name, new_text, yml)
    validate_principals(team_text, principals)
    products_dir.mkdir(parents=True, exist_ok=True)
    sql.write_text(_render(TEMPLATES / "product" / "model.sql.tmpl", values))
    old_yml = yml.read_text() if yml.is_file() else None
    try:
        write_atomically(yml, new_text)
        if team_text is not None:
            write_atomically(principals, team_text)
    except BaseException:
        sql.unlink(missing_ok=True)
        if old_yml is None:
            yml.unlink(missing_ok=True)
        else:
            write_atomically(yml, old_yml)
        raise
    changed = [yml] + ([principals] if team_text is not None else [])
    return Scaffolded(
        created=[sql.relative_to(mesh.root)],
        changed=[p.relative_to(mesh.root) for p in changed],
        next_commands=[
            f"edit {sql.relative_to(mesh.root)} and fill every TODO(mesh) of its descriptor in "
            f"{shown}",
            f"mesh check --domain {domain}",
            f"mesh build --domain {domain}",
        ],
    )


# -- reading back what would be written ---------------------------------------------------------
