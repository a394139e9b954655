"""Checks of rendered scaffold files before anything moves into place: the YAML parses, the
domain and product descriptors validate, the principals file stays valid."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mesh_platform.access.principals import PrincipalsFile
from mesh_platform.config import Mesh
from mesh_platform.domain import DOMAIN_FILE, parse_domain_spec
from mesh_platform.errors import DomainError, MeshError, format_validation_error
from mesh_platform.products.descriptor import descriptor_from_node

INPUT_FIX = (
    "pass NAME in snake_case, --owner a lower-case team name (e.g. finance) and --contact one "
    "plain email address (e.g. finance-data@example.com)"
)


class ScaffoldError(MeshError):
    """The scaffold cannot be written; nothing was changed."""


def _refuse(relative: str, what: str, *, path: Path | None = None) -> ScaffoldError:
    return ScaffoldError(
        f"the scaffold would write an invalid {relative}: {what}; nothing was written",
        fix=INPUT_FIX,
        path=path,
    )


def _parse_yaml(text: str, relative: str, *, path: Path | None = None) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _refuse(relative, f"not valid YAML ({exc})", path=path) from exc


def validate_domain_scaffold(
    mesh: Mesh, name: str, staging: Path, code_dir: Path, dbt_dir: Path, test_file: Path
) -> None:
    """Read the staged files back as the platform will: every YAML parses, ``domain.yaml``
    passes the loader's validation, every product descriptor passes ``descriptor_from_node``,
    the TOML parses, the Python compiles. Raises before anything is moved into place."""
    staged = {staging / "code": code_dir, staging / "dbt": dbt_dir, staging / "test.py": test_file}
    for source, target in staged.items():
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        for path in (f for f in files if f.is_file()):
            final = target / path.relative_to(source) if source.is_dir() else target
            relative = str(final.relative_to(mesh.root))
            text = path.read_text()
            if path.suffix in (".yml", ".yaml"):
                _parse_yaml(text, relative, path=final)
            elif path.suffix == ".toml":  # dg.toml: the domain as a dg project
                try:
                    tomllib.loads(text)
                except tomllib.TOMLDecodeError as exc:
                    raise _refuse(relative, f"not valid TOML ({exc})", path=final) from exc
            elif path.suffix == ".py":
                try:
                    compile(text, relative, "exec")
                except SyntaxError as exc:
                    raise _refuse(relative, f"not valid Python ({exc})", path=final) from exc
    descriptor = staging / "code" / DOMAIN_FILE
    try:
        parse_domain_spec(name, descriptor.read_text(), path=code_dir / DOMAIN_FILE)
    except DomainError as exc:
        raise _refuse(f"domains/{name}/{DOMAIN_FILE}", exc.what, path=exc.path) from exc
    products = staging / "dbt" / "models" / "products" / "products.yml"
    relative = f"dbt_projects/{name}/models/products/products.yml"
    data = _parse_yaml(products.read_text(), relative)
    models = data.get("models") if isinstance(data, Mapping) else None
    if not isinstance(models, list) or not models:
        raise _refuse(relative, "no `models:` list")
    for model in models:
        _validate_descriptor(name, model, relative, path=dbt_dir / products.relative_to(staging),
                             text=products.read_text())  # fmt: skip


def validate_product_yaml(mesh: Mesh, domain: str, product: str, text: str, yml: Path) -> None:
    """The products.yml ``new_product`` would write: valid YAML whose ``models:`` list holds
    the new product exactly once, with a descriptor the loader accepts."""
    relative = str(yml.relative_to(mesh.root))
    data = _parse_yaml(text, relative, path=yml)
    models = data.get("models") if isinstance(data, Mapping) else None
    entries = [m for m in models or () if isinstance(m, Mapping) and m.get("name") == product]
    if len(entries) != 1:
        raise ScaffoldError(
            f"adding {domain}.{product} to {relative} would not declare it exactly once in its "
            f"`models:` list ({len(entries)} entries); nothing was written",
            fix=f"check the `models:` list of {relative}, or add the product by hand",
            path=yml,
        )
    _validate_descriptor(domain, entries[0], relative, path=yml, text=text)


def _validate_descriptor(
    domain: str, model: Any, relative: str, *, path: Path, text: str | None = None
) -> None:
    """A model of a dbt YAML file, checked by the function that loads it from the manifest."""
    if not isinstance(model, Mapping) or not isinstance(model.get("name"), str):
        raise _refuse(relative, f"a `models:` entry is not a mapping with a name: {model!r}")
    columns = model.get("columns") or []
    node = {
        "name": model["name"],
        "description": model.get("description"),
        "config": model.get("config") or {},
        "meta": model.get("meta") or {},
        "columns": {c.get("name"): c for c in columns if isinstance(c, Mapping)},
        "original_file_path": relative.split("/", 2)[2],
        "patch_path": f"{domain}://{relative.split('/', 2)[2]}",
    }
    try:
        descriptor_from_node(domain, node, yaml_text=text)
    except MeshError as exc:
        raise _refuse(relative, exc.what, path=path) from exc


def validate_principals(text: str | None, path: Path) -> None:
    """principals.yaml as it would be written, through the loader's model."""
    if text is None:  # unchanged
        return
    data = _parse_yaml(text, path.name, path=path)
    try:
        PrincipalsFile.model_validate(data or {})
    except ValidationError as exc:
        raise _refuse(path.name, format_validation_error(exc), path=path) from exc
