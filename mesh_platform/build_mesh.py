"""``mesh build`` of the mesh: every selected domain prepared, loaded and built through Dagster,
producers before consumers, one run each (:func:`mesh_platform.build.build_domain`).

A domain that cannot be prepared or loaded is reported and the others are still built; a failing
domain does not stop the others; a stop (SIGINT, SIGTERM) cancels the running domain's run and
starts no other. What happens is told to a :class:`BuildReport` (the CLI renders it).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from graphlib import CycleError, TopologicalSorter
from typing import Protocol

import dagster as dg

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.keys import product_key
from mesh_platform.build import DomainOutcome, Stop, build_domain
from mesh_platform.config import Mesh
from mesh_platform.dbt.project import prepare
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import MeshError
from mesh_platform.instance import get_instance
from mesh_platform.leases import HOST_TAG, PID_TAG
from mesh_platform.pools import reap_expired_runs
from mesh_platform.workspace import check_workspace, load_location


class BuildReport(Protocol):
    """What a build tells as it goes (the CLI prints it)."""

    def loaded(self, domain: str, seconds: float) -> None: ...
    def not_loaded(self, domain: str, error: MeshError) -> None: ...
    def reaped(self, message: str) -> None: ...
    def progress(self, domain: str, message: str) -> None: ...
    def starting(self, index: int, total: int, domain: str) -> None: ...
    def never_started(self, outcome: DomainOutcome) -> None: ...
    def finished(self, outcome: DomainOutcome) -> None: ...


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


def load_domains(
    mesh: Mesh, selected: Sequence[str], report: BuildReport
) -> tuple[dict[str, dg.Definitions], list[DomainOutcome]]:
    """The Definitions of each selected domain that loads, and an outcome for each that does not.

    Every domain of the mesh is prepared before any loads: a consumer's load checks its grants
    in the producers' descriptors."""
    locations = {loc.name: loc for loc in check_workspace(mesh)}
    defs: dict[str, dg.Definitions] = {}
    outcomes: list[DomainOutcome] = []
    broken: dict[str, MeshError] = {}
    for name in dict.fromkeys([*list_domain_names(mesh), *selected]):
        try:
            prepare(mesh, load_domain(mesh, name))
        except MeshError as exc:
            broken[name] = exc
    for name in selected:
        start = time.perf_counter()
        try:
            if name in broken:
                raise broken[name]
            defs[name] = load_location(mesh, locations[name])
        except MeshError as exc:
            report.not_loaded(name, exc)
            outcomes.append(DomainOutcome(name, False, 0.0, "-", error=str(exc)))
            continue
        report.loaded(name, time.perf_counter() - start)
    return defs, outcomes


def check_refreshed(
    defs: Mapping[str, dg.Definitions], refreshed: Sequence[ProductAddress]
) -> None:
    """Each product a full refresh names exists in its (loaded) domain: checked before any
    domain builds, so a mistyped --product does not surface after others were built."""
    for address in refreshed:
        if address.domain not in defs:
            continue  # not loaded: reported already
        keys = defs[address.domain].resolve_asset_graph().get_all_asset_keys()
        if product_key(address) not in keys:
            raise MeshError(
                f"--product {address}: domain {address.domain} has no such product",
                fix=f"list its products with `mesh products --domain {address.domain}`",
            )


def build_mesh(
    mesh: Mesh,
    selected: Sequence[str],
    report: BuildReport,
    *,
    stop: Stop,
    refreshed: Sequence[ProductAddress] = (),
    full_refresh: bool = False,
    log_level: str = "WARNING",
) -> list[DomainOutcome]:
    """Build the ``selected`` domains in dependency order; an outcome per domain that did not
    load or whose run ran (a domain stopped before its run started has none)."""
    defs, outcomes = load_domains(mesh, selected, report)
    order = build_order(domain_dependencies(defs))
    check_refreshed(defs, refreshed)
    instance = get_instance(mesh)
    # dead runs of the domains built here are reaped (and rebuilt) when their turn comes
    for reaped in reap_expired_runs(instance, exclude=order):
        report.reaped(reaped.message)
    with stop.on_signals():
        for i, name in enumerate(order, 1):
            report.starting(i, len(order), name)
            outcome = build_domain(
                name,
                defs[name],
                instance,
                scale_factor=mesh.settings.scale_factor,
                progress=report.progress,
                log_level=log_level,
                full_refresh=full_refresh,
                products=[str(a) for a in refreshed if a.domain == name],
                stop=stop,
            )
            if outcome.stopped and outcome.run_id == "-":
                report.never_started(outcome)
                break
            report.finished(outcome)
            outcomes.append(outcome)
            if stop.requested:
                break
    return outcomes


def fail_unfinished_runs(why: str) -> str:
    """Mark FAILED the Dagster runs this process started and could not finish (a full disk
    stopped it mid-run), and free their concurrency slots. Best effort, since the disk may
    still be full: returns a sentence for the error message."""
    if "dagster" not in sys.modules or not os.environ.get("DAGSTER_HOME"):
        return ""  # this process ran no Dagster run
    failed, left = [], []
    try:
        unfinished = [
            dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
        ]  # fmt: skip
        tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
        instance = dg.DagsterInstance.get()
        records = instance.get_run_records(filters=dg.RunsFilter(statuses=unfinished, tags=tags))
    except Exception:  # the instance's storage cannot be read either
        return "; its Dagster run could not be marked failed: the next `mesh build` does it"
    for record in records:
        run = record.dagster_run
        try:
            instance.report_run_failed(run, message=f"run failed: {why}")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            failed.append(run.run_id)
        except Exception:
            left.append(run.run_id)
    note = f"; run {', '.join(failed)} marked failed" if failed else ""
    if left:
        note += (
            f"; run {', '.join(left)} could not be marked failed (no space to write it): the "
            "next `mesh build` does it"
        )
    return note
