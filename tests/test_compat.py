"""The private Dagster and pyiceberg APIs wrapped in mesh_platform/compat/: each still exists, with
the signature and behaviour the platform relies on. A failure here after an upgrade names the
API that moved or changed: adapt mesh_platform/compat/ (and its caller) before anything else."""

from __future__ import annotations

import importlib
import inspect
import traceback

import pytest


def private(module: str, name: str, used_by: str):
    """``module.name``, or a failure saying what disappeared and who used it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(
            f"private API {module}.{name} is gone ({type(exc).__name__}: {exc}); {used_by} "
            "relies on it: find its new home or a public replacement and update "
            "mesh_platform/compat/",
            pytrace=False,
        )


def expect_parameters(obj, expected: list[str], what: str) -> None:
    found = list(inspect.signature(obj).parameters)
    if found != expected:
        pytest.fail(
            f"private API {what} changed signature: parameters {found}, expected {expected}; "
            "update mesh_platform/compat/ and its caller",
            pytrace=False,
        )


def test_dagster_pool_wait_is_still_active_execution_sleep_til_ready():
    used_by = "mesh build (mesh_platform/build.py replaces the pool wait)"
    active = private("dagster._core.execution.plan.active", "ActiveExecution", used_by)
    expect_parameters(active.sleep_til_ready, ["self"], "ActiveExecution.sleep_til_ready")
    expect_parameters(active.sleep_interval, ["self"], "ActiveExecution.sleep_interval")
    # The replacement only matters while the executor waits for a slot through this method.
    execute_plan = private(
        "dagster._core.execution.plan.execute_plan", "inner_plan_execution_iterator", used_by
    )
    if ".sleep_til_ready()" not in inspect.getsource(execute_plan):
        pytest.fail(
            "dagster's inner_plan_execution_iterator no longer waits through "
            "ActiveExecution.sleep_til_ready: mesh build's bounded pool wait "
            "(mesh_platform/build.py, _sleep_til_ready) would never run; find the new wait",
            pytrace=False,
        )
    from mesh_platform.compat import dagster as compat

    assert compat.ActiveExecution is active


def test_dagster_captured_interrupts():
    used_by = "mesh build (stops a run waiting for its pool on Ctrl-C/SIGTERM)"
    pop = private("dagster._utils.interrupts", "pop_captured_interrupt", used_by)
    expect_parameters(pop, [], "pop_captured_interrupt")
    assert pop() is False  # nothing captured outside a run


def test_dagster_step_failure_error_source():
    used_by = "mesh build (tells an interrupted step from a failed one)"
    source = private("dagster._core.execution.plan.objects", "ErrorSource", used_by)
    assert hasattr(source, "INTERRUPT"), "ErrorSource.INTERRUPT is gone"
    data = private("dagster._core.execution.plan.objects", "StepFailureData", used_by)
    assert "error_source" in inspect.signature(data).parameters, (
        "StepFailureData has no error_source any more"
    )


def test_dagster_run_worker_health_answers():
    used_by = "mesh_platform.launcher (fails the runs of dead workers through run monitoring)"
    result = private("dagster._core.launcher", "CheckRunHealthResult", used_by)
    status = private("dagster._core.launcher", "WorkerStatus", used_by)
    assert {"RUNNING", "FAILED"} <= set(status.__members__), list(status.__members__)
    expect_parameters(
        result, ["status", "msg", "transient", "run_worker_id"], "CheckRunHealthResult"
    )
    import dagster as dg

    base = dg.DefaultRunLauncher
    assert isinstance(base.supports_check_run_worker_health, property)
    expect_parameters(base.check_run_worker_health, ["self", "run"], "check_run_worker_health")


def test_dagster_failure_message_prefix():
    import dagster as dg

    from mesh_platform.compat.dagster import FAILURE_PREFIX

    try:
        raise dg.Failure(description="domain 'sales': a bad file")
    except dg.Failure as exc:
        message = "".join(traceback.format_exception_only(type(exc), exc))
    assert message.startswith(FAILURE_PREFIX), message
    assert message.removeprefix(FAILURE_PREFIX).strip() == "domain 'sales': a bad file"


def test_pyiceberg_schema_without_ids():
    import pyarrow as pa

    used_by = "publication's schema check (mesh_platform/products/publish.py)"
    convert = private("pyiceberg.io.pyarrow", "_pyarrow_to_schema_without_ids", used_by)
    assert next(iter(inspect.signature(convert).parameters)) == "schema", (
        "_pyarrow_to_schema_without_ids no longer takes the Arrow schema first"
    )
    from mesh_platform.compat.pyiceberg import pyarrow_to_schema_without_ids

    schema = pyarrow_to_schema_without_ids(pa.schema([("id", pa.int64()), ("name", pa.string())]))
    assert [(f.name, str(f.field_type)) for f in schema.fields] == [
        ("id", "long"),
        ("name", "string"),
    ]


def test_pyiceberg_parquet_file_to_data_file_refuses_optional_columns_for_required_ones(
    catalog, duck, tmp_path
):
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField

    used_by = "registering the platform's data files (mesh_platform/storage/datafiles.py)"
    build = private("pyiceberg.io.pyarrow", "parquet_file_to_data_file", used_by)
    expect_parameters(build, ["io", "table_metadata", "file_path"], "parquet_file_to_data_file")
    from mesh_platform.compat.pyiceberg import data_files_with_relaxed_nullability

    catalog.create_namespace("compat")
    table = catalog.create_table(
        ("compat", "t"), Schema(NestedField(1, "id", LongType(), required=True))
    )
    path = tmp_path / "f.parquet"
    duck.execute(f"COPY (SELECT 1::BIGINT AS id) TO '{path}' (FORMAT parquet, FIELD_IDS {{id: 1}})")
    with pytest.raises(ValueError):  # still the reason for the wrapper: DuckDB writes optional
        build(table.io, table.metadata, str(path))
    (data_file,) = data_files_with_relaxed_nullability(table.io, table.metadata, [str(path)])
    assert data_file.record_count == 1 and data_file.null_value_counts == {1: 0}
    assert table.schema().find_field("id").required  # the table's schema is untouched
