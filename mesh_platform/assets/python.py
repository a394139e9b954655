"""A Python product as a Dagster asset: run the domain's function, enforce its contract, publish.

The declaration API domain teams use (``@python_product``, ``ProductContext``) lives in
:mod:`mesh_platform.products.python` and knows nothing of Dagster or the query engine; this module
hands the function a reader that goes through the query engine under the consuming domain's
grants, casts the result into the declared columns (DuckDB, the contract), then takes the same
write-audit-publish path as a dbt product.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa

from mesh_platform.addressing import ProductAddress, quote_ident
from mesh_platform.assets.checks import check_result, check_specs
from mesh_platform.assets.keys import product_key
from mesh_platform.assets.reporting import check_results, materialization_metadata, record_step_cut
from mesh_platform.assets.specs import freshness_policy, product_metadata, product_tags
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.products.cuts import pinned_inputs
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.gate import CONTRACT_CHECK
from mesh_platform.products.lifecycle import publication_stops, replaced_in_place
from mesh_platform.products.outcomes import CheckOutcome
from mesh_platform.products.publish import Publication, publish_in_run
from mesh_platform.products.python import PYTHON_SCHEMA, ProductContext, PythonProduct
from mesh_platform.products.registry import load_directory
from mesh_platform.query.engine import QuerySession
from mesh_platform.resources import MeshResource
from mesh_platform.sla.events import INFRASTRUCTURE_FAILURE, GateEvent
from mesh_platform.sla.record import record_safely
from mesh_platform.storage.catalog import open_catalog


@dataclass
class PinnedReads:
    """A Python product's reads of its inputs: as the consuming domain (its grant decides
    columns, rows and masks); the first read pins the snapshots of every input for the whole
    run, each producer's inputs from one consistent cut (products.cuts)."""

    mesh: Mesh
    domain: str
    inputs: tuple[ProductAddress, ...]
    read_snapshots: dict[str, int] = field(default_factory=dict)
    _cut: dict[str, int] | None = field(default=None, repr=False)

    def read(self, address: ProductAddress) -> pa.Table:
        with QuerySession(self.domain, mesh=self.mesh) as session:
            if self._cut is None:
                cuts = pinned_inputs(self.mesh, session, self.inputs)
                self._cut = {a: s for p in cuts.values() for a, s in p.snapshots.items()}
            pinned = self.read_snapshots.get(str(address), self._cut.get(str(address)))
            table = session.sql(
                f"SELECT * FROM {address.domain}.{address.table}",
                at={str(address): pinned} if pinned is not None else None,
            )
            self.read_snapshots.update(session.last_snapshots)
        return table


def _to_arrow(value: Any, descriptor: ProductDescriptor) -> pa.Table:
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    import pandas as pd  # heavy: pandas (~1 s), only when a product returns a DataFrame

    if isinstance(value, pd.DataFrame):
        return pa.Table.from_pandas(value, preserve_index=False)
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


def _refuse_if_stopped(mesh: Mesh, descriptor: ProductDescriptor) -> None:
    """A retired product, or a deprecated version past its sunset, is not published any more;
    a new major that would replace an undeclared old one in place is refused."""
    if why := publication_stops(mesh, [descriptor]).get(str(descriptor.address)):
        raise dg.Failure(f"product {descriptor.address}: not published any more: {why}")
    declared = load_directory(mesh, refresh=False).descriptors
    if why := replaced_in_place(mesh, [descriptor], declared).get(str(descriptor.address)):
        raise dg.Failure(f"product {descriptor.address}: not published: {why}")


def build_python_product_asset(
    product: PythonProduct,
    descriptor: ProductDescriptor,
    *,
    catalog_name: str,
    warehouse: str,
    schedule: Any = None,
) -> dg.AssetsDefinition:
    @dg.asset(
        key=product_key(descriptor.address),
        deps=[product_key(a) for a in product.inputs],
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
        loaded = mesh.load()
        _refuse_if_stopped(loaded, descriptor)
        reads = PinnedReads(loaded, descriptor.domain, product.inputs)
        pctx = ProductContext(context.log, context.run_id, product.inputs, reads.read,
                              descriptor.domain)  # fmt: skip
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
                        inputs=reads.read_snapshots,
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
            raise dg.Failure(f"{descriptor.address}: {publication.error}")
        context.log.info(
            f"published {descriptor.address} v{descriptor.body.version}: snapshot "
            f"{publication.snapshot_id} in {publication.seconds:.2f}s"
        )
        yield dg.MaterializeResult(
            metadata=materialization_metadata(publication, reads.read_snapshots)
        )
        if cut_error:
            raise dg.Failure(f"product {descriptor.address}: {cut_error}")

    return _python_product
