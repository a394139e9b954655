"""Class 8, bad input: a name, owner or contact that would write a broken file is refused
before anything is written, and one domain's broken file makes that domain unreadable, with the
file and the fix, while every other domain still answers.

Names are checked with full-match patterns (``$`` accepts a trailing newline), owners are lower
case, contacts are plain email addresses; the scaffolder reads back what it rendered with the
loader's own validation. Broken files are made in the shared ``attacked_mesh`` and restored.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mesh_platform.access.principals import load_principals
from mesh_platform.addressing import ProductAddress, email_problem, name_problem, team_problem
from mesh_platform.config import Mesh, load_mesh
from mesh_platform.domain import DomainSpec
from mesh_platform.errors import InvalidNameError, MeshError
from mesh_platform.formats import parse_duration
from mesh_platform.products.descriptor import DescriptorBody, Owner
from mesh_platform.products.descriptor_grants import Grant
from mesh_platform.products.registry import load_directory
from mesh_platform.scaffold import new_domain, new_product
from mesh_platform.scaffold.validate import ScaffoldError
from mesh_platform.testing import copy_mesh, edited, mesh_files, run_mesh

pytestmark = pytest.mark.e2e

BAD_NAMES = {
    "trailing newline": "finance\n",
    "upper case": "Finance",
    "unicode letter": "finançe",
    "unicode digit": "finance_٢",
    "path separator": "fin/ance",
    "parent folder": "../finance",
    "YAML injection": "finance\nkind: aggregate",
}
BAD_TEAMS = {
    "upper case": "Finance",
    "trailing newline": "finance\n",
    "YAML injection": "finance, contact: x}",
    "unicode": "financé",
    "space": "fin ance",
}
BAD_CONTACTS = {
    "newline injecting a key": "finance@example.com\nkind: aggregate",
    "trailing newline": "finance@example.com\n",
    "quote": 'fin"ance@example.com',
    "colon-space": "finance@example.com: x",
    "hash": "finance@example.com#x",
    "braces": "{finance@example.com}",
    "flow end": "finance@example.com]",
    "two addresses": "a@example.com, b@example.com",
    "unicode": "finançe@example.com",
}


def _tree(root: Path) -> dict[str, bytes]:
    """Every file a scaffold could touch, with its content (to prove nothing changed), and the
    names of hidden entries (a scaffold's staging folders)."""
    files = mesh_files(root)
    hidden = sorted(p.name for p in root.iterdir() if p.name.startswith("."))
    files["<hidden>"] = "\n".join(hidden).encode()
    return files


@pytest.fixture(scope="module")
def plain_mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    """An unbuilt copy of the sample mesh: refused scaffolds must leave it as it is."""
    return load_mesh(copy_mesh(tmp_path_factory.mktemp("input") / "mesh"))


# -- the rules, one by one (milliseconds) ---------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_names_are_matched_in_full(name):
    assert name_problem(name) is not None
    with pytest.raises(InvalidNameError):
        ProductAddress("sales", name)
    with pytest.raises(InvalidNameError):
        ProductAddress(name, "orders")


@pytest.mark.parametrize(
    "address",
    ["sales.orders\n", "sales.orders_v2\n", "sales\n.orders", "sales.orders_v٢",
     "urn:mesh:sales:orders:v2\n", "urn:mesh:sales:orders:v٢", "sales.../orders"],
)  # fmt: skip
def test_product_addresses_are_matched_in_full(address):
    with pytest.raises(InvalidNameError):
        ProductAddress.parse(address)


@pytest.mark.parametrize("team", BAD_TEAMS.values(), ids=BAD_TEAMS.keys())
def test_owner_teams_are_lower_case_names(team):
    assert team_problem(team) is not None
    with pytest.raises(ValidationError, match="owner team") as err:
        Owner(team=team, contact="finance@example.com")
    assert "lower case" in str(err.value)


def test_an_upper_case_owner_team_error_gives_the_lower_case_fix():
    with pytest.raises(ValidationError) as err:
        Owner(team="Finance", contact="finance@example.com")
    assert "lower case" in str(err.value) and "'finance'" in str(err.value)


@pytest.mark.parametrize("contact", BAD_CONTACTS.values(), ids=BAD_CONTACTS.keys())
def test_contacts_are_plain_email_addresses(contact):
    assert email_problem(contact) is not None
    with pytest.raises(ValidationError, match="contact"):
        Owner(team="finance", contact=contact)


@pytest.mark.parametrize("good", ["sales-data@example.com", "a.b+c@mail.example.co.uk"])
def test_plain_email_addresses_pass(good):
    assert email_problem(good) is None
    assert Owner(team="customer-care", contact=good).contact == good


@pytest.mark.parametrize(
    "principal", ["marketing\n", "team:campaigns\n", "Marketing", "team:Campaigns", "user:al ice",
                  " marketing", "user:alïce"],
)  # fmt: skip
def test_grants_name_principals_in_full(principal):
    with pytest.raises(ValidationError, match="principal"):
        Grant(to=principal, purpose="Reads the product.", expires="2027-12-31")


def test_versions_and_durations_are_matched_in_full():
    body = {"purpose": "A product for the tests.", "version": "1.0.0\n",
            "owner": {"team": "finance", "contact": "finance@example.com"}}  # fmt: skip
    with pytest.raises(ValidationError, match="semantic version"):
        DescriptorBody.model_validate(body)
    with pytest.raises(ValueError, match="duration"):
        parse_duration("2\nh")
    with pytest.raises(ValueError, match="duration"):
        parse_duration("٢h")


@pytest.mark.parametrize(
    ("owners", "why"),
    [(["team:Sales"], "lower case"), (["team:sales\n"], "lower case"),
     (["sales@example.com\nkind: aggregate"], "plain email"), (["sales"], "'team:<name>'")],
)  # fmt: skip
def test_domain_owners_follow_the_same_rules(owners, why):
    spec = {"name": "sales", "description": "Orders and customers.", "kind": "source-aligned",
            "owners": owners}  # fmt: skip
    with pytest.raises(ValidationError, match="owner") as err:
        DomainSpec.model_validate(spec)
    assert why in str(err.value)


def test_a_domain_name_with_a_trailing_newline_is_refused_by_the_descriptor():
    spec = {"name": "sales\n", "description": "Orders and customers.", "kind": "source-aligned",
            "owners": ["team:sales"]}  # fmt: skip
    with pytest.raises(ValidationError, match="snake_case"):
        DomainSpec.model_validate(spec)


# -- the scaffolder, through the Python API ----------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_new_domain_refuses_a_bad_name_and_writes_nothing(plain_mesh, name):
    before = _tree(plain_mesh.root)
    with pytest.raises(ScaffoldError) as err:
        new_domain(plain_mesh, name, team="finance")
    assert "domain name" in err.value.what and "NAME" in err.value.what
    assert "nothing was written" in err.value.what
    assert "snake_case" in err.value.fix
    assert _tree(plain_mesh.root) == before


@pytest.mark.parametrize("team", BAD_TEAMS.values(), ids=BAD_TEAMS.keys())
def test_new_domain_refuses_a_bad_owner_team_and_writes_nothing(plain_mesh, team):
    before = _tree(plain_mesh.root)
    with pytest.raises(ScaffoldError) as err:
        new_domain(plain_mesh, "finance", team=team)
    assert "owner team" in err.value.what and "--owner" in err.value.what
    assert "lower case" in err.value.what
    assert "--owner" in err.value.fix and "lower-case" in err.value.fix
    assert _tree(plain_mesh.root) == before


def test_an_upper_case_owner_is_told_the_lower_case_name(plain_mesh):
    with pytest.raises(ScaffoldError) as err:
        new_domain(plain_mesh, "finance", team="Finance")
    assert "--owner finance" in err.value.fix


@pytest.mark.parametrize("contact", BAD_CONTACTS.values(), ids=BAD_CONTACTS.keys())
def test_new_domain_refuses_a_contact_that_is_not_a_plain_email(plain_mesh, contact):
    before = _tree(plain_mesh.root)
    with pytest.raises(ScaffoldError) as err:
        new_domain(plain_mesh, "finance", team="finance", contact=contact)
    assert "contact" in err.value.what and "--contact" in err.value.what
    assert "plain email address" in err.value.what
    assert "--contact" in err.value.fix
    assert _tree(plain_mesh.root) == before


def test_new_domain_refuses_a_description_with_control_characters(plain_mesh):
    before = _tree(plain_mesh.root)
    with pytest.raises(ScaffoldError, match="description") as err:
        new_domain(plain_mesh, "finance", team="finance", description="Invoices\x00 and \x1b[2J")
    assert "control characters" in err.value.what and err.value.fix
    assert _tree(plain_mesh.root) == before


@pytest.mark.parametrize(
    ("team", "contact", "field"),
    [("finance", "finance@example.com\nkind: aggregate", "domain.yaml: not valid YAML"),
     ("finance", "finance@example.com # comment", "domain.yaml: not valid YAML"),
     ("finance", "x@example.com}", "domain.yaml: not valid YAML"),
     ("Finance", "finance@example.com", "line 7: owners: owner 'team:Finance'"),
     ("finance", "x@example.com, 'k': v", "line 7: owners[2]: Input should be a valid string"),
     ("finance", 'x"@example.com', "line 7: owners: owner 'x\"@example.com'")],
)  # fmt: skip
def test_what_the_scaffold_renders_is_validated_before_it_is_moved_in(
    plain_mesh, monkeypatch, team, contact, field
):
    """Were the input checks gone, the rendered files would still be read back by the loader's
    own validation and refused, naming the file and the field, with nothing written."""
    import mesh_platform.scaffold as scaffold

    monkeypatch.setattr(scaffold, "_check_team", lambda team, contact: None)
    before = _tree(plain_mesh.root)
    with pytest.raises(ScaffoldError) as err:
        new_domain(plain_mesh, "finance", team=team, contact=contact)
    assert "would write an invalid" in err.value.what and "nothing was written" in err.value.what
    assert field in err.value.what
    assert "--owner" in err.value.fix and "--contact" in err.value.fix
    assert _tree(plain_mesh.root) == before


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_new_product_refuses_a_bad_name_and_writes_nothing(plain_mesh, name):
    before = _tree(plain_mesh.root)
    with pytest.raises(ScaffoldError) as err:
        new_product(plain_mesh, "sales", name)
    assert "product name" in err.value.what and "snake_case" in err.value.fix
    assert _tree(plain_mesh.root) == before


@pytest.mark.parametrize("domain", ["sales\n", "../sales", "Sales"])
def test_new_product_refuses_a_bad_domain_name_before_using_it_as_a_path(plain_mesh, domain):
    before = _tree(plain_mesh.root)
    with pytest.raises(MeshError) as err:
        new_product(plain_mesh, domain, "order_stats")
    assert "domain name" in err.value.what and "snake_case" in err.value.fix
    assert _tree(plain_mesh.root) == before


def test_new_product_lands_in_the_models_list_when_another_block_follows(plain_mesh):
    """A products.yml whose `models:` is not its last block: the entry is added to the list
    (a structural edit, not an append), the block after it is kept as it was."""
    yml = plain_mesh.dbt_projects_dir / "sales/models/products/products.yml"
    original = yml.read_text()
    principals = plain_mesh.root / "principals.yaml"
    declared = principals.read_text()
    sql = yml.parent / "order_stats.sql"
    try:
        yml.write_text(original + "\nexposures:\n  - name: dashboard  # the board's\n")
        new_product(plain_mesh, "sales", "order_stats")
        data = yaml.safe_load(yml.read_text())
        assert data["models"][-1]["name"] == "order_stats"
        assert data["exposures"] == [{"name": "dashboard"}]
        assert "  - name: dashboard  # the board's" in yml.read_text()
    finally:
        yml.write_text(original)
        principals.write_text(declared)
        sql.unlink(missing_ok=True)


def test_a_domain_owned_by_an_upper_case_team_gets_no_product_skeleton(plain_mesh):
    path = plain_mesh.domains_dir / "sales" / "domain.yaml"
    with edited(path, "team:sales", "team:Sales"):
        before = _tree(plain_mesh.root)
        with pytest.raises(MeshError) as err:
            new_product(plain_mesh, "sales", "order_stats")
        assert "domain.yaml" in str(err.value) and "team:sales" in err.value.what
        assert _tree(plain_mesh.root) == before


# -- the scaffolder, through the CLI -----------------------------------------------------------

CLI_CASES = {
    "name with a trailing newline": (["finance\n", "--owner", "finance"], "NAME", "snake_case"),
    "unicode name": (["finançe", "--owner", "finance"], "domain name", "snake_case"),
    "name with a path separator": (["fin/ance", "--owner", "finance"], "domain name", "snake_case"),
    "upper-case owner": (["finance", "--owner", "Finance"], "owner team", "--owner finance"),
    "contact injecting YAML": (
        ["finance", "--owner", "finance", "--contact", "f@example.com\nkind: aggregate"],
        "contact", "--contact",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("args", "field", "fix"), CLI_CASES.values(), ids=CLI_CASES.keys())
def test_mesh_new_domain_refuses_bad_input_and_writes_nothing(plain_mesh, args, field, fix):
    before = _tree(plain_mesh.root)
    result = run_mesh(plain_mesh.root, "new", "domain", *args, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert field in output and "nothing was written" in output
    assert "fix:" in output and fix in output.split("fix:", 1)[1]
    assert "Traceback" not in output
    assert _tree(plain_mesh.root) == before


@pytest.mark.parametrize(
    ("domain", "name", "field"),
    [("sales", "orders\n", "product name"), ("sales", "../orders", "product name"),
     ("sales\n", "order_stats", "domain name")],
)  # fmt: skip
def test_mesh_new_product_refuses_bad_input_and_writes_nothing(plain_mesh, domain, name, field):
    before = _tree(plain_mesh.root)
    result = run_mesh(plain_mesh.root, "new", "product", domain, name, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert field in output and "fix:" in output and "snake_case" in output
    assert "Traceback" not in output
    assert _tree(plain_mesh.root) == before


# -- one broken domain, the others still answer (the shared built mesh) -------------------------

COUNT_ORDERS = "SELECT count(*) AS n FROM sales.orders"
COUNT_SHIPMENTS = "SELECT count(*) AS n FROM logistics.shipments"


def _query(mesh: Mesh, sql: str, principal: str = "marketing"):
    return run_mesh(mesh.root, "query", "--as", principal, "--format", "csv", sql, timeout=600)


def _count(result) -> int:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return int(result.stdout.strip().splitlines()[-1])


def _refused(result, *needles: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output[-3000:]}"
    return output


def test_a_broken_domain_yaml_makes_only_that_domain_unreadable(attacked_mesh):
    path = attacked_mesh.domains_dir / "logistics" / "domain.yaml"
    with edited(path, "owners: [team:logistics, ", "owners: [team:Logistics, "):
        directory = load_directory(attacked_mesh)  # does not raise
        assert "sales.orders" in directory.descriptors
        with pytest.raises(MeshError) as err:
            directory.get(ProductAddress.parse("logistics.shipments"))
        assert "domains/logistics/domain.yaml" in err.value.what and "lower case" in err.value.what
        assert "DomainSpec" in err.value.fix
        assert _count(_query(attacked_mesh, COUNT_ORDERS)) > 0
        _refused(
            _query(attacked_mesh, COUNT_SHIPMENTS),
            "logistics.shipments", "domains/logistics/domain.yaml", "fix:",
        )  # fmt: skip
    assert _count(_query(attacked_mesh, COUNT_SHIPMENTS)) > 0  # restored: readable again


def test_a_broken_dbt_yaml_makes_only_that_domain_unreadable(attacked_mesh):
    path = attacked_mesh.root / "dbt_projects/logistics/models/products/products.yml"
    with edited(path, "  - name: shipments\n", "  - name: shipments\n   broken: [\n"):
        assert _count(_query(attacked_mesh, COUNT_ORDERS)) > 0
        _refused(
            _query(attacked_mesh, COUNT_SHIPMENTS),
            "logistics.shipments", "dbt_projects/logistics/models/products/products.yml",
            "not valid YAML", "fix:",
        )  # fmt: skip
    assert _count(_query(attacked_mesh, COUNT_SHIPMENTS)) > 0


def test_an_injected_contact_in_a_dbt_descriptor_makes_only_that_product_unreadable(
    attacked_mesh,
):
    path = attacked_mesh.root / "dbt_projects/logistics/models/products/products.yml"
    old = "owner: {team: logistics, contact: logistics-data@example.com}"
    assert path.read_text().count(old) > 1
    text = path.read_text()
    try:
        path.write_text(
            text.replace(old, 'owner: {team: logistics, contact: "x@example.com\\nkind: a"}', 1)
        )
        _refused(
            _query(attacked_mesh, COUNT_SHIPMENTS),
            "logistics.shipments", "contact", "products.yml",
        )  # fmt: skip
        assert _count(_query(attacked_mesh, COUNT_ORDERS)) > 0
    finally:
        path.write_text(text)


def test_a_broken_python_product_yaml_leaves_the_other_domains_readable(attacked_mesh):
    path = attacked_mesh.domains_dir / "marketing" / "products" / "segment_summary.yml"
    with edited(
        path,
        "owner: {team: marketing, contact: marketing-analytics@example.com}",
        "owner: {team: marketing, contact: marketing-analytics@example.com",
    ):
        directory = load_directory(attacked_mesh)
        with pytest.raises(MeshError, match=r"segment_summary\.yml"):
            directory.get(ProductAddress.parse("marketing.segment_summary"))
        assert "sales.orders" in directory.descriptors
        assert _count(_query(attacked_mesh, COUNT_ORDERS)) > 0
        _refused(
            _query(attacked_mesh, "SELECT count(*) FROM marketing.segment_summary", "sales"),
            "marketing.segment_summary", "domains/marketing/products/segment_summary.yml",
            "fix:",
        )  # fmt: skip


@contextlib.contextmanager
def _extra_domain_folder(mesh: Mesh, name: str) -> Iterator[Path]:
    """A folder of domains/ with a copied domain.yaml (and nothing else); removed after."""
    folder = mesh.domains_dir / name
    folder.mkdir()
    try:
        shutil.copy(mesh.domains_dir / "sales" / "domain.yaml", folder / "domain.yaml")
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("folder", ["Bad-Domain", "mesh", "sales_v2"])
def test_a_domain_folder_with_a_bad_name_breaks_nothing_else(attacked_mesh, folder):
    """A folder name that is no valid domain (nor principal) is reported as that domain's
    problem; principals and every real domain still resolve."""
    with _extra_domain_folder(attacked_mesh, folder):
        principals = load_principals(attacked_mesh.root, {"sales", "marketing", folder})
        assert principals.resolve("marketing").id == "marketing"
        assert folder not in principals.domains
        directory = load_directory(attacked_mesh)
        assert "sales.orders" in directory.descriptors
        assert "mesh.sla_history" in directory.descriptors  # the platform's own table
        assert f"domain name '{folder}'" in directory.problems[f"{folder}.*"]
        assert _count(_query(attacked_mesh, COUNT_ORDERS)) > 0
