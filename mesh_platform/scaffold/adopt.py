"""`mesh adopt`: an existing dbt project becomes a domain of the mesh, in one command.

The project is **copied** into ``dbt_projects/<domain>/``, never linked: the mesh's repository is
what is reviewed, versioned (``mesh diff --base``), built by CI and shipped in images, and a link
to a folder outside it holds on one machine only; the platform also writes into a domain's
project (``target/``, ``dbt_packages/``, the descriptors) and must not write into the team's own
checkout. What the copy leaves out: dbt's output (``target/``, ``dbt_packages/``, ``logs/``,
``package-lock.yml``), DuckDB files, VCS and virtualenv folders, and the team's
``profiles.yml``: it points at the team's own warehouse and may hold credentials. The platform
runs dbt with its own profile on the domain's DuckDB whatever the project says
(:func:`mesh_platform.dbt.project.dbt_profile`); the copy gets a ``profiles.yml`` of the same
profile name on that DuckDB, to run dbt by hand.

Then, as ``mesh new domain`` does: the code location (``domains/<domain>/``: ``domain.yaml``, the
domain component, ``dg.toml``, ``definitions.py``), the owning team in ``principals.yaml``, the
``workspace.yaml`` entry and the Iceberg namespace; the platform's dbt package is added to the
project's packages. The project is prepared (``dbt deps`` offline, parse, compile, the
isolation checks: a project that reads around the mesh's walls is refused here, naming the node)
and built once with ``dbt build`` in the domain's DuckDB, under the same lockdown as every run.
The models named as products get descriptors from what the build shows
(:mod:`mesh_platform.scaffold.describe`), which are read back: dbt parses the project again and
every descriptor, its TODOs filled with stand-ins, must validate and pass the governance
policies.

Everything is checked before anything is written (a directory that is not a dbt project, a
domain that exists, an unknown model with the closest names, an invalid name); if a later step
fails, what was written is removed again (files, the shared files' changes, the domain's state)
and the error says what to fix in the team's project.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mesh_platform.addressing import name_problem
from mesh_platform.config import Mesh
from mesh_platform.dbt.dependencies import is_platform_package, package_file, read_packages
from mesh_platform.dbt.isolation import isolation_problems
from mesh_platform.dbt.project import load_manifest, prepare
from mesh_platform.domain import DOMAIN_FILE, Domain, load_domain, parse_domain_spec
from mesh_platform.errors import MeshError
from mesh_platform.scaffold import (
    TEMPLATES,
    _check_description,
    _check_name,
    _check_new_domain,
    _check_team,
    _check_writable,
    _installed,
    _render_tree,
    _with_team,
)
from mesh_platform.scaffold.adopt_build import build_once, describe_products, read_back
from mesh_platform.scaffold.describe import ProductFacts, find_todos
from mesh_platform.scaffold.validate import ScaffoldError, validate_principals

PLATFORM_PACKAGE_PATH = "../../mesh_platform/dbt/dbt_package"
PLATFORM_PACKAGE_LINE = (
    f"- local: {PLATFORM_PACKAGE_PATH}   # the platform's shared macros and tests"
)
_NOT_COPIED = frozenset(
    {"target", "dbt_packages", "logs", ".git", ".hg", ".svn", ".venv", "venv", "__pycache__",
     ".user.yml", "package-lock.yml", ".DS_Store"}
)  # fmt: skip


@dataclass(frozen=True)
class Todo:
    file: Path  # relative to the mesh root
    line: int
    key: str
    what: str


@dataclass
class Adopted:
    """What `mesh adopt` did, for its summary."""

    domain: str
    source: Path
    created: list[Path] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    built: str = ""
    products: list[ProductFacts] = field(default_factory=list)
    todos: list[Todo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    next_commands: list[str] = field(default_factory=list)


# -- checks before anything is written ---------------------------------------------------------


def _check_source(mesh: Mesh, source: Path) -> Path:
    """``source`` is a dbt project outside the mesh's own projects, with no link leaving it."""
    source = source.expanduser().resolve()
    if not (source / "dbt_project.yml").is_file():
        what = "does not exist" if not source.exists() else "has no dbt_project.yml"
        raise ScaffoldError(
            f"{source} is not a dbt project (it {what}); nothing was written",
            fix="pass the folder that holds the project's dbt_project.yml",
            path=source,
        )
    if source == mesh.dbt_projects_dir.resolve() or mesh.dbt_projects_dir.resolve() in (
        source.parents
    ):
        raise ScaffoldError(
            f"{source} is already a project of the mesh (under dbt_projects/); nothing was written",
            fix="adopt a project from outside the mesh; a domain's project is already adopted",
            path=source,
        )
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = [d for d in dirnames if d not in _NOT_COPIED]
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink() and source not in Path(os.path.realpath(path)).parents:
                raise ScaffoldError(
                    f"{path} is a symbolic link out of the project; nothing was written",
                    fix="replace the link by the files it points to (the mesh copies only what "
                    "is inside the project)",
                    path=path,
                )
    return source


def _project(source: Path) -> dict:
    try:
        data = yaml.safe_load((source / "dbt_project.yml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise ScaffoldError(
            f"{source}/dbt_project.yml is not valid YAML ({exc}); nothing was written",
            fix="fix the project's YAML first",
            path=source / "dbt_project.yml",
        ) from exc
    return data if isinstance(data, dict) else {}


def project_models(source: Path) -> list[str]:
    """Model names of the project (its SQL and Python files under the model paths)."""
    paths = _project(source).get("model-paths") or ["models"]
    names = set()
    for folder in paths if isinstance(paths, list) else ["models"]:
        for path in (source / str(folder)).rglob("*"):
            if path.suffix in (".sql", ".py") and path.is_file():
                names.add(path.stem)
    return sorted(names)


def _check_products(source: Path, products: list[str]) -> list[str]:
    """The products are distinct, valid names of models of the project."""
    if not products:
        raise ScaffoldError(
            "no product named; nothing was written",
            fix="name the models to publish: --product MODEL (repeatable)",
        )
    models = project_models(source)
    for product in dict.fromkeys(products):
        if problem := name_problem(product):
            raise ScaffoldError(
                f"invalid product name {product!r} (--product): {problem}; nothing was written",
                fix="products keep their model's name: rename the model in the project, or "
                "publish it through a model of a valid name",
            )
        if product not in models:
            close = difflib.get_close_matches(product, models, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ScaffoldError(
                f"model {product!r} (--product) is not in {source}; nothing was written",
                fix=f"{hint}models of the project: {', '.join(models) or 'none'}",
            )
    return list(dict.fromkeys(products))


# -- the copy ----------------------------------------------------------------------------------


def _copy_project(source: Path, dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in _NOT_COPIED or n.endswith((".duckdb", ".duckdb.wal"))}
        if Path(folder) == source:
            skipped.add("profiles.yml")  # the team's warehouse, maybe its credentials
        return skipped

    shutil.copytree(source, dest, ignore=ignore, symlinks=False)


def _profiles_text(domain: str, profile: str) -> str:
    output = {
        "type": "duckdb",
        "path": "{{ env_var('MESH_STATE_DIR', '../../state') }}"
        f"/domains/{domain}/{domain}.duckdb",
        "threads": 2,
    }
    profiles = {profile: {"target": "local", "outputs": {"local": output}}}
    return (
        "# Written by `mesh adopt`. The platform runs dbt with a profile of its own on the\n"
        "# domain's DuckDB (mesh_platform/dbt/project.py); this one lets you run dbt by hand from\n"
        "# this folder. The team's own profiles.yml (its warehouse) was not copied.\n"
    ) + yaml.safe_dump(profiles, sort_keys=False)


def _with_platform_package(project_dir: Path) -> Path:
    """Add the platform's package to the project's packages file (created if missing); the
    file's other lines are kept. Returns the file."""
    path = package_file(project_dir) or project_dir / "packages.yml"
    if not path.is_file():
        path.write_text(f"packages:\n  {PLATFORM_PACKAGE_LINE}\n")
        return path
    if any(is_platform_package(project_dir, p) for p in read_packages(project_dir)):
        return path
    text = path.read_text()
    root = yaml.compose(text)
    items = next(
        (v for k, v in root.value if k.value == "packages" and isinstance(v, yaml.SequenceNode)),
        None,
    )
    if items is None or items.flow_style or not items.value:
        data = yaml.safe_load(text) or {}
        data["packages"] = [*(data.get("packages") or []), {"local": PLATFORM_PACKAGE_PATH}]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path
    lines = text.split("\n")
    last = items.value[-1]
    end = (
        last.end_mark.line
        if not lines[last.end_mark.line][: last.end_mark.column].strip()
        else (last.end_mark.line + 1)
    )
    first = lines[items.value[0].start_mark.line]
    pad = first[: len(first) - len(first.lstrip())]
    lines.insert(end, pad + PLATFORM_PACKAGE_LINE)
    path.write_text("\n".join(lines))
    return path


def _domain_yaml(name: str, team: str, contact: str | None, description: str, project: str) -> str:
    owners = ", ".join([f"team:{team}", *([contact] if contact else [])])
    return (
        f"# The {name} domain's descriptor (validated by mesh_platform/domain.py, DomainSpec).\n"
        f"# Adopted by `mesh adopt` from the dbt project {project}; edit freely.\n"
        f"name: {name}\n"
        f"description: {json.dumps(description)}\n"
        "kind: source-aligned\n"
        f"owners: [{owners}]\n"
        "# No raw landing: the project brings its own data (seeds, models). To run on its own:\n"
        '# schedule: {cron: "0 6 * * *", timezone: UTC}\n'
    )


# -- the flow ----------------------------------------------------------------------------------


def adopt(
    mesh: Mesh,
    source: Path,
    name: str,
    products: list[str],
    *,
    team: str | None = None,
    contact: str | None = None,
    description: str | None = None,
) -> Adopted:
    """Adopt the dbt project at ``source`` as domain ``name`` publishing ``products`` (model
    names); see the module docstring. Raises :class:`ScaffoldError` with nothing left behind."""
    _check_name("domain", name)
    team = team or name
    _check_team(team, contact or f"{team}@example.com")
    source = _check_source(mesh, source)
    products = _check_products(source, products)
    code_dir, dbt_dir = mesh.domains_dir / name, mesh.dbt_projects_dir / name
    _check_new_domain(mesh, name, (code_dir, dbt_dir))
    project = str(_project(source).get("name") or source.name)
    description = _check_description(
        description or f"The {name} domain: the dbt project {project}, adopted into the mesh."
    )
    workspace, principals = mesh.workspace_file, mesh.root / "principals.yaml"
    _check_writable(mesh, (workspace, principals), mesh.domains_dir)
    result = Adopted(name, source)
    staging = Path(tempfile.mkdtemp(prefix=f".mesh-adopt-{name}-", dir=mesh.root))
    try:
        _stage(mesh, staging, source, name, team, contact, description, project)
        staged = [(staging / "code", code_dir), (staging / "dbt", dbt_dir)]
        with _installed(mesh, name, team, staged, result):
            _adopt_files(mesh, load_domain(mesh, name), products, team, contact, result)
    except BaseException as exc:
        for state in (mesh.domain_state_dir(name), mesh.state_dir / "dbt" / name):
            shutil.rmtree(state, ignore_errors=True)
        if isinstance(exc, MeshError):  # named in the team's project, which is what to fix
            path = exc.path
            if path is not None and dbt_dir in path.parents:
                path = source / path.relative_to(dbt_dir)
            raise ScaffoldError(
                f"could not adopt {source} as domain {name!r}: "
                f"{exc.what.replace(f'dbt_projects/{name}', str(source))}; nothing was left "
                "behind (files, principals.yaml, workspace.yaml, the domain's state)",
                fix=exc.fix.replace(f"dbt_projects/{name}", str(source)),
                path=path,
            ) from exc
        if isinstance(exc, OSError):
            raise ScaffoldError(
                f"could not adopt {source} as domain {name!r}: {exc}; nothing was left behind",
                fix="fix the cause above and run the command again",
            ) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.next_commands = [
        "fill each TODO(mesh) above (edit the YAML; the suggested classifications too, if wrong)",
        f"mesh check --domain {name}",
        f"mesh build --domain {name}",
        f'mesh query --as team:{team} "select * from {name}.{products[0]} limit 5"',
    ]
    return result


def _stage(
    mesh: Mesh,
    staging: Path,
    source: Path,
    name: str,
    team: str,
    contact: str | None,
    description: str,
    project: str,
) -> None:
    """The domain's files, written and validated in ``staging`` (code/ and dbt/)."""
    dbt = staging / "dbt"
    _copy_project(source, dbt)
    profile = str(_project(source).get("profile") or name)
    (dbt / "profiles.yml").write_text(_profiles_text(name, profile))
    _with_platform_package(dbt)
    values = {"name": name, "team": team, "contact": contact or f"{team}@example.com",
              "description": description, "expires": ""}  # fmt: skip
    _render_tree(TEMPLATES / "domain" / "code", staging / "code", values)
    spec = _domain_yaml(name, team, contact, description, project)
    (staging / "code" / DOMAIN_FILE).write_text(spec)
    parse_domain_spec(name, spec, path=mesh.domains_dir / name / DOMAIN_FILE)
    principals = mesh.root / "principals.yaml"
    text = principals.read_text() if principals.is_file() else ""
    validate_principals(_with_team(text, team, name), principals)


def _adopt_files(
    mesh: Mesh, domain: Domain, products: list[str], team: str, contact: str | None,
    result: Adopted,
) -> None:  # fmt: skip
    """Prepare, build once, describe the products and read them back (timed)."""
    mesh.ensure_state_dir()
    mesh.domain_state_dir(domain.name).mkdir(mode=0o700, parents=True, exist_ok=True)
    started = time.perf_counter()
    prepare(mesh, domain)
    problems = isolation_problems(
        domain.name, load_manifest(domain), raw_dir=mesh.raw_dir(domain.name)
    )
    if problems:
        raise ScaffoldError(
            "the project reads around the mesh's walls:\n    " + "\n    ".join(problems),
            fix="fix it in the team's project and run `mesh adopt` again",
        )
    result.packages = [
        "mesh (the platform's)" if is_platform_package(domain.dbt_project_dir, p)
        else f"{p.name} ({p.kind}: {p.source})"
        for p in read_packages(domain.dbt_project_dir)
    ]  # fmt: skip
    result.seconds["prepare (dbt deps, parse, compile)"] = time.perf_counter() - started
    started = time.perf_counter()
    result.built = build_once(mesh, domain)
    result.seconds["dbt build"] = time.perf_counter() - started
    started = time.perf_counter()
    result.products, files = describe_products(mesh, domain, products, team, contact)
    result.seconds["describe (types, docs, personal data)"] = time.perf_counter() - started
    started = time.perf_counter()
    blocking = read_back(mesh, domain, products)
    result.seconds["read back (parse, validate, policies)"] = time.perf_counter() - started
    result.notes += [f"once the TODOs are filled, still blocking: {b}" for b in blocking]
    for target in files:
        path = domain.dbt_project_dir / target
        for line, key, what in find_todos(path.read_text()):
            result.todos.append(Todo(path.relative_to(mesh.root), line, key, what))
