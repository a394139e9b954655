"""A product end to end: dbt builds sales.order_lines (6M rows at SF 1), then it is published.

One script, one copy of the sample mesh, the same landed data for every variant:

  a  mesh      `dbt run --select order_lines` (the model) started as a run starts it (the guard,
               warm: mesh_platform/dbt/warm.py), then the platform's publish_product
               as a run does it: schema check, stage on an audit branch (DuckDB COPY into the
               table folder + add_files), gate on the staged snapshot (the model's dbt tests from
               their compiled SQL, generic ones fused into one scan; Great Expectations suite,
               volume, data policies), fast-forward. Gate imports overlap the dbt subprocess as
               in a real run (gate.prewarm).
  b  baseline  `dbt run --select order_lines` (no tests), then DuckDB -> Arrow -> pyiceberg
               `table.append`: what a user would hand-wire, no gate at all.
  c  floor     DuckDB `COPY` of the built model's rows to one Parquet file.

Each variant runs in a fresh process against a fresh catalog (a first publication); medians
over --repeat runs. Peak memory is the publishing process's own peak RSS (dbt's subprocess is
reported separately).

Then the incremental case: sales.orders (partitioned by month) is built in full and published,
one day of orders is added to the raw landing, and the product is rebuilt and republished;
the second run's cost is reported as a fraction of the first.

    .venv/bin/python benchmarks/bench_product_publish.py --scale 1 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BIN, peak_rss_mb

from mesh_platform.testing import copy_mesh, user_env

DOMAIN = "sales"


def _env(root: Path) -> dict[str, str]:
    return {**user_env(), "MESH_STATE_DIR": str(root / "state")}


def _guard(root: Path) -> str:
    """The dbt executable a run gives dagster-dbt: the guard, warm as mesh.yaml's default."""
    from mesh_platform.dbt.lockdown import guarded_dbt_executable, warm_config

    return guarded_dbt_executable(str(BIN / "dbt"), root / "state" / "bin", warm=warm_config())


def _wait_for_warm_worker() -> bool:
    """After a first guarded dbt: wait until the worker it started serves (what a mesh that
    ran dbt before has)."""
    from mesh_platform.dbt.lockdown import warm_config

    socket = Path((warm_config() or {}).get("socket", "/nonexistent"))
    deadline = time.monotonic() + 60
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return socket.exists()


def _dbt(root: Path, *args: str, guarded: bool = False) -> dict:
    """dbt as the run's step invokes it (``guarded``: through the guard, warm) or as a user
    would by hand (plain ``dbt``): artifacts in a target path of their own (a run never writes
    over the prepared manifest, which holds the tests' compiled SQL)."""
    project = root / "dbt_projects" / DOMAIN
    target = root / "state" / "dbt-target"
    dbt = _guard(root) if guarded else str(BIN / "dbt")
    subprocess.run(
        [dbt, *args, "--project-dir", str(project), "--profiles-dir", str(project),
         "--target-path", str(target), "--quiet"],
        check=True, env=_env(root), cwd=project, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return json.loads((target / "run_results.json").read_text())


def _fresh_catalog(root: Path) -> None:
    for name in ("catalog", "warehouse"):
        shutil.rmtree(root / "state" / name, ignore_errors=True)


def _descriptor(root: Path, product: str):
    from mesh_platform.config import load_mesh
    from mesh_platform.dbt.project import load_manifest
    from mesh_platform.domain import load_domain
    from mesh_platform.products.inventory import product_descriptors

    mesh = load_mesh(root)
    domain = load_domain(mesh, DOMAIN)
    manifest = load_manifest(domain)
    descriptors = product_descriptors(DOMAIN, manifest)
    uid = next(u for u, d in descriptors.items() if d.name == product)
    node = manifest["nodes"][uid]
    return mesh, descriptors[uid], f"{node['schema']}.{node['alias']}", uid, manifest


def _publish(root: Path, product: str, run_results: dict) -> tuple[float, object]:
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.products.dbt_tests import dbt_tests, subject
    from mesh_platform.products.publish import publish_product
    from mesh_platform.storage.catalog import open_catalog

    mesh, descriptor, relation, uid, manifest = _descriptor(root, product)
    assert all(r["status"] == "success" for r in run_results["results"])
    start = time.perf_counter()
    tests = [t for t in dbt_tests(manifest) if subject(t) == uid]  # as assets.dbt_checks plans
    catalog = open_catalog(mesh)
    conn = connect(mesh.duckdb_path(DOMAIN))  # as assets/dbt.py publishes
    try:
        publication = publish_product(
            catalog, descriptor, conn, relation, batch_id=f"bench-{time.time_ns()}",
            run_id="bench", tests=tests, dbt_relation=manifest["nodes"][uid]["relation_name"],
        )  # fmt: skip
    finally:
        conn.close()
    assert publication.published, publication.error
    return time.perf_counter() - start, publication


def _child(variant: str, root: Path) -> None:
    from mesh_platform.products.gate import prewarm

    out: dict[str, object] = {}
    start = time.perf_counter()
    if variant == "a":
        _, descriptor, *_ = _descriptor(root, "order_lines")
        warm = prewarm([descriptor])
        results = _dbt(root, "run", "--select", "order_lines", guarded=True)
        out["dbt_seconds"] = time.perf_counter() - start
        warm.join()
        out["publish_seconds"], publication = _publish(root, "order_lines", results)
        assert len(publication.tests) >= 4 and all(o.passed for o in publication.tests.values())
        out["dbt_test_seconds"] = sum(
            o.metadata.get("seconds", 0.0) for o in publication.tests.values()
        )
        checks = {n: o.metadata.get("seconds", 0.0) for n, o in publication.outcomes.items()}
        out["gate_seconds"] = sum(checks.values()) + out["dbt_test_seconds"]
        out["checks"] = checks
    elif variant == "b":
        _dbt(root, "run", "--select", "order_lines")
        out["dbt_seconds"] = time.perf_counter() - start
        from mesh_platform.config import load_mesh
        from mesh_platform.duckdb_ext import connect
        from mesh_platform.storage.catalog import open_catalog

        t = time.perf_counter()
        mesh = load_mesh(root)
        catalog = open_catalog(mesh)
        conn = connect(mesh.duckdb_path(DOMAIN), read_only=True)
        arrow = conn.execute("SELECT * FROM main.order_lines").arrow()
        catalog.create_namespace_if_not_exists("sales")
        table = catalog.create_table_if_not_exists(("sales", "order_lines"), arrow.schema)
        table.append(arrow)
        out["publish_seconds"] = time.perf_counter() - t
    else:
        from mesh_platform.config import load_mesh
        from mesh_platform.duckdb_ext import connect

        mesh = load_mesh(root)
        conn = connect(mesh.duckdb_path(DOMAIN), read_only=True)
        target = root / "state" / "floor.parquet"
        conn.execute(f"COPY main.order_lines TO '{target}' (FORMAT parquet)")
        target.unlink()
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"] = peak_rss_mb()
    out["dbt_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(out))


def _add_one_day_of_orders(root: Path) -> int:
    """Append one day (the day after the last) of orders to the raw landing, as a new extract."""
    from mesh_platform.duckdb_ext import connect

    raw = root / "state" / "domains" / DOMAIN / "raw" / "orders.parquet"
    conn = connect(":memory:")
    conn.execute(f"CREATE TABLE o AS SELECT * FROM read_parquet('{raw}')")
    before = conn.execute("SELECT count(*) FROM o").fetchone()[0]
    conn.execute(
        "INSERT INTO o BY NAME SELECT o_orderkey + (SELECT max(o_orderkey) FROM o) AS o_orderkey, "
        "* EXCLUDE (o_orderkey, o_orderdate), (SELECT max(o_orderdate) FROM o) + 1 AS o_orderdate "
        "FROM o WHERE o_orderdate = (SELECT max(o_orderdate) FROM o)"
    )
    added = conn.execute("SELECT count(*) FROM o").fetchone()[0] - before
    conn.execute(f"COPY o TO '{raw}' (FORMAT parquet)")
    return added


def _incremental(root: Path) -> dict[str, float]:
    _fresh_catalog(root)
    start = time.perf_counter()
    results = _dbt(root, "run", "--select", "orders", "--full-refresh", guarded=True)
    full_publish, full = _publish(root, "orders", results)
    full_seconds = time.perf_counter() - start
    added = _add_one_day_of_orders(root)
    start = time.perf_counter()
    results = _dbt(root, "run", "--select", "orders", guarded=True)
    inc_publish, inc = _publish(root, "orders", results)
    inc_seconds = time.perf_counter() - start
    return {
        "added_rows": added,
        "full_seconds": full_seconds,
        "full_publish_seconds": full_publish,
        "full_rows_written": full.stage.row_count,
        "incremental_seconds": inc_seconds,
        "incremental_publish_seconds": inc_publish,
        "incremental_rows_written": inc.stage.row_count,
        "partitions": inc.partitions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = copy_mesh(Path(tmp) / "mesh")
        from mesh_platform.config import load_mesh
        from mesh_platform.dbt.project import prepare
        from mesh_platform.domain import load_domain
        from mesh_platform.sources.tpch import land_tpch

        mesh = load_mesh(root)
        domain = load_domain(mesh, DOMAIN)
        land_tpch(mesh.raw_dir(DOMAIN), domain.spec.raw.tables, args.scale)
        prepare(mesh, domain)
        _dbt(root, "run", guarded=True)  # staging views and upstream tables, once
        warm = _wait_for_warm_worker()  # the mesh's dbt runs warm from here (mesh.yaml default)
        runs: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
        for _ in range(args.repeat):
            for variant in runs:
                _fresh_catalog(root)
                out = subprocess.run(
                    [sys.executable, __file__, "--child", variant, str(root)],
                    capture_output=True, text=True, check=False, env=_env(root),
                )  # fmt: skip
                if out.returncode:
                    sys.exit(f"variant {variant} failed:\n{out.stderr[-4000:]}")
                runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
        inc = _incremental(root)

    med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in runs.items()}
    pub_a = statistics.median(r["publish_seconds"] for r in runs["a"])
    pub_b = statistics.median(r["publish_seconds"] for r in runs["b"])
    gate_a = statistics.median(r["gate_seconds"] for r in runs["a"])
    tests_a = statistics.median(r["dbt_test_seconds"] for r in runs["a"])
    dbt_a = statistics.median(r["dbt_seconds"] for r in runs["a"])
    dbt_b = statistics.median(r["dbt_seconds"] for r in runs["b"])
    print(f"sales.order_lines at TPC-H SF {args.scale}, median of {args.repeat} (one process each)"
          f"; the mesh's dbt {'warm' if warm else 'cold (no warm worker)'}, the baseline's "
          "plain `dbt`")  # fmt: skip
    print(f"  a mesh (dbt run + gate + WAP)     {med['a']:7.2f} s  publication step {pub_a:.2f} s "
          f"(gate {gate_a:.2f} s)  peak RSS {max(r['peak_mb'] for r in runs['a']):.0f} MB, "
          + ("dbt: a fork of the warm worker, not measured here" if warm else
             f"dbt {max(r['dbt_peak_mb'] for r in runs['a']):.0f} MB"))  # fmt: skip
    print(f"  b baseline (dbt run + append)     {med['b']:7.2f} s  publication step {pub_b:.2f} s "
          f"peak RSS {max(r['peak_mb'] for r in runs['b']):.0f} MB, "
          f"dbt {max(r['dbt_peak_mb'] for r in runs['b']):.0f} MB")  # fmt: skip
    print(f"  c floor (COPY to Parquet)         {med['c']:7.2f} s")
    print(
        f"  dbt step: a {dbt_a:.2f} s, b {dbt_b:.2f} s; the dbt tests ran in the gate on the "
        f"staged snapshot in {tests_a:.2f} s; publication step a / b = {pub_a / pub_b:.2f}"
    )
    policies = statistics.median(
        sum(r["checks"].get(c, 0.0) for c in ("pii_detection", "pii_masking_verified"))
        for r in runs["a"]
    )
    print(
        f"  governance data policies in the gate: {policies:.2f} s = "
        f"{policies / med['a']:.1%} of the product's build (target < 15%)"
    )
    print(f"  a / b = {med['a'] / med['b']:.2f}  (target < 1.0)")
    print(f"  publication step / c = {pub_a / med['c']:.2f}  (target <= 1.3)")
    print(
        f"incremental sales.orders: +{inc['added_rows']} orders (one day); "
        f"full build+publish {inc['full_seconds']:.2f} s ({inc['full_rows_written']} rows "
        f"written), incremental {inc['incremental_seconds']:.2f} s "
        f"({inc['incremental_rows_written']} rows written, {inc['partitions']}): "
        f"{inc['incremental_seconds'] / inc['full_seconds']:.2f} of the full run (target <= "
        f"0.15); publication "
        f"{inc['incremental_publish_seconds']:.2f} s vs {inc['full_publish_seconds']:.2f} s"
    )


if __name__ == "__main__":
    main()
