"""Python-built products: a function that returns Arrow (or pandas), published like dbt products.

A domain team writes::

    # domains/marketing/products/segment_summary.py
    from mesh_platform.products.python import python_product

    @python_product("segment_summary.yml", inputs=["marketing.customer_segments"])
    def segment_summary(ctx):
        segments = ctx.read("marketing.customer_segments")
        return segments.group_by(...).aggregate(...)

and passes it to ``domain_definitions(__file__, products=[segment_summary])``. The YAML beside
it is the descriptor (the same model as a dbt product's ``meta.mesh`` block, plus ``name``,
``description`` and typed ``columns``: the contract). The platform turns it into an asset with
the same key, metadata and gate checks as a dbt product; a run enforces the contract (the
declared columns, cast to their declared types by DuckDB), then write-audit-publishes the rows
through the gate. Inputs are read at the snapshot current when the run starts and recorded.

What the function is handed reaches no other domain's files: its context carries no mesh, path
or connection, only ``read()``, which goes through the query engine (the domain's grants and
masks, a DuckDB locked to the read snapshots' files). Declared column types are checked to be
plain DuckDB types before they reach the contract's DDL. The function itself is Python running
in the domain's process: it can open files like any code the domain deploys; confining that
takes an OS sandbox or per-domain credentials (the production profile's object-store policies,
``mesh deploy s3-policies``), not this API.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from mesh_platform.addressing import ProductAddress, quote_ident
from mesh_platform.dbt.isolation import data_type_problems
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import (
    ProductDescriptor,
    PythonDescriptorFile,  # noqa: F401 - re-exported
    load_python_descriptor,
)
from mesh_platform.resources import MeshResource

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from mesh_platform.config import Mesh

PYTHON_SCHEMA = "python_products"


@dataclass
class ProductContext:
    """What a Python product's function gets: logging and pinned reads of its inputs.

    No mesh, path or connection: the only way to data is :meth:`read`, under the domain's grants.
    """

    log: Any
    run_id: str
    inputs: tuple[ProductAddress, ...]
    _mesh: Mesh = field(repr=False)  # for read() only: not part of the API given to products
    domain: str  # the consuming domain: reads are decided by its grants
    read_snapshots: dict[str, int] = field(default_factory=dict)
    _cut: dict[str, int] | None = field(default=None, repr=False)  # the inputs' consistent cuts

    def read(self, address: str | ProductAddress) -> pa.Table:
        """A declared input product's current published rows, as Arrow."""
        address = ProductAddress.parse(address) if isinstance(address, str) else address
        if address not in self.inputs:
            raise MeshError(
                f"product reads {address}, which it does not declare as an input",
                fix=f"add '{address}' to inputs=[...] of @python_product, so lineage and "
                "snapshot pinning know about it",
            )
        from mesh_platform.access.consumption import pinned_inputs
        from mesh_platform.query.engine import QuerySession

        # Read as the consuming domain: its grant decides columns, rows and masks. The first
        # read pins the snapshots of every input for the whole run, each producer's inputs
        # from one consistent cut (products.cuts).
        with QuerySession(self.domain, mesh=self._mesh) as session:
            if self._cut is None:
                cuts = pinned_inputs(self._mesh, session, self.inputs)
                self._cut = {a: s for p in cuts.values() for a, s in p.snapshots.items()}
            pinned = self.read_snapshots.get(str(address), self._cut.get(str(address)))
            table = session.sql(
                f"SELECT * FROM {address.domain}.{address.table}",
                at={str(address): pinned} if pinned is not None else None,
            )
            self.read_snapshots.update(session.last_snapshots)
        return table


@dataclass(frozen=True)
class PythonProduct:
    fn: Callable[[ProductContext], Any]
    descriptor_path: Path
    inputs: tuple[ProductAddress, ...]
    module_file: Path

    @property
    def name(self) -> str:
        return self.fn.__name__

    def descriptor(self, mesh_root: Path) -> ProductDescriptor:
        domain = _domain_of(self.module_file, mesh_root)
        try:
            source = self.descriptor_path.resolve().relative_to(mesh_root.resolve())
        except ValueError:
            source = self.descriptor_path
        descriptor = load_python_descriptor(self.descriptor_path, domain, str(source))
        # The types are pasted into the contract's CREATE TABLE: one plain type each, or refused.
        if problems := data_type_problems({c.name: c.data_type for c in descriptor.columns}):
            raise MeshError(
                f"Python product {descriptor.address} ({source}): " + "; ".join(problems),
                fix="give every column one DuckDB type (bigint, varchar, decimal(18,2), date...)",
                path=self.descriptor_path,
            )
        return descriptor


def _domain_of(module_file: Path, mesh_root: Path) -> str:
    try:
        parts = module_file.resolve().relative_to((mesh_root / "domains").resolve()).parts
    except ValueError:
        raise MeshError(
            f"Python product module {module_file} is not inside {mesh_root / 'domains'}",
            fix="keep a domain's Python products under domains/<domain>/",
            path=module_file,
        ) from None
    return parts[0]


def python_product(
    descriptor: str | Path, *, inputs: Sequence[str] = ()
) -> Callable[[Callable[[ProductContext], Any]], PythonProduct]:
    """Declare a Python-built product whose descriptor is ``descriptor`` (relative to the
    module defining the function) and which reads the products ``inputs``."""
    parsed_inputs = tuple(ProductAddress.parse(a) for a in inputs)

    def wrap(fn: Callable[[ProductContext], Any]) -> PythonProduct:
        module_file = Path(inspect.getfile(fn)).resolve()
        return PythonProduct(fn, module_file.parent / descriptor, parsed_inputs, module_file)

    return wrap


def _to_arrow(value: Any, descriptor: ProductDescriptor) -> pa.Table:
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    try:
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            return pa.Table.from_pandas(value, preserve_index=False)
    except ImportError:  # pragma: no cover - pandas comes with great-expectations
        pass
    raise MeshError(
        f"Python product {descriptor.address} returned {type(value).__name__}",
        fix="return a pyarrow.Table (or a pandas DataFrame)",
        path=descriptor.source_file,
    )


def enforce_contract(
    conn: duckdb.DuckDBPyConnection, descriptor: ProductDescriptor, data: pa.Table
) -> tuple[str | None, str]:
    """Load ``data`` into ``python_products.<table>`` with the declared columns and types.

    Returns (error or None, relation). Missing or extra columns, and values DuckDB cannot cast
    to the declared type, break the contract.
    """
    import duckdb

    declared = [c.name for c in descriptor.columns]
    actual = list(data.column_names)
    missing = [c for c in declared if c not in actual]
    extra = [c for c in actual if c not in declared]
    relation = f"{PYTHON_SCHEMA}.{descriptor.address.table}"
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"undeclared column(s) {', '.join(extra)}")
        return (
            f"the returned data breaks the contract in {descriptor.source_file}: "
            f"{'; '.join(parts)}",
            relation,
        )
    target = f"{quote_ident(PYTHON_SCHEMA)}.{quote_ident(descriptor.address.table)}"
    columns = ", ".join(f"{quote_ident(c.name)} {c.data_type}" for c in descriptor.columns)
    names = ", ".join(quote_ident(c) for c in declared)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(PYTHON_SCHEMA)}")
    conn.execute(f"CREATE OR REPLACE TABLE {target} ({columns})")
    conn.register("_mesh_python_output", data)
    try:
        conn.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM _mesh_python_output")
    except duckdb.Error as exc:
        return (
            f"the returned data does not fit the declared types in {descriptor.source_file}: "
            f"{str(exc).splitlines()[0]}",
            relation,
        )
    finally:
        conn.unregister("_mesh_python_output")
    return None, relation


def build_python_product_asset(
    product: PythonProduct,
    descriptor: ProductDescriptor,
    *,
    catalog_name: str,
    warehouse: str,
    schedule: Any = None,
) -> dg.AssetsDefinition:
    from mesh_platform.products.gate import CONTRACT_CHECK, CheckOutcome, check_result, check_specs
    from mesh_platform.products.specs import freshness_policy, product_metadata, product_tags

    @dg.asset(
        key=descriptor.address.asset_key,
        deps=[a.asset_key for a in product.inputs],
        description=f"{descriptor.description.strip()}\n\nPurpose: {descriptor.body.purpose}",
        owners=descriptor.body.owner.dagster_owners,
        tags=product_tags(descriptor),
        kinds={"python", "iceberg"},
        metadata=product_metadata(descriptor, catalog_name, warehouse),
        group_name=descriptor.domain,
        check_specs=check_specs(descriptor, contract=True),
        freshness_policy=freshness_policy(descriptor, schedule),
    )
    # No annotation on context: dagster resolves annotations at runtime and a string one fails.
    def _python_product(context, mesh: MeshResource) -> Iterator[Any]:
        import duckdb

        from mesh_platform.dbt.run import (
            check_results,
            materialization_metadata,
            record_step_cut,
        )
        from mesh_platform.products.publish import Publication, publish_in_run
        from mesh_platform.sla.history import INFRASTRUCTURE_FAILURE, GateEvent, record_safely
        from mesh_platform.storage.iceberg import open_catalog

        loaded = mesh.load()
        pctx = ProductContext(
            context.log, context.run_id, product.inputs, loaded, descriptor.domain
        )
        data = _to_arrow(product.fn(pctx), descriptor)
        conn = duckdb.connect()
        try:
            error, relation = enforce_contract(conn, descriptor, data)
            yield check_result(
                descriptor,
                CONTRACT_CHECK,
                CheckOutcome(error is None, error or "rows match the declared columns and types"),
            )
            catalog = open_catalog(loaded)
            try:
                if error:
                    blocked = Publication(
                        descriptor, {CONTRACT_CHECK: CheckOutcome(False, error)}, error=error
                    )
                    record_safely(loaded, [GateEvent.of(blocked, context.run_id)], context.log,
                                  catalog)  # fmt: skip
                    raise dg.Failure(f"product {descriptor.address}: not published: {error}")
                try:
                    publication = publish_in_run(
                        loaded,
                        catalog,
                        descriptor,
                        conn,
                        relation,
                        run_id=context.run_id,
                        inputs=pctx.read_snapshots,
                    )
                except Exception as exc:  # storage: on record as such, not as a failed gate
                    publication = Publication(descriptor, error=f"{INFRASTRUCTURE_FAILURE}: {exc}")
                record_safely(loaded, [GateEvent.of(publication, context.run_id)], context.log,
                              catalog)  # fmt: skip
                cut_error = record_step_cut(
                    context, loaded, descriptor.domain, f"python-{product.name}", [publication]
                )
            finally:
                catalog.engine.dispose()
        finally:
            conn.close()
        yield from check_results(context, publication)
        if not publication.published:
            raise dg.Failure(f"product {descriptor.address}: {publication.error}")
        context.log.info(
            f"published {descriptor.address} v{descriptor.body.version}: snapshot "
            f"{publication.snapshot_id} in {publication.seconds:.2f}s"
        )
        yield dg.MaterializeResult(
            metadata=materialization_metadata(publication, pctx.read_snapshots)
        )
        if cut_error:
            raise dg.Failure(f"product {descriptor.address}: {cut_error}")

    return _python_product
