"""Fault 1 of issue 14: `mesh maintain` must never hurt a reader or a writer.

Injected on a real build of the sample mesh's sales domain: maintenance racing `mesh build`
(every table file aged past the orphan margin the moment it is written, so only the publication
lock and the re-check protect it), a margin below the floor, a publisher holding the lock with
its branch at an old main, a publisher SIGKILLed between writing its data file and committing
it, and a corrupt metadata file. After each, every product loads and equals what it was before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.locks import product_lock
from mesh_platform.storage.maintenance import MIN_ORPHAN_MARGIN, maintain
from mesh_platform.storage.warehouse import local_path
from mesh_platform.testing import SF, build_sample_mesh, read_published, run_mesh

pytestmark = pytest.mark.e2e  # module-scoped builds of the sample mesh

SALES_BUILD = ("build", "--domain", "sales", "--scale", str(SF))
CUSTOMERS = ProductAddress("sales", "customers")
ORDERS = ProductAddress("sales", "orders")


@pytest.fixture(scope="module")
def sales_mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    return build_sample_mesh(tmp_path_factory.mktemp("maintenance") / "mesh", "--domain", "sales")


@pytest.fixture(scope="module")
def published(sales_mesh: Mesh) -> dict[str, tuple]:
    """Every product as the build left it: (columns, row count)."""
    return read_all(sales_mesh)


def read_all(mesh: Mesh) -> dict[str, tuple]:
    catalog = open_catalog(mesh)
    addresses = [
        f"{namespace[0]}.{name}"
        for namespace in catalog.list_namespaces()
        if namespace[0] != "mesh"
        for _, name in catalog.list_tables(namespace)
    ]
    return {a: read_published(mesh, ProductAddress.parse(a)) for a in sorted(addresses)}


def table_folders(mesh: Mesh) -> list[Path]:
    """The folders of the sales tables in the warehouse (not the cut markers beside them)."""
    root = local_path(mesh.warehouse) / "sales"
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")]


def age(paths, seconds: float = 86400) -> None:
    """Files as if written ``seconds`` ago: past any orphan margin."""
    old = time.time() - seconds
    for path in paths:
        # deleted meanwhile (by maintenance, or a writer's cleanup): nothing to age
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, (old, old))


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def refs(mesh: Mesh, address: ProductAddress) -> set[str]:
    return set(open_catalog(mesh).load_table(address.iceberg_identifier).metadata.refs)


class Ager(FileSystemEventHandler):
    """Ages every file of the sales tables as soon as it is written (inotify), so that the
    orphan margin protects nothing: only the publication lock and the re-check do."""

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, event.dest_path):
            if path and not event.is_directory:
                with contextlib.suppress(OSError):  # gone meanwhile, or a folder
                    if os.stat(path).st_mtime > time.time() - 3600:  # not aged yet
                        age([path])


def test_maintain_racing_a_sales_build_never_breaks_a_product_or_the_build(sales_mesh, published):
    """Maintenance in a tight loop while sales publishes, every table file aged past the
    orphan margin the moment it is written, a reader reading every product meanwhile. Before
    the fix (no lock, no re-check), the same race deleted metadata files publishers had just
    committed and data files they had just written: products unreadable, the build failed,
    and every later build too."""
    builds: list[subprocess.CompletedProcess] = []
    unreadable: list[str] = []
    done = threading.Event()

    def build() -> None:
        try:
            builds.append(run_mesh(sales_mesh.root, *SALES_BUILD))
        finally:
            done.set()

    def read() -> None:
        while not done.is_set():
            try:
                assert read_all(sales_mesh).keys() == published.keys()
            except Exception as exc:  # every failure is the finding
                unreadable.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.2)

    tables = [ProductAddress("sales", p.name) for p in table_folders(sales_mesh)]
    observer = Observer()
    for folder in table_folders(sales_mesh):
        observer.schedule(Ager(), str(folder), recursive=True)
    observer.start()
    threads = [threading.Thread(target=build), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    tries = 0
    try:
        catalog = open_catalog(sales_mesh)
        while not done.is_set():
            for address in tables:  # what `mesh maintain --domain sales` does, without a
                report = maintain(  # process's start-up cost between tries: it races more
                    catalog, address, retain=timedelta(seconds=1), keep_last=2,
                    orphan_margin=MIN_ORPHAN_MARGIN, lock_wait=timedelta(minutes=10),
                )  # fmt: skip
                assert report.skipped is None, report.skipped
                tries += 1
            time.sleep(0.2)
    finally:
        done.set()
        for thread in threads:
            thread.join()
        observer.stop()
        observer.join()
    assert builds and builds[0].returncode == 0, builds[0].stdout[-3000:] + builds[0].stderr[-5000:]
    assert unreadable == []
    assert tries >= len(tables)  # it raced the build
    result = run_mesh(
        sales_mesh.root, "maintain", "--domain", "sales", "--retain", "1s", "--orphan-margin",
        "15m",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_all(sales_mesh) == published


def test_an_orphan_margin_below_the_floor_is_refused(sales_mesh, published):
    leftover = local_path(sales_mesh.warehouse) / "sales" / "orders" / "data" / "leftover.parquet"
    leftover.write_bytes(b"written by a run that died")
    age([leftover])
    for margin, why in (("14m", "is below the safe floor of 15m"), ("-1h", "longer than zero")):
        result = run_mesh(sales_mesh.root, "maintain", "--orphan-margin", margin)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Invalid value for '--orphan-margin'" in result.stderr and why in result.stderr
        assert "Traceback" not in result.stderr
    assert leftover.exists()  # refused before touching anything
    leftover.unlink()
    assert read_all(sales_mesh) == published


def test_a_product_being_published_is_skipped_and_its_branch_spared(sales_mesh, published):
    """The test holds sales.orders' lock as a publisher does, with its audit branch just
    created at main's head, older than --retain: maintenance must not drop the branch (the
    publication would fail) nor delete the batch's files; it skips the product and says so.
    The other products are maintained. Once the lock is free, the branch (nothing staged) can
    only be a dead run's and goes."""
    catalog = open_catalog(sales_mesh)
    orders = catalog.load_table(ORDERS.iceberg_identifier)
    staged = local_path(orders.location()) / "data" / "staged-by-the-publisher.parquet"
    with product_lock(catalog, ORDERS):
        with orders.manage_snapshots() as snapshots:
            snapshots.create_branch(orders.current_snapshot().snapshot_id, "audit-in-flight")
        staged.write_bytes(b"being committed")
        age([staged])
        result = run_mesh(
            sales_mesh.root, "maintain", "--domain", "sales", "--retain", "1s",
            "--lock-wait", "2s",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "skipped sales.orders: publication in progress" in result.stderr
        assert "run again" in result.stderr
        rows = {line.split()[1]: line for line in result.stdout.splitlines() if "sales." in line}
        assert "skipped" in rows["sales.orders"]
        assert "ok" in rows["sales.customers"] and "ok" in rows["sales.order_lines"]
        assert "audit-in-flight" in refs(sales_mesh, ORDERS)
        assert staged.exists()

    result = run_mesh(sales_mesh.root, "maintain", "--domain", "sales", "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed branch audit-in-flight (nothing staged: left by a dead run)" in result.stdout
    assert "audit-in-flight" not in refs(sales_mesh, ORDERS)
    assert not staged.exists()
    assert read_all(sales_mesh) == published


KILLED_PUBLISHER = """
import os, signal, sys
import pyiceberg.table
from mesh_platform.addressing import ProductAddress
from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.wap import write_audit_publish

address = ProductAddress.parse(sys.argv[2])
catalog = open_catalog(load_mesh(sys.argv[1]))
rows = catalog.load_table(address.iceberg_identifier).scan().to_arrow()
conn = connect()
conn.register("rows", rows)
conn.execute("CREATE TABLE batch AS SELECT * FROM rows")

def die(*args, **kwargs):  # the data file is written, its commit not yet made
    os.kill(os.getpid(), signal.SIGKILL)

pyiceberg.table.Table.transaction = die
write_audit_publish(catalog, address, conn, "main.batch", batch_id="killed-run", properties={})
"""


def test_a_killed_publishers_leftovers_are_listed_by_dry_run_and_removed(sales_mesh, published):
    folder = local_path(
        open_catalog(sales_mesh).load_table(CUSTOMERS.iceberg_identifier).location()
    )
    before = files_under(folder)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_PUBLISHER, str(sales_mesh.root), str(CUSTOMERS)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "audit-killed-run" in refs(sales_mesh, CUSTOMERS)
    leftovers = {p for p in files_under(folder) - before if p.suffix == ".parquet"}
    assert leftovers  # DuckDB wrote the batch's data file, never registered
    age(leftovers, 3600)

    dry = run_mesh(sales_mesh.root, "maintain", "--domain", "sales", "--dry-run", "--verbose")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would remove branch audit-killed-run" in dry.stdout
    for path in leftovers:
        assert f"would remove file {path.resolve()}" in dry.stdout
    customers_row = next(line for line in dry.stdout.splitlines() if "sales.customers" in line)
    assert "audit-killed-run" in customers_row and f"{len(leftovers)} data" in customers_row
    assert "audit-killed-run" in refs(sales_mesh, CUSTOMERS)  # a dry run changes nothing
    assert all(path.exists() for path in leftovers)

    real = run_mesh(sales_mesh.root, "maintain", "--domain", "sales")
    assert real.returncode == 0, real.stdout + real.stderr
    assert "audit-killed-run" not in refs(sales_mesh, CUSTOMERS)
    assert not any(path.exists() for path in leftovers)
    assert read_all(sales_mesh) == published


def test_a_corrupt_metadata_file_fails_its_product_cleanly_and_spares_the_others(
    sales_mesh, published
):
    table = open_catalog(sales_mesh).load_table(CUSTOMERS.iceberg_identifier)
    metadata = local_path(table.metadata_location)
    good = metadata.read_bytes()
    leftover = local_path(table.location()) / "data" / "leftover.parquet"
    leftover.write_bytes(b"written by a run that died")
    age([leftover])
    metadata.write_bytes(good[: len(good) // 3])
    try:
        result = run_mesh(sales_mesh.root, "maintain", "--domain", "sales")
    finally:
        metadata.write_bytes(good)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "error: product sales.customers: its table cannot be read" in result.stderr
    assert str(metadata) in result.stderr
    assert "fix: run `mesh repair --product sales.customers`" in result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if "sales." in line}
    assert "failed" in rows["sales.customers"]
    assert "ok" in rows["sales.orders"] and "ok" in rows["sales.order_lines"]
    assert leftover.exists()  # nothing of the failed product was deleted
    leftover.unlink()
    assert read_all(sales_mesh) == published
