"""`mesh build` of the whole sample mesh from nothing (fresh state: TPC-H generation, dbt, Iceberg
publication, Dagster runs), against a baseline in the same script: the same work with plain tools
(dbgen landing + `dbt build` per domain, no Dagster, no Iceberg), so the ratio is the platform's
overhead.

    .venv/bin/python benchmarks/bench_build.py --scale 0.1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import BIN, timed_run

from mesh_platform.testing import REPO, copy_mesh, user_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mesh_platform.config import load_mesh
from mesh_platform.domain import load_domain
from mesh_platform.sources.tpch import land_tpch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_mesh(Path(tmp) / "mesh")
        mesh_s = timed_run(
            [str(BIN / "mesh"), "--root", str(root), "build", "--scale", str(args.scale)],
            capture_output=True,
        )
        print(f"mesh build, SF {args.scale}, from nothing: {mesh_s:.1f}s")

        # Baseline: same sources and models, plain dbgen + dbt, fresh state.
        base_root = copy_mesh(Path(tmp) / "baseline")
        mesh = load_mesh(base_root, scale_factor=args.scale)
        mesh.ensure_state_dir()
        env = {**user_env(), **mesh.dbt_env()}
        start = time.perf_counter()
        for name in ("sales", "logistics"):
            domain = load_domain(mesh, name)
            land_tpch(mesh.raw_dir(name), domain.spec.raw.tables, args.scale)
        land_s = time.perf_counter() - start
        dbt_s = 0.0
        for name in ("sales", "logistics", "marketing"):
            project = base_root / "dbt_projects" / name
            os.makedirs(project / "dbt_packages", exist_ok=True)
            link = project / "dbt_packages" / "mesh"
            if not link.exists():
                link.symlink_to(REPO / "mesh_platform/dbt/dbt_package")
            if name == "marketing":
                dbt_s += _stage_plainly(mesh)
            dbt_s += timed_run(
                [str(BIN / "dbt"), "build", "--profiles-dir", str(project), "--quiet"],
                cwd=project,
                env=env,
                capture_output=True,
            )
        base_s = land_s + dbt_s
        print(f"baseline (dbgen landing + plain dbt build of the 3 domains): {base_s:.1f}s")
        print(
            f"ratio mesh build / baseline: {mesh_s / base_s:.2f} (the platform adds Dagster "
            "runs, Iceberg publication of 10 products, staging from Iceberg, process start-up)"
        )


def _stage_plainly(mesh) -> float:
    """Baseline staging of marketing's inputs: copy tables straight from the producers' DuckDB."""
    import duckdb

    start = time.perf_counter()
    mesh.duckdb_path("marketing").parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(mesh.duckdb_path("marketing")))
    for producer, tables in {
        "sales": ("orders", "order_lines", "customers"),
        "logistics": ("shipments", "nations"),
    }.items():
        conn.execute(f"ATTACH '{mesh.duckdb_path(producer)}' AS src_{producer} (READ_ONLY)")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {producer}")
        for table in tables:
            conn.execute(
                f"CREATE OR REPLACE TABLE {producer}.{table} AS "
                f"SELECT * FROM src_{producer}.main.{table}"
            )
    conn.close()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
