"""Load test of the production profile (issue 8, "Scale figures"), with the local profile as the
baseline, in one script.

What runs, per profile, for --seconds T (default 60):

  N publishers  (--publishers, default 4) separate processes (multiprocessing, spawn). Publisher
                i republishes one product of domain i mod M (--domains M, default 3: sales,
                logistics, marketing) again and again through the write-audit-publish path
                (`publish_from_duckdb`, one new batch id per publish). Products are spread over
                the domains and handed out two publishers per product (N=4, M=3: sales.customers
                has two publishers, logistics.shipments and marketing.customer_segments one), so
                publishers of one product contend: on PostgreSQL they take turns on the product's
                advisory lock, on sqlite on a lock file beside the catalog. Each publish writes
                the product's current rows (read once from its Iceberg table at start) minus 0..97
                rows chosen at random, so every batch has its own row count.
  K readers     (--readers, default 2) separate processes, each one `QuerySession` as principal
                `marketing` (granted every product it reads) running, in a loop, a federated join
                of four products of three domains: sales.customers x marketing.customer_segments
                x sales.orders x logistics.shipments, aggregated.

Before the load, a copy of the sample mesh is built on the profile (`mesh build --scale 0.01`),
so the products, their descriptors and grants are the real ones. Production runs on the loopback
servers of scripts/services.sh (started if `status` fails): a new PostgreSQL database and a new
warehouse prefix s3://mesh-warehouse/<name> per run, dropped afterwards (--keep keeps them and
the mesh copies).

Reported, per profile:
  publishes/min   acknowledged publications per minute of the load (total and per product),
                  with publish latency p50/p95 (lock wait, restaging and retries included)
  read latency    p50/p95/p99 of one federated query (plan under grants + scan + join), and
                  queries/min over all readers
  errors          failed publishes and queries, by exception type, with one example each
  nothing lost    after the load, per product: every acknowledged (batch_id, snapshot_id) is a
                  snapshot of the table and on main's ancestry with that batch id; every batch is
                  on main at most once (<= 2 snapshots carry its id, consecutive: one delete +
                  add commit); main's head is the last acknowledged batch and its row count (a
                  real scan) equals that batch's rows; no audit branch is left behind. A failed
                  publish whose batch is on main anyway is reported too.
  peak RSS        the largest VmHWM of a publisher and of a reader process

Then the ratios production/local: publishes/min (< 1: production publishes less often) and
read p50/p95 (> 1: production reads are slower). Exit 1 when anything was lost on either profile.

    .venv/bin/python benchmarks/bench_production_load.py                  # N=4 M=3 K=2 T=60, both
    .venv/bin/python benchmarks/bench_production_load.py --seconds 120 --publishers 8
    .venv/bin/python benchmarks/bench_production_load.py --profile production --readers 4

Every process of the load, PostgreSQL and moto_server share this machine's cores: the figures
are the throughput of one small box under contention, not of a deployment (where the catalog
database, the object store and the publishers run on separate machines). moto keeps objects in
memory and is much slower per request than a real object store.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _common import BIN, peak_rss_mb

from mesh_platform.testing import REPO, copy_mesh, read_services_env, user_env

DOMAINS = ("sales", "logistics", "marketing")
# Products of each domain that publishers take in turn: unpartitioned (publish_from_duckdb
# writes one file, as the gate-less path does), with descriptors and grants in the sample mesh.
POOL = {
    "sales": ("customers", "order_lines"),
    "logistics": ("shipments", "suppliers"),
    "marketing": ("customer_segments", "revenue_by_nation_segment"),
}
PUBLISHERS_PER_PRODUCT = 2
READER = "marketing"
QUERY = """
SELECT c.market_segment, s.value_tier,
       count(DISTINCT c.customer_key) AS customers,
       count(*) AS shipped_lines,
       avg(sh.days_late) AS avg_days_late
FROM sales.customers c
JOIN marketing.customer_segments s USING (customer_key)
JOIN sales.orders o USING (customer_key)
JOIN logistics.shipments sh USING (order_key)
GROUP BY ALL ORDER BY ALL
"""
SCALE = 0.01
BUCKET = "mesh-warehouse"
SERVICES = REPO / "scripts" / "services.sh"


def assignment(publishers: int, domains: int) -> list[tuple[str, str]]:
    """(domain, product) of each publisher: domains round-robin, two publishers per product."""
    out = []
    for i in range(publishers):
        domain = DOMAINS[i % domains]
        slot = i // domains  # how many publishers of this domain came before
        pool = POOL[domain]
        out.append((domain, pool[(slot // PUBLISHERS_PER_PRODUCT) % len(pool)]))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _error(exc: BaseException) -> dict[str, str]:
    message = (getattr(exc, "what", None) or str(exc)).strip().splitlines()
    return {"kind": type(exc).__name__, "message": (message[0] if message else "")[:300]}


# -- the load's processes (spawned: each imports the platform itself) -------------------------


def publisher(spec: dict[str, Any], ready, go, start_at, out: str) -> None:
    result: dict[str, Any] = {"role": "publisher", **spec, "acks": [], "errors": []}
    try:
        from mesh_platform.addressing import ProductAddress
        from mesh_platform.config import load_mesh
        from mesh_platform.duckdb_ext import connect
        from mesh_platform.storage.catalog import open_catalog
        from mesh_platform.testing import publish_from_duckdb

        mesh = load_mesh(Path(spec["root"]))
        catalog = open_catalog(mesh)
        address = ProductAddress(spec["domain"], spec["product"])
        current = catalog.load_table(address.iceberg_identifier).scan().to_arrow()
        conn = connect()
        conn.register("current_rows", current)
        conn.execute("CREATE TABLE src AS SELECT * FROM current_rows")
        conn.unregister("current_rows")
        total = current.num_rows
        del current
        rng = random.Random(spec["index"])
    except BaseException as exc:
        result["setup_error"] = _error(exc) | {"trace": traceback.format_exc()[-2000:]}
        ready.put(spec["index"])
        Path(out).write_text(json.dumps(result))
        return
    ready.put(spec["index"])
    go.wait()
    deadline = start_at.value + spec["seconds"]
    result["start"] = time.time()
    seq = 0
    while time.time() < deadline:
        rows = total - rng.randint(0, min(97, max(total - 1, 0)))
        conn.execute(f"CREATE OR REPLACE TABLE t AS SELECT * FROM src LIMIT {rows}")
        batch = f"{spec['label']}-p{spec['index']}-{seq}"
        seq += 1
        began = time.perf_counter()
        try:
            published = publish_from_duckdb(
                catalog, address, conn, "main.t",
                properties={"mesh.bench": "production_load"}, batch_id=batch,
            )  # fmt: skip
        except Exception as exc:
            result["errors"].append({"batch": batch, "at": time.time(), **_error(exc)})
            continue
        result["acks"].append({
            "batch": batch, "snapshot_id": published.snapshot_id, "rows": rows,
            "row_count": published.row_count, "seconds": time.perf_counter() - began,
            "at": time.time(),
        })  # fmt: skip
    result["end"] = time.time()
    result["peak_mb"] = peak_rss_mb()
    Path(out).write_text(json.dumps(result))


def reader(spec: dict[str, Any], ready, go, start_at, out: str) -> None:
    result: dict[str, Any] = {"role": "reader", **spec, "latencies": [], "errors": []}
    try:
        from mesh_platform.config import load_mesh
        from mesh_platform.query.engine import QuerySession

        session = QuerySession(READER, mesh=load_mesh(Path(spec["root"])))
    except BaseException as exc:
        result["setup_error"] = _error(exc) | {"trace": traceback.format_exc()[-2000:]}
        ready.put(spec["index"])
        Path(out).write_text(json.dumps(result))
        return
    ready.put(spec["index"])
    go.wait()
    deadline = start_at.value + spec["seconds"]
    result["start"] = time.time()
    empty = 0
    while time.time() < deadline:
        began = time.perf_counter()
        try:
            rows = session.sql(QUERY).num_rows
        except Exception as exc:
            result["errors"].append({"at": time.time(), **_error(exc)})
            time.sleep(0.05)  # a failing query must not spin
            continue
        result["latencies"].append(time.perf_counter() - began)
        empty += rows == 0
    session.close()
    result["empty_results"] = empty
    result["end"] = time.time()
    result["peak_mb"] = peak_rss_mb()
    Path(out).write_text(json.dumps(result))


# -- one profile: environment, build, load, verification --------------------------------------


def services_env() -> dict[str, str]:
    """The loopback servers' environment, starting them when `status` fails."""
    if subprocess.run([str(SERVICES), "status"], capture_output=True, check=False).returncode:
        print("services: not answering, running scripts/services.sh start", flush=True)
        started = subprocess.run([str(SERVICES), "start"], capture_output=True, text=True,
                                 timeout=900, check=False)  # fmt: skip
        if started.returncode:
            sys.exit(f"scripts/services.sh start failed:\n{started.stderr[-3000:]}")
    return read_services_env()


def fresh_production(name: str) -> dict[str, str]:
    """The services' environment with a new database and warehouse prefix of this run."""
    import psycopg2

    from mesh_platform.urls import pg_connect_args

    env = services_env()
    admin = psycopg2.connect(**pg_connect_args(env["MESH_POSTGRES_URL"]), connect_timeout=10)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    admin.close()
    for key in ("MESH_POSTGRES_URL", "MESH_CATALOG__URI"):
        env[key] = env[key].rsplit("/", 1)[0] + f"/{name}"
    env["MESH_CATALOG__WAREHOUSE"] = f"s3://{BUCKET}/{name}"
    return env


def drop_production(name: str, env: dict[str, str]) -> None:
    import boto3
    import psycopg2

    from mesh_platform.urls import pg_connect_args

    admin_args = {**pg_connect_args(env["MESH_POSTGRES_URL"]), "dbname": "mesh"}
    admin = psycopg2.connect(**admin_args, connect_timeout=10)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()
    s3 = boto3.client(
        "s3",
        endpoint_url=env["MESH_S3_ENDPOINT"],
        region_name=env.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{name}/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys[i : i + 1000]})


class ProfileEnv:
    """os.environ set to a profile's (MESH_*, AWS_*) for this process and spawned children."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __enter__(self) -> None:
        self.saved = dict(os.environ)
        for key in list(os.environ):
            if key.startswith(("MESH_", "DAGSTER_HOME")):
                del os.environ[key]
        os.environ.update(self.env)

    def __exit__(self, *exc: object) -> None:
        os.environ.clear()
        os.environ.update(self.saved)


def build(root: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "mesh"), "--root", str(root), "build", "--scale", str(SCALE)],
        env={**user_env(), **env, "COLUMNS": "200"}, cwd=root, capture_output=True, text=True,
        timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"mesh build failed on {root}:\n{(done.stdout + done.stderr)[-4000:]}")
    return time.perf_counter() - start


def run_load(root: Path, label: str, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, go, start_at = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    specs = [
        ("publisher", {"domain": d, "product": p}) for d, p in assignment(args.publishers,
                                                                          args.domains)
    ] + [("reader", {}) for _ in range(args.readers)]  # fmt: skip
    procs = []
    for index, (role, extra) in enumerate(specs):
        spec = {"index": index, "root": str(root), "seconds": args.seconds, "label": label,
                **extra}  # fmt: skip
        out = out_dir / f"{label}-{role}-{index}.json"
        target = publisher if role == "publisher" else reader
        proc = ctx.Process(target=target, args=(spec, ready, go, start_at, str(out)))
        proc.start()
        procs.append((proc, out, role, spec))
    for _ in procs:  # every process imported the platform and loaded its data
        ready.get(timeout=600)
    start_at.value = time.time()
    go.set()
    hung = []
    for proc, _, role, spec in procs:
        proc.join(timeout=max(0.0, start_at.value + args.seconds + 900 - time.time()))
        if proc.is_alive():  # a publish stuck far past the deadline (e.g. on a lock)
            proc.terminate()
            proc.join(10)
            hung.append(f"{role} {spec['index']}")
    results = []
    for proc, out, role, spec in procs:
        if out.exists():
            results.append(json.loads(out.read_text()) | {"exitcode": proc.exitcode})
        else:
            results.append({"role": role, **spec, "acks": [], "errors": [], "latencies": [],
                            "crashed": proc.exitcode})  # fmt: skip
    for r in results:
        r["window_start"] = start_at.value
    return results


def main_ancestry(table) -> list:
    """Main's snapshots, head first."""
    history, snapshot = [], table.current_snapshot()
    while snapshot is not None:
        history.append(snapshot)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return history


def verify(root: Path, results: list[dict]) -> tuple[list[str], list[str]]:
    """(losses, warnings) after the load: see the module's docstring, "nothing lost"."""
    from mesh_platform.config import load_mesh
    from mesh_platform.storage.catalog import open_catalog
    from mesh_platform.storage.metadata import BATCH_PROPERTY

    catalog = open_catalog(load_mesh(root))
    losses: list[str] = []
    warnings: list[str] = []
    acks: dict[tuple[str, str], list[dict]] = defaultdict(list)
    failed: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in results:
        if r["role"] != "publisher":
            continue
        acks[(r["domain"], r["product"])].extend(r["acks"])
        failed[(r["domain"], r["product"])].extend(e["batch"] for e in r["errors"])
    for key in sorted(set(acks) | set(failed)):
        name = ".".join(key)
        table = catalog.load_table(key)
        history = main_ancestry(table)
        position = {s.snapshot_id: i for i, s in enumerate(history)}
        on_main: dict[str, list[int]] = defaultdict(list)
        for i, snapshot in enumerate(history):
            if batch := (snapshot.summary or {}).get(BATCH_PROPERTY):
                on_main[batch].append(i)
        batches = Counter(a["batch"] for a in acks[key])
        for batch, count in batches.items():
            if count > 1:
                losses.append(f"{name}: batch {batch} acknowledged {count} times")
        for ack in acks[key]:
            batch, snapshot_id = ack["batch"], ack["snapshot_id"]
            snapshot = table.snapshot_by_id(snapshot_id)
            if snapshot is None:
                losses.append(f"{name}: acknowledged snapshot {snapshot_id} ({batch}) is gone")
                continue
            if snapshot_id not in position:
                losses.append(f"{name}: acknowledged {batch} (snapshot {snapshot_id}) is not on "
                              "main's ancestry")  # fmt: skip
            carried = (snapshot.summary or {}).get(BATCH_PROPERTY)
            if carried != batch:
                losses.append(f"{name}: snapshot {snapshot_id} carries {carried}, not {batch}")
            places = on_main.get(batch, [])
            if not places:
                losses.append(f"{name}: acknowledged batch {batch} is not on main")
            elif len(places) > 2 or places[-1] - places[0] != len(places) - 1:
                losses.append(f"{name}: batch {batch} is on main {len(places)} times at "
                              f"positions {places} (expected one delete+add commit)")  # fmt: skip
            if ack["row_count"] != ack["rows"]:
                losses.append(f"{name}: batch {batch} wrote {ack['row_count']} rows, "
                              f"not the {ack['rows']} given")  # fmt: skip
        for batch in failed[key]:
            if batch in on_main:
                warnings.append(f"{name}: failed publish {batch} is on main anyway")
        ranked = [a for a in acks[key] if a["snapshot_id"] in position]
        if ranked:
            last = min(ranked, key=lambda a: position[a["snapshot_id"]])
            head = history[0]
            head_batch = (head.summary or {}).get(BATCH_PROPERTY)
            if head.snapshot_id != last["snapshot_id"]:
                (warnings if head_batch in failed[key] else losses).append(
                    f"{name}: main's head is batch {head_batch} (snapshot {head.snapshot_id}), "
                    f"not the last acknowledged {last['batch']}"
                )
            rows = table.scan(snapshot_id=head.snapshot_id).to_arrow().num_rows
            if head.snapshot_id == last["snapshot_id"] and rows != last["rows"]:
                losses.append(f"{name}: main has {rows} rows, the last acknowledged batch "
                              f"{last['batch']} wrote {last['rows']}")  # fmt: skip
        leftover = sorted(ref for ref in table.metadata.refs if ref != "main")
        if leftover:
            warnings.append(f"{name}: {len(leftover)} audit branch(es) left: {leftover[:3]}")
    return losses, warnings


def summarise(label: str, results: list[dict], seconds: float) -> dict[str, Any]:
    pubs = [r for r in results if r["role"] == "publisher"]
    reads = [r for r in results if r["role"] == "reader"]
    start = results[0]["window_start"]
    pub_end = max((r.get("end", start + seconds) for r in pubs), default=start + seconds)
    read_end = max((r.get("end", start + seconds) for r in reads), default=start + seconds)
    pub_minutes = max(pub_end - start, seconds) / 60
    read_minutes = max(read_end - start, seconds) / 60
    per_product: dict[str, list[dict]] = defaultdict(list)
    writers: Counter = Counter()
    for r in pubs:
        per_product[f"{r['domain']}.{r['product']}"].extend(r["acks"])
        writers[f"{r['domain']}.{r['product']}"] += 1
    latencies = [x for r in reads for x in r.get("latencies", [])]
    errors: Counter = Counter()
    examples: dict[tuple[str, str], str] = {}
    for r in results:
        for e in r.get("errors", []):
            errors[(r["role"], e["kind"])] += 1
            examples.setdefault((r["role"], e["kind"]), e["message"])
        for problem in ("setup_error",):
            if problem in r:
                errors[(r["role"], "setup:" + r[problem]["kind"])] += 1
                examples.setdefault((r["role"], "setup:" + r[problem]["kind"]),
                                    r[problem]["message"])  # fmt: skip
        if r.get("crashed") is not None or r.get("exitcode") not in (0, None):
            errors[(r["role"], f"process exit {r.get('crashed', r.get('exitcode'))}")] += 1
    acks = sum(len(v) for v in per_product.values())
    return {
        "label": label,
        "publishes": acks,
        "publishes_per_min": acks / pub_minutes,
        "pub_minutes": pub_minutes,
        "products": {
            name: {
                "writers": writers[name],
                "publishes": len(acks_),
                "per_min": len(acks_) / pub_minutes,
                "p50": percentile([a["seconds"] for a in acks_], 50),
                "p95": percentile([a["seconds"] for a in acks_], 95),
            }
            for name, acks_ in sorted(per_product.items())
        },
        "queries": len(latencies),
        "queries_per_min": len(latencies) / read_minutes,
        "read_p50": percentile(latencies, 50),
        "read_p95": percentile(latencies, 95),
        "read_p99": percentile(latencies, 99),
        "empty_results": sum(r.get("empty_results", 0) for r in reads),
        "errors": errors,
        "examples": examples,
        "peak_publisher_mb": max((r.get("peak_mb", 0) for r in pubs), default=0),
        "peak_reader_mb": max((r.get("peak_mb", 0) for r in reads), default=0),
    }


def report(s: dict[str, Any], losses: list[str], warnings: list[str], build_s: float) -> None:
    print(f"\n== {s['label']} ==  (mesh build --scale {SCALE}: {build_s:.0f} s, not in the load)")
    print(f"publishes        {s['publishes']:6d} in {s['pub_minutes'] * 60:5.1f} s  "
          f"= {s['publishes_per_min']:7.1f} /min")  # fmt: skip
    print(f"  {'product':<34} {'writers':>7} {'publishes':>9} {'/min':>7} "
          f"{'p50 s':>7} {'p95 s':>7}")  # fmt: skip
    for name, p in s["products"].items():
        print(f"  {name:<34} {p['writers']:7d} {p['publishes']:9d} {p['per_min']:7.1f} "
              f"{p['p50']:7.2f} {p['p95']:7.2f}")  # fmt: skip
    print(f"reads            {s['queries']:6d} queries = {s['queries_per_min']:7.1f} /min; "
          f"latency p50 {s['read_p50'] * 1000:6.0f} ms  p95 {s['read_p95'] * 1000:6.0f} ms  "
          f"p99 {s['read_p99'] * 1000:6.0f} ms; empty results: {s['empty_results']}")  # fmt: skip
    if s["errors"]:
        print("errors")
        for (role, kind), count in sorted(s["errors"].items()):
            print(f"  {role:<9} {kind:<28} {count:5d}  e.g. {s['examples'].get((role, kind), '')}")
    else:
        print("errors           none")
    print(f"peak RSS         publisher {s['peak_publisher_mb']:.0f} MB, "
          f"reader {s['peak_reader_mb']:.0f} MB")  # fmt: skip
    for w in warnings:
        print(f"warning          {w}")
    if losses:
        print(f"LOST             {len(losses)} problem(s):")
        for line in losses[:50]:
            print(f"  {line}")
    else:
        print("nothing lost     every acknowledged batch is on main once, main = the last one")


def run_profile(profile: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    name = f"bench_load_{uuid.uuid4().hex[:10]}"
    env = fresh_production(name) if profile == "production" else {"MESH_PROFILE": "local"}
    root = copy_mesh(tmp / profile / "mesh")
    out_dir = tmp / profile / "results"
    out_dir.mkdir()
    try:
        print(f"[{profile}] building a copy of the sample mesh at {root}", flush=True)
        build_s = build(root, env)
        print(f"[{profile}] load: {args.publishers} publishers, {args.readers} readers, "
              f"{args.seconds} s", flush=True)  # fmt: skip
        with ProfileEnv(env):
            results = run_load(root, profile[:4], args, out_dir)
            losses, warnings = verify(root, results)
        summary = summarise(profile, results, args.seconds)
        report(summary, losses, warnings, build_s)
        summary["lost"] = losses
        return summary
    finally:
        if profile == "production" and not args.keep:
            try:
                drop_production(name, env)
            except Exception as exc:  # never hide the results behind the clean-up
                print(f"[{profile}] could not drop database/prefix {name}: {_error(exc)}")
        elif profile == "production":
            print(f"[{profile}] kept database {name} and s3://{BUCKET}/{name}/")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publishers", type=int, default=4, help="N publisher processes")
    parser.add_argument("--domains", type=int, default=3, choices=(1, 2, 3), help="M domains")
    parser.add_argument("--readers", type=int, default=2, help="K reader processes")
    parser.add_argument("--seconds", type=float, default=60, help="T: length of the load")
    parser.add_argument("--profile", choices=("production", "local", "both"), default="both")
    parser.add_argument("--keep", action="store_true", help="keep the mesh copies and database")
    args = parser.parse_args()
    if args.publishers < 1 or args.readers < 0 or args.seconds <= 0:
        parser.error("need --publishers >= 1, --readers >= 0, --seconds > 0")
    print(f"cores: {os.cpu_count()} (shared by every publisher, reader, PostgreSQL and moto)")
    for i, (d, p) in enumerate(assignment(args.publishers, args.domains)):
        print(f"  publisher {i}: {d}.{p}")
    profiles = ["local", "production"] if args.profile == "both" else [args.profile]
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    summaries = {}
    try:
        for profile in profiles:
            summaries[profile] = run_profile(profile, args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if len(summaries) == 2:
        prod, local = summaries["production"], summaries["local"]

        def ratio(a: float, b: float) -> str:
            return f"{a / b:6.2f}" if b else "   n/a"

        print("\n== production / local ==")
        print(f"publishes/min   {ratio(prod['publishes_per_min'], local['publishes_per_min'])}"
              "   (< 1: production publishes less often)")  # fmt: skip
        print(f"read p50        {ratio(prod['read_p50'], local['read_p50'])}"
              "   (> 1: production reads are slower)")  # fmt: skip
        print(f"read p95        {ratio(prod['read_p95'], local['read_p95'])}")
        print(f"queries/min     {ratio(prod['queries_per_min'], local['queries_per_min'])}")
    lost = {p: s["lost"] for p, s in summaries.items() if s["lost"]}
    if lost:
        print(f"\nFAIL: something was lost on {', '.join(lost)}")
        sys.exit(1)
    print("\nOK: nothing lost")


if __name__ == "__main__":
    main()
