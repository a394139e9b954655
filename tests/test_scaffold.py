"""`mesh new domain` / `mesh new product`: a scaffolded domain builds, validates and passes its
own generated test; bad input is refused with nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mesh_platform import scaffold
from mesh_platform.config import load_mesh
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import DomainError, MeshError
from mesh_platform.products.descriptor_lines import TODO_MARKER as TODO
from mesh_platform.scaffold import new_domain, new_product
from mesh_platform.scaffold.validate import ScaffoldError
from mesh_platform.testing import copy_mesh, mesh_files

BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}


def _run(root: Path, *cmd: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(cmd), cwd=root, env=_env(), capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result


@pytest.mark.e2e
def test_a_scaffolded_domain_builds_validates_and_passes_its_test(tmp_path):
    root = copy_mesh(tmp_path / "mesh")
    mesh = load_mesh(root)
    result = new_domain(
        mesh, "finance", team="finance", description="Invoices and payments of customers."
    )
    assert {str(p) for p in result.created} == {
        "domains/finance", "dbt_projects/finance", "tests/test_domain_finance.py",
    }  # fmt: skip
    assert "finance" in list_domain_names(mesh)
    workspace = yaml.safe_load((root / "workspace.yaml").read_text())
    assert "domains.finance.definitions" in [
        e["python_module"]["module_name"] for e in workspace["load_from"]
    ]
    principals = yaml.safe_load((root / "principals.yaml").read_text())["principals"]
    assert "team:finance" in [p["id"] for p in principals]
    assert "mesh build --domain finance" in result.next_commands
    new_product(mesh, "finance", "invoices")
    mesh_cli = str(BIN / "mesh")
    todo = subprocess.run([mesh_cli, "--root", str(root), "check", "--domain", "finance"],
                          env=_env(), capture_output=True, text=True, check=False)  # fmt: skip
    assert todo.returncode == 1 and "scaffold_todos" in todo.stdout, todo.stdout + todo.stderr
    _fill_todos(root / "dbt_projects/finance/models/products/products.yml")
    _run(root, mesh_cli, "--root", str(root), "check", "--domain", "finance")
    built = _run(root, mesh_cli, "--root", str(root), "build", "--domain", "finance",
                 "--scale", "0.01")  # fmt: skip
    assert "finance/regions" in built.stdout and "finance/invoices" in built.stdout
    from mesh_platform.query.engine import QuerySession

    with QuerySession("team:finance", mesh=mesh) as session:  # the scaffolded grant works
        regions = session.sql("SELECT * FROM finance.regions ORDER BY region_key")
    assert regions.num_rows == 5
    assert regions.column("nation_count").to_pylist() == [5, 5, 5, 5, 5]

    validated = _run(root, str(BIN / "dagster"), "definitions", "validate", "-w",
                     str(root / "workspace.yaml"))  # fmt: skip
    assert "Validation successful for code location finance" in (
        validated.stdout + validated.stderr
    )
    code = root / "domains" / "finance"  # the domain as a Dagster component, a dg project
    assert yaml.safe_load((code / "defs" / "domain" / "defs.yaml").read_text()) == {
        "type": "mesh_platform.components.DomainComponent"
    }
    assert (code / "dg.toml").is_file()
    checked = _run(code, str(BIN / "dg"), "check", "defs")
    assert "All definitions loaded successfully." in checked.stdout
    generated = _run(root, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     "tests/test_domain_finance.py")  # fmt: skip
    assert "2 passed" in generated.stdout
    # The team replaces the example product as told: the generated test checks what the
    # domain declares now, whatever its name.
    yml = root / "dbt_projects/finance/models/products/products.yml"
    data = yaml.safe_load(yml.read_text())
    data["models"] = [m for m in data["models"] if m["name"] != "regions"]
    yml.write_text(yaml.safe_dump(data, sort_keys=False))
    (root / "dbt_projects/finance/models/products/regions.sql").unlink()
    generated = _run(root, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     "tests/test_domain_finance.py")  # fmt: skip
    assert "2 passed" in generated.stdout


def _fill_todos(path: Path) -> None:
    """What the team does with a skeleton: write every TODO(mesh) value (here, its text)."""
    text = path.read_text()
    assert TODO in text
    path.write_text(text.replace(f"{TODO} ", ""))


@pytest.fixture
def mesh(tmp_path):
    return load_mesh(copy_mesh(tmp_path / "mesh"))


@pytest.mark.parametrize("name", ["Finance", "1finance", "fin-ance", "raw", "finance_v2", ""])
def test_an_invalid_domain_name_is_refused_before_anything_is_written(mesh, name):
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError) as err:
        new_domain(mesh, name, team="finance")
    assert "name" in err.value.what and err.value.fix
    assert mesh_files(mesh.root) == before


def test_scaffolding_over_an_existing_domain_is_refused(mesh):
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError, match="already exists") as err:
        new_domain(mesh, "sales", team="sales")
    assert "mesh new product sales" in err.value.fix
    assert mesh_files(mesh.root) == before


def test_an_unwritable_workspace_leaves_nothing_half_written(mesh):
    before = mesh_files(mesh.root)
    workspace = mesh.workspace_file
    original = workspace.read_bytes()
    workspace.unlink()
    workspace.mkdir()  # not a file: it cannot be rewritten (a permission check is moot as root)
    try:
        with pytest.raises(ScaffoldError, match=r"workspace\.yaml") as err:
            new_domain(mesh, "finance", team="finance")
        assert "nothing was written" in err.value.what
        assert not (mesh.domains_dir / "finance").exists()
        assert not (mesh.dbt_projects_dir / "finance").exists()
    finally:
        workspace.rmdir()
        workspace.write_bytes(original)
    assert mesh_files(mesh.root) == before
    assert not list(mesh.root.glob(".mesh-new-*"))  # no staging folder left


def test_a_failure_midway_rolls_everything_back(mesh, monkeypatch):
    """The catalog step fails after the files were moved: they are removed again and the
    shared files restored."""
    before = mesh_files(mesh.root)

    def broken(*args, **kwargs):
        raise OSError("catalog unreachable")

    monkeypatch.setattr(scaffold, "open_catalog", broken)  # where new_domain opens it
    with pytest.raises(ScaffoldError, match="catalog unreachable"):
        new_domain(mesh, "finance", team="finance")
    assert mesh_files(mesh.root) == before
    assert "finance" not in list_domain_names(mesh)


def test_bad_owner_and_contact_are_refused(mesh):
    with pytest.raises(ScaffoldError, match="owner team"):
        new_domain(mesh, "finance", team="fin ance")
    with pytest.raises(ScaffoldError, match="contact"):
        new_domain(mesh, "finance", team="finance", contact="not-an-email")


@pytest.mark.parametrize(
    ("domain", "name", "used_by"),
    [
        ("sales", "orders", "a model in dbt_projects/sales/models/products/orders.sql"),
        ("sales", "stg_orders", "a model in dbt_projects/sales/models/staging/"),
        ("marketing", "segment_summary",
         "a Python product in domains/marketing/products/segment_summary.yml"),
    ],
)  # fmt: skip
def test_new_product_refuses_a_name_the_domain_already_uses(mesh, domain, name, used_by):
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError, match="already used") as err:
        new_product(mesh, domain, name)
    assert used_by in err.value.what and "nothing was written" in err.value.what
    assert mesh_files(mesh.root) == before


def test_new_product_refuses_a_seed_name(mesh):
    seeds = mesh.dbt_projects_dir / "sales" / "seeds"
    seeds.mkdir()
    (seeds / "holidays.csv").write_text("day\n2025-12-25\n")
    with pytest.raises(ScaffoldError, match=r"a seed in dbt_projects/sales/seeds/holidays\.csv"):
        new_product(mesh, "sales", "holidays")


@pytest.mark.parametrize("word", ["select", "order", "values", "qualify", "from"])
def test_sql_reserved_words_are_refused_as_names(mesh, word):
    before = mesh_files(mesh.root)
    with pytest.raises(ScaffoldError, match=r"reserved SQL word|SQL keyword") as err:
        new_product(mesh, "sales", word)
    assert f"{word!r}" in err.value.what and err.value.fix
    with pytest.raises(ScaffoldError, match=r"reserved SQL word|SQL keyword"):
        new_domain(mesh, word, team="finance")
    assert mesh_files(mesh.root) == before


def test_new_product_refuses_unknown_domains_and_bad_names(mesh):
    before = mesh_files(mesh.root)
    with pytest.raises(DomainError):
        new_product(mesh, "nowhere", "things")
    with pytest.raises(ScaffoldError, match="invalid product name"):
        new_product(mesh, "sales", "Order-Stats")
    assert mesh_files(mesh.root) == before


HEAD = "version: 2\n# Sales' public products, reviewed by the council.\n"


@pytest.mark.parametrize(
    "before",
    [
        "",
        "version: 2\nmodels: []\n",
        HEAD + "models: []  # none yet\nsources: []\n",
        HEAD + "models:\n",
        HEAD + "models: [{name: legacy, description: 'Kept as it is.'}]\n",
        HEAD + "models:\n  - name: legacy  # keep\n    description: Kept as it is.\n\n"
        "# what sales reads\nsources:\n  - name: raw\n    tables: [{name: t}]\n",
    ],
    ids=["empty", "empty-flow", "flow-then-block", "null", "flow-item", "block-then-block"],
)
def test_new_product_writes_valid_yaml_whatever_the_file_looks_like(mesh, before):
    yml = mesh.dbt_projects_dir / "sales/models/products/products.yml"
    yml.write_text(before)
    new_product(mesh, "sales", "order_stats")
    after = yml.read_text()
    data = yaml.safe_load(after)  # valid YAML
    names = [m["name"] for m in data["models"]]
    assert names[-1] == "order_stats" and names.count("order_stats") == 1
    previous = yaml.safe_load(before) or {}
    assert names[:-1] == [m["name"] for m in previous.get("models") or []]
    for key, value in previous.items():  # every other block as it was
        if key != "models":
            assert data[key] == value
    for line in before.splitlines():  # comments kept
        if "#" in line:
            assert line[line.index("#") :] in after
    entry = data["models"][-1]
    assert entry["config"]["meta"]["mesh"]["purpose"].startswith(TODO)


def test_a_new_product_skeleton_blocks_on_its_todos_then_passes_every_policy(mesh):
    from mesh_platform.governance.evaluate import check_domain

    result = new_product(mesh, "sales", "order_stats")
    assert [str(p) for p in result.created] == [
        "dbt_projects/sales/models/products/order_stats.sql"
    ]
    yml = mesh.dbt_projects_dir / "sales/models/products/products.yml"
    declared = yaml.safe_load(yml.read_text())["models"]
    entry = next(m for m in declared if m["name"] == "order_stats")
    body = entry["config"]["meta"]["mesh"]
    assert body["owner"] == {"team": "sales", "contact": "sales-data@example.com"}
    assert body["status"] == "draft" and body["grants"][0]["to"] == "team:sales"

    lines = yml.read_text().splitlines()
    todo_lines = {i for i, line in enumerate(lines, 1) if TODO in line}
    blocking = [v for v in check_domain(mesh, "sales") if v.blocking]
    assert {v.policy for v in blocking} == {"scaffold_todos"}, [v.line() for v in blocking]
    assert {v.at for v in blocking} == todo_lines and len(todo_lines) == 4
    for v in blocking:
        assert v.subject == "sales.order_stats" and v.file == str(yml.relative_to(mesh.root))
        assert f"line {v.at}" in v.fix
    purpose = next(v for v in blocking if "mesh.purpose" in v.message)
    assert purpose.message.startswith("models[order_stats].config.meta.mesh.purpose is still")

    _fill_todos(yml)
    blocking = [v for v in check_domain(mesh, "sales") if v.blocking]
    assert blocking == [], "\n".join(v.line() for v in blocking)
    with pytest.raises(MeshError, match="already used"):
        new_product(mesh, "sales", "order_stats")
