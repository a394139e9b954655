"""The settings of ``mesh.yaml`` as models: catalog, alerts, query limits, the profile.

Layering follows pyiceberg's habit: file -> environment -> code. Any key can be overridden with a
``MESH_`` variable; nested keys use ``__`` (``MESH_CATALOG__URI=...``).
:func:`mesh_platform.config.load_mesh` reads the file and builds them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mesh_platform.formats import parse_duration


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
    deprecation_notice_days: list[int] = Field(
        default_factory=lambda: [14, 3],
        description="Remind a deprecated product's owner and readers this many days before "
        "its sunset (each once; they are also told when it is deprecated).",
    )

    @field_validator("deprecation_notice_days")
    @classmethod
    def _positive_days(cls, days: list[int]) -> list[int]:
        if any(n < 1 for n in days):
            raise ValueError("each notice is at least 1 day before the sunset")
        return days


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
    concurrent_queries: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Queries of one principal the query service runs at once (`mesh serve`); "
        "more wait for a free slot.",
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


class TlsSettings(BaseModel):
    """The query service's certificate (PEM files; relative paths are against the mesh root)."""

    model_config = ConfigDict(extra="forbid")

    certificate: Path = Field(description="PEM certificate chain.", examples=["tls/mesh.crt"])
    key: Path = Field(description="PEM private key (mode 0600).", examples=["tls/mesh.key"])


class OidcSettings(BaseModel):
    """OpenID Connect: JWTs of one issuer accepted as the password of a login."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(description="The `iss` every token must carry.")
    audience: str = Field(description="The `aud` every token must carry (this mesh).")
    jwks: str = Field(
        description="The issuer's public keys: a JWKS file (relative to the mesh root) or an "
        "https:// URL (fetched and cached).",
        examples=["oidc/jwks.json", "https://login.example.com/.well-known/jwks.json"],
    )
    algorithms: list[Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]] = (
        Field(
            default_factory=lambda: ["RS256", "ES256"],
            description="Signature algorithms accepted (asymmetric only: never none or HS*).",
        )
    )
    principal_claim: str = Field(
        default="sub", description="The claim naming the user.", examples=["email", "sub"]
    )
    principal_prefix: str = Field(default="user:", description="Prefix of the mapped principal.")
    teams_claim: str | None = Field(
        default="groups", description="A claim listing the user's teams (None: not used)."
    )
    team_prefix: str = Field(default="team:", description="Prefix of each mapped team.")
    leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed.")


class ServeSettings(BaseModel):
    """``mesh serve``: the authenticated query service (PostgreSQL wire protocol)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; any address off loopback requires `tls`.",
        examples=["127.0.0.1", "0.0.0.0"],
    )
    port: int = Field(default=5433, ge=0, le=65535, description="PostgreSQL protocol port.")
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="HTTP port of /healthz and /readyz (None: port + 1000; 0: off).",
    )
    tls: TlsSettings | None = Field(default=None, description="Certificate of the service.")
    oidc: OidcSettings | None = Field(default=None, description="Accept JWTs of this issuer.")
    tokens_file: Path | None = Field(
        default=None,
        description="Where issued tokens are kept, hashed (default: <state>/serve/tokens.json).",
    )
    max_connections: int = Field(default=128, ge=1, description="Open sessions at most.")
    max_query_bytes: int = Field(
        default=1_000_000, ge=1024, description="A longer query text is refused."
    )
    login_failures: int = Field(
        default=5,
        ge=1,
        description="Failed logins from one address (or for one user) within the window "
        "before further attempts are refused until it passes.",
    )
    login_window_seconds: float = Field(default=60, gt=0, description="The rate limit's window.")
    drain_seconds: float = Field(
        default=30, ge=0, description="On shutdown: how long running queries may finish."
    )


class TableSettings(BaseModel):
    """How product tables are kept healthy (write-audit-publish, ``mesh maintain``)."""

    model_config = ConfigDict(extra="forbid")

    rejected_batch_retention: str = Field(
        default="24h",
        description="How long a batch the gate blocked stays on its audit branch for "
        "inspection (the branch's Iceberg max-ref-age-ms), readable by any engine given the "
        "warehouse; then the product's next publication or `mesh maintain` removes it with its "
        "files. A batch blocked for personal data is removed at once, whatever this says.",
        examples=["24h", "90m", "7d"],
    )

    @field_validator("rejected_batch_retention")
    @classmethod
    def _duration(cls, text: str) -> str:
        parse_duration(text)  # ValueError naming the accepted form
        return text

    @property
    def rejected_retention(self) -> timedelta:
        return parse_duration(self.rejected_batch_retention)


class OrchestrationSettings(BaseModel):
    """How often the Dagster daemon evaluates each domain's sensors (orchestration.py)."""

    model_config = ConfigDict(extra="forbid")

    sensor_interval_seconds: int = Field(
        default=60,
        ge=5,
        description="A consuming domain's sensor looks for new publications of its inputs at "
        "most this often: the longest a consumer waits for a publication to start its run.",
        examples=[60, 30],
    )
    sla_interval_seconds: int = Field(
        default=300,
        ge=5,
        description="Each domain's SLA monitor evaluates freshness (and acknowledges batches a "
        "dead run committed) at most this often.",
        examples=[300, 60],
    )


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
    dbt_warm: bool = Field(
        default=True,
        description="Start dbt from a worker that has imported it already (~3 s less per dbt "
        "invocation): one per user and dbt installation, started on first use, gone after 10 "
        "minutes unused (mesh_platform/dbt/warm.py). false: every dbt invocation is a new "
        "process, as `dbt` on the command line.",
        examples=[True, False],
    )
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    tables: TableSettings = Field(default_factory=TableSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
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
