"""Start-up checks of the production profile: every server answers, before any work starts.

A mistyped host, a wrong password or a missing bucket would otherwise surface as a stack trace
in the middle of a run (after dbt has built, before publication). These checks run once per
process when the catalog or the Dagster instance is first opened, and in ``mesh doctor``; each
failure names what was tried (host, port, database, user, endpoint, bucket) and never a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from mesh_platform.config import Mesh
from mesh_platform.errors import MeshError
from mesh_platform.storage.warehouse import arrow_filesystem, s3_properties
from mesh_platform.urls import parse_url, pg_connect_args, url_secrets

CONNECT_TIMEOUT_S = 5


class ServiceUnavailableError(MeshError):
    """A server of the deployment profile cannot be reached or refuses the mesh."""


@dataclass(frozen=True)
class Probe:
    service: str  # what it is for
    target: str  # what was tried, without secrets
    ok: bool
    detail: str = ""


def _describe_pg(url: str) -> str:
    parsed = parse_url(url)
    return (
        f"PostgreSQL {parsed.host or 'localhost'}:{parsed.port or 5432}"
        f"/{parsed.database or '?'} as user {parsed.username or '?'}"
    )


def _scrub(message: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return " ".join(message.split())


def probe_postgres(service: str, url: str) -> Probe:
    import psycopg2  # heavy: ~0.1 s, and only the production profile probes PostgreSQL

    target = _describe_pg(url)
    try:
        conn = psycopg2.connect(**pg_connect_args(url), connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg2.Error as exc:
        return Probe(service, target, False, _scrub(str(exc), *url_secrets(url)))
    conn.close()
    return Probe(service, target, True)


def probe_s3(mesh: Mesh) -> Probe:
    from pyarrow import fs  # heavy: pyarrow (~0.4 s), and only the production profile's S3

    props = s3_properties(mesh)
    location = urlsplit(mesh.warehouse)
    endpoint = props.get("s3.endpoint", "AWS S3")
    target = f"bucket {location.netloc} at {endpoint}"
    if "s3.access-key-id" not in props:
        return Probe(
            "warehouse", target, False, "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set"
        )
    try:
        filesystem = arrow_filesystem(props)
        info = filesystem.get_file_info(location.netloc)
    except OSError as exc:
        return Probe(
            "warehouse", target, False, _scrub(str(exc), props.get("s3.secret-access-key"))
        )
    if info.type == fs.FileType.NotFound:
        return Probe("warehouse", target, False, "the bucket does not exist")
    return Probe("warehouse", target, True)


def probes(mesh: Mesh) -> list[Probe]:
    """Every server the mesh's profile uses, probed (the local profile has none)."""
    mesh.check_profile()
    if not mesh.production:
        return []
    assert mesh.postgres_url is not None  # check_profile
    return [
        probe_postgres("Dagster instance storage", mesh.postgres_url),
        probe_postgres("Iceberg catalog", mesh.catalog_uri),
        probe_s3(mesh),
    ]


_CHECKED: set[tuple[str, str, str]] = set()


def check(mesh: Mesh) -> None:
    """Raise one error naming every server that does not answer (once per process)."""
    key = (mesh.catalog_uri, mesh.warehouse, mesh.postgres_url or "")
    if not mesh.production or key in _CHECKED:
        mesh.check_profile()
        return
    failed = [p for p in probes(mesh) if not p.ok]
    if failed:
        listing = "; ".join(f"{p.service}: {p.target}: {p.detail}" for p in failed)
        raise ServiceUnavailableError(
            f"the production profile cannot start: {listing}",
            fix="check the server is running and the MESH_POSTGRES_URL / MESH_CATALOG__URI / "
            "MESH_S3_ENDPOINT / AWS_* variables (`mesh doctor` lists what is tried; for the "
            "loopback servers: scripts/services.sh start, then source .services/env)",
        )
    _CHECKED.add(key)
