"""Time to load each domain's code location in a fresh process, against the baseline of a fresh
process that only imports dagster and dagster_dbt (which every code location pays anyway).

    .venv/bin/python benchmarks/bench_code_locations.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BIN, timed_run

from mesh_platform.testing import copy_mesh, user_env

BASELINE = "import dagster, dagster_dbt"
LOAD = (
    "import sys; sys.path.insert(0, '.'); import dagster, dagster_dbt; "
    "import domains.{d}.definitions as m; d = m.defs(); d.resolve_asset_graph()"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_mesh(Path(tmp) / "mesh")
        subprocess.run(
            [str(BIN / "mesh"), "--root", str(root), "prepare"],
            check=True,
            env=user_env(),
            capture_output=True,
        )
        python = str(BIN / "python")
        base = [timed_run([python, "-c", BASELINE], cwd=root) for _ in range(args.repeat)]
        base_s = statistics.median(base)
        print(f"baseline (import dagster, dagster_dbt): {base_s:.2f}s")
        print(f"{'domain':<12}{'load s':>8}{'ratio':>8}{'extra s':>9}")
        for domain in ("sales", "logistics", "marketing"):
            runs = [
                timed_run([python, "-c", LOAD.format(d=domain)], cwd=root)
                for _ in range(args.repeat)
            ]
            load = statistics.median(runs)
            print(f"{domain:<12}{load:>8.2f}{load / base_s:>8.2f}{load - base_s:>9.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
