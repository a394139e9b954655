"""TPC-H through `mesh serve` vs the embedded engine vs PostgreSQL, on one machine.

One script, the same TPC-H data at --sf for all three:

  setup     bench_query_tpch.py's: DuckDB's tpch extension generates TPC-H, the eight tables
            are published as Iceberg products of a throw-away mesh (sales: orders, lineitem,
            customer; logistics: supplier, part, partsupp, nation, region), each granting
            `user:bench`. Here the descriptors are also written to disk (Python-product YAML)
            so that the service, a separate process, finds them like any mesh's products.
  embedded  `QuerySession("user:bench").sql(q)` in this process (Arrow results), the queries
            naming products by address (`sales.lineitem`).
  service   `mesh serve` started by this script on a loopback port; a psycopg 3 client logs in
            as `user:bench` with a token (issued as `mesh token create` does, never expiring)
            and sends the same queries in PostgreSQL's dialect (sqlglot), fetching every row.
  postgres  the production profile's PostgreSQL (scripts/services.sh), database bench_tpch:
            the eight tables COPY'd from the very Parquet files the mesh serves, TPC-H's
            primary keys, ANALYZE; DuckDB's TPC-H text in PostgreSQL's dialect (sqlglot), with
            statement_timeout --pg-timeout (a cancelled query counts at the timeout, marked >=).
            The server is not tuned (its settings are printed); --pg-fk-indexes adds indexes on
            the foreign-key columns, which spare PostgreSQL its nested scans in Q17 and Q20.
            The database is dropped at the end unless --keep-database.

Correctness, once per query and side (the warm-up): the embedded result against DuckDB's
official answers, the service's rows against the embedded rows, PostgreSQL's rows against the
official answers; same row count, values equal as text, numbers within 1e-2 relative or 0.01
absolute. Then --repeat timed runs alternating the sides; per-query medians, totals, and the
ratios service/embedded (target <= 1.3) and postgres/service (target >= 5).

Small-query latency: one primary-key lookup of region at 1, 4 and 16 concurrent clients
(threads, a connection each) against the service and PostgreSQL: p50, p99, queries per second,
and service p50 / postgres p50 (target <= 3). The service runs with the principal's
`concurrent_queries` raised to the largest client count (default 4), so the figures measure
the service rather than its admission limit.

Peak memory: the service process's VmHWM; PostgreSQL's as the peak of the sum of PSS over the
postmaster and its children (sampled every 0.25 s: shared buffers counted once) and, as an upper
bound, the sum of VmHWM over the processes alive at the end (each counts the shared buffers it
touched); this process's own VmHWM. Exit status 1 on any mismatch or error. The clients are
threads of this process (the same Python client for both servers), so at 16 clients their
latency includes waiting for this process's GIL.

    .venv/bin/python benchmarks/bench_serve.py --sf 0.1 --repeat 1        # quick
    .venv/bin/python benchmarks/bench_serve.py --json /tmp/serve.json      # SF 1, repeat 3
    .venv/bin/python benchmarks/bench_serve.py --sf 0.1 --no-service       # without the service
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import _pg
import duckdb
import psycopg
import yaml
from _common import peak_rss_mb
from bench_query_tpch import (
    ABS_TOL,
    DOMAINS,
    PRINCIPAL,
    REL_TOL,
    _compare,
    _data_files,
    _make_mesh,
    _norm,
    _number,
    _parse_answer,
    _publish_tpch,
    _qualify,
)

from mesh_platform.config import load_mesh
from mesh_platform.duckdb_ext import connect
from mesh_platform.products.registry import load_directory
from mesh_platform.query.engine import QuerySession
from mesh_platform.serve.tokens import token_store
from mesh_platform.testing import MESH, free_port, user_env

TARGET_SERVICE = 1.3  # service / embedded, total of medians
TARGET_POSTGRES = 5.0  # postgres / service, total of medians
TARGET_LATENCY = 3.0  # service p50 / postgres p50, small query
CLIENTS = (1, 4, 16)
SMALL = "SELECT r_name FROM region WHERE r_regionkey = 1"
SMALL_ANSWER = [["AMERICA"]]
WARMUP = 5  # untimed small queries per connection
DATABASE = "bench_tpch"


# -- the mesh and its service -----------------------------------------------------------------


def _declare(root: Path, columns: dict[str, list[tuple[str, str]]], clients: int) -> None:
    """Domains, empty dbt projects and product descriptors on disk (what the service reads),
    and the principal's concurrency raised to ``clients``."""
    with (root / "mesh.yaml").open("a") as f:
        f.write(f"query:\n  principals:\n    '{PRINCIPAL}': {{concurrent_queries: {clients}}}\n")
    for domain, tables in DOMAINS.items():
        products = root / "domains" / domain / "products"
        products.mkdir(parents=True)
        (products.parent / "domain.yaml").write_text(
            f"name: {domain}\ndescription: TPC-H tables for the serving benchmark.\n"
            f"kind: source-aligned\nowners: [team:{domain}]\n"
        )
        project = root / "dbt_projects" / domain
        project.mkdir(parents=True)
        (project / "dbt_project.yml").write_text(
            f"name: {domain}\nversion: '1.0.0'\nconfig-version: 2\nprofile: {domain}\n"
        )
        (project / "profiles.yml").write_text(
            f"{domain}:\n  target: local\n  outputs:\n"
            "    local: {type: duckdb, path: ':memory:'}\n"
        )
        for table in tables:
            body = {
                "name": table,
                "description": f"TPC-H {table}",
                "mesh": {
                    "purpose": f"TPC-H {table} for the serving benchmark",
                    "owner": {"team": domain, "contact": "x@example.com"},
                    "version": "1.0.0",
                    "grants": [{"to": PRINCIPAL, "purpose": "benchmark", "expires": "2099-12-31"}],
                },
                "columns": [
                    {"name": n, "data_type": t, "classification": "internal"}
                    for n, t in columns[table]
                ],
            }
            (products / f"{table}.yml").write_text(yaml.safe_dump(body, sort_keys=False))


def _ports() -> tuple[int, int]:
    """A free loopback port whose health port (port + 1000) is free too."""
    for _ in range(50):
        port = free_port()
        if port + 1000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
        return port, port + 1000
    raise RuntimeError("no free pair of loopback ports (port, port + 1000)")


class Service:
    """`mesh serve` on loopback as a child process; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, root: Path, log: Path, ready_s: float) -> None:
        self.root, self.log, self.ready_s = root, log, ready_s
        self.port, self.health = _ports()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Service:
        cmd = [MESH, "--root", str(self.root), "serve", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, env=user_env(), stdout=out, stderr=subprocess.STDOUT
            )
        start = time.monotonic()
        while time.monotonic() - start < self.ready_s:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"`mesh serve` exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                url = f"http://127.0.0.1:{self.health}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        self.ready_after = time.monotonic() - start
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"`mesh serve` not ready after {self.ready_s:.0f} s:\n{self.tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join("    | " + line for line in text.splitlines()[-lines:])

    def connect(self, secret: str):
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PRINCIPAL,
            password=secret,
            dbname="mesh",
            sslmode="disable",
            autocommit=True,
            connect_timeout=10,
        )


def _token(mesh) -> str:
    """A token for the principal that never expires (what `mesh token create` issues)."""
    secret, _ = token_store(mesh).create(PRINCIPAL, expires=None, description="bench_serve.py")
    return secret


# -- comparing rows ---------------------------------------------------------------------------


def _rows(rows) -> list[list[str]]:
    return [[_norm(v) for v in row] for row in rows]


def _arrow_rows(table) -> list[list[str]]:
    return _rows(zip(*(c.to_pylist() for c in table.columns), strict=True))


def _close(got: str, want: str) -> bool:
    g, w = _number(got), _number(want)
    if got == want:
        return True
    return (
        g is not None
        and w is not None
        and (abs(g - w) <= ABS_TOL or abs(g - w) <= REL_TOL * max(abs(g), abs(w)))
    )


def _diff(got: list[list[str]], want: list[list[str]]) -> str | None:
    """None if the rows are equal (as text, numbers within the tolerance), else what differs
    (the first three cells)."""
    if len(got) != len(want):
        return f"{len(got)} rows, expected {len(want)}"
    if got and len(got[0]) != len(want[0]):
        return f"{len(got[0])} columns, expected {len(want[0])}"
    problems = [
        f"row {i + 1} column {c + 1}: got {g!r}, expected {w!r}"
        for i, (g_row, w_row) in enumerate(zip(got, want, strict=True))
        for c, (g, w) in enumerate(zip(g_row, w_row, strict=True))
        if not _close(g, w)
    ]
    return "; ".join(problems[:3]) or None


# -- the 22 queries ---------------------------------------------------------------------------


def _correctness(nrs, answers, run, failures: list[str]) -> dict[str, set[int]]:
    """One run per query and side, checked; the queries each side must not time (errors, and
    PostgreSQL's time-outs, kept in skip['postgres_timeout'])."""
    skip: dict[str, set[int]] = {side: set() for side in [*run, "postgres_timeout"]}
    for nr in nrs:
        _progress(f"  Q{nr:02d}")
        embedded = None
        try:
            table = run["embedded"](nr)
            embedded = _arrow_rows(table)
            if problem := _compare(table, answers[nr]):
                failures.append(f"Q{nr:02d} embedded vs official answer: {problem}")
        except Exception as exc:  # reported, the other queries still run
            failures.append(f"Q{nr:02d} embedded: error: {type(exc).__name__}: {exc}")
            skip["embedded"].add(nr)
        for side, want in (("service", embedded), ("postgres", answers[nr][1])):
            if side not in run:
                continue
            try:
                rows = run[side](nr)
            except psycopg.Error as exc:
                failures.append(f"Q{nr:02d} {side}: error: {type(exc).__name__}: {exc}")
                skip[side].add(nr)
                continue
            if rows is _pg.TIMEOUT:
                skip[side].add(nr)
                skip["postgres_timeout"].add(nr)
            elif want is not None and (problem := _diff(_rows(rows), want)):
                versus = "embedded rows" if side == "service" else "official answer"
                failures.append(f"Q{nr:02d} {side} vs {versus}: {problem}")
    return skip


def _timings(nrs, run, skip, args, failures: list[str]) -> dict[str, dict[int, float]]:
    """Per side, per query: the median of --repeat runs in ms, the sides alternating.
    A PostgreSQL time-out counts at --pg-timeout (and the query is not run again); an error
    is a failure (and the query is not timed on that side)."""
    timeout_ms = args.pg_timeout * 1000
    medians: dict[str, dict[int, float]] = {side: {} for side in run}
    for nr in nrs:
        times: dict[str, list[float]] = {side: [] for side in run}
        for _ in range(args.repeat):
            for side, fn in run.items():
                if nr in skip[side]:
                    continue
                start = time.perf_counter()
                try:
                    out = fn(nr)
                except Exception as exc:  # the same query passed once: report, do not stop
                    failures.append(f"Q{nr:02d} {side}, timed run: {type(exc).__name__}: {exc}")
                    skip[side].add(nr)
                    times[side].clear()
                    continue
                elapsed = (time.perf_counter() - start) * 1000
                if out is _pg.TIMEOUT:
                    skip[side].add(nr)
                    skip["postgres_timeout"].add(nr)
                    elapsed = timeout_ms
                times[side].append(elapsed)
        for side, values in times.items():
            if nr in skip["postgres_timeout"] and side == "postgres":
                medians[side][nr] = timeout_ms
            elif values:
                medians[side][nr] = statistics.median(values)
    return medians


# -- small-query latency ----------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _latency(open_conn, sql: str, clients: int, per_client: int, failures: list[str]) -> dict:
    """``clients`` threads, a connection each, ``per_client`` queries each after WARMUP."""
    conns = [open_conn() for _ in range(clients)]
    barrier = threading.Barrier(clients)
    samples: list[list[float]] = [[] for _ in range(clients)]
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * clients
    wrong: list[str] = []

    def work(i: int) -> None:
        conn = conns[i]
        for _ in range(WARMUP):
            conn.execute(sql).fetchall()
        barrier.wait(timeout=120)
        first = time.perf_counter()
        for _ in range(per_client):
            start = time.perf_counter()
            rows = conn.execute(sql).fetchall()
            samples[i].append((time.perf_counter() - start) * 1000)
            if _rows(rows) != SMALL_ANSWER and not wrong:
                wrong.append(f"{sql!r} returned {rows!r}")
        spans[i] = (first, time.perf_counter())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    finally:
        for conn in conns:
            conn.close()
    failures.extend(wrong)
    flat = [s for per in samples for s in per]
    if len(flat) != clients * per_client:
        failures.append(f"{sql!r} at {clients} clients: {len(flat)} of {clients * per_client} ran")
    if not flat:
        return {"queries": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "qps": 0.0}
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return {
        "queries": len(flat),
        "p50_ms": statistics.median(flat),
        "p99_ms": _percentile(flat, 0.99),
        "qps": len(flat) / wall if wall > 0 else 0.0,
    }


def _embedded_latency(session, sql: str, n: int) -> dict:
    for _ in range(WARMUP):
        session.sql(sql)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        session.sql(sql)
        samples.append((time.perf_counter() - start) * 1000)
    return {
        "queries": n,
        "p50_ms": statistics.median(samples),
        "p99_ms": _percentile(samples, 0.99),
    }


def _latencies(args, service, secret, services, session, failures) -> dict:
    """Per client count: the service's and PostgreSQL's figures and the ratio of p50s; the
    embedded engine's at one client, for reference."""
    small_mesh = _qualify(SMALL)
    out: dict = {"embedded_1_client": _embedded_latency(session, small_mesh, args.latency_queries)}
    for clients in CLIENTS:
        per_client = min(args.latency_queries, max(1, args.latency_total // clients))
        row: dict = {"per_client": per_client}
        if service is not None:
            sql = _pg.to_postgres(small_mesh)
            row["service"] = _latency(
                lambda: service.connect(secret), sql, clients, per_client, failures
            )
        row["postgres"] = _latency(
            lambda: _pg.connect(services, DATABASE), SMALL, clients, per_client, failures
        )
        if "service" in row:
            row["service_over_postgres_p50"] = row["service"]["p50_ms"] / row["postgres"]["p50_ms"]
        out[str(clients)] = row
    return out


def _memory(service, pg_root: int, sampler) -> dict[str, float]:
    """Peak memory in MB (see the module docstring for what each figure counts)."""
    mb = {
        "bench_process_vmhwm": peak_rss_mb(),
        "postgres_sum_vmhwm_alive": sum(
            _pg.status_kb(p, "VmHWM") for p in _pg.process_tree(pg_root)
        )
        / 1024,
    }
    if service is not None:
        mb["service_vmhwm"] = _pg.status_kb(service.proc.pid, "VmHWM") / 1024
    mb["sampler_pss"] = {name: kb / 1024 for name, kb in sampler.peak_kb.items()}
    return mb


def _texts(sf: float) -> tuple[dict[int, str], dict[int, tuple[list[str], list[list[str]]]]]:
    """DuckDB's TPC-H queries and its official answers at ``sf``."""
    with connect(extensions=("tpch",)) as tpch:
        queries = dict(tpch.execute("SELECT query_nr, query FROM tpch_queries()").fetchall())
        answers = {
            nr: _parse_answer(text)
            for nr, text in tpch.execute(
                "SELECT query_nr, answer FROM tpch_answers() WHERE scale_factor = ?", [sf]
            ).fetchall()
        }
    assert len(queries) == 22 and set(answers) == set(queries), "tpch queries/answers missing"
    return queries, answers


def _setup(args, tmp: Path, services: dict[str, str], figures: dict):
    """The mesh (published, declared on disk) and the loaded PostgreSQL database."""
    root = tmp / "mesh"
    mesh = _make_mesh(root)
    _progress(f"generating TPC-H SF {args.sf} and publishing it to {root}")
    published, columns, publish_s = _publish_tpch(mesh, args.sf)
    files = _data_files(mesh, published)
    _declare(root, columns, max(CLIENTS))
    mesh = load_mesh(root)
    directory = load_directory(mesh)
    addresses = {str(p.address) for p in published.values()}
    assert not directory.problems and addresses <= set(directory.descriptors), directory.problems
    _pg.recreate_database(services, DATABASE)
    _progress(f"loading PostgreSQL database {DATABASE}")
    start = time.perf_counter()
    with _pg.connect(services, DATABASE) as loader:
        counts = _pg.load_tables(loader, columns, files, fk_indexes=args.pg_fk_indexes)
    load_s = time.perf_counter() - start
    expected = {t: p.row_count for t, p in published.items()}
    assert counts == expected, (counts, expected)
    figures["setup"] = {
        "rows": sum(expected.values()),
        "publish_s": publish_s,
        "postgres_load_s": load_s,
        "postgres_fk_indexes": args.pg_fk_indexes,
    }
    return mesh


def _measure(args, tmp: Path, services: dict[str, str], figures: dict, failures: list[str]):
    """Set up, then the 22 queries, the small-query latency and the memory figures."""
    queries, answers = _texts(args.sf)
    qualified = {nr: _qualify(sql) for nr, sql in queries.items()}
    on_service = {nr: _pg.to_postgres(sql) for nr, sql in qualified.items()}
    on_postgres = {nr: _pg.to_postgres(sql) for nr, sql in queries.items()}
    with duckdb.connect() as probe:
        threads = int(probe.execute("SELECT current_setting('threads')").fetchone()[0])
    figures["threads"] = threads
    mesh = _setup(args, tmp, services, figures)
    nrs = sorted(queries)
    with contextlib.ExitStack() as stack:
        session = QuerySession(PRINCIPAL, mesh=mesh, threads=threads)
        stack.callback(session.close)
        pg = stack.enter_context(_pg.connect(services, DATABASE, timeout_s=args.pg_timeout))
        figures["postgres_settings"] = _pg.describe_server(pg)
        roots = {"postgres": _pg.server_root(pg)}
        run = {"embedded": lambda nr: session.sql(qualified[nr])}
        service, secret = None, ""
        if not args.no_service:
            secret = _token(mesh)
            service = Service(mesh.root, tmp / "serve.log", args.ready_timeout)
            stack.callback(lambda: figures.update(service_log_tail=service.tail(10)))
            stack.enter_context(service)
            figures["setup"]["service_ready_s"] = service.ready_after
            client = stack.enter_context(service.connect(secret))
            run["service"] = lambda nr: _pg.run_query(client, on_service[nr])
            roots["service"] = service.proc.pid
        run["postgres"] = lambda nr: _pg.run_query(pg, on_postgres[nr])
        sampler = stack.enter_context(_pg.PeakSampler(roots, interval=0.25))
        _progress(f"correctness pass over {', '.join(run)}")
        skip = _correctness(nrs, answers, run, failures)
        _progress(f"timed runs (repeat {args.repeat})")
        medians = _timings(nrs, run, skip, args, failures)
        _progress("small-query latency")
        figures["latency"] = _latencies(args, service, secret, services, session, failures)
        figures["memory_mb"] = _memory(service, roots["postgres"], sampler)
    figures["queries"] = {
        f"Q{nr:02d}": {
            **{f"{s}_ms": medians[s].get(nr) for s in run},
            "postgres_timed_out": nr in skip["postgres_timeout"],
        }
        for nr in nrs
    }
    return medians, skip, nrs


def _progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


# -- report -----------------------------------------------------------------------------------


def _fmt(ms: float | None, timed_out: bool = False) -> str:
    if ms is None:
        return "failed"
    return (">=" if timed_out else "") + f"{ms:.1f}"


def _report_queries(figures: dict, medians, skip, nrs, args) -> None:
    sides = list(medians)
    print(
        f"\n  {'query':>5}"
        + "".join(f"  {s + ' ms':>13}" for s in sides)
        + ("  svc/emb  pg/svc" if "service" in sides else "")
    )
    for nr in nrs:
        cells = [
            _fmt(medians[s].get(nr), s == "postgres" and nr in skip["postgres_timeout"])
            for s in sides
        ]
        line = f"  Q{nr:02d}  " + "".join(f"  {c:>13}" for c in cells)
        emb, svc, pg = (medians.get(s, {}).get(nr) for s in ("embedded", "service", "postgres"))
        if "service" in sides and emb and svc and pg:
            line += f"  {svc / emb:7.2f}  {pg / svc:6.1f}"
        print(line)
    common = [nr for nr in nrs if all(nr in medians[s] for s in sides)]
    totals = {s: sum(medians[s][nr] for nr in common) for s in sides}
    timeouts = sorted(skip["postgres_timeout"])
    mark = ">=" if timeouts else ""
    print(
        "  total"
        + "".join(f"  {(mark if s == 'postgres' else '') + f'{totals[s]:.1f}':>13}" for s in sides)
        + f"   ({len(common)} queries)"
    )
    result = {
        "totals_ms": totals,
        "queries_in_totals": len(common),
        "postgres_timeouts": [f"Q{n:02d}" for n in timeouts],
    }
    if timeouts:
        print(
            f"  PostgreSQL timed out (counted at {args.pg_timeout:.0f} s, so its total is a "
            f"lower bound): " + ", ".join(f"Q{n:02d}" for n in timeouts)
        )
    if "service" in totals:
        svc_emb = totals["service"] / totals["embedded"]
        pg_svc = totals["postgres"] / totals["service"]
        print(
            f"  service / embedded: {svc_emb:.2f}  (target <= {TARGET_SERVICE}: "
            f"{'ok' if svc_emb <= TARGET_SERVICE else 'MISSES'})"
        )
        print(
            f"  postgres / service: {mark}{pg_svc:.1f}  (target >= {TARGET_POSTGRES}: "
            f"{'ok' if pg_svc >= TARGET_POSTGRES else 'MISSES'})"
        )
        geo_svc = statistics.geometric_mean(
            medians["service"][n] / medians["embedded"][n] for n in common
        )
        geo_pg = statistics.geometric_mean(
            medians["postgres"][n] / medians["service"][n] for n in common
        )
        print(
            f"  geometric means of the per-query ratios (no query dominates): service / embedded "
            f"{geo_svc:.2f}, postgres / service {mark}{geo_pg:.1f}"
        )
        overhead = statistics.median(medians["service"][n] - medians["embedded"][n] for n in common)
        print(f"  service overhead per query (median of service - embedded): {overhead:.1f} ms")
        result.update(
            service_over_embedded=svc_emb,
            postgres_over_service=pg_svc,
            postgres_over_service_is_lower_bound=bool(timeouts),
            service_overhead_median_ms=overhead,
            geomean_service_over_embedded=geo_svc,
            geomean_postgres_over_service=geo_pg,
        )
    figures["totals"] = result


def _report_rest(figures: dict) -> None:
    lat = figures["latency"]
    emb = lat["embedded_1_client"]
    print(f"\n  small query ({SMALL}; service: logistics.region):")
    print(
        f"  {'clients':>7}  {'service p50/p99 ms':>19}  {'q/s':>6}  "
        f"{'postgres p50/p99 ms':>19}  {'q/s':>6}  svc/pg p50"
    )
    for clients in CLIENTS:
        row = lat[str(clients)]
        pg = row["postgres"]
        svc = row.get("service")
        left = (
            f"{svc['p50_ms']:8.2f} /{svc['p99_ms']:8.2f}  {svc['qps']:6.0f}"
            if svc
            else (f"{'-':>19}  {'-':>6}")
        )
        ratio = row.get("service_over_postgres_p50")
        verdict = (
            ""
            if ratio is None
            else f"{ratio:6.2f} ({'ok' if ratio <= TARGET_LATENCY else 'MISSES'})"
        )
        print(
            f"  {clients:>7}  {left}  {pg['p50_ms']:8.2f} /{pg['p99_ms']:8.2f}  "
            f"{pg['qps']:6.0f}  {verdict}"
        )
    print(
        f"  ({row['per_client']} queries per client at {CLIENTS[-1]} clients; target svc/pg "
        f"p50 <= {TARGET_LATENCY}; embedded in-process, 1 client: p50 {emb['p50_ms']:.2f} ms, "
        f"p99 {emb['p99_ms']:.2f} ms)"
    )
    mem = figures["memory_mb"]
    print("\n  peak memory:")
    if "service_vmhwm" in mem:
        print(
            f"    service process      VmHWM {mem['service_vmhwm']:7.0f} MB"
            f"   (sampled PSS peak {mem['sampler_pss'].get('service', 0):.0f} MB)"
        )
    print(
        f"    PostgreSQL server    sampled peak of summed PSS "
        f"{mem['sampler_pss']['postgres']:.0f} MB"
        f"   (sum of VmHWM of its processes alive at the end: "
        f"{mem['postgres_sum_vmhwm_alive']:.0f} MB, counts shared buffers per process)"
    )
    print(
        f"    this process         VmHWM {mem['bench_process_vmhwm']:7.0f} MB "
        "(data generation, publication, embedded engine, clients)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sf",
        type=float,
        default=1.0,
        choices=(0.1, 1.0),
        help="TPC-H scale factor (official answers exist for 0.1 and 1)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per query and side")
    parser.add_argument(
        "--pg-timeout", type=float, default=300, help="PostgreSQL statement_timeout in seconds"
    )
    parser.add_argument(
        "--pg-fk-indexes",
        action="store_true",
        help="also index PostgreSQL's foreign-key columns (TPC-H clause 1.4.2)",
    )
    parser.add_argument(
        "--latency-queries",
        type=int,
        default=200,
        help="small queries per client (and for the embedded reference)",
    )
    parser.add_argument(
        "--latency-total",
        type=int,
        default=800,
        help="small queries per client count at most, over all clients",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=300,
        help="seconds `mesh serve` may take to answer /readyz",
    )
    parser.add_argument(
        "--no-service", action="store_true", help="measure only the embedded engine and PostgreSQL"
    )
    parser.add_argument(
        "--keep-database", action="store_true", help=f"keep PostgreSQL's {DATABASE} afterwards"
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    # The benchmark's mesh is the temporary one: no MESH_* override may point elsewhere.
    for key in [k for k in os.environ if k.startswith("MESH_")]:
        del os.environ[key]

    services, started = _pg.ensure_running()
    figures: dict = {
        "sf": args.sf,
        "repeat": args.repeat,
        "pg_timeout_s": args.pg_timeout,
        "service": not args.no_service,
        "started_services": started,
    }
    failures: list[str] = []
    # SIGTERM unwinds like Ctrl-C: the service is stopped, the temporary mesh removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
            medians, skip, nrs = _measure(args, Path(tmp), services, figures, failures)
    finally:
        if not args.keep_database:
            _pg.drop_database(services, DATABASE)
    s, p = figures["setup"], figures["postgres_settings"]
    print(
        f"TPC-H SF {args.sf} through `mesh serve`: 22 queries, repeat {args.repeat}, "
        f"{figures['threads']} DuckDB threads; PostgreSQL {p['server_version']} (shared_buffers "
        f"{p['shared_buffers']}, work_mem {p['work_mem']}, parallel workers per gather "
        f"{p['max_parallel_workers_per_gather']}, jit {p['jit']}), statement_timeout "
        f"{args.pg_timeout:.0f} s"
    )
    print(
        f"  published 8 products ({s['rows']:,} rows) in {s['publish_s']:.1f} s; PostgreSQL "
        f"loaded (COPY, primary keys{', FK indexes' if args.pg_fk_indexes else ''}, ANALYZE) "
        f"in {s['postgres_load_s']:.1f} s"
        + (f"; service ready in {s['service_ready_s']:.1f} s" if "service_ready_s" in s else "")
    )
    if started:
        print("  (this run started the production profile's servers: scripts/services.sh stop)")
    _report_queries(figures, medians, skip, nrs, args)
    _report_rest(figures)
    figures["mismatches"] = failures
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        print(f"\n  figures written to {args.json}")
    if failures:
        print(f"\nMISMATCHES AND ERRORS ({len(failures)}):")
        for line in failures:
            print(f"  {line}")
        return 1
    print(
        "\nall results match (embedded and PostgreSQL: the official answers"
        + ("; service: the embedded rows)" if not args.no_service else ")")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
