"""PostgreSQL for the serving benchmark (bench_serve.py): the production profile's server
(scripts/services.sh), a database of the TPC-H tables, the queries in its dialect, and the
memory of a set of server processes read from /proc.

The server is the one `scripts/services.sh start` runs on loopback (Debian's package, its
default configuration apart from max_connections); the benchmark never tunes it, so the
comparison is with PostgreSQL as the production profile runs it. Its settings that matter for
analytical queries are printed with the results (`describe_server`).
"""

from __future__ import annotations

import io
import subprocess
import threading
from pathlib import Path

import duckdb
import psycopg
import pyarrow.csv as pacsv
import sqlglot

from mesh_platform.testing import REPO, read_services_env, user_env
from mesh_platform.urls import pg_connect_args

SERVICES = REPO / "scripts" / "services.sh"

# The TPC-H specification (clause 1.4.2): the primary keys.
PRIMARY_KEYS = {
    "part": ("p_partkey",),
    "supplier": ("s_suppkey",),
    "partsupp": ("ps_partkey", "ps_suppkey"),
    "customer": ("c_custkey",),
    "orders": ("o_orderkey",),
    "lineitem": ("l_orderkey", "l_linenumber"),
    "nation": ("n_nationkey",),
    "region": ("r_regionkey",),
}
# Its foreign keys (optional in the spec): indexes on the referencing columns a
# primary key does not already lead with, for --pg-fk-indexes.
FK_INDEXES = {
    "supplier": [("s_nationkey",)],
    "partsupp": [("ps_suppkey",)],
    "customer": [("c_nationkey",)],
    "orders": [("o_custkey",)],
    "lineitem": [("l_partkey", "l_suppkey"), ("l_suppkey",)],
    "nation": [("n_regionkey",)],
}
_TYPES = {
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "VARCHAR": "text",
    "DATE": "date",
    "DOUBLE": "double precision",
}

TIMEOUT = object()
"""What `run_query` returns for a statement PostgreSQL cancelled at its statement_timeout."""


# -- the server -------------------------------------------------------------------------------


def ensure_running() -> tuple[dict[str, str], bool]:
    """The services' environment, and whether this call started them (`services.sh start` is
    idempotent; it is run only when `status` says a server does not answer)."""
    status = subprocess.run([str(SERVICES), "status"], env=user_env(), capture_output=True)
    started = status.returncode != 0
    if started:
        subprocess.run([str(SERVICES), "start"], env=user_env(), check=True, timeout=600)
    return read_services_env(), started


def connect(services: dict[str, str], dbname: str | None = None, *, timeout_s: float | None = None):
    """A psycopg (3) autocommit connection to the services' PostgreSQL (``dbname``: another
    database of the same server), with ``statement_timeout`` when given."""
    args = pg_connect_args(services["MESH_POSTGRES_URL"])
    if dbname:
        args["dbname"] = dbname
    conn = psycopg.connect(**args, autocommit=True, connect_timeout=10)
    if timeout_s is not None:
        conn.execute(f"SET statement_timeout = '{int(timeout_s * 1000)}ms'")
    return conn


def recreate_database(services: dict[str, str], name: str) -> None:
    with connect(services) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")


def drop_database(services: dict[str, str], name: str) -> None:
    with connect(services) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def describe_server(conn) -> dict[str, str]:
    names = (
        "server_version",
        "shared_buffers",
        "work_mem",
        "effective_cache_size",
        "max_parallel_workers_per_gather",
        "jit",
    )
    return {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}


# -- the tables -------------------------------------------------------------------------------


def pg_type(duckdb_type: str) -> str:
    if duckdb_type.startswith("DECIMAL("):
        return "numeric" + duckdb_type.removeprefix("DECIMAL")
    return _TYPES[duckdb_type]


def load_tables(
    conn,
    columns: dict[str, list[tuple[str, str]]],
    files: dict[str, list[str]],
    *,
    fk_indexes: bool = False,
) -> dict[str, int]:
    """Create the tables, COPY each from its Parquet files (the very files the mesh serves,
    streamed through DuckDB as CSV batches), then the primary keys (and foreign-key indexes),
    then ANALYZE. Row counts per table."""
    counts = {}
    reader_db = duckdb.connect()
    for table, cols in columns.items():
        ddl = ", ".join(f"{name} {pg_type(kind)} NOT NULL" for name, kind in cols)
        conn.execute(f"CREATE TABLE {table} ({ddl})")
        listed = ", ".join("'" + p.replace("'", "''") + "'" for p in files[table])
        names = ", ".join(name for name, _ in cols)
        reader = reader_db.execute(f"SELECT {names} FROM read_parquet([{listed}])").to_arrow_reader(
            100_000
        )
        options = pacsv.WriteOptions(include_header=False)
        with conn.cursor() as cursor, cursor.copy(f"COPY {table} FROM STDIN (FORMAT csv)") as copy:
            for batch in reader:
                buffer = io.BytesIO()
                pacsv.write_csv(batch, buffer, options)
                copy.write(buffer.getbuffer())
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(PRIMARY_KEYS[table])})")
        for i, index in enumerate(FK_INDEXES.get(table, []) if fk_indexes else []):
            conn.execute(f"CREATE INDEX {table}_fk{i} ON {table} ({', '.join(index)})")
        counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    reader_db.close()
    conn.execute("VACUUM ANALYZE")
    return counts


# -- queries ----------------------------------------------------------------------------------


def to_postgres(sql: str) -> str:
    """DuckDB SQL in PostgreSQL's dialect (sqlglot)."""
    return sqlglot.transpile(sql, read="duckdb", write="postgres")[0]


def run_query(conn, sql: str):
    """All rows of ``sql``, or TIMEOUT when the server cancelled it at statement_timeout."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    except psycopg.errors.QueryCanceled:
        return TIMEOUT


# -- memory from /proc ------------------------------------------------------------------------


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmHWM, VmRSS), 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (PostgreSQL's shared buffers) are divided among the
    processes mapping them, so a sum over processes counts them once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


def server_root(conn) -> int:
    """The postmaster's pid: the parent of this connection's backend."""
    return _parent(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def process_tree(root: int) -> list[int]:
    """``root`` and its children (PostgreSQL's backends and workers are direct children)."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [root, *(p for p in pids if _parent(p) == root)]


class PeakSampler:
    """Peak memory of process trees, sampled every ``interval`` seconds on a thread: the sum of
    PSS over each tree (short-lived processes, such as PostgreSQL's parallel workers, are seen
    only while a sample finds them alive)."""

    def __init__(self, roots: dict[str, int], interval: float = 0.2) -> None:
        self.roots = roots
        self.interval = interval
        self.peak_kb = dict.fromkeys(roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, root in self.roots.items():
                total = sum(pss_kb(p) for p in process_tree(root))
                self.peak_kb[name] = max(self.peak_kb[name], total)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
