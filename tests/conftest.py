"""Shared fixtures. Tests are hermetic: every mesh they touch is a copy in a tmp dir with its own
state (DuckDB files, catalog, warehouse, Dagster instance); no ~/.dagster, no ~/.dbt, no chdir.
The helpers (copy a mesh, run `mesh`, read what was published) are in mesh_platform.testing.

Tiers: pure functions (ms) -> Iceberg on a tmp sqlite catalog (< 1 s) -> definitions of a prepared
mesh copy (one dbt parse per domain, shared by the session) -> end to end (marked e2e; one
read-only build of the sample mesh, ``sample_build``, is shared by the session) -> the fault
injection and adversarial suites (marked chaos and security) -> the production profile (marked
production). The fast tier for the edit-test loop leaves out everything but the first three:
``pytest -m "not e2e and not production and not chaos and not security"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh_platform.config import Mesh, load_mesh
from mesh_platform.dbt.project import prepare
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.duckdb_ext import connect
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.testing import (
    build_sample_mesh,
    copy_mesh,
    drop_profile,
    fresh_profile,
    services_env,
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker per core, at most four (each builds its own sample mesh: about
    1.5 GB at its peak) and at least two (most of a test's time is one Python process waiting
    for another: dbt, `mesh`, the webserver, so two share even one core well)."""
    return max(2, min(os.cpu_count() or 1, 4))


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
    mesh = load_mesh(copy_mesh(tmp_path_factory.mktemp("prepared") / "mesh"))
    mesh.ensure_state_dir()
    for name in list_domain_names(mesh):
        prepare(mesh, load_domain(mesh, name))
    return mesh


@pytest.fixture(scope="session")
def sample_build(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    """The sample mesh built once for the session by `mesh build --scale SF`: every product
    published, never rebuilt. Shared by the modules that only read it (and that edit a file
    only inside ``edited``, which restores it); a module that rebuilds, injects faults or runs
    the daemon builds its own copy."""
    return build_sample_mesh(tmp_path_factory.mktemp("sample_build") / "mesh")


@pytest.fixture
def catalog(mesh: Mesh):
    """The tmp mesh's Iceberg catalog (sqlite, local warehouse)."""
    return open_catalog(mesh)


@pytest.fixture
def duck():
    """An empty in-memory DuckDB connection."""
    conn = connect()
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """The production profile's loopback servers' environment (started if not running)."""
    return services_env()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.production)],
)
def profile(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The storage profile this test's process runs on: the embedded default (sqlite catalog,
    local warehouse; no variable set) or production (its own PostgreSQL database and warehouse
    prefix on the loopback servers). Its MESH_* variables, which child processes inherit."""
    if request.param == "sqlite":
        return {}
    services = request.getfixturevalue("services")
    env = fresh_profile(services)
    request.addfinalizer(lambda: drop_profile(services, env))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


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


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (scripts/bootstrap.sh installs it)."""
    from playwright.sync_api import sync_playwright  # heavy: only the browser tests need it

    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(scripts/bootstrap.sh installs it as root; else `sudo apt-get install chromium`)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
