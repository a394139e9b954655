"""`mesh check` reads fresh declarations and warns about loose ends: a producer's grant edited
after its manifest was prepared counts on the first run; an expired grant in a product's own
file, an owner team nobody declared and a domain without a product are warnings naming the file,
the line and the fix; a TODO(mesh) marker left in a descriptor blocks."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from mesh_platform.config import load_mesh
from mesh_platform.dbt.project import prepare
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.governance.evaluate import check_domain
from mesh_platform.governance.policy import PolicyContext, PolicySet, evaluate_static
from mesh_platform.testing import copy_mesh

MESH = os.path.join(os.path.dirname(sys.executable), "mesh")
SALES_YML = "dbt_projects/sales/models/products/products.yml"
SEGMENTS_YML = "domains/marketing/products/segment_summary.yml"
GRANT = '{to: marketing, purpose: "Customer segmentation and revenue analytics in marketing.", '


def _line_of(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """A mesh copy prepared once, then edited the way a team edits files between two
    commands: sales' grant of orders to marketing has expired, customers names an owner team
    nobody declared, and a Python product's purpose is a TODO(mesh) marker."""
    mesh = load_mesh(copy_mesh(tmp_path_factory.mktemp("check") / "mesh"))
    mesh.ensure_state_dir()
    for name in list_domain_names(mesh):
        prepare(mesh, load_domain(mesh, name))
    sales = mesh.root / SALES_YML
    text = sales.read_text()
    assert text.count(GRANT + "expires: 2027-12-31}") >= 1
    text = text.replace(GRANT + "expires: 2027-12-31}", GRANT + "expires: 2020-01-31}", 1)
    customers = text.index("  - name: customers")
    owner = "owner: {team: sales, contact: sales-data@example.com}"
    at = text.index(owner, customers)
    text = text[:at] + owner.replace("team: sales", "team: sals") + text[at + len(owner) :]
    sales.write_text(text)
    segments = mesh.root / SEGMENTS_YML
    seg_text = segments.read_text()
    purpose = next(line for line in seg_text.splitlines() if line.strip().startswith("purpose:"))
    seg_text = seg_text.replace(purpose, '  purpose: "TODO(mesh): why it exists, for whom"')
    segments.write_text(seg_text)
    return mesh, text, seg_text


def test_a_consumer_is_checked_against_its_producers_fresh_grants_on_the_first_run(edited):
    """marketing consumes sales.orders; sales' manifest was prepared before its grant to
    marketing expired. The first `mesh check` already blocks marketing."""
    mesh, _, _ = edited
    result = subprocess.run(
        [MESH, "--root", str(mesh.root), "check", "--domain", "marketing", "--format", "json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=mesh.root,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    consumed = [v for v in report["violations"] if "consumes sales.orders" in v["message"]]
    assert len(consumed) == 1 and consumed[0]["blocking"], report
    assert "expired" in consumed[0]["message"]
    assert consumed[0]["file"] == "dbt_projects/marketing/models/staging/sources.yml"
    assert "see the message" not in json.dumps(report)


def test_an_expired_grant_and_an_undeclared_owner_warn_with_file_and_line(edited):
    mesh, text, _ = edited
    found = check_domain(mesh, "sales")
    assert not [v for v in found if v.blocking], [v.line() for v in found if v.blocking]
    (expired,) = [v for v in found if v.policy == "grant_expiry"]
    assert expired.subject == "sales.orders" and expired.severity == "warn"
    assert "marketing" in expired.message and "2020-01-31" in expired.message
    assert expired.file == SALES_YML and expired.at == _line_of(text, "expires: 2020-01-31")
    assert "renew" in expired.fix and "remove" in expired.fix
    (owner,) = [v for v in found if v.policy == "owner_declared"]
    assert owner.subject == "sales.customers" and owner.severity == "warn"
    assert "'sals'" in owner.message and "did you mean 'sales'?" in owner.message
    assert owner.at == _line_of(text, "team: sals") and "principals.yaml" in owner.fix


def test_a_todo_left_in_a_python_products_descriptor_blocks(edited):
    mesh, _, seg_text = edited
    todos = [v for v in check_domain(mesh, "marketing") if v.policy == "scaffold_todos"]
    assert len(todos) == 1 and todos[0].blocking
    assert todos[0].subject == "marketing.segment_summary" and todos[0].file == SEGMENTS_YML
    assert todos[0].at == _line_of(seg_text, "TODO(mesh)")
    assert "mesh.purpose is still a TODO" in todos[0].message


def test_a_domain_without_a_product_warns_unless_its_products_failed_to_load():
    ctx = PolicyContext("finance", [], today=dt.date(2026, 1, 1))
    (empty,) = [v for v in evaluate_static(PolicySet({}, [], "governance.yaml"), ctx)]
    assert empty.policy == "domain_products" and empty.severity == "warn"
    assert empty.subject == "domain finance" and empty.file == "domains/finance/domain.yaml"
    assert "mesh new product finance" in empty.fix
    ctx = PolicyContext("finance", [], today=dt.date(2026, 1, 1), complete=False)
    assert evaluate_static(PolicySet({}, [], "governance.yaml"), ctx) == []
