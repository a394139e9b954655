"""The mesh at 3, 10, 25 and 50 domains: what `mesh up` costs as domains are added.

For each size N, in one run, a mesh of N scaffolded domains in three layers (layer k reads from
layer k - 1; mesh_platform/testing_scale.py) on the embedded default profile, then:

- `mesh prepare` (dbt parse of every project);
- `mesh up --no-query`: until every code server answers gRPC's health check, the webserver's
  own start, and until every code location is loaded according to the webserver's GraphQL
  API (``LOCATIONS``), with the count that loaded;
- an asset-graph query (``assetNodes`` with their dependencies) through GraphQL, and
  `mesh status`;
- the daemon's sensor ticks, from the instance's tick records: the first tick of each SLA
  monitor (N of them) and each consumer sensor, how long the daemon took to evaluate every
  sensor once, and the warm ticks (each SLA monitor's second, 5 minutes later; the consumer
  sensors' later ones);
- memory, once every sensor ticked: RSS and PSS of each code server's process tree (the server
  and the subprocess that loads the domain), from /proc;
- end to end: `mesh build --domain d000` publishes a producer of layer 0; the latency from its
  materialisation to each consumer's sensor-launched run being created and started (the
  consumers' sensors run every 60 s, the product's interval, not shortened);
- `mesh down`, always.

Every figure is printed per N and as a ratio to the first size's (the baseline, measured in
the same run). A size whose code servers would not fit in memory (extrapolated from the sizes
measured before it) is skipped and said so; if the machine runs short of memory anyway, the
topology is stopped and the size reported as not fitting.

    .venv/bin/python benchmarks/bench_mesh_scale.py [--sizes 3,10,25,50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
from _common import BIN
from dagster._core.scheduler.instigation import InstigatorType

from mesh_platform.config import load_mesh
from mesh_platform.deploy.dagster_api import LOCATIONS, graphql
from mesh_platform.deploy.topology import free_port, load_topology
from mesh_platform.testing import user_env
from mesh_platform.testing_scale import ScaleMesh, scale_mesh

ASSET_GRAPH = "{ assetNodes { assetKey { path } dependencyKeys { path } groupName opName } }"
SF = "0.001"  # TPC-H's nation and region (25 and 5 rows) are all the domains read
SENSOR = "{}_on_inputs_published"
TERMINATE = """mutation($runId: String!) { terminateRun(runId: $runId) { __typename } }"""


def mesh_cmd(made: ScaleMesh, *args: str, check: bool = True, timeout: float = 3600):
    env = {**user_env(), "MESH_SCALE_FACTOR": SF, "COLUMNS": "1000"}
    start = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "mesh"), "--root", str(made.root), *args], env=env, cwd=made.root,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(
            f"mesh {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return time.perf_counter() - start, done


# -- memory from /proc ---------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _field_kb(path: Path, name: str) -> int:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    return 0


def tree_memory_mb(pid: int, tree: dict[int, list[int]]) -> tuple[float, float]:
    """(RSS, PSS) in MB of ``pid`` and its descendants."""
    rss = pss = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        rss += _field_kb(Path(f"/proc/{p}/status"), "VmRSS:")
        pss += _field_kb(Path(f"/proc/{p}/smaps_rollup"), "Pss:")
        stack.extend(tree.get(p, []))
    return rss / 1024, pss / 1024


def mem_available_mb() -> float:
    return _field_kb(Path("/proc/meminfo"), "MemAvailable:") / 1024


# -- the steps -----------------------------------------------------------------------------------


def start_topology(made: ScaleMesh, port: int, fig: dict) -> None:
    """`mesh up --no-query`, its progress lines timed as they come; then every location."""
    env = {**user_env(), "MESH_SCALE_FACTOR": SF, "COLUMNS": "1000"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "mesh"), "--root", str(made.root), "up", "--no-query", "--port", str(port)],
        env=env, cwd=made.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen: dict[str, float] = {}
    lines = []
    for line in proc.stdout or []:
        lines.append(line)
        for mark in ("serving on", "daemon up", "webserver up"):
            if mark in line:
                seen[mark] = time.perf_counter() - start
    if proc.wait() != 0:
        raise RuntimeError("mesh up failed:\n" + "".join(lines)[-4000:])
    fig["up: code servers healthy s"] = seen["serving on"]
    fig["up: webserver start s"] = seen["webserver up"] - seen["daemon up"]
    fig["up: command s"] = time.perf_counter() - start
    deadline = time.monotonic() + 900
    while True:
        entries = graphql(port, LOCATIONS)["workspaceOrError"]["locationEntries"]
        if all(e["loadStatus"] == "LOADED" for e in entries) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    fig["up: every location loaded s"] = time.perf_counter() - start
    loaded = [e for e in entries if e["locationOrLoadError"]["__typename"] == "RepositoryLocation"]
    fig["locations loaded (of N)"] = len(loaded)
    for e in entries:
        if e["locationOrLoadError"]["__typename"] != "RepositoryLocation":
            print(f"  {e['name']} did not load: {str(e['locationOrLoadError'])[:300]}")


def query_graph(port: int, fig: dict) -> None:
    times, nodes = [], 0
    for _ in range(3):
        start = time.perf_counter()
        nodes = len(graphql(port, ASSET_GRAPH)["assetNodes"])
        times.append(time.perf_counter() - start)
    fig["asset graph query s"] = statistics.median(times)
    fig["asset nodes"] = nodes


def measure_memory(made: ScaleMesh, fig: dict) -> None:
    """Per code server (RSS, PSS) and the whole topology's, once every SLA monitor ticked (its
    first tick imports pyiceberg and writes the SLA history)."""
    tree = _children()
    servers, total = [], 0.0
    for service in load_topology(load_mesh(made.root)).services:
        rss, pss = tree_memory_mb(service.pid or 0, tree)
        total += rss
        if service.domain:
            servers.append((rss, pss))
    fig["code server RSS MB (median)"] = statistics.median(r for r, _ in servers)
    fig["code server PSS MB (median)"] = statistics.median(p for _, p in servers)
    fig["code server RSS MB (max)"] = max(r for r, _ in servers)
    fig["topology RSS GB (all processes)"] = total / 1024


def _ticks(instance: dg.DagsterInstance) -> dict[str, list]:
    found = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=50)
        found[state.instigator_name] = sorted(
            (t for t in ticks if t.end_timestamp), key=lambda t: t.timestamp
        )
    return found


def measure_ticks(made: ScaleMesh, instance: dg.DagsterInstance, fig: dict) -> None:
    """Wait for every sensor's first tick; durations from the tick records."""
    expected = {f"{d}_sla_monitor" for d in made.domains} | {SENSOR.format(c) for c in made.inputs}
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        ticks = _ticks(instance)
        if all(ticks.get(name) for name in expected):
            break
        time.sleep(2)
    missing = sorted(n for n in expected if not ticks.get(n))
    if missing:
        print(f"  no tick in 20 min for {len(missing)} sensor(s): {', '.join(missing[:5])}...")
    firsts = {n: t[0] for n, t in ticks.items() if t and n in expected}
    monitors = [t.end_timestamp - t.timestamp for n, t in firsts.items() if n.endswith("_monitor")]
    sensors = [t.end_timestamp - t.timestamp for n, t in firsts.items() if n.endswith("published")]
    fig["SLA monitor tick s (median)"] = statistics.median(monitors)
    fig["SLA monitor tick s (max)"] = max(monitors)
    fig["consumer sensor tick s (median)"] = statistics.median(sensors) if sensors else 0.0
    fig["sensor round s (every sensor once)"] = max(t.end_timestamp for t in firsts.values()) - min(
        t.timestamp for t in firsts.values()
    )


def measure_steady_ticks(made: ScaleMesh, instance: dg.DagsterInstance, fig: dict) -> None:
    """The SLA monitors' second ticks (their interval is 5 minutes) and the consumer sensors'
    later ticks: what a tick costs once the code server is warm."""
    monitors = {f"{d}_sla_monitor" for d in made.domains}
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        ticks = _ticks(instance)
        if all(len(ticks.get(name, [])) >= 2 for name in monitors):
            break
        time.sleep(5)
    later = [t for n in monitors for t in ticks.get(n, [])[1:2]]
    sensors = [t for c in made.inputs for t in ticks.get(SENSOR.format(c), [])[1:]]
    fig["SLA monitor tick s, warm (median)"] = statistics.median(
        [t.end_timestamp - t.timestamp for t in later] or [float("nan")]
    )
    fig["consumer sensor tick s, warm (median)"] = statistics.median(
        [t.end_timestamp - t.timestamp for t in sensors] or [float("nan")]
    )


def measure_latency(made: ScaleMesh, instance: dg.DagsterInstance, port: int, fig: dict) -> None:
    """Publish the producer d000; its consumers' sensor-launched runs, created and started
    (then terminated through GraphQL: their builds and the layers after them are not what is
    measured, and each run worker takes half a GB)."""
    producer = made.domains[0]
    consumers = made.consumers_of(producer)
    fig["producer build s"], _ = mesh_cmd(made, "build", "--domain", producer)
    key = dg.AssetKey([producer, "regions"])
    event = instance.get_latest_materialization_event(key)
    assert event is not None, f"{producer}.regions was not materialised"
    published = event.timestamp
    created, started, runs = {}, {}, set()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and len(started) < len(consumers):
        for consumer in consumers:
            filters = dg.RunsFilter(tags={"dagster/sensor_name": SENSOR.format(consumer)})
            for record in instance.get_run_records(filters=filters, limit=1):
                created[consumer] = record.create_timestamp.timestamp() - published
                runs.add(record.dagster_run.run_id)
                if record.start_time:
                    started[consumer] = record.start_time - published
        time.sleep(1)
    for run_id in runs:
        with contextlib.suppress(Exception):  # it may have ended already
            graphql(port, TERMINATE, {"runId": run_id})
    if len(started) < len(consumers):
        print(f"  consumers without a started run after 15 min: {set(consumers) - set(started)}")
    fig["publish -> consumer run created s (max)"] = max(created.values(), default=float("nan"))
    fig["publish -> consumer run started s (max)"] = max(started.values(), default=float("nan"))


def measure(n: int, folder: Path, guard: MemoryGuard) -> dict:
    fig: dict[str, float] = {}
    start = time.perf_counter()
    made = scale_mesh(folder / "mesh", n)
    fig["scaffold s"] = time.perf_counter() - start
    fig["prepare s"], _ = mesh_cmd(made, "prepare")
    port = free_port()
    guard.root = made.root
    try:
        start_topology(made, port, fig)
        query_graph(port, fig)
        fig["mesh status s"], _ = mesh_cmd(made, "status", check=False)
        home = str(load_mesh(made.root).dagster_home)
        instance = dg.DagsterInstance.from_config(home)
        measure_ticks(made, instance, fig)
        measure_memory(made, fig)
        measure_latency(made, instance, port, fig)
        measure_steady_ticks(made, instance, fig)
    finally:
        fig["mesh down s"], _ = mesh_cmd(made, "down", "--grace", "10", check=False)
        guard.root = None
    if guard.tripped:
        raise MemoryError(f"less than {guard.floor_mb:.0f} MB available: the topology was stopped")
    return fig


def fits(n: int, measured: dict[int, dict], budget_mb: float) -> tuple[bool, float]:
    """Whether N code servers fit in ``budget_mb``: a server's PSS (its share of the pages it
    shares with the others: what N of them take together), extrapolated linearly over the
    sizes measured so far (a server's own memory may grow with N), plus 1.5 GB for the
    daemon, the webserver and the consumers' runs (terminated once started)."""
    if not measured:
        return True, 0.0
    sizes = sorted(measured)
    per = [measured[s]["code server PSS MB (median)"] for s in sizes]
    slope = max(0.0, (per[-1] - per[0]) / (sizes[-1] - sizes[0])) if len(sizes) > 1 else 0.0
    predicted = (per[-1] + slope * (n - sizes[-1])) * n + 1500
    return predicted < budget_mb, predicted


class MemoryGuard:
    """Stops the topology (`mesh down`) if the machine runs short of memory while a size
    runs: a size that does not fit is reported, the machine is not brought down."""

    def __init__(self, floor_mb: float = 2000) -> None:
        self.floor_mb, self.tripped, self.root = floor_mb, False, None
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            if self.root is not None and mem_available_mb() < self.floor_mb:
                self.tripped = True
                subprocess.run([str(BIN / "mesh"), "--root", str(self.root), "down", "--grace",
                                "0"], env=user_env(), capture_output=True, check=False)  # fmt: skip
            time.sleep(1)


def linear_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through ``points``."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def table(measured: dict[int, dict], skipped: dict[int, str], at: int = 500) -> None:
    """Each figure per N, as a ratio to the first size's, and a linear fit's value at ``at``
    domains (least squares over the sizes measured)."""
    sizes = sorted(measured)
    base = sizes[0]
    names = [k for k in measured[base] if not k.startswith("_")]
    head = f"{'figure':<42}" + "".join(f"{f'N={n}':>10}" for n in sizes)
    head += "".join(f"{f'{n}/{base}':>9}" for n in sizes[1:]) + f"{'per +1':>9}{f'fit {at}':>10}"
    print(head)
    for name in names:
        row = f"{name:<42}" + "".join(
            f"{measured[n].get(name, float('nan')):>10.2f}" for n in sizes
        )
        b = measured[base].get(name) or float("nan")
        row += "".join(f"{measured[n].get(name, float('nan')) / b:>9.2f}" for n in sizes[1:])
        points = [(n, measured[n][name]) for n in sizes if name in measured[n]]
        intercept, slope = linear_fit(points) if len(points) > 1 else (float("nan"),) * 2
        print(row + f"{slope:>9.3f}{intercept + slope * at:>10.1f}")
    for n, why in skipped.items():
        print(f"N={n}: not run: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="3,10,25,50")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--table", type=Path, help="only print the table of a --json file")
    args = parser.parse_args()
    if args.table:
        saved = json.loads(args.table.read_text())
        table({int(n): f for n, f in saved["measured"].items()},
              {int(n): w for n, w in saved["skipped"].items()})  # fmt: skip
        return
    measured: dict[int, dict] = {}
    skipped: dict[int, str] = {}
    guard = MemoryGuard()
    for n in [int(s) for s in args.sizes.split(",")]:
        budget = mem_available_mb() - 1500
        ok, predicted = fits(n, measured, budget)
        if not ok:
            need, have = predicted / 1024, budget / 1024
            skipped[n] = f"{need:.1f} GB predicted for the topology, {have:.1f} GB available"
            print(f"N={n}: skipped ({skipped[n]})", flush=True)
            continue
        print(f"N={n}: measuring", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"scale{n}-") as tmp:
            try:
                measured[n] = measure(n, Path(tmp), guard)
            except Exception as exc:  # a size that breaks is reported; the others still run
                skipped[n] = f"failed: {type(exc).__name__}: {str(exc)[:2000]}"
                print(f"N={n}: {skipped[n]}", flush=True)
                continue
        print(json.dumps({n: measured[n]}, indent=1), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"measured": measured, "skipped": skipped}, indent=1))
    if measured:
        table(measured, skipped)
    sys.stdout.flush()


if __name__ == "__main__":
    os.environ.pop("DAGSTER_HOME", None)
    main()
