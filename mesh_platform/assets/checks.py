"""The gate's checks as Dagster asset checks: declared from a descriptor (so the UI lists them
before the first run) and reported from the gate's outcomes (:mod:`mesh_platform.products.gate`)."""

from __future__ import annotations

import dagster as dg

# Imported for its effect: the governance package registers its data policies (pii_detection,
# pii_masking_verified) as gate checks, so every product declares them wherever it is loaded.
import mesh_platform.governance  # noqa: F401
from mesh_platform.assets.keys import product_key
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.gate import CONTRACT_CHECK, SCHEMA_CHECK, gate_checks
from mesh_platform.products.outcomes import CheckOutcome


def check_specs(descriptor: ProductDescriptor, *, contract: bool = True) -> list[dg.AssetCheckSpec]:
    """The Dagster asset checks the gate evaluates for ``descriptor``'s product."""
    key = product_key(descriptor.address)
    specs = [
        dg.AssetCheckSpec(
            SCHEMA_CHECK,
            asset=key,
            description="New schema is compatible with the published one (added columns "
            "evolve it; dropped, renamed or narrowed columns need a new major version).",
            blocking=True,
        )
    ]
    if contract:  # dbt's enforced contract, or a Python product's declared columns
        specs.append(
            dg.AssetCheckSpec(
                CONTRACT_CHECK,
                asset=key,
                description="The rows match the declared columns and types (dbt's enforced "
                "contract; a Python product's declared columns).",
                blocking=True,
            )
        )
    specs += [
        dg.AssetCheckSpec(
            c.name, asset=key, description=c.description, blocking=c.blocking(descriptor)
        )
        for c in gate_checks(descriptor)
    ]
    return specs


def check_result(
    descriptor: ProductDescriptor, name: str, outcome: CheckOutcome
) -> dg.AssetCheckResult:
    return outcome_result(product_key(descriptor.address), name, outcome)


def outcome_result(key: dg.AssetKey, name: str, outcome: CheckOutcome) -> dg.AssetCheckResult:
    """``outcome`` as the result of the check ``name`` of the asset ``key``: a failed
    non-blocking check (a dbt test of severity warn) is a warning."""
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
        description=(
            f"{outcome.description}. Fix: {outcome.fix}"
            if outcome.fix and not outcome.passed
            else outcome.description or None
        ),
        metadata=outcome.metadata,
    )
