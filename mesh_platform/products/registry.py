"""The product registry: every product of every domain by address, with its descriptor (what
a product promises and who may read it), or why it cannot be resolved.

Descriptors are read from the domains' prepared dbt manifests and Python products' YAML files,
re-prepared when a project file changed, so an edited grant applies to the next query. A domain
whose files are broken is recorded as a problem of that domain (``<domain>.*``): its products
cannot be resolved, with the file and the fix, and every other domain's still can. The
platform's own products (:mod:`mesh_platform.products.platform`) are always there.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import yaml

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import is_product
from mesh_platform.dbt.project import MANIFEST_FILE, load_manifest, prepare
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import (
    ProductDescriptor,
    descriptor_from_node,
    load_python_descriptor,
)
from mesh_platform.products.lifecycle import Retirement, load_retirements, with_successors
from mesh_platform.products.platform import history_descriptor
from mesh_platform.watching import FolderWatch


class UnknownProductError(MeshError):
    """No product has this address."""


def _project_stamp(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """(file, mtime, size) of every file that can change a domain's descriptors."""
    stamp = []
    for root in paths:
        if not root.exists():
            continue
        if root.is_file():
            st = root.stat()
            stamp.append((str(root), st.st_mtime_ns, st.st_size))
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _NOT_SOURCES]
            for name in files:
                if name.endswith((".yml", ".yaml", ".sql", ".py")):
                    st = os.stat(os.path.join(folder, name))
                    stamp.append((os.path.join(folder, name), st.st_mtime_ns, st.st_size))
    return tuple(sorted(stamp))


_NOT_SOURCES = frozenset({"target", "dbt_packages", "logs", "__pycache__"})
# (root, domain) -> (stamp, descriptors, problems, fixes)
_CACHE: dict[
    tuple[str, str], tuple[Any, dict[str, ProductDescriptor], dict[str, str], dict[str, str]]
] = {}


class Directory:
    """Every product of the mesh by address: its descriptor (or why it is unusable).

    ``problems`` maps ``<domain>.<product>`` (an invalid descriptor) or ``<domain>.*`` (a
    domain that cannot be loaded: its products cannot be resolved) to what is wrong, with the
    file; ``fixes`` gives the fix of each, where known.
    """

    def __init__(
        self,
        descriptors: dict[str, ProductDescriptor],
        problems: dict[str, str] | None = None,
        fixes: dict[str, str] | None = None,
        retired: dict[str, Retirement] | None = None,
    ) -> None:
        self.descriptors = descriptors
        self.problems = problems or {}
        self.fixes = fixes or {}
        self.retired = retired or {}  # address -> its retirement (`mesh retire`)

    def get(self, address: ProductAddress) -> ProductDescriptor:
        key = str(address)
        if key in self.descriptors:
            return self.descriptors[key]
        if key in self.problems:
            raise MeshError(
                f"product {key} cannot be read: its descriptor is invalid ({self.problems[key]})",
                fix=self.fixes.get(key)
                or f"its owners fix the descriptor (`mesh check --domain {address.domain}`)",
            )
        if why := self.problems.get(f"{address.domain}.*"):
            raise MeshError(
                f"product {key} cannot be resolved: domain {address.domain} cannot be loaded: "
                f"{why}",
                fix=self.fixes.get(f"{address.domain}.*")
                or f"run `mesh prepare --domain {address.domain}`",
            )
        if (gone := self.retired.get(key)) is not None:
            raise UnknownProductError(
                f"product {key} was retired on {gone.started_at[:10]} by {gone.retired_by} "
                f"({gone.reason})",
                fix=f"read its successor {gone.successor}"
                if gone.successor
                else "list the products with `mesh products`",
            )
        close = difflib.get_close_matches(key, list(self.descriptors), n=1)
        raise UnknownProductError(
            f"no product {key} in the mesh",
            fix=(f"did you mean {close[0]}? " if close else "")
            + "list products with `mesh products`",
        )


# mesh root -> the directory of a long-running reader, recomputed when the kernel reports a change
_WATCHED: dict[str, FolderWatch[Directory]] = {}


def watch_directory(mesh: Mesh) -> bool:
    """Serve this process's ``load_directory(mesh)`` from a kernel watch of the mesh's domain
    and project folders (:mod:`mesh_platform.watching`): the files are read again only after
    one changes, instead of stat-ing every project file for every query. For long-running
    readers (the query service); whether the kernel watches (else files are checked as
    before)."""
    watch = _WATCHED.get(str(mesh.root))
    if watch is None:
        watch = FolderWatch(
            [mesh.domains_dir, mesh.dbt_projects_dir],
            shallow=lambda: [mesh.root, *mesh.dbt_projects_dir.glob("*/target")],
            skip=_NOT_SOURCES,
        )
        _WATCHED[str(mesh.root)] = watch
    return watch.active


def load_directory(
    mesh: Mesh, *, refresh: bool = True, domains: Collection[str] | None = None
) -> Directory:
    """Descriptors of every domain's products. ``refresh``: re-prepare a dbt project whose files
    changed (an edited grant applies at once); else read the manifests as prepared.

    ``domains``: only these domains' products (and the platform's): what a code location or
    its SLA monitor needs (its own, its producers'). Each of N code servers reading every
    domain cost N x N manifests across the mesh, and the memory to hold them.

    One domain's broken file (domain.yaml, dbt YAML, a Python product's YAML) never fails the
    whole directory: it is recorded as that domain's problem (see :class:`Directory`)."""
    watch = _WATCHED.get(str(mesh.root)) if refresh and domains is None else None
    if watch is not None:
        return watch.current(lambda: _read_directory(mesh, refresh=True))
    return _read_directory(mesh, refresh=refresh, domains=domains)


def _read_directory(
    mesh: Mesh, *, refresh: bool, domains: Collection[str] | None = None
) -> Directory:
    descriptors: dict[str, ProductDescriptor] = {}
    problems: dict[str, str] = {}
    fixes: dict[str, str] = {}
    names = list_domain_names(mesh)
    for name in names if domains is None else [n for n in names if n in domains]:
        key = (str(mesh.root), name)
        try:
            stamp = _domain_stamp(mesh, name)
        except OSError as exc:  # an unreadable file or a dangling link in the project
            cached = ({}, {f"{name}.*": f"its files cannot be read ({exc})"}, {})
        else:
            hit = _CACHE.get(key)
            if hit is None or hit[0] != stamp:
                _CACHE[key] = (stamp, *_load_domain(mesh, name, refresh=refresh))
            cached = _CACHE[key][1:]
        descriptors.update(cached[0])
        problems.update(cached[1])
        fixes.update(cached[2])
    platform = history_descriptor()  # the platform's own product
    descriptors[str(platform.address)] = platform
    return Directory(descriptors, problems, fixes, load_retirements(mesh))


def _domain_stamp(mesh: Mesh, name: str) -> Any:
    project = mesh.dbt_projects_dir / name
    return _project_stamp(
        [mesh.domains_dir / name / "domain.yaml", project, project / MANIFEST_FILE,
         mesh.domains_dir / name / "products"]
    )  # fmt: skip


def _where(mesh: Mesh, exc: MeshError) -> str:
    """The error's message with its file, relative to the mesh root when inside it."""
    if exc.path is None:
        return exc.what
    path = exc.path
    if path.is_absolute() and path.is_relative_to(mesh.root):
        path = path.relative_to(mesh.root)
    return f"{exc.what} [{path}]"


def _load_domain(
    mesh: Mesh, name: str, *, refresh: bool
) -> tuple[dict[str, ProductDescriptor], dict[str, str], dict[str, str]]:
    """One domain's descriptors and problems; whatever breaks is that domain's problem."""
    try:
        domain = load_domain(mesh, name)
        return _domain_products(mesh, domain, mesh.domains_dir / name / "products", refresh=refresh)
    except MeshError as exc:
        return {}, {f"{name}.*": _where(mesh, exc)}, {f"{name}.*": exc.fix}
    except Exception as exc:  # isolation: a domain's files must not break the other domains
        what = f"its files could not be loaded ({type(exc).__name__}: {exc})"
        return {}, {f"{name}.*": what}, {}


def _domain_products(
    mesh: Mesh, domain: Any, python_dir: Path, *, refresh: bool
) -> tuple[dict[str, ProductDescriptor], dict[str, str], dict[str, str]]:
    found: dict[str, ProductDescriptor] = {}
    problems: dict[str, str] = {}
    fixes: dict[str, str] = {}
    domain_wide: list[MeshError] = []  # what keeps products of the domain from resolving
    if domain.dbt_project_dir.is_dir():
        nodes: dict[str, Any] = {}
        try:
            if refresh:
                # A failed parse leaves the previous manifest behind: never read it (its
                # grants may be the ones just revoked).
                prepare(mesh, domain)
            nodes = load_manifest(domain, cache=False).get("nodes", {})  # descriptors cached
        except MeshError as exc:  # a broken dbt project, or not prepared
            domain_wide.extend([*_unparsable_yaml(mesh, domain.dbt_project_dir), exc])
        for node in nodes.values():
            if not is_product(node):
                continue
            try:
                descriptor = descriptor_from_node(
                    domain.name, node, project_dir=domain.dbt_project_dir
                )
                found[str(descriptor.address)] = descriptor
            except MeshError as exc:
                problems[f"{domain.name}.{node['name']}"] = _where(mesh, exc)
                fixes[f"{domain.name}.{node['name']}"] = exc.fix
    for path in sorted(python_dir.glob("*.yml")):
        source = str(path.relative_to(mesh.root))
        try:
            descriptor = load_python_descriptor(path, domain.name, source)
            found[str(descriptor.address)] = descriptor
        except MeshError as exc:
            problems[f"{domain.name}.{path.stem}"] = _where(mesh, exc)
            fixes[f"{domain.name}.{path.stem}"] = exc.fix
            domain_wide.append(exc)  # its product's name is unknown: name the file for all
    found = with_successors(found)
    if domain_wide:
        problems[f"{domain.name}.*"] = "; ".join(_where(mesh, e) for e in domain_wide)
        fixes[f"{domain.name}.*"] = "; ".join(dict.fromkeys(e.fix for e in domain_wide))
    return found, problems, fixes


def _unparsable_yaml(mesh: Mesh, project: Path) -> list[MeshError]:
    """The project's YAML files that do not parse, each named (dbt's own message may lose the
    file name in its long report)."""
    found = []
    for folder, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_SOURCES)
        for name in sorted(f for f in files if f.endswith((".yml", ".yaml"))):
            path = Path(folder, name)
            try:
                yaml.safe_load(path.read_text())
            except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
                where = path.relative_to(mesh.root) if path.is_relative_to(mesh.root) else path
                found.append(
                    MeshError(
                        f"{where} is not valid YAML ({' '.join(str(exc).split())})",
                        fix=f"fix the YAML syntax of {where}",
                        path=path,
                    )
                )
    return found
