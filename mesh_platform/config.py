"""Mesh-wide settings: one small file (``mesh.yaml``) at the root of the mesh, overridable by env.

Layering follows pyiceberg's habit: file -> environment -> code. Any key can be overridden with a
``MESH_`` variable; nested keys use ``__`` (``MESH_CATALOG__URI=...``). Nothing here is read at
import time: call :func:`load_mesh` where the settings are needed.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mesh_platform.errors import MeshConfigError, StateDirError

MESH_FILE = "mesh.yaml"
ROOT_ENV = "MESH_ROOT"


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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init kwargs; env must win over it.
        return (env_settings, init_settings)


def find_root(start: Path | None = None) -> Path:
    """The mesh root: $MESH_ROOT, else the nearest directory upwards holding mesh.yaml."""
    if env_root := os.environ.get(ROOT_ENV):
        root = Path(env_root).resolve()
        if not (root / MESH_FILE).is_file():
            raise MeshConfigError(
                f"{ROOT_ENV}={env_root} has no {MESH_FILE}",
                fix=f"point {ROOT_ENV} at the directory holding {MESH_FILE}, or unset it",
                path=root,
            )
        return root
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / MESH_FILE).is_file():
            return candidate
    raise MeshConfigError(
        f"no {MESH_FILE} found in {here} or any parent directory",
        fix=f"run the command inside a mesh checkout, or set {ROOT_ENV}",
        path=here,
    )


class Mesh:
    """A loaded mesh: its root, its settings, and every path derived from them.

    One object owns the on-disk layout of the embedded default, so no other module builds a
    state path by hand::

        state/
          dagster/                 DAGSTER_HOME of the persistent instance
          catalog/catalog.db       pyiceberg SqlCatalog (sqlite)
          warehouse/<domain>/...   Iceberg table data, one namespace per domain
          domains/<domain>/raw/    the domain's raw landing zone (Parquet)
          domains/<domain>/<domain>.duckdb
    """

    def __init__(self, root: Path, settings: MeshSettings) -> None:
        self.root = root
        self.settings = settings

    @cached_property
    def state_dir(self) -> Path:
        path = self.settings.state_dir
        return (path if path.is_absolute() else self.root / path).resolve()

    @property
    def domains_dir(self) -> Path:
        return self.root / "domains"

    @property
    def dbt_projects_dir(self) -> Path:
        return self.root / "dbt_projects"

    @property
    def workspace_file(self) -> Path:
        return self.root / "workspace.yaml"

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster"

    @property
    def catalog_uri(self) -> str:
        return self.settings.catalog.uri or f"sqlite:///{self.state_dir / 'catalog' / 'catalog.db'}"

    @property
    def warehouse(self) -> str:
        return self.settings.catalog.warehouse or (self.state_dir / "warehouse").as_uri()

    def domain_state_dir(self, domain: str) -> Path:
        return self.state_dir / "domains" / domain

    def raw_dir(self, domain: str) -> Path:
        return self.domain_state_dir(domain) / "raw"

    def duckdb_path(self, domain: str) -> Path:
        return self.domain_state_dir(domain) / f"{domain}.duckdb"

    def dbt_env(self) -> dict[str, str]:
        """Environment the domains' dbt profiles read (see dbt_projects/*/profiles.yml)."""
        return {"MESH_STATE_DIR": str(self.state_dir)}

    def ensure_state_dir(self) -> Path:
        """Create the state layout, or fail with the path and the fix."""
        try:
            for sub in ("dagster", "catalog", "warehouse", "domains"):
                (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StateDirError(
                f"state directory {self.state_dir} is not writable ({exc.strerror or exc})",
                fix="make it writable, or point the mesh elsewhere with MESH_STATE_DIR=<dir> "
                f"(or state_dir: in {MESH_FILE})",
                path=self.state_dir,
            ) from exc
        return self.state_dir


def _read_mesh_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MeshConfigError(
            f"{MESH_FILE} is not valid YAML: {exc}", fix="fix the YAML syntax", path=path
        ) from exc
    if not isinstance(data, dict):
        raise MeshConfigError(
            f"{MESH_FILE} must be a mapping of settings, got {type(data).__name__}",
            fix="see the keys documented in mesh_platform/config.py (MeshSettings)",
            path=path,
        )
    return data


def load_mesh(root: Path | None = None, **overrides: Any) -> Mesh:
    """Load mesh.yaml at ``root`` (default: :func:`find_root`), apply env, then ``overrides``."""
    root = (root or find_root()).resolve()
    path = root / MESH_FILE
    data = _read_mesh_file(path) if path.is_file() else {}
    try:
        settings = MeshSettings(**data)
        if overrides:
            settings = settings.model_copy(update=overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise MeshConfigError(
            f"invalid mesh settings: {problems}",
            fix=f"correct the key in {MESH_FILE} or the matching MESH_* environment variable",
            path=path,
        ) from exc
    return Mesh(root, settings)
