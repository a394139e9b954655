"""Per-product usage from a large query audit log: DuckDB's read_json vs a json.loads loop.

One script, one process, the same generated log for both sides:

  setup     --lines audit lines (default 1,000,000) in the shape the query engine writes
            (`started` + outcome lines with the same id, denials, failures, a few queries
            killed mid-way, the query service's login events, dbt staging lines) over
            --products products and --principals principals, plus a few corrupt lines and a
            last line cut mid-write.
  mesh      `products.usage.read_usage`: read_json with typed columns into a compact table,
            then SQL (what `mesh usage`, `mesh describe` and `mesh catalog` run).
  baseline  the naive way: read line by line, `json.loads`, aggregate in dicts (same rules).

Both sides must agree on every figure (checked), then each runs --repeat times alternating;
the medians and their ratio are printed (a figure, not a timed assertion), with peak RSS.

    .venv/bin/python benchmarks/bench_usage.py --lines 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import peak_rss_mb

from mesh_platform.products.usage import (
    TOP_READERS,
    AuditUsage,
    ReaderUsage,
    ReadUsage,
    read_usage,
)

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)  # the first line's time; one line per 2 s
STATUSES = ["ok"] * 80 + ["denied"] * 8 + ["failed"] * 6 + ["refused", "limited", "cancelled"]


def generate(path: Path, lines: int, products: int, principals: int, seed: int = 17) -> None:
    """An audit log of about ``lines`` lines, as the engine and the service write them."""
    rng = random.Random(seed)
    addresses = [f"domain{i % 50}.product_{i}" for i in range(products)]
    who = [f"user:reader{i}" for i in range(principals)]
    written = 0
    with path.open("w") as out:
        while written < lines:
            at = (START + dt.timedelta(seconds=written * 2)).isoformat(timespec="milliseconds")
            principal = rng.choice(who)
            kind = rng.random()
            if kind < 0.05:  # the query service's login event
                line = {
                    "at": at,
                    "event": "login",
                    "principal": principal,
                    "status": "ok",
                    "auth": "token",
                    "client": "10.0.0.7",
                    "application": "psql",
                }
                out.write(json.dumps(line, sort_keys=True) + "\n")
                written += 1
                continue
            read = rng.sample(addresses, rng.choice((1, 1, 1, 2, 3)))
            entry = {"id": uuid.uuid4().hex, "principal": principal, "auth": "impersonation",
                     "query": "SELECT o_orderkey , SUM ( o_totalprice ) FROM " + read[0]
                     + " WHERE o_orderdate > ? GROUP BY o_orderkey LIMIT ?"}  # fmt: skip
            if kind < 0.07:  # a consumer domain's dbt run staging its inputs: one line, no id
                entry.pop("id")
            status = rng.choice(STATUSES)
            products_ = [{"address": a, "snapshot_id": rng.randrange(1, 2**62), "masked": [],
                          "row_filter": False, "owner": False} for a in read]  # fmt: skip
            if status in ("denied", "refused"):  # refused before it ran: one line
                entry["products"] = [{"address": a} for a in read]
                entry["reason"] = "principal has no grant"
            else:
                entry["products"] = products_
                if "id" in entry:
                    started = {"at": at, **entry, "status": "started"}
                    out.write(json.dumps(started, sort_keys=True) + "\n")
                    written += 1
                if rng.random() < 0.002:  # killed mid-way: no outcome line
                    continue
                if status == "ok":
                    entry["rows"] = rng.randrange(0, 10_000)
                    if "id" not in entry:  # staging records each product's rows too
                        for product in products_:
                            product["rows"] = rng.randrange(0, 10_000)
                else:
                    entry["reason"] = "BinderException"
            line = {"at": at, **entry, "status": status, "duration_ms": 12.5}
            out.write(json.dumps(line, sort_keys=True) + "\n")
            written += 1
            if rng.random() < 0.0001:  # garbage: half a line, binary, not an object
                out.write(rng.choice(['{"at": "2026-11-0', "\x00\x00\x00", "[1, 2]", "{}"]) + "\n")
                written += 1
        out.write(json.dumps({"at": at, "id": "cut", "principal": "user:x"})[:25])  # a crash


def naive(path: Path, since: dt.datetime | None = None) -> AuditUsage:
    """The same figures by json.loads, line by line (the baseline)."""
    lines = corrupt = 0
    started: dict[str, dict] = {}
    queries: list[tuple[str, str, int | None, dt.datetime, dict[str, int | None]]] = []
    finished: set[str] = set()
    with path.open("rb") as raw:
        for data in raw:
            if not data.strip():
                continue
            lines += 1
            try:
                e = json.loads(data)
                at = dt.datetime.fromisoformat(e["at"])
            except (ValueError, KeyError, TypeError):
                corrupt += 1
                continue
            if "event" in e:
                continue
            if e.get("status") is None:
                corrupt += 1
                continue
            if since is not None and at < since:
                continue
            addresses = {
                p["address"]: p.get("rows") for p in e.get("products") or [] if p.get("address")
            }
            if e["status"] == "started":
                started[e["id"]] = (e.get("principal"), at, addresses)
                continue
            if e.get("id"):
                finished.add(e["id"])
            rows = e.get("rows") if isinstance(e.get("rows"), int) else None
            queries.append((e.get("principal") or "?", e["status"], rows, at, addresses))
    for qid, (principal, at, addresses) in started.items():
        if qid not in finished:
            queries.append((principal or "?", "unfinished", None, at, addresses))
    per: dict[tuple[str, str], list] = {}
    for principal, status, rows, at, addresses in queries:
        for address, own_rows in addresses.items():
            f = per.setdefault((address, principal), [0, 0, 0, 0, None])
            if status == "ok":
                f[0] += 1
                f[3] += (own_rows if own_rows is not None else rows) or 0
                f[4] = at if f[4] is None or at > f[4] else f[4]
            elif status == "denied":
                f[1] += 1
            else:
                f[2] += 1
    products: dict[str, ReadUsage] = {}
    readers: dict[str, list[ReaderUsage]] = {}
    for (address, principal), (ok, denied, failed, rows, last) in per.items():
        u = products.setdefault(address, ReadUsage())
        u.ok, u.denied, u.failed = u.ok + ok, u.denied + denied, u.failed + failed
        u.rows += rows
        if ok:
            readers.setdefault(address, []).append(ReaderUsage(principal, ok, rows, last))
            u.last_read = last if u.last_read is None or last > u.last_read else u.last_read
    for address, u in products.items():
        ranked = sorted(readers.get(address, []), key=lambda r: (-r.queries, r.principal))
        u.readers, u.top_readers = len(ranked), ranked[:TOP_READERS]
    return AuditUsage(path, since, products, lines, corrupt)


def _figures(usage: AuditUsage) -> tuple:
    return (
        usage.lines,
        usage.corrupt,
        {a: json.dumps(u.to_dict(), sort_keys=True) for a, u in usage.products.items()},
    )


def _peak_mb(side: str, log: Path) -> float:
    """Peak RSS of a fresh process reading ``log`` with one side (memory is per process)."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure", side, "--log", str(log)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--products", type=int, default=500)
    parser.add_argument("--principals", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--measure", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child of _peak_mb
        SIDES[args.measure](args.log)
        print(peak_rss_mb())
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "queries.jsonl"
        began = time.perf_counter()
        generate(log, args.lines, args.products, args.principals)
        size = log.stat().st_size
        print(f"log: {args.lines:,} lines, {size / 2**20:.0f} MiB, generated in "
              f"{time.perf_counter() - began:.1f} s")  # fmt: skip
        middle = START + dt.timedelta(seconds=args.lines)  # about half the log's span
        for window in (None, middle):
            mesh, base = read_usage(log, window), naive(log, window)
            if _figures(mesh) != _figures(base):
                print(f"MISMATCH (since {window}) between read_usage and the baseline")
                return 1
            print(f"figures agree (since {window}): {len(mesh.products)} products, "
                  f"{mesh.lines:,} lines, {mesh.corrupt} corrupt skipped")  # fmt: skip
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        for _ in range(args.repeat):
            for side, fn in SIDES.items():
                t = time.perf_counter()
                fn(log)
                times[side].append(time.perf_counter() - t)
        m, b = statistics.median(times["read_usage"]), statistics.median(times["baseline"])
        for side, median in (("read_usage", m), ("baseline", b)):
            print(
                f"{side:11} median {median:.2f} s ({args.lines / median / 1e6:.2f} M lines/s), "
                f"peak RSS {_peak_mb(side, log):.0f} MiB"
            )
        print(f"ratio baseline / read_usage: {b / m:.1f}x")
    return 0


SIDES = {"read_usage": read_usage, "baseline": naive}


if __name__ == "__main__":
    sys.exit(main())
