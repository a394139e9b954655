"""What happens when a domain's dbt assets materialise.

    stage inputs -> dbt build (domain DuckDB) -> write-audit-publish products -> report

1. Products the domain consumes (mesh-input sources) are copied from their producers' current
   Iceberg snapshots into the domain's DuckDB, pinning one snapshot for the whole run.
2. ``dbt build`` runs models and tests in the domain's own DuckDB (contracts stop a model before
   it is built; tests run after).
3. Each product dbt built is written to an audit branch of its Iceberg table, and main is
   fast-forwarded to it only if none of the product's blocking checks failed. DuckDB allows one
   writer process, so this waits until dbt has exited; materialisations are reported after
   publication, so "materialised" in Dagster means "published in Iceberg".
4. If any model, check or publication failed, the run fails naming each one; the products that
   passed stay published, the others keep their previous snapshot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster_dbt import DbtCliResource

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh, environment
from mesh_platform.dbt.translator import MeshDbtTranslator, consumed_products, is_product
from mesh_platform.domain import Domain
from mesh_platform.duckdb_ext import connect

if TYPE_CHECKING:
    from mesh_platform.storage.iceberg import StagedInput

# mesh_platform.storage.iceberg (pyiceberg, pyarrow, sqlalchemy: ~3 s) is imported inside the
# functions below: code locations load without it; only runs pay for it.


def stage_inputs(mesh: Mesh, domain: Domain, manifest: Mapping[str, Any]) -> list[StagedInput]:
    inputs = consumed_products(manifest)
    if not inputs:
        return []
    from mesh_platform.storage.iceberg import open_catalog, stage_input

    catalog = open_catalog(mesh)
    mesh.duckdb_path(domain.name).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(mesh.duckdb_path(domain.name), extensions=("iceberg",))
    try:
        return [
            stage_input(catalog, conn, address, schema=node["schema"], consumer=domain.name)
            for address, node in inputs
        ]
    finally:
        conn.close()
        catalog.engine.dispose()


def _run_results(invocation: Any) -> dict[str, Any]:
    try:
        return invocation.get_artifact("run_results.json")
    except FileNotFoundError:  # dbt stopped before running anything; the step fails anyway
        return {}


def _failed_nodes(run_results: Mapping[str, Any], nodes: Mapping[str, Any]) -> dict[str, str]:
    """'model x' / 'test y' -> dbt status, for every model that did not build and every test
    that failed or errored."""
    failed = {}
    for result in run_results.get("results", []):
        node = nodes.get(result.get("unique_id", ""))
        status = result.get("status", "unknown")
        if node is None:
            continue
        if node["resource_type"] == "model" and status != "success":
            failed[f"model {node['name']}"] = status
        elif node["resource_type"] == "test" and status in ("fail", "error"):
            failed[f"test {node['name']}"] = status
    return failed


def blocking_failures(
    run_results: Mapping[str, Any], nodes: Mapping[str, Any]
) -> dict[str, list[str]]:
    """model unique_id -> names of its failed blocking checks (dbt tests of severity error).

    A test failing at severity warn reports status ``warn``, never ``fail``: only errors block
    publication. A relationships test without an attached node blocks every model it reads.
    """
    blocking: dict[str, list[str]] = {}
    for result in run_results.get("results", []):
        node = nodes.get(result.get("unique_id", ""))
        if node is None or node["resource_type"] != "test":
            continue
        if result.get("status") not in ("fail", "error"):
            continue
        attached = node.get("attached_node")
        models = [attached] if attached else node.get("depends_on", {}).get("nodes", [])
        for model in models:
            blocking.setdefault(model, []).append(node["name"])
    return blocking


def publish_products(
    context: dg.AssetExecutionContext,
    mesh: Mesh,
    domain: Domain,
    built: Mapping[dg.AssetKey, Mapping[str, Any]],
    inputs: Mapping[str, int],
    blocking: Mapping[str, list[str]],
) -> tuple[dict[dg.AssetKey, dict[str, Any]], dict[str, str]]:
    """Write-audit-publish each product dbt built (key -> manifest node).

    Each product's new data is staged on an audit branch; main is fast-forwarded to it only when
    none of the product's blocking checks failed. Otherwise main is untouched (consumers keep the
    previous good snapshot) and the branch is kept for inspection. Returns the materialisation
    metadata of every published product and an error per product not published; every product
    is tried.
    """
    if not built:
        return {}, {}
    from mesh_platform.storage.iceberg import open_catalog, write_audit_publish

    catalog = open_catalog(mesh)
    published: dict[dg.AssetKey, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    conn = connect(mesh.duckdb_path(domain.name), extensions=("iceberg",))
    try:
        for key, node in built.items():
            address = ProductAddress(domain.name, node["name"])
            start = time.perf_counter()
            failed_checks = sorted(blocking.get(node["unique_id"], []))
            try:
                result = write_audit_publish(
                    catalog,
                    address,
                    conn,
                    f"{node['schema']}.{node['alias']}",
                    batch_id=context.run_id,
                    properties={
                        "mesh.run_id": context.run_id,
                        "mesh.domain": domain.name,
                        "mesh.inputs": json.dumps(inputs),
                    },
                    gate=lambda _stage, failed=failed_checks: failed,
                )
            except Exception as exc:
                errors[str(address)] = f"publication to Iceberg failed: {exc}"
                context.log.error(f"{address}: {errors[str(address)]}")
                continue
            stage, snapshot_id = result.stage, result.published_snapshot_id
            if snapshot_id is None:
                errors[str(address)] = (
                    f"not published: blocking check(s) failed: {', '.join(result.failures)}. "
                    f"Main stays at snapshot {stage.base_snapshot_id}; the rejected data is "
                    f"on branch {stage.branch}"
                )
                context.log.error(f"{address}: {errors[str(address)]}")
                continue
            seconds = time.perf_counter() - start
            note = " (batch was already published)" if stage.already_published else ""
            context.log.info(
                f"published {address}: snapshot {snapshot_id}, {stage.row_count} rows "
                f"in {seconds:.2f}s{note}"
            )
            metadata_location = catalog.load_table(address.iceberg_identifier).metadata_location
            published[key] = {
                "dagster/row_count": stage.row_count,
                "mesh/address": str(address),
                "mesh/iceberg_snapshot_id": str(snapshot_id),
                "mesh/iceberg_metadata": metadata_location,
                "mesh/publish_seconds": round(seconds, 3),
                **({"mesh/inputs": dict(inputs)} if inputs else {}),
            }
    finally:
        conn.close()
        catalog.engine.dispose()
    return published, errors


def run_domain_dbt(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    mesh: Mesh,
    domain: Domain,
    manifest: Mapping[str, Any],
    translator: MeshDbtTranslator,
) -> Iterator[Any]:
    staged = stage_inputs(mesh, domain, manifest)
    for item in staged:
        context.log.info(
            f"staged {item.address} snapshot {item.snapshot_id} ({item.row_count} rows) "
            f"as {item.relation}"
        )
    inputs = {str(s.address): s.snapshot_id for s in staged}

    # DuckDB has one writer process: buffer dbt's events, publish once dbt has exited.
    with environment(mesh.dbt_env()):  # read by the domain's profiles.yml and sources
        invocation = dbt.cli(["build"], context=context, raise_on_error=False)
    events = list(invocation.stream())

    nodes = manifest["nodes"]
    products = {translator.get_asset_key(n): n for n in nodes.values() if is_product(n)}
    output_keys = [
        context.asset_key_for_output(e.output_name) for e in events if isinstance(e, dg.Output)
    ]
    built = {key: products[key] for key in output_keys if key in products}
    run_results = _run_results(invocation)
    published, publish_errors = publish_products(
        context, mesh, domain, built, inputs, blocking_failures(run_results, nodes)
    )

    for event in events:
        if isinstance(event, dg.Output):
            key = context.asset_key_for_output(event.output_name)
            if key in products and key not in published:
                continue  # built by dbt but not published: not a materialisation
            if key in published:
                event = event.with_metadata({**event.metadata, **published[key]})
        yield event

    problems = {
        name: f"dbt status {status}" for name, status in _failed_nodes(run_results, nodes).items()
    }
    problems.update({f"product {address}": why for address, why in publish_errors.items()})
    if problems:
        listing = "\n".join(f"  - {name}: {why}" for name, why in sorted(problems.items()))
        raise dg.Failure(
            description=(
                f"domain '{domain.name}': {len(problems)} model(s), test(s) or product(s) "
                f"failed; the other products were built and published.\n{listing}"
            ),
            metadata={"failed": sorted(problems)},
        )
    if not invocation.is_successful():  # dbt failed before running any node
        raise dg.Failure(
            description=f"domain '{domain.name}': dbt build failed before building anything; "
            f"nothing was published.\n  {invocation.get_error()}",
        )
