"""`mesh diff --base REF` on the sample mesh in a git repository: a dropped column that marketing
consumes names marketing, its model and products using the column, and the principals whose
logged queries read the column; an addition passes; a breaking change with a major version bump
passes and still names the consumers; JSON and JUnit parse. Audit lines come from real queries
through QuerySession on the built sample mesh."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from mesh_platform.config import Mesh
from mesh_platform.domain import list_domain_names
from mesh_platform.query.audit import AuditLog
from mesh_platform.query.engine import QuerySession
from mesh_platform.testing import REPO, copy_mesh, run_mesh, why

pytestmark = pytest.mark.e2e

PRODUCTS = Path("dbt_projects/sales/models/products")
NATION_KEY = """      - name: nation_key
        data_type: integer
        description: Customer's nation (logistics.nations.nation_key).
        config: {meta: {classification: 'internal'}}
        data_tests: [not_null]
"""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


@pytest.fixture(scope="module")
def repo(sample_build: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample mesh's files committed in a fresh repository, its manifests as prepared by
    the build, and an audit log of real queries: user:sam and marketing read nation_key of
    sales.customers (one in a filter), user:carol other columns only."""
    root = copy_mesh(tmp_path_factory.mktemp("diff") / "repo")
    shutil.copy2(REPO / ".gitignore", root / ".gitignore")
    for name in list_domain_names(sample_build):
        target = root / "dbt_projects" / name / "target"
        target.mkdir(parents=True, exist_ok=True)
        for file in ("manifest.json", "mesh_prepared.json"):
            shutil.copy2(sample_build.dbt_projects_dir / name / "target" / file, target / file)
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "base")
    log = AuditLog(root / "state" / "audit" / "queries.jsonl")
    for principal, sql in [
        ("user:sam", "SELECT nation_key, count(*) AS n FROM sales.customers GROUP BY nation_key"),
        ("marketing", "SELECT count(*) FROM sales.customers WHERE nation_key = 7"),
        ("user:carol", "SELECT customer_key, phone FROM sales.customers"),
    ]:
        with QuerySession(principal, mesh=sample_build, audit=log) as session:
            assert session.sql(sql).num_rows > 0
    return root


@pytest.fixture
def clean(repo: Path) -> Path:
    _git(repo, "checkout", "--", ".")
    return repo


def _edit(root: Path, path: Path | str, old: str, new: str) -> None:
    file = root / path
    text = file.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {file} once"
    file.write_text(text.replace(old, new))


def _drop_nation_key(root: Path) -> None:
    """sales.customers without nation_key: descriptor, grant and model."""
    _edit(root, PRODUCTS / "products.yml", NATION_KEY, "")
    _edit(root, PRODUCTS / "products.yml", "columns: [customer_key, nation_key, market_segment]",
          "columns: [customer_key, market_segment]")  # fmt: skip
    _edit(root, PRODUCTS / "customers.sql", "    nation_key,\n", "")


def _diff(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_mesh(root, "diff", "--base", "HEAD", *args)


def _product(report: dict, address: str) -> dict:
    (found,) = [p for p in report["products"] if p["address"] == address]
    return found


def test_an_unchanged_mesh_has_no_contract_change(clean: Path):
    result = _diff(clean, "--format", "json")
    assert result.returncode == 0, why(result)
    report = json.loads(result.stdout)
    assert report["violations"] == 0 and not report["problems"]
    # the base read from git (YAML) and the working tree read from the manifests agree
    assert {p["status"] for p in report["products"]} == {"unchanged"}
    assert len(report["products"]) == 12


def test_a_dropped_column_consumed_by_marketing_names_marketing_and_its_readers(clean: Path):
    _drop_nation_key(clean)
    table = _diff(clean)
    assert table.returncode == 1, why(table)
    for text in ("column nation_key removed", "domain marketing", "marketing:stg_customer_geo",
                 "marketing.customer_segments", "reader user:sam", "reader marketing",
                 "without a major version bump"):  # fmt: skip
        assert text in table.stdout, why(table)
    assert "user:carol" not in table.stdout  # read other columns only

    result = _diff(clean, "--format", "json")
    assert result.returncode == 1, why(result)
    report = json.loads(result.stdout)
    customers = _product(report, "sales.customers")
    assert customers["violations"] == 1 and report["violations"] == 1
    (change,) = [c for c in customers["changes"] if c["breaking"]]
    assert (change["kind"], change["column"], change["allowed"]) == (
        "column_removed",
        "nation_key",
        False,
    )
    (marketing,) = change["consumers"]
    assert marketing["domain"] == "marketing"
    assert marketing["inputs"] == ["dbt_projects/marketing/models/staging/sources.yml"]
    # the join on nation_key: stg_customer_geo uses it; everything built from it breaks
    assert [m["name"] for m in marketing["models"]] == ["marketing:stg_customer_geo"]
    assert {p["address"] for p in marketing["products"]} == {
        "marketing.customer_segments", "marketing.late_delivery_impact",
        "marketing.revenue_by_nation_segment", "marketing.segment_summary"}  # fmt: skip
    readers = {r["principal"]: r for r in change["readers"]}
    assert set(readers) == {"marketing", "user:sam"}
    assert readers["user:sam"]["columns"] == ["nation_key"] and readers["user:sam"]["queries"] == 1

    junit = _diff(clean, "--format", "junit")
    assert junit.returncode == 1
    suite = ET.fromstring(junit.stdout).find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert len(cases) == 12 and suite.get("failures") == "1"
    (failure,) = cases["sales.customers"].findall("failure")
    assert failure.get("type") == "column_removed" and "domain marketing" in failure.text
    assert all(not c.findall("failure") for n, c in cases.items() if n != "sales.customers")


def test_an_added_column_is_not_breaking(clean: Path):
    _edit(
        clean,
        PRODUCTS / "products.yml",
        NATION_KEY,
        NATION_KEY
        + """      - name: segment_code
        data_type: varchar
        description: First letter of the market segment.
        config: {meta: {classification: 'internal'}}
""",
    )
    _edit(clean, PRODUCTS / "customers.sql", "    market_segment,\n",
          "    market_segment,\n    left(market_segment, 1) as segment_code,\n")  # fmt: skip
    result = _diff(clean, "--format", "json")
    assert result.returncode == 0, why(result)
    customers = _product(json.loads(result.stdout), "sales.customers")
    assert [c["kind"] for c in customers["changes"]] == ["column_added"]
    assert customers["breaking"] == 0


def test_a_breaking_change_with_a_major_bump_passes_and_still_names_consumers(clean: Path):
    _drop_nation_key(clean)
    purpose = 'purpose: "Customer master data with contact details for segmentation and outreach."'
    owner = "          owner: {team: sales, contact: sales-data@example.com}\n"
    _edit(clean, PRODUCTS / "products.yml", f"{purpose}\n{owner}          version: 1.0.0",
          f"{purpose}\n{owner}          version: 2.0.0")  # fmt: skip
    result = _diff(clean, "--format", "json")
    assert result.returncode == 0, why(result)
    report = json.loads(result.stdout)
    customers = _product(report, "sales.customers")
    assert customers["status"] == "major bump"
    assert customers["head"]["address"] == "sales.customers_v2"
    (change,) = [c for c in customers["changes"] if c["breaking"]]
    assert change["allowed"] and change["kind"] == "column_removed"
    assert [c["domain"] for c in change["consumers"]] == ["marketing"]
    assert {r["principal"] for r in change["readers"]} == {"marketing", "user:sam"}
