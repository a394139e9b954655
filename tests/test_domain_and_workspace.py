import pytest
import yaml

from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import DomainError, WorkspaceError
from mesh_platform.testing import REPO
from mesh_platform.workspace import check_workspace, render_workspace


def test_sample_domains_load(mesh_copy):
    assert list_domain_names(mesh_copy) == ["logistics", "marketing", "sales"]
    for name in list_domain_names(mesh_copy):
        domain = load_domain(mesh_copy, name)
        assert domain.dbt_project_dir == mesh_copy.root / "dbt_projects" / name
        assert domain.spec.owners


def test_committed_workspace_matches_domains_folder():
    from mesh_platform.config import load_mesh

    mesh = load_mesh(REPO)
    assert (REPO / "workspace.yaml").read_text() == render_workspace(mesh)
    assert [loc.name for loc in check_workspace(mesh)] == list_domain_names(mesh)


def test_workspace_lists_every_problem_at_once(mesh_copy):
    data = yaml.safe_load(mesh_copy.workspace_file.read_text())
    data["load_from"] = [
        e for e in data["load_from"] if e["python_module"]["location_name"] != "sales"
    ]
    data["load_from"].append(
        {
            "python_module": {
                "module_name": "domains.finance.definitions",
                "location_name": "finance",
            }
        }
    )
    mesh_copy.workspace_file.write_text(yaml.safe_dump(data))
    with pytest.raises(WorkspaceError) as err:
        check_workspace(mesh_copy)
    problems = err.value.problems
    assert any("finance" in p and "no domain folder" in p for p in problems)
    assert any("'sales'" in p and "not listed" in p for p in problems)
    assert "workspace.yaml" in str(err.value)


def test_missing_domain_folder(mesh_copy):
    with pytest.raises(DomainError) as err:
        load_domain(mesh_copy, "finance")
    assert "domains/finance" in str(err.value)
    assert "domains/finance/ with domain.yaml" in str(err.value)


def test_missing_dbt_project(mesh_copy):
    (mesh_copy.root / "dbt_projects/sales/dbt_project.yml").unlink()
    with pytest.raises(DomainError) as err:
        load_domain(mesh_copy, "sales")
    assert "dbt_projects/sales" in str(err.value)
    assert err.value.domain == "sales"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(owners=["Sales Team"]), "must be an email or 'team:<name>'"),
        (lambda d: d.update(name="Sales"), "snake_case"),
        (lambda d: d.update(kind="source"), "kind"),
        (lambda d: d.pop("description"), "description"),
        (lambda d: d.update(raw={"tables": ["orderz"]}), "orderz"),
        (lambda d: d.update(raw={"tables": ["customer_contact"]}), "derived from 'customer'"),
        (lambda d: d.update(colour="blue"), "colour"),
    ],
)
def test_broken_descriptor_names_field_file_and_fix(mesh_copy, edit, expected):
    path = mesh_copy.root / "domains/sales/domain.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DomainError) as err:
        load_domain(mesh_copy, "sales")
    message = str(err.value)
    assert expected in message
    assert str(path) in message
    assert "fix:" in message


def test_folder_and_name_must_agree(mesh_copy):
    path = mesh_copy.root / "domains/sales/domain.yaml"
    path.write_text(path.read_text().replace("name: sales", "name: selling"))
    with pytest.raises(DomainError, match="folder is domains/sales"):
        load_domain(mesh_copy, "sales")
