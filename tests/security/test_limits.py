"""Class 6: limits that hold (timeout, rows, memory and threads from mesh.yaml, per
principal); Ctrl-C and the timeout cancel the running query."""

from __future__ import annotations

import signal
import time

import pytest

from mesh_platform.errors import MeshError
from mesh_platform.query.engine import QueryCancelledError, QueryLimitError, QuerySession
from mesh_platform.testing import HEAVY, audit_lines, edited, start_heavy_query, wait_until_started


@pytest.mark.e2e
def test_timeout_max_rows_and_memory_come_from_mesh_yaml(attacked_mesh):
    limits = (
        "query:\n  defaults: {timeout_seconds: 1.5, max_rows: 10, memory_limit: 512MB, threads: 1}\n"
        "  principals:\n    sales: {max_rows: 100000}\n"
    )
    mesh_yaml = attacked_mesh.root / "mesh.yaml"
    anchor = "catalog:\n"
    with edited(mesh_yaml, anchor, limits + anchor):
        from mesh_platform.config import load_mesh

        mesh = load_mesh(attacked_mesh.root)
        with QuerySession("marketing", mesh=mesh) as session:
            start = time.monotonic()
            with pytest.raises(QueryLimitError, match=r"longer than 1\.5 s"):
                session.rows(HEAVY)
            assert time.monotonic() - start < 30
            with pytest.raises(QueryLimitError, match="more than 10 rows"):
                session.rows("SELECT customer_key FROM sales.customers")
            assert session.rows("SELECT customer_key FROM sales.customers LIMIT 10")[1]
            settings = dict(
                session._conn.execute(
                    "SELECT name, value FROM duckdb_settings() WHERE name IN "
                    "('memory_limit', 'threads')"
                ).fetchall()
            )
            assert settings["threads"] == "1" and settings["memory_limit"].startswith("488")
        with QuerySession("sales", mesh=mesh) as owner:  # a per-principal override
            assert len(owner.rows("SELECT customer_key FROM sales.customers")[1]) > 10
    statuses = [e["status"] for e in audit_lines(attacked_mesh)[-6:]]
    assert "limited" in statuses


@pytest.mark.e2e
def test_ctrl_c_cancels_a_running_query(attacked_mesh):
    proc = start_heavy_query(attacked_mesh)
    wait_until_started(attacked_mesh, "marketing", proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - sent < 20
    assert proc.returncode != 0 and "cancelled" in err, err
    assert audit_lines(attacked_mesh)[-1]["status"] == "cancelled"


def test_cancel_and_limit_errors_say_how_to_fix():
    for cls in (QueryLimitError, QueryCancelledError):
        assert issubclass(cls, MeshError)
