"""Sample source data: TPC-H from DuckDB's own ``dbgen``, plus synthetic personal data.

Nobody in this project wrote the data: ``dbgen`` is the TPC's reference generator, compiled into
DuckDB's tpch extension, deterministic for a given scale factor. On top of it we derive one table
of personal data per customer (name, email, phone) from ``c_custkey`` with plain arithmetic, so
the same key always gets the same contact and later governance has real PII to guard.

Each domain lands only the tables it declares, in its own raw area, as Parquet. Landing is
idempotent (a ``_landing.json`` records what is there) and all-or-nothing (written aside,
then swapped in; the old landing is restored if the swap fails).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mesh_platform.addressing import quote_literal
from mesh_platform.config import make_private_dir, private_umask
from mesh_platform.duckdb_ext import connect
from mesh_platform.errors import MeshError

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
    """What a domain's raw area holds."""

    raw_dir: Path
    scale_factor: float
    row_counts: dict[str, int]
    generated: bool
    seconds: float

    def path(self, table: str) -> Path:
        return self.raw_dir / f"{table}.parquet"


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


def read_landing(raw_dir: Path) -> dict | None:
    try:
        return json.loads((raw_dir / LANDING_FILE).read_text())
    except (OSError, ValueError):
        return None


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


def land_tpch(raw_dir: Path, tables: Iterable[str], scale_factor: float) -> Landing:
    """Land ``tables`` at ``scale_factor`` as Parquet in ``raw_dir``; a no-op if already there."""
    tables = check_tables(tables)
    start = time.perf_counter()
    current = read_landing(raw_dir)
    if (
        current
        and current.get("generator_version") == GENERATOR_VERSION
        and current.get("scale_factor") == scale_factor
        and sorted(current.get("row_counts", {})) == sorted(tables)
        and all((raw_dir / f"{t}.parquet").is_file() for t in tables)
    ):
        return Landing(raw_dir, scale_factor, current["row_counts"], False, 0.0)

    # The raw area holds clear personal data (customer_contact): owner-only, as all state.
    private_umask()
    make_private_dir(raw_dir.parent)
    for stale in raw_dir.parent.glob(".raw-*"):  # left by a landing that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".raw-", dir=raw_dir.parent))
    try:
        conn = connect(extensions=("tpch",))
        try:
            conn.execute("CALL dbgen(sf = ?)", [scale_factor])
            if "customer_contact" in tables:
                conn.execute(f"CREATE TABLE customer_contact AS {CUSTOMER_CONTACT_SQL}")
            counts: dict[str, int] = {}
            for table in tables:
                target = staging / f"{table}.parquet"
                # Table names come from the fixed list (check_tables). COPY takes no bound
                # parameter for its target, so the path is quoted as a literal.
                target_sql = quote_literal(str(target))
                conn.execute(f"COPY {table} TO {target_sql} (FORMAT parquet, COMPRESSION zstd)")
                counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            conn.close()
        (staging / LANDING_FILE).write_text(
            json.dumps(
                {
                    "generator": "duckdb-tpch-dbgen",
                    "generator_version": GENERATOR_VERSION,
                    "scale_factor": scale_factor,
                    "row_counts": counts,
                },
                indent=2,
            )
        )
        _swap_in(staging, raw_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Landing(raw_dir, scale_factor, counts, True, time.perf_counter() - start)
