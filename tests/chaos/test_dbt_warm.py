"""dbt started warm (mesh_platform/dbt/warm.py) behaves as dbt started cold, and dies as it.

The guard (mesh_platform/dbt/guard.py) hands an invocation to a worker that has imported dbt;
a fork of the worker runs it with the guard's streams, folder, umask and environment. These
tests run real dbt on a tiny dbt-duckdb project, through guards written the way a run writes
them, each against its own worker (a socket of its own, killed at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from mesh_platform.dbt.lockdown import guarded_dbt_executable, warm_config
from mesh_platform.testing import process_running

DBT = str(Path(sys.executable).with_name("dbt"))
PROJECT_YML = "name: tiny\nversion: '1.0.0'\nprofile: tiny\nconfig-version: 2\n"
PROFILES_YML = """tiny:
  target: t
  outputs:
    t:
      type: duckdb
      path: "{path}"
      threads: 1
"""
WHO = """def model(dbt, session):
    import os
    return session.sql(f"select {os.getpid()} as pid, {os.getppid()} as parent, "
                       f"'{os.environ.get('AWS_SECRET_ACCESS_KEY', 'absent')}' as secret")
"""
SLOW = """def model(dbt, session):
    import time
    time.sleep(300)
    return session.sql("select 1 as x")
"""
SECRET = (
    'select \'{{ env_var("AWS_SECRET_ACCESS_KEY", "absent") }}\' as aws, '
    '\'{{ env_var("MESH_POSTGRES_URL", "absent") }}\' as postgres, '
    '\'{{ env_var("DBT_ENV_CUSTOM_ENV_TEAM", "absent") }}\' as custom\n'
)


def tiny_project(folder: Path) -> Path:
    """A dbt-duckdb project: ``who`` (a Python model: its process and its parent),
    ``secret`` (what the Jinja reads from the environment) and ``slow`` (sleeps 5 minutes)."""
    (folder / "models").mkdir(parents=True)
    (folder / "dbt_project.yml").write_text(PROJECT_YML)
    (folder / "profiles.yml").write_text(PROFILES_YML.format(path=folder / "tiny.duckdb"))
    (folder / "models" / "who.py").write_text(WHO)
    (folder / "models" / "slow.py").write_text(SLOW)
    (folder / "models" / "secret.sql").write_text(SECRET)
    return folder


def dbt_args(project: Path, *args: str) -> list[str]:
    return [*args, "--project-dir", str(project), "--profiles-dir", str(project)]


def table(project: Path, name: str) -> list[tuple]:
    with duckdb.connect(str(project / "tiny.duckdb"), read_only=True) as conn:
        return conn.execute(f"SELECT * FROM main.{name}").fetchall()


def worker_pids(socket_path: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if socket_path.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(what: str, condition, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"no {what} in {seconds:.0f}s"
        time.sleep(0.1)
    return found


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[dict]:
    """A warm configuration of its own (socket in a short private folder), its worker killed
    after the test."""
    config = warm_config()
    assert config is not None, "no private folder for the worker's socket on this machine"
    folder = Path(tempfile.mkdtemp(prefix="mesh-warm-"))
    config = {**config, "socket": str(folder / "dbt.sock"), "idle": 120}
    yield config
    for pid in worker_pids(config["socket"]):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def guards(tmp_path: Path, warm: dict) -> tuple[str, str]:
    """(cold guard, warm guard) of the venv's dbt, written as a run writes them."""
    return (
        guarded_dbt_executable(DBT, tmp_path / "bin"),
        guarded_dbt_executable(DBT, tmp_path / "bin", warm=warm),
    )


def start_worker(guard: str, project: Path, warm: dict) -> int:
    """The first warm invocation finds no worker, runs dbt itself and starts one."""
    first = subprocess.run([guard, *dbt_args(project, "parse")], capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    wait_for("warm worker", lambda: os.path.exists(warm["socket"]))
    (pid,) = worker_pids(warm["socket"])
    return pid


def test_warm_dbt_runs_in_a_fork_of_the_worker_and_writes_what_cold_dbt_writes(
    tmp_path, guards, warm
):
    cold_guard, warm_guard = guards
    project = tiny_project(tmp_path / "tiny")
    env = {**os.environ, "DBT_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    cold = subprocess.run(
        [cold_guard, *dbt_args(project, "run", "--select", "who")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert cold.returncode == 0, cold.stdout[-2000:]
    ((_, cold_parent, _),) = table(project, "who")
    assert cold_parent == os.getpid()  # the guard became dbt: its parent is this test

    worker = start_worker(warm_guard, project, warm)
    warm_run = subprocess.run(
        [warm_guard, *dbt_args(project, "run", "--select", "who")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert warm_run.returncode == 0, warm_run.stdout[-2000:] + warm_run.stderr[-2000:]
    ((pid, parent, _),) = table(project, "who")
    assert parent == worker and pid not in (worker, os.getpid())  # a fork of the worker ran it

    def events(out: str) -> list[str]:  # dagster-dbt reads these JSON lines from stdout
        return [json.loads(line)["info"]["name"] for line in out.splitlines() if line]

    again = subprocess.run(  # cold again: both parse partially now, as the warm one did
        [cold_guard, *dbt_args(project, "run", "--select", "who")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert events(warm_run.stdout) == events(again.stdout)
    assert "LogModelResult" in events(warm_run.stdout)

    # a failing invocation fails alike: dbt's own exit code and message
    failing = dbt_args(tmp_path / "missing", "run")
    cold_fail = subprocess.run([cold_guard, *failing], capture_output=True, text=True)
    warm_fail = subprocess.run([warm_guard, *failing], capture_output=True, text=True)
    assert warm_fail.returncode == 2 and "does not exist" in warm_fail.stderr
    assert (warm_fail.returncode, warm_fail.stdout, warm_fail.stderr) == (
        cold_fail.returncode, cold_fail.stdout, cold_fail.stderr
    )  # fmt: skip
    assert worker_pids(warm["socket"]) == [worker]  # one worker served all of it


def test_killing_the_guard_kills_the_warm_dbt_and_a_signal_reaches_it(tmp_path, guards, warm):
    _, warm_guard = guards
    project = tiny_project(tmp_path / "tiny")
    start_worker(warm_guard, project, warm)

    def slow_dbt() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if title.startswith("dbt run --select slow") and cwd == str(tmp_path):
                pids.append(int(entry.name))
        return pids

    for sig in (signal.SIGKILL, signal.SIGTERM):
        guard = subprocess.Popen(
            [warm_guard, *dbt_args(project, "run", "--select", "slow")], cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        (dbt,) = wait_for("warm dbt of the slow model", slow_dbt)
        os.kill(guard.pid, sig)
        code = guard.wait(timeout=60)
        wait_for(f"the end of dbt after {sig.name}", lambda pid=dbt: not process_running(pid), 30)
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        else:  # forwarded: dbt stopped and the guard says how
            assert code != 0
    assert len(worker_pids(warm["socket"])) == 1  # the worker goes on


def test_no_worker_no_socket_folder_dbt_still_runs(tmp_path, warm):
    """A socket path that cannot be served (its folder is gone) costs nothing: dbt runs cold."""
    project = tiny_project(tmp_path / "tiny")
    broken = {**warm, "socket": str(tmp_path / "gone" / "dbt.sock")}
    guard = guarded_dbt_executable(DBT, tmp_path / "bin", warm=broken)
    done = subprocess.run([guard, *dbt_args(project, "run", "--select", "who")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert table(project, "who")[0][1] == os.getpid()
