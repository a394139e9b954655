"""Consistent cuts: a consumer reads all inputs of one producer as one run of it left them.

A producer publishes its products one after another, each with its own Iceberg commit. Between
two of those commits (or after a crash between them) the producer's products come from two
different runs: orders of today beside customers of yesterday. A consumer that read each
product's current main could mix them and publish wrong figures with every check green.

So each producer run, once its publication step is over, writes a *cut marker*: one small JSON
file per step in the warehouse, ``<warehouse>/<domain>/_mesh_cuts/<run id>/<step>.json``,
listing the snapshot each product has after the run (published or unchanged) and the products
the run did not publish (blocked by the gate, failed). Written aside and renamed (local) or put
in one request (object store), a marker is all there or absent.

The rule (docs/architecture.md, "Consistent cuts"): a consumer takes, for each producer, the
newest run whose markers name every product it consumes from that producer, and reads exactly
those snapshots. A producer run that published only part of them (blocked, crashed, a partial
selection) is visible as such in its marker, and consumers use the previous complete cut until
the producer completes one. A producer with no marker at all (products published by tools, not
by runs) is read at its current main.

Maintenance never expires a snapshot the newest cuts name (``protected_snapshots``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import MeshError
from mesh_platform.files import write_atomically
from mesh_platform.storage import warehouse

if TYPE_CHECKING:
    from mesh_platform.config import Mesh

CUTS_FOLDER = "_mesh_cuts"  # not a product name: products start with a letter
KEEP_RUNS = 50  # markers of older runs are pruned (but see _keep)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Cut:
    """What one producer run left published: the union of its steps' markers."""

    domain: str
    run_id: str
    at: dt.datetime  # when its last step's marker was written
    products: dict[str, int]  # address -> main's snapshot after the run
    not_published: dict[str, str] = field(default_factory=dict)  # address -> why

    def holds(self, addresses: Collection[str]) -> bool:
        return all(a in self.products for a in addresses)


def cuts_folder(mesh: Mesh, domain: str) -> str:
    return warehouse.join(mesh.warehouse, domain, CUTS_FOLDER)


def record_cut(
    mesh: Mesh,
    domain: str,
    run_id: str,
    step: str,
    published: Mapping[str, int],
    not_published: Mapping[str, str] | None = None,
    *,
    at: dt.datetime | None = None,
) -> str:
    """Write one step's marker of run ``run_id`` of ``domain``; returns its location.

    ``published``: address -> snapshot of every product this step left on main (published
    now, or unchanged); ``not_published``: address -> why (blocked, failed)."""
    entry = {
        "domain": domain,
        "run_id": run_id,
        "step": step,
        "at": (at or dt.datetime.now(dt.UTC)).isoformat(),
        "products": {a: int(s) for a, s in sorted(published.items())},
        "not_published": dict(sorted((not_published or {}).items())),
    }
    data = json.dumps(entry, sort_keys=True).encode()
    location = warehouse.join(
        cuts_folder(mesh, domain), _SAFE.sub("-", run_id), f"{_SAFE.sub('-', step)}.json"
    )
    if warehouse.is_remote(location):
        properties = warehouse.s3_properties(mesh)
        key = location.split("://", 1)[1]
        with warehouse.arrow_filesystem(properties).open_output_stream(key) as stream:
            stream.write(data)  # one PUT: the object exists whole or not at all
    else:
        path = warehouse.local_path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: readers see the old state or the whole marker
        write_atomically(path, data, mode=0o600)
    _prune(mesh, domain)
    return location


def load_cuts(mesh: Mesh, domain: str) -> list[Cut]:
    """The recorded cuts of ``domain``, newest first. Unreadable markers are skipped (a marker
    is written whole or not at all: an unreadable one is damage, and a cut without it is
    incomplete, which is the safe reading)."""
    properties = warehouse.s3_properties(mesh) if warehouse.is_remote(mesh.warehouse) else {}
    by_run: dict[str, list[dict[str, Any]]] = {}
    for location, _ in warehouse.list_files(cuts_folder(mesh, domain), properties):
        # A marker being written is a temporary file (files.write_atomically: no .json suffix);
        # ".tmp-*.json" are those of older versions, left by a killed write: never markers.
        if not location.endswith(".json") or "/.tmp-" in location:
            continue
        try:
            entry = json.loads(warehouse.read_bytes(location, properties))
            if entry.get("domain") != domain or not isinstance(entry.get("products"), dict):
                continue
            by_run.setdefault(str(entry["run_id"]), []).append(entry)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    cuts = []
    for run_id, entries in by_run.items():
        products: dict[str, int] = {}
        not_published: dict[str, str] = {}
        for entry in sorted(entries, key=lambda e: e["at"]):
            for address, snapshot in entry["products"].items():
                if ProductAddress.parse(address).domain == domain:  # a marker names its own
                    products[address] = int(snapshot)
                    not_published.pop(address, None)
            for address, why in entry.get("not_published", {}).items():
                if address not in products:
                    not_published[address] = str(why)
        at = max(dt.datetime.fromisoformat(e["at"]) for e in entries)
        cuts.append(Cut(domain, run_id, at, products, not_published))
    return sorted(cuts, key=lambda c: c.at, reverse=True)


def _keep(cuts: list[Cut]) -> set[str]:
    """Runs whose markers stay: the newest KEEP_RUNS, and for each product the newest run that
    names it (a product blocked for many runs keeps its last good cut)."""
    keep = {c.run_id for c in cuts[:KEEP_RUNS]}
    seen: set[str] = set()
    for cut in cuts:
        if new := set(cut.products) - seen:
            keep.add(cut.run_id)
            seen |= new
    return keep


def _prune(mesh: Mesh, domain: str) -> None:
    properties = warehouse.s3_properties(mesh) if warehouse.is_remote(mesh.warehouse) else {}
    files = warehouse.list_files(cuts_folder(mesh, domain), properties)
    runs = {location.rsplit("/", 2)[-2] for location, _ in files}
    if len(runs) <= KEEP_RUNS:
        return  # the common case: no marker is read
    keep = {_SAFE.sub("-", r) for r in _keep(load_cuts(mesh, domain))}
    for location, _ in files:
        if location.rsplit("/", 2)[-2] not in keep:
            warehouse.delete(location, properties)
    if not warehouse.is_remote(mesh.warehouse):
        for folder in warehouse.local_path(cuts_folder(mesh, domain)).iterdir():
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def protected_snapshots(cuts: Iterable[Cut]) -> dict[str, set[int]]:
    """address -> snapshots maintenance must keep: every snapshot of the cuts a consumer may
    still choose. The newest cut naming every product of the domain is a candidate for any set
    of inputs, so no consumer goes further back: keep it and all newer cuts. If no cut names
    them all, keep every recorded cut (pruning bounds them)."""
    cuts = list(cuts)  # newest first (load_cuts)
    everything = {a for c in cuts for a in c.products}
    newest_full = next((i for i, c in enumerate(cuts) if set(c.products) >= everything), None)
    kept = cuts if newest_full is None else cuts[: newest_full + 1]
    protected: dict[str, set[int]] = {}
    for cut in kept:
        for address, snapshot in cut.products.items():
            protected.setdefault(address, set()).add(snapshot)
    return protected


@dataclass(frozen=True)
class Pinned:
    """The snapshots a consumer reads of one producer, and the cut they come from."""

    domain: str
    snapshots: dict[str, int]
    run_id: str | None  # None: the producer records no cut (read at main)
    skipped: tuple[str, ...] = ()  # newer runs passed over: why each was not complete


def consistent_snapshots(
    mesh: Mesh,
    addresses: Iterable[ProductAddress],
    exists: Any = None,
) -> dict[str, Pinned]:
    """producer domain -> the cut a consumer of ``addresses`` reads (see the module's rule).

    ``exists(address, snapshot_id) -> bool``: whether the snapshot can still be read (a cut
    whose snapshot maintenance expired is passed over). Raises MeshError when a producer has
    cuts but none holds every product wanted from it."""
    wanted: dict[str, set[str]] = {}
    for address in addresses:
        wanted.setdefault(address.domain, set()).add(str(address))
    pinned = {}
    for domain, products in sorted(wanted.items()):
        cuts = load_cuts(mesh, domain)
        if not cuts:
            pinned[domain] = Pinned(domain, {}, None)
            continue
        skipped = []
        for cut in cuts:
            missing = sorted(products - set(cut.products))
            if missing:
                why = "; ".join(
                    f"{a}: {cut.not_published.get(a, 'not in this run')}" for a in missing
                )
                skipped.append(f"run {cut.run_id} ({cut.at:%Y-%m-%d %H:%M}): {why[:300]}")
                continue
            gone = [a for a in sorted(products) if exists and not exists(a, cut.products[a])]
            if gone:
                skipped.append(f"run {cut.run_id}: snapshot of {', '.join(gone)} expired")
                continue
            chosen = {a: cut.products[a] for a in sorted(products)}
            pinned[domain] = Pinned(domain, chosen, cut.run_id, tuple(skipped))
            break
        else:
            raise MeshError(
                f"no consistent cut of domain {domain} holds {', '.join(sorted(products))}: "
                f"none of its {len(cuts)} recorded run(s) published all of them"
                + (f" (newest: {skipped[0]})" if skipped else ""),
                fix=f"run the producer (`mesh build --domain {domain}`) until its products pass "
                "their gates in one run; see docs/operations.md, 'A consumer waits for a "
                "complete cut'",
            )
    return pinned


def pinned_inputs(
    mesh: Mesh, session: Any, addresses: tuple[ProductAddress, ...]
) -> dict[str, Any]:
    """producer domain -> the consistent cut (products.cuts) a consumer of ``addresses`` reads,
    passing over cuts whose snapshots are no longer on main's history. A catalog or metadata
    error is raised, never read as an expired snapshot."""

    def readable(address: str, snapshot_id: int) -> bool:
        state = session.catalog.table_state(ProductAddress.parse(address))
        return any(s.snapshot_id == snapshot_id for s in state.main_history)

    pinned = consistent_snapshots(mesh, addresses, exists=readable)
    for domain, cut in pinned.items():
        if cut.run_id is not None:
            continue
        # No marker at all: fine for products published by tools; but a product a run
        # published (its snapshot names the run) means the markers were lost or cannot be
        # listed, and reading main could mix runs: stop.
        for address in (a for a in addresses if a.domain == domain):
            current = session.catalog.table_state(address).current
            if current is not None and (current.summary or {}).get("mesh.run_id"):
                raise MeshError(
                    f"{address} was published by run {current.summary['mesh.run_id']} of "
                    f"domain {domain}, but no cut marker of that domain can be read in "
                    f"{cuts_folder(mesh, domain)}: its products cannot be read as one cut",
                    fix=f"run the producer again (`mesh build --domain {domain}`): its run "
                    "writes the marker; check that the warehouse folder is readable",
                )
    return pinned
