"""The settings of ``mesh.yaml`` as models: catalog, alerts, query limits, the profile.

Layering follows pyiceberg's habit: file -> environment -> code. Any key can be overridden with a
``MESH_`` variable; nested keys use ``__`` (``MESH_CATALOG__URI=...``).
:func:`mesh_platform.config.load_mesh` reads the file and builds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class CatalogSettings(BaseModel):
    """Where the Iceberg catalog and its warehouse live."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default="mesh", description="Catalog name used in addresses.", examples=["mesh"]
    )
    uri: str | None = Field(
        default=None,
        description="SQLAlchemy URI of the pyiceberg SqlCatalog. Default: sqlite in the state dir.",
        examples=["sqlite:////srv/mesh/catalog.db", "postgresql+psycopg://mesh@db/mesh"],
    )
    warehouse: str | None = Field(
        default=None,
        description="Warehouse root for table data. Default: <state_dir>/warehouse.",
        examples=["file:///srv/mesh/warehouse", "s3://mesh-warehouse"],
    )


class AlertSink(BaseModel):
    """Where SLA alerts go: the run's log, a JSON-lines file, or an HTTP webhook (POST JSON)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["log", "file", "webhook"]
    path: Path | None = Field(default=None, description="file: the JSON-lines file.")
    url: str | None = Field(default=None, description="webhook: the URL to POST to.")
    timeout_seconds: float = Field(default=5.0, gt=0, description="webhook: request timeout.")

    @model_validator(mode="after")
    def _target(self) -> AlertSink:
        if self.type == "webhook" and not (self.url or "").startswith(("http://", "https://")):
            raise ValueError("a webhook sink needs `url: http(s)://...`")
        return self


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sinks: list[AlertSink] = Field(
        default_factory=lambda: [AlertSink(type="log"), AlertSink(type="file")],
        description="Default: the run's log and <state>/alerts/alerts.jsonl.",
    )


class QueryLimits(BaseModel):
    """What one federated query may use (``mesh query``, QuerySession, read_product). Every
    field may be left out: the defaults apply."""

    model_config = ConfigDict(extra="forbid")

    timeout_seconds: float = Field(
        default=300,
        gt=0,
        description="A query still running after this is cancelled.",
        examples=[60],
    )
    memory_limit: str = Field(
        default="4GB",
        pattern=r"^\d+(\.\d+)?\s?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB's memory cap for the query's engine.",
        examples=["2GB", "512MB"],
    )
    threads: int | None = Field(
        default=None, ge=1, le=256, description="Threads one query may use (default: all cores)."
    )
    max_rows: int = Field(
        default=1_000_000,
        ge=1,
        description="A result larger than this is refused (aggregate, filter or LIMIT).",
    )


class QuerySettings(BaseModel):
    """Query limits: defaults, and overrides per principal or team (the first that applies:
    the principal's own entry, then the teams and domains it acts as, by name)."""

    model_config = ConfigDict(extra="forbid")

    defaults: QueryLimits = Field(default_factory=QueryLimits)
    principals: dict[str, QueryLimits] = Field(
        default_factory=dict,
        description="Limits per principal id (user:<u>, team:<t>, a domain).",
        examples=[{"team:bi": {"timeout_seconds": 600, "max_rows": 5000000}}],
    )

    def for_principal(self, acts_as: list[str]) -> QueryLimits:
        """``acts_as``: the principal first, then what it acts as (sorted)."""
        for name in acts_as:
            if name in self.principals:
                return self.principals[name]
        return self.defaults


class MeshSettings(BaseSettings):
    """Typed view of mesh.yaml. Environment variables (MESH_*) win over the file."""

    model_config = SettingsConfigDict(env_prefix="MESH_", env_nested_delimiter="__", extra="forbid")

    state_dir: Path = Field(
        default=Path("state"),
        description="Directory holding all local state (DuckDB files, catalog, warehouse, "
        "Dagster instance). Relative paths are resolved against the mesh root.",
        examples=["state", "/var/lib/mesh"],
    )
    scale_factor: float = Field(
        default=0.1,
        gt=0,
        description="TPC-H scale factor of the sample sources (0.1 is ~150k orders).",
        examples=[0.01, 0.1, 1],
    )
    dbt_executable: str | None = Field(
        default=None,
        description="Path to the dbt executable. Default: the one installed beside Python.",
        examples=["/opt/venv/bin/dbt"],
    )
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    profile: Literal["local", "production"] = Field(
        default="local",
        description="Deployment profile. local: the embedded default (sqlite files, local "
        "warehouse, sqlite Dagster instance, all under state_dir). production: Dagster instance "
        "storage and the Iceberg catalog on PostgreSQL, the warehouse in S3-compatible object "
        "storage; servers and credentials come from the environment (MESH_POSTGRES_URL, "
        "MESH_CATALOG__URI, MESH_CATALOG__WAREHOUSE, MESH_S3_ENDPOINT, AWS_*), never from files.",
        examples=["local", "production"],
    )
    s3_endpoint: str | None = Field(
        default=None,
        description="Endpoint of the S3-compatible object store (empty: AWS S3 itself).",
        examples=["http://127.0.0.1:59000", "https://s3.eu-west-1.amazonaws.com"],
    )


class _FileSource(PydanticBaseSettingsSource):
    """mesh.yaml's content as a settings source, ranked below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def build_settings(data: dict[str, Any], overrides: dict[str, Any]) -> MeshSettings:
    """Layered settings: code overrides > MESH_* environment > mesh.yaml > defaults."""

    class _LayeredSettings(MeshSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _FileSource(settings_cls, data))

    return _LayeredSettings(**overrides)
