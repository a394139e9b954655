"""Product descriptors as a git revision declares them, read without checking anything out.

``mesh diff --base REF`` compares the working tree's products with a base revision's. The base's
files are read with ``git ls-tree`` and ``git cat-file`` (the working tree, the index and HEAD
are never touched) and validated by the platform's own descriptor code
(:func:`~mesh_platform.products.descriptor.descriptor_from_node`,
:func:`~mesh_platform.products.descriptor.load_python_descriptor`):

- a dbt product is a model of the project's YAML properties files with a ``mesh`` block in its
  ``config.meta`` (or ``meta``); a versioned model gives one product per version, each version's
  ``config`` over the model's and its ``columns`` (``include``/``exclude`` of the model's, plus
  its own) as dbt resolves them. dbt is not run on the base: a descriptor or column meta set
  only in ``dbt_project.yml`` or a model's SQL ``config()`` is not seen (the platform's
  convention keeps descriptors in the model YAML);
- a Python product's descriptor is its YAML file under ``domains/<domain>/products/``.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import node_meta
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import (
    DESCRIPTOR_META_KEY,
    ProductDescriptor,
    descriptor_from_node,
    load_python_descriptor,
)

_NOT_PROPERTIES = {"dbt_project.yml", "profiles.yml", "packages.yml", "dependencies.yml",
                   "selectors.yml", "package-lock.yml"}  # fmt: skip
_NOT_SOURCES = {"target", "dbt_packages", "logs"}


@dataclass
class Revision:
    """The products of one revision: address -> descriptor, and what could not be read."""

    ref: str
    commit: str
    descriptors: dict[str, ProductDescriptor] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # file or product -> why


def _git(root: Path, *args: str) -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise MeshError("git is not installed", fix="install git to compare revisions") from exc
    if result.returncode != 0:
        raise MeshError(
            f"`git {' '.join(args)}` failed: {result.stderr.strip() or 'no detail'}",
            fix="run `mesh diff` inside the git repository of the mesh, with --base naming a "
            "commit, branch or tag that exists there (fetch it first in a shallow CI clone)",
            path=root,
        )
    return result.stdout


def _files(root: Path, commit: str) -> Iterator[tuple[str, str]]:
    """(path relative to the mesh root, path in the repository) of the descriptor files."""
    prefix = _git(root, "rev-parse", "--show-prefix").strip()
    listed = _git(root, "ls-tree", "-r", "--name-only", "--full-tree", commit)
    for full in listed.splitlines():
        if not full.startswith(prefix):
            continue
        rel = PurePosixPath(full[len(prefix) :])
        parts = rel.parts
        if rel.suffix not in (".yml", ".yaml") or len(parts) < 3:
            continue
        if parts[0] == "dbt_projects" and rel.name not in _NOT_PROPERTIES:
            if not _NOT_SOURCES & set(parts[2:-1]):
                yield str(rel), full
        elif parts[0] == "domains" and len(parts) == 4 and parts[2] == "products":
            yield str(rel), full


def _columns(entries: list[Any] | None, inherited: Mapping[str, Any] | None = None) -> dict:
    """A model's (or version's) columns by name; a version's ``include``/``exclude`` entry
    selects among the model's (``inherited``)."""
    if entries is None:
        return dict(inherited or {})
    found: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        if "include" in entry:
            include = entry.get("include")
            names = list(inherited or {}) if include in ("all", "*") else list(include or [])
            for name in names:
                if name not in (entry.get("exclude") or []) and name in (inherited or {}):
                    found[name] = inherited[name]  # type: ignore[index]
        elif "name" in entry:
            found[str(entry["name"])] = dict(entry)
    return found


def model_nodes(model: Mapping[str, Any], patch_path: str) -> list[dict[str, Any]]:
    """The manifest-like node(s) of one model entry of a properties file: one per version."""
    base = {
        "name": model.get("name"), "description": model.get("description") or "",
        "config": dict(model.get("config") or {}), "meta": dict(model.get("meta") or {}),
        "columns": _columns(model.get("columns")), "patch_path": patch_path,
        "resource_type": "model",
    }  # fmt: skip
    versions = model.get("versions") or []
    if not versions:
        return [base]
    nodes = []
    for version in versions:
        config = {**base["config"], **(version.get("config") or {})}
        config["meta"] = {**(base["config"].get("meta") or {}),
                          **((version.get("config") or {}).get("meta") or {})}  # fmt: skip
        nodes.append({
            **base, "version": version.get("v"), "config": config,
            "meta": {**base["meta"], **(version.get("meta") or {})},
            "description": version.get("description") or base["description"],
            "columns": _columns(version.get("columns"), base["columns"]),
        })  # fmt: skip
    return nodes


def _dbt_products(revision: Revision, rel: str, text: str) -> None:
    parts = PurePosixPath(rel).parts
    domain, in_project = parts[1], "/".join(parts[2:])
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        revision.problems[rel] = f"not valid YAML at {revision.ref} ({' '.join(str(exc).split())})"
        return
    for model in doc.get("models") or [] if isinstance(doc, Mapping) else []:
        if not isinstance(model, Mapping):
            continue
        for node in model_nodes(model, f"{domain}://{in_project}"):
            if DESCRIPTOR_META_KEY not in node_meta(node):
                continue
            try:
                d = descriptor_from_node(domain, node)
            except MeshError as exc:
                revision.problems[f"{domain}.{node['name']}"] = f"{exc.what} [{rel}]"
                continue
            revision.descriptors[str(d.address)] = d


def _python_product(revision: Revision, rel: str, text: str) -> None:
    domain = PurePosixPath(rel).parts[1]
    with tempfile.TemporaryDirectory(prefix="mesh-diff-") as tmp:
        path = Path(tmp) / PurePosixPath(rel).name
        path.write_text(text)
        try:
            d = load_python_descriptor(path, domain, rel)
        except MeshError as exc:
            revision.problems[rel] = exc.what
            return
    revision.descriptors[str(d.address)] = d


def read_revision(mesh: Mesh, ref: str) -> Revision:
    """The products declared at ``ref`` (a commit, branch or tag of the mesh's repository)."""
    _git(mesh.root, "rev-parse", "--show-prefix")  # not a repository: git's own message
    try:
        commit = _git(mesh.root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
    except MeshError as exc:
        raise MeshError(
            f"no commit {ref!r} in the git repository of the mesh",
            fix="pass --base a commit, branch or tag of this repository (in a shallow CI "
            "clone, fetch the base first: git fetch origin main --depth=1)",
            path=mesh.root,
        ) from exc
    revision = Revision(ref, commit)
    for rel, full in _files(mesh.root, commit):
        text = _git(mesh.root, "cat-file", "blob", f"{commit}:{full}")
        if rel.startswith("dbt_projects/"):
            _dbt_products(revision, rel, text)
        else:
            _python_product(revision, rel, text)
    return revision
