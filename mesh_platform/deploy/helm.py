"""Domains as separate user-code deployments on Kubernetes: values for Dagster's official Helm
charts, derived from workspace.yaml and the local instance's settings (``mesh deploy helm``).

Two files, for two releases (Dagster's "separately deploying user code" layout), and the query
service's manifests (:mod:`mesh_platform.deploy.serve`, ``mesh-serve.yaml``):

- ``values-user-deployments.yaml`` for ``dagster/dagster-user-deployments``: one gRPC code
  server per workspace location (domain), so each domain ships and restarts on its own;
- ``values.yaml`` for ``dagster/dagster``: webserver and daemon, with the user-code subchart
  disabled and the workspace pointing at the domains' services; runs launched as Kubernetes
  jobs (K8sRunLauncher); the instance on an external PostgreSQL; the same run queue and pool
  limits as the local instance (one run and one writer per domain at a time).

Keys follow the charts of Dagster 1.13 (the chart version equals the Dagster version the
platform pins). No secret is written: the mesh's credentials come from one Kubernetes secret
(``envSecrets``), the instance's PostgreSQL password from ``global.postgresqlSecretName``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mesh_platform.config import Mesh
from mesh_platform.deploy import GeneratedFile, write_files
from mesh_platform.deploy.serve import STATE_CLAIM, TLS_SECRET, serve_manifests
from mesh_platform.errors import MeshError
from mesh_platform.instance import DAGSTER_YAML
from mesh_platform.workspace import check_workspace

CHART_VERSION = "1.13"
WORKDIR = "/opt/mesh"  # where the image holds the mesh checkout (its root: mesh.yaml)
GRPC_PORT = 3030
DEFAULT_SECRET = "mesh-production"
POSTGRES_SECRET = "dagster-postgresql-secret"  # the chart's default name; key postgresql-password
SECRET_KEYS = (
    "MESH_POSTGRES_URL", "MESH_CATALOG__URI", "MESH_CATALOG__WAREHOUSE", "MESH_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "MESH_PII_SALT",
)  # fmt: skip


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Image:
        """``REPO:TAG`` (the repository may name a registry with a port)."""
        repository, _, tag = text.rpartition(":")
        if not repository or not tag or "/" in tag:
            raise MeshError(
                f"image {text!r} is not REPO:TAG",
                fix="pass --image registry.example.com/mesh:1.4.2 (a unique tag per release: "
                "runs launched from a deployment then use the very same code)",
            )
        return cls(repository, tag)


def default_image() -> str:
    try:
        version = metadata.version("mesh-platform")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    return f"mesh-platform:{version}"


def k8s_name(domain: str) -> str:
    """A Kubernetes object name (RFC 1123: no '_') for a domain's deployment and service."""
    return re.sub(r"[^a-z0-9-]", "-", domain.lower()).strip("-")


def _instance_settings() -> dict[str, Any]:
    """The local instance's dagster.yaml (mesh_platform/instance.py), the source of the run
    queue, pool, retry and monitoring settings mirrored on Kubernetes."""

    return yaml.safe_load(DAGSTER_YAML) or {}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(str(k)): _camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


def _postgres(mesh: Mesh) -> tuple[dict[str, Any], list[str]]:
    """The chart's external PostgreSQL (host, port, user, database; never the password) from
    the instance's URL (MESH_POSTGRES_URL), else the catalog's when it is PostgreSQL."""
    from sqlalchemy.engine import make_url  # heavy: sqlalchemy (~0.5 s), only for a SQL catalog

    candidates = [mesh.postgres_url, mesh.catalog_uri]
    for candidate in candidates:
        if candidate and candidate.startswith("postgresql"):
            url = make_url(candidate)
            return {
                "enabled": False,
                "postgresqlHost": url.host or "localhost",
                "postgresqlUsername": url.username or "dagster",
                "postgresqlDatabase": url.database or "dagster",
                "service": {"port": url.port or 5432},
            }, []
    return {
        "enabled": False,
        "postgresqlHost": "CHANGE-ME",
        "postgresqlUsername": "dagster",
        "postgresqlDatabase": "dagster",
        "service": {"port": 5432},
    }, [
        "no PostgreSQL URL (MESH_POSTGRES_URL, or a postgresql MESH_CATALOG__URI): "
        "postgresql.postgresqlHost is CHANGE-ME in values.yaml"
    ]


def user_deployment_values(mesh: Mesh, image: Image, secret: str) -> dict[str, Any]:

    deployments = []
    for location in check_workspace(mesh):
        deployments.append(
            {
                "name": k8s_name(location.name),
                "image": {
                    "repository": image.repository,
                    "tag": image.tag,
                    "pullPolicy": "IfNotPresent",
                },
                "dagsterApiGrpcArgs": [
                    "--module-name",
                    location.module,
                    "--working-directory",
                    WORKDIR,
                    "--location-name",
                    location.name,
                ],
                "port": GRPC_PORT,
                "env": [
                    {"name": "MESH_PROFILE", "value": "production"},
                    {"name": "MESH_ROOT", "value": WORKDIR},
                ],
                "envSecrets": [{"name": secret}],
                "includeConfigInLaunchedRuns": {"enabled": True},
                "labels": {"mesh/domain": location.name},
            }
        )
    return {"deployments": deployments}


def dagster_values(
    mesh: Mesh, user_values: dict[str, Any], secret: str
) -> tuple[dict[str, Any], list[str]]:

    instance = _instance_settings()
    postgresql, warnings = _postgres(mesh)
    names = {k8s_name(loc.name): loc.name for loc in check_workspace(mesh)}
    servers = [
        {"host": d["name"], "port": d["port"], "name": names[d["name"]]}
        for d in user_values["deployments"]
    ]
    concurrency = _camel_keys(instance.get("concurrency") or {})
    values: dict[str, Any] = {
        "global": {"postgresqlSecretName": POSTGRES_SECRET},
        "generatePostgresqlPasswordSecret": False,
        "postgresql": postgresql,
        "dagster-user-deployments": {"enabled": True, "enableSubchart": False},
        "dagsterWebserver": {"workspace": {"enabled": True, "servers": servers}},
        "runLauncher": {
            "type": "K8sRunLauncher",
            "config": {"k8sRunLauncher": {"envSecrets": [{"name": secret}]}},
        },
        "dagsterDaemon": {
            "enabled": True,
            "runCoordinator": {"enabled": True, "type": "QueuedRunCoordinator"},
            "runRetries": _camel_keys(instance.get("run_retries") or {"enabled": False}),
            "runMonitoring": _camel_keys(instance.get("run_monitoring") or {"enabled": True}),
        },
        "concurrency": {"enabled": True, **concurrency},
        "telemetry": {"enabled": bool((instance.get("telemetry") or {}).get("enabled"))},
    }
    return values, warnings


def _header(chart: str, what: str, secret: str) -> str:
    keys = ", ".join(SECRET_KEYS)
    return (
        f"# Values for the {chart} Helm chart (keys of Dagster's chart {CHART_VERSION}.x): "
        f"{what}.\n"
        "# Generated by `mesh deploy helm` from workspace.yaml and mesh_platform/instance.py: "
        "regenerate, do not edit.\n"
        f"# No secrets here: create the Kubernetes secret '{secret}' with {keys},\n"
        f"# and '{POSTGRES_SECRET}' with key postgresql-password (the instance's PostgreSQL).\n"
    )


@dataclass(frozen=True)
class HelmConfig:
    files: dict[str, GeneratedFile]
    locations: list[str]
    warnings: list[str]


def helm_config(
    mesh: Mesh, *, image: str | None = None, secret: str = DEFAULT_SECRET
) -> HelmConfig:
    """Both values files of ``mesh deploy helm``, rendered (nothing written)."""
    parsed = Image.parse(image or default_image())
    users = user_deployment_values(mesh, parsed, secret)
    dagster, warnings = dagster_values(mesh, users, secret)

    def dump(data: dict[str, Any]) -> str:
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    files = {
        "values-user-deployments.yaml": GeneratedFile(
            _header("dagster/dagster-user-deployments", "one code server per domain", secret)
            + dump(users)
        ),
        "values.yaml": GeneratedFile(
            _header("dagster/dagster", "webserver, daemon, K8sRunLauncher", secret) + dump(dagster)
        ),
        "mesh-serve.yaml": GeneratedFile(
            "# The query service (mesh serve): `kubectl apply -f mesh-serve.yaml`.\n"
            "# Generated by `mesh deploy helm`: regenerate, do not edit. No secrets here: it\n"
            f"# reads the secret '{secret}' (as the code servers do), the TLS secret\n"
            f"# '{TLS_SECRET}' (tls.crt, tls.key); tokens and audit on the claim '{STATE_CLAIM}'.\n"
            + yaml.safe_dump_all(
                serve_manifests(f"{parsed.repository}:{parsed.tag}", secret, workdir=WORKDIR),
                sort_keys=False,
            )
        ),
    }
    locations = [server["name"] for server in dagster["dagsterWebserver"]["workspace"]["servers"]]
    return HelmConfig(files, locations, warnings)


def write_helm(
    mesh: Mesh, output: Path, *, image: str | None = None, secret: str = DEFAULT_SECRET
) -> tuple[HelmConfig, list[Path]]:
    """``mesh deploy helm --output DIR``: render, then write both values files."""
    config = helm_config(mesh, image=image, secret=secret)
    return config, write_files(output, config.files, what="Helm values")
