"""The reader's side of the production profile: `mesh query`, `read_product` and
`open_session` go through the query service when MESH_ENDPOINT is set, logged in with
MESH_TOKEN, and read exactly what the embedded engine reads for that principal."""

from __future__ import annotations

import json

import pytest

from mesh_platform.errors import MeshError
from mesh_platform.query.engine import QuerySession
from mesh_platform.query.remote import RemoteQueryError, RemoteSession, open_session
from mesh_platform.read import read_product
from mesh_platform.testing import run_mesh

CUSTOMERS = "SELECT * FROM sales.customers ORDER BY customer_key"


def _endpoint(service) -> str:
    return f"postgresql://127.0.0.1:{service.port}/mesh"


def _audit(mesh) -> list[dict]:
    path = mesh.state_dir / "audit" / "queries.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_mesh_query_goes_through_the_service_with_the_token(service, token, sample_build):
    env = {"MESH_ENDPOINT": _endpoint(service), "MESH_TOKEN": token("user:carol")}
    result = run_mesh(
        sample_build.root, "query", "--as", "user:carol", "--format", "json", CUSTOMERS, **env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with QuerySession("user:carol", mesh=sample_build) as session:
        names, rows = session.rows(CUSTOMERS)
    served = json.loads(result.stdout)
    assert [list(r) for r in (tuple(d.values()) for d in served)] == [
        [v if not hasattr(v, "isoformat") else v.isoformat() for v in row] for row in rows
    ]
    assert list(served[0]) == names
    served_lines = [e for e in _audit(sample_build) if e.get("auth") == "token"]
    last = [e for e in served_lines if e.get("status") == "ok"][-1]
    assert (last["principal"], last["client"]) == ("user:carol", "127.0.0.1")
    assert last["products"][0]["address"] == "sales.customers"


def test_a_flag_names_a_principal_but_only_the_token_proves_it(service, token, sample_build):
    """--as another principal with carol's token: refused at login, nothing read."""
    env = {"MESH_ENDPOINT": _endpoint(service), "MESH_TOKEN": token("user:carol")}
    result = run_mesh(sample_build.root, "query", "--as", "sales", CUSTOMERS, **env)
    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_mesh(
        sample_build.root, "query", "--as", "sales", CUSTOMERS, MESH_ENDPOINT=_endpoint(service)
    )
    assert missing.returncode == 1 and "MESH_TOKEN" in missing.stderr


def test_read_product_and_time_travel_through_the_service(
    service, token, sample_build, monkeypatch
):
    with QuerySession("sales", mesh=sample_build) as session:
        expected = session.sql(CUSTOMERS)
        snapshot = session.last_snapshots["sales.customers"]
    monkeypatch.setenv("MESH_ENDPOINT", _endpoint(service))
    monkeypatch.setenv("MESH_TOKEN", token("sales"))
    remote = read_product("sales.customers", as_="sales", mesh=sample_build)
    assert remote.sort_by("customer_key").to_pylist() == expected.to_pylist()
    travelled = read_product(
        "sales.customers", as_="sales", snapshot_id=snapshot, mesh=sample_build
    )
    assert travelled.num_rows == expected.num_rows
    with pytest.raises(RemoteQueryError, match="no published snapshot 1"):
        read_product("sales.customers", as_="sales", snapshot_id=1, mesh=sample_build)
    with open_session("sales", mesh=sample_build) as session:
        assert isinstance(session, RemoteSession)
        names, rows = session.rows("SELECT count(*) AS n FROM sales.customers")
        assert (names, rows) == (["n"], [(expected.num_rows,)])


def test_without_an_endpoint_the_embedded_engine_reads_and_audits_impersonation(sample_build):
    with open_session("marketing", mesh=sample_build) as session:
        assert isinstance(session, QuerySession)
        session.rows("SELECT count(*) FROM sales.customers")
    last = [e for e in _audit(sample_build) if e.get("status") == "ok"][-1]
    assert (last["principal"], last["auth"]) == ("marketing", "impersonation")


def test_a_bad_endpoint_is_a_clear_error(monkeypatch):
    with pytest.raises(MeshError, match="postgresql:// URL"):
        RemoteSession("sales", url="http://example.invalid", token="x")
