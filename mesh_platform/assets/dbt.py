"""What happens when a domain's dbt assets materialise.

    stage inputs -> dbt run (domain DuckDB) -> other tests -> write-audit-publish products
    (each product's dbt tests in its gate) -> report

1. Products the domain consumes (mesh-input sources) are copied into the domain's DuckDB from
   one consistent cut of each producer (:mod:`mesh_platform.products.cuts`: the snapshots one
   producer run left), pinned for the whole run.
2. ``dbt run`` builds the models in the domain's own DuckDB (contracts stop a model before it
   is built), with the profile the platform writes, whatever the code
   location's dbt resource says: its connection is confined to the domain's own folders
   (:mod:`mesh_platform.dbt.lockdown`), so a model cannot read, write or ATTACH another
   domain's files even if the load-time checks missed it.
3. The dbt tests run in the platform, from the SQL dbt compiled (:mod:`mesh_platform.assets.
   dbt_checks`): those of other models first, on the models as built; a product's own tests in
   its gate. dbt's per-test overhead is gone (``dbt build`` ran each test as its own query: at
   SF 1 the tests doubled the dbt step) and a product's tests check exactly what is published.
   Each product dbt built is written to an audit branch of its Iceberg table, and main is
   fast-forwarded to it only if none of the product's blocking checks failed. DuckDB allows one
   writer process, so this waits until dbt has exited; materialisations are reported after
   publication, so "materialised" in Dagster means "published in Iceberg".
4. The step writes its cut marker: what it left on main and what it did not publish.
5. If any model, check or publication failed, the run fails naming each one; the products that
   passed stay published, the others keep their previous snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource

from mesh_platform.assets.checks import check_result
from mesh_platform.assets.dbt_checks import plan_tests, run_domain_tests, test_results
from mesh_platform.assets.keys import product_key
from mesh_platform.assets.reporting import (
    REPORTED,
    acknowledge,
    check_results,
    materialization_metadata,
    record_step_cut,
    sla_figures,
)
from mesh_platform.assets.translator import MeshDbtTranslator
from mesh_platform.config import Mesh, environment, private_umask
from mesh_platform.dbt.inputs import stage_inputs
from mesh_platform.dbt.lockdown import guarded_dbt_executable, warm_config
from mesh_platform.dbt.project import RUN_TARGET, platform_profile
from mesh_platform.domain import Domain
from mesh_platform.duckdb_ext import connect
from mesh_platform.products import incremental
from mesh_platform.products.dbt_tests import DbtTest
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.gate import CONTRACT_CHECK, prewarm
from mesh_platform.products.lifecycle import publication_stops, replaced_in_place
from mesh_platform.products.outcomes import CheckOutcome
from mesh_platform.products.publish import Publication, publish_in_run
from mesh_platform.products.registry import load_directory
from mesh_platform.sla.deprecation import notify_safely
from mesh_platform.sla.events import INFRASTRUCTURE_FAILURE, GateEvent
from mesh_platform.sla.record import record_safely
from mesh_platform.storage.catalog import open_catalog

# pyiceberg and SQLAlchemy (~3 s) are imported inside the storage functions that use them: code
# locations load without them; only runs pay for them (tests/test_architecture.py checks it).


@contextlib.contextmanager
def isolated_dbt(dbt: DbtCliResource, mesh: Mesh, domain: Domain) -> Iterator[DbtCliResource]:
    """``dbt`` (its project and executable) on the platform's isolated profile of ``domain``,
    with the mesh's environment; the profile is removed when the block exits, so the dbt
    process must have finished by then."""
    with platform_profile(mesh, domain) as profiles_dir, environment(mesh.dbt_env()):
        yield DbtCliResource(
            project_dir=dbt.project_dir,
            global_config_flags=dbt.global_config_flags,
            profiles_dir=str(profiles_dir),
            profile=domain.name,
            target=RUN_TARGET,
            # dbt dies with the process that runs it (a killed `mesh build` or run worker
            # leaves no dbt writing the domain's DuckDB): dbt.lockdown's guard
            dbt_executable=guarded_dbt_executable(
                dbt.dbt_executable,
                mesh.state_dir / "bin",
                warm=warm_config() if mesh.settings.dbt_warm else None,
            ),
            state_path=dbt.state_path,
        )


def _run_results(invocation: Any) -> dict[str, Any]:
    try:
        return invocation.get_artifact("run_results.json")
    except FileNotFoundError:  # dbt stopped before running anything; the step fails anyway
        return {}


def _failed_models(run_results: Mapping[str, Any]) -> dict[str, str]:
    """model unique_id -> dbt status, for every model that did not build."""
    return {
        r["unique_id"]: r.get("status", "unknown")
        for r in run_results.get("results", [])
        if r.get("unique_id", "").startswith("model.") and r.get("status") != "success"
    }


def _model_errors(run_results: Mapping[str, Any]) -> dict[str, str]:
    """model unique_id -> dbt's message, for every model that failed to build (a model skipped
    because something upstream failed has no contract verdict)."""
    return {
        r["unique_id"]: "the model did not build: " + (r.get("message") or "error").strip()
        for r in run_results.get("results", [])
        if r.get("unique_id", "").startswith("model.") and r.get("status") == "error"
    }


def _still_published(
    context: Any, mesh: Mesh, built: Mapping[str, tuple[ProductDescriptor, str]]
) -> tuple[dict[str, tuple[ProductDescriptor, str]], dict[str, Publication]]:
    """(``built`` without the products retired or past their sunset, each logged with why;
    the refused publications of new majors that would replace an undeclared old one)."""
    stops = publication_stops(mesh, [d for d, _ in built.values()])
    for descriptor, _ in built.values():
        if why := stops.get(str(descriptor.address)):
            context.log.warning(f"{descriptor.address}: not published any more: {why}")
    built = {uid: b for uid, b in built.items() if str(b[0].address) not in stops}
    majors = [d for d, _ in built.values() if d.body.major > 1]  # a new major may be a bump
    declared = load_directory(mesh, refresh=False).descriptors if majors else {}
    bumps = replaced_in_place(mesh, majors, declared)
    refused = {
        uid: Publication(d, error=f"not published: {bumps[str(d.address)]}")
        for uid, (d, _) in built.items()
        if str(d.address) in bumps
    }
    for publication in refused.values():  # `mesh build` prints it from the step's failure
        context.log.error(
            f"{publication.descriptor.address}: {publication.error}", extra={REPORTED: True}
        )
    return {uid: b for uid, b in built.items() if uid not in refused}, refused


def _log_publication(context: Any, publication: Publication) -> None:
    address, descriptor = publication.descriptor.address, publication.descriptor
    if publication.published:
        stage = publication.stage
        if stage is None:
            note, rows = " (no partition changed)", 0
        else:
            rows = stage.row_count
            note = " (batch was already published)" if stage.already_published else ""
        if publication.partitions:
            note += f"; partitions: {publication.partitions}"
        context.log.info(
            f"published {address} v{descriptor.body.version}: snapshot "
            f"{publication.snapshot_id}, {rows} rows written in "
            f"{publication.seconds:.2f}s{note}"
        )
    else:  # `mesh build` prints it from the step's failure (mesh_platform.build)
        context.log.error(f"{address}: {publication.error}", extra={REPORTED: True})


def publish_products(
    context: dg.AssetExecutionContext,
    mesh: Mesh,
    domain: Domain,
    built: Mapping[str, tuple[ProductDescriptor, str]],
    inputs: Mapping[str, int],
    blocking: Mapping[str, list[str]],
    *,
    full_refresh: bool = False,
    tests: Mapping[str, tuple[str, list[DbtTest]]] | None = None,
) -> dict[str, Publication]:
    """Write-audit-publish each product dbt built (unique_id -> descriptor and DuckDB relation)
    through the gate. ``tests``: unique_id -> the model's relation as dbt renders it and its
    dbt tests, run in the gate on the staged snapshot; ``blocking``: unique_id -> the failed
    blocking tests run before (``dbt test <name>``).

    Each product's new data is staged on an audit branch; main is fast-forwarded to it only when
    every blocking check passed (its dbt tests, and the gate: schema, expectations, volume, and
    registered checks). Otherwise main is untouched (consumers keep the previous good snapshot)
    and the branch is kept for inspection. Every product is tried.
    """
    built, publications = _still_published(context, mesh, built)
    if not built and not publications:
        return {}
    try:
        catalog = open_catalog(mesh)
    except Exception as exc:  # nothing can be published: say so for each product, on record
        for unique_id, (descriptor, _) in built.items():
            publications[unique_id] = Publication(
                descriptor, error=f"{INFRASTRUCTURE_FAILURE}: {exc}"
            )
        events = [GateEvent.of(p, context.run_id) for p in publications.values()]
        record_safely(mesh, events, context.log)
        return publications
    conn = connect(mesh.domain_duckdb(domain.name))
    try:
        for unique_id, (descriptor, relation) in built.items():
            dbt_relation, product_tests = (tests or {}).get(unique_id, ("", []))
            try:
                publication = publish_in_run(
                    mesh,
                    catalog,
                    descriptor,
                    conn,
                    relation,
                    run_id=context.run_id,
                    inputs=inputs,
                    failed_elsewhere=sorted(set(blocking.get(unique_id, []))),
                    full_refresh=full_refresh,
                    tests=product_tests,
                    dbt_relation=dbt_relation,
                )
            except Exception as exc:
                publication = Publication(descriptor, error=f"{INFRASTRUCTURE_FAILURE}: {exc}")
            publications[unique_id] = publication
            _log_publication(context, publication)
        record_safely(
            mesh, [GateEvent.of(p, context.run_id) for p in publications.values()], context.log,
            catalog,
        )  # fmt: skip
        notify_safely(mesh, context.log, domain=domain.name, run_id=context.run_id)
    finally:
        conn.close()
        catalog.engine.dispose()
    return publications


def full_refresh_reason(
    mesh: Mesh, domain: Domain, *, requested: bool
) -> tuple[str | None, dict[str, Any] | None]:
    """Why this run is a dbt ``--full-refresh`` (None: an incremental run), and the domain's
    raw landing as it is now (None: the domain lands nothing): incremental models are rebuilt
    from their sources when asked, or when the landing changed since they were last built (a
    row removed from a source then leaves the products; products.incremental)."""
    landing = None
    if domain.spec.raw is not None:
        landing = incremental.landing_state(mesh.raw_dir(domain.name))
    if requested:
        return "requested (mesh build --full-refresh)", landing
    if landing is None or not mesh.duckdb_path(domain.name).exists():
        return None, landing  # nothing landed, or a first build (dbt builds everything)
    with contextlib.closing(connect(mesh.duckdb_path(domain.name))) as conn:
        return incremental.landing_change(conn, landing), landing


def record_landing_built(
    mesh: Mesh,
    domain: Domain,
    landing: dict[str, Any],
    run_results: Mapping[str, Any],
    nodes: Mapping[str, Any],
) -> None:
    """Record ``landing`` as the one the incremental models were built from, once dbt built
    every one of them (a subset run or a failed model leaves the record, so the next run
    rebuilds them from the landing)."""
    succeeded = {
        r.get("unique_id") for r in run_results.get("results", []) if r.get("status") == "success"
    }
    models = [
        uid
        for uid, node in nodes.items()
        if node.get("resource_type") == "model"
        and node.get("config", {}).get("materialized") == "incremental"
    ]
    if all(uid in succeeded for uid in models):
        with contextlib.closing(connect(mesh.domain_duckdb(domain.name))) as conn:
            incremental.record_landing(conn, landing)


def _stage_and_log(context: Any, mesh: Mesh, domain: Domain, manifest: Mapping[str, Any]) -> dict:
    """Stage the domain's inputs (as its grants allow) and log each; address -> snapshot id."""
    staged = stage_inputs(mesh, domain.name, manifest)
    for item in staged:
        limits = (f", masked: {', '.join(item.masked)}" if item.masked else "") + (
            f", rows where {item.row_filter}" if item.row_filter else ""
        )
        context.log.info(
            f"staged {item.address} snapshot {item.snapshot_id} ({item.row_count} rows{limits}) "
            f"as {item.relation}, as the domain's grant allows; "
            + (
                f"from the consistent cut of run {item.cut}"
                if item.cut
                else "at its main (its producer records no cut)"
            )
        )
    return {str(s.address): s.snapshot_id for s in staged}


def _materialisations(
    context: Any,
    events: list[Any],
    product_ids: Mapping[Any, str],
    publications: Mapping[str, Publication],
    inputs: Mapping[str, int],
    figures: Mapping[str, dict],
) -> Iterator[Any]:
    """dbt's events, with a product's output only if it was published (with its metadata)."""
    published = {product_key(p.descriptor.address): p for p in publications.values() if p.published}
    for event in events:
        if isinstance(event, dg.Output):
            key = context.asset_key_for_output(event.output_name)
            if key in product_ids and key not in published:
                continue  # built by dbt but not published: not a materialisation
            if key in published:
                event = event.with_metadata(
                    {
                        **event.metadata,
                        **materialization_metadata(published[key], inputs),
                        **figures.get(str(published[key].descriptor.address), {}),
                    }
                )
        yield event


def _contract_checks(
    context: Any,
    translator: MeshDbtTranslator,
    run_results: Mapping[str, Any],
    built: Mapping[str, Any],
) -> Iterator[dg.AssetCheckResult]:
    """The contract check: the model built under its enforced contract (or why not)."""
    model_errors = _model_errors(run_results)
    selected = context.selected_asset_check_keys
    for uid, descriptor in translator.descriptors.items():
        key = dg.AssetCheckKey(product_key(descriptor.address), CONTRACT_CHECK)
        if key not in selected or (uid not in model_errors and uid not in built):
            continue
        error = model_errors.get(uid)
        yield check_result(
            descriptor,
            CONTRACT_CHECK,
            CheckOutcome(
                error is None,
                "built under the enforced contract" if error is None else error[:2000],
            ),
        )


def _fail_on_problems(
    domain: Domain,
    invocation: Any,
    run_results: Mapping[str, Any],
    nodes: Mapping[str, Any],
    tested: Mapping[str, CheckOutcome],
    publications: Mapping[str, Publication],
    cut_error: str | None,
) -> None:
    """Fail the step naming every model, test or product that failed (the others published).
    ``tested``: the outcomes of the tests run before publication (a product's own tests are
    in its publication's message)."""
    problems = {
        f"model {nodes[uid]['name'] if uid in nodes else uid}": f"dbt status {status}"
        for uid, status in _failed_models(run_results).items()
    }
    problems.update({f"test {n}": o.description for n, o in tested.items() if o.blocks})
    problems.update(
        {
            str(p.descriptor.address): p.error  # the gate's message (products/blocks.py)
            for p in publications.values()
            if not p.published and p.error
        }
    )
    if cut_error:
        problems["cut marker"] = cut_error
    if problems:
        listing = "\n".join(f"  - {name}: {why}" for name, why in sorted(problems.items()))
        raise dg.Failure(
            description=(
                f"domain '{domain.name}': {len(problems)} model(s), test(s) or product(s) "
                f"failed (the others were built and published):\n{listing}"
            ),
            metadata={"failed": sorted(problems)},
        )
    if not invocation.is_successful():  # dbt failed before running any node
        raise dg.Failure(
            description=f"domain '{domain.name}': dbt build failed before building anything; "
            f"nothing was published.\n  {invocation.get_error()}",
        )


def run_domain_dbt(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    mesh: Mesh,
    domain: Domain,
    manifest: Mapping[str, Any],
    translator: MeshDbtTranslator,
    *,
    full_refresh: bool = False,
) -> Iterator[Any]:
    prewarm(translator.descriptors.values())  # imports overlap the dbt subprocess
    # The domain's DuckDB holds clear personal data (before masking): this process, and dbt
    # started from it, create files owner-only, whoever launched the run.
    private_umask()
    acknowledge(context, mesh, domain.name)
    inputs = _stage_and_log(context, mesh, domain, manifest)

    refresh, landing = full_refresh_reason(mesh, domain, requested=full_refresh)
    if refresh:
        context.log.info(f"dbt build --full-refresh: {refresh}")
    # DuckDB has one writer process: buffer dbt's events, publish once dbt has exited.
    # `dbt run`, not `dbt build`: the platform runs the tests itself (assets.dbt_checks)
    with isolated_dbt(dbt, mesh, domain) as isolated:  # env: read by the sources' locations
        args = ["run", "--full-refresh"] if refresh else ["run"]
        invocation = isolated.cli(args, context=context, raise_on_error=False)
        events = list(invocation.stream())

    nodes = manifest["nodes"]
    product_ids = {product_key(d.address): uid for uid, d in translator.descriptors.items()}
    output_keys = [
        context.asset_key_for_output(e.output_name) for e in events if isinstance(e, dg.Output)
    ]
    built = {
        uid: (translator.descriptors[uid], f"{nodes[uid]['schema']}.{nodes[uid]['alias']}")
        for key in output_keys
        if (uid := product_ids.get(key))
    }
    run_results = _run_results(invocation)
    if landing is not None:
        record_landing_built(mesh, domain, landing, run_results, nodes)
    plan = plan_tests(manifest, translator, context.selected_asset_check_keys, built,
                      _failed_models(run_results))  # fmt: skip
    tested, blocking = run_domain_tests(mesh, domain, manifest, plan)
    publications = publish_products(
        context, mesh, domain, built, inputs, blocking, full_refresh=full_refresh,
        tests={uid: (nodes[uid]["relation_name"], t) for uid, t in plan.of_product.items()},
    )  # fmt: skip
    cut_error = record_step_cut(context, mesh, domain.name, "dbt", publications.values())
    figures = sla_figures(context, mesh, [str(p.descriptor.address) for p in publications.values()])
    yield from _materialisations(context, events, product_ids, publications, inputs, figures)
    yield from _contract_checks(context, translator, run_results, built)
    for publication in publications.values():
        yield from check_results(context, publication)
        yield from test_results(context, plan, publication.tests)
    yield from test_results(context, plan, tested)
    _fail_on_problems(domain, invocation, run_results, nodes, tested, publications, cut_error)
