"""`mesh adopt`: a dbt project the platform did not write (tests/fixtures/dbt_shop: seeds, macros,
a local package, a list column, emails) becomes a domain, is described with TODO(mesh) for what
only its owners decide, and publishes once they are filled, with no other edit.

The end-to-end test runs every command as a user does and keeps what the adoption took (the
commands, the edits, each command's wall-clock time) in test-artifacts/adopt.json.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from mesh_platform.config import load_mesh
from mesh_platform.scaffold.adopt import adopt
from mesh_platform.scaffold.describe import TODO_MARKER, find_todos
from mesh_platform.scaffold.validate import ScaffoldError
from mesh_platform.testing import ARTIFACTS, REPO, mesh_files, run_mesh, why

SHOP = REPO / "tests" / "fixtures" / "dbt_shop"
PRODUCTS = ("dim_customers", "customer_order_summary")


def small_mesh(root: Path) -> Path:
    """A mesh with no domain yet: its settings, the council's policies, one team of readers."""
    (root / "domains").mkdir(parents=True)
    (root / "domains" / "__init__.py").write_text("")
    (root / "dbt_projects").mkdir()
    (root / "mesh.yaml").write_text("state_dir: state\n")
    shutil.copy2(REPO / "governance.yaml", root / "governance.yaml")
    (root / "principals.yaml").write_text(
        "principals:\n  - id: team:analysts\n    description: Analysts of the mesh.\n"
    )
    (root / "workspace.yaml").write_text("load_from: []\n")
    return root


@pytest.fixture
def mesh(tmp_path):
    return load_mesh(small_mesh(tmp_path / "mesh"))


# -- refusals: before anything is written --------------------------------------------------------


def test_a_folder_that_is_not_a_dbt_project_is_refused(mesh, tmp_path):
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError, match="is not a dbt project") as err:
        adopt(mesh, tmp_path, "shop", ["dim_customers"])
    assert "dbt_project.yml" in err.value.fix
    assert mesh_files(mesh.root) == before


def test_an_existing_domain_is_refused(mesh):
    (mesh.domains_dir / "shop").mkdir()
    (mesh.domains_dir / "shop" / "domain.yaml").write_text("name: shop\n")
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError, match="already exists"):
        adopt(mesh, SHOP, "shop", ["dim_customers"])
    assert mesh_files(mesh.root) == before


def test_an_unknown_model_is_refused_with_the_closest_names(mesh):
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError, match="'dim_customer'") as err:
        adopt(mesh, SHOP, "shop", ["dim_customer"])
    assert "did you mean dim_customers" in err.value.fix
    assert "customer_order_summary" in err.value.fix  # and every model of the project
    assert mesh_files(mesh.root) == before


@pytest.mark.parametrize("name", ["Shop", "shop-data", "raw"])
def test_an_invalid_domain_name_is_refused(mesh, name):
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError, match="invalid domain name"):
        adopt(mesh, SHOP, name, ["dim_customers"])
    assert mesh_files(mesh.root) == before


def test_a_package_it_would_download_stops_the_adoption_and_leaves_nothing(mesh, tmp_path):
    """Found once the project is in place: everything written is removed again, and the error
    names the package in the team's own project, with the line that vendors it."""
    team_project = tmp_path / "shop"
    shutil.copytree(SHOP, team_project)
    packages = team_project / "packages.yml"
    packages.write_text(packages.read_text() + "  - package: dbt-labs/dbt_utils\n")
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError, match="nothing was left behind") as err:
        adopt(mesh, team_project, "shop", ["dim_customers"])
    assert f"dbt package dbt_utils (package: dbt-labs/dbt_utils, {packages}:3)" in err.value.what
    assert f"`- local: vendor/dbt_utils` in {packages}" in err.value.fix
    assert mesh_files(mesh.root) == before
    assert not (mesh.state_dir / "domains" / "shop").exists()


def test_the_cli_refuses_without_a_traceback(mesh):
    result = run_mesh(mesh.root, "adopt", str(SHOP), "--domain", "shop", "--product", "dim_cust")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "did you mean dim_customers" in result.stderr


# -- end to end -------------------------------------------------------------------------------


class Session:
    """The commands and edits of an adoption, timed, as the note reports them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.steps: list[dict] = []

    def mesh(self, *args: str, ok: bool = True):
        started = time.perf_counter()
        result = run_mesh(self.root, *args)
        took = round(time.perf_counter() - started, 1)
        self.steps.append({"command": "mesh " + " ".join(args), "seconds": took,
                           "exit": result.returncode})  # fmt: skip
        if ok:
            assert result.returncode == 0, why(result) or result.stderr[-3000:]
        return result

    def edit(self, file: Path, old: str, new: str) -> None:
        text = file.read_text()
        assert old in text, old
        file.write_text(text.replace(old, new, 1))
        self.steps.append({"edit": str(file.relative_to(self.root)), "from": old, "to": new})


@pytest.mark.e2e
def test_an_adopted_project_publishes_once_its_todos_are_filled(tmp_path):
    root = small_mesh(tmp_path / "mesh")
    session = Session(root)
    adopted = session.mesh(
        "adopt", str(SHOP), "--domain", "shop", "--owner", "shop",
        "--product", PRODUCTS[0], "--product", PRODUCTS[1],
    )  # fmt: skip
    out = adopted.stdout
    schema = root / "dbt_projects/shop/models/marts/schema.yml"
    assert not (root / "dbt_projects/shop/profiles.yml").read_text().count("/srv/shop")
    assert (root / "dbt_projects/shop/dbt_packages/shop_utils").is_dir()  # dbt deps, offline

    # the report: every TODO by file:line, each on its own line of the descriptor
    reported = re.findall(r"(dbt_projects/\S+):(\d+)  (\w+): ", out)
    todos = find_todos(schema.read_text())
    lines = schema.read_text().split("\n")
    assert {(int(n), key) for _, n, key in reported} == {(n, key) for n, key, _ in todos}
    assert {key for _, key, _ in todos} == {"purpose", "contact", "max_age", "description"}
    assert len(todos) == 10  # 2 products x (purpose, contact, freshness, grant) + 2 undocumented
    for n, _, _ in todos:
        assert lines[n - 1].count(TODO_MARKER) == 1
    # personal data suggested from the data and the names: kinds and counts, never a value
    assert "email: pii:email (email in 30 of 30 rows; its name says email)" in out
    assert "full_name: pii:name (its name says name)" in out
    seeded = (SHOP / "seeds" / "raw_customers.csv").read_text().lower()
    emails = re.findall(r"[a-z.]+@[a-z.]+", seeded)
    assert len(emails) == 30 and not [e for e in emails if e in out.lower()]
    assert "lovelace" not in out.lower()
    declared = yaml.safe_load(schema.read_text())["models"]
    customers = next(m for m in declared if m["name"] == "dim_customers")
    email = next(c for c in customers["columns"] if c["name"] == "email")
    assert email["config"]["meta"] == {"classification": "pii:email", "masking": "hash"}
    assert email["data_tests"] == ["not_null"]  # the team's tests are kept
    assert customers["config"]["contract"] == {"enforced": True}
    summary = next(m for m in declared if m["name"] == "customer_order_summary")
    assert {c["name"]: c["data_type"] for c in summary["columns"]}["categories"] == "varchar[]"

    check = session.mesh("check", "--domain", "shop", ok=False)
    assert check.returncode != 0 and TODO_MARKER in check.stdout + check.stderr

    # a person fills the TODOs: nothing else is edited
    for old, new in [
        ('"TODO(mesh): why this product exists, for whom"',
         '"Web shop customers, for campaign targeting and support."'),
        ("\"TODO(mesh): the owners' contact email, e.g. shop-data@example.com\"",
         "shop-data@example.com"),
        ('"TODO(mesh): how old the published data may get before consumers are alerted, '
         'e.g. 26h"', "26h"),
        ('"TODO(mesh): what signed_up_on holds"', "Day the customer signed up."),
        ('"TODO(mesh): what last_ordered_at holds"', "When the customer last ordered."),
    ]:  # fmt: skip
        while old in schema.read_text():  # one edit per product
            session.edit(schema, old, new)
    grant = next(line for line in lines if "who reads this product" in line).strip()
    while grant in schema.read_text():
        session.edit(schema, grant, 'purpose: "The shop team analyses its own customers."')
    expires = re.search(r"\n( +)expires: (\S+)\n    columns:", schema.read_text())
    pad, date = expires.groups()
    session.edit(  # dim_customers comes first: a narrower grant to the analysts
        schema,
        f"{pad}expires: {date}\n    columns:",
        f"{pad}expires: {date}\n{pad[:-2]}- to: team:analysts\n{pad}purpose: Campaign sizing "
        f"by country.\n{pad}expires: {date}\n{pad}columns: [customer_id, email, country_code]"
        "\n    columns:",
    )
    assert TODO_MARKER not in schema.read_text()
    session.mesh("check", "--domain", "shop")
    built = session.mesh("build", "--domain", "shop")
    assert "shop/dim_customers" in built.stdout and "shop/customer_order_summary" in built.stdout

    from mesh_platform.query.engine import QuerySession

    mesh = load_mesh(root)
    with QuerySession("team:analysts", mesh=mesh) as reader:
        rows = reader.sql("SELECT email, country_code FROM shop.dim_customers").to_pylist()
    assert len(rows) == 30
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["email"]) for r in rows)  # hashed on publication
    with QuerySession("team:shop", mesh=mesh) as owner:
        summary_rows = owner.sql(
            "SELECT customer_id, categories FROM shop.customer_order_summary ORDER BY 1"
        ).to_pylist()
    assert len(summary_rows) == 30
    assert all(isinstance(r["categories"], list | None) for r in summary_rows)

    # rebuilt unchanged: republished, the list column included (the schema check once compared
    # nested field ids and blocked "list<string> -> list<string>"; fixed on i17-fix)
    session.mesh("build", "--domain", "shop")

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "adopt.json").write_text(json.dumps(session.steps, indent=2))
