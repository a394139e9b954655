"""mesh_platform: the self-serve platform of a data mesh on Dagster, dbt, DuckDB and Iceberg."""

from mesh_platform.definitions import domain_definitions

__all__ = ["domain_definitions"]
