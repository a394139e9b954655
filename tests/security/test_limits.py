"""Class 6: limits that hold (timeout, rows, memory and threads from mesh.yaml, per
principal); Ctrl-C and the timeout cancel the running query."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from mesh_platform.errors import MeshError
from mesh_platform.query.engine import QueryCancelledError, QueryLimitError, QuerySession
from tests.security.conftest import MESH, edited

HEAVY = "SELECT count(*) FROM range(1000000) a(x), range(1000000) b(y) WHERE a.x + b.y = -1"


def _audit(mesh) -> list[dict]:
    path = mesh.state_dir / "audit" / "queries.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
                session.rows(HEAVY.replace("b(y)", "b(y), sales.customers c"))
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
    statuses = [e["status"] for e in _audit(attacked_mesh)[-6:]]
    assert "limited" in statuses


@pytest.mark.e2e
def test_ctrl_c_cancels_a_running_query(attacked_mesh):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}
    proc = subprocess.Popen(
        [MESH, "--root", str(attacked_mesh.root), "query", "--as", "marketing",
         HEAVY.replace("b(y)", "b(y), sales.customers c")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240  # start-up may re-prepare an edited domain
    while time.monotonic() < deadline:
        entries = [e for e in _audit(attacked_mesh) if e.get("principal") == "marketing"]
        if entries and entries[-1]["status"] == "started":
            break
        time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - sent < 20
    assert proc.returncode != 0 and "cancelled" in err, err
    assert _audit(attacked_mesh)[-1]["status"] == "cancelled"


def test_cancel_and_limit_errors_say_how_to_fix():
    for cls in (QueryLimitError, QueryCancelledError):
        assert issubclass(cls, MeshError)
