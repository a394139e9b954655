"""The run-time wall of a domain's isolation (the load-time wall: dbt/isolation.py).

- :func:`lock_down`: every DuckDB connection the domain's SQL runs in (the dbt-duckdb plugin
  :mod:`mesh_platform.dbt.duckdb_plugin` applies it) has external access off except the domain's
  own state folder and its project's seed files, no extension loading, and its configuration
  locked, so no ``SET`` undoes it.
- :func:`guarded_dbt_executable`: dbt runs through a wrapper (mesh_platform/dbt/guard.py) that
  dies with the process that started it, so a killed run leaves no dbt writing the domain's
  DuckDB; gives dbt only an allowlisted environment (no credential of the run worker); and
  starts dbt warm from a worker that imported it ahead (mesh_platform/dbt/warm.py).

DuckDB refuses ``allowed_directories`` before the database has started and after external
access is off, so the order of :func:`lockdown_statements` is the only one that works; DuckDB
adds the database's own temporary directory (``<file>.tmp``) to the allowed ones by itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mesh_platform.addressing import quote_literal
from mesh_platform.dbt import guard, warm
from mesh_platform.files import write_atomically

if TYPE_CHECKING:
    import duckdb

    from mesh_platform.config import Mesh


def domain_directories(mesh: Mesh, domain: str) -> tuple[Path, ...]:
    """The folders a domain's SQL may read and write: its state folder (raw area + DuckDB)."""
    return (mesh.domain_state_dir(domain),)


def seed_files(project_dir: Path) -> list[Path]:
    """The seed files of a dbt project, as dbt-duckdb reads them (``COPY ... FROM '<project
    dir>/<seed path>/<file>.csv'``): the only files outside its state folder a domain's
    connection may open, each by its own path (DuckDB's ``allowed_paths``), never a folder.

    Only regular files whose path inside the project goes through no symbolic link: a link
    would let the allowed path open another domain's file. Seeds of installed packages are
    not allowed (their path goes through ``dbt_packages/``)."""
    try:
        data = yaml.safe_load((project_dir / "dbt_project.yml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    seed_paths = data.get("seed-paths") if isinstance(data, dict) else None
    found = []
    for seed_path in seed_paths if isinstance(seed_paths, list) else ["seeds"]:
        folder = project_dir / str(seed_path)
        if not folder.is_dir() or not _no_link_below(project_dir, folder):
            continue
        for dirpath, dirnames, filenames in os.walk(folder):  # does not follow folder links
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                path = Path(dirpath) / name
                if path.suffix.lower() == ".csv" and stat.S_ISREG(path.lstat().st_mode):
                    found.append(path)
    return sorted(found)


def _no_link_below(root: Path, path: Path) -> bool:
    """No component of ``path`` below ``root`` is a symbolic link."""
    rel = path.relative_to(root)
    return not any((root / Path(*rel.parts[: i + 1])).is_symlink() for i in range(len(rel.parts)))


def pinned_files(files: Iterable[Path]) -> dict[str, str]:
    """Each file's path and the real path it resolves to now (for :func:`moved_files`)."""
    return {str(f): os.path.realpath(f) for f in files}


def moved_files(pinned: Mapping[str, str]) -> list[str]:
    """The files of ``pinned`` that are no longer a regular file at the real path they had
    (a seed swapped for a link to another file after the profile was written)."""
    bad = []
    for path, real in pinned.items():
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            regular = False
        if not regular or os.path.realpath(path) != real:
            bad.append(path)
    return bad


def lockdown_statements(
    directories: Iterable[str | Path], files: Iterable[str | Path] = ()
) -> list[str]:
    """The statements that confine a fresh DuckDB connection to ``directories`` (and the
    single ``files``), in order.

    A directory is allowed with its trailing separator: DuckDB matches prefixes, and
    ``/state/domains/sales`` would otherwise allow ``/state/domains/sales_eu``.
    """
    dirs = ", ".join(quote_literal(str(d).rstrip("/") + "/") for d in sorted(map(str, directories)))
    statements = [
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        f"SET allowed_directories = [{dirs}]",
    ]
    if paths := sorted(map(str, files)):
        statements.append(f"SET allowed_paths = [{', '.join(map(quote_literal, paths))}]")
    return [*statements, "SET enable_external_access = false", "SET lock_configuration = true"]


def lock_down(
    conn: duckdb.DuckDBPyConnection,
    directories: Iterable[str | Path],
    files: Iterable[str | Path] = (),
) -> None:
    """Confine ``conn`` to ``directories`` and ``files`` (before any SQL of the domain runs on
    it)."""
    for statement in lockdown_statements(directories, files):
        conn.execute(statement)


# -- run time: how dbt is started ---------------------------------------------------------------
#
# dagster-dbt starts `dbt` with a plain subprocess.Popen (no preexec_fn, no process group of its
# own) and the run worker's whole environment: killing the process that runs the step (SIGKILL
# of `mesh build`, the OOM killer) left dbt running, still writing the domain's DuckDB while the
# next build started, and a domain's Jinja could read the worker's credentials with env_var().
# The guard (mesh_platform/dbt/guard.py) is the executable given to DbtCliResource as its
# ``dbt_executable``: dbt dies with the thread that started it (dagster-dbt starts it from the
# step's thread, which lives as long as the step), sees only the allowlisted environment below,
# and starts warm when a warm worker serves (mesh_platform/dbt/warm.py).

DBT_PARENT_ENV = "MESH_DBT_PARENT_PID"  # the process that starts dbt (set by mesh_platform.build)

# What dbt may see of the environment it is started with: dbt's own settings (DBT_*: the target
# and log paths dagster-dbt sets, the profile folder, DBT_ENV_SECRET_* an operator gives dbt on
# purpose), the domains' profiles' MESH_STATE_DIR, and what a process needs to run. Not the
# catalog's, the warehouse's or Dagster's credentials (AWS_*, MESH_POSTGRES_URL,
# MESH_CATALOG__*, PG*): the run worker holds them, dbt never needs them.
DBT_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "NO_COLOR",
    "COLUMNS", "PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONUTF8", "DAGSTER_DBT_CLI",
    "MESH_STATE_DIR", DBT_PARENT_ENV,
})  # fmt: skip
DBT_ENV_PREFIXES = ("DBT_", "LC_")
WARM_IDLE_SECONDS = 600  # a warm worker unused this long exits
_GUARD_SOURCE = Path(guard.__file__)


def dbt_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` dbt may see (the allowlist above)."""
    return guard.allowed_env(environ, DBT_ENV_NAMES, DBT_ENV_PREFIXES)


@contextlib.contextmanager
def only_dbt_environment() -> Iterator[None]:
    """This process's environment cut to the allowlist for an in-process dbt call (``mesh
    prepare``'s dbtRunner), then restored."""
    saved = dict(os.environ)
    kept = dbt_environment(saved)
    for key in set(saved) - set(kept):
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def warm_config(python: str | None = None) -> dict[str, Any] | None:
    """Where the warm dbt worker of this user and this installation of dbt listens, and how the
    guard starts it; None when no private folder can hold its socket (the guard then runs dbt
    cold, as before)."""
    python = python or sys.executable
    folder = _private_runtime_dir()
    if folder is None:
        return None
    versions = []
    for dist in ("dbt-core", "dbt-duckdb", "dbt-adapters", "dbt-common"):
        try:
            versions.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} missing")
    worker = Path(warm.__file__).read_bytes()
    key = hashlib.sha256(
        json.dumps([os.path.realpath(python), versions]).encode() + worker
    ).hexdigest()[:16]
    path = folder / f"dbt-{key}.sock"
    if len(str(path)) > 100:  # AF_UNIX paths are at most 107 bytes
        return None
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TZ"}}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    return {"socket": str(path), "python": python, "module": warm.__name__,
            "idle": WARM_IDLE_SECONDS, "env": env}  # fmt: skip


def _private_runtime_dir() -> Path | None:
    """This user's folder for the worker's socket: $XDG_RUNTIME_DIR/mesh_platform, else
    ~/.cache/mesh_platform; created 0700, refused unless it is a real folder of this user that
    no one else can enter (a socket elsewhere could be another user's)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path.home() / ".cache"
    folder = base / "mesh_platform"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return folder


def dbt_guard_script(
    dbt_executable: str, python: str | None = None, warm: Mapping[str, Any] | None = None
) -> str:
    """The guard's text for ``dbt_executable`` (run by ``python``, default this one), started
    warm through ``warm`` (:func:`warm_config`) when given."""
    config = {
        "dbt": dbt_executable,
        "parent_env": DBT_PARENT_ENV,
        "env_names": sorted(DBT_ENV_NAMES),
        "env_prefixes": list(DBT_ENV_PREFIXES),
        "env_forced": {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},  # nothing leaves the machine
        "warm": dict(warm) if warm else None,
    }
    return (
        f"#!{python or sys.executable} -IS\n"
        "# dbt, guarded. Written by mesh_platform/dbt/lockdown.py (guarded_dbt_executable) from\n"
        "# mesh_platform/dbt/guard.py; edits are replaced.\n"
        f"CONFIG = {config!r}\n\n" + _GUARD_SOURCE.read_text()
    )


def guarded_dbt_executable(
    dbt_executable: str, directory: Path, warm: Mapping[str, Any] | None = None
) -> str:
    """An executable in ``directory`` that runs ``dbt_executable`` guarded (see above), warm
    through ``warm`` when given; named by its content, written once, atomically."""
    real = shutil.which(dbt_executable) or dbt_executable
    text = dbt_guard_script(real, warm=warm)
    path = directory / f"dbt-guard-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not path.is_file() or path.read_text() != text:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, text, mode=0o700)
    return str(path)
