"""Preparing a domain's dbt project ahead of time, and finding what was prepared.

Code locations never run ``dbt parse`` at import (it costs seconds in every process): the manifest
is prepared by ``mesh prepare`` (also run by ``mesh build`` and ``mesh ui``) and only read when a
code location loads. Preparation is skipped when the project's files have not changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_platform.config import Mesh, environment
from mesh_platform.domain import Domain
from mesh_platform.errors import DbtExecutableNotFoundError, DomainError

if TYPE_CHECKING:
    from dagster_dbt import DbtProject

PLATFORM_DBT_PACKAGE = Path(__file__).parent / "dbt_package"
FINGERPRINT_FILE = "mesh_prepared.json"
_FINGERPRINTED_SUFFIXES = {".sql", ".yml", ".yaml", ".csv", ".md", ".py"}


def resolve_dbt_executable(mesh: Mesh) -> str:
    """The dbt executable: from settings, else beside this Python, else on PATH."""
    configured = mesh.settings.dbt_executable
    candidates = (
        [configured]
        if configured
        else [str(Path(sys.executable).with_name("dbt")), shutil.which("dbt") or ""]
    )
    for candidate in candidates:
        if candidate and (found := shutil.which(candidate)):
            return found
    raise DbtExecutableNotFoundError(
        f"dbt executable not found (looked for: {', '.join(c for c in candidates if c)})",
        fix="install the project with scripts/bootstrap.sh, or set MESH_DBT_EXECUTABLE "
        "(dbt_executable: in mesh.yaml) to the dbt of an environment with dbt-duckdb",
    )


def dbt_project(domain: Domain) -> DbtProject:
    from dagster_dbt import DbtProject

    return DbtProject(
        project_dir=domain.dbt_project_dir,
        profiles_dir=domain.dbt_project_dir,
        target_path=Path("target"),
    )


def manifest_path(domain: Domain) -> Path:
    return domain.dbt_project_dir / "target" / "manifest.json"


def fingerprint(domain: Domain) -> str:
    """Hash of every file that changes what ``dbt parse`` produces."""
    digest = hashlib.sha256()
    roots = [domain.dbt_project_dir, PLATFORM_DBT_PACKAGE]
    for root in roots:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if rel.parts and rel.parts[0] in {"target", "dbt_packages", "logs"}:
                continue
            if path.is_file() and path.suffix in _FINGERPRINTED_SUFFIXES:
                digest.update(str(rel).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _link_platform_package(domain: Domain) -> None:
    """Install the platform's local dbt package as ``dbt deps`` would: a symlink.

    ``dbt deps`` costs ~7 s per project here to create exactly this link for a local package.
    """
    packages_dir = domain.dbt_project_dir / "dbt_packages"
    link = packages_dir / "mesh"
    if link.exists():
        return
    packages_dir.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)  # a dangling link from a moved checkout
    link.symlink_to(os.path.relpath(PLATFORM_DBT_PACKAGE, packages_dir), target_is_directory=True)


def _parse(mesh: Mesh, domain: Domain) -> None:
    """``dbt parse`` in this process (dbtRunner): dbt is imported once for all domains."""
    from dbt.cli.main import dbtRunner

    errors: list[str] = []

    def _collect(event: Any) -> None:
        if event.info.level in ("error", "warn") and event.info.msg:
            errors.append(str(event.info.msg))

    env = {**mesh.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    try:
        with environment(env):
            result = dbtRunner(callbacks=[_collect]).invoke(
                [
                    "parse",
                    "--project-dir",
                    str(domain.dbt_project_dir),
                    "--profiles-dir",
                    str(domain.dbt_project_dir),
                    "--quiet",
                    "--no-use-colors",
                ]
            )
    except Exception as exc:  # dbt raises for some project errors instead of returning them
        result = None
        errors.append(str(exc))
    if result is None or not result.success:
        if result is not None and result.exception is not None:
            errors.append(str(result.exception))
        detail = "\n    ".join(dict.fromkeys(e for m in errors for e in m.splitlines()[-12:]))
        raise DomainError(
            domain.name,
            f"`dbt parse` failed in its dbt project:\n    {detail or 'no detail from dbt'}",
            fix=f"fix the dbt error above in dbt_projects/{domain.name}, then run "
            f"`mesh prepare --domain {domain.name}`",
            path=domain.dbt_project_dir,
        )


def prepare(mesh: Mesh, domain: Domain, *, force: bool = False) -> bool:
    """Install the platform dbt package and write the manifest. Returns False if up to date."""
    target = domain.dbt_project_dir / "target"
    stamp = target / FINGERPRINT_FILE
    current = fingerprint(domain)
    if (domain.dbt_project_dir / "packages.yml").is_file():
        # Even when the manifest is current: a copied checkout can lose the link, and dbt
        # build (not parse) would then fail on "packages not installed".
        _link_platform_package(domain)
    if not force and manifest_path(domain).is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == current:
                return False
        except ValueError:
            pass
    _parse(mesh, domain)
    stamp.write_text(json.dumps({"fingerprint": current}))
    return True


@cache
def _read_manifest(path: Path, mtime_ns: int) -> dict[str, Any]:
    return json.loads(path.read_text())


def load_manifest(domain: Domain) -> dict[str, Any]:
    """The prepared manifest (read, never parsed here); a clear error when it is missing."""
    path = manifest_path(domain)
    if not path.is_file():
        raise DomainError(
            domain.name,
            "its dbt manifest has not been prepared",
            fix=f"run `mesh prepare --domain {domain.name}` (mesh build and mesh ui do it for you)",
            path=path,
        )
    try:
        return _read_manifest(path, path.stat().st_mtime_ns)
    except ValueError as exc:
        raise DomainError(
            domain.name,
            f"its dbt manifest is not valid JSON ({exc})",
            fix=f"run `mesh prepare --domain {domain.name} --force`",
            path=path,
        ) from exc
