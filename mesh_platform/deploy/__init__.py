"""Generated configuration for running the mesh at scale: other engines and Kubernetes.

The mesh's own descriptors, grants, principals and workspace are the source of truth; these
modules translate them into the configuration files of the systems consumers and operators run:

- :mod:`mesh_platform.deploy.trino`: a Trino Iceberg catalog on the mesh's JDBC catalog and
  warehouse, and Trino file-based access control rules expressing every grant (``mesh deploy
  trino``);
- :mod:`mesh_platform.deploy.helm`: values for Dagster's official Helm charts, one user-code
  deployment per domain (``mesh deploy helm``).

Files are rendered completely before any is written, and each is written atomically (a reader
never sees half a file). No generated file holds a password: credentials stay in the
environment (Trino's ``${ENV:VAR}``) or in Kubernetes secrets. The one exception is the salt of
personal-data masks inside Trino's ``rules.json``, which is written readable by its owner only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mesh_platform.errors import MeshError
from mesh_platform.files import write_atomically


@dataclass(frozen=True)
class GeneratedFile:
    """One file to write: its text and its permission bits (0600 for files holding secrets)."""

    text: str
    mode: int = 0o644


def write_files(output: Path, files: Mapping[str, GeneratedFile], *, what: str) -> list[Path]:
    """Write ``files`` (paths relative to ``output``, created if missing); their paths.

    MeshError naming the directory and the fix when it cannot be written."""
    output = Path(output)
    written = []
    try:
        for relative, generated in files.items():
            path = output / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, generated.text, mode=generated.mode)
            written.append(path)
    except OSError as exc:
        raise MeshError(
            f"cannot write the {what} to {output}: {exc.strerror or exc}",
            fix="choose a writable directory for --output (it is created if missing)",
            path=exc.filename or output,
        ) from exc
    return written
