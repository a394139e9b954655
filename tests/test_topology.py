"""The production topology on one machine (`mesh up`): separate processes, a daemon that fires.

One mesh on the production profile (its own PostgreSQL database and warehouse prefix on the
loopback servers), prepared but never built: everything it publishes, the topology's daemon
launches. Sales and logistics are scheduled every minute (a time the test controls); marketing
runs only when its sensor sees their products published.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import dagster as dg
import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.keys import product_key
from mesh_platform.assets.specs import SNAPSHOT_METADATA
from mesh_platform.config import load_mesh
from mesh_platform.deploy.topology import LOCATIONS, graphql, load_topology
from mesh_platform.testing import (
    SF,
    copy_mesh,
    drop_profile,
    free_port,
    fresh_profile,
    process_running,
    why,
)
from tests.test_production import run_mesh

pytestmark = pytest.mark.production

EVERY_MINUTE = 'schedule: {cron: "* * * * *", timezone: UTC}'


def _every_minute(root: Path, domain: str) -> None:
    path = root / "domains" / domain / "domain.yaml"
    text, count = re.subn(r"^schedule: .*$", EVERY_MINUTE, path.read_text(), flags=re.M)
    assert count == 1, f"no schedule line in {path}"
    path.write_text(text)


@pytest.fixture(scope="module")
def topology(services, tmp_path_factory):
    """The mesh, `mesh up` on it; `mesh down` after the module (asserted by the last test)."""
    root = copy_mesh(tmp_path_factory.mktemp("topology") / "mesh")
    for domain in ("sales", "logistics"):
        _every_minute(root, domain)
    env = {**fresh_profile(services), "MESH_SCALE_FACTOR": str(SF)}
    prepared = run_mesh(root, env, "prepare")
    assert prepared.returncode == 0, why(prepared)
    port = free_port()
    started = run_mesh(root, env, "up", "--port", str(port))
    yield root, env, port, started
    run_mesh(root, env, "down", "--grace", "10")
    drop_profile(services, env)


def _instance(root: Path, env: dict[str, str], monkeypatch) -> dg.DagsterInstance:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return dg.DagsterInstance.from_config(str(load_mesh(root).dagster_home))


def _wait_for_run(
    instance: dg.DagsterInstance, tags: dict[str, str], seconds: float, *, ended: bool = True
):
    """The first run with ``tags`` (to end, if ``ended``); fails the test if none in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = instance.get_runs(filters=dg.RunsFilter(tags=tags))
        done = [r for r in runs if r.is_finished or not ended]
        if done:
            return done[-1]
        time.sleep(2)
    raise AssertionError(f"no run with {tags} {'ended' if ended else 'created'} in time: {runs}")


SCHEDULE = """query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) {
  __typename ... on Schedule { scheduleState { id } } } }"""
STOP = """mutation($id: String) { stopRunningSchedule(id: $id) { __typename
  ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }"""


def _stop_schedule(port: int, location: str, name: str) -> str:
    """Stop a schedule as an operator does in the UI (the webserver's GraphQL API)."""
    selector = {"repositoryLocationName": location, "repositoryName": "__repository__",
                "scheduleName": name}  # fmt: skip
    state = graphql(port, SCHEDULE, {"s": selector})["scheduleOrError"]["scheduleState"]
    result = graphql(port, STOP, {"id": state["id"]})["stopRunningSchedule"]
    return result.get("scheduleState", {}).get("status") or str(result)


def _timing(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """When the run was created, started and ended (in the test's output, for the CI budget)."""
    record = instance.get_run_record_by_id(run.run_id)
    print(
        f"run {run.run_id[:8]} {run.tags.get('mesh/domain')}: created {record.create_timestamp:%H:%M:%S}, "
        f"started {record.start_time or 0:.0f}, ended {record.end_time or 0:.0f}"
    )


def test_mesh_up_starts_a_code_server_per_domain_a_daemon_and_a_webserver(topology):
    root, env, port, started = topology
    assert started.returncode == 0, why(started)
    status = run_mesh(root, env, "status")
    assert status.returncode == 0, why(status)
    for service in ("code-server:sales", "code-server:logistics", "code-server:marketing",
                    "daemon", "webserver", "query"):  # fmt: skip
        assert re.search(rf"^\W*{re.escape(service)}\W.*\byes\W+yes\b", status.stdout, re.M), (
            status.stdout
        )
    mesh = load_mesh(root)
    recorded = load_topology(mesh)
    servers = {s.domain: s.port for s in recorded.services if s.domain}
    assert set(servers) == {"sales", "logistics", "marketing"}
    assert len(set(servers.values())) == 3  # one process, one port each
    workspace = (mesh.state_dir / "topology" / "workspace.yaml").read_text()
    assert all(f"port: {p}" in workspace for p in servers.values())
    assert "python_module" not in workspace  # the webserver and the daemon load no code
    entries = graphql(port, LOCATIONS)["workspaceOrError"]["locationEntries"]
    assert {e["name"]: e["locationOrLoadError"]["__typename"] for e in entries} == {
        "sales": "RepositoryLocation", "logistics": "RepositoryLocation",
        "marketing": "RepositoryLocation",
    }  # fmt: skip


def test_the_daemon_runs_the_schedules_and_the_consumer_runs_from_what_they_published(
    topology, monkeypatch
):
    root, env, port, started = topology
    assert started.returncode == 0, why(started)
    instance = _instance(root, env, monkeypatch)
    for domain in ("sales", "logistics"):  # each fires once: then an operator stops it in the UI
        _wait_for_run(instance, {"dagster/schedule_name": f"{domain}_schedule"}, 300, ended=False)
        assert _stop_schedule(port, domain, f"{domain}_schedule") == "STOPPED"
    for domain in ("sales", "logistics"):
        run = _wait_for_run(instance, {"dagster/schedule_name": f"{domain}_schedule"}, 600)
        assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
        _timing(instance, run)
    consumer = _wait_for_run(
        instance, {"dagster/sensor_name": "marketing_on_inputs_published"}, 600
    )
    assert consumer.status == dg.DagsterRunStatus.SUCCESS, consumer.run_id
    _timing(instance, consumer)
    # marketing's products record the snapshots they read: ones sales and logistics published
    # (both keep running every minute: not necessarily their latest)
    key = product_key(ProductAddress.parse("marketing.revenue_by_nation_segment"))
    event = instance.get_latest_materialization_event(key)
    assert event is not None and event.run_id == consumer.run_id
    inputs = event.asset_materialization.metadata["mesh/inputs"].value
    assert {a.split(".")[0] for a in inputs} == {"sales", "logistics"}, inputs
    for address, snapshot in inputs.items():
        records = instance.fetch_materializations(
            product_key(ProductAddress.parse(address)), limit=100
        ).records
        published = {
            int(r.asset_materialization.metadata[SNAPSHOT_METADATA].value) for r in records
        }
        assert int(snapshot) in published, (address, snapshot, published)


def test_mesh_down_stops_every_process(topology):
    root, env, _port, _started = topology
    mesh = load_mesh(root)
    pids = [s.pid for s in load_topology(mesh).services if s.pid]
    assert pids
    stopped = run_mesh(root, env, "down", "--grace", "20")
    assert stopped.returncode == 0, why(stopped)
    assert not [pid for pid in pids if process_running(pid)]  # gone, or a zombie no one reaped yet
    assert run_mesh(root, env, "status").returncode == 1
    assert not (mesh.state_dir / "topology" / "services.json").exists()
