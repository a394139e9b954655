"""A warm dbt worker: dbt imported once, a fresh fork of that process for each invocation.

Importing dbt costs ~3.5 s of a ``dbt run`` that takes ~6.5 s on an incremental day of the
sample (2-core machine); every domain run, ``mesh build`` and test paid it again. The worker is
started by the dbt guard (:mod:`mesh_platform.dbt.guard`) on its first miss, in its own
session with an environment of its own (no credential), and serves the guards of one user and
one installation of dbt on a Unix socket in that user's private folder
(:func:`mesh_platform.dbt.lockdown.warm_config` names it after the installation: an upgraded
dbt gets a new worker, the old one idles out).

For each invocation it forks: the child takes the guard's stdin/stdout/stderr (passed over the
socket), working directory, umask and allowlisted environment, runs dbt's own command line
(``dbt.cli.main.cli``) and exits with dbt's code, so dagster-dbt reads exactly what an
exec'd dbt writes. Nothing flows back from a child into the worker: every invocation starts
from the same pristine, imported-only state. The worker imports only dbt's pure-Python
modules (DuckDB and pyarrow start threads of their own when imported, and a process with
threads cannot fork safely; the children import them), refuses to serve if it finds a second
thread, serves only its own user (SO_PEERCRED), kills a child whose guard went away (the run
that started it died) and dies after ``idle`` seconds without an invocation; its children
die with it (PR_SET_PDEATHSIG).

    python -I -m mesh_platform.dbt.warm SOCKET IDLE_SECONDS
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

# dbt's modules a run, a compile or a test imports, pure Python (no thread at import). The
# adapter (dbt-duckdb: duckdb, pyarrow) is imported by each child.
PRELOAD = (
    "dbt.cli.main",
    "dbt.parser.manifest",
    "dbt.parser.sql",
    "dbt.compilation",
    "dbt.task.run",
    "dbt.task.compile",
    "dbt.task.test",
    "dbt.task.build",
    "dbt.adapters.sql",
    "sqlparse",
    "agate",
    "babel.numbers",
)
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 1 << 20
_PEERCRED = struct.Struct("3i")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)


@dataclass
class _Invocation:
    conn: socket.socket
    pid: int


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The guard's request (argv, env, cwd, umask) and its stdin/stdout/stderr."""
    conn.settimeout(10)
    head, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    try:
        if len(head) != _HEADER.size or len(fds) != 3:
            raise ValueError("a request is a length and three file descriptors")
        (size,) = _HEADER.unpack(head)
        if size > _MAX_REQUEST:
            raise ValueError(f"request of {size} bytes")
        payload = b""
        while len(payload) < size:
            chunk = conn.recv(size - len(payload))
            if not chunk:
                raise ValueError("the request ended early")
            payload += chunk
        request = json.loads(payload)
        if not (
            isinstance(request.get("argv"), list)
            and all(isinstance(a, str) for a in request["argv"])
            and isinstance(request.get("env"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in request["env"].items())
            and isinstance(request.get("cwd"), str)
            and isinstance(request.get("umask"), int)
        ):
            raise ValueError("malformed request")
    except Exception:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


def _child(request: dict, fds: Sequence[int]) -> None:
    """In the fork: become dbt with the guard's streams, folder, umask and environment; never
    returns."""
    code = 70
    try:
        _die_with_parent()
        os.setpgid(0, 0)  # the worker kills the group: whatever dbt starts goes with it
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, 1 << 16)  # the listener, other guards' sockets, the received copies
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.umask(request["umask"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request["env"].get("PYTHONUNBUFFERED"):
            sys.stdout.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
            sys.stderr.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
        argv = request["argv"]
        sys.argv = ["dbt", *argv]
        _set_title(f"dbt {' '.join(argv)}")
        # heavy: dbt, already imported by the worker (PRELOAD): this only binds the name
        from dbt.cli.main import cli

        try:
            cli.main(args=argv, prog_name="dbt")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
    except BaseException:  # whatever happens, the child must not return
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if "multiprocessing.util" in sys.modules:  # dbt's locks: as a forked Process ends
            with contextlib.suppress(Exception):
                sys.modules["multiprocessing.util"]._exit_function()  # type: ignore[attr-defined]
        os._exit(code)


def _set_title(title: str) -> None:
    """What `ps` shows for the child: the dbt command it runs."""
    if (module := sys.modules.get("setproctitle")) is not None:  # imported by serve()
        with contextlib.suppress(Exception):
            module.setproctitle(title)


class _Server:
    def __init__(self, listener: socket.socket, idle: float) -> None:
        self.listener = listener
        self.idle = idle
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.running: dict[int, _Invocation] = {}  # child pid -> invocation
        self.last = time.monotonic()

    def loop(self) -> None:
        while self.running or time.monotonic() - self.last < self.idle:
            for key, _events in self.selector.select(timeout=0.5):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._guard_spoke(key.data)
            self._reap()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.last = time.monotonic()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _pid, uid, _gid = _PEERCRED.unpack(creds)
        if uid != os.getuid():
            conn.close()
            return
        try:
            request, fds = _read_request(conn)
        except Exception as exc:  # a bad request is refused, the worker goes on
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"refused": str(exc)[:200]}).encode() + b"\n")
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            _child(request, fds)
        for fd in fds:
            os.close(fd)  # the pipes must end when the child's and the guard's copies close
        invocation = _Invocation(conn, pid)
        self.running[pid] = invocation
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            self._kill(invocation)
            return
        self.selector.register(conn, selectors.EVENT_READ, invocation)

    def _guard_spoke(self, invocation: _Invocation) -> None:
        """The guard says nothing after its request: readable means it is gone (EOF)."""
        try:
            data = invocation.conn.recv(64)
        except OSError:
            data = b""
        if not data:
            self._kill(invocation)

    def _kill(self, invocation: _Invocation) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(invocation.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(invocation.pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            invocation = self.running.pop(pid, None)
            if invocation is None:
                continue
            self.last = time.monotonic()
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(invocation.conn)
            with contextlib.suppress(OSError):
                code = os.waitstatus_to_exitcode(status)
                invocation.conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            invocation.conn.close()


def serve(path: str, idle: float) -> int:
    """Serve guards on the socket ``path`` until ``idle`` seconds pass without one; 0 when
    another worker already serves it."""
    lock = open(f"{path}.lock", "a")  # noqa: SIM115 - held for the worker's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0
    for name in PRELOAD:
        importlib.import_module(name)
    with contextlib.suppress(ImportError):  # set up once here: a child's environment changes
        title = importlib.import_module("setproctitle")
        title.setproctitle(title.getproctitle())  # before it moves environ, which it needs
    if _threads() != 1:  # forking a process with threads is not safe: serve nothing
        sys.stderr.write(f"mesh: {_threads()} threads after importing dbt; not serving\n")
        return 1
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    inode = os.stat(path).st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _Server(listener, idle).loop()
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], float(sys.argv[2])))
