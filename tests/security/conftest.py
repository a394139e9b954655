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

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_platform.config import Mesh, load_mesh
from tests.conftest import copy_mesh

SF = 0.01
MESH = str(Path(sys.executable).with_name("mesh"))
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


def run_mesh(root: Path, *args: str, timeout: int = 1200, **env_extra: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}
    env["COLUMNS"] = "1000"
    env.update(env_extra)
    return subprocess.run(
        [MESH, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=root,
        check=False,
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
