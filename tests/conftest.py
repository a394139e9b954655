"""Shared fixtures. Tests are hermetic: every mesh they touch is a copy in a tmp dir with its own
state (DuckDB files, catalog, warehouse, Dagster instance); no ~/.dagster, no ~/.dbt, no chdir.

Tiers: pure functions (ms) -> Iceberg on a tmp sqlite catalog (< 1 s) -> definitions of a prepared
mesh copy (one dbt parse per domain, shared by the session) -> end to end (marked e2e).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh_platform.config import Mesh, load_mesh

REPO = Path(__file__).resolve().parents[1]
MESH_FILES = (
    "mesh.yaml",
    "governance.yaml",
    "principals.yaml",
    "workspace.yaml",
    "domains",
    "dbt_projects",
)
_IGNORE = shutil.ignore_patterns(
    "target", "dbt_packages", "logs", "__pycache__", ".user.yml", "package-lock.yml"
)


MESH = str(Path(sys.executable).with_name("mesh"))


def user_env() -> dict[str, str]:
    """The environment a user's `mesh` command runs with: none of the test process's MESH_* or
    DAGSTER_HOME."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}


def run_mesh(
    root: Path, *args: str, timeout: int = 1200, **env_extra: str
) -> subprocess.CompletedProcess:
    """The `mesh` command on the mesh at ``root``, as a user runs it (no MESH_* or DAGSTER_HOME
    of the test process)."""
    env = {**user_env(), "COLUMNS": "1000", **env_extra}  # rich tables: one line per row
    return subprocess.run(
        [MESH, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=root,
        check=False,
    )


@contextlib.contextmanager
def edited(path: Path, old: str, new: str) -> Iterator[None]:
    """``path`` with ``old`` (present exactly once) replaced by ``new``; restored after."""
    original = path.read_text()
    assert original.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(original.replace(old, new))
    try:
        yield
    finally:
        path.write_text(original)


def mesh_files(root: Path) -> dict[str, bytes]:
    """Every file of a mesh's own folders and files, with its content (to prove a refused
    command changed nothing)."""
    files = {}
    for top in ("domains", "dbt_projects", "tests"):
        for path in sorted((root / top).rglob("*")) if (root / top).exists() else []:
            if path.is_file() and "__pycache__" not in path.parts and "target" not in path.parts:
                files[str(path.relative_to(root))] = path.read_bytes()
    for name in ("workspace.yaml", "principals.yaml"):
        files[name] = (root / name).read_bytes()
    return files


def copy_mesh(dest: Path) -> Path:
    """Copy the sample mesh's own files (not its state) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in MESH_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_IGNORE)
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    for key in list(os.environ):
        if key.startswith("MESH_"):
            monkeypatch.delenv(key)
    home = tmp_path_factory.getbasetemp() / "dagster_home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home))


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    """An empty mesh (no domains) with its state dir: for storage tests on a tmp catalog."""
    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(tmp_path)
    mesh.ensure_state_dir()
    return mesh


@pytest.fixture
def mesh_copy(tmp_path: Path) -> Mesh:
    """A fresh, unprepared copy of the sample mesh."""
    return load_mesh(copy_mesh(tmp_path / "mesh"))


@pytest.fixture(scope="session")
def prepared_mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    """A copy of the sample mesh with every domain's dbt manifest prepared (shared, read-only)."""
    from mesh_platform.dbt.project import prepare
    from mesh_platform.domain import list_domain_names, load_domain

    mesh = load_mesh(copy_mesh(tmp_path_factory.mktemp("prepared") / "mesh"))
    mesh.ensure_state_dir()
    for name in list_domain_names(mesh):
        prepare(mesh, load_domain(mesh, name))
    return mesh


@pytest.fixture
def catalog(mesh: Mesh):
    """The tmp mesh's Iceberg catalog (sqlite, local warehouse)."""
    from mesh_platform.storage.iceberg import open_catalog

    return open_catalog(mesh)


@pytest.fixture
def duck():
    """An empty in-memory DuckDB connection."""
    from mesh_platform.duckdb_ext import connect

    conn = connect()
    yield conn
    conn.close()


@contextlib.contextmanager
def published_scan(mesh: Mesh, address: Any, snapshot_id: int | None = None) -> Iterator[Any]:
    """(DuckDB connection, relation SQL, snapshot) of a product's published snapshot (main's
    head by default), through the read path's storage layer: catalog row, metadata JSON,
    manifests, Parquet. The connection is closed when the block exits."""
    from mesh_platform.addressing import ProductAddress
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.query.directory import Catalog, data_files, scan_sql

    if isinstance(address, str):
        address = ProductAddress.parse(address)
    state = Catalog(mesh).table_state(address)
    snapshot = state.snapshot(snapshot_id)
    conn = connect(extensions=("avro",))
    try:
        files = data_files(conn, state, snapshot)
        yield conn, scan_sql(files, state, snapshot.columns), snapshot
    finally:
        conn.close()


def read_published(mesh: Mesh, address: Any, snapshot_id: int | None = None):
    """(column names, row count) of a product's published snapshot (see published_scan)."""
    with published_scan(mesh, address, snapshot_id) as (conn, scan, _):
        relation = conn.sql(f"SELECT * FROM {scan}")
        return relation.columns, len(relation.fetchall())


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine has no network: no update/sync calls
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (scripts/bootstrap.sh installs it)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(scripts/bootstrap.sh installs it as root; else `sudo apt-get install chromium`)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def deliver_raw(mesh: Mesh, domain: str, table: str, select_sql: str) -> None:
    """Replace the raw landing's ``table`` with ``select_sql`` (``{raw}`` names the current
    file) as its source would deliver it: the file and its entry of the landing manifest
    (rows, size, checksum, columns) together. A file changed without its manifest entry is
    damage, which every build detects and lands again (sources/tpch.py)."""
    import json

    from mesh_platform.duckdb_ext import connect
    from mesh_platform.sources.tpch import LANDING_FILE, describe_file

    raw = mesh.raw_dir(domain) / f"{table}.parquet"
    staged = raw.with_name(f".{raw.name}.delivery")
    conn = connect()
    try:
        conn.execute(f"COPY ({select_sql.format(raw=raw)}) TO '{staged}' (FORMAT parquet)")
        entry = describe_file(conn, staged).model_copy(update={"file": raw.name})
    finally:
        conn.close()
    manifest_path = mesh.raw_dir(domain) / LANDING_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["tables"][table] = entry.model_dump()
    staged.replace(raw)
    manifest_path.write_text(json.dumps(manifest, indent=2))
