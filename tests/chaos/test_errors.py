"""Fault 8: errors that tell the truth. Each fault is injected into one mesh built with `mesh
build --domain sales` (its state on a small filesystem of its own), the message users see is
asserted (the product, the file, the fix, no traceback), and the mesh is recovered with `mesh`
commands only:

- the catalog held locked by another process, or a mistyped state dir: "the catalog at <uri>
  could not be read", never "not published" (retry, check state_dir);
- the current metadata file of a product truncated: `mesh query`, `products` and `describe`
  name the product, the file and `mesh repair`, which rolls the table back (refused while a
  publication holds the product's lock) and says what it rolled back; the rows are the same;
- a full disk during `mesh build`: a message naming the disk and the fix, exit 1, no run left
  unfinished, nothing published half; the next build, with space freed, recovers;
- `--at` after maintenance expired the snapshots of that time: "expired by maintenance (oldest
  kept: ...)", distinct from "not published yet";
- dbt's run artifacts land in the state dir, bounded, and the source tree stays clean.

The small filesystem is a tmpfs when this process may mount one (root with CAP_SYS_ADMIN);
otherwise the full disk is a file size limit (RLIMIT_FSIZE) on the failing build, which the
platform reports the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.dbt.project import RUN_ARTIFACTS_KEPT, prune_run_artifacts
from mesh_platform.storage.metadata import Catalog
from mesh_platform.testing import (
    MESH,
    SF,
    build_sample_mesh,
    published_content,
    run_mesh,
    user_env,
)

pytestmark = pytest.mark.e2e  # module-scoped builds of the sample mesh

CUSTOMERS = ProductAddress.parse("sales.customers")
SALES = ("sales.customers", "sales.order_lines", "sales.orders")
COUNT = "SELECT count(*) AS n FROM sales.customers"
TMPFS_SIZE = "96m"


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _failed_cleanly(result: subprocess.CompletedProcess) -> str:
    """The error output of a command that failed as expected: exit 1 and no traceback."""
    text = _output(result)
    assert result.returncode == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return " ".join(text.split())  # rich wraps long lines


def _mount_tmpfs(folder: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    return mounted.returncode == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, bool]]:
    """The sales domain built (state on a tmpfs when possible); whether it is a tmpfs."""
    root = tmp_path_factory.mktemp("errors") / "mesh"
    state = root / "state"
    state.mkdir(parents=True, mode=0o700)
    small_disk = _mount_tmpfs(state)
    try:
        yield build_sample_mesh(root, "--domain", "sales"), small_disk
    finally:
        if small_disk:
            subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.fixture
def mesh(built: tuple[Mesh, bool]) -> Mesh:
    return built[0]


def _count(mesh: Mesh) -> int:
    result = run_mesh(mesh.root, "query", "--as", "sales", "--format", "json", COUNT)
    assert result.returncode == 0, _output(result)[-3000:]
    return json.loads(result.stdout)[0]["n"]


def _catalog_row(mesh: Mesh, address: ProductAddress) -> tuple[str, str]:
    db = sqlite3.connect(mesh.state_dir / "catalog" / "catalog.db")
    try:
        return db.execute(
            "SELECT metadata_location, previous_metadata_location FROM iceberg_tables "
            "WHERE table_namespace = ? AND table_name = ?",
            address.iceberg_identifier,
        ).fetchone()
    finally:
        db.close()


# -- 1. the catalog cannot be read -------------------------------------------------------------


@contextlib.contextmanager
def _catalog_locked(mesh: Mesh) -> Iterator[None]:
    """Another process's lock on the catalog database: exclusive locking mode and a write
    transaction, so in WAL mode readers are shut out too (until the connection closes)."""
    db = sqlite3.connect(mesh.state_dir / "catalog" / "catalog.db", isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("UPDATE iceberg_tables SET metadata_location = metadata_location WHERE 0")
        yield
    finally:
        db.close()


def test_a_locked_catalog_is_reported_as_such_not_as_an_unpublished_product(mesh):
    count = _count(mesh)
    with _catalog_locked(mesh):
        message = _failed_cleanly(run_mesh(mesh.root, "query", "--as", "sales", COUNT))
    assert f"the catalog at sqlite:///{mesh.state_dir}/catalog/catalog.db could not be read" in (
        message
    )
    assert "database is locked" in message
    assert "retry" in message
    assert "no published snapshot" not in message
    assert _count(mesh) == count  # recovery: the lock is gone, the same query answers


@pytest.mark.parametrize(
    "command",
    [("query", "--as", "sales", COUNT), ("products",), ("describe", "sales.customers")],
    ids=["query", "products", "describe"],
)
def test_a_mistyped_state_dir_says_so_in_every_read_command(mesh, command):
    mistyped = mesh.root / "stat"
    result = run_mesh(mesh.root, *command, MESH_STATE_DIR=str(mistyped))
    message = _failed_cleanly(result)
    assert f"the catalog at sqlite:///{mistyped}/catalog/catalog.db could not be read" in message
    assert f"check state_dir in mesh.yaml or MESH_STATE_DIR (state_dir is {mistyped})" in message
    assert "not published" not in message


# -- 2. corrupt metadata -----------------------------------------------------------------------


def test_corrupt_metadata_names_product_file_and_fix_and_mesh_repair_recovers(mesh):
    from mesh_platform.storage.catalog import open_catalog
    from mesh_platform.storage.locks import product_lock

    before = published_content(mesh, str(CUSTOMERS))
    current, _ = _catalog_row(mesh, CUSTOMERS)
    path = Path(current.removeprefix("file://"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated metadata file

    fix = "mesh repair --product sales.customers"
    for command in (("query", "--as", "sales", COUNT), ("describe", "sales.customers")):
        message = _failed_cleanly(run_mesh(mesh.root, *command))
        assert f"product sales.customers: its current metadata file {path}" in message
        assert "is corrupt: not valid JSON" in message
        assert fix in message and 'docs/operations.md "A product\'s metadata is corrupt"' in message
        assert "correct the SQL" not in message and "not published" not in message
    listing = run_mesh(mesh.root, "products")
    message = _failed_cleanly(listing)
    assert "sales.orders" in listing.stdout and "unreadable" in listing.stdout  # the others
    assert f"{path}" in message and fix in message
    assert "1 product(s) could not be read: sales.customers" in message

    # A publication holds the product's lock: repair refuses and changes nothing.
    catalog = open_catalog(mesh)
    with product_lock(catalog, CUSTOMERS):
        refused = _failed_cleanly(run_mesh(mesh.root, "repair", "--product", "sales.customers"))
    catalog.engine.dispose()
    assert "a publication holds its lock right now; repair refused" in refused
    assert _catalog_row(mesh, CUSTOMERS)[0] == current

    dry = run_mesh(mesh.root, "repair", "--product", "sales.customers", "--dry-run")
    assert dry.returncode == 0 and "would roll back" in dry.stdout, _output(dry)
    assert _catalog_row(mesh, CUSTOMERS)[0] == current

    repaired = run_mesh(mesh.root, "repair", "--product", "sales.customers")
    report = " ".join(repaired.stdout.split())
    assert repaired.returncode == 0, _output(repaired)[-3000:]
    assert f"current metadata {current} is broken" in report
    assert "rolled back the catalog pointer to" in report
    # The broken file was the publication commit (the batch it published is published again)
    # or a commit after it that wrote no snapshot (refs, properties: the restored file holds all).
    assert any(
        said in report
        for said in ("republished", "no published snapshot was lost", "no snapshot was written "
                     "after the restored file: every snapshot the broken commit can have held")
    ), report  # fmt: skip
    assert _catalog_row(mesh, CUSTOMERS)[0] != current
    assert (
        published_content(mesh, str(CUSTOMERS)) == before
    )  # the same rows, read through the engine
    assert _count(mesh) == before["rows"]
    again = run_mesh(mesh.root, "repair", "--product", "sales.customers")
    assert again.returncode == 0 and "nothing to repair" in again.stdout


def test_a_corrupt_manifest_list_is_named_not_blamed_on_the_sql(mesh):
    state = Catalog(mesh).table_state(CUSTOMERS)
    manifest_list = Path(state.current.manifest_list.removeprefix("file://"))
    original = manifest_list.read_bytes()
    manifest_list.write_bytes(b"garbage" + original[7 : len(original) // 3])
    try:
        message = _failed_cleanly(run_mesh(mesh.root, "query", "--as", "sales", COUNT))
        assert "product sales.customers: the manifest list of snapshot" in message
        assert str(manifest_list) in message and "mesh repair --product sales.customers" in message
        assert "correct the SQL" not in message
        dry = run_mesh(mesh.root, "repair", "--product", "sales.customers", "--dry-run")
        assert dry.returncode == 0, _output(dry)
        assert "cannot be read" in " ".join(dry.stdout.split())
    finally:
        manifest_list.write_bytes(original)  # this test only checks the messages
    assert _count(mesh) == int(state.current.summary["total-records"])


def test_a_corrupt_data_file_is_named_with_the_product_and_the_fix(mesh):
    state = Catalog(mesh).table_state(CUSTOMERS)
    files = sorted((Path(state.location.removeprefix("file://")) / "data").rglob("*.parquet"))
    originals = {f: f.read_bytes() for f in files}
    for file, data in originals.items():
        file.write_bytes(data[: len(data) // 2])
    try:
        message = _failed_cleanly(run_mesh(mesh.root, "query", "--as", "sales", COUNT))
        assert "product sales.customers: a data file of its snapshot" in message
        assert "is missing or corrupt" in message
        assert "mesh build --full-refresh --product sales.customers" in message
        assert "correct the SQL" not in message
    finally:
        for file, data in originals.items():
            file.write_bytes(data)  # this test only checks the message
    assert _count(mesh) == int(state.current.summary["total-records"])


# -- 3. a full disk during a build --------------------------------------------------------------


def _fill(folder: Path, leave: int) -> Path:
    """A ballast file leaving ``leave`` bytes free on the filesystem of ``folder``."""
    ballast = folder / "ballast"
    free = shutil.disk_usage(folder).free
    with ballast.open("wb") as handle:
        handle.truncate(0)
        os.posix_fallocate(handle.fileno(), 0, max(0, free - leave))
    return ballast


def _run_limited(root: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
    """`mesh` with a file size limit: writes past ``limit`` bytes fail (EFBIG)."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    env = {**user_env(), "COLUMNS": "1000"}
    return subprocess.run(
        [MESH, "--root", str(root), *args], capture_output=True, text=True, timeout=1200,
        env=env, cwd=root, check=False, preexec_fn=limited,
    )  # fmt: skip


def _runs(mesh: Mesh) -> dict[str, str]:
    import dagster as dg

    from mesh_platform.instance import get_instance

    instance = get_instance(mesh)
    records = instance.get_run_records(filters=dg.RunsFilter(tags={"mesh/domain": "sales"}))
    return {r.dagster_run.run_id: r.dagster_run.status.value for r in records}


def test_a_full_disk_fails_the_build_cleanly_and_the_next_build_recovers(built):
    mesh, small_disk = built
    snapshots = {a: Catalog(mesh).table_state(ProductAddress.parse(a)).current for a in SALES}
    known = set(_runs(mesh))
    if small_disk:
        ballast = _fill(mesh.state_dir, leave=256 * 1024)
        try:
            result = run_mesh(mesh.root, "build", "--scale", str(SF), "--domain", "sales")
        finally:
            ballast.unlink()
    else:
        result = _run_limited(mesh.root, 1 << 20, "build", "--scale", str(SF), "--domain", "sales")
    message = _failed_cleanly(result)
    assert (
        "No space left on device" in message
        or "the disk is full" in message
        or "a file reached the size limit" in message
    ), message[-3000:]
    assert "free" in message and "space" in message  # the fix

    # Nothing published half: every product reads whole, at a snapshot of its own history.
    for address, before in snapshots.items():
        state = Catalog(mesh).table_state(ProductAddress.parse(address))
        assert state.current is not None
        assert before.snapshot_id in {s.snapshot_id for s in state.main_history}
        assert published_content(mesh, address)["rows"] == int(
            state.current.summary["total-records"]
        )
    if small_disk:  # the disk reserve let the failed build record its run's failure
        unfinished = {
            run: status
            for run, status in _runs(mesh).items()
            if run not in known and status in ("NOT_STARTED", "STARTING", "STARTED")
        }
        assert unfinished == {}, unfinished

    recovered = run_mesh(mesh.root, "build", "--scale", str(SF), "--domain", "sales")
    assert recovered.returncode == 0, _output(recovered)[-3000:]
    statuses = {run: s for run, s in _runs(mesh).items() if run not in known}
    assert "SUCCESS" in statuses.values()
    assert not {"NOT_STARTED", "STARTING", "STARTED"} & set(statuses.values()), statuses
    for address in SALES:
        assert published_content(mesh, address)["rows"] > 0


# -- 4. time travel after expiry ------------------------------------------------------------------


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def test_time_travel_says_expired_or_not_yet_published(mesh):
    history = Catalog(mesh).table_state(CUSTOMERS).main_history
    if len(history) < 2:  # a second publication to expire the first one
        again = run_mesh(mesh.root, "build", "--scale", str(SF), "--domain", "sales")
        assert again.returncode == 0, _output(again)[-3000:]
        history = Catalog(mesh).table_state(CUSTOMERS).main_history
    first, last = history[0], history[-1]
    created = Catalog(mesh).table_state(CUSTOMERS).created_ms
    assert created is not None and created <= first.timestamp_ms
    between = _iso((first.timestamp_ms + last.timestamp_ms) // 2)
    # Before expiry: travelling to the first snapshot's time works.
    result = run_mesh(mesh.root, "query", "--as", "sales", "--at", between, COUNT)
    assert result.returncode == 0, _output(result)

    time.sleep(1.1)
    maintained = run_mesh(
        mesh.root, "maintain", "--domain", "sales", "--retain", "1s", "--keep-last", "1"
    )
    assert maintained.returncode == 0, _output(maintained)[-3000:]
    kept = Catalog(mesh).table_state(CUSTOMERS)
    assert [s.snapshot_id for s in kept.main_history] == [last.snapshot_id]

    message = _failed_cleanly(run_mesh(mesh.root, "query", "--as", "sales", "--at", between, COUNT))
    oldest = dt.datetime.fromtimestamp(last.timestamp_ms / 1000, dt.UTC).isoformat(
        timespec="seconds"
    )
    assert "product sales.customers: the snapshots of that time were expired by maintenance" in (
        message
    )
    assert f"oldest kept: {oldest}" in message and "--retain" in message
    before_creation = _iso(created - 60_000)
    message = _failed_cleanly(
        run_mesh(mesh.root, "query", "--as", "sales", "--at", before_creation, COUNT)
    )
    assert "had no published snapshot at that time: it was not published yet" in message
    assert "expired" not in message
    message = _failed_cleanly(
        run_mesh(mesh.root, "query", "--as", "sales", "--at", str(first.snapshot_id), COUNT)
    )
    assert f"no published snapshot {first.snapshot_id}" in message
    assert f"oldest kept: {last.snapshot_id}" in message


# -- 5. dbt's artifacts ----------------------------------------------------------------------------


def test_dbt_runs_write_their_artifacts_under_the_state_dir_and_keep_the_last_few(mesh):
    project_target = mesh.root / "dbt_projects" / "sales" / "target"
    assert sorted(p.name for p in project_target.iterdir() if p.is_dir()) == []
    assert not (mesh.root / "dbt_projects" / "sales" / "logs").exists()
    runs = mesh.state_dir / "dbt" / "sales" / "target"
    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert 1 <= len(folders) <= RUN_ARTIFACTS_KEPT + 1
    assert all((f / "run_results.json").is_file() for f in folders)
    assert (runs / "partial_parse.msgpack").is_file()  # dbt skips parsing on each run


def test_old_run_artifacts_are_pruned_to_the_newest(tmp_path):
    for i in range(RUN_ARTIFACTS_KEPT + 3):
        folder = tmp_path / f"sales_dbt-{i:07x}-abcdef0"
        folder.mkdir()
        os.utime(folder, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "partial_parse.msgpack").write_bytes(b"kept")
    removed = prune_run_artifacts(tmp_path)
    assert sorted(p.name for p in removed) == [f"sales_dbt-{i:07x}-abcdef0" for i in range(3)]
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == RUN_ARTIFACTS_KEPT
    assert (tmp_path / "partial_parse.msgpack").read_bytes() == b"kept"


def test_repair_takes_an_access_error_for_what_it_is_never_for_corruption():
    """A metadata file that cannot be read for lack of access (permissions, an object store
    refusing) must never make `mesh repair` roll back or drop a healthy product."""
    from mesh_platform.storage.repair import StorageAccessError, _refuse_if_storage

    with pytest.raises(StorageAccessError) as err:
        _refuse_if_storage(PermissionError(13, "Permission denied"), "/w/t/metadata/3.json")
    assert "repair changed nothing" in err.value.what and "access" in err.value.fix
    wrapped = ValueError("could not load")
    wrapped.__cause__ = OSError(5, "Input/output error")
    with pytest.raises(StorageAccessError):
        _refuse_if_storage(wrapped, "/w/t/metadata/3.json")
    _refuse_if_storage(FileNotFoundError(2, "No such file"), "/w/t/metadata/3.json")  # missing
    _refuse_if_storage(ValueError("Expecting value: line 1"), "/w/t/metadata/3.json")  # corrupt
