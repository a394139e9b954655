"""Fault 7 and part of 8 of issue 14: the SLA history never drops an event, and a publication the
platform failed is never reported as data that failed its checks.

- 8 processes append 8 events each at once to one real catalog: all 64 are in
  ``mesh.sla_history``, each once (before: 6 to 8 of them lost to commit conflicts).
- The catalog refuses writes (another connection holds sqlite's write lock): events go to the
  journal (owner-only), `mesh sla`'s reader counts them, and they are written exactly once when
  the catalog takes writes again, by concurrent replays too, and even if a replay died between
  its commit and clearing the journal.
- A real publication that fails because the catalog is locked alerts its consumers "not
  published: infrastructure error, previous snapshot still served" and its owner with the cause.

The catalog's busy timeout is shortened in this process so that a held lock fails in a fraction
of a second instead of 30 s: the failure itself is sqlite's own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mesh_platform.config import Mesh, load_mesh
from mesh_platform.products.platform import HISTORY
from mesh_platform.sla.events import GateEvent
from mesh_platform.sla.history import read_history, record, replay_journal
from mesh_platform.sla.journal import journal_dir, pending
from mesh_platform.sla.record import record_safely
from mesh_platform.storage import catalog as storage_catalog
from mesh_platform.testing import publish_from_duckdb

LOG = logging.getLogger("test_history")
WRITERS, APPENDS = 8, 8

_WRITER = """
import datetime as dt, json, sys
from pathlib import Path
from mesh_platform.config import load_mesh
from mesh_platform.sla.history import record
from mesh_platform.sla.events import GateEvent

root, writer, appends = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
mesh = load_mesh(root)
outcomes = []
for i in range(appends):
    event = GateEvent(dt.datetime.now(dt.UTC), f"sales.p{writer}", f"run-{writer}-{i}", True,
                      i + 1, {"expectations": True}, (), 10, 0.1)
    done = record(mesh, [event])
    outcomes.append([done.written, done.journaled, done.error])
print(json.dumps(outcomes))
"""


_REPLAYER = """
import sys
from pathlib import Path
from mesh_platform.config import load_mesh
from mesh_platform.sla.history import replay_journal

print(replay_journal(load_mesh(Path(sys.argv[1]))).written)
"""


def _event(run: str, *, minutes: int = 0, published: bool = True) -> GateEvent:
    return GateEvent(
        dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes), "sales.orders",
        run, published, 1 if published else None, {"expectations": published},
        () if published else ("expectations",), 10, 0.1,
    )  # fmt: skip


def _table_rows(mesh: Mesh) -> list[dict]:
    """The rows of the Iceberg table itself (not the journal): event id, product, run."""
    catalog = storage_catalog.open_catalog(mesh)
    try:
        table = catalog.load_table(HISTORY.iceberg_identifier)
        columns = ("event_id", "address", "run_id")
        return table.scan(selected_fields=columns).to_arrow().to_pylist()
    finally:
        catalog.engine.dispose()


def _table_ids(mesh: Mesh) -> list[str]:
    return [row["event_id"] for row in _table_rows(mesh)]


@contextlib.contextmanager
def _catalog_locked(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Another connection holds the sqlite catalog's write lock: every commit is refused (after
    a busy timeout shortened for the test); reads go on (WAL)."""
    monkeypatch.setattr(storage_catalog, "SQLITE_BUSY_TIMEOUT_MS", 200)
    storage_catalog.open_catalog(mesh).engine.dispose()  # the catalog exists, in WAL mode
    holder = sqlite3.connect(mesh.state_dir / "catalog" / "catalog.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_concurrent_writers_lose_no_event(mesh):
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(mesh.root), str(w), str(APPENDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]
    outcomes = []
    for writer in writers:
        out, err = writer.communicate(timeout=600)
        assert writer.returncode == 0, err[-3000:]
        outcomes += json.loads(out.splitlines()[-1])
    # each append went to the table at once: none needed the journal
    assert outcomes == [[1, 0, None]] * (WRITERS * APPENDS)
    rows = _table_rows(mesh)
    assert len(rows) == WRITERS * APPENDS == len({r["event_id"] for r in rows})
    assert sorted((r["address"], r["run_id"]) for r in rows) == sorted(
        (f"sales.p{w}", f"run-{w}-{i}") for w in range(WRITERS) for i in range(APPENDS)
    )
    assert not pending(mesh).events


def test_refused_events_are_journaled_then_written_exactly_once(mesh, monkeypatch, caplog):
    from mesh_platform.sla.report import journal_note

    record(mesh, [_event("run-0")])
    with _catalog_locked(mesh, monkeypatch):
        with caplog.at_level(logging.WARNING, logger="test_history"):
            record_safely(mesh, [_event("run-1", minutes=1, published=False)], LOG)
        assert "refused 1 event(s)" in caplog.text and "database is locked" in caplog.text
        refused = record(mesh, [_event("run-2", minutes=2), _event("run-3", minutes=3)])
        assert refused.written == 0 and refused.journaled == 3 and "locked" in refused.error
        # owner-only, like the quarantine records
        folder = journal_dir(mesh)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
        assert [e.run_id for e in pending(mesh).events] == ["run-1", "run-2", "run-3"]
        # the reader is honest meanwhile: the journaled events are counted, and said to wait
        history = read_history(mesh)
        assert history.column("run_id").to_pylist() == ["run-0", "run-1", "run-2", "run-3"]
        assert history.column("status").to_pylist()[1] == "blocked"
        assert len(_table_ids(mesh)) == 1
        note = journal_note(mesh)
        assert note is not None and "3 SLA event(s) wait in" in note and "locked" in note
        saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    # writable again: four processes replay at once; one writes the three events, once
    replayers = [
        subprocess.Popen([sys.executable, "-c", _REPLAYER, str(mesh.root)], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]  # fmt: skip
    written = []
    for replayer in replayers:
        out, err = replayer.communicate(timeout=600)
        assert replayer.returncode == 0, err[-3000:]
        written.append(int(out.split()[-1]))
    assert sorted(written) == [0, 0, 0, 3]
    assert read_history(mesh).num_rows == 4
    ids = _table_ids(mesh)
    assert len(ids) == 4 == len(set(ids))
    assert not list(folder.iterdir()) and journal_note(mesh) is None
    # a replay that died after its commit, before clearing the journal: the next one skips them
    for name, data in saved.items():
        (folder / name).write_bytes(data)
    again = replay_journal(mesh)
    assert (again.written, again.journaled) == (0, 0)
    record(mesh, [_event("run-4", minutes=4)])
    ids = _table_ids(mesh)
    assert len(ids) == 5 == len(set(ids)) and not list(folder.iterdir())


def test_an_infrastructure_failure_is_not_reported_as_a_failed_gate(
    prepared_mesh, tmp_path, monkeypatch
):
    """A real publication of sales.customers (publish_products, as a dbt run does) while the
    catalog is locked: consumers hear the previous snapshot is still served, the owner gets the
    cause, main is untouched, and the history row says infrastructure_error, not blocked."""
    import dagster as dg

    from mesh_platform.assets.dbt import publish_products
    from mesh_platform.domain import load_domain
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.products.registry import load_directory

    mesh = load_mesh(prepared_mesh.root, state_dir=tmp_path / "state")  # its own state
    mesh.ensure_state_dir()
    customers = load_directory(mesh).descriptors["sales.customers"]
    mesh.duckdb_path("sales").parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(connect(mesh.duckdb_path("sales"))) as conn:
        conn.execute(
            "CREATE TABLE customers AS SELECT range::BIGINT AS customer_key, 'Customer#' || range "
            "AS customer_name, 'A B' AS full_name, 'a@example.com' AS email, '1' AS phone, "
            "1::INTEGER AS nation_key, 'BUILDING' AS market_segment, 1.5::DECIMAL(15, 2) AS "
            "account_balance FROM range(20)"
        )
        catalog = storage_catalog.open_catalog(mesh)
        previous = publish_from_duckdb(
            catalog, customers.address, conn, "main.customers", properties={}
        ).snapshot_id
        catalog.engine.dispose()
    with _catalog_locked(mesh, monkeypatch):
        (publication,) = publish_products(
            dg.build_asset_context(), mesh, load_domain(mesh, "sales"),
            {"model.sales.customers": (customers, "main.customers")}, {}, {},
        ).values()  # fmt: skip
    assert not publication.published
    alerts = {
        a["recipient"]: a
        for a in map(json.loads, (mesh.state_dir / "alerts/alerts.jsonl").read_text().splitlines())
    }
    assert set(alerts) == {"team:sales", "marketing"}
    assert {a["event"] for a in alerts.values()} == {"infrastructure_error"}
    consumer, owner = alerts["marketing"]["cause"], alerts["team:sales"]["cause"]
    assert consumer == "not published: infrastructure error, previous snapshot still served"
    assert "database is locked" in owner and "mesh build --domain sales" in owner
    assert not any("check" in c and "blocked" in c for c in (consumer, owner))
    catalog = storage_catalog.open_catalog(mesh)
    assert catalog.load_table(customers.address.iceberg_identifier).current_snapshot().snapshot_id \
        == previous  # fmt: skip
    catalog.engine.dispose()
    # the history row waited in the journal (the catalog refused it too); written now, once
    history = read_history(mesh, addresses=["sales.customers"])
    assert history.column("status").to_pylist() == ["infrastructure_error"]
    assert history.column("passed").to_pylist() == [False]
    assert len(_table_ids(mesh)) == 1 and not pending(mesh).events
