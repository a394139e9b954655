"""Write-audit-publish on a tmp sqlite catalog: staged data is invisible until published, a
publish never drops a concurrent commit, a retried batch is not written twice. Concurrent and
killed publishers run on both profiles (``profile``: sqlite, and PostgreSQL with S3, marked
production)."""

import pytest
from pyiceberg.exceptions import NoSuchTableError

from mesh_platform.addressing import ProductAddress
from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import ConcurrentPublishError, MeshError, ProductNotPublishedError
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.storage.metadata import is_published
from mesh_platform.storage.wap import publish_audited, stage_to_audit
from mesh_platform.testing import publish_from_duckdb, read_published

ORDERS = ProductAddress("sales", "orders")


@pytest.fixture
def conn():
    conn = connect(extensions=("iceberg",))
    conn.execute("CREATE TABLE v1 AS SELECT range AS order_key FROM range(10)")
    conn.execute("CREATE TABLE v2 AS SELECT range AS order_key FROM range(20)")
    conn.execute("CREATE TABLE v3 AS SELECT range AS order_key FROM range(30)")
    yield conn
    conn.close()


def _main(catalog):
    return catalog.load_table(("sales", "orders")).current_snapshot().snapshot_id


def _rows(catalog, ref=None):
    scan = catalog.load_table(("sales", "orders")).scan()
    return (scan.use_ref(ref) if ref else scan).to_arrow().num_rows


def test_staged_data_is_invisible_until_published(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v1", properties={})
    before = _main(catalog)
    stage = stage_to_audit(catalog, ORDERS, conn, "main.v2", batch_id="run-2", properties={})
    # the gate failed (or has not run): main has not moved, the audit branch holds the new data
    assert _main(catalog) == before
    assert _rows(catalog) == 10
    assert _rows(catalog, stage.branch) == 20
    assert publish_audited(catalog, stage) == stage.snapshot_id
    assert _main(catalog) == stage.snapshot_id
    assert _rows(catalog) == 20
    table = catalog.load_table(("sales", "orders"))
    assert stage.branch not in table.metadata.refs  # cleaned up once published
    assert table.current_snapshot().summary["mesh.batch_id"] == "run-2"


def test_a_new_product_is_not_readable_before_its_first_publish(mesh, catalog, conn):
    stage = stage_to_audit(catalog, ORDERS, conn, "main.v1", batch_id="first", properties={})
    with pytest.raises(ProductNotPublishedError):
        read_published(mesh, ORDERS)  # main holds only the empty initial snapshot
    publish_audited(catalog, stage)
    assert read_published(mesh, ORDERS)[1] == 10


def test_a_retried_batch_publishes_nothing_twice(catalog, conn):
    first = publish_from_duckdb(catalog, ORDERS, conn, "main.v1", properties={}, batch_id="b1")
    snapshots = len(catalog.load_table(("sales", "orders")).snapshots())
    again = publish_from_duckdb(catalog, ORDERS, conn, "main.v2", properties={}, batch_id="b1")
    assert again.already_published
    assert again.snapshot_id == first.snapshot_id
    assert len(catalog.load_table(("sales", "orders")).snapshots()) == snapshots
    assert _rows(catalog) == 10


def test_publishing_never_drops_a_concurrent_commit(catalog, conn):
    publish_from_duckdb(catalog, ORDERS, conn, "main.v1", properties={})
    slow = stage_to_audit(catalog, ORDERS, conn, "main.v2", batch_id="slow", properties={})
    fast = publish_from_duckdb(catalog, ORDERS, conn, "main.v3", properties={}, batch_id="fast")
    with pytest.raises(ConcurrentPublishError) as err:
        publish_audited(catalog, slow)
    assert "run the product again" in str(err.value)
    assert _main(catalog) == fast.snapshot_id
    assert _rows(catalog) == 30
    # the retry restages from the new main and publishes
    retry = stage_to_audit(catalog, ORDERS, conn, "main.v2", batch_id="slow", properties={})
    publish_audited(catalog, retry)
    assert _rows(catalog) == 20


def test_concurrent_publishers_lose_nothing(tmp_path, profile):
    """Four writers publish the same product at once, each from its own catalog and DuckDB:
    every batch publishes, once. On sqlite they take turns (a lock file beside the catalog); on
    PostgreSQL a writer that lost a race restages and publishes."""
    acknowledged, failed = concurrent_publishers(tmp_path)
    assert failed == [] and len(acknowledged) == 12
    if profile:  # production: the table's metadata is in the profile's own warehouse prefix
        table = open_catalog(load_mesh(tmp_path)).load_table(("sales", "orders"))
        assert table.metadata_location.startswith(profile["MESH_CATALOG__WAREHOUSE"])


def concurrent_publishers(tmp_path, writers: int = 4, batches: int = 3):
    """Run the concurrent publishers on the mesh at ``tmp_path`` (its profile from the
    environment); assert nothing was lost; return (acknowledged, cleanly failed) batches."""
    import threading

    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    mesh = load_mesh(tmp_path)
    mesh.ensure_state_dir()
    acknowledged: list[tuple[str, int]] = []
    clean_failures: list[str] = []
    unclean: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        catalog = open_catalog(mesh)
        conn = connect()
        conn.execute(f"CREATE TABLE t AS SELECT range AS order_key FROM range({n + 1})")
        for i in range(batches):
            batch = f"w{n}-{i}"
            try:
                result = publish_from_duckdb(
                    catalog, ORDERS, conn, "main.t", properties={}, batch_id=batch
                )
            except ConcurrentPublishError:
                with lock:
                    clean_failures.append(batch)
                continue
            except Exception as exc:  # anything else is not a clean failure
                with lock:
                    unclean.append(f"{batch}: {type(exc).__name__}: {exc}")
                continue
            with lock:
                acknowledged.append((batch, result.snapshot_id))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    catalog = open_catalog(mesh)
    table = catalog.load_table(("sales", "orders"))
    history, snapshot = [], table.current_snapshot()
    while snapshot is not None:
        history.append(snapshot)
        snapshot = (
            table.snapshot_by_id(snapshot.parent_snapshot_id)
            if snapshot.parent_snapshot_id
            else None
        )
    published_batches = [s.summary.get("mesh.batch_id") for s in history]
    assert unclean == []
    assert len(acknowledged) + len(clean_failures) == writers * batches
    for batch, snapshot_id in acknowledged:
        assert batch in published_batches
        assert table.snapshot_by_id(snapshot_id) is not None
    # a batch is committed by one delete + one add snapshot, never twice
    for batch, _ in acknowledged:
        assert published_batches.count(batch) <= 2
    assert not [b for b in clean_failures if b in published_batches]
    assert table.scan().to_arrow().num_rows >= 1
    return acknowledged, clean_failures


def test_a_killed_publisher_leaves_a_readable_table(tmp_path, profile):
    """A publisher killed with SIGKILL at random moments: the table always loads and main is
    always a batch the publisher had acknowledged (or the one being published)."""
    assert killed_publisher(tmp_path)


def killed_publisher(tmp_path) -> list[str]:
    """Kill a publisher of the mesh at ``tmp_path`` (its profile from the environment, which
    the child inherits) three times; assert the table stays readable; the acknowledged batches."""
    import random
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "mesh.yaml").write_text("state_dir: state\n")
    child = f"""
import sys
from mesh_platform.addressing import ProductAddress
from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.testing import publish_from_duckdb
mesh = load_mesh({str(tmp_path)!r}); mesh.ensure_state_dir()
catalog = open_catalog(mesh)
conn = connect()
conn.execute("CREATE TABLE t AS SELECT range AS order_key FROM range(1000)")
for i in range(10_000):
    publish_from_duckdb(catalog, ProductAddress("sales", "orders"), conn, "main.t",
                        properties={{}}, batch_id=f"{{sys.argv[1]}}-{{i}}")
    print(f"{{sys.argv[1]}}-{{i}}", flush=True)
"""
    rng = random.Random(7)
    acknowledged: list[str] = []
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", child, f"k{round_}"], stdout=subprocess.PIPE, text=True
        )
        first = proc.stdout.readline()  # publishing is under way once the first batch is acked
        time.sleep(rng.random() * 1.5)  # then kill it at a random moment of the loop
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
        out = first + rest
        acknowledged += out.split()
        catalog = open_catalog(load_mesh(tmp_path))
        try:
            table = catalog.load_table(("sales", "orders"))
        except NoSuchTableError:  # killed before creating the table: nothing acknowledged
            assert not acknowledged
            continue
        main = table.current_snapshot()
        if not is_published(main):  # killed before the first publish
            assert not acknowledged
            continue
        assert table.scan().to_arrow().num_rows == 1000
        in_flight = f"k{round_}-{len(out.split())}"
        assert main.summary.get("mesh.batch_id") in (*acknowledged, in_flight)
    assert acknowledged, "the publisher never got to publish before being killed"
    return acknowledged


def test_a_table_located_outside_the_warehouse_is_refused(catalog, conn, tmp_path):
    outside = tmp_path / "elsewhere"
    catalog.create_namespace("sales")
    catalog.create_table(
        ("sales", "orders"),
        schema=conn.execute("SELECT * FROM v1 LIMIT 0").arrow().schema,
        location=f"file://{outside}",
    )
    with pytest.raises(MeshError, match="outside its warehouse folder"):
        publish_from_duckdb(catalog, ORDERS, conn, "main.v1", properties={})
    assert not list(outside.rglob("*.parquet"))


def test_a_table_located_in_another_tables_folder_is_refused(catalog, conn):
    """Inside the warehouse is not enough: a table's files live in its own folder only."""
    sibling = f"{catalog.properties['warehouse'].rstrip('/')}/logistics/parts"
    catalog.create_namespace("sales")
    catalog.create_table(
        ("sales", "orders"),
        schema=conn.execute("SELECT * FROM v1 LIMIT 0").arrow().schema,
        location=sibling,
    )
    with pytest.raises(MeshError, match="outside its warehouse folder"):
        publish_from_duckdb(catalog, ORDERS, conn, "main.v1", properties={})
