"""The test harness: what the test suites, the benchmarks and a domain team's own tests use to
work on a copy of the sample mesh the way a user does.

- copies: ``copy_mesh`` (the mesh's own files, not its state), ``build_sample_mesh`` (a copy built
  by `mesh build` at the suite's scale ``SF``), ``declare_orders`` (a one-product mesh for
  storage tests);
- commands: ``run_mesh`` runs the `mesh` command as a user does (``user_env``: none of the test
  process's MESH_* or DAGSTER_HOME), ``why`` picks the lines of its output that say what failed;
- files: ``edited`` (a file changed for a block, then restored), ``mesh_files`` (every file of a
  mesh, to prove a refused command changed nothing), ``deliver_raw`` (a source delivery);
- reading: ``published_scan`` / ``read_published`` / ``published_content`` read a product's
  published snapshot through the public read path's storage layer;
- the production profile: ``services_env`` (the loopback servers of scripts/services.sh),
  ``fresh_profile`` / ``drop_profile`` (a database and warehouse prefix of one's own);
- the UI: ``free_port``, ``graphql``, ``LOCATIONS`` (from mesh_platform/deploy/topology.py);
- the adversarial suite's attacker (``add_attacker``, ``ATTACKER``) and its long query
  (``HEAVY``, ``start_heavy_query``, ``audit_lines``, ``wait_until_started``).

Layer: apps (it drives the `mesh` command and may import anything of the package).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mesh_platform.addressing import ProductAddress, quote_ident
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.deploy.dagster_api import LOCATIONS, graphql  # noqa: F401 - the UI's
from mesh_platform.deploy.topology import free_port, process_running  # noqa: F401 - processes'
from mesh_platform.duckdb_ext import connect
from mesh_platform.sources.landing import LANDING_FILE, describe_file
from mesh_platform.storage.metadata import Catalog, data_files, scan_sql
from mesh_platform.storage.wap import write_audit_publish
from mesh_platform.urls import pg_connect_args

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.catalog.sql import SqlCatalog

REPO = Path(__file__).resolve().parents[1]
"""The repository: the sample mesh's files are at its root."""
ARTIFACTS = REPO / "test-artifacts"
"""Where tests keep what a person looks at afterwards (screenshots, catalogs)."""
MESH = str(Path(sys.executable).with_name("mesh"))
"""The `mesh` command of this environment."""
SF = 0.01
"""The TPC-H scale factor of the suites' builds of the sample mesh."""

MESH_FILES = ("mesh.yaml", "governance.yaml", "principals.yaml", "workspace.yaml",
              "datacontract-config.yaml", "domains", "dbt_projects")  # fmt: skip
_IGNORE = shutil.ignore_patterns(
    "target", "dbt_packages", "logs", "__pycache__", ".user.yml", "package-lock.yml"
)

# -- copies and commands -------------------------------------------------------------------------


def copy_mesh(dest: Path) -> Path:
    """Copy the sample mesh's own files (not its state) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in MESH_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_IGNORE)
        else:
            shutil.copy2(src, dest / name)
    return dest


def user_env() -> dict[str, str]:
    """The environment a user's `mesh` command runs with: none of the test process's MESH_* or
    DAGSTER_HOME."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}


def run_mesh(
    root: Path, *args: str, timeout: int = 1200, **env_extra: str
) -> subprocess.CompletedProcess:
    """The `mesh` command on the mesh at ``root``, as a user runs it (no MESH_* or DAGSTER_HOME
    of the test process)."""
    env = {**user_env(), "COLUMNS": "1000", **env_extra}  # rich tables: one line per row
    return subprocess.run(
        [MESH, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=root,
        check=False,
    )


def why(result: subprocess.CompletedProcess) -> str:
    """The lines of a `mesh` command's output that say what went wrong (for assertion messages:
    pytest cuts long output, and CI shows only the end of the log)."""
    lines = (result.stdout + result.stderr).splitlines()
    keep = [
        line for line in lines
        if any(w in line for w in ("error", "Error", "ERROR", "failed", "FAILED", "not published"))
    ]  # fmt: skip
    return "\n".join(keep)[-4000:]


def build_sample_mesh(folder: Path, *args: str) -> Mesh:
    """A copy of the sample mesh at ``folder``, built by `mesh build --scale SF` (+ ``args``)."""
    root = copy_mesh(folder)
    result = run_mesh(root, "build", "--scale", str(SF), *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return load_mesh(root)


ORDERS = ProductAddress("sales", "orders")
"""The product ``declare_orders`` declares."""


def declare_orders(mesh: Mesh) -> None:
    """Declare sales.orders (one column) so the read path knows its descriptor and owner."""
    domain = mesh.root / "domains" / "sales"
    (domain / "products").mkdir(parents=True)
    (domain / "domain.yaml").write_text(
        "name: sales\ndescription: Orders domain for the read tests.\nkind: source-aligned\n"
        "owners: [team:sales]\n"
    )
    (domain / "products" / "orders.yml").write_text(
        "name: orders\ndescription: Order keys for the read tests.\nmesh:\n"
        "  purpose: Time travel tests of the read path.\n"
        "  owner: {team: sales, contact: sales@example.com}\n  version: 1.0.0\n"
        "columns:\n  - {name: order_key, data_type: bigint}\n"
    )
    project = mesh.root / "dbt_projects" / "sales"  # a domain has a dbt project, here empty
    project.mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        "name: sales\nversion: '1.0.0'\nconfig-version: 2\nprofile: sales\n"
    )
    (project / "profiles.yml").write_text(
        "sales:\n  target: local\n  outputs:\n    local: {type: duckdb, path: ':memory:'}\n"
    )


# -- files -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def edited(path: Path, old: str, new: str) -> Iterator[None]:
    """``path`` with ``old`` (present exactly once) replaced by ``new``; restored after."""
    original = path.read_text()
    assert original.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(original.replace(old, new))
    try:
        yield
    finally:
        path.write_text(original)


def mesh_files(root: Path) -> dict[str, bytes]:
    """Every file of a mesh's own folders and files, with its content (to prove a refused
    command changed nothing)."""
    files = {}
    for top in ("domains", "dbt_projects", "tests"):
        for path in sorted((root / top).rglob("*")) if (root / top).exists() else []:
            if path.is_file() and "__pycache__" not in path.parts and "target" not in path.parts:
                files[str(path.relative_to(root))] = path.read_bytes()
    for name in ("workspace.yaml", "principals.yaml"):
        files[name] = (root / name).read_bytes()
    return files


def deliver_raw(mesh: Mesh, domain: str, table: str, select_sql: str) -> None:
    """Replace the raw landing's ``table`` with ``select_sql`` (``{raw}`` names the current
    file) as its source would deliver it: the file and its entry of the landing manifest
    (rows, size, checksum, columns) together. A file changed without its manifest entry is
    damage, which every build detects and lands again (sources/landing.py)."""
    raw = mesh.raw_dir(domain) / f"{table}.parquet"
    staged = raw.with_name(f".{raw.name}.delivery")
    conn = connect()
    try:
        conn.execute(f"COPY ({select_sql.format(raw=raw)}) TO '{staged}' (FORMAT parquet)")
        entry = describe_file(conn, staged).model_copy(update={"file": raw.name})
    finally:
        conn.close()
    manifest_path = mesh.raw_dir(domain) / LANDING_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["tables"][table] = entry.model_dump()
    staged.replace(raw)
    manifest_path.write_text(json.dumps(manifest, indent=2))


# -- reading what was published ------------------------------------------------------------------


@contextlib.contextmanager
def published_scan(mesh: Mesh, address: Any, snapshot_id: int | None = None) -> Iterator[Any]:
    """(DuckDB connection, relation SQL, snapshot) of a product's published snapshot (main's
    head by default), through the read path's storage layer: catalog row, metadata JSON,
    manifests, Parquet. The connection is closed when the block exits."""
    if isinstance(address, str):
        address = ProductAddress.parse(address)
    state = Catalog(mesh).table_state(address)
    snapshot = state.snapshot(snapshot_id)
    conn = connect(extensions=("avro",))
    try:
        files = data_files(conn, state, snapshot)
        yield conn, scan_sql(files, state, snapshot.columns), snapshot
    finally:
        conn.close()


def read_published(mesh: Mesh, address: Any, snapshot_id: int | None = None):
    """(column names, row count) of a product's published snapshot (see published_scan)."""
    with published_scan(mesh, address, snapshot_id) as (conn, scan, _):
        relation = conn.sql(f"SELECT * FROM {scan}")
        return relation.columns, len(relation.fetchall())


def published_content(mesh: Mesh, address: str, snapshot_id: int | None = None) -> dict[str, int]:
    """A product's published rows, summarised to compare two meshes: the row count and, per
    column, an order-independent sum of value hashes. (Hashed personal data differs between
    meshes: each has its own salt; compare those columns by count only.)"""
    with published_scan(mesh, address, snapshot_id) as (conn, scan, snapshot):
        sums = ", ".join(f"sum(hash({quote_ident(c)}))::VARCHAR" for c in snapshot.columns)
        row = conn.execute(f"SELECT count(*), {sums} FROM {scan}").fetchone()
        return {
            "rows": int(row[0]),
            **{c: int(v or 0) for c, v in zip(snapshot.columns, row[1:], strict=True)},
        }


# -- the production profile on loopback servers --------------------------------------------------

SERVICES = REPO / "scripts" / "services.sh"


def services_env() -> dict[str, str]:
    """The loopback servers' environment (scripts/services.sh starts them if they are not
    running; it is idempotent)."""
    started = subprocess.run(
        [str(SERVICES), "start"], capture_output=True, text=True, timeout=900, check=False
    )
    assert started.returncode == 0, started.stderr[-3000:]
    return read_services_env()


def read_services_env() -> dict[str, str]:
    """The variables scripts/services.sh wrote for the running servers (its ``env`` file)."""
    env_file = Path(os.environ.get("MESH_SERVICES_DIR", REPO / ".services")) / "env"
    env = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
    return env


def fresh_profile(services: dict[str, str], name: str | None = None) -> dict[str, str]:
    """The services' environment with a new database and a new warehouse prefix of its own."""
    name = name or f"t_{uuid.uuid4().hex[:12]}"
    _admin(services, f"CREATE DATABASE {name}")
    env = dict(services)
    for key in ("MESH_POSTGRES_URL", "MESH_CATALOG__URI"):
        env[key] = env[key].rsplit("/", 1)[0] + f"/{name}"
    env["MESH_CATALOG__WAREHOUSE"] = f"s3://mesh-warehouse/{name}"
    return env


def drop_profile(services: dict[str, str], env: dict[str, str]) -> None:
    """Drop a fresh profile's database (its objects live in moto's memory)."""
    name = env["MESH_POSTGRES_URL"].rsplit("/", 1)[1]
    _admin(services, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _admin(services: dict[str, str], statement: str) -> None:
    import psycopg2  # heavy: the PostgreSQL driver, only for production-profile tests

    admin = psycopg2.connect(**pg_connect_args(services["MESH_POSTGRES_URL"]), connect_timeout=10)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(statement)
    admin.close()


# -- the Dagster UI --------------------------------------------------------------------------------


# -- the adversarial suite's attacker --------------------------------------------------------------

ATTACKER = "user:mallory"
"""A member of team:auditors with row-filtered grants on sales.customers and sales.order_lines
(``add_attacker``); every other row is hidden from her."""
CUSTOMERS_FILTER = "market_segment = 'BUILDING'"
ORDER_LINES_FILTER = "order_date < DATE '1995-01-01'"
CUSTOMERS_DESCRIPTOR = "dbt_projects/sales/models/products/products.yml"

_PRINCIPALS = """
  - id: team:auditors
    description: External auditors; read a filtered slice of sales.
  - id: user:mallory
    description: An auditor who tries to read more than the grants allow.
    member_of: [team:auditors]
"""
_CUSTOMERS_GRANT_ANCHOR = "              rows: \"market_segment IN ('HOUSEHOLD', 'BUILDING')\"\n"
_CUSTOMERS_GRANT = (
    "            - to: team:auditors\n"
    '              purpose: "Audit account balances of the building segment."\n'
    "              expires: 2027-12-31\n"
    "              columns: [customer_key, customer_name, nation_key, market_segment, "
    "account_balance, phone]\n"
    f'              rows: "{CUSTOMERS_FILTER}"\n'
)
_ORDER_LINES_ANCHOR = (
    '            - {to: logistics, purpose: "Delivery planning against the order book.", '
    "expires: 2027-12-31}\n"
    "    columns:\n"
    "      - name: order_key\n"
    "        data_type: bigint\n"
    "        description: The order (sales.orders.order_key).\n"
)
_ORDER_LINES_GRANT = (
    '            - {to: team:auditors, purpose: "Audit revenue before 1995.", '
    f'expires: 2027-12-31, rows: "{ORDER_LINES_FILTER}"}}\n'
)


def add_attacker(root: Path) -> None:
    """Declare mallory and her row-filtered grants in the mesh copy at ``root``."""
    principals = root / "principals.yaml"
    principals.write_text(principals.read_text().rstrip("\n") + "\n" + _PRINCIPALS)
    products = root / CUSTOMERS_DESCRIPTOR
    text = products.read_text()
    assert text.count(_CUSTOMERS_GRANT_ANCHOR) == 1
    text = text.replace(_CUSTOMERS_GRANT_ANCHOR, _CUSTOMERS_GRANT_ANCHOR + _CUSTOMERS_GRANT)
    assert text.count(_ORDER_LINES_ANCHOR) == 1
    head, tail = _ORDER_LINES_ANCHOR.split("    columns:\n", 1)
    text = text.replace(_ORDER_LINES_ANCHOR, head + _ORDER_LINES_GRANT + "    columns:\n" + tail)
    products.write_text(text)


# A query that runs for minutes (a cross join nothing prunes), to kill, interrupt or time out.
HEAVY = (
    "SELECT count(*) FROM range(1000000) a(x), range(1000000) b(y), sales.customers c "
    "WHERE a.x + b.y = -1"
)


def start_heavy_query(mesh: Mesh, **popen: object) -> subprocess.Popen:
    """`mesh query --as marketing HEAVY` in its own process, as a user starts it."""
    return subprocess.Popen(
        [MESH, "--root", str(mesh.root), "query", "--as", "marketing", HEAVY],
        env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip


def audit_lines(mesh: Mesh) -> list[dict]:
    """The query audit log's lines, oldest first."""
    path = mesh.state_dir / "audit" / "queries.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until_started(mesh: Mesh, principal: str, proc: subprocess.Popen) -> dict:
    """The "started" audit line of the query ``proc`` (a `mesh query` process) runs, once it
    is on record; start-up may re-prepare an edited domain, hence the long deadline."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        entries = [e for e in audit_lines(mesh) if e.get("principal") == principal]
        if entries and entries[-1]["status"] == "started":
            return entries[-1]
        if proc.poll() is not None:
            pytest.fail(f"the query ended before it was on record: {proc.communicate()}")
        time.sleep(0.2)
    pytest.fail("no 'started' audit line while the query runs")


# --- publishing without a gate (tests and benchmarks only) ---------------------------------


@dataclass(frozen=True)
class PublishResult:
    address: ProductAddress
    snapshot_id: int
    row_count: int
    metadata_location: str
    seconds: float
    already_published: bool = False


def publish_from_duckdb(
    catalog: SqlCatalog,
    address: ProductAddress,
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    *,
    properties: dict[str, str],
    batch_id: str | None = None,
) -> PublishResult:
    """Write-audit-publish with no gate (tools and tests; domain runs gate on their checks)."""
    start = time.perf_counter()
    result = write_audit_publish(
        catalog, address, conn, relation,
        batch_id=batch_id or str(uuid.uuid4()), properties=properties,
    )  # fmt: skip
    assert result.published_snapshot_id is not None
    table = catalog.load_table(address.iceberg_identifier)
    return PublishResult(
        address=address,
        snapshot_id=result.published_snapshot_id,
        row_count=result.stage.row_count,
        metadata_location=table.metadata_location,
        seconds=time.perf_counter() - start,
        already_published=result.stage.already_published,
    )
