"""The production topology on one machine: ``mesh up``, ``mesh status``, ``mesh down``.

What a cluster runs (the Helm values of ``mesh deploy helm``), as separate processes of this
host: one gRPC code server per domain (``dagster code-server start``: it loads the domain's
code in a subprocess of its own, reloads it on request, and shows a load error on its code
location instead of dying), the Dagster daemon (schedules, sensors, the run queue, run
monitoring and retries), the webserver, and the query service (``mesh serve``). The daemon and
the webserver load a workspace that points at the code servers by address, as the chart's
does, so a domain's server restarts alone (``mesh up --restart DOMAIN``) while the others serve.
Runs are queued by the webserver and launched by the daemon, one per domain at a time
(instance.py).

Every process runs in a session of its own, with the environment ``mesh up`` had (the
production profile's servers and credentials come from there, never from a file), its output
in ``<state>/topology/logs/<service>.log``; ``<state>/topology/services.json`` records what
was started: name, pid and the pid's start time (a recycled pid is never taken for a
service), port, command. ``mesh down`` stops them in reverse order: SIGTERM to the session,
SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from mesh_platform.config import Mesh, make_private_dir
from mesh_platform.deploy.dagster_api import DAEMONS, HOST, RELOAD, error_text, graphql
from mesh_platform.errors import MeshError
from mesh_platform.files import write_atomically
from mesh_platform.workspace import check_workspace, module_for

CODE_SERVER = "code-server:"  # service name prefix: code-server:<domain>
GRACE_SECONDS = 30.0
LOADING_PER_CORE = 2  # code servers loading their domain at once, per core (mesh up)


@dataclass
class Service:
    """One process of the topology, as services.json records it."""

    name: str
    argv: list[str]
    port: int | None = None
    pid: int | None = None
    started: str | None = None  # /proc/<pid>/stat start time: the pid is this process's
    log: str = ""

    @property
    def domain(self) -> str | None:
        return self.name.removeprefix(CODE_SERVER) if self.name.startswith(CODE_SERVER) else None


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    port: int | None
    alive: bool
    healthy: bool
    detail: str = ""


@dataclass
class Topology:
    """What ``mesh up`` started: its services, in start order."""

    services: list[Service] = field(default_factory=list)

    def get(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    @property
    def webserver_port(self) -> int | None:
        web = self.get("webserver")
        return web.port if web else None


def topology_dir(mesh: Mesh) -> Path:
    return mesh.state_dir / "topology"


def _record(mesh: Mesh) -> Path:
    return topology_dir(mesh) / "services.json"


def load_topology(mesh: Mesh) -> Topology:
    path = _record(mesh)
    if not path.is_file():
        return Topology()
    try:
        data = json.loads(path.read_text())
        return Topology([Service(**s) for s in data["services"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise MeshError(
            f"{path} is not a record of `mesh up` ({exc})",
            fix="stop the processes `mesh up` started by hand (`ps -ef | grep dagster` lists "
            f"them, with {mesh.root} in their command line), delete this file, then `mesh up`",
            path=path,
        ) from exc


def _save(mesh: Mesh, topology: Topology) -> None:
    text = json.dumps({"services": [asdict(s) for s in topology.services]}, indent=2)
    write_atomically(_record(mesh), text + "\n", mode=0o600)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- processes --------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_running(pid: int) -> bool:
    """``pid`` is a process that has not ended (a zombie no one reaped yet counts as ended:
    processes reparented to a container's pid 1 may stay zombies)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _alive(service: Service) -> bool:
    """The recorded process still runs (same pid and start time, not a zombie)."""
    if service.pid is None:
        return False
    return process_running(service.pid) and _start_time(service.pid) == service.started


def _spawn(mesh: Mesh, service: Service, env: dict[str, str]) -> None:
    logs = make_private_dir(topology_dir(mesh) / "logs")
    log = logs / f"{service.name.replace(':', '-')}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            service.argv, cwd=mesh.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    service.pid, service.log = proc.pid, str(log)
    service.started = _start_time(proc.pid)


def _stop(services: Iterable[Service], grace: float) -> list[str]:
    """SIGTERM each service's session, SIGKILL what is left after ``grace``; the names of
    the services that needed SIGKILL."""
    live = [s for s in services if _alive(s)]
    for service in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.pid or 0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(s) for s in live) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = []
    for service in live:
        if _alive(service):
            killed.append(service.name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.pid or 0, signal.SIGKILL)  # the session's children too
    return killed


# -- health -------------------------------------------------------------------------------------


def _grpc_serving(port: int) -> tuple[bool, str]:
    """The code server answers gRPC's standard health check."""
    # heavy: grpc (Dagster's dependency), only to ask a code server how it is
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.RpcError as exc:
            return False, f"no gRPC answer ({exc.code().name})"
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    return serving, "serving" if serving else health_pb2.HealthCheckResponse.Name(reply.status)


def _http_ok(port: int, path: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=3) as response:
            return response.status == 200, f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"no HTTP answer ({exc})"


def _tcp_open(port: int) -> tuple[bool, str]:
    with socket.socket() as s:
        s.settimeout(2)
        ok = s.connect_ex((HOST, port)) == 0
    return ok, "listening" if ok else "not listening"


def _health(service: Service) -> tuple[bool, str]:
    if service.port is None:
        return True, ""
    if service.domain is not None:
        return _grpc_serving(service.port)
    if service.name == "webserver":
        return _http_ok(service.port, "/server_info")
    return _tcp_open(service.port)


def _daemon_health(topology: Topology) -> tuple[bool, str]:
    """The daemon's own heartbeats, as the webserver reports them."""
    port = topology.webserver_port
    if port is None:
        return False, "no webserver to ask"
    try:
        statuses = graphql(port, DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
    except (MeshError, OSError, KeyError, TypeError) as exc:
        return False, f"unknown ({exc})"
    sick = [s["daemonType"] for s in statuses if s["required"] and not s["healthy"]]
    return not sick, f"not healthy: {', '.join(sick)}" if sick else "every daemon beating"


def status(mesh: Mesh) -> list[ServiceStatus]:
    """Each recorded service: alive (its process), healthy (it answers). The services are
    asked side by side: one after another, N code servers that do not answer cost N times
    the health check's timeout."""
    topology = load_topology(mesh)

    def ask(service: Service) -> ServiceStatus:
        alive = _alive(service)
        healthy, detail = (False, "not running") if not alive else _health(service)
        if alive and service.name == "daemon":
            healthy, detail = _daemon_health(topology)
        return ServiceStatus(service.name, service.pid, service.port, alive, healthy, detail)

    with ThreadPoolExecutor(max_workers=16) as pool:  # each check waits on a socket
        return list(pool.map(ask, topology.services))


def _wait(service: Service, check: Callable[[], tuple[bool, str]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    detail = ""
    while time.monotonic() < deadline:
        if not _alive(service):
            break
        ok, detail = check()
        if ok:
            return
        time.sleep(0.5)
    _fail(service, seconds, detail)


def _fail(service: Service, seconds: float, detail: str) -> None:
    """Raise: ``service`` exited, or did not answer within ``seconds``; the end of its log."""
    tail = Path(service.log).read_text(errors="replace")[-1500:] if service.log else ""
    state = "exited" if not _alive(service) else f"not ready after {seconds:.0f} s ({detail})"
    raise MeshError(
        f"{service.name} {state}; the end of its log ({service.log}):\n{tail}",
        fix="correct what the log says, then `mesh up` again (`mesh down` stops what started)",
        path=service.log or None,
    )


# -- the topology -----------------------------------------------------------------------------


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _code_server(mesh: Mesh, domain: str, port: int) -> Service:
    argv = [
        _bin("dagster"), "code-server", "start", "-m", module_for(domain), "-d", str(mesh.root),
        "-h", HOST, "-p", str(port), "--location-name", domain,
    ]  # fmt: skip
    return Service(f"{CODE_SERVER}{domain}", argv, port)


def grpc_workspace(services: Sequence[Service]) -> str:
    """The daemon's and the webserver's workspace: the code servers by address."""
    entries = [
        {"grpc_server": {"host": HOST, "port": s.port, "location_name": s.domain}}
        for s in services
        if s.domain is not None
    ]
    header = "# Written by `mesh up` (mesh_platform/deploy/topology.py): the code servers.\n"
    return header + yaml.safe_dump({"load_from": entries}, sort_keys=False)


def _env(mesh: Mesh, home: str) -> dict[str, str]:
    return {**os.environ, **mesh.dbt_env(), "DAGSTER_HOME": home, "MESH_ROOT": str(mesh.root)}


def up(
    mesh: Mesh,
    home: str,
    *,
    webserver_port: int = 3000,
    serve_port: int | None = None,
    query_service: bool = True,
    wait_seconds: float = 180.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Topology:
    """Start the topology on the Dagster instance at ``home`` (instance.prepare_dagster_home);
    raises MeshError naming the service that did not start (what had started is stopped
    again)."""
    current = load_topology(mesh)
    alive = {s.name: _alive(s) for s in current.services}  # each process looked at once
    if running := [s.name for s in current.services if alive[s.name]]:
        stopped = [s.domain or s.name for s in current.services if not alive[s.name]]
        again = "; ".join(f"`mesh up --restart {name}`" for name in stopped)
        raise MeshError(
            f"the topology of this mesh is already up ({', '.join(running)})"
            + (f"; not running: {', '.join(stopped)}" if stopped else ""),
            fix=(f"start what stopped: {again}; " if stopped else "")
            + "`mesh status` shows it; `mesh down` stops it",
        )
    domains = [loc.name for loc in check_workspace(mesh)]
    env = _env(mesh, home)
    folder = make_private_dir(topology_dir(mesh))
    servers = [_code_server(mesh, d, free_port()) for d in domains]
    workspace = folder / "workspace.yaml"
    write_atomically(workspace, grpc_workspace(servers), mode=0o600)
    topology = Topology(list(servers))
    topology.services.append(Service("daemon", [_bin("dagster-daemon"), "run", "-w",
                                                str(workspace)]))  # fmt: skip
    topology.services.append(Service("webserver", [
        _bin("dagster-webserver"), "-w", str(workspace), "-h", HOST, "-p", str(webserver_port),
    ], webserver_port))  # fmt: skip
    if query_service:
        port = serve_port or free_port()
        topology.services.append(Service("query", [
            _bin("mesh"), "--root", str(mesh.root), "serve", "--host", HOST, "--port", str(port),
        ], port))  # fmt: skip
    try:
        _start_servers(mesh, topology, servers, env, wait_seconds, progress)
        for service in topology.services[len(servers) :]:
            _spawn(mesh, service, env)
            _save(mesh, topology)
            _wait(service, lambda s=service: _health(s), wait_seconds)
            progress(f"{service.name} up" + (f" on {HOST}:{service.port}" if service.port else ""))
    except BaseException:
        _stop(reversed(topology.services), grace=5)
        _record(mesh).unlink(missing_ok=True)
        raise
    return topology


def _start_servers(
    mesh: Mesh,
    topology: Topology,
    servers: list[Service],
    env: dict[str, str],
    wait_seconds: float,
    progress: Callable[[str], None],
) -> None:
    """Start the code servers, at most ``LOADING_PER_CORE`` per core loading at a time, each
    given ``wait_seconds`` from its own start. All at once, N servers shared the cores and
    none was ready before nearly all were: on 2 cores, 50 domains' servers outlasted the
    wait."""
    window = max(2, LOADING_PER_CORE * (os.cpu_count() or 1))
    waiting, loading = list(servers), {}  # loading: name -> monotonic start
    while waiting or loading:
        while waiting and len(loading) < window:
            service = waiting.pop(0)
            _spawn(mesh, service, env)
            loading[service.name] = time.monotonic()
            _save(mesh, topology)
        for service in [s for s in servers if s.name in loading]:
            ok, detail = _health(service) if _alive(service) else (False, "")
            if ok:
                del loading[service.name]
                progress(f"{service.name} serving on {HOST}:{service.port}")
            elif not _alive(service) or time.monotonic() - loading[service.name] > wait_seconds:
                _fail(service, wait_seconds, detail)
        time.sleep(0.2)


def down(mesh: Mesh, *, grace: float = GRACE_SECONDS) -> list[str]:
    """Stop every recorded service (reverse order); the names of those that needed SIGKILL."""
    topology = load_topology(mesh)
    killed = _stop(reversed(topology.services), grace)
    _record(mesh).unlink(missing_ok=True)
    return killed


def restart(
    mesh: Mesh, name: str, home: str, *, wait_seconds: float = 180.0, grace: float = GRACE_SECONDS
) -> tuple[Service, str | None]:
    """Restart one service: a domain's code server (by the domain's name: its new code, on its
    port; then the webserver reloads that location), or ``daemon``, ``webserver``, ``query``.
    Nothing else restarts. Returns the service and, for a domain, the load error its code
    location shows (None when it loaded)."""
    topology = load_topology(mesh)
    service = topology.get(f"{CODE_SERVER}{name}") or topology.get(name)
    if service is None:
        names = [s.domain or s.name for s in topology.services]
        raise MeshError(
            f"{name!r} is neither a domain with a code server nor a service of this topology "
            f"(it runs: {', '.join(names) or 'nothing'})",
            fix="`mesh status` lists the services; a new domain needs `mesh down` and `mesh up`",
        )
    _stop([service], grace)
    _spawn(mesh, service, _env(mesh, home))
    _save(mesh, topology)
    _wait(service, lambda: _health(service), wait_seconds)
    web = topology.get("webserver")
    if service.domain is None or web is None or web.port is None or not _alive(web):
        return service, None
    entry = graphql(web.port, RELOAD, {"name": service.domain})["reloadRepositoryLocation"]
    loaded = entry.get("locationOrLoadError") or entry
    return service, error_text(loaded) if loaded.get("__typename") == "PythonError" else None
