"""A product's end of life: deprecation notices once per event to the owner and every reader,
`mesh retire` (refused while readers remain, forced with a reason, finished after a crash) and
the tables no descriptor declares (`mesh check`, `mesh maintain`).

On the prepared sample's descriptors (logistics.nations: major 1 deprecated beside
logistics.nations_v2; marketing consumes it, marketing and sales hold grants) with each test's
own state dir: real Iceberg tables published into it, the real file alert sink.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.lifecycle import (
    Retirement,
    find_orphans,
    load_retirements,
    publication_stops,
    record_retirement,
    replaced_in_place,
)
from mesh_platform.products.registry import load_directory
from mesh_platform.products.retirement import RetirementRefusedError, retire
from mesh_platform.sla.deprecation import notify_deprecations
from mesh_platform.storage import warehouse
from mesh_platform.storage.catalog import ensure_namespace, open_catalog
from mesh_platform.testing import publish_from_duckdb, run_mesh

LOG = logging.getLogger("test_lifecycle")
NATIONS = ProductAddress("logistics", "nations")
OLD = ProductAddress("logistics", "old_routes")  # a table no descriptor declares


@pytest.fixture
def mesh(prepared_mesh, tmp_path):
    """The prepared sample's descriptors with this test's own state: logistics.nations and an
    undeclared logistics.old_routes published into its catalog."""
    mesh = load_mesh(
        prepared_mesh.root, state_dir=tmp_path / "state",
        alerts={"sinks": [{"type": "file"}], "deprecation_notice_days": [14, 3]},
    )  # fmt: skip
    mesh.ensure_state_dir()
    catalog = open_catalog(mesh)
    conn = connect()
    try:
        ensure_namespace(catalog, "logistics")
        conn.execute("CREATE TABLE main.t AS SELECT range AS nation_key FROM range(25)")
        for address in (NATIONS, OLD):
            publish_from_duckdb(catalog, address, conn, "main.t", properties={})
            publish_from_duckdb(catalog, address, conn, "main.t", properties={})  # two snapshots
    finally:
        conn.close()
        catalog.engine.dispose()
    return mesh


def _alerts(mesh) -> list[dict]:
    path = mesh.state_dir / "alerts" / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _folder(mesh, address) -> str:
    return warehouse.table_folder(mesh.warehouse, *address.iceberg_identifier)


def test_deprecation_notices_reach_owner_and_readers_once_per_event(mesh):
    nations = load_directory(mesh).descriptors[str(NATIONS)]
    deprecated, sunset = nations.body.deprecated_on, nations.body.sunset_on
    readers = {"team:logistics", "marketing", "sales"}  # owner, consumer + grantee, grantee

    def notify(day):
        notes = notify_deprecations(mesh, LOG, domain="logistics", today=day)
        return {(n.event, n.recipient) for n in notes if n.product == str(NATIONS)}

    assert notify(deprecated - dt.timedelta(days=1)) == set()  # not deprecated yet
    assert notify(deprecated) == {("deprecated", r) for r in readers}
    assert notify(deprecated + dt.timedelta(days=1)) == set()  # told once
    assert notify(sunset - dt.timedelta(days=20)) == set()
    assert notify(sunset - dt.timedelta(days=14)) == {("sunset_in_14d", r) for r in readers}
    assert notify(sunset - dt.timedelta(days=13)) == set()
    assert notify(sunset - dt.timedelta(days=2)) == {("sunset_in_3d", r) for r in readers}
    assert notify(sunset) == set()
    sent = [a for a in _alerts(mesh) if a["product"] == str(NATIONS)]
    assert len(sent) == 3 * len(readers)  # the file sink got each notice exactly once
    owner = next(a for a in sent if a["recipient"] == "team:logistics")
    assert owner["contact"] == "logistics-data@example.com"
    assert "logistics.nations_v2" in owner["cause"] and str(sunset) in owner["cause"]


def test_a_late_monitor_sends_only_the_closest_notice(mesh):
    sunset = load_directory(mesh).descriptors[str(NATIONS)].body.sunset_on
    notes = notify_deprecations(mesh, LOG, domain="logistics", today=sunset - dt.timedelta(days=1))
    assert {(n.event, n.recipient) for n in notes} == {
        ("sunset_in_3d", r) for r in ("team:logistics", "marketing", "sales")
    }  # not three messages each: deprecated and 14 days count as sent
    assert notify_deprecations(mesh, LOG, domain="logistics", today=sunset) == []


def test_retire_is_refused_while_read_then_forced_with_a_reason(mesh):
    sunset = load_directory(mesh).descriptors[str(NATIONS)].body.sunset_on
    for force in (False, True):  # on its last day nothing overrides its descriptor
        with pytest.raises(RetirementRefusedError) as before:
            retire(mesh, NATIONS, by="user:ops", reason="replaced by v2", force=force,
                   today=sunset)  # fmt: skip
        assert "still declares it" in before.value.what
    after_sunset = sunset + dt.timedelta(days=1)
    with pytest.raises(RetirementRefusedError) as refused:
        retire(mesh, NATIONS, by="user:ops", reason="replaced by v2", today=after_sunset)
    message = refused.value.what
    assert "live grant to marketing" in message and "live grant to sales" in message
    assert "domain marketing consumes it" in message
    assert "--force --reason" in refused.value.fix
    assert open_catalog(mesh).table_exists(NATIONS.iceberg_identifier)  # nothing dropped

    last = open_catalog(mesh).load_table(NATIONS.iceberg_identifier).metadata.current_snapshot_id
    outcome = retire(mesh, NATIONS, by="user:ops", reason="replaced by v2", force=True,
                     today=after_sunset)  # fmt: skip
    record = outcome.retirement
    assert record.finished and record.forced and record.last_snapshot_id == last
    assert record.successor == "logistics.nations_v2" and record.version == "1.3.0"
    assert any("marketing" in c for c in record.consumers)
    assert not open_catalog(mesh).table_exists(NATIONS.iceberg_identifier)
    assert warehouse.list_files(_folder(mesh, NATIONS), {}) == []
    assert not warehouse.local_path(_folder(mesh, NATIONS)).exists()
    assert load_retirements(mesh)[str(NATIONS)] == record  # durable
    again = retire(mesh, NATIONS, by="user:someone", reason="again")
    assert again.already and again.retirement == record  # idempotent


def test_retire_cli_and_a_crash_finished_by_repair(mesh):
    env = {"MESH_STATE_DIR": str(mesh.state_dir)}
    folder = warehouse.local_path(_folder(mesh, OLD))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert files  # data, manifests, metadata
    # A crash after the record and the catalog drop (steps 1 and 2), before the files went.
    catalog = open_catalog(mesh)
    snapshot = catalog.load_table(OLD.iceberg_identifier).metadata.current_snapshot_id
    record_retirement(mesh, Retirement(
        address=str(OLD), retired_by="user:ops", started_at="2026-12-01T10:00:00+00:00",
        reason="nobody reads it", forced=False, last_snapshot_id=snapshot,
        table_location=str(folder),
    ))  # fmt: skip
    catalog.drop_table(OLD.iceberg_identifier)
    catalog.engine.dispose()
    shown = run_mesh(mesh.root, "describe", str(OLD), **env)
    assert "retirement unfinished" in shown.stdout, shown.stdout + shown.stderr
    repaired = run_mesh(mesh.root, "repair", "--product", str(OLD), **env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "retirement by user:ops finished" in repaired.stdout
    assert not folder.exists()
    assert load_retirements(mesh)[str(OLD)].finished

    read = run_mesh(mesh.root, "query", "--as", "logistics", f"SELECT * FROM {OLD}", **env)
    assert read.returncode == 1
    assert f"product {OLD} was retired on 2026-12-01 by user:ops (nobody reads it)" in read.stderr
    rerun = run_mesh(mesh.root, "retire", str(OLD), "--reason", "again", **env)
    assert rerun.returncode == 0 and "already retired" in rerun.stdout
    refused = run_mesh(mesh.root, "retire", str(NATIONS), "--reason", "v2 exists", **env)
    assert refused.returncode == 1
    assert "cannot be retired" in refused.stderr and "Traceback" not in refused.stderr
    listed = run_mesh(mesh.root, "products", "--domain", "logistics", "--format", "json", **env)
    retired = [r for r in json.loads(listed.stdout) if r["status"] == "retired"]
    assert [(r["address"], r["reason"], r["last_snapshot_id"]) for r in retired] == [
        (str(OLD), "nobody reads it", snapshot)
    ]


def test_tables_no_descriptor_declares_are_reported(mesh):
    directory = load_directory(mesh)
    orphans = find_orphans(mesh, directory.descriptors, directory.problems)
    assert [(o.namespace, o.table) for o in orphans] == [("logistics", "old_routes")]
    env = {"MESH_STATE_DIR": str(mesh.state_dir)}
    for args in (("check", "--domain", "logistics"), ("maintain", "--domain", "logistics")):
        result = run_mesh(mesh.root, *args, **env)
        text = " ".join(result.stderr.split())
        assert "table old_routes in namespace logistics" in text, result.stdout + result.stderr
        assert "mesh retire logistics.old_routes" in text and "restore its descriptor" in text
    checked = run_mesh(mesh.root, "check", "--domain", "logistics", "--format", "json", **env)
    assert [o["address"] for o in json.loads(checked.stdout)["orphan_tables"]] == [str(OLD)]


def test_a_major_raised_in_place_is_refused_until_the_old_one_is_kept_or_retired(mesh):
    descriptors = load_directory(mesh).descriptors
    shipments = descriptors["logistics.shipments"]
    # old_routes' descriptor raised to 2.0.0 in place: logistics.old_routes is left undeclared.
    bumped = shipments.model_copy(update={
        "name": "old_routes", "body": shipments.body.model_copy(update={"version": "2.0.0"}),
    })  # fmt: skip
    refused = replaced_in_place(mesh, [bumped, descriptors["logistics.nations_v2"]], descriptors)
    assert list(refused) == ["logistics.old_routes_v2"]  # nations keeps v1 beside v2: fine
    why = refused["logistics.old_routes_v2"]
    assert "would replace logistics.old_routes in place" in why
    assert "versions: [{v: 1" in why and "mesh retire logistics.old_routes" in why
    retire(mesh, OLD, by="user:ops", reason="moved to v2")
    assert replaced_in_place(mesh, [bumped], descriptors) == {}


def test_publication_stops_after_the_sunset_and_after_retirement(mesh):
    nations = load_directory(mesh).descriptors[str(NATIONS)]
    sunset = nations.body.sunset_on
    assert publication_stops(mesh, [nations], today=sunset) == {}  # its last day
    (why,) = publication_stops(mesh, [nations], today=sunset + dt.timedelta(days=1)).values()
    assert f"reached its sunset on {sunset}" in why and "mesh retire logistics.nations" in why
    retire(mesh, NATIONS, by="user:ops", reason="v2", force=True, today=sunset + dt.timedelta(1))
    (why,) = publication_stops(mesh, [nations], today=sunset).values()
    assert "retired on" in why and "by user:ops (v2)" in why and nations.source_file in why
