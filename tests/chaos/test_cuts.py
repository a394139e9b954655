"""Faults 4 and 6 of issue 14: a producer killed between its products' commits.

`mesh build --domain sales` is SIGKILLed right after its first product's Iceberg commit (the
test watches the catalog): that product's main is at the dead run's snapshot, the others are
not, and Dagster never heard of the commit. Then:

- a consumer (marketing) reads every sales input from one cut: the previous complete run's,
  never the dead run's orders beside the old run's customers (fault 4, torn cut);
- the platform acknowledges the dead run's commit exactly once: a materialisation carrying the
  snapshot, the history row, and the consumer's sensor requests a run for it (fault 6);
- the next builds recover with no manual step, and marketing's products equal a fresh build's.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from mesh_platform.assets.acknowledge import ACKNOWLEDGED_LATE, acknowledge_committed
from mesh_platform.assets.keys import product_key
from mesh_platform.config import Mesh
from mesh_platform.products.cuts import load_cuts
from mesh_platform.testing import (
    MESH,
    SF,
    build_sample_mesh,
    published_content,
    run_mesh,
    user_env,
)

pytestmark = pytest.mark.e2e  # module-scoped builds of the sample mesh

SALES = ("sales.customers", "sales.order_lines", "sales.orders")
MARKETING = (
    "marketing.customer_segments",
    "marketing.late_delivery_impact",
    "marketing.revenue_by_nation_segment",
    "marketing.segment_summary",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    return build_sample_mesh(tmp_path_factory.mktemp("cuts") / "mesh")


def _heads(mesh: Mesh) -> dict[str, int | None]:
    """product -> main's snapshot id, read from the catalog pointer and the metadata file it
    names, as any client would (a moved pointer alone may be a branch or schema commit)."""
    from mesh_platform.storage.warehouse import local_path

    db = mesh.state_dir / "catalog" / "catalog.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute(
            "SELECT table_namespace, table_name, metadata_location FROM iceberg_tables"
        ).fetchall()
    heads = {}
    for namespace, name, location in rows:
        if f"{namespace}.{name}" in SALES:
            metadata = json.loads(local_path(location).read_text())
            heads[f"{namespace}.{name}"] = metadata.get("current-snapshot-id")
    return heads


def _main_snapshots(mesh: Mesh) -> dict[str, int]:
    from mesh_platform.addressing import ProductAddress
    from mesh_platform.storage.metadata import Catalog

    catalog = Catalog(mesh)
    return {a: catalog.table_state(ProductAddress.parse(a)).current.snapshot_id for a in SALES}


def _kill_after_first_commit(mesh: Mesh) -> tuple[str, str]:
    """Start `mesh build --domain sales`, SIGKILL it (and its process group) as soon as one
    sales product's pointer moves; returns (that product, the dead run's id)."""
    before = _heads(mesh)
    proc = subprocess.Popen(
        [MESH, "--root", str(mesh.root), "build", "--domain", "sales", "--scale", str(SF)],
        env=user_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    moved: list[str] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            heads = _heads(mesh)
            moved = [a for a in SALES if heads.get(a) != before.get(a)]
            if moved:
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(moved) == 1, f"expected one product committed at the kill, got {moved}"
    from mesh_platform.addressing import ProductAddress
    from mesh_platform.storage.metadata import Catalog

    snapshot = Catalog(mesh).table_state(ProductAddress.parse(moved[0])).current
    return moved[0], snapshot.summary["mesh.run_id"]


def _instance(mesh: Mesh) -> dg.DagsterInstance:
    from mesh_platform.instance import get_instance

    return get_instance(mesh)


def _inputs_of_last_run(instance: dg.DagsterInstance, address: str) -> dict[str, int]:
    from mesh_platform.addressing import ProductAddress

    key = product_key(ProductAddress.parse(address))
    record = instance.fetch_materializations(key, limit=1).records[0]
    return {
        a: int(s) for a, s in record.asset_materialization.metadata["mesh/inputs"].value.items()
    }


def test_a_killed_producer_is_neither_mixed_nor_forgotten(
    built: Mesh, reference_mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut_before = load_cuts(built, "sales")[0]
    assert cut_before.holds(SALES)
    before = _main_snapshots(built)
    assert before == {a: cut_before.products[a] for a in SALES}

    product, dead_run = _kill_after_first_commit(built)
    after_kill = _main_snapshots(built)
    assert after_kill[product] != before[product]  # the dead run's commit is on main
    assert all(after_kill[a] == before[a] for a in SALES if a != product)  # the torn state
    assert load_cuts(built, "sales")[0].run_id == cut_before.run_id  # no cut for the dead run

    # Fault 4: the consumer reads the previous complete cut, not the torn state.
    result = run_mesh(built.root, "build", "--domain", "marketing", "--scale", str(SF))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    instance = _instance(built)
    staged = _inputs_of_last_run(instance, "marketing.revenue_by_nation_segment")
    assert {a: s for a, s in staged.items() if a.startswith("sales.")} == before

    # Fault 6: the dead run's commit is acknowledged exactly once, and the sensor fires on it.
    from mesh_platform.addressing import ProductAddress
    from mesh_platform.workspace import check_workspace, load_location

    monkeypatch.chdir(built.root)
    location = next(loc for loc in check_workspace(built) if loc.name == "marketing")
    sensor = load_location(built, location).get_sensor_def("marketing_on_inputs_published")
    first = sensor(dg.build_sensor_context(instance=instance))  # remembers where inputs are
    cursor = first.cursor
    key = product_key(ProductAddress.parse(product))
    assert dead_run not in {
        r.asset_materialization.metadata.get("mesh/batch_id", dg.TextMetadataValue("")).value
        for r in instance.fetch_materializations(key, limit=20).records
    }
    acknowledged = acknowledge_committed(instance, built, "sales", dg.get_dagster_logger())
    assert [(str(a.address), a.snapshot_id, a.run_id) for a in acknowledged] == [
        (product, after_kill[product], dead_run)
    ]
    assert acknowledge_committed(instance, built, "sales", dg.get_dagster_logger()) == []
    late = [
        r.asset_materialization
        for r in instance.fetch_materializations(key, limit=20).records
        if r.asset_materialization.metadata.get(ACKNOWLEDGED_LATE)
    ]
    assert len(late) == 1
    assert late[0].metadata["mesh/iceberg_snapshot_id"].value == str(after_kill[product])
    fired = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    requests = fired.run_requests or []
    assert [r.run_key for r in requests] == [f"{key.to_user_string()}@{after_kill[product]}"]

    from mesh_platform.sla.history import read_history

    rows = [r for r in read_history(built).to_pylist() if r["run_id"] == dead_run]
    assert [(r["address"], r["snapshot_id"]) for r in rows] == [(product, after_kill[product])]

    # Recovery: the next builds need no manual step and equal a fresh build of the sources.
    for domain in ("sales", "marketing"):
        result = run_mesh(built.root, "build", "--domain", domain, "--scale", str(SF))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    newest = load_cuts(built, "sales")[0]
    assert newest.holds(SALES) and newest.run_id not in (cut_before.run_id, dead_run)
    staged = _inputs_of_last_run(instance, "marketing.revenue_by_nation_segment")
    assert {a: s for a, s in staged.items() if a.startswith("sales.")} == newest.products
    for address in MARKETING:
        assert published_content(built, address) == published_content(reference_mesh, address), (
            address
        )
    late_after = [
        r
        for r in instance.fetch_materializations(key, limit=50).records
        if r.asset_materialization.metadata.get(ACKNOWLEDGED_LATE)
    ]
    assert len(late_after) == 1  # the next run did not acknowledge it a second time


def test_cut_markers_are_files_any_reader_can_check(built: Mesh) -> None:
    """The marker is plain JSON beside the domain's tables, one per run and step."""
    folder = Path(built.state_dir / "warehouse" / "sales" / "_mesh_cuts")
    markers = sorted(folder.glob("*/*.json"))
    assert markers
    entry = json.loads(markers[-1].read_text())
    assert entry["domain"] == "sales" and set(entry) >= {"run_id", "products", "at"}
