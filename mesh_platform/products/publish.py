"""Publish one product through the gate: the path shared by dbt-built and Python-built products.

    schema check -> stage on audit branch -> gate checks on the staged data -> fast-forward main

The caller hands over the rows as a DuckDB relation (dbt products: the model in the domain's
DuckDB; Python products: the returned Arrow table, registered in an in-memory DuckDB) and the
names of checks that already failed outside the gate (dbt tests). The result carries every
check outcome, so the caller can report each one as a Dagster asset check result.

A batch blocked by a personal-data policy (gate.is_personal_data_policy) is quarantined at
once: its audit branch dropped, its data files and manifests deleted from the warehouse. What
was found (column, kind, rows: never a value) is in the failure message, the check's metadata
and, for runs, one JSON line of ``<state>/quarantine/records.jsonl`` (owner-only).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Imported for its effect too: the governance package registers its data policies (pii_detection,
# pii_masking_verified) as gate checks; the gate refuses to pass a batch without them.
import mesh_platform.governance  # noqa: F401
from mesh_platform.access.masking import masked_relation
from mesh_platform.addressing import quote_ident
from mesh_platform.config import PRIVATE_FILE_MODE, make_private_dir
from mesh_platform.governance.evaluate import gate_exemptions
from mesh_platform.products import incremental
from mesh_platform.products.blocks import block_message
from mesh_platform.products.dbt_tests import (
    DbtTest,
    could_not_run,
    run_on_staged,
    run_tests,
    staged_files,
)
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.gate import (
    SCHEMA_CHECK,
    GateContext,
    is_personal_data_policy,
    run_gate,
    schema_compatibility,
)
from mesh_platform.products.outcomes import CheckOutcome
from mesh_platform.storage.catalog import load_product_table
from mesh_platform.storage.health import DEFAULT_REJECTED_RETENTION
from mesh_platform.storage.metadata import CLASSIFICATION_PROPERTY, is_published
from mesh_platform.storage.partitioning import Partitioning
from mesh_platform.storage.wap import write_audit_publish

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table

    from mesh_platform.config import Mesh
    from mesh_platform.storage.quarantine import Quarantine
    from mesh_platform.storage.wap import AuditStage


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
    quarantine: Quarantine | None = None  # blocked for personal data: removed from the warehouse
    tests: dict[str, CheckOutcome] = field(default_factory=dict)  # dbt's tests, by dbt's name

    @property
    def published(self) -> bool:
        return self.snapshot_id is not None

    @property
    def personal_data_failures(self) -> list[str]:
        """The blocking checks that failed and are personal-data policies."""
        return sorted(
            name
            for name, outcome in self.outcomes.items()
            if outcome.blocks and is_personal_data_policy(name)
        )

    def findings(self) -> list[dict[str, Any]]:
        """What the failed personal-data policies found, one item per column and kind: check,
        column, kind, rows (None: not counted, e.g. a column with no masking rule). Only names
        and counts from the checks' metadata, never their free text: it can never hold a
        value. A check that reports neither hits nor problems gives one item with no column."""
        kinds = self.descriptor.pii_columns
        found: list[dict[str, Any]] = []
        for name in self.personal_data_failures:
            metadata = self.outcomes[name].metadata
            before = len(found)
            hits = metadata.get("hits")  # pii_detection: {column: {kind: rows}}
            for column, by_kind in sorted(hits.items()) if isinstance(hits, Mapping) else ():
                for kind, rows in sorted(by_kind.items()) if isinstance(by_kind, Mapping) else ():
                    found.append({"check": name, "column": str(column), "kind": str(kind),
                                  "rows": int(rows)})  # fmt: skip
            problems = metadata.get("problems")  # pii_masking_verified: {column: why}
            for column, why in sorted(problems.items()) if isinstance(problems, Mapping) else ():
                counted = re.match(r"(\d+) row", str(why))
                found.append({"check": name, "column": str(column), "kind": kinds.get(column),
                              "rows": int(counted[1]) if counted else None})  # fmt: skip
            if len(found) == before:
                found.append({"check": name, "column": None, "kind": None, "rows": None})
        return found

    @property
    def all_outcomes(self) -> dict[str, CheckOutcome]:
        """The gate's outcomes after dbt's tests (``dbt test <name>``): what a message lists."""
        tests = {f"dbt test {name}": o for name, o in sorted(self.tests.items())}
        return {**tests, **self.outcomes}

    @property
    def failed_checks(self) -> list[str]:
        """Every blocking check that failed: the gate's, dbt's tests, and those run before the
        gate (``failed_elsewhere``: tests of the models the product is built from)."""
        return sorted(
            {name for name, o in self.all_outcomes.items() if o.blocks} | set(self.failed_elsewhere)
        )


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
    full_refresh: bool = False,
    rejected_retention: timedelta = DEFAULT_REJECTED_RETENTION,
    tests: tuple[DbtTest, ...] | list[DbtTest] = (),
    dbt_relation: str = "",
) -> Publication:
    """Write-audit-publish ``relation`` as ``descriptor``'s product; never raises for a failed
    check (the Publication says what failed), raises only for storage errors. ``full_refresh``:
    a partitioned product republishes every partition (its recorded fingerprints ignored).
    ``tests``: the model's dbt tests, run in the gate on the staged snapshot, where the SQL
    dbt compiled reads ``dbt_relation`` (products.dbt_tests)."""
    start = time.perf_counter()
    address = descriptor.address
    publication = Publication(descriptor, failed_elsewhere=tuple(failed_elsewhere))
    # Personal data is masked before anything is staged: the audit branch never holds it clear.
    relation = masked_relation(conn, descriptor, relation, salt)
    schema_name, table_name = relation.split(".")
    source = f"{quote_ident(schema_name)}.{quote_ident(table_name)}"
    new_schema = conn.execute(f"SELECT * FROM {source} LIMIT 0").arrow().schema
    table = load_product_table(catalog, address)
    schema = schema_compatibility(table, new_schema, source_file=descriptor.source_file)
    publication.outcomes[SCHEMA_CHECK] = schema
    if schema.blocks:
        publication.error = block_message(
            publication.outcomes, state="refused before anything was staged: main keeps its "
            "snapshot and schema",
        )  # fmt: skip
        publication.seconds = time.perf_counter() - start
        return publication

    partition_plan = None
    if descriptor.body.partition_by is not None:
        partition_plan = _plan_partitions(conn, descriptor, relation, table, full_refresh)
        publication.partitions = partition_plan.reason
        if partition_plan.unchanged:  # nothing to stage: main already holds these rows
            _keep_unchanged(conn, publication, tests, table)
            publication.seconds = time.perf_counter() - start
            return publication

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
            CLASSIFICATION_PROPERTY: json.dumps(descriptor.classification_record(), sort_keys=True),
        },
        table_properties=descriptor.iceberg_properties(),
        spec=descriptor.table_spec(),
        partitioning=partition_plan.partitioning if partition_plan else None,
        gate=_gate(catalog, publication, exemptions, conn, tests, dbt_relation),
        quarantine_if=lambda failures: any(is_personal_data_policy(n) for n in failures),
        retention=rejected_retention,
    )
    publication.stage = result.stage
    publication.snapshot_id = result.published_snapshot_id
    publication.quarantine = result.quarantine
    if partition_plan is not None and publication.published:
        _record_fingerprints(catalog, conn, address, table, partition_plan, result)
    publication.seconds = time.perf_counter() - start
    if not publication.published:
        first = table is None or not is_published(table.current_snapshot())
        _explain_block(publication, result, first=first)
    return publication


def _keep_unchanged(
    conn: duckdb.DuckDBPyConnection,
    publication: Publication,
    tests: tuple[DbtTest, ...] | list[DbtTest],
    table: Table,
) -> None:
    """No partition changed: main stays as it is, announced again unless a blocking check
    fails. The tests still run, on the model as built (a parent it references may change);
    unchanged data that fails is not re-announced."""
    publication.tests = run_tests(conn, tests)
    if publication.failed_checks:
        publication.error = block_message(
            publication.all_outcomes, publication.failed_elsewhere,
            state="no partition changed: main keeps its snapshot",
        )  # fmt: skip
    else:
        publication.snapshot_id = table.current_snapshot().snapshot_id


def _gate(
    catalog: SqlCatalog,
    publication: Publication,
    exemptions: Mapping[str, str] | None,
    conn: duckdb.DuckDBPyConnection,
    tests: tuple[DbtTest, ...] | list[DbtTest],
    dbt_relation: str,
) -> Callable[[AuditStage], list[str]]:
    """The audit of a staged batch: every gate check, exemptions applied, and the model's dbt
    tests, all on the staged snapshot; the blocking failures (with those of the tests run
    before the gate, ``publication.failed_elsewhere``)."""
    descriptor = publication.descriptor

    def gate(stage: AuditStage) -> list[str]:
        table = catalog.load_table(descriptor.address.iceberg_identifier)
        outcomes = run_gate(GateContext(descriptor, stage, table))
        for name, why in (exemptions or {}).items():  # governance: waived or set to warn
            if (o := outcomes.get(name)) is not None and not o.passed:
                outcomes[name] = CheckOutcome(False, f"{o.description} [{why}]", o.metadata, False)
        publication.outcomes.update(outcomes)
        if tests:
            masked = [c.name for c in descriptor.columns if c.masked_on_publication]
            try:
                files = staged_files(stage, table)
            except Exception as exc:  # each test then blocks, saying why (fail closed)
                why = f"the staged snapshot's files could not be listed ({exc})"
                publication.tests = {t.name: could_not_run(t, why, "staged") for t in tests}
            else:
                publication.tests = run_on_staged(
                    conn, tests, relation=dbt_relation, files=files, masked=masked,
                    snapshot_id=stage.snapshot_id,
                )  # fmt: skip
        return sorted(publication.failed_elsewhere) + [
            name for name, o in publication.all_outcomes.items() if o.blocks
        ]

    return gate


def _plan_partitions(
    conn: duckdb.DuckDBPyConnection,
    descriptor: ProductDescriptor,
    relation: str,
    table: Any,
    full_refresh: bool,
) -> Any:
    """Which partitions of a ``partition_by`` product changed (products/incremental.py)."""
    part = descriptor.body.partition_by
    return incremental.plan(
        conn,
        str(descriptor.address),
        relation,
        Partitioning(part.column, part.granularity),
        table,
        full_refresh=full_refresh,
    )


def _record_fingerprints(
    catalog: SqlCatalog,
    conn: duckdb.DuckDBPyConnection,
    address: Any,
    table: Any,
    partition_plan: Any,
    result: Any,
) -> None:
    """Record the published partitions' fingerprints, only if they describe main.

    They do only if this batch was staged on the main the plan was made from. Otherwise (a
    concurrent writer published in between, perhaps while this one waited for the product's
    lock) the other partitions hold another writer's rows: record nothing, so the next run
    republishes everything."""
    planned = table.current_snapshot() if table is not None else None
    base = result.stage.base_snapshot_id
    if is_published(planned):
        same_base = planned is not None and base == planned.snapshot_id
    else:  # planned on an unpublished table: staged on its (empty) initial snapshot?
        staged_on = catalog.load_table(address.iceberg_identifier).snapshot_by_id(base or 0)
        same_base = not is_published(staged_on)
    if same_base and result.attempts == 1:
        incremental.record(
            conn, str(address), partition_plan.fingerprints, result.published_snapshot_id
        )


def _explain_block(publication: Publication, result: Any, *, first: bool) -> None:
    """Say why the batch was not published (products/blocks.py), where main stays and where the
    data went."""
    if (quarantine := result.quarantine) is None:
        aftermath = f"the rejected data is on branch {result.stage.branch}"
    else:
        aftermath = (
            f"the batch held personal data and was quarantined at once: branch "
            f"{quarantine.branch} dropped, its {len(quarantine.deleted_files)} data and "
            "manifest file(s) deleted"
        )
    publication.error = block_message(
        publication.all_outcomes, publication.failed_elsewhere,
        state="the product stays unpublished (its first batch)" if first
        else f"main stays at snapshot {result.stage.base_snapshot_id}",
        aftermath=aftermath,
    )  # fmt: skip
    for name in publication.personal_data_failures if quarantine is not None else ():
        publication.outcomes[name].metadata.update(  # shown with the Dagster check
            {"quarantined": True, "deleted_files": len(quarantine.deleted_files)}
        )


def record_quarantine(path: Path, publication: Publication, run_id: str) -> None:
    """Append a quarantined batch's record to ``path`` (JSON lines, created 0600): product,
    batch and run, main's snapshot, what the policies found (column, kind, rows; never a value)
    and what was removed.

    An incident record for whoever answers for personal data, kept beside the query audit log
    and owner-only like it, rather than in the SLA history: that table is readable by every
    principal, keeps the first 500 characters of the failure message only, and measures
    service levels, not incidents. (It still records the blocked run and its message.)"""
    quarantine, stage = publication.quarantine, publication.stage
    assert quarantine is not None and stage is not None
    entry = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "product": str(publication.descriptor.address),
        "version": publication.descriptor.body.version,
        "batch_id": stage.batch_id,
        "run_id": run_id,
        "main_snapshot_id": stage.base_snapshot_id,
        "failed_checks": publication.failed_checks,
        "findings": publication.findings(),
        "expired_snapshots": list(quarantine.snapshot_ids),
        "deleted_files": list(quarantine.deleted_files),
    }
    data = (json.dumps(entry, sort_keys=True) + "\n").encode()
    make_private_dir(path.parent)
    # One O_APPEND write per record: concurrent runs interleave whole lines.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


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
    full_refresh: bool = False,
    tests: tuple[DbtTest, ...] | list[DbtTest] = (),
    dbt_relation: str = "",
) -> Publication:
    """publish_product as a Dagster run does it: the run id is the batch id, the input
    snapshots are recorded, the mesh's salt masks personal data, and the council's waivers and
    severities apply to the data policies."""

    publication = publish_product(
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
        full_refresh=full_refresh,
        rejected_retention=mesh.settings.tables.rejected_retention,
        tests=tests,
        dbt_relation=dbt_relation,
    )
    if publication.quarantine is not None:
        try:
            record_quarantine(mesh.quarantine_records, publication, run_id)
            publication.error = f"{publication.error} (recorded in {mesh.quarantine_records})"
        except OSError as exc:  # the batch is gone either way: say that its record is missing
            publication.error = (
                f"{publication.error} (its quarantine record could not be written to "
                f"{mesh.quarantine_records}: {exc.strerror or exc})"
            )
    return publication
