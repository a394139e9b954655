"""A product's life after its first major: deprecation, sunset, retirement, and tables left over.

A breaking change is a new major version published beside the old one: the dbt model gets a
version (``versions: [{v: 1, ...}, {v: 2, ...}]``, one descriptor each, addresses ``d.p`` and
``d.p_v2``), never a new major in the one descriptor (that would leave ``d.p`` undeclared while
its consumers still read it: :func:`replaced_in_place` refuses that publication). The old major
keeps its descriptor with ``status: deprecated``, ``deprecated_on`` and ``sunset_on``: until
``sunset_on`` (the last day) it is built, published, readable and granted as before. From the
next day it is past its sunset: no longer published, and every read is refused naming its
successor (the newest major of the same product, which the registry records on each
descriptor). ``mesh retire`` then drops its table and files and records the retirement here, in
``<state>/lifecycle/retirements.json``: who, when, why and the last snapshot, shown by ``mesh
products`` and ``mesh describe`` ever after.

A product table in the catalog that no descriptor declares (a removed descriptor, a major bumped
in place, a domain gone) is an *orphan*: :func:`find_orphans` reports them for ``mesh check``
and ``mesh maintain``, with the fix (retire it, or restore its descriptor).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mesh_platform.addressing import PLATFORM_NAMESPACE, ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import MeshError, catalog_unavailable
from mesh_platform.files import write_atomically
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.storage.catalog import open_catalog


def past_sunset(descriptor: ProductDescriptor, today: dt.date | None = None) -> bool:
    """Whether a deprecated version's last day (``sunset_on``) is behind us."""
    body = descriptor.body
    today = today or dt.date.today()
    return body.status == "deprecated" and body.sunset_on is not None and today > body.sunset_on


def sunset_message(descriptor: ProductDescriptor) -> tuple[str, str]:
    """(what, fix) of a read of a product past its sunset, naming its successor."""
    body = descriptor.body
    what = (
        f"product {descriptor.address} (version {body.version}) reached its sunset on "
        f"{body.sunset_on.isoformat() if body.sunset_on else '?'}: it is no longer published "
        "or readable"
    )
    if descriptor.successor:
        fix = (
            f"read its successor {descriptor.successor} instead (`mesh describe "
            f"{descriptor.successor}` shows what changed)"
        )
    else:
        fix = (
            f"ask its owner, team {body.owner.team} ({body.owner.contact}), for its replacement; "
            f"no newer major of {descriptor.domain}.{descriptor.name} is declared"
        )
    return what, fix


def with_successors(found: Mapping[str, ProductDescriptor]) -> dict[str, ProductDescriptor]:
    """``found`` (one domain's descriptors) with each older major's ``successor``: the address
    of the newest major of the same product."""
    newest: dict[str, ProductDescriptor] = {}
    for d in found.values():
        if d.name not in newest or d.body.major > newest[d.name].body.major:
            newest[d.name] = d
    out = {}
    for key, d in found.items():
        latest = newest[d.name]
        if latest.body.major > d.body.major:
            d = d.model_copy(update={"successor": str(latest.address)})
        out[key] = d
    return out


# -- retirements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Retirement:
    """One retired product: who retired it, when, why, and what it last served."""

    address: str
    retired_by: str
    started_at: str  # ISO time the retirement was recorded (before anything was dropped)
    reason: str
    forced: bool
    last_snapshot_id: int | None
    table_location: str | None  # the table's folder, removed with everything in it
    version: str | None = None
    successor: str | None = None
    finished_at: str | None = None  # None: dropping is not finished (a rerun finishes it)
    consumers: list[str] = field(default_factory=list)  # what a forced retirement overrode

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


def retirements_file(mesh: Mesh) -> Path:
    return mesh.state_dir / "lifecycle" / "retirements.json"


def load_retirements(mesh: Mesh) -> dict[str, Retirement]:
    """Every recorded retirement by address (finished or not)."""
    path = retirements_file(mesh)
    if not path.is_file():
        return {}
    return {k: Retirement(**v) for k, v in json.loads(path.read_text()).items()}


@contextlib.contextmanager
def _locked(mesh: Mesh) -> Iterator[dict[str, Any]]:
    path = retirements_file(mesh)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".retirements.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.is_file() else {}
        yield state
        write_atomically(path, json.dumps(state, indent=1, sort_keys=True), mode=0o600)


def record_retirement(mesh: Mesh, retirement: Retirement) -> None:
    """Write (or replace) the record of one retirement, atomically, under a file lock."""
    with _locked(mesh) as state:
        state[retirement.address] = asdict(retirement)


# -- orphans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrphanTable:
    """A product table in the catalog that no descriptor declares any more."""

    namespace: str
    table: str
    why: str

    @property
    def address(self) -> str:
        return f"{self.namespace}.{self.table}"

    @property
    def fix(self) -> str:
        return (
            f"`mesh retire {self.address} --reason <why>` drops it (add --force if domains still "
            "consume it), or restore its descriptor"
        )


def orphan_tables(
    tables: Iterable[tuple[str, str]],
    descriptors: Mapping[str, ProductDescriptor],
    problems: Mapping[str, str],
    domains: Iterable[str],
) -> list[OrphanTable]:
    """The catalog's ``(namespace, table)`` pairs that no descriptor declares. A domain whose
    files cannot be loaded, or a product whose descriptor is invalid, declares nothing the
    registry could read: its tables are not called orphans (its own error says why)."""
    known = set(domains)
    found = []
    for namespace, table in sorted(tables):
        address = f"{namespace}.{table}"
        if namespace == PLATFORM_NAMESPACE or address in descriptors:
            continue
        if f"{namespace}.*" in problems or address in problems:
            continue
        base = ProductAddress.parse(address) if _parsable(address) else None
        if base is not None and f"{namespace}.{base.product}" in problems:
            continue
        if namespace not in known:
            why = f"domain {namespace} is not in the mesh any more"
        elif base is not None and any(
            d.domain == namespace and d.name == base.product for d in descriptors.values()
        ):
            majors = sorted(
                str(d.address)
                for d in descriptors.values()
                if d.domain == namespace and d.name == base.product
            )
            why = (
                f"major {base.major} of {namespace}.{base.product} is not declared any more "
                f"(declared: {', '.join(majors)}); keep an old major as a dbt model version "
                "until its sunset"
            )
        else:
            why = f"no descriptor of domain {namespace} declares {table}"
        found.append(OrphanTable(namespace, table, why))
    return found


def catalog_tables(mesh: Mesh) -> list[tuple[str, str]]:
    """Every (namespace, table) of the mesh's Iceberg catalog. A sqlite catalog is read
    directly, read-only (no pyiceberg import for `mesh check`; a mesh never built has none)."""
    uri = mesh.catalog_uri
    if not uri.startswith("sqlite:///"):
        catalog = open_catalog(mesh)
        try:
            return sorted(
                (ns[0], ident[-1])
                for ns in catalog.list_namespaces()
                for ident in catalog.list_tables(ns)
            )
        finally:
            catalog.engine.dispose()
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
            rows = c.execute(
                "SELECT table_namespace, table_name FROM iceberg_tables WHERE catalog_name = ?",
                (mesh.settings.catalog.name,),
            ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # created, nothing ever published
            return []
        raise catalog_unavailable(uri, exc, state_dir=mesh.state_dir) from exc
    return sorted((str(ns), str(table)) for ns, table in rows)


def find_orphans(
    mesh: Mesh, descriptors: Mapping[str, ProductDescriptor], problems: Mapping[str, str]
) -> list[OrphanTable]:
    """The catalog's product tables that no descriptor of the mesh declares (``descriptors``
    and ``problems``: the registry's, :class:`~mesh_platform.products.registry.Directory`)."""
    return orphan_tables(catalog_tables(mesh), descriptors, problems, list_domain_names(mesh))


def _parsable(address: str) -> bool:
    try:
        ProductAddress.parse(address)
    except MeshError:
        return False
    return True


def publication_stops(
    mesh: Mesh, descriptors: Iterable[ProductDescriptor], today: dt.date | None = None
) -> dict[str, str]:
    """Address -> why it is not published any more: retired (its table would come back), or a
    deprecated version past its sunset. The others are published as usual."""
    retired = load_retirements(mesh)
    stops = {}
    for d in descriptors:
        key = str(d.address)
        if (done := retired.get(key)) is not None:
            stops[key] = (
                f"retired on {done.started_at[:10]} by {done.retired_by} ({done.reason}); "
                f"remove its descriptor from {d.source_file}"
            )
        elif past_sunset(d, today):
            stops[key] = (
                f"version {d.body.version} reached its sunset on {d.body.sunset_on}; remove it "
                f"from {d.source_file} and `mesh retire {key} --reason <why>`"
            )
    return stops


def replaced_in_place(
    mesh: Mesh, descriptors: Iterable[ProductDescriptor], declared: Mapping[str, ProductDescriptor]
) -> dict[str, str]:
    """Address -> why its first publication is refused: a new major whose older major is
    still published but declared by no descriptor any more (the major was raised in the one
    descriptor instead of added as a model version), and not retired. Publishing it would leave
    the old major's consumers and grantees with a table nobody builds, grants or retires.
    ``declared``: every descriptor of the mesh (the registry's)."""
    fresh = [d for d in descriptors if d.body.major > 1]
    if not fresh:
        return {}
    try:
        tables = {f"{ns}.{t}" for ns, t in catalog_tables(mesh)}
    except MeshError:  # the catalog cannot be read: the publication that follows fails on it
        return {}
    retired = load_retirements(mesh)
    refused = {}
    for d in fresh:
        if str(d.address) in tables:
            continue  # published before: this is not the bump
        majors = (str(ProductAddress(d.domain, d.name, m)) for m in range(1, d.body.major))
        older = [a for a in majors if a in tables and a not in declared and a not in retired]
        if older:
            old = older[-1]
            m = ProductAddress.parse(old).major
            refused[str(d.address)] = (
                f"major {d.body.major} would replace {old} in place: {old} is still published "
                f"but no descriptor declares it any more, so its consumers and grantees would "
                f"lose it at once. Keep major {m} beside the new one as a dbt model version "
                f"(`versions: [{{v: {m}, config: {{meta: {{mesh: {{version: '{m}.x.y', status: "
                f"deprecated, deprecated_on: ..., sunset_on: ...}}}}}}}}, {{v: {d.body.major}}}]` "
                f"in {d.source_file}) until its sunset, or retire it first: `mesh retire {old} "
                "--reason <why>`"
            )
    return refused
