"""Who holds a domain: a `mesh build` run owns its domain's pool by a lease that dies with it.

Every domain's assets share the Dagster pool ``mesh_domain_<d>`` (limit 1: one writer of the
domain's DuckDB). Dagster frees a run's slot when its step ends, and its run monitoring (the
daemon) fails runs whose worker it launched and lost. A `mesh build` runs its domains in its own
process (``execute_in_process``): if that process dies, nothing frees the slot, and every later
build of the domain waits for it forever.

So a `mesh build` run carries a lease in its run tags, kept where every host of the mesh sees
it (the Dagster instance's run storage: sqlite locally, PostgreSQL in production), and so does
a run the daemon launched: Dagster's DefaultRunLauncher cannot tell whether its worker lives,
so the worker takes the lease when the run starts (:func:`take_lease`) and the instance's
launcher (:mod:`mesh_platform.launcher`) judges it for Dagster's run monitoring. A lease names
its run (``mesh/lease_run``): a re-execution inherits its parent's tags, not its lease.

- ``mesh/process``: who runs it: the kernel (boot id and pid namespace), the pid and the
  process's start time. On the same kernel this decides at once (a pid that is gone, or reused
  by another process, is a dead owner); elsewhere it cannot be checked;
- ``mesh/heartbeat``: when the owner last said it is alive (epoch seconds, refreshed every few
  seconds by :class:`Heartbeat`, a thread of the owner), and ``mesh/lease_seconds``: how long a
  heartbeat holds (``MESH_RUN_LEASE_SECONDS``, default 60). An owner on another host, or in
  another container, is dead once its last heartbeat is older than its lease. Hosts' clocks
  are assumed to agree within a few seconds (NTP).

:func:`judge` is the whole expiry rule, a pure function; :mod:`mesh_platform.pools` uses it to
reap dead holders of a domain's pool.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from mesh_platform.errors import MeshConfigError

DOMAIN_TAG = "mesh/domain"
PID_TAG = "mesh/pid"
HOST_TAG = "mesh/host"
PROCESS_TAG = "mesh/process"
HEARTBEAT_TAG = "mesh/heartbeat"
LEASE_TAG = "mesh/lease_seconds"
# The run a lease was taken for: a re-execution (Dagster's retry, the UI's) inherits its
# parent's tags, and a lease of another run holds nothing.
LEASE_RUN_TAG = "mesh/lease_run"
# Lineage of a reaped run and the `mesh build` run that rebuilt its domain.
RETRY_OF_TAG = "mesh/retry_of"
RETRIED_BY_TAG = "mesh/retried_by"
REAPED_BY_TAG = "mesh/reaped_by"
# Dagster's own retry tags: the daemon cannot re-execute a run started in a `mesh build`
# process (it has no code-location origin), so such runs say they will not be retried by it.
MAX_RETRIES_TAG = "dagster/max_retries"
WILL_RETRY_TAG = "dagster/will_retry"

LEASE_ENV = "MESH_RUN_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
MIN_LEASE_SECONDS = 2.0

# A run that may hold its domain: in progress, or created and about to start.
ACTIVE_STATUSES = (
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


def lease_seconds() -> float:
    """The lease of this process's runs: ``MESH_RUN_LEASE_SECONDS``, else 60 s."""
    raw = os.environ.get(LEASE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= MIN_LEASE_SECONDS:  # NaN fails too
        raise MeshConfigError(
            f"{LEASE_ENV}={raw!r} is not a number of seconds >= {MIN_LEASE_SECONDS:g}",
            fix=f"set {LEASE_ENV} to how long a dead build may hold its domain, e.g. 60 "
            "(or unset it)",
        )
    return value


def heartbeat_interval(lease: float) -> float:
    """How often an owner renews a lease of ``lease`` seconds: six times per lease, at most
    every 5 s, so a few missed writes (a busy database) do not expire it."""
    return max(0.2, min(5.0, lease / 6))


# -- who runs a process -------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _kernel() -> str:
    """Boot id and pid namespace: pids are comparable only within both ('' where unknown)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}" if boot else ""


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks after boot; None: no such process). With
    the pid it names one process: a reused pid has another start time."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # comm (field 2) may hold spaces and parentheses: fields after its last ')' are plain
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


@dataclass(frozen=True)
class Owner:
    """The process that runs a `mesh build` run."""

    host: str
    pid: int
    kernel: str = ""  # boot id + pid namespace ('' : not comparable)
    start: str = ""  # the process's start time (pid reuse)

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _kernel(), process_start(pid) or "")

    def process_tag(self) -> str:
        return f"{self.kernel}|{self.pid}|{self.start}"

    def same_kernel(self, other: Owner) -> bool:
        return bool(self.kernel) and self.kernel == other.kernel


def process_alive(owner: Owner) -> bool:
    """Whether ``owner`` still runs (only meaningful on the owner's own kernel)."""
    start = process_start(owner.pid)
    if start is None:
        return False
    return not owner.start or start == owner.start


@dataclass(frozen=True)
class Lease:
    """A run's lease, as read from its tags."""

    owner: Owner
    heartbeat: float | None  # None: a run of an older platform (pid and host only)
    seconds: float


def lease_tags(
    owner: Owner, *, now: float, seconds: float, run_id: str | None = None
) -> dict[str, str]:
    """The tags a `mesh build` run starts with (``run_id``: the run they are for)."""
    return {
        **({LEASE_RUN_TAG: run_id} if run_id else {}),
        PID_TAG: str(owner.pid),
        HOST_TAG: owner.host,
        PROCESS_TAG: owner.process_tag(),
        HEARTBEAT_TAG: f"{now:.3f}",
        LEASE_TAG: f"{seconds:g}",
        MAX_RETRIES_TAG: "0",
    }


def read_lease(tags: Mapping[str, str], run_id: str | None = None) -> Lease | None:
    """The lease in the tags of run ``run_id``; None for a run without one (its worker has not
    taken it yet), or whose lease is another run's (inherited by a re-execution)."""
    pid, host = tags.get(PID_TAG, ""), tags.get(HOST_TAG)
    if not pid.isdigit() or host is None:
        return None
    if run_id is not None and tags.get(LEASE_RUN_TAG, run_id) != run_id:
        return None
    kernel, start = "", ""
    parts = tags.get(PROCESS_TAG, "").split("|")
    if len(parts) == 3 and parts[1] == pid:
        kernel, start = parts[0], parts[2]
    try:
        heartbeat = float(tags[HEARTBEAT_TAG]) if HEARTBEAT_TAG in tags else None
    except ValueError:
        heartbeat = None
    try:
        seconds = float(tags.get(LEASE_TAG, DEFAULT_LEASE_SECONDS))
    except ValueError:
        seconds = DEFAULT_LEASE_SECONDS
    return Lease(Owner(host, int(pid), kernel, start), heartbeat, max(seconds, MIN_LEASE_SECONDS))


@dataclass(frozen=True)
class Verdict:
    expired: bool
    why: str  # what decided it, for people: "its process 4242 on vm is gone"


def judge(
    lease: Lease,
    *,
    now: float,
    here: Owner,
    alive: Callable[[Owner], bool] = process_alive,
    started_at: float | None = None,
) -> Verdict:
    """Is the run holding ``lease`` dead? (``started_at``: the run's start, the heartbeat of a
    run of an older platform.)

    On the owner's own kernel the process decides: gone (or its pid reused) is dead at once,
    alive is alive however old its heartbeat (it may be busy; ``mesh build`` says so while it
    waits). Elsewhere the heartbeat decides: older than the lease is dead. A run of an older
    platform (pid and host only) is judged by its pid on its own host, else by its start.
    """
    owner = lease.owner
    where = f"process {owner.pid} on {owner.host}"
    if owner.same_kernel(here) or (not owner.kernel and owner.host == here.host):
        if alive(owner):
            return Verdict(False, f"its {where} is running")
        return Verdict(True, f"its {where} is gone (killed or crashed)")
    beat = lease.heartbeat if lease.heartbeat is not None else started_at
    if beat is None:
        return Verdict(True, f"its {where} never renewed its lease")
    age = now - beat
    if age > lease.seconds:
        return Verdict(
            True,
            f"its {where} has not renewed its lease for {age:.0f}s (lease {lease.seconds:g}s)",
        )
    return Verdict(False, f"its {where} renewed its lease {max(age, 0):.0f}s ago")


def describe_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Heartbeat:
    """Renews ``run_id``'s lease from a daemon thread while the block runs (from before the run
    exists: its first tags carry a fresh heartbeat). Each ``tick`` seconds it also calls
    ``on_tick`` (for the Dagster-side wait); if the run was reaped meanwhile (its heartbeat
    could not be written for a whole lease: a suspended process, a database out of reach),
    ``on_lost`` is called once: another build may now hold the domain. ``on_error`` hears the
    first failure of each series of failed renewals (retried at the next beat)."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        run_id: str,
        lease: float,
        *,
        on_tick: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        tick: float = 2.0,
    ) -> None:
        self.instance = instance
        self.run_id = run_id
        self.interval = heartbeat_interval(lease)
        self.tick = tick
        self.on_tick = on_tick
        self.on_lost = on_lost
        self.on_error = on_error
        self.errors: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"mesh-lease-{run_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        _RENEWING.add(self.run_id)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        _RENEWING.discard(self.run_id)

    def beat(self) -> dg.DagsterRun | None:
        """Renew the lease; returns the run once it is no longer in progress (ended, or reaped:
        then it carries ``mesh/reaped_by``)."""
        run = self.instance.get_run_by_id(self.run_id)
        if run is None:
            return None  # not created yet: its first tags carry the lease
        if run.status not in ACTIVE_STATUSES:
            return run
        self.instance.add_run_tags(self.run_id, {HEARTBEAT_TAG: f"{time.time():.3f}"})
        return None

    def _loop(self) -> None:
        next_beat = next_tick = time.monotonic()
        failing = False
        while not self._done.wait(min(self.interval, self.tick, 0.5)):
            clock = time.monotonic()
            try:
                if clock >= next_beat:
                    next_beat = clock + self.interval
                    if (ended := self.beat()) is not None:
                        self._ended(ended)
                        return
                if self.on_tick is not None and clock >= next_tick:
                    next_tick = clock + self.tick
                    _quietly(self.on_tick)
                failing = False
            except Exception as exc:  # a busy or unreachable database: retried next beat
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if not failing and self.on_error is not None:
                    _quietly(
                        self.on_error,
                        f"run {self.run_id} could not renew its lease ({self.errors[-1][:200]}); "
                        "retrying",
                    )
                failing = True

    def _ended(self, run: dg.DagsterRun) -> None:
        """The run is no longer in progress. Ended by this process, the heartbeat is stopped
        within moments (the run's last event comes just before); otherwise someone else ended
        it (a reaper; its ``mesh/reaped_by`` tag may even have been overwritten by a heartbeat
        racing it: Dagster rewrites a run's tags whole) and this process must stop it."""
        if REAPED_BY_TAG not in run.tags and self._done.wait(max(5.0, 2 * self.interval)):
            return
        if self.on_lost is not None:
            by = run.tags.get(REAPED_BY_TAG, "another process")
            _quietly(self.on_lost, f"{run.status.value} by {by}")


# The runs whose lease a Heartbeat of this process renews.
_RENEWING: set[str] = set()


def take_lease(instance: dg.DagsterInstance, run_id: str | None) -> Heartbeat | None:
    """In a run worker the Dagster daemon launched: take the run's lease (this process) and
    renew it until the returned Heartbeat exits, so a worker that dies is judged dead as a
    `mesh build` is: at once on its own kernel, after its lease elsewhere (``launcher`` fails
    the run, the daemon retries it, its slots are freed). None when this process renews it
    already (a `mesh build` run, a second resource of the same run) or there is no run."""
    if run_id is None or run_id in _RENEWING or instance.get_run_by_id(run_id) is None:
        return None
    seconds = lease_seconds()
    tags = lease_tags(Owner.current(), now=time.time(), seconds=seconds, run_id=run_id)
    del tags[MAX_RETRIES_TAG]  # the daemon can re-execute it (it has a code-location origin)
    instance.add_run_tags(run_id, tags)
    return Heartbeat(instance, run_id, seconds).__enter__()


def _quietly(callback: Callable[..., Any], *args: Any) -> None:
    """Run a heartbeat callback; its failure (a closed console pipe...) must never stop the
    heartbeat, or a live run would lose its lease."""
    with contextlib.suppress(Exception):
        callback(*args)
