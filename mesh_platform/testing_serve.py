"""The test harness of the query service: ``mesh serve`` started as a user starts it, on a free
loopback port, ready when its ``/readyz`` says so, stopped (and its log kept) after.

    with served(mesh.root) as service:
        secret = issue_token(mesh, "user:carol")
        with psycopg.connect(service.dsn("user:carol", secret)) as conn: ...

Used by ``tests/serve/`` and ``benchmarks/bench_serve.py``.

Layer: apps (it drives the `mesh` command).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mesh_platform.config import Mesh
from mesh_platform.serve.tokens import token_store
from mesh_platform.testing import MESH, user_env

READY_SECONDS = 90.0


@dataclass
class Service:
    root: Path
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def health(self) -> str:
        return f"http://127.0.0.1:{self.port + 1000}"

    def dsn(self, user: str, password: str, **params: str) -> str:
        """A libpq connection string (psql, psycopg) for ``user`` with ``password``."""
        extra = " ".join(f"{k}={v}" for k, v in params.items())
        return (
            f"host=127.0.0.1 port={self.port} user={user} password={password} dbname=mesh {extra}"
        )

    def url(self, user: str, password: str, scheme: str = "postgresql") -> str:
        """A URL (SQLAlchemy with scheme postgresql+psycopg, ADBC with postgresql)."""
        login = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"{scheme}://{login}@127.0.0.1:{self.port}/mesh"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.health}/readyz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the service (SIGTERM drains running queries); its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def free_port_pair() -> int:
    """A loopback port free, with port + 1000 (the health endpoints) free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 1000 > 65535:
            continue
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port + 1000))
            return port
    raise RuntimeError("no free pair of loopback ports")


def start_service(root: Path, *args: str, port: int | None = None, **env: str) -> Service:
    """Start `mesh serve` on the mesh at ``root`` and wait until it is ready."""
    port = port or free_port_pair()
    log = root / "state" / f"serve-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [MESH, "--root", str(root), "serve", "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**user_env(), **env},
            cwd=root,
        )
    service = Service(root, port, process, log)
    deadline = time.monotonic() + READY_SECONDS
    while not service.ready():
        if process.poll() is not None or time.monotonic() > deadline:
            service.stop(signal.SIGKILL)
            raise RuntimeError(f"mesh serve did not start:\n{service.output()[-4000:]}")
        time.sleep(0.2)
    return service


@contextlib.contextmanager
def served(root: Path, *args: str, **env: str) -> Iterator[Service]:
    """`mesh serve` on ``root`` for a block; stopped after, even on failure."""
    service = start_service(root, *args, **env)
    try:
        yield service
    finally:
        service.stop()


def issue_token(mesh: Mesh, principal: str, *, expires_days: float | None = 1) -> str:
    """A token for ``principal`` (the secret, as `mesh token create` prints it)."""
    expires = dt.timedelta(days=expires_days) if expires_days is not None else None
    secret, _ = token_store(mesh).create(principal, expires=expires)
    return secret
