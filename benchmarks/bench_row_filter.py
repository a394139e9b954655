"""A row-filtered, masked read through the mesh vs the same query written by hand in DuckDB.

One script, one process, the same Parquet files for both sides:

  setup     DuckDB's tpch extension generates lineitem at --sf; it is published as the product
            sales.lineitem of a throw-away mesh. `user:bench` holds a grant limited to rows
            shipped before 1995 (`rows:`), and l_comment is personal data masked at read
            (truncate) for it.
  mesh      `QuerySession("user:bench").sql(q)`: the checked SQL over the governed view (row
            filter behind the barrier of `ReadPlan.select_sql`, mask, session variables).
  baseline  plain `duckdb.connect()`: the same aggregate over `read_parquet([...])` with the
            filter and the mask written by hand.

Each side runs once untimed (results compared), then --repeat times alternating; the ratio of
medians is reported against the 1.3 target.

    .venv/bin/python benchmarks/bench_row_filter.py --sf 1 --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mb

PRINCIPAL = "user:bench"
ROWS = "l_shipdate < DATE '1995-01-01'"
TARGET = 1.3
QUERY = (
    "SELECT l_returnflag, l_linestatus, sum(l_extendedprice) AS revenue, count(*) AS n, "
    "max({comment}) AS last_comment FROM {source} GROUP BY 1, 2 ORDER BY 1, 2"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sf", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    import duckdb

    from mesh_platform.addressing import ProductAddress
    from mesh_platform.config import load_mesh
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.products.descriptor import DescriptorBody, ProductDescriptor
    from mesh_platform.products.registry import Directory
    from mesh_platform.query.engine import QuerySession
    from mesh_platform.storage.catalog import open_catalog
    from mesh_platform.storage.metadata import read_table_state
    from mesh_platform.testing import publish_from_duckdb

    with tempfile.TemporaryDirectory(prefix="bench_row_filter_") as tmp:
        root = Path(tmp) / "mesh"
        root.mkdir()
        (root / "mesh.yaml").write_text("state_dir: state\ncatalog:\n  name: mesh\n")
        (root / "principals.yaml").write_text(
            f"principals:\n  - id: {PRINCIPAL}\n    description: benchmark reader\n"
        )
        mesh = load_mesh(root)
        mesh.ensure_state_dir()
        conn = connect(extensions=("tpch",))
        conn.execute(f"CALL dbgen(sf = {float(args.sf)})")
        columns = [(r[0], r[1]) for r in conn.execute("DESCRIBE main.lineitem").fetchall()]
        catalog = open_catalog(mesh)
        address = ProductAddress("sales", "lineitem")
        result = publish_from_duckdb(catalog, address, conn, "main.lineitem", properties={})
        catalog.engine.dispose()
        conn.close()
        state = read_table_state(
            result.address, result.metadata_location, warehouse_root=mesh.warehouse
        )
        files = sorted(str(p) for p in (Path(state.location) / "data").rglob("*.parquet"))
        descriptor = ProductDescriptor(
            domain="sales",
            name="lineitem",
            description="TPC-H lineitem",
            body=DescriptorBody(
                purpose="TPC-H lineitem for the row-filter benchmark",
                owner={"team": "sales", "contact": "x@example.com"},
                version="1.0.0",
                grants=[
                    {"to": PRINCIPAL, "purpose": "benchmark", "expires": "2099-12-31", "rows": ROWS}
                ],
            ),
            columns=[
                {"name": n, "data_type": t, "classification": "internal"}
                if n != "l_comment"
                else {
                    "name": n,
                    "data_type": t,
                    "classification": "pii:name",
                    "masking": "truncate",
                    "masking_at": "read",
                }
                for n, t in columns
            ],
            source_file="bench",
        )
        directory = Directory({str(descriptor.address): descriptor})
        mesh_sql = QUERY.format(comment="l_comment", source="sales.lineitem")
        listing = ", ".join(f"'{f}'" for f in files)
        plain_sql = QUERY.format(
            comment="CASE WHEN l_comment IS NULL THEN NULL ELSE left(CAST(l_comment AS VARCHAR), "
            "2) || '***' END",
            source=f"read_parquet([{listing}]) WHERE {ROWS}",
        )
        plain = duckdb.connect()
        with QuerySession(PRINCIPAL, mesh=mesh, directory=directory) as session:
            got = session.sql(mesh_sql).to_pylist()
            want = plain.execute(plain_sql).to_arrow_table().to_pylist()
            if got != want:
                print("MISMATCH", got[:2], want[:2])
                return 1
            mesh_times, plain_times = [], []
            for _ in range(args.repeat):
                start = time.perf_counter()
                session.sql(mesh_sql)
                mesh_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                plain.execute(plain_sql).to_arrow_table()
                plain_times.append(time.perf_counter() - start)
        m, p = statistics.median(mesh_times), statistics.median(plain_times)
        print(f"SF {args.sf}: rows granted {sum(r['n'] for r in got):,} of lineitem")
        print(f"mesh (filter behind the barrier, mask) median {m * 1000:.1f} ms")
        print(f"plain DuckDB (filter and mask by hand)  median {p * 1000:.1f} ms")
        print(f"ratio {m / p:.2f} (target <= {TARGET})  peak RSS {peak_rss_mb():.0f} MB")
        return 0 if m / p <= TARGET else 2


if __name__ == "__main__":
    sys.exit(main())
