"""A domain step's dbt tests: which run in a product's gate, which before publication, and how
each is reported as the Dagster asset check dagster-dbt declared for it.

The step builds with ``dbt run``; the platform runs the tests (:mod:`mesh_platform.products.
dbt_tests`). A test of a product dbt built in this run runs in that product's gate, on its
staged snapshot. Every other selected test (of an internal model, a source, a product this run
did not build, or a test of several models) runs on the models as built in the domain's DuckDB
once dbt has exited; one that fails blocks every product built from what it tests, as
``dbt build`` did by skipping the models downstream of a failed test. As ``dbt build`` did too,
a test reading a model that failed to build in this run is skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mesh_platform.assets.checks import outcome_result
from mesh_platform.config import Mesh
from mesh_platform.domain import Domain
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.dbt_tests import DbtTest, dbt_tests, downstream, run_tests, subject
from mesh_platform.products.outcomes import CheckOutcome


@dataclass
class TestPlan:
    """The step's tests: by product (run in its gate) and the others (run before it)."""

    keys: dict[str, dg.AssetCheckKey | None]  # test name -> its asset check (None: not one)
    of_product: dict[str, list[DbtTest]] = field(default_factory=dict)  # model uid -> tests
    before: list[DbtTest] = field(default_factory=list)


def plan_tests(
    manifest: Mapping[str, Any],
    translator: Any,
    selected: Iterable[dg.AssetCheckKey],
    built: Iterable[str],
    failed_models: Iterable[str],
) -> TestPlan:
    """Which of the manifest's tests this step runs, and where. ``built``: the products dbt built
    (model unique ids); ``failed_models``: the models that did not build in this run."""
    nodes = manifest.get("nodes", {})
    selected, built, failed = set(selected), set(built), set(failed_models)
    tests = dbt_tests(manifest)
    keys: dict[str, dg.AssetCheckKey | None] = {}
    for test in tests:
        about = subject(test)
        node = nodes.get(about or "") or manifest.get("sources", {}).get(about or "")
        keys[test.name] = (
            dg.AssetCheckKey(translator.get_asset_key(node), test.name) if node else None
        )
    plan = TestPlan(keys)
    ran = built | failed
    for test in tests:
        if failed & set(test.models):
            continue  # dbt build skipped a test whose model did not build
        key = keys[test.name]
        if key is not None and key not in selected:
            continue
        if key is None and not ran & set(test.models):
            continue
        about = subject(test)
        if about in built:
            plan.of_product.setdefault(about, []).append(test)
        else:
            plan.before.append(test)
    return plan


def run_before(
    conn: Any, manifest: Mapping[str, Any], plan: TestPlan
) -> tuple[dict[str, CheckOutcome], dict[str, list[str]]]:
    """Run the tests that are not a built product's on the models in the domain's DuckDB
    (``conn``): (test name -> outcome, model uid -> the failed blocking tests that block it, as
    ``dbt test <name>``, for every model built from what a failed test tests)."""
    outcomes = run_tests(conn, plan.before)
    blocking: dict[str, list[str]] = {}
    for test in plan.before:
        if outcomes[test.name].blocks:
            tested = [subject(test)] if subject(test) else list(test.models)
            for model in downstream(manifest, tested):
                blocking.setdefault(model, []).append(f"dbt test {test.name}")
    return outcomes, blocking


def run_domain_tests(
    mesh: Mesh, domain: Domain, manifest: Mapping[str, Any], plan: TestPlan
) -> tuple[dict[str, CheckOutcome], dict[str, list[str]]]:
    """:func:`run_before` on the domain's DuckDB, once dbt has exited."""
    if not plan.before:
        return {}, {}
    with contextlib.closing(connect(mesh.domain_duckdb(domain.name), read_only=True)) as conn:
        return run_before(conn, manifest, plan)


def test_results(
    context: Any, plan: TestPlan, outcomes: Mapping[str, CheckOutcome]
) -> Iterator[dg.AssetCheckResult]:
    """The Dagster check result of each test that ran, under dagster-dbt's check key."""
    selected = context.selected_asset_check_keys
    for name, outcome in sorted(outcomes.items()):
        key = plan.keys.get(name)
        if key is not None and key in selected:
            yield outcome_result(key.asset_key, name, outcome)
