"""Private Dagster APIs (1.13) the platform uses, each checked by ``tests/test_compat.py``.

- ``ActiveExecution`` (``dagster._core.execution.plan.active``): ``mesh build`` replaces its
  ``sleep_til_ready`` and calls its ``sleep_interval`` (:mod:`mesh_platform.build` says why:
  Dagster's wait for a pool slot never sleeps and ignores interrupts).
- ``pop_captured_interrupt`` (``dagster._utils.interrupts``): the SIGINT/SIGTERM Dagster captured
  during a run, which the replaced wait honours.
- ``ErrorSource`` (``dagster._core.execution.plan.objects``): tells a step failure caused by an
  interrupt from one raised by the step's code.
- ``FAILURE_PREFIX``: what Dagster puts before the message of a ``dg.Failure`` in a step
  failure's error (the class's module path, private), stripped so the failure reads as the
  platform's own message.
- ``CheckRunHealthResult``, ``WorkerStatus`` (``dagster._core.launcher``): what a run launcher
  answers Dagster's run monitoring about a run's worker (:mod:`mesh_platform.launcher` judges
  it by the run's lease; the methods it overrides are the public RunLauncher's).
"""

from __future__ import annotations

import dagster as dg
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.objects import ErrorSource
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._utils.interrupts import pop_captured_interrupt

__all__ = [
    "FAILURE_PREFIX",
    "ActiveExecution",
    "CheckRunHealthResult",
    "ErrorSource",
    "WorkerStatus",
    "pop_captured_interrupt",
]

FAILURE_PREFIX = f"{dg.Failure.__module__}.{dg.Failure.__qualname__}: "
