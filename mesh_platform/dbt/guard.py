"""The dbt guard: the one way the platform starts a dbt process (the body of the executable that
:func:`mesh_platform.dbt.lockdown.guarded_dbt_executable` writes, with its ``CONFIG`` above).

dagster-dbt runs it as its ``dbt_executable``; it gives dbt three properties:

- **dbt dies with the process that started it**: it asks the kernel to SIGKILL it when its
  parent dies (prctl PR_SET_PDEATHSIG), checks that the process that started it is still there
  (it may have died before the request), and only then starts dbt;
- **dbt sees an allowlisted environment**: the variables dbt and the domains' profiles use
  (``MESH_STATE_DIR``, ``DBT_*``, locale, ``PATH``, ``HOME``...), never the run worker's
  credentials (``AWS_*``, ``MESH_POSTGRES_URL``, ``MESH_CATALOG__URI``, a PostgreSQL password):
  a domain's Jinja ``env_var()`` cannot read what dbt was never given; and dbt's anonymous
  usage statistics are off (nothing leaves the machine);
- **dbt starts warm**: when the mesh runs a warm dbt worker (:mod:`mesh_platform.dbt.warm`, a
  process that has imported dbt ahead), the guard hands it the invocation (arguments, the
  allowlisted environment, working directory, umask and its own stdin/stdout/stderr) and a
  fresh fork of it runs dbt: the same output, exit code and signals, ~3 s less start-up. The
  guard stays as that dbt's stand-in: it forwards SIGINT/SIGTERM/SIGHUP to it, and when the
  guard dies (its parent died), the worker kills that dbt. No worker, or one that refuses:
  the guard becomes dbt itself (execve), and starts a worker for the next invocation.

Standard library only, run with ``python -IS``: it imports nothing of the mesh or the venv.
Linux only for the parent-death signal; elsewhere dbt runs unguarded (the guard says so).
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import sys

EXIT_NOT_RUN = 70  # EX_SOFTWARE: dbt was not run (its parent is gone, the worker went away)


def allowed_env(environ, names, prefixes):
    """The variables of ``environ`` dbt may see: exact ``names`` and ``prefixes``."""
    return {k: v for k, v in environ.items() if k in names or k.startswith(tuple(prefixes))}


def _die_with_parent(parent_env):
    """PR_SET_PDEATHSIG, then refuse to run when the parent is already gone."""
    parent = os.getppid()
    expected = int(os.environ.get(parent_env) or parent)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        sys.stderr.write(f"mesh: dbt runs without its parent-death guard ({exc})\n")
        return
    try:
        os.kill(expected, 0)
        gone = False
    except ProcessLookupError:
        gone = True
    except PermissionError:
        gone = False
    if os.getppid() != parent or (expected != parent and gone):
        sys.stderr.write(f"mesh: dbt's parent ({expected}) is gone; dbt not run\n")
        sys.exit(EXIT_NOT_RUN)


def _run_warm(path, argv, env):
    """dbt run by the warm worker at ``path``; its exit status, or None: not run (no worker,
    or it refused), the caller runs dbt itself."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        umask = os.umask(0o077)
        os.umask(umask)
        request = json.dumps({"argv": argv, "env": env, "cwd": os.getcwd(), "umask": umask})
        payload = request.encode()
        socket.send_fds(sock, [struct.pack("!I", len(payload))], [0, 1, 2])
        sock.sendall(payload)
        replies = sock.makefile("rb")
        first = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        sock.close()
        return None
    pid = first.get("pid")
    if not isinstance(pid, int):
        sock.close()
        return None

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        last = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        last = {}
    if not isinstance(last.get("exit"), int):
        sys.stderr.write("mesh: the warm dbt worker went away; dbt did not finish\n")
        return EXIT_NOT_RUN
    return last["exit"]


def _start_worker(warm):
    """Start the warm worker in the background (its own session, detached, an environment of
    its own: it holds no credential), for the next invocation."""
    try:
        middle = os.fork()
    except OSError:
        return
    if middle:
        os.waitpid(middle, 0)  # it exits at once: no zombie left beside dbt
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 1 << 16)
        os.chdir("/")  # it outlives this folder's run
        argv = [warm["python"], "-I", "-m", warm["module"], warm["socket"], str(warm["idle"])]
        os.execve(warm["python"], argv, warm["env"])
    finally:
        os._exit(0)


def _exit_like(status):
    """Exit as dbt did: its code, or killed by its signal."""
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


def main(config):
    _die_with_parent(config["parent_env"])
    env = {**allowed_env(os.environ, config["env_names"], config["env_prefixes"]),
           **config.get("env_forced", {})}  # fmt: skip
    argv = sys.argv[1:]
    warm = config.get("warm")
    if warm:
        status = _run_warm(warm["socket"], argv, env)
        if status is not None:
            _exit_like(status)
        _start_worker(warm)
    os.execve(config["dbt"], [config["dbt"], *argv], env)


if __name__ == "__main__":
    main(CONFIG)  # noqa: F821 - the executable's writer puts CONFIG above this text
