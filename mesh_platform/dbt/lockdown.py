"""The run-time wall of a domain's isolation (the load-time wall: dbt/isolation.py).

- :func:`lock_down`: every DuckDB connection the domain's SQL runs in (the dbt-duckdb plugin
  :mod:`mesh_platform.dbt.duckdb_plugin` applies it) has external access off except the domain's
  own state folder and its project's seed files, no extension loading, and its configuration
  locked, so no ``SET`` undoes it.
- :func:`guarded_dbt_executable`: dbt runs through a wrapper that dies with the process that
  started it, so a killed run leaves no dbt writing the domain's DuckDB.

DuckDB refuses ``allowed_directories`` before the database has started and after external
access is off, so the order of :func:`lockdown_statements` is the only one that works; DuckDB
adds the database's own temporary directory (``<file>.tmp``) to the allowed ones by itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mesh_platform.addressing import quote_literal
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


# -- run time: dbt dies with the process that started it ----------------------------------------
#
# dagster-dbt starts `dbt` with a plain subprocess.Popen (no preexec_fn, no process group of its
# own): killing the process that runs the step (SIGKILL of `mesh build`, the OOM killer) left
# dbt running, still writing the domain's DuckDB while the next build started. The guard is a
# tiny executable given to DbtCliResource as its ``dbt_executable``: it asks the kernel to
# SIGKILL it when its parent dies (prctl PR_SET_PDEATHSIG, kept across execve), checks that the
# process that started it is still there (it may have died before the request), then becomes
# dbt (execv): nothing stays in between, dbt's exit code, output and signals are unchanged.
# The kernel delivers the signal when the *thread* that started dbt exits: dagster-dbt starts it
# from the step's thread, which lives as long as the step. Linux only; elsewhere dbt runs
# unguarded (the guard says so on stderr).

DBT_PARENT_ENV = "MESH_DBT_PARENT_PID"  # the process that starts dbt (set by mesh_platform.build)

_GUARD = """#!{python} -IS
# dbt, guarded: it dies with the process that started it. Written by
# mesh_platform/dbt/isolation.py (guarded_dbt_executable); edits are replaced.
import ctypes, os, signal, sys

DBT = {dbt!r}
parent = os.getppid()
expected = int(os.environ.get({env!r}) or parent)
try:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
except (OSError, AttributeError) as exc:
    sys.stderr.write(f"mesh: dbt runs without its parent-death guard ({{exc}})\\n")
else:
    try:
        os.kill(expected, 0)
        gone = False
    except ProcessLookupError:
        gone = True
    except PermissionError:
        gone = False
    if os.getppid() != parent or (expected != parent and gone):
        sys.stderr.write(f"mesh: dbt's parent ({{expected}}) is gone; dbt not run\\n")
        sys.exit(70)
os.execv(DBT, [DBT, *sys.argv[1:]])
"""


def dbt_guard_script(dbt_executable: str, python: str | None = None) -> str:
    """The guard's text for ``dbt_executable`` (run by ``python``, default this one)."""
    return _GUARD.format(python=python or sys.executable, dbt=dbt_executable, env=DBT_PARENT_ENV)


def guarded_dbt_executable(dbt_executable: str, directory: Path) -> str:
    """An executable in ``directory`` that runs ``dbt_executable`` guarded (see above); named
    by its content, written once, atomically."""
    real = shutil.which(dbt_executable) or dbt_executable
    text = dbt_guard_script(real)
    path = directory / f"dbt-guard-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not path.is_file() or path.read_text() != text:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, text, mode=0o700)
    return str(path)
