"""DuckDB connections with extensions loaded from the installed wheels, never downloaded.

DuckDB would fetch ``iceberg``/``avro``/``tpch`` from the internet on first use; this machine (and
CI) has no network. The ``duckdb-extension-*`` wheels ship the binaries; we load them by path with
autoinstall off. ``avro`` must load before ``iceberg`` or iceberg tries to download it.
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path

import duckdb

from mesh_platform.addressing import quote_literal
from mesh_platform.errors import MeshError

# Load order matters: iceberg depends on avro. httpfs reads and writes s3:// (production).
KNOWN_EXTENSIONS = ("avro", "iceberg", "tpch", "httpfs")


@cache
def extension_path(name: str) -> Path:
    """Path of ``<name>.duckdb_extension`` inside its ``duckdb-extension-<name>`` wheel."""
    version = duckdb.__version__
    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError as exc:
        raise MeshError(
            f"DuckDB extension '{name}' is not installed (package duckdb-extension-{name})",
            fix="install the project with scripts/bootstrap.sh (uv sync --frozen)",
        ) from exc
    root = Path(package.__file__).parent / "extensions"
    path = root / f"v{version}" / f"{name}.duckdb_extension"
    if not path.is_file():
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise MeshError(
            f"DuckDB extension '{name}' for DuckDB v{version} not found at {path} "
            f"(the wheel has: {', '.join(found) or 'nothing'})",
            fix=f"pin duckdb-extension-{name} to the same version as duckdb ({version})",
            path=path,
        )
    return path


def load_extensions(conn: duckdb.DuckDBPyConnection, *names: str) -> None:
    conn.execute("SET autoinstall_known_extensions = false")
    conn.execute("SET autoload_known_extensions = false")
    wanted = set(names)
    if "iceberg" in wanted:
        wanted.add("avro")
    for name in KNOWN_EXTENSIONS:
        if name in wanted:
            conn.execute(f"LOAD {quote_literal(str(extension_path(name)))}")


def connect(
    database: str | Path = ":memory:", *, extensions: tuple[str, ...] = (), read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open DuckDB with the given extensions loaded offline."""
    conn = duckdb.connect(str(database), read_only=read_only)
    try:
        load_extensions(conn, *extensions)
    except Exception:
        conn.close()
        raise
    return conn
