"""TPC-H as a mesh: the 22 TPC-H queries through the federated query engine vs plain DuckDB.

One script, one process, the same Parquet files for both sides:

  setup     DuckDB's tpch extension generates TPC-H at --sf; the eight tables are published as
            Iceberg products of a throw-away mesh (write-audit-publish, no gate), spread over
            two domains: sales (orders, lineitem, customer) and logistics (supplier, part,
            partsupp, nation, region). Each product grants `user:bench` read access; every
            column is classified `internal` (no personal data, so nothing is masked).
  mesh      `QuerySession("user:bench").sql(q)`: per query, sqlglot checks the SQL, the
            principal, grants and table state are read, a governed view over the Parquet
            data files of the pinned snapshot (planned once per snapshot from its manifests)
            is (re)created per product if it changed, the query runs and an audit line is
            written. The TPC-H queries are rewritten with sqlglot to name the
            products by address (`lineitem` -> `sales.lineitem`).
  baseline  a plain `duckdb.connect()` in the same process: one view per table over
            `read_parquet([...])` of the data files of that table's published snapshot, the
            original (unqualified) TPC-H queries.

Both sides use the same thread count (DuckDB's default). Every result is checked against
DuckDB's official answers (`tpch_answers()`, which exist for SF 0.1 and 1): same row count,
values compared as text (numbers within 1e-2 relative or 0.01 absolute, dates as ISO). The
script exits non-zero if any query mismatches on either side. Each query is run once per side
untimed (the correctness pass doubles as the warm-up), then --repeat times alternating
mesh / baseline; per-query medians are reported with the total ratio (sum of mesh medians /
sum of baseline medians, target <= 1.25).

Separately, the start-up of one `mesh query` command (a fresh CLI process: imports, mesh,
directory, catalog, DuckDB, the query, output) is measured on the sample mesh of this
repository, if its products are published (state/catalog/catalog.db): median of 5 runs after
one untimed run, against the 1.5 s target, with `python -c pass` as the floor.

    .venv/bin/python benchmarks/bench_query_tpch.py --sf 0.1 --repeat 5
    .venv/bin/python benchmarks/bench_query_tpch.py --sf 0.1 --no-statement-cache  # cold SQL
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mb

from mesh_platform.testing import REPO, user_env

PRINCIPAL = "user:bench"
DOMAINS = {
    "sales": ("orders", "lineitem", "customer"),
    "logistics": ("supplier", "part", "partsupp", "nation", "region"),
}
TABLE_DOMAIN = {t: d for d, tables in DOMAINS.items() for t in tables}
TARGET_RATIO = 1.25
TARGET_STARTUP_S = 1.5
STARTUP_RUNS = 5
REL_TOL, ABS_TOL = 1e-2, 0.01


# -- the mesh ---------------------------------------------------------------------------------


def _make_mesh(root: Path):
    from mesh_platform.config import load_mesh

    root.mkdir(parents=True)
    (root / "mesh.yaml").write_text(
        "state_dir: state\nscale_factor: 0.01\ncatalog:\n  name: mesh\n"
    )
    (root / "principals.yaml").write_text(
        f"principals:\n  - id: {PRINCIPAL}\n    description: benchmark reader\n"
    )
    mesh = load_mesh(root)
    mesh.ensure_state_dir()
    return mesh


def _publish_tpch(mesh, sf: float) -> tuple[dict, dict[str, list[tuple[str, str]]], float]:
    """Generate TPC-H, publish the eight tables; (publish results, columns per table, seconds)."""
    from mesh_platform.addressing import ProductAddress
    from mesh_platform.duckdb_ext import connect
    from mesh_platform.storage.catalog import open_catalog
    from mesh_platform.testing import publish_from_duckdb

    conn = connect(extensions=("tpch",))
    conn.execute(f"CALL dbgen(sf = {float(sf)})")
    columns = {
        t: [(r[0], r[1]) for r in conn.execute(f"DESCRIBE main.{t}").fetchall()]
        for t in TABLE_DOMAIN
    }
    catalog = open_catalog(mesh)
    published = {}
    start = time.perf_counter()
    try:
        for table, domain in TABLE_DOMAIN.items():
            address = ProductAddress(domain, table)
            published[table] = publish_from_duckdb(
                catalog, address, conn, f"main.{table}", properties={}
            )
            expected = conn.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0]
            assert published[table].row_count == expected, (table, published[table].row_count)
    finally:
        catalog.engine.dispose()
        conn.close()
    return published, columns, time.perf_counter() - start


def _directory(columns: dict[str, list[tuple[str, str]]]):
    from mesh_platform.products.descriptor import DescriptorBody, ProductDescriptor
    from mesh_platform.products.registry import Directory

    descriptors = {}
    for table, domain in TABLE_DOMAIN.items():
        descriptor = ProductDescriptor(
            domain=domain,
            name=table,
            description=f"TPC-H {table}",
            body=DescriptorBody(
                purpose=f"TPC-H {table} for the query benchmark",
                owner={"team": domain, "contact": "x@example.com"},
                version="1.0.0",
                grants=[{"to": PRINCIPAL, "purpose": "benchmark", "expires": "2099-12-31"}],
            ),
            columns=[
                {"name": n, "data_type": t, "classification": "internal"} for n, t in columns[table]
            ],
            source_file="bench",
        )
        descriptors[str(descriptor.address)] = descriptor
    return Directory(descriptors)


def _data_files(mesh, published: dict) -> dict[str, list[str]]:
    """Data files of each table's published snapshot (every table is published once, so its
    data folder holds exactly the files of that snapshot; row counts are checked by caller)."""
    from mesh_platform.storage.metadata import read_table_state

    files = {}
    for table, result in published.items():
        state = read_table_state(
            result.address, result.metadata_location, warehouse_root=mesh.warehouse
        )
        files[table] = sorted(str(p) for p in (Path(state.location) / "data").rglob("*.parquet"))
        assert files[table], f"no data files for {table} under {state.location}"
    return files


# -- queries ----------------------------------------------------------------------------------


def _qualify(sql: str) -> str:
    """TPC-H SQL naming the tables by product address (sqlglot, DuckDB dialect)."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")
    ctes = {str(cte.alias).lower() for cte in tree.find_all(exp.CTE)}
    for node in tree.find_all(exp.Table):
        name = node.name.lower()
        if name in TABLE_DOMAIN and not node.db and name not in ctes:
            node.set("db", exp.to_identifier(TABLE_DOMAIN[name]))
    return tree.sql(dialect="duckdb")


def _roundtrip(sql: str) -> str:
    """The unqualified query through sqlglot and back (to tell a round-trip change from an
    engine problem when the mesh side is wrong)."""
    import sqlglot

    return sqlglot.parse_one(sql, read="duckdb").sql(dialect="duckdb")


def _norm(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    return str(value).strip()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_answer(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0].split("|")
    return header, [[v.strip() for v in line.split("|")] for line in lines[1:]]


def _compare(table, answer: tuple[list[str], list[list[str]]]) -> str | None:
    """None if the Arrow result equals the official answer, else what differs (first cases)."""
    header, rows = answer
    cells = zip(*(c.to_pylist() for c in table.columns), strict=True)
    got = [[_norm(v) for v in row] for row in cells]
    if len(got) != len(rows):
        return f"{len(got)} rows, expected {len(rows)}"
    if table.num_columns != len(header):
        return f"{table.num_columns} columns, expected {len(header)} ({'|'.join(header)})"
    problems = []
    for i, (g_row, e_row) in enumerate(zip(got, rows, strict=True)):
        for col, g, e in zip(header, g_row, e_row, strict=True):
            if g == e:
                continue
            gn, en = _number(g), _number(e)
            if (
                gn is not None
                and en is not None
                and (abs(gn - en) <= ABS_TOL or abs(gn - en) <= REL_TOL * max(abs(gn), abs(en)))
            ):
                continue
            problems.append(f"row {i + 1} {col}: got {g!r}, expected {e!r}")
            if len(problems) == 3:
                return "; ".join(problems)
    return "; ".join(problems) or None


# -- start-up of `mesh query` -----------------------------------------------------------------


def _startup() -> None:
    sample = REPO
    print(f"\n`mesh query` start-up (fresh process, cwd {sample}), median of {STARTUP_RUNS}:")
    if not (sample / "state" / "catalog" / "catalog.db").is_file():
        print("  skipped: the sample mesh has no published products (state/catalog/catalog.db); "
              "run `mesh build` in the repository first")  # fmt: skip
        return
    cmd = [sys.executable, "-m", "mesh_platform.cli.main", "query", "--as", "sales",
           "SELECT count(*) FROM sales.orders"]  # fmt: skip
    env = user_env()
    first = subprocess.run(cmd, cwd=sample, env=env, capture_output=True, text=True)
    if first.returncode != 0:
        tail = (first.stderr or first.stdout).strip().splitlines()[-5:]
        print(f"  `mesh query` failed (exit {first.returncode}): the command may not exist yet, "
              "or the sample mesh cannot answer it; start-up not measured.")  # fmt: skip
        for line in tail:
            print(f"    | {line}")
        return
    seconds = []
    for _ in range(STARTUP_RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=sample, env=env, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    floor = []
    for _ in range(STARTUP_RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        floor.append(time.perf_counter() - start)
    med, med_floor = statistics.median(seconds), statistics.median(floor)
    verdict = "ok" if med <= TARGET_STARTUP_S else "MISSES"
    print(f"  mesh query --as sales \"SELECT count(*) FROM sales.orders\": {med:.2f} s "
          f"(min {min(seconds):.2f}, max {max(seconds):.2f})  target <= {TARGET_STARTUP_S} s: "
          f"{verdict}")  # fmt: skip
    answer = " ".join(first.stdout.split()[-6:])  # the table's last cells and the row count
    print(f"  python -c pass (floor): {med_floor:.3f} s   (the command printed: ...{answer})")


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sf", type=float, default=0.1, choices=(0.1, 1.0),
        help="TPC-H scale factor (official answers exist for 0.1 and 1)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query and side")
    parser.add_argument("--skip-startup", action="store_true", help="skip the CLI start-up part")
    parser.add_argument(
        "--no-statement-cache",
        action="store_true",
        help="parse and check every query's SQL again (the engine caches checked statements)",
    )
    args = parser.parse_args()
    if args.no_statement_cache:
        import mesh_platform.query.engine as engine

        engine.check_query = engine.check_query.__wrapped__
    # The benchmark's mesh is the temporary one: no MESH_* override may point elsewhere.
    for key in [k for k in os.environ if k.startswith("MESH_")]:
        del os.environ[key]

    import duckdb

    from mesh_platform.duckdb_ext import connect
    from mesh_platform.errors import MeshError
    from mesh_platform.query.engine import QuerySession

    with connect(extensions=("tpch",)) as tpch:
        queries = dict(tpch.execute("SELECT query_nr, query FROM tpch_queries()").fetchall())
        answers = {
            nr: _parse_answer(text)
            for nr, text in tpch.execute(
                "SELECT query_nr, answer FROM tpch_answers() WHERE scale_factor = ?", [args.sf]
            ).fetchall()
        }
    assert len(queries) == 22 and set(answers) == set(queries), "tpch queries/answers missing"
    with duckdb.connect() as probe:  # DuckDB's default thread count, used on both sides
        threads = int(probe.execute("SELECT current_setting('threads')").fetchone()[0])
    qualified = {nr: _qualify(sql) for nr, sql in queries.items()}

    print(f"TPC-H SF {args.sf} as a mesh: {len(queries)} queries, repeat {args.repeat}, "
          f"{threads} DuckDB threads on both sides, statement cache "
          f"{'off' if args.no_statement_cache else 'on'}")  # fmt: skip
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        mesh = _make_mesh(Path(tmp) / "mesh")
        published, columns, publish_s = _publish_tpch(mesh, args.sf)
        rows = sum(p.row_count for p in published.values())
        print(f"  published 8 products ({rows:,} rows) in {publish_s:.1f} s: "
              + ", ".join(str(p.address) for p in published.values()))  # fmt: skip
        files = _data_files(mesh, published)

        base = duckdb.connect()
        base.execute(f"SET threads = {threads}")
        for table, paths in files.items():
            listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            base.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}])")
            count = base.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert count == published[table].row_count, (table, count, published[table].row_count)

        session = QuerySession(PRINCIPAL, mesh=mesh, directory=_directory(columns), threads=threads)

        def run_mesh(nr: int):
            return session.sql(qualified[nr])

        def run_base(nr: int, sql: str | None = None):
            return base.execute(sql or queries[nr]).to_arrow_table()

        # Correctness (and warm-up): once per query and side.
        broken: set[int] = set()
        for nr in sorted(queries):
            try:
                problem = _compare(run_mesh(nr), answers[nr])
            except MeshError as exc:
                problem = f"error: {exc}"
                broken.add(nr)
            if problem:
                rt = _compare(run_base(nr, _roundtrip(queries[nr])), answers[nr])
                cause = (
                    ("the sqlglot round trip alone changes the result: " + rt)
                    if rt
                    else ("the unqualified sqlglot round trip is correct on plain DuckDB")
                )
                failures.append(f"Q{nr:02d} mesh: {problem}  [{cause}]")
            if problem := _compare(run_base(nr), answers[nr]):
                failures.append(f"Q{nr:02d} baseline: {problem}")

        # Timing: alternating mesh / baseline, per-query medians.
        med_mesh: dict[int, float] = {}
        med_base: dict[int, float] = {}
        for nr in sorted(queries):
            t_mesh, t_base = [], []
            for _ in range(args.repeat):
                if nr not in broken:
                    start = time.perf_counter()
                    run_mesh(nr)
                    t_mesh.append(time.perf_counter() - start)
                start = time.perf_counter()
                run_base(nr)
                t_base.append(time.perf_counter() - start)
            med_base[nr] = statistics.median(t_base) * 1000
            if t_mesh:
                med_mesh[nr] = statistics.median(t_mesh) * 1000
        session.close()
        base.close()

    print(f"\n  {'query':>5}  {'mesh ms':>9}  {'duckdb ms':>9}  {'ratio':>6}")
    for nr in sorted(queries):
        if nr in med_mesh:
            print(f"  Q{nr:02d}    {med_mesh[nr]:9.1f}  {med_base[nr]:9.1f}  "
                  f"{med_mesh[nr] / med_base[nr]:6.2f}")  # fmt: skip
        else:
            print(f"  Q{nr:02d}    {'failed':>9}  {med_base[nr]:9.1f}  {'-':>6}")
    timed = sorted(med_mesh)
    sum_mesh = sum(med_mesh[n] for n in timed)
    sum_base = sum(med_base[n] for n in timed)
    ratio = sum_mesh / sum_base
    verdict = "ok" if ratio <= TARGET_RATIO else "MISSES"
    print(
        f"  total  {sum_mesh:9.1f}  {sum_base:9.1f}  {ratio:6.2f}   (sum of medians over "
        f"{len(timed)} queries; target <= {TARGET_RATIO}: {verdict})"
    )
    if timed:
        overhead = statistics.median(med_mesh[n] - med_base[n] for n in timed)
        print(f"  mesh overhead per query (median of mesh - duckdb): {overhead:.1f} ms")
    print(f"  peak RSS {peak_rss_mb():.0f} MB")

    if not args.skip_startup:
        _startup()

    if failures:
        print(f"\nRESULT MISMATCHES ({len(failures)}):")
        for line in failures:
            print(f"  {line}")
        return 1
    print("\nall 22 queries match the official answers on both sides")
    return 0


if __name__ == "__main__":
    sys.exit(main())
