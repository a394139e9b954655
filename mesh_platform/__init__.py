"""mesh_platform: the self-serve platform of a data mesh on Dagster, dbt, DuckDB and Iceberg."""

from typing import Any

__all__ = ["domain_definitions"]


def __getattr__(name: str) -> Any:
    # Lazy: `import mesh_platform` must not pay dagster's import time (the CLI's light commands).
    if name == "domain_definitions":
        from mesh_platform.definitions import domain_definitions

        return domain_definitions
    raise AttributeError(f"module 'mesh_platform' has no attribute {name!r}")
