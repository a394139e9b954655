"""A domain's dbt never sees the credentials of the process that starts it.

A run worker holds the catalog's, the warehouse's and Dagster's credentials in its environment
(the production profile reads them from there). dbt compiles a domain's Jinja, and
``env_var()`` reads the environment: whatever dbt is given, a model can write into a product.
dbt gets only an allowlist (mesh_platform/dbt/lockdown.py: ``DBT_ENV_NAMES``,
``DBT_ENV_PREFIXES``), on each of the three ways the platform runs it: a guard that becomes dbt
(cold), a guard served by the warm worker, and dbt in the mesh's own process (``mesh prepare``).
"""

from __future__ import annotations

import os
import subprocess

from mesh_platform.dbt.lockdown import guarded_dbt_executable, only_dbt_environment
from tests.chaos.test_dbt_warm import (  # noqa: F401 - warm is a fixture
    DBT,
    dbt_args,
    start_worker,
    table,
    tiny_project,
    warm,
)

CREDENTIALS = {
    "AWS_SECRET_ACCESS_KEY": "sekrit-aws",
    "MESH_POSTGRES_URL": "postgresql://mesh:sekrit-pg@127.0.0.1/mesh",
}


def test_dbt_sees_no_credential_started_cold_warm_or_in_process(tmp_path, warm, monkeypatch):  # noqa: F811
    project = tiny_project(tmp_path / "tiny")
    env = {**os.environ, **CREDENTIALS, "DBT_ENV_CUSTOM_ENV_TEAM": "sales"}
    cold = guarded_dbt_executable(DBT, tmp_path / "bin")
    warmed = guarded_dbt_executable(DBT, tmp_path / "bin", warm=warm)
    worker = start_worker(warmed, project, warm)
    for guard, parent in ((cold, os.getpid()), (warmed, worker)):
        done = subprocess.run(
            [guard, *dbt_args(project, "run", "--select", "secret", "who")],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        # what dbt's own variables may carry passes; the credentials do not
        assert table(project, "secret") == [("absent", "absent", "sales")]
        ((_, ran_by, secret),) = table(project, "who")  # a Python model's os.environ too
        assert (ran_by, secret) == (parent, "absent")

    # heavy: dbt-core, as `mesh prepare` runs it (in this process)
    from dbt.cli.main import dbtRunner

    for key, value in {**CREDENTIALS, "DBT_ENV_CUSTOM_ENV_TEAM": "sales"}.items():
        monkeypatch.setenv(key, value)
    with only_dbt_environment():
        assert "AWS_SECRET_ACCESS_KEY" not in os.environ
        result = dbtRunner().invoke(dbt_args(project, "compile", "--select", "secret"))
    assert result.success, result.exception
    compiled = (project / "target" / "compiled" / "tiny" / "models" / "secret.sql").read_text()
    assert compiled.strip() == "select 'absent' as aws, 'absent' as postgres, 'sales' as custom"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "sekrit-aws"  # restored after the call
