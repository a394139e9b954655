"""Sample source data: TPC-H from DuckDB's own ``dbgen``, plus synthetic personal data.

Nobody in this project wrote the data: ``dbgen`` is the TPC's reference generator, compiled into
DuckDB's tpch extension, deterministic for a given scale factor. On top of it we derive one table
of personal data per customer (name, email, phone) from ``c_custkey`` with plain arithmetic, so
the same key always gets the same contact and later governance has real PII to guard.

Each domain lands only the tables it declares, in its own raw area, as Parquet. Landing is
idempotent and all-or-nothing (written aside, then swapped in; the old landing is restored if
the swap fails). ``_landing.json`` records, per file, its rows, size, SHA-256 and columns; every
build verifies each file against it before use. A file that fails (or that a corrupt manifest
no longer vouches for) is moved to ``_quarantine/<time>/`` beside the raw area and re-landed,
since dbgen regenerates it exactly; a source that cannot regenerate stops the build instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mesh_platform.addressing import quote_literal
from mesh_platform.config import PRIVATE_DIR_MODE, make_private_dir, private_umask
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError, format_validation_error

TPCH_TABLES = (
    "customer",
    "lineitem",
    "nation",
    "orders",
    "part",
    "partsupp",
    "region",
    "supplier",
)
# Synthetic personal data derived from TPC-H keys (see module docstring).
PII_TABLES = ("customer_contact",)
AVAILABLE_TABLES = TPCH_TABLES + PII_TABLES
LANDING_FILE = "_landing.json"
MANIFEST_VERSION = 2
# Files that failed verification go to <domain state>/_quarantine/<UTC time>/, beside raw/.
QUARANTINE_DIR = "_quarantine"
# Bump when the derivation of any table changes, so stale landings are regenerated.
GENERATOR_VERSION = 1

_FIRST_NAMES = [
    "Amara", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jonas",
    "Kavya", "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq",
    "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zofia",
]  # fmt: skip
_LAST_NAMES = [
    "Abebe", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito",
    "Jensen", "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe",
    "Rossi", "Silva", "Tanaka", "Ueda", "Varga", "Weber", "Xu", "Yilmaz", "Zimmermann",
]  # fmt: skip
_MAIL_DOMAINS = ["example.com", "example.org", "example.net", "mail.example"]


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


# Deterministic: arithmetic on c_custkey only (no hash(), whose values DuckDB may change).
CUSTOMER_CONTACT_SQL = f"""
select
    c_custkey,
    first_name || ' ' || last_name as full_name,
    lower(first_name) || '.' || lower(last_name) || '.' || c_custkey::varchar
        || '@' || {_sql_list(_MAIL_DOMAINS)}[1 + (c_custkey * 13) % {len(_MAIL_DOMAINS)}]
        as email,
    '+1-' || lpad((200 + (c_custkey * 7919) % 800)::varchar, 3, '0')
        || '-555-' || lpad((c_custkey % 10000)::varchar, 4, '0') as phone
from (
    select
        c_custkey,
        {_sql_list(_FIRST_NAMES)}[1 + (c_custkey * 31) % {len(_FIRST_NAMES)}] as first_name,
        {_sql_list(_LAST_NAMES)}[1 + (c_custkey * 17 + 5) % {len(_LAST_NAMES)}] as last_name
    from customer
)
order by c_custkey
"""


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
        if wrong := [t for t, f in self.tables.items() if f.file != _file_name(t)]:
            raise ValueError(f"file names do not match their tables: {', '.join(wrong)}")
        return self

    def describes(self, generator: str, tables: tuple[str, ...], scale_factor: float) -> bool:
        """Whether this manifest is the landing wanted (otherwise it is replaced, not repaired)."""
        return (
            self.generator == generator
            and self.generator_version == GENERATOR_VERSION
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


@dataclass(frozen=True)
class Landing:
    """What a domain's raw area holds: every file verified (or just written) this run."""

    raw_dir: Path
    scale_factor: float
    files: dict[str, LandedFile]
    generated: bool
    seconds: float
    findings: tuple[Finding, ...] = ()
    quarantine: Path | None = None

    @property
    def row_counts(self) -> dict[str, int]:
        """Rows per table, read from the files' footers (never from the manifest alone)."""
        return {table: landed.rows for table, landed in self.files.items()}

    def path(self, table: str) -> Path:
        return self.raw_dir / _file_name(table)


@dataclass(frozen=True)
class TpchSource:
    """TPC-H ``dbgen`` plus the synthetic contacts. Deterministic for a scale factor, so a landed
    file that fails verification can be generated again (``regenerable``). A source that cannot
    (a one-off delivery, or a domain that keeps its raw data as found) sets ``regenerable=False``:
    a bad file then stops the build, naming the file and the fix."""

    regenerable: bool = True
    name: str = "duckdb-tpch-dbgen"

    def generate(
        self, staging: Path, tables: tuple[str, ...], scale_factor: float
    ) -> dict[str, int]:
        """Write ``<table>.parquet`` for each table into ``staging``; the row count of each."""
        conn = connect(extensions=("tpch",))
        try:
            conn.execute("CALL dbgen(sf = ?)", [scale_factor])
            if "customer_contact" in tables:
                conn.execute(f"CREATE TABLE customer_contact AS {CUSTOMER_CONTACT_SQL}")
            counts: dict[str, int] = {}
            for table in tables:
                # Table names come from the fixed list (check_tables). COPY takes no bound
                # parameter for its target, so the path is quoted as a literal.
                target_sql = quote_literal(str(staging / _file_name(table)))
                conn.execute(f"COPY {table} TO {target_sql} (FORMAT parquet, COMPRESSION zstd)")
                counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            return counts
        finally:
            conn.close()


TPCH = TpchSource()


def _file_name(table: str) -> str:
    return f"{table}.parquet"


def table_problems(tables: Iterable[str]) -> list[str]:
    """Why a list of raw tables cannot be landed (empty when it can)."""
    tables = list(tables)
    problems = []
    if unknown := [t for t in tables if t not in AVAILABLE_TABLES]:
        problems.append(
            f"unknown table(s) {', '.join(unknown)}; choose among {', '.join(AVAILABLE_TABLES)}"
        )
    if repeated := sorted({t for t in tables if tables.count(t) > 1}):
        problems.append(f"table(s) listed twice: {', '.join(repeated)}")
    if "customer_contact" in tables and "customer" not in tables:
        problems.append("'customer_contact' is derived from 'customer': land both")
    return problems


def check_tables(tables: Iterable[str], *, where: str | None = None) -> tuple[str, ...]:
    tables = tuple(tables)
    if problems := table_problems(tables):
        raise MeshError(
            f"cannot land raw tables: {'; '.join(problems)}",
            fix="fix the raw tables list (raw.tables in the domain's domain.yaml)",
            path=where,
        )
    return tables


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


def _sha256(path: Path) -> str:
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
        sha256=_sha256(path),
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
        digest = _sha256(path)
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
            path = raw_dir / _file_name(table)
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


def _swap_in(staging: Path, raw_dir: Path) -> None:
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


def _unrepairable(raw_dir: Path, source: TpchSource, findings: list[Finding]) -> MeshError:
    listing = "\n".join(f"  - {f.line()}" for f in findings)
    if any(f.path.name == LANDING_FILE for f in findings):
        restore = f"restore {raw_dir / LANDING_FILE} from the source's own copy of the landing"
    else:
        restore = (
            f"restore each file above in {raw_dir} exactly as landed (its rows, size and sha256 "
            f"are in {LANDING_FILE}) from the source's own copy"
        )
    return MeshError(
        f"{len(findings)} raw file(s) in {raw_dir} failed verification and source "
        f"'{source.name}' cannot regenerate them; nothing was built from them:\n{listing}",
        fix=f"{restore}, then run the build again (it verifies them); or, to land the source "
        f"anew, move {raw_dir} aside",
    )  # no path: the message names each file


def _ignore(_message: str) -> None:
    pass


def land_tpch(
    raw_dir: Path,
    tables: Iterable[str],
    scale_factor: float,
    *,
    source: TpchSource = TPCH,
    log: Callable[[str], None] = _ignore,
) -> Landing:
    """Land ``tables`` at ``scale_factor`` as Parquet in ``raw_dir``, or verify the landing
    already there.

    Every call checks each landed file against the manifest (:func:`verify_file`); the
    landing is kept when all pass. A file that fails, or a manifest that cannot be read (its
    files cannot be verified), is re-landed when ``source`` can regenerate it: the bad files are
    moved to ``_quarantine/<time>/`` beside ``raw_dir`` (a file identical to its regenerated
    copy is simply replaced), and each finding goes to ``log``. A source that cannot regenerate
    raises :class:`MeshError` naming every bad file. Landing stays all-or-nothing: written
    aside, verified, swapped in.
    """
    tables = check_tables(tables)
    start = time.perf_counter()
    manifest, manifest_problem = read_manifest(raw_dir)
    manifest_path = raw_dir / LANDING_FILE
    findings: list[Finding] = []
    if manifest is not None and manifest.describes(source.name, tables, scale_factor):
        verified, findings = verify_landing(raw_dir, manifest, tables)
        if not findings:
            seconds = time.perf_counter() - start
            return Landing(raw_dir, scale_factor, verified, generated=False, seconds=seconds)
    elif manifest is None and raw_dir.is_dir():
        present = [t for t in tables if (raw_dir / _file_name(t)).exists()]
        if manifest_problem is not None or present:
            # Without a manifest nothing can be verified: every file present is suspect.
            findings = [
                Finding(
                    manifest_path,
                    f"{manifest_problem or 'is missing'}: the {len(present)} landed file(s) "
                    "cannot be verified against it",
                ),
                *(
                    Finding(raw_dir / _file_name(t), "unverified (no usable manifest)")
                    for t in present
                ),
            ]
    if findings and not source.regenerable:
        raise _unrepairable(raw_dir, source, findings)
    for finding in findings:
        log(f"raw landing: {finding.line()}; re-landing from {source.name}")

    # The raw area holds clear personal data (customer_contact): owner-only, as all state.
    private_umask()
    make_private_dir(raw_dir.parent)
    for stale in raw_dir.parent.glob(".raw-*"):  # left by a landing that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".raw-", dir=raw_dir.parent))
    try:
        try:
            counts = source.generate(staging, tables, scale_factor)
        except (OSError, duckdb.IOException) as exc:
            raise MeshError(
                f"landing raw tables in {raw_dir} failed: {exc}",
                fix="free disk space in the state directory (or fix its permissions), then run "
                "the build again; the previous landing is unchanged",
                path=raw_dir,
            ) from exc
        conn = connect()
        try:
            files = {t: describe_file(conn, staging / _file_name(t)) for t in tables}
        finally:
            conn.close()
        if wrong := [t for t in tables if files[t].rows != counts[t]]:
            raise MeshError(
                f"landing raw tables in {raw_dir}: the Parquet written for {', '.join(wrong)} "
                "does not hold the generated rows",
                fix="check the state directory's disk, then run the build again",
                path=raw_dir,
            )
        landed = LandingManifest(
            manifest_version=MANIFEST_VERSION,
            generator=source.name,
            generator_version=GENERATOR_VERSION,
            scale_factor=scale_factor,
            tables=files,
        )
        (staging / LANDING_FILE).write_text(landed.model_dump_json(indent=2))
        findings = _set_aside(raw_dir, findings, files, log)
        _swap_in(staging, raw_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    moved = [f.moved_to for f in findings if f.moved_to is not None]
    return Landing(
        raw_dir,
        scale_factor,
        files,
        generated=True,
        seconds=time.perf_counter() - start,
        findings=tuple(findings),
        quarantine=moved[0].parent if moved else None,
    )


def _set_aside(
    raw_dir: Path,
    findings: list[Finding],
    regenerated: dict[str, LandedFile],
    log: Callable[[str], None],
) -> list[Finding]:
    """Quarantine the files that failed verification, except those identical to their
    regenerated copy (nothing is lost by replacing them), and the manifest they failed against."""
    by_name = {f.file: f for f in regenerated.values()}
    suspect = []
    for finding in findings:
        new = by_name.get(finding.path.name)
        if new is not None and finding.path.is_file() and _sha256(finding.path) == new.sha256:
            log(f"raw landing: {finding.path} is identical to its regenerated copy: replaced")
        elif finding.path.exists():
            suspect.append(finding.path)
    manifest = raw_dir / LANDING_FILE
    if findings and manifest.exists() and manifest not in suspect:
        suspect.append(manifest)  # what the files failed against (or itself wrong)
    moved = quarantine(raw_dir, suspect)
    for old, new in moved.items():
        log(f"raw landing: moved {old} to {new}")
    return [Finding(f.path, f.problem, moved.get(f.path)) for f in findings]
