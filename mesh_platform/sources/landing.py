"""A verified raw landing: Parquet files written aside, verified, swapped in, and checked again
against their manifest (``_landing.json``: per file its rows, size, SHA-256 and columns) before
every use; a file that fails is moved to ``_quarantine/<time>/`` beside the raw area.

The source (:mod:`mesh_platform.sources.tpch`) decides what to generate; this module keeps what
was landed honest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mesh_platform.config import PRIVATE_DIR_MODE, make_private_dir
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import format_validation_error

LANDING_FILE = "_landing.json"
MANIFEST_VERSION = 2
# Files that failed verification go to <domain state>/_quarantine/<UTC time>/, beside raw/.
QUARANTINE_DIR = "_quarantine"


def file_name(table: str) -> str:
    return f"{table}.parquet"


class LandedFile(BaseModel):
    """One landed table as the manifest records it: what every build checks its file against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="File name in the raw area.", examples=["lineitem.parquet"])
    rows: int = Field(ge=0, description="Row count, from the Parquet footer.")
    size_bytes: int = Field(ge=0, description="File size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the whole file.")
    columns: dict[str, str] = Field(
        description="Column -> DuckDB type, in file order.", examples=[{"o_orderkey": "BIGINT"}]
    )


class LandingManifest(BaseModel):
    """The content of ``_landing.json``: which source landed what, file by file."""

    model_config = ConfigDict(extra="forbid")

    manifest_version: Literal[2]
    generator: str
    generator_version: int
    scale_factor: float
    tables: dict[str, LandedFile]

    @model_validator(mode="after")
    def _file_names(self) -> LandingManifest:
        # Paths are always derived from table names; a manifest naming other files is not ours.
        if wrong := [t for t, f in self.tables.items() if f.file != file_name(t)]:
            raise ValueError(f"file names do not match their tables: {', '.join(wrong)}")
        return self

    def describes(
        self, generator: str, version: int, tables: tuple[str, ...], scale_factor: float
    ) -> bool:
        """Whether this manifest is the landing wanted (otherwise it is replaced, not repaired)."""
        return (
            self.generator == generator
            and self.generator_version == version
            and self.scale_factor == scale_factor
            and sorted(self.tables) == sorted(tables)
        )


@dataclass(frozen=True)
class Finding:
    """A landed file (or the manifest) that failed verification, and what became of it."""

    path: Path
    problem: str
    moved_to: Path | None = None

    def line(self) -> str:
        return f"{self.path}: {self.problem}" + (
            f"; moved to {self.moved_to}" if self.moved_to else ""
        )


def read_manifest(raw_dir: Path) -> tuple[LandingManifest | None, str | None]:
    """The landing manifest, or why there is none usable: ``(None, None)`` when absent,
    ``(None, reason)`` when unreadable, corrupt or of another format."""
    path = raw_dir / LANDING_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({exc})"
    try:
        content = json.loads(text)
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    if isinstance(content, dict) and "manifest_version" not in content:
        return None, "predates verified landings (no manifest_version)"
    try:
        return LandingManifest.model_validate(content), None
    except ValidationError as exc:
        return None, f"is not a valid landing manifest ({format_validation_error(exc)})"


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:  # streamed in blocks: ~0.1 s for SF 1 lineitem (149 MB)
        return hashlib.file_digest(f, "sha256").hexdigest()


def _footer(conn: duckdb.DuckDBPyConnection, path: Path) -> tuple[int, dict[str, str]]:
    """Row count and columns from the Parquet footer (no data page is read)."""
    rows = conn.execute("SELECT num_rows FROM parquet_file_metadata(?)", [str(path)]).fetchone()
    relation = conn.read_parquet(str(path))
    return int(rows[0]), dict(zip(relation.columns, map(str, relation.types), strict=True))


def describe_file(conn: duckdb.DuckDBPyConnection, path: Path) -> LandedFile:
    """The manifest entry of a file just written (raises if it is not readable Parquet)."""
    rows, columns = _footer(conn, path)
    return LandedFile(
        file=path.name,
        rows=rows,
        size_bytes=path.stat().st_size,
        sha256=sha256_of(path),
        columns=columns,
    )


def _schema_difference(want: dict[str, str], got: dict[str, str]) -> str:
    parts = [f"{c} missing" for c in want if c not in got]
    parts += [f"{c} not in the landing" for c in got if c not in want]
    parts += [f"{c} is {got[c]}, expected {t}" for c, t in want.items() if c in got and got[c] != t]
    return "; ".join(parts) or "columns in another order"


class UnverifiedFile(Exception):
    """A landed file that does not match its manifest entry; the message says how."""


def verify_file(conn: duckdb.DuckDBPyConnection, path: Path, expected: LandedFile) -> LandedFile:
    """What ``path`` holds, read from the file itself, when it is exactly as landed; otherwise
    :class:`UnverifiedFile` saying what differs (expected vs found).

    Cheap checks first, for a precise message: present, Parquet footer readable, columns, row
    count (all from the footer, no data page read); then the SHA-256 of the whole file, the one
    check that catches any changed byte (a rewritten value in a same-size file). Size and mtime
    are no shortcut: a copy or a tool can keep both.
    """
    if not path.is_file():
        raise UnverifiedFile(
            f"missing (expected {expected.rows:,} rows, {expected.size_bytes:,} bytes)"
        )
    size: int | None = None
    try:
        size = path.stat().st_size
        rows, columns = _footer(conn, path)
    except (OSError, duckdb.Error) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        found = f"{size:,} bytes" if size is not None else "size unknown"
        raise UnverifiedFile(
            f"not a readable Parquet file ({reason}): {found}, "
            f"expected {expected.size_bytes:,} bytes"
        ) from exc
    if list(columns.items()) != list(expected.columns.items()):  # order matters too
        difference = _schema_difference(expected.columns, columns)
        raise UnverifiedFile(f"schema differs from the landing: {difference}")
    if rows != expected.rows:
        raise UnverifiedFile(f"{rows:,} rows, expected {expected.rows:,}")
    try:
        digest = sha256_of(path)
    except OSError as exc:
        raise UnverifiedFile(f"cannot be read ({exc})") from exc
    if digest != expected.sha256:
        raise UnverifiedFile(
            f"content differs from the landing (same row count and schema; sha256 "
            f"{digest[:16]}..., expected {expected.sha256[:16]}...; {size:,} bytes, expected "
            f"{expected.size_bytes:,})"
        )
    return LandedFile(file=path.name, rows=rows, size_bytes=size, sha256=digest, columns=columns)


def verify_landing(
    raw_dir: Path, manifest: LandingManifest, tables: Iterable[str]
) -> tuple[dict[str, LandedFile], list[Finding]]:
    """Check each table's file against the manifest: the verified files (as read from them),
    and every problem found."""
    verified: dict[str, LandedFile] = {}
    findings: list[Finding] = []
    conn = connect()
    try:
        for table in tables:
            path = raw_dir / file_name(table)
            try:
                verified[table] = verify_file(conn, path, manifest.tables[table])
            except UnverifiedFile as exc:
                findings.append(Finding(path, str(exc)))
    finally:
        conn.close()
    return verified, findings


def quarantine(raw_dir: Path, paths: Iterable[Path]) -> dict[Path, Path]:
    """Move ``paths`` into a new ``_quarantine/<UTC time>/`` folder beside ``raw_dir``: files
    that failed verification are kept for inspection, never deleted. Where each went."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return {}
    root = make_private_dir(raw_dir.parent / QUARANTINE_DIR)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    folder, n = root / stamp, 1
    while True:
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
            break
        except FileExistsError:
            n += 1
            folder = root / f"{stamp}-{n}"
    moved = {}
    for path in paths:
        os.replace(path, folder / path.name)
        moved[path] = folder / path.name
    return moved


def swap_in(staging: Path, raw_dir: Path) -> None:
    """Replace ``raw_dir`` by ``staging``: the new landing complete, or the old one restored.

    Two renames, not one (a directory cannot atomically replace a non-empty one): for the
    instant between them the raw area is absent; runs of a domain are serialised (its pool).
    """
    old = raw_dir.with_name(f".raw-old-{os.getpid()}") if raw_dir.exists() else None
    if old is not None:
        os.replace(raw_dir, old)
    try:
        os.replace(staging, raw_dir)
    except BaseException:
        if old is not None:
            os.replace(old, raw_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
