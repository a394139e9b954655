"""Runs the Dagster daemon launched: a worker that dies does not hold its domain for ever.

Dagster's DefaultRunLauncher cannot tell whether a run's worker still runs, so a worker killed
mid-run left its run STARTED and its domain's one writer taken. Each worker now takes its run's
lease (MeshResource, leases.take_lease) and the instance's launcher (launcher.MeshRunLauncher)
judges it for Dagster's run monitoring. Seconds, on the instance `mesh prepare` configures; the
same on a real topology, with a worker killed mid-publication: tests/test_topology.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest

from mesh_platform.config import Mesh
from mesh_platform.instance import prepare_dagster_home
from mesh_platform.launcher import MeshRunLauncher
from mesh_platform.leases import (
    DOMAIN_TAG,
    HEARTBEAT_TAG,
    MAX_RETRIES_TAG,
    Owner,
    lease_tags,
    read_lease,
    take_lease,
)
from mesh_platform.pools import reap_expired_runs
from mesh_platform.resources import MeshResource


@pytest.fixture
def instance(mesh: Mesh) -> dg.DagsterInstance:
    prepare_dagster_home(mesh)
    with dg.DagsterInstance.from_config(str(mesh.dagster_home)) as instance:
        yield instance


def _run(instance: dg.DagsterInstance, tags: dict[str, str] | None = None) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(
        dg.DagsterRun(
            job_name="sales_build", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
            tags={DOMAIN_TAG: "sales", **(tags or {})},
        )
    )  # fmt: skip
    return run_id


def _dead_owner() -> Owner:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = Owner(Owner.current().host, child.pid, Owner.current().kernel, "1")
    child.wait()
    return owner


def test_the_instance_launches_runs_with_the_launcher_that_judges_workers(instance):
    launcher = instance.run_launcher
    assert isinstance(launcher, MeshRunLauncher)
    assert launcher.supports_check_run_worker_health
    settings = instance.run_monitoring_settings
    assert settings["enabled"] and settings["free_slots_after_run_end_seconds"] > 0


def test_a_worker_is_judged_by_its_lease(instance):
    launcher = instance.run_launcher
    alive = _run(instance, lease_tags(Owner.current(), now=time.time(), seconds=60))
    dead = _run(instance, lease_tags(_dead_owner(), now=time.time(), seconds=60))
    unleased = _run(instance)
    health = {r: launcher.check_run_worker_health(instance.get_run_by_id(r)) for r in
              (alive, dead, unleased)}  # fmt: skip
    assert health[alive].status.name == "RUNNING"
    assert health[dead].status.name == "FAILED"
    assert "gone (killed or crashed)" in health[dead].msg
    assert health[unleased].status.name == "RUNNING"  # not started its steps yet


def test_a_re_execution_is_not_judged_by_the_lease_it_inherited(instance):
    """Dagster's retry (and the UI's re-execution) copies the parent's tags: the dead parent's
    lease must neither fail the new run before its worker starts nor let a reaper take it."""
    parent = str(uuid.uuid4())
    inherited = lease_tags(_dead_owner(), now=time.time() - 600, seconds=60, run_id=parent)
    child = _run(instance, {**inherited, "dagster/parent_run_id": parent})
    run = instance.get_run_by_id(child)
    assert read_lease(run.tags, child) is None
    assert instance.run_launcher.check_run_worker_health(run).status.name == "RUNNING"
    assert reap_expired_runs(instance) == []
    assert instance.get_run_by_id(child).status == dg.DagsterRunStatus.STARTED


def test_a_worker_takes_its_runs_lease_and_renews_it(instance, monkeypatch):
    monkeypatch.setenv("MESH_RUN_LEASE_SECONDS", "3")
    run_id = _run(instance)
    heartbeat = take_lease(instance, run_id)
    assert heartbeat is not None
    try:
        tags = instance.get_run_by_id(run_id).tags
        lease = read_lease(tags, run_id)
        assert lease is not None and lease.owner == Owner.current() and lease.seconds == 3
        assert MAX_RETRIES_TAG not in tags  # the daemon may retry it: it has an origin
        assert take_lease(instance, run_id) is None  # renewed here already
        first = float(tags[HEARTBEAT_TAG])
        deadline = time.monotonic() + 10
        while float(instance.get_run_by_id(run_id).tags[HEARTBEAT_TAG]) == first:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.1)
    finally:
        heartbeat.__exit__()
    assert take_lease(instance, None) is None


def test_every_run_of_a_domain_takes_its_lease_through_the_mesh_resource(instance, mesh):
    seen: dict[str, str] = {}

    @dg.asset
    def product(context, mesh: MeshResource) -> None:
        seen.update(context.instance.get_run_by_id(context.run.run_id).tags)

    result = dg.materialize(
        [product], instance=instance, resources={"mesh": MeshResource(root=str(mesh.root))}
    )
    assert result.success
    lease = read_lease(seen)
    assert lease is not None and lease.owner == Owner.current()
