"""Federated computational governance: policies evaluated from code (static, at load and at
``mesh check``) and in the publication gate (data policies).

The shipped policies register themselves on import, and importing any module of this package
loads them all: every reader of the static registry (``policy.registered_policies``) sees the
whole set, and the gate's data checks (``data``) are registered wherever publication runs
(``products/publish.py`` imports ``governance.evaluate``), so no product publishes unchecked.
"""

from mesh_platform.governance import builtin as _builtin  # noqa: F401
from mesh_platform.governance import data as _data  # noqa: F401
from mesh_platform.governance import declarations as _declarations  # noqa: F401
from mesh_platform.governance import layout as _layout  # noqa: F401
