"""Publish one product through the gate: the path shared by dbt-built and Python-built products.

    schema check -> stage on audit branch -> gate checks on the staged data -> fast-forward main

The caller hands over the rows as a DuckDB relation (dbt products: the model in the domain's
DuckDB; Python products: the returned Arrow table, registered in an in-memory DuckDB) and the
names of checks that already failed outside the gate (dbt tests). The result carries every
check outcome, so the caller can report each one as a Dagster asset check result.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import quote_ident
from mesh_platform.governance.data import masked_relation  # also registers the data policies
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.gate import (
    SCHEMA_CHECK,
    CheckOutcome,
    GateContext,
    run_gate,
)

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table

    from mesh_platform.config import Mesh
    from mesh_platform.storage.iceberg import AuditStage


@dataclass
class Publication:
    descriptor: ProductDescriptor
    outcomes: dict[str, CheckOutcome] = field(default_factory=dict)
    snapshot_id: int | None = None  # main's new head; None: not published
    stage: AuditStage | None = None
    seconds: float = 0.0
    error: str | None = None  # why it was not published
    partitions: str | None = None  # partitioned products: what this run replaced
    failed_elsewhere: tuple[str, ...] = ()  # blocking checks run outside the gate (dbt tests)

    @property
    def published(self) -> bool:
        return self.snapshot_id is not None

    @property
    def failed_checks(self) -> list[str]:
        """Every blocking check that failed: the gate's and those run before it (dbt tests)."""
        return sorted(
            {name for name, o in self.outcomes.items() if o.blocks} | set(self.failed_elsewhere)
        )


def schema_compatibility(table: Table | None, new_schema: pa.Schema) -> CheckOutcome:
    """Compare the new rows' schema with the published table's (Iceberg's promotion rules)."""
    from pyiceberg.exceptions import ResolveError
    from pyiceberg.io.pyarrow import _pyarrow_to_schema_without_ids
    from pyiceberg.schema import promote

    if table is None:
        return CheckOutcome(True, "first publication: the table is created with this schema")
    new = {f.name: f.field_type for f in _pyarrow_to_schema_without_ids(new_schema).fields}
    old = {f.name: f.field_type for f in table.schema().fields}
    dropped = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    changed, widened = [], []
    for name in sorted(set(old) & set(new)):
        if old[name] == new[name]:
            continue
        try:
            promote(old[name], new[name])
            widened.append(f"{name}: {old[name]} -> {new[name]}")
        except ResolveError:
            changed.append(f"{name}: {old[name]} -> {new[name]}")
    metadata: dict[str, Any] = {
        "added": added,
        "dropped": dropped,
        "type_changes": changed,
        "widened": widened,
    }
    if dropped or changed:
        parts = []
        if dropped:
            parts.append(f"dropped or renamed column(s) {', '.join(dropped)}")
        if changed:
            parts.append(f"incompatible type change(s) {'; '.join(changed)}")
        return CheckOutcome(
            False,
            f"breaking change: {' and '.join(parts)}. Keep the columns, or publish the change as "
            "a new major version (a new dbt model version / descriptor version N+1.0.0) while "
            "this one is deprecated",
            metadata,
        )
    what = []
    if added:
        what.append(f"adds {', '.join(added)}")
    if widened:
        what.append(f"widens {'; '.join(widened)}")
    return CheckOutcome(True, "compatible" + (f": {', '.join(what)}" if what else ""), metadata)


def publish_product(
    catalog: SqlCatalog,
    descriptor: ProductDescriptor,
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    batch_id: str,
    run_id: str,
    properties: dict[str, str] | None = None,
    failed_elsewhere: list[str] | tuple[str, ...] = (),
    salt: str | None = None,
    exemptions: Mapping[str, str] | None = None,
) -> Publication:
    """Write-audit-publish ``relation`` as ``descriptor``'s product; never raises for a failed
    check (the Publication says what failed), raises only for storage errors."""
    from mesh_platform.storage.iceberg import (
        Partitioning,
        is_published,
        load_product_table,
        write_audit_publish,
    )

    start = time.perf_counter()
    address = descriptor.address
    publication = Publication(descriptor, failed_elsewhere=tuple(failed_elsewhere))
    # Personal data is masked before anything is staged: the audit branch never holds it clear.
    relation = masked_relation(conn, descriptor, relation, salt)
    schema_name, table_name = relation.split(".")
    source = f"{quote_ident(schema_name)}.{quote_ident(table_name)}"
    new_schema = conn.execute(f"SELECT * FROM {source} LIMIT 0").arrow().schema
    table = load_product_table(catalog, address)
    schema = schema_compatibility(table, new_schema)
    publication.outcomes[SCHEMA_CHECK] = schema
    if schema.blocks:
        publication.error = f"not published: {SCHEMA_CHECK} failed: {schema.description}"
        publication.seconds = time.perf_counter() - start
        return publication

    partition_plan = None
    if (part := descriptor.body.partition_by) is not None:
        from mesh_platform.products import incremental

        partition_plan = incremental.plan(
            conn, str(address), relation, Partitioning(part.column, part.granularity), table
        )
        publication.partitions = partition_plan.reason
        if partition_plan.unchanged:  # nothing to stage: main already holds these rows
            publication.seconds = time.perf_counter() - start
            if failed_elsewhere:  # unchanged data that fails a check is not re-announced
                publication.error = (
                    f"not published: blocking check(s) failed: {', '.join(failed_elsewhere)} "
                    "(no partition changed; main keeps its snapshot)"
                )
                return publication
            publication.snapshot_id = table.current_snapshot().snapshot_id
            return publication

    def gate(stage: AuditStage) -> list[str]:
        table = catalog.load_table(address.iceberg_identifier)
        outcomes = run_gate(GateContext(descriptor, stage, table))
        for name, why in (exemptions or {}).items():  # governance: waived or set to warn
            if (o := outcomes.get(name)) is not None and not o.passed:
                outcomes[name] = CheckOutcome(False, f"{o.description} [{why}]", o.metadata, False)
        publication.outcomes.update(outcomes)
        return sorted(failed_elsewhere) + [
            name for name, o in publication.outcomes.items() if o.blocks
        ]

    result = write_audit_publish(
        catalog,
        address,
        conn,
        relation,
        batch_id=batch_id,
        properties={
            **(properties or {}),
            "mesh.run_id": run_id,
            "mesh.product_version": descriptor.body.version,
            "mesh.domain": descriptor.domain,
        },
        table_properties=descriptor.iceberg_properties(),
        partitioning=partition_plan.partitioning if partition_plan else None,
        gate=gate,
    )
    publication.stage = result.stage
    publication.snapshot_id = result.published_snapshot_id
    if partition_plan is not None and publication.published:
        # The fingerprints describe main only if this batch was staged on the main the plan
        # was made from. Otherwise (a concurrent writer published in between, perhaps while
        # this one waited for the product's lock) the other partitions hold another writer's
        # rows: record nothing, so the next run republishes everything.
        planned = table.current_snapshot() if table is not None else None
        base = result.stage.base_snapshot_id
        if is_published(planned):
            same_base = planned is not None and base == planned.snapshot_id
        else:  # planned on an unpublished table: staged on its (empty) initial snapshot?
            staged_on = catalog.load_table(address.iceberg_identifier).snapshot_by_id(base or 0)
            same_base = not is_published(staged_on)
        if same_base and result.attempts == 1:
            incremental.record(
                conn, str(address), partition_plan.fingerprints, publication.snapshot_id
            )
    publication.seconds = time.perf_counter() - start
    if not publication.published:
        publication.error = (
            f"not published: blocking check(s) failed: {', '.join(result.failures)}. "
            f"Main stays at snapshot {result.stage.base_snapshot_id}; the rejected data is on "
            f"branch {result.stage.branch}"
        )
    return publication


def publish_in_run(
    mesh: Mesh,
    catalog: SqlCatalog,
    descriptor: ProductDescriptor,
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    run_id: str,
    inputs: Mapping[str, int],
    failed_elsewhere: list[str] | tuple[str, ...] = (),
) -> Publication:
    """publish_product as a Dagster run does it: the run id is the batch id, the input
    snapshots are recorded, the mesh's salt masks personal data, and the council's waivers and
    severities apply to the data policies."""
    import json

    from mesh_platform.governance.evaluate import gate_exemptions

    return publish_product(
        catalog,
        descriptor,
        conn,
        relation,
        batch_id=run_id,
        run_id=run_id,
        properties={"mesh.inputs": json.dumps(dict(inputs))},
        failed_elsewhere=failed_elsewhere,
        salt=mesh.pii_salt(),
        exemptions=gate_exemptions(mesh, str(descriptor.address)),
    )
