"""Python-built products: a function that returns Arrow (or pandas), published like dbt products.

A domain team writes::

    # domains/marketing/products/segment_summary.py
    from mesh_platform.products.python import python_product

    @python_product("segment_summary.yml", inputs=["marketing.customer_segments"])
    def segment_summary(ctx):
        segments = ctx.read("marketing.customer_segments")
        return segments.group_by(...).aggregate(...)

and the platform finds it there (:func:`mesh_platform.products.inventory.python_products`). The
YAML beside it is the descriptor (the same model as a dbt product's ``meta.mesh`` block, plus
``name``, ``description`` and typed ``columns``: the contract). The platform turns it into an
asset with the same key, metadata and gate checks as a dbt product
(:mod:`mesh_platform.assets.python`: this module holds only the declaration, no Dagster); a run
enforces the contract (the declared columns, cast to their declared types by DuckDB), then
write-audit-publishes the rows through the gate. Inputs are read at the snapshot current when
the run starts and recorded.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import ProductAddress
from mesh_platform.dbt.isolation import data_type_problems
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import (
    ProductDescriptor,
    load_python_descriptor,
)

if TYPE_CHECKING:
    import pyarrow as pa

PYTHON_SCHEMA = "python_products"


@dataclass
class ProductContext:
    """What a Python product's function gets: logging and pinned reads of its inputs.

    No mesh, path or connection: the only way to data is :meth:`read`, under the domain's grants
    (the run hands in the reader: ``mesh_platform.assets.python`` reads through the query engine).
    """

    log: Any
    run_id: str
    inputs: tuple[ProductAddress, ...]
    _reader: Callable[[ProductAddress], pa.Table] = field(repr=False)
    domain: str  # the consuming domain: reads are decided by its grants

    def read(self, address: str | ProductAddress) -> pa.Table:
        """A declared input product's current published rows, as Arrow."""
        address = ProductAddress.parse(address) if isinstance(address, str) else address
        if address not in self.inputs:
            raise MeshError(
                f"product reads {address}, which it does not declare as an input",
                fix=f"add '{address}' to inputs=[...] of @python_product, so lineage and "
                "snapshot pinning know about it",
            )
        return self._reader(address)


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
