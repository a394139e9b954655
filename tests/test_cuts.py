"""Consistent cuts (mesh_platform/products/cuts.py): the rule a consumer reads producers by."""

from __future__ import annotations

import datetime as dt

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.products import cuts
from mesh_platform.products.cuts import (
    consistent_snapshots,
    load_cuts,
    protected_snapshots,
    record_cut,
)

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
ORDERS, CUSTOMERS = "sales.orders", "sales.customers"
BOTH = [ProductAddress.parse(ORDERS), ProductAddress.parse(CUSTOMERS)]


def _at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def test_a_run_is_the_union_of_its_steps(mesh: Mesh) -> None:
    record_cut(mesh, "sales", "r1", "dbt", {ORDERS: 1}, {CUSTOMERS: "blocked"}, at=_at(0))
    record_cut(mesh, "sales", "r1", "python-x", {CUSTOMERS: 2}, at=_at(1))
    (cut,) = load_cuts(mesh, "sales")
    assert cut.products == {ORDERS: 1, CUSTOMERS: 2}
    assert cut.not_published == {}
    assert cut.at == _at(1)


def test_a_consumer_takes_the_newest_run_holding_all_it_reads(mesh: Mesh) -> None:
    record_cut(mesh, "sales", "r1", "dbt", {ORDERS: 1, CUSTOMERS: 10}, at=_at(0))
    # r2 published orders, then its customers were blocked: a torn run
    record_cut(mesh, "sales", "r2", "dbt", {ORDERS: 2}, {CUSTOMERS: "blocked: pii"}, at=_at(5))
    pinned = consistent_snapshots(mesh, BOTH)["sales"]
    assert (pinned.run_id, pinned.snapshots) == ("r1", {ORDERS: 1, CUSTOMERS: 10})
    assert "r2" in pinned.skipped[0] and "blocked: pii" in pinned.skipped[0]
    # who reads only orders takes r2's
    only_orders = consistent_snapshots(mesh, BOTH[:1])["sales"]
    assert (only_orders.run_id, only_orders.snapshots) == ("r2", {ORDERS: 2})


def test_expired_snapshots_pass_a_cut_over(mesh: Mesh) -> None:
    record_cut(mesh, "sales", "r1", "dbt", {ORDERS: 1, CUSTOMERS: 10}, at=_at(0))
    record_cut(mesh, "sales", "r2", "dbt", {ORDERS: 2, CUSTOMERS: 20}, at=_at(5))
    pinned = consistent_snapshots(mesh, BOTH, exists=lambda a, s: s != 20)["sales"]
    assert pinned.run_id == "r1"


def test_no_complete_cut_fails_closed_naming_the_fix(mesh: Mesh) -> None:
    record_cut(mesh, "sales", "r1", "dbt", {ORDERS: 1}, {CUSTOMERS: "failed"}, at=_at(0))
    with pytest.raises(MeshError) as err:
        consistent_snapshots(mesh, BOTH)
    assert "sales.customers" in err.value.what and "failed" in err.value.what
    assert "mesh build --domain sales" in err.value.fix


def test_a_producer_without_markers_is_read_at_main(mesh: Mesh) -> None:
    pinned = consistent_snapshots(mesh, BOTH)["sales"]
    assert pinned.run_id is None and pinned.snapshots == {}


def test_markers_of_another_domain_or_half_written_are_ignored(mesh: Mesh) -> None:
    record_cut(mesh, "sales", "r1", "dbt", {ORDERS: 1, CUSTOMERS: 10}, at=_at(0))
    folder = mesh.state_dir / "warehouse" / "sales" / cuts.CUTS_FOLDER
    (folder / "r9").mkdir()
    (folder / "r9" / "dbt.json").write_text('{"domain": "sales", "run_id": "r9", "produ')
    (folder / "r9" / ".tmp-x.json").write_text("{}")
    record_cut(mesh, "marketing", "m1", "dbt", {"marketing.x": 5}, at=_at(9))
    moved = folder.parent.parent / "marketing" / cuts.CUTS_FOLDER / "m1" / "dbt.json"
    (folder / "m1").mkdir()
    (folder / "m1" / "dbt.json").write_text(moved.read_text())  # claims another domain
    assert [c.run_id for c in load_cuts(mesh, "sales")] == ["r1"]


def test_pruning_keeps_the_newest_runs_and_each_products_last_good_cut(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cuts, "KEEP_RUNS", 3)
    record_cut(mesh, "sales", "r0", "dbt", {ORDERS: 1, CUSTOMERS: 10}, at=_at(0))
    for i in range(1, 6):  # customers blocked in every later run
        record_cut(mesh, "sales", f"r{i}", "dbt", {ORDERS: 1 + i}, {CUSTOMERS: "x"}, at=_at(i))
    assert [c.run_id for c in load_cuts(mesh, "sales")] == ["r5", "r4", "r3", "r0"]
    assert consistent_snapshots(mesh, BOTH)["sales"].run_id == "r0"
    protected = protected_snapshots(load_cuts(mesh, "sales"))
    # r0 is the newest cut naming every product: it and every newer one stay readable
    assert protected == {CUSTOMERS: {10}, ORDERS: {1, 4, 5, 6}}


def test_protection_covers_whatever_set_a_consumer_reads(mesh: Mesh) -> None:
    a, b, c, d = (f"sales.p{i}" for i in range(4))
    record_cut(mesh, "sales", "r1", "dbt", {a: 1, b: 1, c: 1, d: 1}, at=_at(1))
    record_cut(mesh, "sales", "r2", "dbt", {c: 2, d: 2}, at=_at(2))
    record_cut(mesh, "sales", "r3", "dbt", {a: 3, b: 3}, at=_at(3))
    record_cut(mesh, "sales", "r4", "dbt", {b: 4, d: 4}, at=_at(4))
    record_cut(mesh, "sales", "r5", "dbt", {a: 5, c: 5}, at=_at(5))
    protected = protected_snapshots(load_cuts(mesh, "sales"))
    for wanted in ({a, b}, {c, d}, {a, d}, {b, c}, {a, b, c, d}):
        addresses = [ProductAddress.parse(x) for x in wanted]
        chosen = consistent_snapshots(mesh, addresses)["sales"].snapshots
        assert all(s in protected[x] for x, s in chosen.items()), wanted
