"""The query service's suite: one `mesh serve` process over the session's built sample mesh,
driven by real clients (psql, psycopg, SQLAlchemy and pandas, the ADBC PostgreSQL driver).

Every test here is marked ``serve`` (by path, below). Tokens are issued per test through the
token store, as `mesh token create` issues them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mesh_platform.config import Mesh
from mesh_platform.testing_serve import Service, issue_token, start_service

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.serve)


@pytest.fixture(scope="session")
def service(sample_build: Mesh) -> Iterator[Service]:
    """`mesh serve` on the built sample mesh, shared by the suite (tests that stop, restart or
    reconfigure a service start their own)."""
    service = start_service(sample_build.root)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def token(sample_build: Mesh) -> Callable[[str], str]:
    """A token for a principal (one per principal, issued on first use)."""
    issued: dict[str, str] = {}

    def get(principal: str) -> str:
        if principal not in issued:
            issued[principal] = issue_token(sample_build, principal)
        return issued[principal]

    return get
