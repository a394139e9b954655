"""Fault 2 (a dead run blocks its domain for ever) and the run faults of 8: killing `mesh` left
its `dbt build` running, waiting builds never said they waited, reaped runs were tagged for a
retry that never came.

A `mesh build` run owns its domain's pool by a lease (mesh_platform.leases): the expiry rule is
tested as a pure function (milliseconds); the reaping and the waits on a tmp Dagster instance
with runs faked the way another host leaves them (a second or so); Dagster's own wait for a slot
on a tiny in-process job (seconds). The rest runs `mesh build --domain sales` on one copy of the
sample mesh: a waiting build stops on SIGTERM and SIGINT having started nothing; SIGTERM mid-dbt
stops dbt and cancels the run; a build SIGKILLed mid-dbt leaves no dbt behind, and once it looks
like another host's run, the next build waits for it (saying so), reaps it when its lease
expires, rebuilds the domain and publishes exactly what a fresh full build published.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from mesh_platform.build import Stop, build_domain
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.dbt.lockdown import dbt_guard_script, guarded_dbt_executable
from mesh_platform.errors import MeshConfigError
from mesh_platform.instance import prepare_dagster_home
from mesh_platform.leases import (
    DOMAIN_TAG,
    HEARTBEAT_TAG,
    HOST_TAG,
    LEASE_ENV,
    PID_TAG,
    PROCESS_TAG,
    REAPED_BY_TAG,
    RETRIED_BY_TAG,
    RETRY_OF_TAG,
    WILL_RETRY_TAG,
    Heartbeat,
    Lease,
    Owner,
    heartbeat_interval,
    judge,
    lease_seconds,
    lease_tags,
    process_alive,
    read_lease,
)
from mesh_platform.pools import reap_expired_runs, wait_for_domain
from mesh_platform.testing import (
    MESH,
    SF,
    copy_mesh,
    process_running,
    published_scan,
    user_env,
)

pytestmark = pytest.mark.e2e  # module-scoped builds of the sample mesh

PRODUCTS = ("sales.order_lines", "sales.orders", "sales.customers")
ELSEWHERE = Owner("elsewhere", 4242, "another-boot/pid:[1]", "77")
HERE = Owner("vm", 100, "this-boot/pid:[1]", "5")

# -- the expiry rule (pure) ---------------------------------------------------------------------


def _lease(owner: Owner = ELSEWHERE, heartbeat: float | None = 1000.0, seconds: float = 60):
    return Lease(owner, heartbeat, seconds)


def test_a_lease_held_elsewhere_expires_only_after_its_seconds_without_a_heartbeat():
    def never(_):  # another kernel's pids are never looked up
        raise AssertionError("looked up a pid of another kernel")

    alive = judge(_lease(), now=1059.0, here=HERE, alive=never)
    assert not alive.expired and "59s ago" in alive.why
    dead = judge(_lease(), now=1061.0, here=HERE, alive=never)
    assert dead.expired
    assert "process 4242 on elsewhere has not renewed its lease for 61s (lease 60s)" in dead.why


def test_on_the_owners_kernel_the_process_decides_whatever_the_heartbeat():
    mine = Owner("vm", 4242, HERE.kernel, "9")
    stale = _lease(mine, heartbeat=0.0)
    assert not judge(stale, now=10_000.0, here=HERE, alive=lambda _: True).expired
    fresh = _lease(mine, heartbeat=10_000.0)
    verdict = judge(fresh, now=10_000.0, here=HERE, alive=lambda _: False)
    assert verdict.expired and "process 4242 on vm is gone" in verdict.why


def test_a_reused_pid_is_a_dead_owner():
    me = Owner.current()
    assert process_alive(me)
    assert not process_alive(Owner(me.host, me.pid, me.kernel, me.start + "0"))  # another process
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not process_alive(Owner(me.host, gone.pid, me.kernel, ""))


def test_a_run_of_an_older_platform_is_judged_by_its_pid_on_its_host_else_by_its_start():
    old = Lease(Owner("vm", 4242), None, 60)  # pid and host tags only
    assert judge(old, now=5000.0, here=HERE, alive=lambda _: False).expired
    assert not judge(old, now=5000.0, here=HERE, alive=lambda _: True).expired
    remote = Lease(Owner("elsewhere", 4242), None, 60)
    assert not judge(remote, now=1030.0, here=HERE, started_at=1000.0).expired
    assert judge(remote, now=1061.0, here=HERE, started_at=1000.0).expired


def test_the_lease_tags_read_back_and_runs_without_them_are_dagsters():
    tags = lease_tags(ELSEWHERE, now=123.5, seconds=30)
    assert read_lease(tags) == Lease(ELSEWHERE, 123.5, 30.0)
    assert tags["dagster/max_retries"] == "0"  # the daemon cannot re-execute it: it says so
    assert read_lease({DOMAIN_TAG: "sales"}) is None
    assert read_lease({PID_TAG: "12", HOST_TAG: "vm", PROCESS_TAG: "k|13|5"}).owner.kernel == ""


def test_the_lease_length_comes_from_the_environment_and_is_checked(monkeypatch):
    assert lease_seconds() == 60
    monkeypatch.setenv(LEASE_ENV, "15")
    assert lease_seconds() == 15
    for bad in ("0.5", "soon", "nan"):
        monkeypatch.setenv(LEASE_ENV, bad)
        with pytest.raises(MeshConfigError, match=LEASE_ENV):
            lease_seconds()
    assert heartbeat_interval(60) == 5 and heartbeat_interval(6) == 1


# -- reaping and waiting on a real instance (runs faked as another host leaves them) ------------


@pytest.fixture
def instance(mesh: Mesh) -> dg.DagsterInstance:
    prepare_dagster_home(mesh)
    with dg.DagsterInstance.from_config(str(mesh.dagster_home)) as instance:
        yield instance


def _fake_run(
    instance: dg.DagsterInstance,
    domain: str,
    owner: Owner | None,
    *,
    heartbeat: float | None = None,
    lease: float = 10,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED,
) -> str:
    run_id = str(uuid.uuid4())
    tags = {DOMAIN_TAG: domain}
    if owner is not None:
        tags.update(lease_tags(owner, now=heartbeat or time.time(), seconds=lease))
    instance.add_run(
        dg.DagsterRun(job_name=f"{domain}_build", run_id=run_id, status=status, tags=tags)
    )
    return run_id


def _claim(instance: dg.DagsterInstance, pool: str, run_id: str, step: str = "step") -> bool:
    instance.event_log_storage.initialize_concurrency_limit_to_default(pool)
    return instance.event_log_storage.claim_concurrency_slot(pool, run_id, step).is_claimed


def test_a_dead_holder_and_a_dead_waiter_are_reaped_and_the_pool_freed(instance):
    pool = "mesh_domain_sales"
    holder = _fake_run(instance, "sales", ELSEWHERE, heartbeat=time.time() - 30)
    other = Owner(ELSEWHERE.host, 4343, ELSEWHERE.kernel, "1")
    waiter = _fake_run(instance, "sales", other, heartbeat=time.time() - 11)  # lease 10 s
    assert _claim(instance, pool, holder) and not _claim(instance, pool, waiter)
    messages = []
    reaped = wait_for_domain(
        instance, "sales", [pool], run_id="next", report=messages.append, wait=lambda _: False
    )
    assert {r.run_id for r in reaped} == {holder, waiter}
    info = instance.event_log_storage.get_concurrency_info(pool)
    assert info.claimed_slots == [] and info.pending_steps == []
    assert _claim(instance, pool, "next")  # the next run gets the slot at once
    run = instance.get_run_by_id(holder)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags[WILL_RETRY_TAG] == "false" and run.tags[RETRIED_BY_TAG] == "next"
    assert REAPED_BY_TAG in run.tags
    (message,) = [m for m in messages if holder in m]
    assert "host elsewhere, pid 4242, last heartbeat 20" in message  # its time, in UTC
    assert "has not renewed its lease" in message and "mesh build run next rebuilds" in message
    failure = [
        e.dagster_event.message
        for e in instance.all_logs(holder)
        if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"
    ]
    assert failure == [message]


def test_a_live_holder_is_waited_for_saying_what_for_until_the_build_stops(instance):
    pool = "mesh_domain_sales"
    holder = _fake_run(instance, "sales", ELSEWHERE, heartbeat=time.time())
    assert _claim(instance, pool, holder)
    messages, waits = [], []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) == 3  # stopped (SIGINT/SIGTERM) at the third wait

    assert (
        wait_for_domain(
            instance, "sales", [pool], run_id="next", report=messages.append, wait=wait,
            report_every=0,
        )
        is None
    )  # fmt: skip
    assert len(messages) == 3
    assert (
        f"waiting for domain sales, held by run {holder} (host elsewhere, pid 4242" in messages[0]
    )
    assert "Ctrl-C stops" in messages[0]
    assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.STARTED
    assert [
        s.run_id for s in instance.event_log_storage.get_concurrency_info(pool).claimed_slots
    ] == [holder]


def test_runs_launched_by_dagster_are_left_to_its_run_monitoring(instance):
    daemon_run = _fake_run(instance, "sales", None)
    assert _claim(instance, "mesh_domain_sales", daemon_run)
    assert reap_expired_runs(instance) == []
    messages = []
    wait_for_domain(
        instance, "sales", ["mesh_domain_sales"], run_id="next", report=messages.append,
        wait=lambda _: True,
    )  # fmt: skip
    assert "launched by Dagster: its run monitoring fails it" in messages[0]
    assert instance.get_run_by_id(daemon_run).status == dg.DagsterRunStatus.STARTED


def test_slots_left_by_finished_runs_are_freed(instance):
    done = _fake_run(instance, "sales", ELSEWHERE, status=dg.DagsterRunStatus.SUCCESS)
    assert _claim(instance, "mesh_domain_sales", done)
    assert wait_for_domain(
        instance, "sales", ["mesh_domain_sales"], run_id="next", report=print, wait=lambda _: True
    ) == []  # fmt: skip
    assert instance.event_log_storage.get_concurrency_info("mesh_domain_sales").claimed_slots == []
    assert instance.get_run_by_id(done).status == dg.DagsterRunStatus.SUCCESS


def test_a_heartbeat_renews_the_lease_and_reports_a_reaped_run(instance):
    run_id = _fake_run(instance, "sales", ELSEWHERE, heartbeat=1.0)
    lost = []
    with Heartbeat(instance, run_id, lease=2.0, on_lost=lost.append):  # beats every 0.33 s
        deadline = time.monotonic() + 30
        while float(instance.get_run_by_id(run_id).tags[HEARTBEAT_TAG]) == 1.0:
            assert time.monotonic() < deadline, "the heartbeat was never renewed"
            time.sleep(0.1)
        (reaped,) = reap_expired_runs(instance, now=lambda: time.time() + 3600)
        assert reaped.run_id == run_id
        while not lost and time.monotonic() < deadline:
            time.sleep(0.1)
    assert lost and lost[0].startswith("FAILURE by ")


# -- Dagster's own wait for a pool slot: bounded, said, stoppable --------------------------------


@pytest.fixture
def signals():
    """Dagster maps SIGTERM to the SIGINT handler for good after an in-process run: restore."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _tiny_domain(instance: dg.DagsterInstance, holder: Owner, heartbeat: float):
    """A domain whose first asset lets another run take the pool, as a race between two builds
    does: its second asset then waits for the slot inside Dagster."""
    taken = []

    @dg.asset
    def first() -> int:
        run_id = _fake_run(instance, "tiny", holder, heartbeat=heartbeat)
        assert _claim(instance, "mesh_domain_tiny", run_id)
        taken.append(run_id)
        return 1

    @dg.asset(pool="mesh_domain_tiny", deps=[first])
    def second() -> int:
        return 2

    job = dg.define_asset_job("tiny_build", selection=dg.AssetSelection.all())
    return dg.Definitions(assets=[first, second], jobs=[job]), taken


def test_a_run_waiting_inside_dagster_says_so_and_stops_on_ctrl_c(instance, signals):
    defs, taken = _tiny_domain(instance, Owner.current(), time.time())  # a live holder
    said = []

    def progress(domain: str, message: str) -> None:
        said.append(message)
        if message.startswith("waiting in Dagster's queue"):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    outcome = build_domain("tiny", defs, instance, progress=progress, stop=Stop())
    assert outcome.stopped and not outcome.success
    run = instance.get_run_by_id(outcome.run_id)
    assert run.status == dg.DagsterRunStatus.CANCELED
    assert any(f"held by run {taken[0]} (host {Owner.current().host}" in m for m in said)
    pending = instance.event_log_storage.get_concurrency_info("mesh_domain_tiny").pending_steps
    assert [p.run_id for p in pending] == taken  # its queued claim went with it


def test_a_run_waiting_inside_dagster_for_a_dead_holder_reaps_it_and_runs(instance, signals):
    defs, taken = _tiny_domain(instance, ELSEWHERE, time.time() - 3600)
    said = []
    outcome = build_domain("tiny", defs, instance, progress=lambda _, m: said.append(m))
    assert outcome.success, outcome.error
    reaped = instance.get_run_by_id(taken[0])
    assert reaped.status == dg.DagsterRunStatus.FAILURE
    assert reaped.tags[RETRIED_BY_TAG] == outcome.run_id
    assert any(m.startswith(f"run {taken[0]} of domain tiny") for m in said)


# -- the dbt guard ------------------------------------------------------------------------------


def test_the_dbt_guard_dies_with_its_parent_and_passes_everything_else_through(tmp_path):
    shell = guarded_dbt_executable("sh", tmp_path / "bin")
    assert guarded_dbt_executable("sh", tmp_path / "bin") == shell  # named by its content
    assert Path(shell).read_text() == dbt_guard_script(shutil.which("sh"))
    done = subprocess.run([shell, "-c", "echo $0 $1; exit 3", "x", "y"], capture_output=True)
    assert (done.returncode, done.stdout) == (3, b"x y\n")
    sleeper = guarded_dbt_executable("sleep", tmp_path / "bin")
    parent = subprocess.Popen(
        ["sh", "-c", f"{sleeper} 300 & echo $!; wait"],
        stdout=subprocess.PIPE, start_new_session=True, text=True,
    )  # fmt: skip
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 30
    while (
        not Path(f"/proc/{child}/cmdline").read_bytes().startswith(shutil.which("sleep").encode())
    ):
        assert time.monotonic() < deadline, "the guard did not become its program"
        time.sleep(0.05)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    while time.monotonic() < deadline and process_running(child):
        time.sleep(0.05)
    assert not process_running(child), "the guarded process outlived its parent"


# -- the real thing: one mesh built with `mesh build --domain sales` ----------------------------


def _rows(mesh: Mesh, address: str) -> Counter:
    """Every row of the product's main snapshot (a multiset), through the read path."""
    with published_scan(mesh, address) as (conn, scan, _):
        return Counter(conn.sql(f"SELECT * FROM {scan}").fetchall())


@pytest.fixture(scope="module")
def sales(tmp_path_factory: pytest.TempPathFactory, reference_mesh: Mesh) -> Mesh:
    """A copy of the sample mesh, not built yet: its first builds are the ones the tests stop
    and kill. It hashes personal data with the reference's salt, so that its products compare
    row for row with the reference's (a fresh full build of the same sources)."""
    mesh = load_mesh(copy_mesh(tmp_path_factory.mktemp("runs") / "mesh"))
    prepare_dagster_home(mesh)  # the instance the tests fake runs in, as `mesh build` has it
    salt = Path("secrets", "pii_salt")
    (mesh.state_dir / salt).parent.mkdir(mode=0o700, exist_ok=True)
    shutil.copy2(reference_mesh.state_dir / salt, mesh.state_dir / salt)
    return mesh


def _processes(root: Path) -> list[tuple[int, str]]:
    """Processes of this mesh (but this test's): cwd or command line under ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if (
            not entry.name.isdigit()
            or int(entry.name) == os.getpid()
            or not process_running(int(entry.name))
        ):
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(root)) or str(root) in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def _start(mesh: Mesh, log: Path, **env: str) -> subprocess.Popen:
    """`mesh build --domain sales` in the background, its output in ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            [MESH, "--root", str(mesh.root), "build", "--domain", "sales", "--scale", str(SF)],
            cwd=mesh.root, env={**user_env(), "COLUMNS": "1000", **env}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _until(what: str, condition, build: subprocess.Popen, log: Path, seconds: float = 600):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert build.poll() is None, f"the build ended before {what}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"no {what} in {seconds:.0f}s:\n{log.read_text()[-4000:]}"
        )
        time.sleep(0.2)
    return found


def _dbt_of(mesh: Mesh, build: subprocess.Popen, log: Path) -> list[int]:
    def dbt() -> list[int]:
        return [pid for pid, cmd in _processes(mesh.root) if " run " in cmd and "dbt" in cmd]

    return _until("dbt process", dbt, build, log)


def _gone(pids: list[int], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while any(process_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(process_running(p) for p in pids)


def _instance(mesh: Mesh) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(mesh.dagster_home))


def _runs_of(instance: dg.DagsterInstance, pid: int) -> list[dg.DagsterRun]:
    return [
        r.dagster_run
        for r in instance.get_run_records(filters=dg.RunsFilter(tags={PID_TAG: str(pid)}))
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_waiting_build_says_what_it_waits_for_and_stops_on_a_signal(sales, tmp_path, sig):
    mesh = sales
    instance = _instance(mesh)
    holder = _fake_run(instance, "sales", ELSEWHERE)  # another host's build, alive
    assert _claim(instance, "mesh_domain_sales", holder)
    log = tmp_path / "build.log"
    try:
        with Heartbeat(instance, holder, lease=10):
            build = _start(mesh, log)
            wanted = f"waiting for domain sales, held by run {holder} (host elsewhere, pid 4242"
            _until("wait message", lambda: wanted in log.read_text(), build, log)
            os.kill(build.pid, sig)
            code = build.wait(timeout=120)
    finally:
        instance.event_log_storage.free_concurrency_slots_for_run(holder)
        instance.report_run_failed(instance.get_run_by_id(holder), message="test holder ends")
    output = log.read_text()
    assert code == 128 + sig, output[-3000:]
    assert f"stopped by {sig.name}" in output and "Traceback" not in output
    assert _runs_of(instance, build.pid) == []  # it started nothing
    assert instance.get_run_by_id(holder).tags.get(REAPED_BY_TAG) is None  # a live run: kept


def test_sigterm_mid_dbt_stops_dbt_and_cancels_the_run(sales, tmp_path):
    mesh = sales
    log = tmp_path / "build.log"
    build = _start(mesh, log)
    dbt = _dbt_of(mesh, build, log)
    os.kill(build.pid, signal.SIGTERM)
    code = build.wait(timeout=300)
    output = log.read_text()
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert _gone(dbt), f"dbt outlived `mesh build`: {_processes(mesh.root)}"
    (run,) = _runs_of(_instance(mesh), build.pid)
    assert run.status == dg.DagsterRunStatus.CANCELED
    assert f"stopped by SIGTERM: run {run.run_id} canceled" in output


def test_a_build_killed_on_another_host_is_reaped_within_its_lease_and_rebuilt(
    sales, reference_mesh, tmp_path
):
    mesh = sales
    killed_log, next_log = tmp_path / "killed.log", tmp_path / "next.log"
    killed = _start(mesh, killed_log, **{LEASE_ENV: "10"})
    dbt = _dbt_of(mesh, killed, killed_log)
    os.kill(killed.pid, signal.SIGKILL)  # no handler runs
    killed.wait()
    assert _gone(dbt), f"dbt outlived the killed `mesh`: {_processes(mesh.root)}"
    instance = _instance(mesh)
    (run,) = _runs_of(instance, killed.pid)
    assert run.status == dg.DagsterRunStatus.STARTED
    # as another host leaves it: its pid cannot be looked up here, its heartbeat stops when the
    # next build is already waiting for it (the other host's process was alive until then)
    fake = {HOST_TAG: "elsewhere", PROCESS_TAG: f"another-boot/pid:[1]|{killed.pid}|1"}
    instance.add_run_tags(run.run_id, {**fake, HEARTBEAT_TAG: f"{time.time():.3f}"})
    build = _start(mesh, next_log)
    stop_beating = threading.Event()

    def beat() -> None:
        while not stop_beating.wait(1):
            instance.add_run_tags(run.run_id, {HEARTBEAT_TAG: f"{time.time():.3f}"})

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        wanted = f"waiting for domain sales, held by run {run.run_id} (host elsewhere"
        _until("wait message", lambda: wanted in next_log.read_text(), build, next_log)
    finally:
        stop_beating.set()
        beating.join()
    code = build.wait(timeout=900)
    output = next_log.read_text()
    assert code == 0, output[-5000:]
    assert f"run {run.run_id} of domain sales (host elsewhere, pid {killed.pid}" in output
    assert "has not renewed its lease" in output and "(lease 10s)" in output
    reaped = instance.get_run_by_id(run.run_id)
    assert reaped.status == dg.DagsterRunStatus.FAILURE
    (rebuilt,) = _runs_of(instance, build.pid)
    assert rebuilt.status == dg.DagsterRunStatus.SUCCESS
    assert reaped.tags[RETRIED_BY_TAG] == rebuilt.run_id
    assert rebuilt.tags[RETRY_OF_TAG] == run.run_id
    assert reaped.tags[WILL_RETRY_TAG] == "false"
    for address in PRODUCTS:
        assert _rows(mesh, address) == _rows(reference_mesh, address), address
    assert instance.event_log_storage.get_concurrency_info("mesh_domain_sales").claimed_slots == []
