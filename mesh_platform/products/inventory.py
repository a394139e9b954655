"""What a domain has: its products (dbt and Python) and what they consume.

One answer for every caller (definitions, governance, discovery, alerts):

- a dbt product is a public model of the domain's prepared manifest (:func:`product_descriptors`);
- a Python product is a ``@python_product`` function defined in a module under
  ``domains/<domain>/products/`` (:func:`python_products`: the modules are imported by path, so
  a mesh checked out anywhere is read as it is on disk) with its descriptor beside it
  (:func:`python_descriptors` validates them and reports every problem);
- lineage: dbt products consume the mesh-input sources of their manifest
  (:func:`mesh_platform.dbt.nodes.consumed_products`), Python products the ``inputs`` they
  declare (:func:`python_inputs`).

The query path does not import domain code: the registry (:mod:`mesh_platform.products.registry`)
reads Python products' descriptor files directly.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import is_product
from mesh_platform.domain import Domain, list_domain_names
from mesh_platform.errors import DomainError, LoadProblem, MeshError
from mesh_platform.packages import folder_package
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.python import PythonProduct


def product_descriptors(
    domain: str, manifest: Mapping[str, Any], *, project_dir: Path | None = None
) -> dict[str, ProductDescriptor]:
    """unique_id -> validated descriptor, for every product of a domain's manifest
    (``project_dir``: the domain's dbt project, for the lines errors name).

    Raises DescriptorError for the first invalid one; load-time checks (dbt/checks.py) report
    all of them first.
    """
    return {
        uid: descriptor_from_node(domain, node, project_dir=project_dir)
        for uid, node in manifest.get("nodes", {}).items()
        if is_product(node)
    }


def python_products(mesh: Mesh, domain: str) -> list[PythonProduct]:
    """The @python_product objects defined in the modules of ``domains/<domain>/products/``.

    The folder is imported as a package of its own, by path (a mesh checked out anywhere is
    read as it is on disk; its modules may import each other relatively); ``__init__.py`` and
    modules whose name starts with ``_`` are helpers, not products. A product imported by
    another module is counted once. A module that fails to import raises :class:`DomainError`
    naming the file."""
    folder = mesh.domains_dir / domain / "products"
    if not folder.is_dir():
        return []
    package = folder_package(f"_mesh_products_{domain}", folder).__name__
    found: dict[Path, PythonProduct] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"{package}.{path.stem}"
        try:
            module = sys.modules.get(name) or importlib.import_module(name)
        except Exception as exc:
            raise DomainError(
                domain,
                f"its Python product module {path.name} cannot be imported: "
                f"{type(exc).__name__}: {exc}",
                fix="fix the module (run it with python to see the traceback)",
                path=path,
            ) from exc
        for value in vars(module).values():
            if isinstance(value, PythonProduct):
                found.setdefault(value.descriptor_path.resolve(), value)
    return list(found.values())


def python_descriptors(
    domain: Domain, products: Sequence[PythonProduct], taken: set[str]
) -> tuple[list[tuple[PythonProduct, ProductDescriptor]], list[str]]:
    """Validated descriptors of the domain's Python products, and every problem found;
    ``taken``: the addresses of the domain's dbt products."""
    found: list[tuple[PythonProduct, ProductDescriptor]] = []
    problems: list[str] = []
    python: dict[str, str] = {}  # address -> the function that builds it
    for product in products:
        try:
            descriptor = product.descriptor(domain.code_dir.parent.parent)
        except MeshError as exc:
            problems.append(LoadProblem.of(exc))
            continue
        file = descriptor.source_file
        if descriptor.domain != domain.name:
            problems.append(LoadProblem(
                f"Python product {descriptor.address} is defined in domains/{descriptor.domain}/ "
                f"but passed to domain '{domain.name}'", file=file,
                fix="a domain publishes only its own products: define it under "
                f"domains/{domain.name}/products/",
            ))  # fmt: skip
        elif str(descriptor.address) in taken:
            problems.append(LoadProblem(
                f"product {descriptor.address} ({file}) is also a dbt product of this domain",
                file=file, fix="one address, one product: rename one of them",
            ))  # fmt: skip
        elif str(descriptor.address) in python:
            problems.append(LoadProblem(
                f"product {descriptor.address} ({file}) is built by two Python functions "
                f"({python[str(descriptor.address)]} and {product.name})", file=file,
                fix="one address, one product: keep one function",
            ))  # fmt: skip
        else:
            python[str(descriptor.address)] = product.name
            found.append((product, descriptor))
    return found, problems


def python_inputs(mesh: Mesh) -> dict[str, set[str]]:
    """Declared inputs of Python products (their modules are imported to read them)."""
    found: dict[str, set[str]] = {}
    for domain in list_domain_names(mesh):
        if not any((mesh.domains_dir / domain / "products").glob("*.py")):
            continue
        try:
            products = python_products(mesh, domain)
        except Exception:  # a broken module: its lineage is unknown, the load error says why
            continue
        for product in products:
            try:
                address = str(product.descriptor(mesh.root).address)
            except MeshError:
                continue
            found[address] = {str(a) for a in product.inputs}
    return found
