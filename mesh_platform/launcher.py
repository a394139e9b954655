"""The run launcher of the mesh's Dagster instance: Dagster's own, plus the health of its workers.

Dagster's DefaultRunLauncher starts each run the daemon dequeues as a process of the domain's
code server, and cannot say whether that process still runs: a worker killed mid-run (OOM, a
node lost, a code server restarted) leaves its run STARTED for ever, holding its domain's one
writer. Each worker takes the run's lease when it starts (``MeshResource``,
``leases.take_lease``); :class:`MeshRunLauncher` judges it as ``mesh build`` runs are judged
(``leases.judge``), so Dagster's run monitoring (the daemon, every ``poll_interval_seconds``)
fails the run of a dead worker, its retry policy re-executes it, and the instance frees its
slots (``free_slots_after_run_end_seconds``, instance.py).
"""

from __future__ import annotations

import time

import dagster as dg

from mesh_platform.compat.dagster import CheckRunHealthResult, WorkerStatus
from mesh_platform.leases import Owner, judge, read_lease


class MeshRunLauncher(dg.DefaultRunLauncher):
    """DefaultRunLauncher whose workers' health is their run's lease."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        lease = read_lease(run.tags, run.run_id)
        if lease is None:  # between the worker's start and its first step: its own run event
            return CheckRunHealthResult(WorkerStatus.RUNNING, "its worker has no lease yet")
        verdict = judge(lease, now=time.time(), here=Owner.current())
        if verdict.expired:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the run's worker: {verdict.why}")
        return CheckRunHealthResult(WorkerStatus.RUNNING, verdict.why)
