"""Descriptor errors say what people edit: the file, the line, the field by name
(`columns[email].masking`, `mesh.grants[marketing].expires`, never a list index), a concrete fix,
and "did you mean" for a mistyped key or value. Broken descriptors go through dbt's real parse
(the manifest the platform loads from) and through a Python product's YAML."""

from __future__ import annotations

import copy
import shutil

import pytest

from mesh_platform.dbt.checks import manifest_problems
from mesh_platform.dbt.project import load_manifest, prepare
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import LoadProblem
from mesh_platform.governance.evaluate import check_domain
from mesh_platform.products.descriptor import (
    DescriptorError,
    descriptor_from_node,
    load_python_descriptor,
)

SALES_YML = "dbt_projects/sales/models/products/products.yml"

# product -> (the text replaced in sales' products.yml, its replacement, which occurrence, the
# text marking the broken line)
BROKEN = {
    "orders": ('purpose: "Order headers', 'purpse: "Order headers', 1, "purpse:"),
    "customers": ("classification: 'pii:email', masking: hash}",
                  "classification: 'pii:email', masking: hsh}", 1, "masking: hsh"),
    "order_lines": ('order book.", expires: 2027-12-31}', 'order book.", expirs: 2027-12-31}', 2,
                    "expirs:"),
}  # fmt: skip


def _replace(text: str, old: str, new: str, occurrence: int) -> str:
    parts = text.split(old)
    assert len(parts) > occurrence, old
    return old.join(parts[:occurrence]) + new + old.join(parts[occurrence:])


def _line_of(text: str, marker: str, after: str | None = None) -> int:
    lines = text.splitlines()
    start = 0 if after is None else next(i for i, s in enumerate(lines) if after in s)
    return next(i for i, s in enumerate(lines[start:], start + 1) if marker in s)


@pytest.fixture(scope="module")
def broken_sales(tmp_path_factory):
    """A copy of the sample mesh whose sales descriptors are broken three ways, parsed by dbt
    (one parse for the module)."""
    from mesh_platform.config import load_mesh
    from mesh_platform.testing import copy_mesh

    mesh = load_mesh(copy_mesh(tmp_path_factory.mktemp("broken") / "mesh"))
    mesh.ensure_state_dir()
    yml = mesh.root / SALES_YML
    text = yml.read_text()
    for old, new, occurrence, _ in BROKEN.values():
        text = _replace(text, old, new, occurrence)
    yml.write_text(text)
    domain = load_domain(mesh, "sales")
    prepare(mesh, domain)
    problems = manifest_problems(domain, load_manifest(domain), list_domain_names(mesh))
    return mesh, text, {p.split(":")[0].removeprefix("product sales."): p for p in problems}


@pytest.mark.parametrize(
    ("product", "field", "message", "fix"),
    [
        ("orders", "mesh.purpse", "unknown key 'purpse'; did you mean 'purpose'?",
         "rename 'purpse' to 'purpose'"),
        ("customers", "columns[email].masking",
         "'hsh' is not one of hash, redact, truncate, tokenise; did you mean 'hash'?",
         "write one of hash, redact, truncate, tokenise"),
        ("order_lines", "mesh.grants[logistics].expirs",
         "unknown key 'expirs'; did you mean 'expires'?", "rename 'expirs' to 'expires'"),
    ],
)  # fmt: skip
def test_a_broken_dbt_descriptor_names_file_line_field_and_the_key_meant(
    broken_sales, product, field, message, fix
):
    _, text, problems = broken_sales
    problem = problems[product]
    assert isinstance(problem, LoadProblem)
    line = _line_of(text, BROKEN[product][3])
    assert problem.what == (
        f"product sales.{product}: invalid descriptor in {SALES_YML}: line {line}: {field}: "
        f"{message}"
    )
    assert problem.file == SALES_YML and problem.line == line
    assert fix in problem.fix
    assert "see the message" not in problem and ".3." not in problem


def test_mesh_check_reports_each_with_its_line_and_fix(broken_sales):
    mesh, text, _ = broken_sales
    found = [v for v in check_domain(mesh, "sales") if v.policy == "descriptor"]
    assert {v.at for v in found} == {_line_of(text, m) for *_, m in BROKEN.values()}
    assert {v.subject for v in found} == {f"sales.{product}" for product in BROKEN}
    for v in found:
        assert v.blocking and v.file == SALES_YML and v.fix and v.fix != "see the message"
        assert v.where == f"{SALES_YML} line {v.at}"


def test_a_missing_mesh_block_points_at_a_close_meta_key(broken_sales):
    """`meta: {mehs: ...}`: the descriptor is not missing, its key is mistyped."""
    mesh, _, _ = broken_sales
    node = next(
        n for n in load_manifest(load_domain(mesh, "sales"))["nodes"].values()
        if n["name"] == "orders"
    )  # fmt: skip
    node = copy.deepcopy(node)
    node["config"]["meta"]["mehs"] = node["config"]["meta"].pop("mesh")
    node["meta"] = {}
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node("sales", node)
    assert "did you mean 'mehs'?" in err.value.what
    assert "rename meta key 'mehs' to 'mesh'" in err.value.fix


def test_a_versioned_model_is_pointed_at_in_its_version_block(prepared_mesh):
    """A problem of logistics.nations v2 names a line inside `versions: - v: 2`, not v1's
    block or the model's (the same keys are written in both versions)."""
    domain = load_domain(prepared_mesh, "logistics")
    node = next(
        n for n in load_manifest(domain)["nodes"].values()
        if n["name"] == "nations" and str(n.get("version")) == "2"
    )  # fmt: skip
    node = copy.deepcopy(node)
    node["config"]["meta"]["mesh"]["grants"][1]["expires"] = "soon"
    node["meta"] = {}
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node("logistics", node, project_dir=domain.dbt_project_dir)
    text = (domain.dbt_project_dir / "models/products/products.yml").read_text()
    v2 = _line_of(text, "- v: 2")
    line = _line_of(text, "{to: sales,", after="- v: 2")
    assert line > v2 and err.value.line == line
    assert f"line {line}: mesh.grants[sales].expires:" in err.value.what
    assert "YYYY-MM-DD" in err.value.fix


def test_a_todo_left_in_a_typed_field_is_named_as_a_todo(prepared_mesh):
    domain = load_domain(prepared_mesh, "sales")
    node = next(
        n for n in load_manifest(domain)["nodes"].values() if n["name"] == "orders"
    )  # fmt: skip
    node = copy.deepcopy(node)
    node["config"]["meta"]["mesh"]["grants"][0]["expires"] = "TODO(mesh): until when?"
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node("sales", node, project_dir=domain.dbt_project_dir)
    assert "mesh.grants[marketing].expires: is still a TODO to fill" in err.value.what
    assert "replace the TODO(mesh): text" in err.value.fix


def test_a_python_descriptor_names_its_lines_and_fields(prepared_mesh, tmp_path):
    source = prepared_mesh.domains_dir / "marketing" / "products" / "segment_summary.yml"
    path = tmp_path / "segment_summary.yml"
    shutil.copy(source, path)
    text = path.read_text()
    text = text.replace("purpose:", "purpos:", 1)
    text = text.replace("{name: value_tier, data_type: varchar, classification: internal,",
                        "{name: value_tier, data_type: varchar, clasification: internal,")  # fmt: skip
    path.write_text(text)
    with pytest.raises(DescriptorError) as err:
        load_python_descriptor(path, "marketing", "domains/marketing/products/segment_summary.yml")
    what = err.value.what
    assert f"line {_line_of(text, 'purpos:')}: mesh.purpos: unknown key 'purpos'; " \
           "did you mean 'purpose'?" in what  # fmt: skip
    assert f"line {_line_of(text, 'clasification')}: columns[value_tier].clasification: " \
           "unknown key 'clasification'; did you mean 'classification'?" in what  # fmt: skip
    assert err.value.line == _line_of(text, "purpos:")  # the first problem


BLOCK_STYLE = """version: 2
models:
  - name: invoices
    description: One row per invoice, for finance's reporting.
    config:
      meta:
        mesh:
          purpose: Invoices for finance's reporting.
          owner: {team: finance, contact: finance@example.com}
          version: 1.0.0
    columns:
      - name: invoice_key
        data_type: bigint
        description: The invoice.
        config:
          meta:
            clasification: internal
      - name: amount
        data_type: decimal(18,2)
        description: Amount due.
        config:
          meta:
            classification: internal
            masking: 3
"""


def test_block_style_column_meta_is_pointed_at_on_its_own_line():
    """dbt's node as parsed from the YAML above (columns with their config.meta)."""
    import yaml

    model = yaml.safe_load(BLOCK_STYLE)["models"][0]
    node = {
        "name": model["name"], "description": model["description"], "config": model["config"],
        "columns": {c["name"]: c for c in model["columns"]},
        "original_file_path": "models/products/invoices.sql",
        "patch_path": "finance://models/products/products.yml",
    }  # fmt: skip
    with pytest.raises(DescriptorError) as err:
        descriptor_from_node("finance", node, yaml_text=BLOCK_STYLE)
    typo, masking = _line_of(BLOCK_STYLE, "clasification"), _line_of(BLOCK_STYLE, "masking: 3")
    assert (
        f"line {typo}: columns[invoice_key].clasification: unknown key 'clasification'; "
        "did you mean 'classification'?" in err.value.what
    )
    assert f"line {masking}: columns[amount].masking: 3 is not one of hash" in err.value.what
