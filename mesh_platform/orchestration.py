"""How domains run without anyone pressing a button.

- A source-aligned domain runs its pipeline on the schedule in its ``domain.yaml``.
- A consuming domain runs when a product it consumes publishes: its sensor watches the
  producers' assets (other code locations, same Dagster instance) and requests a run of the
  domain's job for each new materialisation. The platform reports a materialisation only when a
  batch passed its gate and was published (a blocked batch reports none), and the sensor also
  requires the published snapshot id on it: a failed audit never starts a downstream run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import dagster as dg

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.acknowledge import acknowledge_committed
from mesh_platform.assets.keys import product_key
from mesh_platform.assets.specs import SNAPSHOT_METADATA
from mesh_platform.config import load_mesh
from mesh_platform.domain import Domain
from mesh_platform.pools import reap_expired_runs
from mesh_platform.sla.deprecation import notify_safely
from mesh_platform.sla.freshness import evaluate_freshness, recorded, to_record
from mesh_platform.sla.record import record_safely


def domain_schedule(domain: Domain, job_name: str) -> dg.ScheduleDefinition | None:
    schedule = domain.spec.schedule
    if schedule is None:
        return None
    return dg.ScheduleDefinition(
        name=f"{domain.name}_schedule",
        job_name=job_name,
        cron_schedule=schedule.cron,
        execution_timezone=schedule.timezone,
        description=f"Runs the {domain.name} domain's pipeline (declared in its domain.yaml).",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def inputs_sensor(
    domain: Domain,
    job_name: str,
    inputs: Sequence[ProductAddress],
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition | None:
    """Run ``job_name`` when any of ``inputs`` publishes a new snapshot."""
    if not inputs:
        return None
    keys = sorted({product_key(a) for a in inputs}, key=lambda k: k.to_user_string())

    @dg.sensor(
        name=f"{domain.name}_on_inputs_published",
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        description=f"Runs the {domain.name} domain when a product it consumes publishes: "
        + ", ".join(k.to_user_string() for k in keys),
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        latest: dict[str, int] = {}
        published: list[str] = []
        for key in keys:
            records = context.instance.fetch_materializations(key, limit=1).records
            if not records:
                continue
            record = records[0]
            name = key.to_user_string()
            latest[name] = record.storage_id
            materialization = record.asset_materialization
            if (  # newer than the last one seen; a product never seen before: its first one
                record.storage_id > seen.get(name, 0)
                and materialization is not None
                and SNAPSHOT_METADATA in materialization.metadata
            ):
                snapshot = materialization.metadata[SNAPSHOT_METADATA].value
                published.append(f"{name}@{snapshot}")
        cursor = json.dumps({**seen, **latest}, sort_keys=True)
        if not context.cursor:  # first tick: remember where the producers are, run nothing
            return dg.SensorResult(cursor=cursor)
        if not published:
            return dg.SensorResult(skip_reason="no input published a new snapshot", cursor=cursor)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=",".join(sorted(published)),
                    tags={"mesh/domain": domain.name, "mesh/trigger": ",".join(published)},
                )
            ],
            cursor=cursor,
        )

    return _sensor


def sla_monitor(domain: Domain, minimum_interval_seconds: int = 300) -> dg.SensorDefinition:
    """Evaluate the freshness of the domain's products; record it and alert on changes; fail
    the domain's runs whose `mesh build` process died (so its pool is released)."""

    @dg.sensor(
        name=f"{domain.name}_sla_monitor",
        minimum_interval_seconds=minimum_interval_seconds,
        description=f"Evaluates the freshness SLA of the {domain.name} domain's products, records "
        "each evaluation in mesh.sla_history and alerts owners and consumers on a breach or a "
        "recovery.",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _monitor(context: dg.SensorEvaluationContext) -> dg.SkipReason:

        mesh = load_mesh(domain.code_dir.parent.parent)
        reaped = [r.run_id for r in reap_expired_runs(context.instance, domain.name)]
        # Batches a dead run committed and never reported: their materialisation (consumers'
        # sensors fire on it), history row and cut, exactly once (assets.acknowledge).
        late = acknowledge_committed(context.instance, mesh, domain.name, context.log)
        events = evaluate_freshness(mesh, domain.name)
        changed = to_record(mesh, domain.name, events)  # the history gets the changes
        if record_safely(mesh, events, context.log, record_only=changed):
            recorded(mesh, domain.name, changed)
        notify_safely(mesh, context.log, domain=domain.name)
        stale = [e.address for e in events if e.status == "stale"]
        unknown = [e.address for e in events if e.infrastructure_error]
        return dg.SkipReason(
            f"{len(events)} product(s) evaluated ({len(changed)} recorded); stale: "
            f"{', '.join(stale) or 'none'}"
            + (
                f"; freshness unknown (infrastructure error): {', '.join(unknown)}"
                if unknown
                else ""
            )
            + (f"; runs of dead processes marked failed: {', '.join(reaped)}" if reaped else "")
            + (f"; late batches acknowledged: {len(late)}" if late else "")
        )

    return _monitor
