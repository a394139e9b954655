"""Operations: a `mesh build` killed mid-run leaves its run STARTED; the platform marks it
failed and releases its domain's pool (mesh_platform.pools.reap_expired_runs, run by `mesh
build` and by each domain's SLA monitor sensor; the lease and its faults: tests/chaos/test_runs.py).
The instance is configured for one writer per domain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mesh_platform.instance import prepare_dagster_home
from mesh_platform.pools import reap_expired_runs

MESH = str(Path(sys.executable).with_name("mesh"))


def test_the_instance_runs_one_writer_per_domain_and_retries_crashed_runs(mesh):
    prepare_dagster_home(mesh)
    config = yaml.safe_load((mesh.dagster_home / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    (limit,) = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert (limit["key"], limit["limit"]) == ("mesh/domain", 1)
    assert (
        config["run_retries"]["enabled"]
        and not config["run_retries"]["retry_on_asset_or_op_failure"]
    )
    assert config["run_monitoring"]["enabled"]
    instance = dg.DagsterInstance.from_config(str(mesh.dagster_home))
    assert instance.global_op_concurrency_default_limit == 1  # Dagster reads it as intended


@pytest.mark.e2e
def test_a_killed_build_is_marked_failed_and_its_pool_released(mesh_copy):
    root = mesh_copy.root
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}
    log = root / "build.log"
    build = subprocess.Popen(
        [MESH, "--root", str(root), "build", "--domain", "logistics", "--scale", "0.01"],
        cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    instance = None
    try:
        deadline = time.monotonic() + 300
        run = None
        while time.monotonic() < deadline and run is None:
            time.sleep(1)
            # the build has set up its instance (storage schemas) before it names the domain:
            # opening the instance here any earlier races that set-up
            if "[1/1] logistics" in log.read_text():
                instance = instance or dg.DagsterInstance.from_config(str(mesh_copy.dagster_home))
                started = instance.get_run_records(
                    filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
                )
                run = started[0].dagster_run if started else None
            assert build.poll() is None, f"the build ended first: {log.read_text()[-3000:]}"
        assert run is not None, "no run started within 300 s"
        assert reap_expired_runs(instance) == []  # its process is alive: left alone
        time.sleep(3)  # let it claim the pool and do some work
    finally:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    assert [r.run_id for r in reap_expired_runs(instance)] == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    info = instance.event_log_storage.get_concurrency_info("mesh_domain_logistics")
    assert [s for s in info.claimed_slots if s.run_id == run.run_id] == []
    assert reap_expired_runs(instance) == []  # once
    failure = [
        e
        for e in instance.all_logs(run.run_id)
        if e.dagster_event is not None and e.dagster_event.event_type_value == "PIPELINE_FAILURE"
    ]
    assert failure and "process" in failure[-1].dagster_event.message
