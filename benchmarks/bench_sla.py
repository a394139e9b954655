"""What keeping the SLA history costs, and how fast `mesh sla` reads it.

1. Overhead per run. A domain run records its products' gate evaluations in one append to
   `mesh.sla_history` (`sla.history.record`, one Iceberg commit). Two ratios:
   a. against a real run: `mesh build --domain sales --scale 0.01` of a copy of the sample mesh
      (its three products); the append of three events is then timed on that mesh's catalog
      (target < 2% of the run);
   b. the worst case, against publishing alone: one product (--rows rows) published through
      the gate (`publish_product`) N times, each followed by its append.
2. `mesh sla` over a history of 10,000 runs: 10,000 gate events over 100 products are appended
   (in batches, as 10,000 runs would), then the attainment of every product over 30 days is
   computed from the history (`read_history` + `attainment`), timed.

    .venv/bin/python benchmarks/bench_sla.py [--runs 10000] [--publishes 7] [--rows 200000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import BIN, peak_rss_mb

from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.descriptor import DescriptorBody, ProductDescriptor
from mesh_platform.products.publish import publish_product
from mesh_platform.sla.attainment import attainment
from mesh_platform.sla.events import GateEvent
from mesh_platform.sla.history import read_history, record
from mesh_platform.storage.catalog import open_catalog
from mesh_platform.testing import copy_mesh


def _descriptor() -> ProductDescriptor:
    return ProductDescriptor(
        domain="sales",
        name="orders",
        description="Benchmark orders.",
        body=DescriptorBody(
            purpose="Benchmark of the SLA history overhead.",
            owner={"team": "sales", "contact": "sales@example.com"},
            version="1.0.0",
            sla={"expectations": [{"expect_column_values_to_not_be_null": {"column": "k"}}]},
        ),
        columns=[{"name": "k", "data_type": "bigint"}, {"name": "v", "data_type": "double"}],
        source_file="bench",
    )


def real_run(tmp: Path) -> tuple[float, float]:
    """(seconds of a real sales domain run, median seconds of appending its 3 events)."""
    import os
    import subprocess

    root = copy_mesh(tmp / "sample")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}
    subprocess.run([str(BIN / "mesh"), "--root", str(root), "prepare"], check=True, env=env,
                   capture_output=True)  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        [str(BIN / "mesh"), "--root", str(root), "build", "--domain", "sales", "--scale", "0.01"],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    run_s = time.perf_counter() - start
    mesh = load_mesh(root)
    catalog = open_catalog(mesh)
    now = dt.datetime.now(dt.UTC)
    appends = []
    for i in range(7):
        events = [
            GateEvent(now, f"sales.{p}", f"bench-{i}", True, 1, {"expectations": True}, (), 10, 1.0)
            for p in ("orders", "order_lines", "customers")
        ]
        start = time.perf_counter()
        record(mesh, events, catalog)
        appends.append(time.perf_counter() - start)
    catalog.engine.dispose()
    return run_s, statistics.median(appends[1:])


def overhead(root: Path, publishes: int, rows: int) -> tuple[float, float]:
    mesh = load_mesh(root)
    catalog = open_catalog(mesh)
    conn = connect()
    conn.execute(f"CREATE TABLE t AS SELECT range AS k, random() AS v FROM range({rows})")
    descriptor = _descriptor()
    publish_s, record_s = [], []
    for i in range(publishes):
        start = time.perf_counter()
        publication = publish_product(
            catalog, descriptor, conn, "main.t", batch_id=f"run-{i}", run_id=f"run-{i}"
        )
        publish_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        record(mesh, [GateEvent.of(publication, f"run-{i}")], catalog)
        record_s.append(time.perf_counter() - start)
    catalog.engine.dispose()
    return statistics.median(publish_s[1:]), statistics.median(record_s[1:])


def sla_read(root: Path, runs: int, batch: int = 500) -> tuple[float, float, int]:
    mesh = load_mesh(root)
    rng = random.Random(7)
    now = dt.datetime.now(dt.UTC)
    products = [f"d{i % 5}.p{i}" for i in range(100)]
    start = time.perf_counter()
    catalog = open_catalog(mesh)
    for first in range(0, runs, batch):
        events = [
            GateEvent(now - dt.timedelta(minutes=4 * (runs - n)), products[n % 100], f"r{n}",
                      ok := rng.random() > 0.03, n if ok else None, {"expectations": ok},
                      () if ok else ("expectations",), 1000, 0.5)
            for n in range(first, min(first + batch, runs))
        ]  # fmt: skip
        record(mesh, events, catalog)
    catalog.engine.dispose()
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    history = read_history(mesh, since=now - dt.timedelta(days=30))
    by_product: dict[str, list] = {}
    for row in history.to_pylist():
        by_product.setdefault(row["address"], []).append(
            (row["recorded_at"], row["passed"], row["failed_checks"])
        )
    results = [
        attainment(
            address,
            published=[t for t, ok, _ in rs if ok],
            max_age=dt.timedelta(hours=26),
            runs=rs,
            since=now - dt.timedelta(days=30),
            until=now,
            freshness_target=0.99,
            quality_target=0.95,
        )
        for address, rs in by_product.items()
    ]
    read_s = time.perf_counter() - start
    return write_s, read_s, sum(r.runs for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--publishes", type=int, default=7)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_s, append_s = real_run(Path(tmp))
        verdict = "ok" if append_s / run_s < 0.02 else "MISSES"
        print(f"sales domain run (mesh build --domain sales --scale 0.01): {run_s:.1f} s")
        print(f"its SLA history append (3 gate events): median {append_s * 1000:.0f} ms")
        print(f"overhead: {append_s / run_s:.2%} of the run (target < 2%: {verdict})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mesh"
        root.mkdir()
        (root / "mesh.yaml").write_text("state_dir: state\n")
        publish, rec = overhead(root, args.publishes, args.rows)
        print(f"publish through the gate ({args.rows:,} rows): median {publish * 1000:.0f} ms")
        print(f"record its SLA history (one Iceberg append): median {rec * 1000:.0f} ms")
        print(f"worst case: {rec / publish:.1%} of publishing alone (no dbt, no landing)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mesh"
        root.mkdir()
        (root / "mesh.yaml").write_text("state_dir: state\n")
        write_s, read_s, counted = sla_read(root, args.runs)
        print(f"history of {args.runs:,} runs written in {write_s:.1f} s "
              f"({args.runs // 500} appends)")  # fmt: skip
        print(f"attainment of 100 products over 30 days from {counted:,} runs: {read_s:.2f} s")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
