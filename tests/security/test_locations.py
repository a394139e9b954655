"""Class 8, bad input from the catalog: every path the read path takes from a catalog row or a
table's metadata (the metadata file, the table's location, the manifest list, each manifest,
each data file) must lie in the table's warehouse folder ``<warehouse>/<domain>/<table>``.

Anything else (another domain's folder, /etc, a '..' path, a symlink out, a sibling folder that
merely shares the prefix, the warehouse root) is refused before it is read, through
``read_product``, ``mesh query`` and the storage layer alone. Tampering is done on the shared
``attacked_mesh``: new files beside the table's own, the catalog row pointed at them, and
everything put back in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.errors import MeshError
from mesh_platform.read import read_product
from mesh_platform.storage import warehouse
from mesh_platform.storage.metadata import Catalog
from mesh_platform.storage.warehouse import LocationError, contains, inside
from mesh_platform.testing import read_published, run_mesh

pytestmark = pytest.mark.e2e

ORDERS = ProductAddress("sales", "orders")
SHIPMENTS = ProductAddress("logistics", "shipments")
READER = "marketing"  # granted both sales.orders and logistics.shipments
FIX = "points outside its warehouse folder; republish it through the platform"
COUNT_ORDERS = "SELECT count(*) AS n FROM sales.orders"


# -- the containment rule alone (milliseconds) -------------------------------------------------


@pytest.mark.parametrize(
    ("location", "expected"),
    [("/w/sales/orders", True), ("/w/sales/orders/data/x.parquet", True),
     ("file:///w/sales/orders/metadata/v1.metadata.json", True),
     ("/w/sales/orders2/x.parquet", False), ("/w/sales/orders/../orders2/x", False),
     ("/w/sales", False), ("/etc/passwd", False), ("http://w/sales/orders/x", False),
     ("s3://w/sales/orders/x", False), ("", False)],
)  # fmt: skip
def test_local_locations_are_compared_by_resolved_components(location, expected):
    assert contains("file:///w/sales/orders", location) is expected


@pytest.mark.parametrize(
    ("location", "expected"),
    [("s3://b/w/sales/orders/data/x.parquet", True), ("s3://b/w/sales/orders/", True),
     ("s3://b/w/sales/orders2/x.parquet", False), ("s3://b/w/sales/orders/../../x", False),
     ("s3://b/w/sales/orders/./x", False), ("s3://b/w/sales/orders//x", False),
     ("s3://b/w/sales/orders/%2e%2e/x", False), ("s3://b/w/sales/orders/x?y=1", False),
     ("s3://other/w/sales/orders/x", False), ("s3a://b/w/sales/orders/x", False),
     ("/w/sales/orders/x", False)],
)  # fmt: skip
def test_object_store_locations_are_compared_by_key_components(location, expected):
    assert contains("s3://b/w/sales/orders", location) is expected


def test_a_symlink_cannot_lead_out_of_the_folder(tmp_path):
    folder, outside = tmp_path / "w" / "sales" / "orders", tmp_path / "secret"
    folder.mkdir(parents=True)
    outside.mkdir()
    (folder / "data").symlink_to(outside, target_is_directory=True)
    assert inside(str(folder), str(folder / "data" / "x.parquet")) is None
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    # both sides resolved: a warehouse reached through a symlink still contains its files
    assert inside(str(tmp_path / "link"), str(real / "x")) == str(real / "x")


def test_the_refusal_names_the_product_the_path_and_the_fix():
    with pytest.raises(LocationError) as err:
        warehouse.check_inside("/w/sales/orders", "/etc/passwd", product="sales.orders",
                               what="a data file")  # fmt: skip
    assert isinstance(err.value, MeshError)
    assert "sales.orders" in err.value.what and "'/etc/passwd'" in err.value.what
    assert FIX in err.value.fix and "mesh build --domain sales" in err.value.fix


# -- tampering with a built mesh -------------------------------------------------------------


def _local(location: str) -> str:
    return location.removeprefix("file://")


def _catalog_db(mesh: Mesh) -> str:
    return mesh.catalog_uri.removeprefix("sqlite:///")


def _metadata_location(mesh: Mesh, address: ProductAddress) -> str:
    with contextlib.closing(sqlite3.connect(_catalog_db(mesh))) as db:
        (location,) = db.execute(
            "SELECT metadata_location FROM iceberg_tables WHERE table_namespace = ? AND "
            "table_name = ?",
            address.iceberg_identifier,
        ).fetchone()
    return location


@contextlib.contextmanager
def _catalog_points_to(mesh: Mesh, address: ProductAddress, location: str) -> Iterator[None]:
    """The catalog row of ``address`` names ``location`` as its metadata file; put back after."""
    original = _metadata_location(mesh, address)
    sql = (
        "UPDATE iceberg_tables SET metadata_location = ? WHERE table_namespace = ? AND "
        "table_name = ?"
    )
    with contextlib.closing(sqlite3.connect(_catalog_db(mesh))) as db:
        db.execute(sql, (location, *address.iceberg_identifier))
        db.commit()
        try:
            yield
        finally:
            db.execute(sql, (original, *address.iceberg_identifier))
            db.commit()
    assert _metadata_location(mesh, address) == original


@contextlib.contextmanager
def _removed_after(*paths: Path) -> Iterator[None]:
    try:
        yield
    finally:
        for path in paths:
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)


def _current_metadata(mesh: Mesh, address: ProductAddress) -> Path:
    return Path(_local(_metadata_location(mesh, address)))


@contextlib.contextmanager
def _tampered(
    mesh: Mesh, address: ProductAddress, edit: Callable[[dict[str, Any]], None]
) -> Iterator[Path]:
    """A copy of the table's current metadata JSON, changed by ``edit``, written beside the
    original (inside the table's folder) with the catalog row pointing at it."""
    current = _current_metadata(mesh, address)
    meta = json.loads(current.read_text())
    edit(meta)
    target = current.parent / f"99999-{uuid.uuid4()}.metadata.json"
    target.write_text(json.dumps(meta))
    with _removed_after(target), _catalog_points_to(mesh, address, f"file://{target}"):
        yield target


def _current_snapshot(meta: dict[str, Any]) -> dict[str, Any]:
    head = meta["refs"]["main"]["snapshot-id"]
    return next(s for s in meta["snapshots"] if s["snapshot-id"] == head)


def _expect_refused(mesh: Mesh, *needles: str) -> None:
    """Refused through read_product (in process) and through `mesh query` (a new process)."""
    with pytest.raises(LocationError) as err:
        read_product(ORDERS, as_=READER, mesh=mesh)
    message = str(err.value)
    for needle in ("sales.orders", "outside the table's warehouse folder", FIX, *needles):
        assert needle in message, f"{needle!r} not in {message}"
    result = run_mesh(mesh.root, "query", "--as", READER, "--format", "csv", COUNT_ORDERS,
                      timeout=600)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    for needle in ("sales.orders", "outside the table's warehouse folder", FIX):
        assert needle in output, f"{needle!r} not in {output[-3000:]}"


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every metadata file the read path opens (warehouse.read_bytes), in order."""
    opened: list[str] = []
    real = warehouse.read_bytes

    def spy(location: str, properties: Any) -> bytes:
        opened.append(location)
        return real(location, properties)

    monkeypatch.setattr(warehouse, "read_bytes", spy)
    return opened


def _orders_rows(mesh: Mesh) -> int:
    return read_product(ORDERS, as_=READER, mesh=mesh).num_rows


def test_the_published_tables_pass_every_check(attacked_mesh):
    assert _orders_rows(attacked_mesh) > 0
    for address in (ORDERS, SHIPMENTS, ProductAddress("marketing", "segment_summary")):
        columns, rows = read_published(attacked_mesh, address)
        assert columns and rows > 0


def test_a_warehouse_reached_through_a_symlink_still_reads(attacked_mesh, tmp_path):
    """Locations are compared after resolving symlinks on both sides: a warehouse configured
    through a link reads the tables the catalog records under the real path."""
    link = tmp_path / "warehouse-link"
    link.symlink_to(_local(attacked_mesh.warehouse), target_is_directory=True)
    linked = load_mesh(attacked_mesh.root, catalog={"warehouse": f"file://{link}"})
    assert linked.warehouse == f"file://{link}"
    assert _orders_rows(linked) == _orders_rows(attacked_mesh)


# the catalog row: which metadata file


def _shipments_metadata(mesh: Mesh, tmp_path: Path) -> tuple[str, list[Path]]:
    return f"file://{_current_metadata(mesh, SHIPMENTS)}", []


def _copy_outside(mesh: Mesh, tmp_path: Path) -> tuple[str, list[Path]]:
    copy = tmp_path / "v9.metadata.json"
    shutil.copy(_current_metadata(mesh, ORDERS), copy)
    return str(copy), []


def _dotdot(mesh: Mesh, tmp_path: Path) -> tuple[str, list[Path]]:
    orders, shipments = _current_metadata(mesh, ORDERS), _current_metadata(mesh, SHIPMENTS)
    return f"{orders.parent}/../../../logistics/shipments/metadata/{shipments.name}", []


def _symlink(mesh: Mesh, tmp_path: Path) -> tuple[str, list[Path]]:
    link = _current_metadata(mesh, ORDERS).parent / "99999-link.metadata.json"
    link.symlink_to(_current_metadata(mesh, SHIPMENTS))
    return f"file://{link}", [link]


def _sibling(mesh: Mesh, tmp_path: Path) -> tuple[str, list[Path]]:
    orders = _current_metadata(mesh, ORDERS)
    sibling = orders.parents[2] / "orders2"
    (sibling / "metadata").mkdir(parents=True)
    copy = sibling / "metadata" / orders.name
    shutil.copy(orders, copy)
    return f"file://{copy}", [sibling]


METADATA_FILES = {
    "another domain's table": _shipments_metadata,
    "a copy outside the warehouse": _copy_outside,
    "a '..' path": _dotdot,
    "a symlink inside the folder": _symlink,
    "a sibling folder sharing the prefix": _sibling,
}


@pytest.mark.parametrize("make", METADATA_FILES.values(), ids=METADATA_FILES.keys())
def test_a_catalog_row_naming_a_metadata_file_outside_the_table_is_refused_unread(
    attacked_mesh, tmp_path, reads, make
):
    location, made = make(attacked_mesh, tmp_path)
    with _removed_after(*made), _catalog_points_to(attacked_mesh, ORDERS, location):
        _expect_refused(attacked_mesh, "its metadata file", repr(location))
        target = os.path.realpath(_local(location))
        assert not [r for r in reads if os.path.realpath(_local(r)) == target]
        assert not [r for r in reads if "shipments" in r or "orders2" in r or str(tmp_path) in r]
    assert _orders_rows(attacked_mesh) > 0


# the metadata JSON: the table's location


def _location_cases(mesh: Mesh) -> dict[str, str]:
    root = _local(mesh.warehouse)
    return {
        "another domain's folder": f"file://{root}/logistics/shipments",
        "/etc": "/etc",
        "a '..' path": f"file://{root}/sales/orders/../../logistics/shipments",
        "a sibling folder sharing the prefix": f"file://{root}/sales/orders2",
        "the warehouse root": f"file://{root}",
        "another scheme": "http://169.254.169.254/latest",
    }


@pytest.mark.parametrize(
    "case", ["another domain's folder", "/etc", "a '..' path", "a sibling folder sharing the prefix",
             "the warehouse root", "another scheme"],
)  # fmt: skip
def test_a_table_location_outside_its_folder_is_refused_before_any_read(attacked_mesh, case):
    """The engine lets DuckDB read ``TableState.location``: a state holding an unchecked one is
    never produced, so nothing is planned or read from it."""
    location = _location_cases(attacked_mesh)[case]

    def edit(meta: dict[str, Any]) -> None:
        meta["location"] = location

    with _tampered(attacked_mesh, ORDERS, edit):
        catalog = Catalog(attacked_mesh)
        try:
            with pytest.raises(LocationError, match="the table location"):
                catalog.table_state(ORDERS)
        finally:
            catalog.close()
        _expect_refused(attacked_mesh, "the table location", repr(location))
    assert _orders_rows(attacked_mesh) > 0


# the metadata JSON: the manifest list; the manifest list: its manifests


def test_a_manifest_list_outside_the_table_is_refused(attacked_mesh):
    other = json.loads(_current_metadata(attacked_mesh, SHIPMENTS).read_text())
    foreign = _current_snapshot(other)["manifest-list"]

    def edit(meta: dict[str, Any]) -> None:
        _current_snapshot(meta)["manifest-list"] = foreign

    with _tampered(attacked_mesh, ORDERS, edit):
        _expect_refused(attacked_mesh, "manifest list", repr(foreign))
        with pytest.raises(LocationError, match="manifest list"):
            read_published(attacked_mesh, ORDERS)


def _static(path: Path) -> Any:
    from pyiceberg.table import StaticTable  # pyiceberg: only the tests that write Avro

    return StaticTable.from_metadata(str(path))


def _write_manifest_list(table: Any, snapshot: Any, manifests: list[Any], path: Path) -> None:
    from pyiceberg.manifest import write_manifest_list

    with write_manifest_list(
        format_version=2, output_file=table.io.new_output(str(path)),
        snapshot_id=snapshot.snapshot_id, parent_snapshot_id=snapshot.parent_snapshot_id,
        sequence_number=snapshot.sequence_number, avro_compression="null",
    ) as writer:  # fmt: skip
        writer.add_manifests(manifests)


@contextlib.contextmanager
def _with_manifests(mesh: Mesh, manifests: Callable[[Any, Any], list[Any]]) -> Iterator[None]:
    """sales.orders' head snapshot re-pointed at a new manifest list (in its own metadata
    folder) holding ``manifests(table, snapshot)``."""
    current = _current_metadata(mesh, ORDERS)
    table = _static(current)
    snapshot = table.current_snapshot()
    listing = current.parent / f"snap-99999-{uuid.uuid4()}.avro"
    written = manifests(table, snapshot)
    with _removed_after(listing):
        _write_manifest_list(table, snapshot, written, listing)

        def edit(meta: dict[str, Any]) -> None:
            _current_snapshot(meta)["manifest-list"] = f"file://{listing}"

        with _tampered(mesh, ORDERS, edit):
            yield


def test_a_manifest_outside_the_table_is_refused(attacked_mesh):
    shipments = _static(_current_metadata(attacked_mesh, SHIPMENTS))
    foreign = shipments.current_snapshot().manifests(shipments.io)

    with _with_manifests(attacked_mesh, lambda table, snapshot: foreign):
        _expect_refused(attacked_mesh, "a manifest of snapshot", foreign[0].manifest_path)
        with pytest.raises(LocationError, match="a manifest of snapshot"):
            read_published(attacked_mesh, ORDERS)


def _data_file_cases(mesh: Mesh) -> dict[str, str]:
    shipments = _static(_current_metadata(mesh, SHIPMENTS))
    entry = shipments.current_snapshot().manifests(shipments.io)[0]
    foreign = entry.fetch_manifest_entry(shipments.io)[0].data_file.file_path
    root = _local(mesh.warehouse)
    return {
        "another domain's data file": foreign,
        "a '..' path": f"{root}/sales/orders/data/../../../" + foreign.split(f"{root}/", 1)[1],
        "a sibling folder sharing the prefix": f"{root}/sales/orders2/data/x.parquet",
        "/etc/passwd": "/etc/passwd",
    }


@pytest.mark.parametrize(
    "case", ["another domain's data file", "a '..' path", "a sibling folder sharing the prefix",
             "/etc/passwd"],
)  # fmt: skip
def test_a_data_file_outside_the_table_is_refused_before_it_is_read(attacked_mesh, case):
    path = _data_file_cases(attacked_mesh)[case]
    made: list[Path] = []

    def manifests(table: Any, snapshot: Any) -> list[Any]:
        from pyiceberg.manifest import write_manifest

        target = _current_metadata(attacked_mesh, ORDERS).parent / f"{uuid.uuid4()}-m0.avro"
        made.append(target)
        with write_manifest(
            format_version=2, spec=table.spec(), schema=table.schema(),
            output_file=table.io.new_output(str(target)), snapshot_id=snapshot.snapshot_id,
            avro_compression="null",
        ) as writer:  # fmt: skip
            for manifest in snapshot.manifests(table.io):
                for entry in manifest.fetch_manifest_entry(table.io):
                    entry.data_file[1] = path  # file_path
                    writer.add_entry(entry)
        return [writer.to_manifest_file()]

    try:
        with _with_manifests(attacked_mesh, manifests):
            _expect_refused(attacked_mesh, "a data file of snapshot", repr(path))
            # the storage layer alone (an unlocked DuckDB) refuses it too
            with pytest.raises(LocationError, match="a data file"):
                read_published(attacked_mesh, ORDERS)
    finally:
        for target in made:
            target.unlink(missing_ok=True)
    assert _orders_rows(attacked_mesh) > 0
    assert not os.path.exists(f"{_local(attacked_mesh.warehouse)}/sales/orders2")
