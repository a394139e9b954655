"""The adversarial suite's mesh: one real build of the sample mesh (TPC-H SF 0.01), shared by
every module of ``tests/security/``, with one extra reader an attacker would be.

``user:mallory`` (a member of ``team:auditors``) holds row-filtered grants:

- ``sales.customers``: every column but the contact details, rows of the BUILDING segment only;
- ``sales.order_lines``: every column, lines ordered before 1995 only.

Every other row is *hidden* from mallory: the suite tries to learn anything about them.
Modules that edit the mesh's files restore them (``edited``); modules that need their own
state build their own copy.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from mesh_platform.config import Mesh, load_mesh
from tests.conftest import MESH, copy_mesh, run_mesh, user_env

SF = 0.01
ATTACKER = "user:mallory"
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


@pytest.fixture(scope="session")
def attacked_mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    """The sample mesh with mallory's grants, built once (SF 0.01) for the whole suite."""
    root = copy_mesh(tmp_path_factory.mktemp("security") / "mesh")
    add_attacker(root)
    result = run_mesh(root, "build", "--scale", str(SF))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return load_mesh(root)


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
