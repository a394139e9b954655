"""The private Dagster and pyiceberg APIs the platform uses: the only place that imports them.

Each has no public equivalent in the pinned versions (Dagster 1.13, pyiceberg 0.12).
``tests/test_compat.py`` checks that each still exists with the signature used here and fails
with a message naming what to look at when an upgrade moves or changes one.

Two modules, one per library, so that what imports the pyiceberg one (publication, a service)
does not import Dagster:

- :mod:`mesh_platform.compat.dagster`: the pool wait ``mesh build`` replaces
  (``ActiveExecution``), the interrupts Dagster captured during a run, the source of a step
  failure, and the prefix of a ``dg.Failure``'s message;
- :mod:`mesh_platform.compat.pyiceberg`: an Arrow schema as an Iceberg schema without field ids.
"""
