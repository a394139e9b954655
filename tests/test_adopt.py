"""`mesh adopt`: a dbt project the platform did not write (tests/fixtures/dbt_shop: seeds, macros,
a local package, a list column, emails) becomes a domain, is described with TODO(mesh) for what
only its owners decide, and publishes once they are filled, with no other edit.

The end-to-end test runs every command as a user does and keeps what the adoption took (the
commands, the edits, each command's wall-clock time) in test-artifacts/adopt.json.
"""

from __future__ import annotations

import datetime as dt
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
from mesh_platform.storage import warehouse
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
def test_an_adopted_product_lives_from_adoption_to_retirement(tmp_path):
    """The whole story of issue 17 as a team lives it, each step a `mesh` command or an edit:
    adopt, fill the TODOs, build and read, republish unchanged, raise the major in place
    (refused), run both majors side by side with the old one deprecated (both published and
    read, owner and readers told), let the sunset pass (the old major is no longer published,
    reads are refused naming the successor), retire it (refused while granted, then forced)."""
    root = small_mesh(tmp_path / "mesh")
    (root / "mesh.yaml").write_text("state_dir: state\nalerts:\n  sinks: [{type: file}]\n")
    session = Session(root)
    schema = _adopt(session, root)
    _fill_the_todos(session, schema)
    _build_and_read(session, root)
    _a_major_raised_in_place_is_refused(session, root, schema)
    _both_majors_side_by_side(session, root, schema)
    _after_the_sunset(session, root, schema)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "adopt.json").write_text(json.dumps(session.steps, indent=2))


def _adopt(session: Session, root: Path) -> Path:
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
    return schema


def _fill_the_todos(session: Session, schema: Path) -> None:
    """A person fills the TODOs: nothing else is edited."""
    lines = schema.read_text().split("\n")
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


def _read(root: Path, principal: str, sql: str) -> list[dict]:
    from mesh_platform.query.engine import QuerySession

    with QuerySession(principal, mesh=load_mesh(root)) as reader:
        return reader.sql(sql).to_pylist()


def _build_and_read(session: Session, root: Path) -> None:
    built = session.mesh("build", "--domain", "shop")
    assert "shop/dim_customers" in built.stdout and "shop/customer_order_summary" in built.stdout
    rows = _read(root, "team:analysts", "SELECT email, country_code FROM shop.dim_customers")
    assert len(rows) == 30
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["email"]) for r in rows)  # hashed on publication
    summary = _read(root, "team:shop", "SELECT categories FROM shop.customer_order_summary")
    assert len(summary) == 30
    assert all(isinstance(r["categories"], list | None) for r in summary)


def _snapshot(root: Path, address: str) -> int | None:
    from mesh_platform.storage.catalog import open_catalog

    catalog = open_catalog(load_mesh(root))
    try:
        if not catalog.table_exists(("shop", address.split(".")[1])):
            return None
        table = catalog.load_table(("shop", address.split(".")[1]))
        return table.metadata.current_snapshot_id
    finally:
        catalog.engine.dispose()


def _a_major_raised_in_place_is_refused(session: Session, root: Path, schema: Path) -> None:
    """dim_customers' descriptor says 2.0.0 where 1.0.0 was: shop.dim_customers would vanish
    under its readers. The build refuses to publish it and says how to keep v1 beside it."""
    before = _snapshot(root, "shop.dim_customers")
    session.edit(schema, "version: 1.0.0", "version: 2.0.0")  # dim_customers comes first
    refused = session.mesh("build", "--domain", "shop", ok=False)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "would replace shop.dim_customers in place" in said, said[-3000:]
    assert "mesh retire shop.dim_customers" in said and "Traceback" not in said
    assert _snapshot(root, "shop.dim_customers") == before  # v1 untouched, still read
    assert _snapshot(root, "shop.dim_customers_v2") is None
    session.edit(schema, "version: 2.0.0", "version: 1.0.0")


def _both_majors_side_by_side(session: Session, root: Path, schema: Path) -> None:
    """v2 renames country_code to country: a dbt model version beside v1, which is deprecated
    today with a sunset in 90 days. Both are published and read; owner and readers are told."""
    marts = schema.parent
    (marts / "dim_customers.sql").rename(marts / "dim_customers_v1.sql")
    v1_sql = (marts / "dim_customers_v1.sql").read_text()
    (marts / "dim_customers_v2.sql").write_text(
        v1_sql.replace("country_code,", "country_code as country,")
    )
    today = dt.date.today()
    _version_the_descriptor(
        session, schema, deprecated_on=today, sunset_on=today + dt.timedelta(90)
    )
    republished = {
        address: _snapshot(root, address)
        for address in ("shop.dim_customers", "shop.customer_order_summary")
    }
    session.mesh("build", "--domain", "shop")
    for address, before in republished.items():  # the list column republished unchanged
        assert _snapshot(root, address) not in (None, before), address
    old = _read(root, "team:analysts", "SELECT country_code FROM shop.dim_customers")
    new = _read(root, "team:analysts", "SELECT country FROM shop.dim_customers_v2")
    assert sorted(r["country_code"] for r in old) == sorted(r["country"] for r in new)

    alerts = root / "state" / "alerts" / "alerts.jsonl"
    told = [json.loads(line) for line in alerts.read_text().splitlines()]
    told = {
        (a["recipient"], a.get("contact")) for a in told if a["product"] == "shop.dim_customers"
    }
    assert told == {("team:shop", "shop-data@example.com"), ("team:analysts", None)}
    listed = session.mesh("deprecations", "--notify", "--format", "json")
    (row,) = json.loads(listed.stdout)["deprecated"]
    assert (row["address"], row["successor"]) == ("shop.dim_customers", "shop.dim_customers_v2")
    assert row["consumers"] == ["team:analysts"] and not row["past_sunset"]
    assert json.loads(listed.stdout)["sent"] == []  # the build told them already: once
    early = session.mesh("retire", "shop.dim_customers", "--reason", "v2", "--force", ok=False)
    assert early.returncode == 1 and "still declares it" in early.stderr


def _version_the_descriptor(
    session: Session, schema: Path, *, deprecated_on: dt.date, sunset_on: dt.date
) -> None:
    """The team's edit of dim_customers' YAML: its mesh block moves into two dbt versions."""
    document = yaml.safe_load(schema.read_text())
    model = next(m for m in document["models"] if m["name"] == "dim_customers")
    mesh = model["config"].pop("meta")["mesh"]
    old = {**mesh, "version": "1.0.0", "status": "deprecated",
           "deprecated_on": deprecated_on, "sunset_on": sunset_on}  # fmt: skip
    new = {**mesh, "version": "2.0.0", "status": "active", "grants": [
        {**g, "columns": ["customer_id", "email", "country"]} if "columns" in g else g
        for g in mesh["grants"]
    ]}  # fmt: skip
    country = next(c for c in model["columns"] if c["name"] == "country_code")
    model["latest_version"] = 2
    model["versions"] = [
        {"v": 1, "config": {"meta": {"mesh": old}}},
        {"v": 2, "config": {"meta": {"mesh": new}}, "columns": [
            {"include": "all", "exclude": ["country_code"]}, {**country, "name": "country"},
        ]},
    ]  # fmt: skip
    text = yaml.safe_dump(document, sort_keys=False)
    session.steps.append({"edit": str(schema.relative_to(session.root)), "to": "versions"})
    schema.write_text(text)


def _after_the_sunset(session: Session, root: Path, schema: Path) -> None:
    """Time passes (the dates move back instead of the clock forward): v1 is past its sunset.
    The build publishes v2 only; a read of v1 is refused naming v2; retire is refused while
    the analysts hold a grant, then forced with a reason; v1 is listed as retired."""
    document = yaml.safe_load(schema.read_text())
    model = next(m for m in document["models"] if m["name"] == "dim_customers")
    v1 = model["versions"][0]["config"]["meta"]["mesh"]
    sunset = dt.date.today() - dt.timedelta(days=1)
    v1.update(deprecated_on=sunset - dt.timedelta(days=90), sunset_on=sunset)
    schema.write_text(yaml.safe_dump(document, sort_keys=False))
    before = {a: _snapshot(root, a) for a in ("shop.dim_customers", "shop.dim_customers_v2")}
    built = session.mesh("build", "--domain", "shop")
    assert f"reached its sunset on {sunset}" in built.stdout + built.stderr
    assert _snapshot(root, "shop.dim_customers") == before["shop.dim_customers"]
    assert _snapshot(root, "shop.dim_customers_v2") != before["shop.dim_customers_v2"]
    read = session.mesh("query", "--as", "team:analysts",
                        "SELECT country_code FROM shop.dim_customers", ok=False)  # fmt: skip
    assert read.returncode == 1 and "shop.dim_customers_v2" in read.stderr

    refused = session.mesh("retire", "shop.dim_customers", "--reason", "v2", ok=False)
    assert refused.returncode == 1 and "live grant to team:analysts" in refused.stderr
    mesh = load_mesh(root)
    folder = warehouse.local_path(warehouse.table_folder(mesh.warehouse, "shop", "dim_customers"))
    assert list(folder.rglob("*.parquet"))
    session.mesh("retire", "shop.dim_customers", "--reason", "moved to v2", "--force")
    assert _snapshot(root, "shop.dim_customers") is None
    assert not folder.exists()  # its files went with it
    listed = json.loads(session.mesh("products", "--format", "json").stdout)
    retired = [r for r in listed if r["status"] == "retired"]
    assert [(r["address"], r["reason"]) for r in retired] == [("shop.dim_customers", "moved to v2")]
    assert _read(root, "team:analysts", "SELECT count(*) AS n FROM shop.dim_customers_v2") == [
        {"n": 30}
    ]
