"""What the mesh knows about each product, gathered for people: one record per product.

Every discovery surface reads these records: ``mesh products``, ``mesh describe``, the static
HTML catalog (``mesh catalog``) and the open-standard exports (``mesh export``). A record joins
the product's descriptor (purpose, owner, schema, classification, SLA, grants, version) with
what happened to it:

- Iceberg: the published snapshot, its time and row count, main's snapshot history;
- Dagster: the latest result of each of its checks (the gate's and dbt's);
- lineage across domains: the products it is built from (dbt sources bound to other domains,
  refs to the domain's own products, a Python product's declared inputs) and those built from
  it.

Reading never builds anything and never fails on a product that was not published yet: the
record says so. A product whose table cannot be read (corrupt or missing metadata) is an error
naming it, its file and the fix, never "not published"; ``mesh products`` lists the others and
records the problem (``keep_unreadable``). A catalog that cannot be read fails every record.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.checks import check_specs
from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import input_domain, is_product
from mesh_platform.dbt.project import load_manifest
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import CatalogUnavailableError, MeshError, ProductNotPublishedError
from mesh_platform.instance import get_instance
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.inventory import python_inputs
from mesh_platform.products.registry import Directory, UnknownProductError, load_directory
from mesh_platform.storage.metadata import Catalog


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: int
    published_at: str  # ISO time, UTC
    rows: int | None
    batch_id: str | None


@dataclass(frozen=True)
class CheckInfo:
    name: str
    status: str  # passed | failed | warning | not run
    at: str | None = None  # ISO time of the evaluation


@dataclass
class ProductRecord:
    address: str
    urn: str
    domain: str
    name: str
    descriptor: ProductDescriptor
    current: SnapshotInfo | None = None
    history: list[SnapshotInfo] = field(default_factory=list)
    checks: list[CheckInfo] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)
    downstream: list[str] = field(default_factory=list)
    problem: MeshError | None = None  # its table could not be read (keep_unreadable)

    @property
    def published(self) -> bool:
        return self.current is not None

    @property
    def check_status(self) -> str:
        """failed if any blocking check failed last time, else warning, passed or not run."""
        statuses = {c.status for c in self.checks}
        for status in ("failed", "warning", "passed"):
            if status in statuses:
                return status
        return "not run"

    def freshness(self, now: dt.datetime | None = None) -> tuple[str, str]:
        """('holds' | 'violated' | 'not published' | 'no freshness SLA', detail)."""
        sla = self.descriptor.body.sla.freshness
        if sla is None:
            return "no freshness SLA", ""
        if self.problem is not None:
            return "unknown", "its table could not be read"
        if self.current is None:
            return "not published", f"max age {sla.max_age}"
        now = now or dt.datetime.now(dt.UTC)
        age = now - dt.datetime.fromisoformat(self.current.published_at)
        hours = age.total_seconds() / 3600
        state = "holds" if age <= sla.timedelta else "violated"
        return state, f"published {hours:.1f} h ago, max age {sla.max_age}"

    def sla_status(self, now: dt.datetime | None = None) -> str:
        """holds | violated | not published: freshness within its window and no failed check."""
        fresh, _ = self.freshness(now)
        if self.problem is not None:
            return "unknown"
        if fresh == "not published":
            return "not published"
        if fresh == "violated" or self.check_status == "failed":
            return "violated"
        return "holds"

    def to_dict(self, now: dt.datetime | None = None) -> dict[str, Any]:
        d = self.descriptor
        fresh, detail = self.freshness(now)
        return {
            "address": self.address,
            "urn": self.urn,
            "domain": self.domain,
            "name": self.name,
            "description": d.description.strip(),
            "purpose": d.body.purpose,
            "owner": {"team": d.body.owner.team, "contact": d.body.owner.contact},
            "version": d.body.version,
            "status": d.body.status,
            "deprecated_on": d.body.deprecated_on.isoformat() if d.body.deprecated_on else None,
            "sunset_on": d.body.sunset_on.isoformat() if d.body.sunset_on else None,
            "built_with": d.built_with,
            "source_file": d.source_file,
            "tags": list(d.body.tags),
            "columns": [
                {
                    "name": c.name,
                    "type": c.data_type,
                    "description": c.description,
                    "classification": c.classification,
                    "masking": c.masking,
                    "masking_at": c.masking_at if c.masking else None,
                }
                for c in d.columns
            ],
            "sla": {
                "freshness": d.body.sla.freshness.max_age if d.body.sla.freshness else None,
                "freshness_state": fresh,
                "freshness_detail": detail,
                "expectations": [e.label() for e in d.body.sla.expectations],
                "volume": d.body.sla.volume.model_dump(exclude_none=True)
                if d.body.sla.volume
                else None,
                "status": self.sla_status(now),
            },
            "grants": [
                {
                    "to": g.to,
                    "purpose": g.purpose,
                    "expires": g.expires.isoformat(),
                    "columns": g.columns,
                    "rows": g.rows,
                }
                for g in d.body.grants
            ],
            "partition_by": d.body.partition_by.model_dump() if d.body.partition_by else None,
            "published": self.current is not None,
            "current": asdict(self.current) if self.current else None,
            "history": [asdict(s) for s in self.history],
            "checks": [asdict(c) for c in self.checks],
            "check_status": self.check_status,
            "upstream": self.upstream,
            "downstream": self.downstream,
            "problem": None
            if self.problem is None
            else {"what": self.problem.what, "fix": self.problem.fix},
        }


def _snapshot_info(snapshot: Any) -> SnapshotInfo:
    summary = snapshot.summary
    rows = summary.get("total-records")
    return SnapshotInfo(
        snapshot.snapshot_id,
        dt.datetime.fromtimestamp(snapshot.timestamp_ms / 1000, dt.UTC).isoformat(
            timespec="seconds"
        ),
        int(rows) if rows is not None and str(rows).isdigit() else None,
        summary.get("mesh.batch_id"),
    )


def _lineage(mesh: Mesh, directory: Directory) -> dict[str, set[str]]:
    """address -> the product addresses it is built from."""

    upstream: dict[str, set[str]] = {a: set() for a in directory.descriptors}
    for name in list_domain_names(mesh):
        try:
            manifest = load_manifest(load_domain(mesh, name))
        except MeshError:
            continue
        nodes = {**manifest.get("nodes", {}), **manifest.get("sources", {})}
        addresses: dict[str, str] = {}
        for uid, node in nodes.items():
            if is_product(node):
                try:
                    addresses[uid] = str(descriptor_from_node(name, node).address)
                except MeshError:
                    continue
            elif producer := input_domain(node):
                addresses[uid] = f"{producer}.{node['name']}"
        for uid, address in addresses.items():
            if not is_product(nodes[uid]):
                continue
            seen: set[str] = set()
            todo = list((nodes[uid].get("depends_on") or {}).get("nodes") or [])
            while todo:
                dep = todo.pop()
                if dep in seen:
                    continue
                seen.add(dep)
                if dep in addresses:
                    upstream.setdefault(address, set()).add(addresses[dep])
                elif dep in nodes:  # a private model: look through it
                    todo.extend((nodes[dep].get("depends_on") or {}).get("nodes") or [])
    for address, inputs in python_inputs(mesh).items():
        upstream.setdefault(address, set()).update(inputs)
    return upstream


def _check_results(mesh: Mesh, records: Iterable[ProductRecord]) -> None:
    """Fill each record's latest check results from the Dagster instance (if it has runs)."""
    if not (mesh.dagster_home / "dagster.yaml").is_file():
        return
    import dagster as dg  # heavy: dagster (~1 s), kept off the import path of light commands

    records = list(records)
    keys = {
        dg.AssetCheckKey(spec.asset_key, spec.name): (record, spec)
        for record in records
        for spec in check_specs(record.descriptor, contract=True)
    }
    instance = get_instance(mesh)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(keys))
    for key, (record, spec) in keys.items():
        execution = latest.get(key)
        status, at = "not run", None
        if execution is not None and execution.event is not None:
            evaluation = getattr(execution.event.dagster_event, "event_specific_data", None)
            passed = getattr(evaluation, "passed", None)
            if passed is True:
                status = "passed"
            elif passed is False:
                severity = getattr(getattr(evaluation, "severity", None), "value", "ERROR")
                status = "warning" if severity == "WARN" else "failed"
            at = dt.datetime.fromtimestamp(execution.create_timestamp, dt.UTC).isoformat(
                timespec="seconds"
            )
        record.checks.append(CheckInfo(spec.name, status, at))


def product_records(
    mesh: Mesh,
    *,
    addresses: Iterable[str] | None = None,
    with_checks: bool = True,
    with_lineage: bool = True,
    keep_unreadable: bool = False,
) -> list[ProductRecord]:
    """Records of every product (or of ``addresses``), sorted by address.

    A product whose table cannot be read raises its error (UnreadableMetadataError...), or
    with ``keep_unreadable`` is recorded with it (``record.problem``) and the others are read.
    A catalog that cannot be read always raises (CatalogUnavailableError)."""
    directory = load_directory(mesh)
    wanted = sorted(directory.descriptors) if addresses is None else list(addresses)
    for address in wanted:
        if address not in directory.descriptors:
            directory.get(ProductAddress.parse(address))  # raises with the closest match
    catalog = Catalog(mesh)
    records = []
    try:
        for address in wanted:
            d = directory.descriptors[address]
            record = ProductRecord(address, d.address.urn, d.domain, d.address.table, d)
            try:
                state = catalog.table_state(d.address)
            except ProductNotPublishedError:
                state = None
            except CatalogUnavailableError:
                raise
            except MeshError as exc:  # this product's metadata: unreadable, outside its folder
                if not keep_unreadable:
                    raise
                record.problem, state = exc, None
            if state is not None:
                record.history = [_snapshot_info(s) for s in state.main_history]
                record.current = _snapshot_info(state.current) if state.current else None
            records.append(record)
    finally:
        catalog.close()
    if with_lineage:
        upstream = _lineage(mesh, directory)
        downstream: dict[str, set[str]] = {}
        for address, inputs in upstream.items():
            for source in inputs:
                downstream.setdefault(source, set()).add(address)
        for record in records:
            record.upstream = sorted(upstream.get(record.address, ()))
            record.downstream = sorted(downstream.get(record.address, ()))
    if with_checks:
        _check_results(mesh, records)
    return records


def find_record(mesh: Mesh, address: str) -> ProductRecord:
    """The record of one product; UnknownProductError suggests the closest addresses."""
    try:
        (record,) = product_records(mesh, addresses=[address])
    except UnknownProductError:
        raise
    return record


def search_text(record: ProductRecord) -> str:
    """What a search matches: address, description, purpose, owner, tags, columns."""
    d = record.descriptor
    parts: list[str] = [record.address, d.description, d.body.purpose, d.body.owner.team]
    parts += d.body.tags + [c.name for c in d.columns] + [c.description for c in d.columns]
    return " ".join(parts).lower()


def search(records: Iterable[ProductRecord], text: str) -> list[ProductRecord]:
    """Records whose address, purpose, description, owner, tags or columns mention ``text``
    (``mesh products --search``, and the HTML catalog's search box on the same text)."""
    needle = text.lower()
    return [r for r in records if needle in search_text(r)]
