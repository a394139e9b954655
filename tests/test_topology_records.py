"""`mesh up` / `--restart` on what services.json records, without starting a process: the
errors an operator gets name what runs, what stopped and the command that starts it again.
(The processes themselves: tests/test_topology.py.)"""

from __future__ import annotations

import os

import pytest

from mesh_platform.deploy import topology
from mesh_platform.errors import MeshError


def _record(mesh, *services: topology.Service) -> None:
    (mesh.state_dir / "topology").mkdir(parents=True, exist_ok=True)
    topology._save(mesh, topology.Topology(list(services)))


def _running(name: str) -> topology.Service:
    """A service whose recorded process runs (this test's own)."""
    pid = os.getpid()
    return topology.Service(name, ["x"], None, pid, topology._start_time(pid))


def _stopped(name: str) -> topology.Service:
    """A service whose recorded pid is this process with another start time: a recycled pid."""
    return topology.Service(name, ["x"], None, os.getpid(), "0")


def test_up_on_a_partly_stopped_topology_names_the_restart_of_each_stopped_service(mesh):
    _record(mesh, _running("code-server:sales"), _stopped("code-server:marketing"),
            _stopped("daemon"))  # fmt: skip
    with pytest.raises(MeshError) as raised:
        topology.up(mesh, str(mesh.state_dir / "dagster"))
    text = str(raised.value) + str(raised.value.fix)
    assert "already up (code-server:sales)" in text
    assert "not running: marketing, daemon" in text
    assert "`mesh up --restart marketing`" in text and "`mesh up --restart daemon`" in text


def test_restart_of_a_name_the_topology_does_not_run_says_what_it_runs(mesh):
    _record(mesh, _running("code-server:sales"), _running("daemon"))
    with pytest.raises(MeshError, match=r"'finance' is neither .* \(it runs: sales, daemon\)"):
        topology.restart(mesh, "finance", str(mesh.state_dir / "dagster"))
    _record(mesh)  # nothing recorded: nothing up
    with pytest.raises(MeshError, match=r"it runs: nothing"):
        topology.restart(mesh, "sales", str(mesh.state_dir / "dagster"))
