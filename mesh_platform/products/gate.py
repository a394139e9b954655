"""The publication gate: every check a product's new data must pass before main moves to it.

Each check is a Dagster asset check on the product (declared from its descriptor, so the UI
lists it before the first run) and is evaluated against exactly the data staged on the product's
audit branch. A failing blocking check keeps main where it was.

Checks shipped with the platform:

- ``schema_compatible``: the new schema against the published one. Adding a column evolves
  the Iceberg schema; dropping a column or changing a type to one Iceberg cannot promote to
  (narrowing, string -> int) is a breaking change, blocked unless the product is published as a
  new major version (a new address). Evaluated before anything is staged.
- ``expectations``: the descriptor's Great Expectations suite on the staged rows (those SQL
  states exactly in one DuckDB scan, the others by Great Expectations).
- ``volume``: the staged row count against the published snapshot's.

dbt's tests and contract are checks too (dagster-dbt declares the tests; ``contract`` is the
mesh's name for "the model built under its enforced contract").

Hook point: another module adds a check with :func:`register_gate_check`; it is declared on
every product it :meth:`GateCheck.applies` to and evaluated in the same gate. The governance
policies plug in here.

A check that declares itself a personal-data policy (``personal_data = True``) changes what
happens to a batch it blocks: instead of staying on its audit branch for inspection, the batch
is quarantined at once (its files deleted from the warehouse; products/publish.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import quote_literal
from mesh_platform.compat.pyiceberg import pyarrow_to_schema_without_ids
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.descriptor_sla import Volume
from mesh_platform.products.expectations import quiet_gx, run_suite
from mesh_platform.products.expectations_sql import sql_expectations
from mesh_platform.products.outcomes import CheckOutcome
from mesh_platform.storage import warehouse
from mesh_platform.storage.evolution import compare_schemas
from mesh_platform.storage.metadata import is_published
from mesh_platform.storage.warehouse import configure_duckdb

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.table import Table

    from mesh_platform.storage.wap import AuditStage


@dataclass
class GateContext:
    """What a check sees: the descriptor, the staged snapshot, and the published one."""

    descriptor: ProductDescriptor
    stage: AuditStage
    table: Table  # loaded after staging: holds both main and the audit branch
    _cache: dict[tuple[str, ...], pa.Table] = field(default_factory=dict)
    _duckdb: tuple[Any, str, dict[str, str]] | None = None

    @property
    def staged_rows(self) -> int:
        """Total rows of the product as it would be published."""
        snap = self.table.snapshot_by_id(self.stage.snapshot_id)
        return int((snap.summary or {}).get("total-records", self.stage.row_count))

    @property
    def published_rows(self) -> int | None:
        """Rows of main's current snapshot, None when nothing was published yet."""

        if self.stage.base_snapshot_id is None:
            return None
        snap = self.table.snapshot_by_id(self.stage.base_snapshot_id)
        if not is_published(snap):
            return None
        return int((snap.summary or {}).get("total-records", 0))

    def staged_data(self, columns: Iterable[str] | None = None) -> pa.Table:
        """The rows this batch staged (its new data files), only ``columns`` if given."""
        # heavy: pyarrow (~0.3 s), kept off the import path of light commands
        import pyarrow.parquet as pq

        key = tuple(columns) if columns is not None else ("*",)
        if key not in self._cache:
            files = [str(f) for f in self.stage.data_files]
            cols = list(columns) if columns is not None else None
            filesystem = None
            if files and warehouse.is_remote(files[0]):
                filesystem = warehouse.arrow_filesystem(self.table.io.properties)
                files = [f.split("://", 1)[1] for f in files]
            self._cache[key] = (
                pq.read_table(files, columns=cols, filesystem=filesystem)
                if files
                else self._empty(cols)
            )
        return self._cache[key]

    def staged_sql(self) -> tuple[Any, str, dict[str, str]] | None:
        """The staged files as a DuckDB relation: (connection, relation, column -> type);
        None when the batch wrote no file."""
        files = list(self.stage.data_files)
        if not files:
            return None
        if self._duckdb is None:
            conn = connect()
            configure_duckdb(conn, self.table.io.properties)  # s3:// warehouse: httpfs
            source = f"read_parquet([{', '.join(quote_literal(f) for f in files)}])"
            kinds = conn.execute(
                f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {source})"
            ).fetchall()
            self._duckdb = (conn, source, dict(kinds))
        return self._duckdb

    def _empty(self, columns: list[str] | None) -> pa.Table:
        from pyiceberg.io.pyarrow import (
            schema_to_pyarrow,  # heavy: pyiceberg (~2 s), only when Iceberg is read or written
        )

        schema = schema_to_pyarrow(self.table.schema())
        empty = schema.empty_table()
        return empty.select(columns) if columns is not None else empty


class GateCheck:
    """A check of the gate. Subclass, set ``name``/``description``, implement ``evaluate``.

    ``personal_data``: the check is a personal-data policy. A batch it blocks holds personal
    data where it must not: it is quarantined at once rather than kept for inspection.
    """

    name: str = ""
    description: str = ""
    personal_data: bool = False

    def applies(self, descriptor: ProductDescriptor) -> bool:
        return True

    def blocking(self, descriptor: ProductDescriptor) -> bool:
        return True

    def evaluate(self, ctx: GateContext) -> CheckOutcome:  # pragma: no cover - abstract
        raise NotImplementedError


class ExpectationsCheck(GateCheck):
    name = "expectations"
    description = "The descriptor's Great Expectations suite, run on the staged rows."

    def applies(self, descriptor: ProductDescriptor) -> bool:
        return bool(descriptor.body.sla.expectations)

    def evaluate(self, ctx: GateContext) -> CheckOutcome:
        return run_suite(ctx.descriptor, ctx.staged_data, sql=ctx.staged_sql())


class VolumeCheck(GateCheck):
    name = "volume"
    description = "Row count of the new snapshot against the published one."

    def blocking(self, descriptor: ProductDescriptor) -> bool:
        volume = descriptor.body.sla.volume
        return volume is not None and volume.blocking

    def evaluate(self, ctx: GateContext) -> CheckOutcome:

        volume = ctx.descriptor.body.sla.volume or Volume(blocking=False)
        new, old = ctx.staged_rows, ctx.published_rows
        metadata: dict[str, Any] = {"rows": new, "published_rows": old}
        if old is None:
            return CheckOutcome(True, "first publication", metadata, volume.blocking)
        ratio = new / old if old else (1.0 if new == 0 else float("inf"))
        metadata.update(ratio=round(ratio, 4), min_ratio=volume.min_ratio,
                        max_ratio=volume.max_ratio)  # fmt: skip
        share = f"{new} rows is {ratio:.1%} of the published {old}"
        broken = None
        if volume.min_ratio is not None and ratio < volume.min_ratio:
            broken = f"below the minimum of {volume.min_ratio:.0%} (min_ratio {volume.min_ratio:g})"
        elif volume.max_ratio is not None and ratio > volume.max_ratio:
            broken = f"above the maximum of {volume.max_ratio:.0%} (max_ratio {volume.max_ratio:g})"
        if broken:
            fix = (
                "if the source delivered the wrong rows, correct it (or the model) and build "
                f"again; if the change is intended, change sla.volume in "
                f"{ctx.descriptor.source_file} for this build, then build again"
            )
            return CheckOutcome(False, f"{share}, {broken}", metadata, volume.blocking, fix=fix)
        return CheckOutcome(True, f"{new} rows, {ratio:.1%} of the published {old}", metadata,
                            volume.blocking)  # fmt: skip


SCHEMA_CHECK = "schema_compatible"
CONTRACT_CHECK = "contract"

_REGISTRY: list[GateCheck] = [ExpectationsCheck(), VolumeCheck()]


def register_gate_check(check: GateCheck) -> GateCheck:
    """Add a check to every product's gate (the hook for governance and custom checks)."""
    if not check.name or check.name in {c.name for c in _REGISTRY} | {SCHEMA_CHECK,
                                                                      CONTRACT_CHECK}:  # fmt: skip
        raise ValueError(f"gate check name {check.name!r} is empty or already registered")
    _REGISTRY.append(check)
    return check


def unregister_gate_check(name: str) -> None:
    _REGISTRY[:] = [c for c in _REGISTRY if c.name != name]


# The shipped personal-data policies (governance/data.py) are known by name as well as by their
# attribute: quarantine must not be switched off by a rewrite that forgets the attribute, nor by
# unregistering the check.
PERSONAL_DATA_POLICIES = frozenset({"pii_detection", "pii_masking_verified"})


def is_personal_data_policy(name: str) -> bool:
    """Whether the check called ``name`` is a personal-data policy (a batch it blocks is
    quarantined). Checks declare it with ``personal_data = True``."""
    if name in PERSONAL_DATA_POLICIES:
        return True
    return any(getattr(c, "personal_data", False) for c in _REGISTRY if c.name == name)


def gate_checks(descriptor: ProductDescriptor) -> list[GateCheck]:
    return [c for c in _REGISTRY if c.applies(descriptor)]


def run_gate(ctx: GateContext) -> dict[str, CheckOutcome]:
    """Evaluate every registered check that applies; an error in a check fails that check.

    Fails closed: if the personal-data policies are not registered (the governance package was
    never imported in this process), each is reported failed and blocking."""
    outcomes: dict[str, CheckOutcome] = {}
    registered = {c.name for c in _REGISTRY}
    for name in sorted(PERSONAL_DATA_POLICIES - registered):
        outcomes[name] = CheckOutcome(
            False,
            f"the data policy {name} is not loaded in this process: the batch cannot be "
            "checked for personal data (import mesh_platform.governance, which registers it)",
            {},
            True,
        )
    for check in gate_checks(ctx.descriptor):
        start = time.perf_counter()
        try:
            outcome = check.evaluate(ctx)
        except Exception as exc:  # a broken check must block, not crash the publication
            outcome = CheckOutcome(
                False,
                f"check raised {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
                {},
                check.blocking(ctx.descriptor),
            )
        outcome.metadata["seconds"] = round(time.perf_counter() - start, 3)
        outcomes[check.name] = outcome
    return outcomes


def _needs_gx(descriptor: ProductDescriptor) -> bool:
    """Whether some expectation of ``descriptor`` is left to Great Expectations (judged from
    the contract's declared types; the gate decides from the staged files' own)."""
    expectations = descriptor.body.sla.expectations
    kinds = {c.name: (c.data_type or "").upper() for c in descriptor.columns}
    return len(sql_expectations(expectations, kinds)) < len(expectations)


def prewarm(descriptors: Iterable[ProductDescriptor]) -> threading.Thread:
    """Import what the gate and the publisher need in a background thread.

    Great Expectations (5-9 s) and pyiceberg's Arrow IO (~2 s) are imported lazily so code
    locations load fast; a run starts this before dbt builds (dbt is a subprocess, so the
    imports use the otherwise idle time) and the gate finds them already imported. Great
    Expectations only when an expectation is left to it: on two cores its import slows dbt's
    own start (measured at SF 1: dbt run 17.0 s beside it, 9.9 s alone).
    """
    need_gx = any(_needs_gx(d) for d in descriptors)

    def _imports() -> None:
        with contextlib.suppress(Exception):  # the gate imports again and reports any error
            # heavy: for the publisher, ahead of it: the SQL catalog with SQLAlchemy (~0.6 s,
            # open_catalog) and pyiceberg's Arrow IO (~2 s)
            import pyiceberg.catalog.sql
            import pyiceberg.io.pyarrow  # noqa: F401

            if need_gx:
                quiet_gx()

    thread = threading.Thread(target=_imports, name="mesh-prewarm", daemon=True)
    thread.start()
    return thread


def schema_compatibility(
    table: Table | None, new_schema: pa.Schema, *, source_file: str = "the product's descriptor"
) -> CheckOutcome:
    """Compare the new rows' schema with the published table's, at every depth (Iceberg's
    evolution rules, field ids ignored: storage/evolution.py)."""
    if table is None or not is_published(table.current_snapshot()):  # no reader saw a schema
        return CheckOutcome(True, "first publication: the table takes this schema")
    diff = compare_schemas(table.schema(), pyarrow_to_schema_without_ids(new_schema))
    added, dropped, changed, widened = diff.added, diff.dropped, diff.type_changes, diff.widened
    metadata: dict[str, Any] = {
        "added": added,
        "dropped": dropped,
        "type_changes": changed,
        "widened": widened,
    }
    if dropped or changed:
        parts = []
        if dropped:
            parts.append(f"dropped or renamed column(s) or field(s) {', '.join(dropped)}")
        if changed:
            parts.append(f"incompatible type change(s) {'; '.join(changed)}")
        return CheckOutcome(
            False,
            f"breaking change: {' and '.join(parts)}",
            metadata,
            fix="keep the columns and their types (a type may only widen: int -> bigint), or "
            "publish the change as a new major version (a new dbt model version, descriptor "
            f"version N+1.0.0 in {source_file}) while this one is deprecated",
        )
    what = []
    if added:
        what.append(f"adds {', '.join(added)}")
    if widened:
        what.append(f"widens {'; '.join(widened)}")
    return CheckOutcome(True, "compatible" + (f": {', '.join(what)}" if what else ""), metadata)
