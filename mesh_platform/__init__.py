"""mesh_platform: the self-serve platform of a data mesh on Dagster, dbt, DuckDB and Iceberg."""

from typing import Any

__all__ = ["domain_definitions"]


def __getattr__(name: str) -> Any:
    if name == "domain_definitions":
        # heavy: dagster (~1 s): `import mesh_platform` must not pay it (the CLI's light commands)
        from mesh_platform.definitions import domain_definitions

        return domain_definitions
    raise AttributeError(f"module 'mesh_platform' has no attribute {name!r}")
