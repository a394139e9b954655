"""Where table files live: a local folder (``file://``) or an S3-compatible bucket (``s3://``).

One place turns the mesh's settings into what each engine needs to reach the warehouse:
pyiceberg's FileIO properties (``s3.endpoint``...), a DuckDB secret for the httpfs extension,
and a pyarrow file system for the few reads the platform makes itself (metadata JSON, staged
files). Credentials come from the standard AWS variables of the environment (or the pyiceberg
properties derived from them), never from files. Every other module asks this one, so the
local and production profiles differ in configuration only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from mesh_platform.addressing import quote_literal
from mesh_platform.duckdb_ext import load_extensions
from mesh_platform.errors import MeshError

if TYPE_CHECKING:
    import duckdb

    from mesh_platform.config import Mesh

DEFAULT_REGION = "us-east-1"


def is_remote(location: str) -> bool:
    return urlparse(location).scheme in ("s3", "s3a")


def local_path(location: str) -> Path:
    if "://" not in location:  # a plain path: '#', '?' and '%' are characters of its name
        return Path(location)
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        raise MeshError(
            f"warehouse location {location!r} is not a local path",
            fix="this operation needs a local warehouse (file://), or the production "
            "profile's object store configured (catalog.warehouse: s3://...)",
        )
    return Path(unquote(parsed.path))


def engine_path(location: str) -> str:
    """The location as DuckDB and pyiceberg read it: a plain local path, or the s3:// URL.
    (DuckDB reads local paths directly; a file:// URL sends it through a slower generic path.)"""
    return location if is_remote(location) else str(local_path(location))


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def s3_properties(mesh: Mesh) -> dict[str, str]:
    """pyiceberg FileIO properties of an s3:// warehouse (empty for a local one)."""
    if not is_remote(mesh.warehouse):
        return {}
    props = {"s3.region": os.environ.get("AWS_REGION") or DEFAULT_REGION}
    if mesh.settings.s3_endpoint:
        props["s3.endpoint"] = mesh.settings.s3_endpoint
    if key := os.environ.get("AWS_ACCESS_KEY_ID"):
        props["s3.access-key-id"] = key
    if secret := os.environ.get("AWS_SECRET_ACCESS_KEY"):
        props["s3.secret-access-key"] = secret
    if token := os.environ.get("AWS_SESSION_TOKEN"):
        props["s3.session-token"] = token
    return props


def configure_duckdb(conn: duckdb.DuckDBPyConnection, properties: Mapping[str, str]) -> None:
    """Give a DuckDB connection access to the object store described by pyiceberg-style
    ``properties`` (a no-op without ``s3.*`` properties): the httpfs extension, loaded from its
    wheel, and a temporary (in-memory) secret. Call before locking the configuration."""
    if not any(k.startswith("s3.") for k in properties):
        return
    load_extensions(conn, "httpfs")
    options = [
        "TYPE s3",
        f"REGION {quote_literal(properties.get('s3.region', DEFAULT_REGION))}",
    ]
    if key := properties.get("s3.access-key-id"):
        options.append(f"KEY_ID {quote_literal(key)}")
        options.append(f"SECRET {quote_literal(properties.get('s3.secret-access-key', ''))}")
    if token := properties.get("s3.session-token"):
        options.append(f"SESSION_TOKEN {quote_literal(token)}")
    if endpoint := properties.get("s3.endpoint"):
        parsed = urlparse(endpoint)
        options.append(f"ENDPOINT {quote_literal(parsed.netloc or parsed.path)}")
        options.append("URL_STYLE 'path'")
        options.append(f"USE_SSL {'false' if parsed.scheme == 'http' else 'true'}")
    conn.execute(f"CREATE OR REPLACE TEMPORARY SECRET mesh_warehouse ({', '.join(options)})")


def arrow_filesystem(properties: Mapping[str, str]) -> Any:
    """A pyarrow S3 file system from pyiceberg-style properties (paths without the scheme);
    one per distinct configuration in a process (it holds a connection pool)."""
    return _arrow_filesystem(tuple(sorted((k, v) for k, v in properties.items() if k[:3] == "s3.")))


@functools.lru_cache(maxsize=8)
def _arrow_filesystem(items: tuple[tuple[str, str], ...]) -> Any:
    from pyarrow import fs  # heavy: pyarrow (~0.4 s), only for an object store

    properties = dict(items)
    endpoint = properties.get("s3.endpoint")
    parsed = urlparse(endpoint) if endpoint else None
    return fs.S3FileSystem(
        access_key=properties.get("s3.access-key-id"),
        secret_key=properties.get("s3.secret-access-key"),
        session_token=properties.get("s3.session-token"),
        region=properties.get("s3.region", DEFAULT_REGION),
        endpoint_override=(parsed.netloc or parsed.path) if parsed else None,
        scheme=parsed.scheme if parsed and parsed.scheme else "https",
        connect_timeout=5,
        request_timeout=30,
    )


def _key(location: str) -> str:
    parsed = urlparse(location)
    return f"{parsed.netloc}{parsed.path}"


def read_bytes(location: str, properties: Mapping[str, str]) -> bytes:
    if not is_remote(location):
        return local_path(location).read_bytes()
    with arrow_filesystem(properties).open_input_stream(_key(location)) as stream:
        return stream.read()


def delete(location: str, properties: Mapping[str, str]) -> None:
    """Remove one file (nothing if it is gone)."""
    if not is_remote(location):
        local_path(location).unlink(missing_ok=True)
        return
    filesystem = arrow_filesystem(properties)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_file(_key(location))


def list_files(location: str, properties: Mapping[str, str]) -> list[tuple[str, float]]:
    """Every file under a folder location (recursively): (location of the same kind as the
    folder's, modification time in epoch seconds)."""
    if not is_remote(location):
        root = local_path(location)
        if not root.is_dir():
            return []
        return sorted((str(p.resolve()), p.stat().st_mtime) for p in root.rglob("*") if p.is_file())
    from pyarrow import fs  # heavy: pyarrow (~0.4 s), only for an object store

    filesystem = arrow_filesystem(properties)
    parsed = urlparse(location)
    selector = fs.FileSelector(_key(location).rstrip("/"), recursive=True, allow_not_found=True)
    return sorted(
        (f"{parsed.scheme}://{info.path}", info.mtime.timestamp() if info.mtime else 0.0)
        for info in filesystem.get_file_info(selector)
        if info.type == fs.FileType.File
    )


def normalise(location: str) -> str:
    """One spelling per file, to compare locations: an s3:// URL, or a resolved local path."""
    return location if is_remote(location) else str(local_path(location).resolve())


def new_data_folder(table_location: str) -> str:
    """A fresh folder for one batch's files under the table's ``data/`` (created if local)."""
    folder = join(engine_path(table_location), "data")
    if not is_remote(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
    return folder


def new_data_file(table_location: str) -> str:
    return join(new_data_folder(table_location), f"{uuid.uuid4()}.parquet")


class LocationError(MeshError):
    """A location from catalog or table metadata lies outside the table's warehouse folder."""


def table_folder(root: str, namespace: str, table: str) -> str:
    """The folder of one table: ``<warehouse>/<namespace>/<table>`` (where pyiceberg puts a
    table created without a location in a namespace without one, as the platform does)."""
    return join(root, namespace, table)


def _split(location: object) -> tuple[str, tuple[str, ...], str] | None:
    """(file system, path components, the location as engines should read it), normalised for
    comparison, or None for a location the platform never writes.

    s3:// URLs: the bucket and the key's parts; an empty, '.' or '..' part, a '%' escape, a
    query or a fragment is refused (no normalisation can say what a server makes of them).
    Local paths (plain, or file:// stripped as the read path and pyiceberg do: no unquoting):
    resolved with os.path.realpath (relative ones from the working directory, as every engine
    would read them), so '..' and symlinks cannot lead out.
    """
    if not isinstance(location, str) or not location or "\x00" in location:
        return None
    if is_remote(location):
        parsed = urlparse(location)
        if not parsed.netloc or parsed.params or parsed.query or parsed.fragment:
            return None
        parts = parsed.path.split("/")[1:]
        if parts and parts[-1] == "":
            parts.pop()  # a folder's trailing slash
        if any(p in ("", ".", "..") or "%" in p or "\\" in p for p in parts):
            return None
        system = f"{parsed.scheme}://{parsed.netloc}"
        return system, tuple(parts), "/".join([system, *parts])
    path = location.removeprefix("file://")
    if "://" in path:  # another scheme (http, gs...): nothing the platform writes
        return None
    real = os.path.realpath(path)
    return "file", Path(real).parts, real


def inside(folder: str, location: str) -> str | None:
    """``location`` as engines should read it (the real local path, or the s3:// URL) if it is
    ``folder`` or lies inside it, else None. Both are normalised first and compared by path
    components, never as strings: ``/w/sales/orders2`` is not inside ``/w/sales/orders``.

    The one containment rule of the platform: publication (a table's location inside the
    warehouse) and every read (metadata file, table location, manifests, data files inside the
    table's folder) use it."""
    root, target = _split(folder), _split(location)
    if root is None or target is None or root[0] != target[0]:
        return None
    if target[1][: len(root[1])] != root[1]:
        return None
    return target[2]


def contains(root: str, location: str) -> bool:
    """Whether ``location`` lies inside the folder ``root`` (no ``..`` or symlink escapes)."""
    return inside(root, location) is not None


def check_inside(folder: str, location: str, *, product: str, what: str) -> str:
    """``location`` normalised (see :func:`inside`), or :class:`LocationError` naming the
    product, the path and the fix: table metadata is data anybody with write access to the
    catalog or the warehouse can change, so no path in it is read unchecked."""
    checked = inside(folder, location)
    if checked is None:
        raise LocationError(
            f"product {product}: {what} {location!r} lies outside the table's warehouse folder "
            f"{folder}; refused before reading anything there",
            fix="the table's metadata points outside its warehouse folder; republish it through "
            f"the platform (`mesh build --domain {product.split('.')[0]}`; if the catalog row "
            "itself was altered, drop the table from the catalog first)",
        )
    return checked
