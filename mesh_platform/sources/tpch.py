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

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from mesh_platform.addressing import quote_literal
from mesh_platform.config import make_private_dir, private_umask
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError
from mesh_platform.sources.landing import (
    LANDING_FILE,
    MANIFEST_VERSION,
    Finding,
    LandedFile,
    LandingManifest,
    describe_file,
    file_name,
    quarantine,
    read_manifest,
    sha256_of,
    swap_in,
    verify_landing,
)

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
        return self.raw_dir / file_name(table)


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
                target_sql = quote_literal(str(staging / file_name(table)))
                conn.execute(f"COPY {table} TO {target_sql} (FORMAT parquet, COMPRESSION zstd)")
                counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            return counts
        finally:
            conn.close()


TPCH = TpchSource()


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
    findings: list[Finding] = []
    if manifest is not None and manifest.describes(
        source.name, GENERATOR_VERSION, tables, scale_factor
    ):
        verified, findings = verify_landing(raw_dir, manifest, tables)
        if not findings:
            seconds = time.perf_counter() - start
            return Landing(raw_dir, scale_factor, verified, generated=False, seconds=seconds)
    elif manifest is None and raw_dir.is_dir():
        findings = _unverifiable(raw_dir, tables, manifest_problem)
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
        files = _generate(source, staging, raw_dir, tables, scale_factor)
        landed = LandingManifest(
            manifest_version=MANIFEST_VERSION,
            generator=source.name,
            generator_version=GENERATOR_VERSION,
            scale_factor=scale_factor,
            tables=files,
        )
        (staging / LANDING_FILE).write_text(landed.model_dump_json(indent=2))
        findings = _set_aside(raw_dir, findings, files, log)
        swap_in(staging, raw_dir)
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


def _unverifiable(
    raw_dir: Path, tables: tuple[str, ...], manifest_problem: str | None
) -> list[Finding]:
    """Without a manifest nothing can be verified: every file present is suspect."""
    present = [t for t in tables if (raw_dir / file_name(t)).exists()]
    if manifest_problem is None and not present:
        return []
    return [
        Finding(
            raw_dir / LANDING_FILE,
            f"{manifest_problem or 'is missing'}: the {len(present)} landed file(s) "
            "cannot be verified against it",
        ),
        *(Finding(raw_dir / file_name(t), "unverified (no usable manifest)") for t in present),
    ]


def _generate(
    source: TpchSource,
    staging: Path,
    raw_dir: Path,
    tables: tuple[str, ...],
    scale_factor: float,
) -> dict[str, LandedFile]:
    """Generate ``tables`` into ``staging`` and describe each file, checking its row count."""
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
        files = {t: describe_file(conn, staging / file_name(t)) for t in tables}
    finally:
        conn.close()
    if wrong := [t for t in tables if files[t].rows != counts[t]]:
        raise MeshError(
            f"landing raw tables in {raw_dir}: the Parquet written for {', '.join(wrong)} "
            "does not hold the generated rows",
            fix="check the state directory's disk, then run the build again",
            path=raw_dir,
        )
    return files


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
        if new is not None and finding.path.is_file() and sha256_of(finding.path) == new.sha256:
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
