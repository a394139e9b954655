"""``mesh build`` of one domain: one Dagster run of its whole asset graph (or of the products a
full refresh names), recorded in the persistent instance (the UI shows it). Assets of different
code locations cannot share one Dagster run; :mod:`mesh_platform.build_mesh` runs the domains in
dependency order.

A run owns its domain by a lease that dies with its process (:mod:`mesh_platform.leases`): before
a domain's run starts, what holds the domain for a dead run is reaped, and while a live run holds
it the build waits here, saying for what, and stops on SIGINT/SIGTERM. Inside the run, a thread
renews the lease; dbt runs guarded, so it dies with this process
(:func:`mesh_platform.dbt.isolation.guarded_dbt_executable`).

Dagster's own wait for a pool slot (1.13: ``inner_plan_execution_iterator`` in
``dagster/_core/execution/plan/execute_plan.py``) is a loop that never sleeps:
``ActiveExecution.sleep_til_ready`` sleeps only a positive interval, and
``InstanceConcurrencyContext.interval_to_next_pending_claim_check`` returns ``min([0, ...])``,
never positive (dagster-io/dagster PR 20367, closed unmerged). Nor does it look at interrupts:
``capture_interrupts`` (``dagster/_utils/interrupts.py``, entered by
``ExecuteRunWithPlanIterable``) maps SIGTERM to SIGINT and only records them, to be raised when
the next step starts. A run waiting there spins at full CPU and ignores Ctrl-C and SIGTERM for
as long as the slot is held: for ever if its holder died. :func:`_sleep_til_ready` replaces that
one method: it sleeps, and stops the run (canceled) on an interrupt or a stop of the build; a
thread of the run reaps an expired holder meanwhile and says what the run waits for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import dagster as dg
from dagster import DagsterEventType, DagsterExecutionInterruptedError

from mesh_platform.build_log import failure_message, with_build_console
from mesh_platform.compat.dagster import (
    ActiveExecution,
    ErrorSource,
    pop_captured_interrupt,
)
from mesh_platform.dbt.lockdown import DBT_PARENT_ENV
from mesh_platform.definitions import build_job_name, dbt_op_name, raw_landing_op_name
from mesh_platform.errors import MeshError
from mesh_platform.leases import (
    DOMAIN_TAG,
    RETRY_OF_TAG,
    Heartbeat,
    Owner,
    lease_seconds,
    lease_tags,
)
from mesh_platform.pools import inspect_domain, mark_retried, queued_in_dagster, wait_for_domain


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
    stopped: bool = False  # by SIGINT/SIGTERM (or a lost lease): the build stops here


ProgressFn = Callable[[str, str], None]


POOL_POLL_SECONDS = 0.25  # Dagster-side wait: how often a blocked claim is looked at


class Stop:
    """A request to stop the build: SIGINT or SIGTERM while :meth:`on_signals` is active (or a
    lost lease). The build's waits end on it, the domain's run is canceled, no other starts."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.signum: int | None = None
        self._arrived: int | None = None  # read end of the signal wakeup pipe
        self._signals: list[int] = []  # SIGINT/SIGTERM read from it

    def request(self, reason: str, signum: int | None = None) -> None:
        if self.reason is None:
            self.reason, self.signum = reason, signum
        self._event.set()

    def interrupted(self) -> None:
        """Dagster's handlers turned a signal into an interrupt of the run: stop, naming it."""
        signum = self.signal_arrived()
        if signum is None:
            self.request("an interrupt (SIGINT or SIGTERM)")
        else:
            self.request(signal.Signals(signum).name, signum)

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the build must stop."""
        return self._event.wait(seconds)

    def signal_arrived(self) -> int | None:
        """The last SIGINT or SIGTERM received while :meth:`on_signals` is active, whoever
        handled it (Dagster's handlers only record it, or raise in the step)."""
        if self._arrived is not None:
            try:
                data = os.read(self._arrived, 512)
            except BlockingIOError:
                data = b""
            self._signals += [b for b in data if b in (signal.SIGINT, signal.SIGTERM)]
        return self._signals[-1] if self._signals else None

    @contextlib.contextmanager
    def on_signals(self) -> Iterator[Stop]:
        """SIGINT and SIGTERM request a stop (a second one interrupts at once). While a Dagster
        run executes, Dagster's own handlers take over (see the module docstring); the signal
        wakeup pipe still tells which signal it was."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def _handler(signum: int, _frame: object) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.request(signal.Signals(signum).name, signum)

        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._arrived = read
        previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(wakeup)
            self._arrived = None
            os.close(read)
            os.close(write)


@dataclass
class _ActiveRun:
    """The run this process executes now (one at a time), for Dagster's patched pool wait."""

    instance: dg.DagsterInstance
    run_id: str
    stop: Stop
    canceled: bool = False

    def cancel(self, why: str) -> None:
        """Mark the run CANCELING, so that Dagster ends it CANCELED (not a failure)."""
        if self.canceled:
            return
        self.canceled = True
        run = self.instance.get_run_by_id(self.run_id)
        if run is not None and run.status == dg.DagsterRunStatus.STARTED:
            self.instance.report_run_canceling(run, message=why)


_ACTIVE_RUN: _ActiveRun | None = None


def _sleep_til_ready(self: ActiveExecution) -> None:
    """``ActiveExecution.sleep_til_ready`` that sleeps while a pool claim is pending, and stops
    the run on an interrupt Dagster captured (SIGINT, SIGTERM) or a stop of the build."""
    active = _ACTIVE_RUN
    interrupted = pop_captured_interrupt()
    if interrupted or (active is not None and active.stop.requested):
        if active is not None:
            active.stop.interrupted()
            active.cancel(
                "mesh build was stopped while this run waited for its domain's pool: canceled"
            )
        raise DagsterExecutionInterruptedError()
    seconds = self.sleep_interval()
    time.sleep(min(seconds, 1.0) if seconds > 0 else POOL_POLL_SECONDS)


def _bound_dagster_pool_wait() -> None:
    ActiveExecution.sleep_til_ready = _sleep_til_ready  # type: ignore[method-assign]


def domain_pools(job: dg.JobDefinition) -> list[str]:
    """The concurrency pools the steps of ``job`` claim (the domain's: mesh_domain_<d>)."""
    pools = {getattr(node.definition, "pool", None) for node in job.graph.nodes}
    return sorted(p for p in pools if p)


@contextlib.contextmanager
def _owned(
    active: _ActiveRun, domain: str, pools: Sequence[str], lease: float, say: Callable[[str], None]
) -> Iterator[None]:
    """While the run executes: its lease renewed, Dagster's pool wait bounded and reported,
    dbt started guarded against this process's death."""
    global _ACTIVE_RUN
    instance, run_id = active.instance, active.run_id
    last_report = [0.0]

    def _dagster_wait() -> None:
        if not queued_in_dagster(instance, pools, run_id):
            return
        state = inspect_domain(instance, domain, pools, run_id=run_id, retried_by=run_id)
        for item in state.reaped:
            say(item.message)
        if state.holders and time.monotonic() - last_report[0] >= 5:
            last_report[0] = time.monotonic()
            held = "; ".join(h.describe(time.time()) for h in state.holders)
            say(f"waiting in Dagster's queue of {', '.join(pools)}, held by {held} (Ctrl-C stops)")

    def _lost(status: str) -> None:
        active.stop.request("a lost lease")  # first: nothing below may prevent the stop
        os.kill(os.getpid(), signal.SIGINT)  # Dagster's handler interrupts the step
        say(
            f"run {run_id} lost its lease (marked {status}: it could not renew it for "
            f"{lease:g}s); another build may hold the domain now: stopping"
        )

    _bound_dagster_pool_wait()
    previous = os.environ.get(DBT_PARENT_ENV)
    os.environ[DBT_PARENT_ENV] = str(os.getpid())
    _ACTIVE_RUN = active
    try:
        with Heartbeat(instance, run_id, lease, on_tick=_dagster_wait, on_lost=_lost, on_error=say):
            yield
    finally:
        _ACTIVE_RUN = None
        if previous is None:
            os.environ.pop(DBT_PARENT_ENV, None)
        else:
            os.environ[DBT_PARENT_ENV] = previous


def _product_selection(
    domain: str, defs: dg.Definitions, products: Sequence[str]
) -> set[dg.AssetKey]:
    """The domain's assets that build ``products``: each product and everything upstream of it
    in the domain (with the rest of any multi-asset that cannot run in part)."""
    graph = defs.resolve_asset_graph()
    own = graph.materializable_asset_keys
    keys = [dg.AssetKey(address.split(".")) for address in products]
    if unknown := [a for a, k in zip(products, keys, strict=True) if k not in own]:
        known = sorted(".".join(k.path) for k in own if len(k.path) == 2 and k.path[0] == domain)
        raise MeshError(
            f"domain '{domain}' has no product {', '.join(unknown)}",
            fix=f"name one of its products: {', '.join(known)}",
        )
    selection = dg.AssetSelection.assets(*keys).upstream().required_multi_asset_neighbors()
    return {k for k in selection.resolve(graph) if k in own}


def build_domain(
    domain: str,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    scale_factor: float | None = None,
    progress: ProgressFn | None = None,
    log_level: str = "WARNING",
    full_refresh: bool = False,
    products: Sequence[str] = (),
    stop: Stop | None = None,
) -> DomainOutcome:
    """One Dagster run materialising every asset of ``domain``, recorded in ``instance``.
    ``full_refresh``: rebuilt from nothing (dbt --full-refresh, every partition republished);
    ``products`` (addresses): only those and what they are built from in the domain.

    First the domain's pool is made free of dead runs, and waited for while a live run holds
    it; ``stop`` ends that wait and cancels the run. The runs reaped there (their process
    died) are rebuilt by this run: it records them (``mesh/retry_of``), and they it."""
    job = with_build_console(defs.resolve_job_def(build_job_name(domain)))  # see build_log
    run_id = str(uuid.uuid4())
    selection = _product_selection(domain, defs, products) if products else None
    run_config = _run_config(
        domain, job, selection, log_level=log_level, scale_factor=scale_factor,
        full_refresh=full_refresh,
    )  # fmt: skip

    stop = stop or Stop()

    def say(message: str) -> None:
        if progress is not None:
            progress(domain, message)

    pools = domain_pools(job)
    start = time.perf_counter()
    reaped = wait_for_domain(instance, domain, pools, run_id=run_id, report=say, wait=stop.wait)
    if reaped is None:
        return DomainOutcome(
            domain, False, time.perf_counter() - start, "-", stopped=True,
            error=f"stopped by {stop.reason} while waiting for the domain: its run never started",
        )  # fmt: skip
    retry_of = [r.run_id for r in reaped]
    mark_retried(instance, retry_of, run_id)
    active = _ActiveRun(instance, run_id, stop)

    def _listen(record) -> None:
        event = record.dagster_event
        if event is None:
            return
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            say(f"materialized {event.asset_key.to_user_string()}")
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            say(f"step {event.step_key} failed")
            # interrupted, or failed on the way out (dbt slow to stop after its SIGINT)
            interrupt = event.step_failure_data.error_source == ErrorSource.INTERRUPT
            if interrupt or stop.signal_arrived() is not None:
                stop.interrupted()
                active.cancel(f"mesh build was stopped during step {event.step_key}: canceled")

    instance.add_event_listener(run_id, _listen)
    lease = lease_seconds()
    tags = {
        DOMAIN_TAG: domain,
        "mesh/trigger": "mesh build",
        # who runs it, and its lease: a run whose process died is reaped (mesh_platform.leases)
        **lease_tags(Owner.current(), now=time.time(), seconds=lease, run_id=run_id),
    }
    if retry_of:
        tags[RETRY_OF_TAG] = ",".join(retry_of)
    with _owned(active, domain, pools, lease, say):
        result = job.execute_in_process(
            instance=instance,
            run_id=run_id,
            run_config=run_config,
            asset_selection=sorted(selection, key=lambda k: k.path) if selection else None,
            raise_on_error=False,
            tags=tags,
        )
    seconds = time.perf_counter() - start
    return _domain_outcome(domain, defs, instance, run_id, result, selection, stop, seconds)


def _run_config(
    domain: str,
    job: dg.JobDefinition,
    selection: set[dg.AssetKey] | None,
    *,
    log_level: str,
    scale_factor: float | None,
    full_refresh: bool,
) -> dict:
    """The run config of a domain's build run: its log level, the scale factor of the raw
    landing and dbt's full refresh, for the ops the run executes."""
    run_config: dict = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    raw_op = raw_landing_op_name(domain)
    ops = (job.get_subset(asset_selection=selection) if selection else job).graph.node_dict
    if scale_factor is not None and raw_op in ops:
        run_config.setdefault("ops", {})[raw_op] = {"config": {"scale_factor": scale_factor}}
    if full_refresh and dbt_op_name(domain) in ops:
        run_config.setdefault("ops", {})[dbt_op_name(domain)] = {"config": {"full_refresh": True}}
    return run_config


def _domain_outcome(
    domain: str,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_id: str,
    result: dg.ExecuteInProcessResult,
    selection: set[dg.AssetKey] | None,
    stop: Stop,
    seconds: float,
) -> DomainOutcome:
    """What a domain's finished run built: each asset's status and rows, its errors."""
    if not stop.requested and stop.signal_arrived() is not None:
        stop.interrupted()  # recorded by Dagster after the last step began: no later domain
    materialized: dict[str, int | None] = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        rows = mat.metadata.get("dagster/row_count")
        materialized[mat.asset_key.to_user_string()] = rows.value if rows is not None else None
    errors = [
        # A dg.Failure or a MeshError raised on purpose is the message itself (build_log)
        failure_message(e.step_failure_data.error)
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_FAILURE
        and e.step_failure_data.error
        and e.step_failure_data.error_source != ErrorSource.INTERRUPT
    ]
    if stop.requested:
        status = instance.get_run_by_id(run_id).status.value.lower()
        errors.append(f"stopped by {stop.reason}: run {run_id} {status}")
    assets = []
    keys = selection or defs.resolve_asset_graph().materializable_asset_keys
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
        stopped=stop.requested,
    )
