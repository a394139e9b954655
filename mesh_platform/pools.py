"""The pool of a domain: which runs hold it, reaping the dead ones, waiting for it.

Every domain's assets share the Dagster pool ``mesh_domain_<d>`` (limit 1: one writer of the
domain's DuckDB). :func:`inspect_domain` sorts what holds a domain's pool (or may soon: runs of
the domain in progress) into live holders and dead ones by their leases
(:mod:`mesh_platform.leases`); a dead one is reaped (:func:`reap_run`: the run is failed with a
message naming it, its host, pid and last heartbeat, and its slots and queued claims are freed).
Runs without a lease (launched by the Dagster daemon) are left to Dagster's run monitoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from mesh_platform.leases import (
    ACTIVE_STATUSES,
    DOMAIN_TAG,
    REAPED_BY_TAG,
    RETRIED_BY_TAG,
    WILL_RETRY_TAG,
    Lease,
    Owner,
    Verdict,
    describe_time,
    judge,
    read_lease,
)


@dataclass(frozen=True)
class Holder:
    """A live run that holds a domain (or will: in progress)."""

    run_id: str
    status: str
    lease: Lease | None  # None: launched by the Dagster daemon

    def describe(self, now: float) -> str:
        if self.lease is None:
            return (
                f"run {self.run_id} ({self.status}, launched by Dagster: its run monitoring "
                "fails it if its worker died; the daemon runs with `mesh ui`)"
            )
        owner, beat = self.lease.owner, self.lease.heartbeat
        age = f"{max(now - beat, 0):.0f}s ago" if beat is not None else "never"
        return (
            f"run {self.run_id} (host {owner.host}, pid {owner.pid}, heartbeat {age}, "
            f"lease {self.lease.seconds:g}s)"
        )


@dataclass(frozen=True)
class Reaped:
    run_id: str
    domain: str
    message: str


@dataclass
class DomainState:
    holders: list[Holder]
    reaped: list[Reaped]


def _claims(instance: dg.DagsterInstance, pools: Sequence[str]) -> tuple[set[str], set[str]]:
    """(runs holding or queued in ``pools``, runs whose claim is queued and not yet assigned)."""
    holding, queued = set(), set()
    if not pools:
        return holding, queued
    infos = instance.event_log_storage.get_concurrency_infos(list(pools))
    for info in infos.values():
        holding.update(slot.run_id for slot in info.claimed_slots if slot.run_id)
        for step in info.pending_steps:
            holding.add(step.run_id)
            if step.assigned_timestamp is None:
                queued.add(step.run_id)
    return holding, queued


def inspect_domain(
    instance: dg.DagsterInstance,
    domain: str,
    pools: Sequence[str],
    *,
    run_id: str | None = None,
    retried_by: str | None = None,
    now: Callable[[], float] = time.time,
) -> DomainState:
    """What holds ``domain``: the runs holding or queued in its ``pools``, and its runs in
    progress, except ``run_id``. Dead `mesh build` runs are reaped (``retried_by``: the run
    that rebuilds the domain); slots left by finished or deleted runs are freed."""
    here = Owner.current()
    in_pools, _ = _claims(instance, pools)
    records = {
        r.dagster_run.run_id: r
        for r in instance.get_run_records(
            filters=dg.RunsFilter(statuses=list(ACTIVE_STATUSES), tags={DOMAIN_TAG: domain})
        )
    }
    missing = in_pools - records.keys()
    if missing:
        records.update(
            (r.dagster_run.run_id, r)
            for r in instance.get_run_records(filters=dg.RunsFilter(run_ids=sorted(missing)))
        )
    holders, reaped = [], []
    for other in sorted((in_pools | records.keys()) - {run_id}):
        record = records.get(other)
        if record is None or record.dagster_run.status not in ACTIVE_STATUSES:
            # a slot Dagster did not free (its run finished, or was deleted): nobody holds it
            instance.event_log_storage.free_concurrency_slots_for_run(other)
            continue
        run = record.dagster_run
        lease = read_lease(run.tags, run.run_id)
        if lease is None:
            if run.status != dg.DagsterRunStatus.NOT_STARTED or other in in_pools:
                holders.append(Holder(other, run.status.value, None))
            continue  # queued by the daemon: its run queue waits for ours
        started = record.start_time or record.create_timestamp.timestamp()
        verdict = judge(lease, now=now(), here=here, started_at=started)
        if verdict.expired:
            reaped.append(reap_run(instance, run, lease, verdict, retried_by=retried_by))
        else:
            holders.append(Holder(other, run.status.value, lease))
    return DomainState(holders, reaped)


def reap_run(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    lease: Lease,
    verdict: Verdict,
    *,
    retried_by: str | None = None,
) -> Reaped:
    """Fail (or, if it was being canceled, cancel) a `mesh build` run whose owner is dead, and
    free every slot and queued claim it has, so its domain's pool is usable again."""
    domain = run.tags.get(DOMAIN_TAG, "<domain>")
    owner = lease.owner
    launched = run.remote_job_origin is not None  # by the daemon: it can re-execute it
    then = (
        f"mesh build run {retried_by} rebuilds the domain"
        if retried_by
        else "the Dagster daemon retries it (its retry policy)"
        if launched
        else f"re-run the domain: mesh build --domain {domain}"
    )
    message = (
        f"run {run.run_id} of domain {domain} (host {owner.host}, pid {owner.pid}, last "
        f"heartbeat {describe_time(lease.heartbeat)}) marked {{status}} by the platform: "
        f"{verdict.why}; "
        f"its concurrency slots are freed; {then}"
    )
    current = instance.get_run_by_id(run.run_id)
    if current is not None and current.status in ACTIVE_STATUSES:
        here = Owner.current()
        tags = {REAPED_BY_TAG: f"{here.host} pid {here.pid}"}  # first: its owner, if alive, sees it
        if retried_by:
            tags[RETRIED_BY_TAG] = retried_by
        instance.add_run_tags(run.run_id, tags)
        if current.status == dg.DagsterRunStatus.CANCELING:
            message = message.format(status="canceled")
            instance.report_run_canceled(current, message=message)
        else:
            message = message.format(status="failed")
            instance.report_run_failed(current, message=message)
        if not launched:  # Dagster's daemon cannot re-execute it (no code-location origin)
            instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
    else:
        message = message.format(status="finished")
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return Reaped(run.run_id, domain, message)


def reap_expired_runs(
    instance: dg.DagsterInstance,
    domain: str | None = None,
    *,
    exclude: Collection[str] = (),
    now: Callable[[], float] = time.time,
) -> list[Reaped]:
    """Reap every `mesh build` run (of ``domain``, or of all but ``exclude``) whose lease
    expired: what `mesh build` does first for the domains it does not build (it reaps the
    others' before it rebuilds them), and each domain's SLA monitor sensor on its ticks."""
    here = Owner.current()
    tags = {DOMAIN_TAG: domain} if domain is not None else None
    reaped = []
    for record in instance.get_run_records(
        filters=dg.RunsFilter(statuses=list(ACTIVE_STATUSES), tags=tags)
    ):
        run = record.dagster_run
        lease = read_lease(run.tags, run.run_id)
        if lease is None or run.tags.get(DOMAIN_TAG) in exclude:
            continue
        started = record.start_time or record.create_timestamp.timestamp()
        verdict = judge(lease, now=now(), here=here, started_at=started)
        if verdict.expired:
            reaped.append(reap_run(instance, run, lease, verdict))
    return reaped


def queued_in_dagster(instance: dg.DagsterInstance, pools: Sequence[str], run_id: str) -> bool:
    """Whether ``run_id`` has a claim queued behind another run in one of ``pools``."""
    return run_id in _claims(instance, pools)[1]


def wait_for_domain(
    instance: dg.DagsterInstance,
    domain: str,
    pools: Sequence[str],
    *,
    run_id: str,
    report: Callable[[str], None],
    wait: Callable[[float], bool],
    poll: float = 1.0,
    report_every: float = 5.0,
    now: Callable[[], float] = time.time,
) -> list[Reaped] | None:
    """Before ``run_id`` starts: reap what holds ``domain`` for a dead run, and while a live run
    holds it, wait, reporting what for every ``report_every`` seconds. ``wait(seconds)`` sleeps
    and returns True when the build must stop (then this returns None, having started nothing).
    Returns the runs it reaped."""
    reaped: list[Reaped] = []
    last_report = None
    while True:
        state = inspect_domain(instance, domain, pools, run_id=run_id, retried_by=run_id, now=now)
        for item in state.reaped:
            report(item.message)
        reaped += state.reaped
        if not state.holders:
            return reaped
        clock = time.monotonic()
        if last_report is None or clock - last_report >= report_every:
            last_report = clock
            held = "; ".join(h.describe(now()) for h in state.holders)
            report(f"waiting for domain {domain}, held by {held} (Ctrl-C stops)")
        if wait(poll):
            return None


def mark_retried(instance: dg.DagsterInstance, run_ids: Iterable[str], retried_by: str) -> None:
    """Record on reaped runs which `mesh build` run rebuilt their domain."""
    for run_id in run_ids:
        instance.add_run_tags(run_id, {RETRIED_BY_TAG: retried_by, WILL_RETRY_TAG: "false"})
