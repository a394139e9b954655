"""What a `mesh build` run prints on the terminal: Dagster's console logger, minus what the build
reports itself.

Dagster prints a failed step, then the failed run, each with the exception's stack trace. A
failure the platform raises on purpose is an expected one: a ``dg.Failure`` (products the gate
blocked, a dbt model that failed: its message lists each with what was found and the fix) or a
:class:`~mesh_platform.errors.MeshError` (what, where, the fix). `mesh build` prints its message
once, from the run's outcome (:attr:`mesh_platform.build.DomainOutcome.error`), and no
traceback; records the assets mark :data:`~mesh_platform.assets.reporting.REPORTED` (a blocked
product's message, also in the step's failure) are left out too. Anything else is a fault of
the platform and keeps its trace, as `mesh_command` does for the commands' own errors. At
``--verbose`` (log level INFO or below) nothing is left out: Dagster's log, tracebacks included.
"""

from __future__ import annotations

import logging
from typing import Any

import dagster as dg
from dagster import DagsterEventType

from mesh_platform.assets.reporting import REPORTED
from mesh_platform.compat.dagster import FAILURE_PREFIX
from mesh_platform.errors import MeshError

CONSOLE = "console"  # the run config's logger key Dagster's default console logger has
_FAILURES = (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE)


def _expected_classes() -> dict[str, str]:
    """The failures raised on purpose, dg.Failure and every MeshError: class name -> what
    Dagster writes before their message (the class's path)."""
    found, todo = {"Failure": FAILURE_PREFIX}, [MeshError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = f"{cls.__module__}.{cls.__qualname__}: "
        todo += cls.__subclasses__()
    return found


def _expected(error: Any) -> Any:
    """The failure raised on purpose in a Dagster error (SerializableErrorInfo): the error
    itself, or the cause Dagster wrapped it around (a step's user code error); None if none."""
    expected = _expected_classes()
    while error is not None and error.cls_name not in expected:
        error = error.cause
    return error


def is_expected(error: Any) -> bool:
    """Whether a Dagster error is a failure raised on purpose (see :func:`_expected`)."""
    return _expected(error) is not None


def failure_message(error: Any) -> str:
    """A step failure as `mesh build` prints it: the message of the failure raised on purpose
    (what, where, the fix), which Dagster keeps under its own wrapper for a MeshError; else
    Dagster's message and its cause's (a fault of the platform: its trace is in the log)."""
    if (raised := _expected(error)) is not None:
        return raised.message.strip().removeprefix(_expected_classes()[raised.cls_name])
    cause = error.cause.message.strip().splitlines()[:1] if error.cause is not None else []
    return " ".join([error.message.strip(), *cause])


class _LeaveOutReported(logging.Filter):
    """Drops what the build prints itself: records marked REPORTED, and the failure events of
    a step or a run whose error was expected (a run failing for its steps, without an error of
    its own, says nothing the build does not)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, REPORTED, False):
            return False
        event = getattr(record, "dagster_event", None)
        if event is None or event.event_type not in _FAILURES:
            return True
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is None and event.event_type == DagsterEventType.RUN_FAILURE:
            first = getattr(data, "first_step_failure_event", None)
            error = getattr(getattr(first, "event_specific_data", None), "error", None)
            if first is None:
                return False
        return not is_expected(error)


@dg.logger(
    dg.colored_console_logger.config_schema,
    description="Dagster's colored console logger; below INFO, without what `mesh build` "
    "prints itself (expected failures and their tracebacks).",
)
def build_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    console = dg.colored_console_logger.logger_fn(init_context)
    if console.level > logging.INFO:
        console.addFilter(_LeaveOutReported())
    return console


def with_build_console(job: dg.JobDefinition) -> dg.JobDefinition:
    """``job`` logging to :func:`build_console_logger` under Dagster's ``console`` key (the run
    config's ``loggers.console`` still sets its level)."""
    return job.with_logger_defs({**job.loggers, CONSOLE: build_console_logger})
