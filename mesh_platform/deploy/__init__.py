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

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mesh_platform.errors import MeshError


@dataclass(frozen=True)
class GeneratedFile:
    """One file to write: its text and its permission bits (0600 for files holding secrets)."""

    text: str
    mode: int = 0o644


def _write_atomically(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; never wider than asked, even briefly
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_files(output: Path, files: Mapping[str, GeneratedFile], *, what: str) -> list[Path]:
    """Write ``files`` (paths relative to ``output``, created if missing); their paths.

    MeshError naming the directory and the fix when it cannot be written."""
    output = Path(output)
    written = []
    try:
        for relative, generated in files.items():
            path = output / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, generated.text, generated.mode)
            written.append(path)
    except OSError as exc:
        raise MeshError(
            f"cannot write the {what} to {output}: {exc.strerror or exc}",
            fix="choose a writable directory for --output (it is created if missing)",
            path=exc.filename or output,
        ) from exc
    return written
