"""Publishing a product of TPC-H line items (6M rows at SF 1), three ways, same data, one script:

  floor    DuckDB `COPY` of the rows to one Parquet file (the physical floor of any publication)
  append   what a user would hand-wire: DuckDB -> Arrow -> pyiceberg `table.append`, no gate
  wap      the mesh's write-audit-publish: Parquet into the table folder, registered on an audit
           branch, (gate), ancestry-checked fast-forward of main

Each run is a fresh process (so peak RSS is its own); medians over --repeat runs.

    .venv/bin/python benchmarks/bench_publish.py --scale 1 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _child(variant: str, db: str, root: str) -> None:
    from mesh_platform.addressing import ProductAddress, quote_literal
    from mesh_platform.config import load_mesh
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.storage.catalog import open_catalog
    from mesh_platform.testing import publish_from_duckdb

    # One-time import (pyiceberg.io.pyarrow pulls pyarrow.dataset and pandas: ~2 s cold). A run
    # process pays it once, whatever it publishes; it is reported, not timed as publication.
    start = time.perf_counter()
    import pyiceberg.io.pyarrow  # noqa: F401

    import_seconds = time.perf_counter() - start
    mesh = load_mesh(root)
    mesh.ensure_state_dir()
    conn = connect(db, read_only=True, extensions=("iceberg",))
    catalog = open_catalog(mesh)
    address = ProductAddress("bench", f"lineitem_{variant}")
    start = time.perf_counter()
    if variant == "floor":
        target = Path(root) / "floor.parquet"
        conn.execute(f"COPY lineitem TO {quote_literal(str(target))} (FORMAT parquet)")
    elif variant == "append":
        arrow = conn.execute("SELECT * FROM lineitem").arrow()
        catalog.create_namespace_if_not_exists("bench")
        table = catalog.create_table_if_not_exists(address.iceberg_identifier, arrow.schema)
        table.append(arrow)
    else:
        publish_from_duckdb(catalog, address, conn, "main.lineitem", properties={})
    seconds = time.perf_counter() - start
    from _common import peak_rss_mb

    peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "import_seconds": import_seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    from mesh_platform.duckdb_ext import connect

    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "tpch.duckdb")
        conn = connect(db, extensions=("tpch",))
        conn.execute("CALL dbgen(sf = ?)", [args.scale])
        rows = conn.execute("SELECT count(*) FROM lineitem").fetchone()[0]
        conn.close()
        results: dict[str, list[dict]] = {"floor": [], "append": [], "wap": []}
        for i in range(args.repeat):
            for variant in results:
                root = Path(tmp) / f"{variant}-{i}"
                root.mkdir()
                (root / "mesh.yaml").write_text("state_dir: state\n")
                out = subprocess.run(
                    [sys.executable, __file__, "--child", variant, db, str(root)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in results.items()}
        peak = {v: max(r["peak_mb"] for r in rs) for v, rs in results.items()}
        print(f"lineitem SF {args.scale}: {rows:,} rows, median of {args.repeat}")
        for variant in results:
            print(f"  {variant:<7} {med[variant]:7.2f} s   peak RSS {peak[variant]:7.0f} MB")
        imports = statistics.median(r["import_seconds"] for rs in results.values() for r in rs)
        print(f"  (not timed above: one-time import of pyiceberg.io.pyarrow, {imports:.2f} s)")
        print(f"  wap / floor  = {med['wap'] / med['floor']:.2f}  (target <= 1.5)")
        print(f"  wap / append = {med['wap'] / med['append']:.2f}")


if __name__ == "__main__":
    main()
