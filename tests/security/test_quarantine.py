"""A batch blocked because it holds personal data is quarantined at once (security class 4).

Kept on its audit branch until `mesh maintain`, a rejected batch stays readable by any engine
given the warehouse: in its Parquet files and in its manifests, whose column bounds are values.
Blocked by a personal-data policy, it is removed at once: branch dropped, snapshots expired,
data files, manifests and manifest lists deleted; main keeps the previous good snapshot; what
was found (column, kind, rows; never a value) is recorded. A batch blocked for another reason
is still kept for inspection.

Real gate, real tmp sqlite catalog and warehouse, no dbt.
"""

from __future__ import annotations

import json
import stat
import zlib
from pathlib import Path
from typing import Any

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.gate import (
    GateCheck,
    GateContext,
    register_gate_check,
    unregister_gate_check,
)
from mesh_platform.products.outcomes import CheckOutcome
from mesh_platform.products.publish import publish_in_run
from mesh_platform.storage.wap import audit_branch
from mesh_platform.storage.warehouse import local_path
from mesh_platform.testing import read_published

EMAIL = "jo@example.com"  # under Iceberg's 16-character bound truncation: whole in the bounds
NOTES = ProductAddress("sales", "notes")


def column(data_type: str, classification: str, masking: str | None = None) -> dict[str, Any]:
    meta = {"classification": classification, **({"masking": masking} if masking else {})}
    return {"data_type": data_type, "description": "A column.", "config": {"meta": meta}}


def descriptor(name: str, columns: dict[str, dict], **mesh: Any) -> ProductDescriptor:
    body = {
        "purpose": "Notes taken on orders, for the support team.",
        "owner": {"team": "sales", "contact": "sales-data@example.com"},
        "version": "1.0.0",
        **mesh,
    }
    node = {
        "resource_type": "model",
        "access": "public",
        "name": name,
        "description": "One note per order.",
        "original_file_path": f"models/products/{name}.sql",
        "config": {"meta": {"mesh": body}},
        "columns": columns,
    }
    return descriptor_from_node("sales", node)


NOTES_PRODUCT = descriptor(
    "notes", {"order_key": column("bigint", "internal"), "note": column("varchar", "internal")}
)


def notes(conn, name: str, last: str = "note 3") -> str:
    """main.<name>: 4 orders with harmless notes; the last note is ``last``."""
    conn.execute(
        f"CREATE OR REPLACE TABLE main.{name} AS SELECT range AS order_key, "
        "CASE WHEN range = 3 THEN ? ELSE 'note ' || range END AS note FROM range(4)",
        [last],
    )
    return f"main.{name}"


def publish(mesh: Mesh, catalog, product: ProductDescriptor, conn, relation: str, run_id: str):
    return publish_in_run(mesh, catalog, product, conn, relation, run_id=run_id, inputs={})


def table_folder(catalog, address: ProductAddress = NOTES) -> Path:
    return local_path(catalog.load_table(address.iceberg_identifier).location())


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def _avro_blocks(data: bytes) -> list[bytes]:
    """The decompressed data blocks of an Avro container file (pyiceberg deflates manifests,
    so their column bounds are not in the raw bytes)."""

    def long(at: int) -> tuple[int, int]:
        shift = value = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return (value >> 1) ^ -(value & 1), at

    sync = data[-16:]  # every block ends with the header's sync marker
    deflated = b"deflate" in data[: data.find(sync)]
    blocks = []
    start = data.find(sync) + 16
    while start < len(data):
        _, at = long(start)
        size, at = long(at)
        payload = data[at : at + size]
        blocks.append(zlib.decompress(payload, -15) if deflated else payload)
        start = at + size + 16
    return blocks


def holding(folder: Path, value: str) -> list[str]:
    """Files under ``folder`` whose bytes hold ``value``: raw, or in an Avro file's blocks."""
    needle = value.encode()
    found = []
    for path in sorted(files_under(folder)):
        data = path.read_bytes()
        blocks = _avro_blocks(data) if path.suffix == ".avro" else []
        if needle in data or any(needle in block for block in blocks):
            found.append(path.name)
    return found


def main_line(table) -> set[int]:
    """Main's head and its ancestors."""
    ids, snapshot = set(), table.current_snapshot()
    while snapshot is not None:
        ids.add(snapshot.snapshot_id)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return ids


def main_notes(mesh: Mesh, catalog, address: ProductAddress = NOTES) -> list[tuple]:
    rows = catalog.load_table(address.iceberg_identifier).scan().to_arrow().to_pylist()
    return sorted((r["order_key"], r["note"]) for r in rows)


@pytest.fixture
def conn(duck):
    return duck


@pytest.fixture
def clean(mesh, catalog, conn):
    """sales.notes published once with harmless notes: (snapshot id, its rows, its files)."""
    first = publish(mesh, catalog, NOTES_PRODUCT, conn, notes(conn, "clean"), "run-clean")
    assert first.published, first.error
    return first.snapshot_id, main_notes(mesh, catalog), files_under(table_folder(catalog))


def test_a_batch_holding_an_email_in_an_unclassified_column_is_quarantined_at_once(
    mesh, catalog, conn, clean
):
    main_before, rows_before, files_before = clean
    blocked = publish(mesh, catalog, NOTES_PRODUCT, conn, notes(conn, "dirty", EMAIL), "run-dirty")

    assert not blocked.published
    assert blocked.failed_checks == ["pii_detection"]
    stage = blocked.stage
    table = catalog.load_table(NOTES.iceberg_identifier)
    # the branch is gone, and so are the batch's snapshots
    assert audit_branch("run-dirty") not in table.metadata.refs
    assert [r for r in table.metadata.refs if r.startswith("audit-")] == []
    assert table.snapshot_by_id(stage.snapshot_id) is None
    assert {s.snapshot_id for s in table.snapshots()} == main_line(table)
    # none of its data files, manifests or manifest lists is left: the only files the
    # publication added are metadata JSON files (which hold no column values)
    assert stage.data_files and not any(local_path(f).exists() for f in stage.data_files)
    added = files_under(table_folder(catalog)) - files_before
    assert added and all(p.name.endswith(".metadata.json") for p in added), sorted(added)
    assert holding(table_folder(catalog), EMAIL) == []
    assert holding(mesh.state_dir / "warehouse", EMAIL) == []
    # main is untouched: the previous good snapshot, the same rows, on the read path too
    assert table.current_snapshot().snapshot_id == main_before
    assert main_notes(mesh, catalog) == rows_before
    assert read_published(mesh, NOTES) == (["order_key", "note"], 4)


def test_the_quarantine_is_recorded_with_column_kind_and_count_never_the_value(
    mesh, catalog, conn, clean
):
    blocked = publish(mesh, catalog, NOTES_PRODUCT, conn, notes(conn, "dirty", EMAIL), "run-dirty")

    finding = {"check": "pii_detection", "column": "note", "kind": "email", "rows": 1}
    # the run's failure message
    assert "quarantined at once" in blocked.error
    assert "column note: email in 1 row(s)" in blocked.error
    assert str(mesh.quarantine_records) in blocked.error
    # the Dagster check's metadata
    metadata = blocked.outcomes["pii_detection"].metadata
    assert metadata["hits"] == {"note": {"email": 1}}
    assert metadata["quarantined"] is True and metadata["deleted_files"] >= 3
    # the quarantine record: one line, owner-only
    record_file = mesh.quarantine_records
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(record_file.parent.stat().st_mode) == 0o700
    lines = record_file.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["product"] == "sales.notes" and record["batch_id"] == "run-dirty"
    assert record["findings"] == [finding]
    assert record["main_snapshot_id"] == clean[0]
    assert set(map(str, blocked.stage.data_files)) <= set(record["deleted_files"])
    # never the value: not in the record, the message, the outcomes
    everything = record_file.read_text() + blocked.error + repr(blocked.outcomes)
    assert EMAIL not in everything and "example.com" not in everything


def test_a_batch_blocked_for_another_reason_is_kept_for_inspection(mesh, catalog, conn, clean):
    """The control: with pii_detection waived, the same batch is blocked by a dbt test only.
    It stays on its branch, and `holding` does find the email in its Parquet file and in its
    manifest's column bounds (so finding nothing above means the files are gone)."""
    main_before, rows_before, _ = clean
    (mesh.root / "governance.yaml").write_text(
        "waivers:\n"
        "  - {product: sales.notes, policy: pii_detection, reason: 'support notes reviewed by "
        "legal', expires: 2999-01-01}\n"
    )
    blocked = publish_in_run(
        mesh, catalog, NOTES_PRODUCT, conn, notes(conn, "dirty", EMAIL),
        run_id="run-dirty", inputs={}, failed_elsewhere=["dbt test not_null_notes_note"],
    )  # fmt: skip

    assert not blocked.published
    assert blocked.failed_checks == ["dbt test not_null_notes_note"]
    assert not blocked.outcomes["pii_detection"].passed  # found, but waived: not blocking
    assert blocked.quarantine is None
    assert "the rejected data is on branch audit-run-dirty" in blocked.error
    table = catalog.load_table(NOTES.iceberg_identifier)
    assert audit_branch("run-dirty") in table.metadata.refs
    assert all(local_path(f).exists() for f in blocked.stage.data_files)
    found = holding(table_folder(catalog), EMAIL)
    assert any(name.endswith(".parquet") for name in found), found
    assert any(name.endswith("-m0.avro") for name in found), found  # a manifest's bounds
    assert table.current_snapshot().snapshot_id == main_before
    assert main_notes(mesh, catalog) == rows_before
    assert not mesh.quarantine_records.exists()


def test_a_personal_data_column_published_in_clear_is_quarantined(mesh, catalog, conn):
    """pii_masking_verified is a personal-data policy too: a pii column without a masking rule
    stages its values in clear."""
    customers = descriptor(
        "customers",
        {"customer_key": column("bigint", "internal"), "email": column("varchar", "pii:email")},
    )
    address = customers.address
    conn.execute(
        "CREATE TABLE main.customers AS SELECT range AS customer_key, "
        "CASE WHEN range = 0 THEN ? ELSE 'c' || range || '@example.org' END AS email "
        "FROM range(3)",
        [EMAIL],
    )
    blocked = publish(mesh, catalog, customers, conn, "main.customers", "run-1")

    assert not blocked.published
    assert "pii_masking_verified" in blocked.failed_checks
    assert blocked.quarantine is not None
    table = catalog.load_table(address.iceberg_identifier)
    assert [r for r in table.metadata.refs if r.startswith("audit-")] == []
    assert not any(local_path(f).exists() for f in blocked.stage.data_files)
    assert holding(table_folder(catalog, address), EMAIL) == []
    assert holding(table_folder(catalog, address), "@example.org") == []
    record = json.loads(mesh.quarantine_records.read_text())
    assert {"check": "pii_masking_verified", "column": "email", "kind": "email",
            "rows": None} in record["findings"]  # fmt: skip
    assert "example.org" not in mesh.quarantine_records.read_text()


def test_a_partitioned_batch_is_quarantined_and_main_keeps_its_other_partitions(
    mesh, catalog, conn
):
    """Only January changes: the batch deletes January from main's files on its branch and adds
    a new January file. Quarantine removes the new file, its partition folders and its
    manifests, and never main's files (February and March are carried in the batch's
    manifests as existing entries)."""
    orders = descriptor(
        "order_notes",
        {
            "order_key": column("bigint", "internal"),
            "order_date": column("date", "internal"),
            "note": column("varchar", "internal"),
        },
        partition_by={"column": "order_date", "granularity": "month"},
    )
    address = orders.address
    conn.execute(
        "CREATE TABLE main.order_notes AS SELECT range AS order_key, "
        "DATE '2024-01-01' + (range % 90)::INT AS order_date, 'note ' || range AS note "
        "FROM range(90)"
    )
    first = publish(mesh, catalog, orders, conn, "main.order_notes", "run-1")
    assert first.published, first.error
    rows_before = catalog.load_table(address.iceberg_identifier).scan().to_arrow().num_rows
    folder = table_folder(catalog, address)
    files_before = files_under(folder)
    conn.execute("UPDATE main.order_notes SET note = ? WHERE order_key = 5", [EMAIL])

    blocked = publish(mesh, catalog, orders, conn, "main.order_notes", "run-2")

    assert not blocked.published and blocked.failed_checks == ["pii_detection"]
    assert blocked.partitions == "1 of 3 partition(s) changed"
    assert blocked.quarantine is not None
    added = files_under(folder) - files_before
    assert all(p.name.endswith(".metadata.json") for p in added), sorted(added)
    assert files_before - files_under(folder) == set()  # none of main's files was deleted
    batch_folders = {local_path(f).parent.parent for f in blocked.stage.data_files}
    assert batch_folders and not any(f.exists() for f in batch_folders)
    assert holding(folder, EMAIL) == []
    table = catalog.load_table(address.iceberg_identifier)
    assert table.current_snapshot().snapshot_id == first.snapshot_id
    assert table.scan().to_arrow().num_rows == rows_before == 90
    assert read_published(mesh, address)[1] == 90


class _ContactScan(GateCheck):
    """A custom check: fails the batch called run-dirty."""

    name = "contact_scan"
    description = "A team's own scan for contact data."

    def evaluate(self, ctx: GateContext) -> CheckOutcome:
        return CheckOutcome(ctx.stage.batch_id != "run-dirty", "contact data found", {})


@pytest.mark.parametrize("personal_data", [True, False])
def test_a_registered_check_quarantines_only_if_it_declares_itself_a_personal_data_policy(
    mesh, catalog, conn, clean, personal_data
):
    check = type("Scan", (_ContactScan,), {"personal_data": personal_data})()
    register_gate_check(check)
    try:
        blocked = publish(mesh, catalog, NOTES_PRODUCT, conn, notes(conn, "next"), "run-dirty")
    finally:
        unregister_gate_check(check.name)

    assert not blocked.published and blocked.failed_checks == ["contact_scan"]
    table = catalog.load_table(NOTES.iceberg_identifier)
    kept = audit_branch("run-dirty") in table.metadata.refs
    assert kept is not personal_data
    assert all(local_path(f).exists() is kept for f in blocked.stage.data_files)
    assert (blocked.quarantine is not None) is personal_data
    assert mesh.quarantine_records.exists() is personal_data
    if personal_data:
        record = json.loads(mesh.quarantine_records.read_text())
        assert record["findings"] == [
            {"check": "contact_scan", "column": None, "kind": None, "rows": None}
        ]


def test_if_the_branch_cannot_be_dropped_the_files_are_deleted_all_the_same(
    mesh, catalog, conn, clean, monkeypatch
):
    """Another writer keeps winning the commit: the run fails saying so, and the personal
    data is gone from the warehouse anyway (the branch is left unreadable, for maintenance)."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table.update.snapshot import ExpireSnapshots

    from mesh_platform.errors import MeshError

    def lost(self):
        raise CommitFailedException("another writer committed first")

    monkeypatch.setattr(ExpireSnapshots, "commit", lost)
    monkeypatch.setattr("mesh_platform.storage.quarantine.random.uniform", lambda a, b: 0.0)
    with pytest.raises(MeshError) as error:
        publish(mesh, catalog, NOTES_PRODUCT, conn, notes(conn, "dirty", EMAIL), "run-dirty")

    assert "held personal data; its files were deleted" in error.value.what
    assert "mesh maintain --domain sales" in error.value.fix
    assert EMAIL not in str(error.value)
    assert holding(table_folder(catalog), EMAIL) == []
    assert catalog.load_table(NOTES.iceberg_identifier).current_snapshot().snapshot_id == clean[0]
    assert main_notes(mesh, catalog) == clean[1]
