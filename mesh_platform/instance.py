"""The persistent Dagster instance of the embedded default (DAGSTER_HOME in the state dir)."""

from __future__ import annotations

import os

import dagster as dg

from mesh_platform.config import Mesh
from mesh_platform.storage import preflight

DAGSTER_YAML = """\
# Dagster instance of the mesh's embedded default (written by mesh_platform/instance.py: edits
# are replaced; change the platform instead). Storage defaults to sqlite files here.
telemetry:
  enabled: false
# One writer per domain DuckDB: every domain's assets share the pool mesh_domain_<d>, limit 1,
# and the run queue starts one run per domain at a time.
concurrency:
  pools:
    default_limit: 1
  runs:
    tag_concurrency_limits:
      - key: mesh/domain
        value: {applyLimitPerUniqueValue: true}
        limit: 1
# Runs whose worker crashed are retried (not runs that failed a check or a step). The daemon
# cannot re-execute a `mesh build` run (started outside a code location): those carry
# dagster/max_retries 0, and the `mesh build` that reaps one rebuilds its domain instead.
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
# Every run holds a lease (mesh/heartbeat, renewed by the process that runs it: a `mesh build`,
# or the worker the daemon launched, mesh_platform/leases.py). The daemon's run monitoring asks
# the launcher whether a worker lives (its lease: mesh_platform/launcher.py) and fails the run
# of a dead one (then retried); the platform reaps `mesh build` runs whose lease expired. The
# slots of ended runs are freed (a killed worker never released its domain's).
run_launcher:
  module: mesh_platform.launcher
  class: MeshRunLauncher
run_monitoring:
  enabled: true
  start_timeout_seconds: 300
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 5
# Sensors and schedules of different code locations are evaluated side by side: every domain
# has an SLA monitor, every consumer a sensor, and one after another a tick of all of them
# took the sum of their durations (the consumers' sensors waited for every SLA monitor).
sensors:
  use_threads: true
  num_workers: 4
schedules:
  use_threads: true
  num_workers: 4
"""


# The production profile keeps runs, event logs and schedules in PostgreSQL (dagster-postgres).
# The URL is read from the environment by Dagster itself: no credential is written to the file.
POSTGRES_STORAGE = """\
# Production profile: run, event log and schedule storage in PostgreSQL; the URL (with its
# credentials) is read from the environment variable, never written here.
storage:
  postgres:
    postgres_url:
      env: MESH_POSTGRES_URL
"""


def dagster_yaml(mesh: Mesh) -> str:
    """The instance configuration of the mesh's profile."""
    return DAGSTER_YAML + (POSTGRES_STORAGE if mesh.production else "")


def prepare_dagster_home(mesh: Mesh) -> str:
    """Create DAGSTER_HOME with its dagster.yaml and export it for this process and children.
    Production profile: the servers are checked first (a clear error, not a trace mid-run)."""

    preflight.check(mesh)
    mesh.ensure_state_dir()
    home = mesh.dagster_home
    config = home / "dagster.yaml"
    wanted = dagster_yaml(mesh)
    if not config.is_file() or config.read_text() != wanted:
        config.write_text(wanted)
    os.environ["DAGSTER_HOME"] = str(home)
    return str(home)


def create_instance_storage(home: str) -> None:
    """Create the instance's storage (its sqlite files and tables, or its PostgreSQL tables)
    once, from this process. Every Dagster process creates what is missing when it opens the
    instance; ``mesh up`` starts a code server per domain at once, and on a fresh sqlite
    instance they raced (one of three failed to load with ``table alembic_version already
    exists``)."""
    dg.DagsterInstance.from_config(home).dispose()


def get_instance(mesh: Mesh) -> dg.DagsterInstance:
    prepare_dagster_home(mesh)
    return dg.DagsterInstance.get()
