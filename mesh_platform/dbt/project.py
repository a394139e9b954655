"""Preparing a domain's dbt project ahead of time, and finding what was prepared.

Code locations never run ``dbt parse`` at import (it costs seconds in every process): the manifest
is prepared by ``mesh prepare`` (also run by ``mesh build`` and ``mesh ui``) and only read when a
code location loads. Preparation is skipped when the project's files have not changed.

Preparing installs the project's dbt packages offline (:func:`install_packages`: ``dbt deps``
for local and vendored packages, :mod:`mesh_platform.dbt.dependencies`), runs ``dbt parse`` (the
manifest, and the partial-parse state the runs reuse) then, for a
project whose text passes the isolation checks, ``dbt compile`` against an empty scratch
database: each node's compiled SQL is added to the manifest, where the load-time checks read it
(:mod:`mesh_platform.dbt.isolation`).

Every dbt invocation of the platform uses the profile the platform writes
(:func:`dbt_profile`), never the project's own ``profiles.yml`` (kept for running dbt by hand):
the domain's DuckDB file, and a dbt-duckdb plugin that confines the connection to the domain's
own folders before any of its SQL runs.

What dbt writes stays out of the source tree except the prepared manifest: the project's
``target/`` holds only what preparing writes (``manifest.json``, the partial-parse state, the
fingerprint), replaced on each prepare. Runs write their artifacts and logs under the state
dir, ``<state>/dbt/<domain>/target/<invocation>`` (dagster-dbt's per-invocation folder, found
through ``DBT_TARGET_PATH``), and only the last :data:`RUN_ARTIFACTS_KEPT` are kept; preparing
logs to ``<state>/dbt/<domain>/logs`` and compiles into a scratch folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mesh_platform.config import Mesh, environment, make_private_dir
from mesh_platform.dbt.dependencies import (
    PLATFORM_DBT_PACKAGE,
    check_offline,
    install_dir,
    installed,
    is_platform_package,
    link_platform_package,
    mark_installed,
    outside_packages,
    read_packages,
    remove_stale,
    write_deps_project,
)
from mesh_platform.dbt.isolation import text_problems
from mesh_platform.dbt.lockdown import (
    domain_directories,
    only_dbt_environment,
    pinned_files,
    seed_files,
)
from mesh_platform.domain import Domain
from mesh_platform.errors import DbtExecutableNotFoundError, DomainError
from mesh_platform.files import write_atomically

FINGERPRINT_FILE = "mesh_prepared.json"
_FINGERPRINTED_SUFFIXES = {".sql", ".yml", ".yaml", ".csv", ".md", ".py"}
# Part of the fingerprint: a manifest prepared by an older platform (no compiled SQL) is redone.
_PREPARE_FORMAT = b"mesh-prepare/2: parse + compile in the isolated profile"
ISOLATION_PLUGIN = "mesh_platform.dbt.duckdb_plugin"
RUN_TARGET = "run"
COMPILE_TARGET = "compile"
DBT_THREADS = 2
RUN_ARTIFACTS_KEPT = 5  # dbt run artifact folders kept per domain (about 2 MB each)
PARTIAL_PARSE_FILE = "partial_parse.msgpack"
# dagster-dbt's per-invocation target folders (<op>-<run id[:7]>-<uuid[:7]>), which older
# versions of the platform left in the project's target/
_INVOCATION_FOLDER = re.compile(r"^.+-[0-9a-f]{7}-[0-9a-f]{7}$")


def dbt_profile(mesh: Mesh, domain: Domain, *, compile_database: Path | None = None) -> dict:
    """The dbt profile of ``domain`` (named after it): target ``run`` on the domain's DuckDB
    file, and ``compile`` on ``compile_database`` (a scratch file named ``<domain>.duckdb``, so
    relations render with the same database name). Both open through the isolation plugin.
    The run target's folder is created here (DuckDB creates a file, never its folder), and
    again by the plugin just before dbt opens it.

    Nothing else: no ``attach``, ``settings``, ``extensions``, ``filesystems`` or other plugins.
    Beyond the domain's folders, the connection may open only the project's seed files
    (:func:`~mesh_platform.dbt.lockdown.seed_files`), listed each time a profile is written.
    """
    allowed = [str(d) for d in domain_directories(mesh, domain.name)]
    files = pinned_files(seed_files(domain.dbt_project_dir.absolute()))

    def output(path: Path) -> dict[str, Any]:
        return {
            "type": "duckdb",
            "path": str(path),
            "threads": DBT_THREADS,
            "plugins": [
                {
                    "module": ISOLATION_PLUGIN,
                    "alias": "mesh_isolation",
                    "config": {"allowed_directories": list(allowed), "allowed_files": files},
                }
            ],
        }

    outputs = {RUN_TARGET: output(mesh.domain_duckdb(domain.name))}  # its folder created
    if compile_database is not None:
        outputs[COMPILE_TARGET] = output(compile_database)
    return {domain.name: {"target": RUN_TARGET, "outputs": outputs}}


@contextlib.contextmanager
def _profiles_dir(mesh: Mesh, domain: Domain) -> Iterator[Path]:
    """A private directory holding ``profiles.yml`` with :func:`dbt_profile` (and the compile
    target's scratch database), removed afterwards. Pass ``--profile <domain>``."""
    with tempfile.TemporaryDirectory(prefix=f"mesh-dbt-{domain.name}-") as tmp:
        profiles_dir = Path(tmp)
        scratch = profiles_dir / "scratch" / f"{domain.name}.duckdb"
        scratch.parent.mkdir()
        profile = dbt_profile(mesh, domain, compile_database=scratch)
        (profiles_dir / "profiles.yml").write_text(yaml.safe_dump(profile, sort_keys=False))
        yield profiles_dir


@contextlib.contextmanager
def platform_profile(mesh: Mesh, domain: Domain) -> Iterator[Path]:
    """The profiles directory of a dbt run of ``domain`` (see :func:`_profiles_dir`), with the
    run's artifacts sent to the state dir: ``DBT_TARGET_PATH`` is :func:`run_target_dir` for
    the block, so dagster-dbt puts its per-invocation folder (artifacts and logs) there and
    finds the prepared partial-parse state there; older run folders are pruned first."""
    target = run_target_dir(mesh, domain)
    make_private_dir(target)
    prune_run_artifacts(target)
    _sync_partial_parse(domain, target)
    with _profiles_dir(mesh, domain) as profiles_dir, environment({"DBT_TARGET_PATH": str(target)}):
        yield profiles_dir


def dbt_state_dir(mesh: Mesh, domain: Domain) -> Path:
    """Where dbt's output for ``domain`` lives: ``<state>/dbt/<domain>``."""
    return mesh.state_dir / "dbt" / domain.name


def run_target_dir(mesh: Mesh, domain: Domain) -> Path:
    """The target path of ``domain``'s dbt runs (one folder per invocation inside)."""
    return dbt_state_dir(mesh, domain) / "target"


def prune_run_artifacts(target: Path, keep: int = RUN_ARTIFACTS_KEPT) -> list[Path]:
    """Remove all but the newest ``keep`` invocation folders under ``target`` (before a run
    adds its own). Returns the removed folders."""
    if not target.is_dir():
        return []
    folders = [p for p in target.iterdir() if p.is_dir() and not p.is_symlink()]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = folders[max(0, keep) :]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _sync_partial_parse(domain: Domain, target: Path) -> None:
    """Copy the prepared partial-parse state beside the run folders (dagster-dbt copies it from
    there into each invocation folder, so dbt does not parse the project again)."""
    source = domain.dbt_project_dir / "target" / PARTIAL_PARSE_FILE
    copy = target / PARTIAL_PARSE_FILE
    try:
        stat = source.stat()
    except FileNotFoundError:
        copy.unlink(missing_ok=True)  # never a stale state from an older project
        return
    try:
        current = copy.stat()
        if current.st_mtime_ns == stat.st_mtime_ns and current.st_size == stat.st_size:
            return
    except FileNotFoundError:
        pass
    scratch = copy.with_name(f".{copy.name}.{os.getpid()}")
    shutil.copy2(source, scratch)
    scratch.replace(copy)


def _remove_legacy_artifacts(domain: Domain) -> None:
    """Run folders and compile output older versions of the platform left in the project's
    ``target/`` (they grew by about 2 MB per run)."""
    target = domain.dbt_project_dir / "target"
    if not target.is_dir():
        return
    for folder in target.iterdir():
        if (
            folder.is_dir()
            and not folder.is_symlink()
            and (folder.name == "mesh_compile" or _INVOCATION_FOLDER.match(folder.name))
        ):
            shutil.rmtree(folder, ignore_errors=True)


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


# Where `mesh prepare` leaves a project's manifest, inside the project.
MANIFEST_FILE = Path("target", "manifest.json")


def manifest_path(domain: Domain) -> Path:
    return domain.dbt_project_dir / MANIFEST_FILE


def fingerprint(domain: Domain) -> str:
    """Hash of every file that changes what ``dbt parse`` produces."""
    digest = hashlib.sha256(_PREPARE_FORMAT)
    project_dir = domain.dbt_project_dir
    packages = read_packages(project_dir)
    roots = [project_dir, PLATFORM_DBT_PACKAGE, *outside_packages(project_dir, packages)]
    skipped = {"target", "dbt_packages", install_dir(project_dir).name, "logs", "package-lock.yml"}
    for root in roots:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if rel.parts and rel.parts[0] in skipped:
                continue
            if path.is_file() and path.suffix in _FINGERPRINTED_SUFFIXES:
                digest.update(str(rel).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def install_packages(mesh: Mesh, domain: Domain) -> None:
    """Install the project's dbt packages offline (:mod:`mesh_platform.dbt.dependencies`): the
    platform's package alone is linked; anything else is installed by ``dbt deps`` when
    ``packages.yml`` changed or a package is missing. Hub, git, tarball and private packages
    are refused, naming each and how to vendor it."""
    project_dir = domain.dbt_project_dir
    packages = read_packages(project_dir)
    if not packages:
        return
    check_offline(domain.name, project_dir, packages)
    if all(is_platform_package(project_dir, p) for p in packages):
        # Even when the manifest is current: a copied checkout can lose the link, and dbt
        # build (not parse) would then fail on "packages not installed". `dbt deps` costs
        # ~7 s per project here to create exactly this link.
        link_platform_package(project_dir)
        return
    if installed(project_dir, packages):
        return
    remove_stale(project_dir, packages)
    with _profiles_dir(mesh, domain) as profiles_dir:
        scratch = profiles_dir / "deps"
        scratch.mkdir()
        write_deps_project(project_dir, packages, scratch)
        _invoke(mesh, domain, profiles_dir, "deps", project_dir=scratch)
    if any(is_platform_package(project_dir, p) for p in packages):
        link_platform_package(project_dir)
    mark_installed(project_dir, packages)


def _invoke(
    mesh: Mesh,
    domain: Domain,
    profiles_dir: Path,
    command: str,
    *args: str,
    project_dir: Path | None = None,
) -> None:
    """``dbt <command>`` in this process (dbtRunner): dbt is imported once for all domains.
    ``project_dir``: another project than the domain's (``dbt deps``' scratch project)."""
    from dbt.cli.main import dbtRunner  # heavy: dbt-core (~2 s), only when a manifest is prepared

    errors: list[str] = []

    def _collect(event: Any) -> None:
        if event.info.level in ("error", "warn") and event.info.msg:
            errors.append(str(event.info.msg))

    env = {**mesh.dbt_env(), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    logs = make_private_dir(dbt_state_dir(mesh, domain) / "logs")
    try:
        with environment(env), only_dbt_environment():  # no credential reaches the Jinja
            result = dbtRunner(callbacks=[_collect]).invoke(
                [
                    command,
                    "--project-dir",
                    str(project_dir or domain.dbt_project_dir),
                    "--profiles-dir",
                    str(profiles_dir),
                    "--profile",
                    domain.name,
                    "--log-path",
                    str(logs),
                    *args,
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
            f"`dbt {command}` failed in its dbt project:\n    {detail or 'no detail from dbt'}",
            fix=f"fix the dbt error above in dbt_projects/{domain.name}, then run "
            f"`mesh prepare --domain {domain.name}`",
            path=domain.dbt_project_dir,
        )


def _compile_into_manifest(mesh: Mesh, domain: Domain, profiles_dir: Path) -> None:
    """Add each node's compiled SQL (``dbt compile`` on the scratch database, into a scratch
    target path beside it) to the prepared manifest, which keeps the run target's parse
    state."""
    compile_target = profiles_dir / "compile"
    _invoke(
        mesh, domain, profiles_dir, "compile",
        "--target", COMPILE_TARGET, "--target-path", str(compile_target),
        "--no-partial-parse",  # the scratch database's path differs on every compile
    )  # fmt: skip
    compiled = json.loads((compile_target / "manifest.json").read_text())
    path = manifest_path(domain)
    manifest = json.loads(path.read_text())
    for uid, node in manifest["nodes"].items():
        if (code := compiled["nodes"].get(uid, {}).get("compiled_code")) is not None:
            node["compiled_code"] = code
            node["compiled"] = True
    write_atomically(path, json.dumps(manifest))


def prepare(mesh: Mesh, domain: Domain, *, force: bool = False) -> bool:
    """Install the project's dbt packages and write the manifest. Returns False if the
    manifest was up to date."""
    target = domain.dbt_project_dir / "target"
    stamp = target / FINGERPRINT_FILE
    install_packages(mesh, domain)
    _remove_legacy_artifacts(domain)
    current = fingerprint(domain)
    if not force and manifest_path(domain).is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == current:
                return False
        except ValueError:
            pass

    with _profiles_dir(mesh, domain) as profiles_dir:
        _invoke(
            mesh, domain, profiles_dir, "parse",
            "--target", RUN_TARGET, "--target-path", str(target),
        )  # fmt: skip
        manifest = json.loads(manifest_path(domain).read_text())
        # A project whose text is refused is not compiled: its Jinja never runs, and the
        # load-time checks report the problems from the parsed manifest.
        if not text_problems(domain.name, manifest, raw_dir=mesh.raw_dir(domain.name)):
            _compile_into_manifest(mesh, domain, profiles_dir)
    stamp.write_text(json.dumps({"fingerprint": current}))
    return True


@cache
def _read_manifest(path: Path, mtime_ns: int) -> dict[str, Any]:
    return json.loads(path.read_text())


def load_manifest(domain: Domain, *, cache: bool = True) -> dict[str, Any]:
    """The prepared manifest (read, never parsed here); a clear error when it is missing.

    ``cache``: keep it for this process (about 1.6 MB per manifest, for as long as the process
    lives); readers that keep only what they extract (the product registry, the consumers of
    a product) pass False, so a process that reads every domain once does not hold N
    manifests."""
    path = manifest_path(domain)
    if not path.is_file():
        raise DomainError(
            domain.name,
            "its dbt manifest has not been prepared",
            fix=f"run `mesh prepare --domain {domain.name}` (mesh build and mesh ui do it for you)",
            path=path,
        )
    try:
        if not cache:
            return json.loads(path.read_text())
        return _read_manifest(path, path.stat().st_mtime_ns)
    except ValueError as exc:
        raise DomainError(
            domain.name,
            f"its dbt manifest is not valid JSON ({exc})",
            fix=f"run `mesh prepare --domain {domain.name} --force`",
            path=path,
        ) from exc
