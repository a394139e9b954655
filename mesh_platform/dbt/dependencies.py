"""A domain's dbt packages (``packages.yml``), installed offline by dbt's own ``dbt deps``.

What installs: **local packages** (``- local: <path>``), the only kind whose files are already
in the repository:

- the platform's own package (``mesh_platform/dbt/dbt_package``, which every project lists);
- the team's own packages kept in its project (``local_packages/shop_utils``);
- a hub or git package **vendored**: its files checked in under the project (copied from
  ``dbt_packages/<name>`` after a ``dbt deps`` on a machine with network) and listed as
  ``- local: vendor/<name>``.

What does not: hub, git, tarball and private packages are fetched from the network when ``dbt
deps`` runs. ``mesh prepare`` never fetches: a build must not depend on a registry or a git host
being up, nor run code that is not in the repository where it is reviewed. They are refused
before dbt runs, naming each package and the ``local:`` line that replaces it (the vendored
copy's path when one is found in the project).

A package is the domain's code like any other, behind the same two walls
(:mod:`mesh_platform.dbt.isolation`): at load, every macro and node of the prepared manifest is
checked whatever package it comes from (problems name ``dbt package <name>: <file>``; only
dbt's and dbt-duckdb's own macros are trusted, and no package may replace one of them); at run
time the lockdown is on the DuckDB connection itself (:mod:`mesh_platform.dbt.lockdown`), which
every statement of every package runs on. Installing runs no SQL: ``dbt deps`` links local
packages.

When the platform's package is the only one, it is linked without dbt (``dbt deps`` would make
exactly that link, and costs seconds per project); otherwise ``dbt deps`` runs when
``packages.yml`` changed or an installed package is missing, stamped in the install folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mesh_platform.errors import DomainError

PLATFORM_DBT_PACKAGE = Path(__file__).parent / "dbt_package"
PLATFORM_PACKAGE_NAME = "mesh"
PLATFORM_PACKAGE_SUFFIX = "mesh_platform/dbt/dbt_package"
PACKAGE_FILES = ("packages.yml", "dependencies.yml")  # dbt reads the first that lists packages
STAMP_FILE = ".mesh_deps.json"
_ONLINE_KINDS = ("package", "git", "tarball", "private")


@dataclass(frozen=True)
class Package:
    """One entry of ``packages.yml``: its kind (``local``, ``package`` (hub), ``git``,
    ``tarball``, ``private``) and what it names (a path, a hub name, a URL)."""

    kind: str
    source: str
    line: int  # 1-based, in the packages file

    @property
    def name(self) -> str:
        """The name dbt installs it under, as far as the entry tells it (hub and git: the last
        part of the name or URL; local: the package's own ``name``, see :func:`local_name`)."""
        last = self.source.rstrip("/").rsplit("/", 1)[-1]
        return last.removesuffix(".git").removesuffix(".tar.gz")


def package_file(project_dir: Path) -> Path | None:
    """The file that lists the project's packages, or None."""
    for name in PACKAGE_FILES:
        path = project_dir / name
        if path.is_file() and "packages" in (_load(path, project_dir) or {}):
            return path
    return None


def _load(path: Path, project_dir: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DomainError(
            project_dir.name,
            f"{path.name} is not valid YAML ({exc})",
            fix=f"fix the YAML of {path.name}: `packages:` is a list of `- local: <path>`",
            path=path,
        ) from exc


def read_packages(project_dir: Path) -> list[Package]:
    """The packages the project lists (none without a packages file)."""
    path = package_file(project_dir)
    if path is None:
        return []
    root = yaml.compose(path.read_text())
    entries = _load(path, project_dir).get("packages") or []
    lines: list[int] = []
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "packages" and isinstance(value, yaml.SequenceNode):
                lines = [item.start_mark.line + 1 for item in value.value]
    found = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        line = lines[i] if i < len(lines) else 0
        kinds = ("local", *_ONLINE_KINDS)
        kind = next((k for k in kinds if isinstance(entry, dict) and k in entry), None)
        if kind is None:
            found.append(Package("unknown", json.dumps(entry, default=str), line))
        else:
            found.append(Package(kind, str(entry[kind]), line))
    return found


def local_dir(project_dir: Path, package: Package) -> Path:
    """The folder a local package names (relative to the project, as dbt resolves it); the
    platform's package is the installed platform's, wherever the project's path points."""
    if is_platform_package(project_dir, package):
        return PLATFORM_DBT_PACKAGE.resolve()
    return (project_dir / package.source).resolve()


def local_name(folder: Path) -> str | None:
    """The ``name`` in a package folder's ``dbt_project.yml`` (None: not a dbt package)."""
    try:
        data = yaml.safe_load((folder / "dbt_project.yml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if name else None


def is_platform_package(project_dir: Path, package: Package) -> bool:
    """The entry names the platform's own package (``../../mesh_platform/dbt/dbt_package``
    in the repository; a copy of the mesh elsewhere still means the installed platform's)."""
    if package.kind != "local":
        return False
    source = package.source.replace("\\", "/").rstrip("/")
    return source.endswith(PLATFORM_PACKAGE_SUFFIX) or (
        (project_dir / package.source).resolve() == PLATFORM_DBT_PACKAGE.resolve()
    )


def install_dir(project_dir: Path) -> Path:
    """Where dbt installs the project's packages (``packages-install-path``)."""
    try:
        data = yaml.safe_load((project_dir / "dbt_project.yml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        data = {}
    return project_dir / str(data.get("packages-install-path") or "dbt_packages")


def _spellings(name: str) -> set[str]:
    """The names a package goes by: a git repository ``dbt-audit-helper`` holds the dbt
    package ``audit_helper``."""
    plain = name.lower().replace("-", "_")
    return {name, plain, plain.removeprefix("dbt_")}


def _vendored_copy(project_dir: Path, name: str) -> Path | None:
    """A folder of the project holding the dbt package ``name`` (its files checked in)."""
    skipped = {"target", "logs", install_dir(project_dir).name}
    wanted = _spellings(name)
    for candidate in sorted(project_dir.rglob("dbt_project.yml")):
        folder = candidate.parent
        rel = folder.relative_to(project_dir)
        if rel.parts and rel.parts[0] in skipped:
            continue
        if folder != project_dir and _spellings(local_name(folder) or "") & wanted:
            return folder
    return None


def check_offline(domain: str, project_dir: Path, packages: list[Package]) -> None:
    """Refuse what ``dbt deps`` would fetch from the network, and local packages whose folder
    is not a dbt package: one error naming every such package and how to fix it."""
    path = package_file(project_dir)
    shown = f"dbt_projects/{domain}/{path.name if path else 'packages.yml'}"
    problems, fixes = [], []
    for package in packages:
        where = f"{shown}:{package.line}"
        if package.kind == "unknown":
            problems.append(f"entry {package.source} ({where}) is not a package dbt knows")
            fixes.append("list packages as `- local: <path>`")
            continue
        if is_platform_package(project_dir, package):
            continue
        if package.kind == "local":
            folder = local_dir(project_dir, package)
            if local_name(folder) is None:
                problems.append(
                    f"local package {package.source!r} ({where}) is not a dbt package "
                    f"(no dbt_project.yml with a name in {folder})"
                )
                fixes.append(f"correct the path of `- local: {package.source}`")
            continue
        problems.append(
            f"dbt package {package.name} ({package.kind}: {package.source}, {where}) would be "
            "downloaded: the mesh installs packages offline, from the repository"
        )
        copy = _vendored_copy(project_dir, package.name)
        if copy is not None:
            rel = copy.relative_to(project_dir)
            fixes.append(
                f"a copy of {package.name} is checked in at {rel}: replace `- {package.kind}: "
                f"{package.source}` with `- local: {rel}` in {shown}"
            )
        else:
            fixes.append(
                f"vendor {package.name}: run `dbt deps` where the network is reachable, copy "
                f"dbt_packages/{package.name} into the project (e.g. vendor/{package.name}), "
                f"and replace `- {package.kind}: {package.source}` with "
                f"`- local: vendor/{package.name}` in {shown}"
            )
    if problems:
        raise DomainError(
            domain,
            "its dbt packages cannot be installed: " + "; ".join(problems),
            fix="; ".join(fixes),
            path=path or project_dir / "packages.yml",
        )


def _stamp(project_dir: Path, packages: list[Package]) -> str:
    """What the installed packages were installed from: the packages file's text and where
    each local package is."""
    path = package_file(project_dir)
    digest = hashlib.sha256(path.read_bytes() if path else b"")
    for package in packages:
        digest.update(str(local_dir(project_dir, package)).encode())
    return digest.hexdigest()


def mark_installed(project_dir: Path, packages: list[Package]) -> None:
    target = install_dir(project_dir)
    (target / STAMP_FILE).write_text(json.dumps({"stamp": _stamp(project_dir, packages)}))


def _team_packages(project_dir: Path, packages: list[Package]) -> list[Package]:
    return [p for p in packages if not is_platform_package(project_dir, p)]


def installed(project_dir: Path, packages: list[Package]) -> bool:
    """True if ``dbt deps`` installed exactly these packages and each is still in place."""
    target = install_dir(project_dir)
    try:
        stamp = json.loads((target / STAMP_FILE).read_text()).get("stamp")
    except (OSError, ValueError, AttributeError):
        return False
    if stamp != _stamp(project_dir, packages):
        return False
    names = [local_name(local_dir(project_dir, p)) for p in packages]
    return all(name and (target / name / "dbt_project.yml").is_file() for name in names)


def write_deps_project(project_dir: Path, packages: list[Package], folder: Path) -> None:
    """A scratch dbt project in ``folder`` for ``dbt deps``: it lists the project's own
    packages by their absolute paths and installs them into the project's install folder.

    Not the project itself, for two reasons: the platform's package is listed by a path that
    holds only in the repository (``../../mesh_platform/...``; it is linked from the installed
    platform instead), and ``dbt deps`` writes ``package-lock.yml`` beside the packages file,
    which would otherwise land in the team's project."""
    entries = [
        {"local": str(local_dir(project_dir, p))} for p in _team_packages(project_dir, packages)
    ]
    project = {
        "name": "mesh_deps",
        "version": "1.0.0",
        "config-version": 2,
        "packages-install-path": str(install_dir(project_dir).absolute()),
    }
    (folder / "dbt_project.yml").write_text(yaml.safe_dump(project, sort_keys=False))
    (folder / "packages.yml").write_text(yaml.safe_dump({"packages": entries}, sort_keys=False))


def remove_stale(project_dir: Path, packages: list[Package]) -> None:
    """Remove installed packages (links) the packages file no longer lists."""
    target = install_dir(project_dir)
    if not target.is_dir():
        return
    names = {local_name(local_dir(project_dir, p)) for p in packages}
    for entry in target.iterdir():
        if entry.is_symlink() and entry.name not in names:
            entry.unlink()


def link_platform_package(project_dir: Path) -> None:
    """Install the platform's local dbt package as ``dbt deps`` would: a symlink."""
    packages_dir = install_dir(project_dir)
    link = packages_dir / PLATFORM_PACKAGE_NAME
    if link.exists():
        return
    packages_dir.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)  # a dangling link from a moved checkout
    link.symlink_to(os.path.relpath(PLATFORM_DBT_PACKAGE, packages_dir), target_is_directory=True)


def outside_packages(project_dir: Path, packages: list[Package]) -> list[Path]:
    """Local packages kept outside the project (and not the platform's): their files change
    what ``dbt parse`` produces, so the preparation's fingerprint reads them too."""
    project = project_dir.resolve()
    found = []
    for package in packages:
        if package.kind != "local" or is_platform_package(project_dir, package):
            continue
        folder = local_dir(project_dir, package)
        if folder != project and project not in folder.parents:
            found.append(folder)
    return found
