"""``mesh build``: materialise every domain through Dagster, in dependency order across domains.

Assets of different code locations cannot share one Dagster run, so each domain is one run of
its whole asset graph, recorded in the persistent instance (the UI shows it). Domains are ordered
by the cross-domain dependencies their assets declare; a failing domain does not stop the others.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.utils import make_new_run_id

from mesh_platform.errors import MeshError


def domain_dependencies(defs_by_domain: Mapping[str, dg.Definitions]) -> dict[str, set[str]]:
    """domain -> other domains whose assets its assets depend on."""
    deps: dict[str, set[str]] = {}
    for domain, defs in defs_by_domain.items():
        graph = defs.resolve_asset_graph()
        upstream: set[str] = set()
        for key in graph.get_all_asset_keys():
            for parent in graph.get(key).parent_keys:
                owner = parent.path[0]
                if owner != domain:
                    upstream.add(owner)
        deps[domain] = upstream
    return deps


def build_order(deps: Mapping[str, set[str]]) -> list[str]:
    """Producers before consumers; ties in name order. Raises on a cycle between domains."""
    sorter = TopologicalSorter({d: set(sorted(u & deps.keys())) for d, u in sorted(deps.items())})
    try:
        return list(sorter.static_order())
    except CycleError as exc:
        raise MeshError(
            f"domains depend on each other in a cycle: {' -> '.join(exc.args[1])}",
            fix="a consumer-aligned domain may consume a producer, never the other way round; "
            "remove one of the mesh-input sources",
        ) from exc


@dataclass
class AssetOutcome:
    key: str
    status: str  # materialized | failed | not built
    rows: int | None = None


@dataclass
class DomainOutcome:
    domain: str
    success: bool
    seconds: float
    run_id: str
    assets: list[AssetOutcome] = field(default_factory=list)
    error: str | None = None


ProgressFn = Callable[[str, str], None]


ORPHAN_PID_TAG = "mesh/pid"
ORPHAN_HOST_TAG = "mesh/host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def reap_orphaned_runs(instance: dg.DagsterInstance, domain: str | None = None) -> list[str]:
    """Fail runs left STARTED by a `mesh build` process that no longer exists (killed, crashed)
    and free the concurrency slots they held, so the domain's pool is usable again. Runs of
    other hosts, or without the platform's pid tag (launched by the Dagster daemon, which
    monitors its own runs), are left alone. Returns the failed run ids."""
    host = socket.gethostname()
    reaped = []
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    )
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(ORPHAN_PID_TAG)
        if pid is None or run.tags.get(ORPHAN_HOST_TAG) != host or not pid.isdigit():
            continue
        if domain is not None and run.tags.get("mesh/domain") != domain:
            continue
        if _alive(int(pid)):
            continue
        instance.report_run_failed(
            run,
            message=f"run marked failed by the platform: its process {pid} on {host} is gone "
            "(killed or crashed); re-run the domain with `mesh build --domain "
            f"{run.tags.get('mesh/domain', '<domain>')}`",
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    return reaped


def build_domain(
    domain: str,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    scale_factor: float | None = None,
    progress: ProgressFn | None = None,
    log_level: str = "WARNING",
) -> DomainOutcome:
    """One Dagster run materialising every asset of ``domain``, recorded in ``instance``."""
    from mesh_platform.definitions import build_job_name, raw_landing_op_name

    job = defs.resolve_job_def(build_job_name(domain))
    run_id = make_new_run_id()
    run_config: dict = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    raw_op = raw_landing_op_name(domain)
    if scale_factor is not None and raw_op in job.graph.node_dict:
        run_config["ops"] = {raw_op: {"config": {"scale_factor": scale_factor}}}

    def _listen(record) -> None:
        event = record.dagster_event
        if progress is None or event is None:
            return
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            progress(domain, f"materialized {event.asset_key.to_user_string()}")
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            progress(domain, f"step {event.step_key} failed")

    instance.add_event_listener(run_id, _listen)
    start = time.perf_counter()
    result = job.execute_in_process(
        instance=instance,
        run_id=run_id,
        run_config=run_config,
        raise_on_error=False,
        tags={
            "mesh/domain": domain,
            "mesh/trigger": "mesh build",
            # who runs it: a run whose process died is failed by reap_orphaned_runs
            ORPHAN_PID_TAG: str(os.getpid()),
            ORPHAN_HOST_TAG: socket.gethostname(),
        },
    )
    seconds = time.perf_counter() - start
    materialized: dict[str, int | None] = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        rows = mat.metadata.get("dagster/row_count")
        materialized[mat.asset_key.to_user_string()] = rows.value if rows is not None else None
    errors = [
        e.step_failure_data.error.message.strip()
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_FAILURE and e.step_failure_data.error
    ]
    assets = []
    keys = defs.resolve_asset_graph().materializable_asset_keys
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        name = key.to_user_string()
        if name in materialized:
            assets.append(AssetOutcome(name, "materialized", materialized[name]))
        else:
            assets.append(AssetOutcome(name, "failed" if errors else "not built"))
    return DomainOutcome(
        domain=domain,
        success=result.success,
        seconds=seconds,
        run_id=run_id,
        assets=assets,
        error="\n".join(errors) or None,
    )
