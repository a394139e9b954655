"""`mesh ui` starts the Dagster UI on the workspace, shows the three code locations and marketing's
lineage into sales and logistics, and stops cleanly (whole process tree) on Ctrl-C."""

import os
import signal
import socket
import subprocess
import time

import pytest

from mesh_platform.testing import LOCATIONS, MESH, free_port, graphql

pytestmark = pytest.mark.e2e

ASSETS = """{ assetNodes { assetKey { path } dependencyKeys { path }
  repository { location { name } } } }"""


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ui_shows_domains_and_cross_domain_lineage_and_stops_on_ctrl_c(prepared_mesh):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}
    proc = subprocess.Popen(
        [MESH, "--root", str(prepared_mesh.root), "ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        entries = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                workspace = graphql(port, LOCATIONS)["workspaceOrError"]
                entries = workspace.get("locationEntries") or []
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            except OSError:
                pass
            time.sleep(2)
        assert entries, "the Dagster UI did not answer"
        assert sorted(e["name"] for e in entries) == ["logistics", "marketing", "sales"]
        errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
        assert not errors, errors

        nodes = graphql(port, ASSETS)["assetNodes"]
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        impact = by_key["marketing/late_delivery_impact"]
        assert impact["repository"]["location"]["name"] == "marketing"
        # the producing domains' products, owned by their own code locations
        assert by_key["sales/order_lines"]["repository"]["location"]["name"] == "sales"
        assert by_key["logistics/shipments"]["repository"]["location"]["name"] == "logistics"
        segments_deps = {
            "/".join(d["path"])
            for key in (
                "marketing/internal/stg_order_revenue",
                "marketing/internal/stg_customer_geo",
            )
            for d in by_key[key]["dependencyKeys"]
        }
        assert {"sales/orders", "sales/order_lines", "sales/customers", "logistics/nations"} <= (
            segments_deps
        )
        assert "logistics/shipments" in {"/".join(d["path"]) for d in impact["dependencyKeys"]}
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("mesh ui did not stop within 90 s of Ctrl-C")
    assert proc.returncode == 0, proc.stdout.read()[-3000:]
    deadline = time.monotonic() + 30
    while _port_open(port) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _port_open(port), "the webserver outlived mesh ui"
    leftovers = subprocess.run(
        ["pgrep", "-f", str(prepared_mesh.root / "workspace.yaml")], capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == "", f"processes left running: {leftovers.stdout}"
