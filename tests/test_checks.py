"""Load-time checks of a domain's manifest: every problem, with node and file."""

import copy

import pytest

from mesh_platform.dbt.checks import manifest_problems
from mesh_platform.dbt.project import load_manifest
from mesh_platform.domain import list_domain_names, load_domain


@pytest.fixture(scope="module")
def marketing(prepared_mesh):
    domain = load_domain(prepared_mesh, "marketing")
    return domain, load_manifest(domain), list_domain_names(prepared_mesh)


@pytest.mark.parametrize("name", ["sales", "logistics", "marketing"])
def test_sample_domains_comply(prepared_mesh, name):
    domain = load_domain(prepared_mesh, name)
    assert manifest_problems(domain, load_manifest(domain), list_domain_names(prepared_mesh)) == []


def _source(manifest, name):
    return next(n for n in manifest["sources"].values() if n["name"] == name)


def _model(manifest, name):
    return next(n for n in manifest["nodes"].values() if n["name"] == name)


def test_every_problem_is_listed_with_its_file(marketing):
    domain, manifest, known = marketing
    broken = copy.deepcopy(manifest)
    _source(broken, "orders")["config"]["meta"]["mesh_domain"] = "sles"
    _source(broken, "shipments")["config"]["meta"]["mesh_domain"] = "marketing"
    _model(broken, "customer_segments")["config"]["contract"]["enforced"] = False
    _model(broken, "late_delivery_impact")["name"] = "LateDeliveries"
    problems = manifest_problems(domain, broken, known)
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    assert "'sles' is not a domain of this mesh" in joined
    assert "reads its own products with ref()" in joined
    assert "customer_segments' is public without an enforced contract" in joined
    assert "'LateDeliveries'" in joined
    assert "models/staging/sources.yml" in joined
    assert "models/products/customer_segments.sql" in joined


def test_a_source_must_be_declared_raw_or_a_mesh_input(prepared_mesh):
    domain = load_domain(prepared_mesh, "sales")
    manifest = copy.deepcopy(load_manifest(domain))
    source = _source(manifest, "customer_contact")
    # Renamed as dbt renders it: the source, its raw file, and the SQL of the model reading it.
    old = source["relation_name"]
    new = old.replace("customer_contact.parquet", "crm_export.parquet")
    source["name"], source["relation_name"] = "crm_export", new
    for node in manifest["nodes"].values():
        node["compiled_code"] = node["compiled_code"].replace(old, new)
    problems = manifest_problems(domain, manifest, list_domain_names(prepared_mesh))
    assert len(problems) == 1
    assert "raw.crm_export" in problems[0]
    assert "domains/sales/domain.yaml" in problems[0]


def test_descriptor_problems_are_listed_with_the_yaml_file(marketing):
    domain, manifest, known = marketing
    broken = copy.deepcopy(manifest)
    segments = _model(broken, "customer_segments")
    segments["meta"].pop("mesh", None)  # dbt keeps meta in two places
    del segments["config"]["meta"]["mesh"]
    _model(broken, "revenue_by_nation_segment")["config"]["meta"]["mesh"]["version"] = "2.0"
    problems = manifest_problems(domain, broken, known)
    assert len(problems) == 2, problems
    joined = "\n".join(problems)
    assert "product marketing.customer_segments has no descriptor" in joined
    yml = "dbt_projects/marketing/models/products/products.yml"
    assert joined.count(yml) >= 2
    lines = (domain.dbt_project_dir / "models/products/products.yml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines, 1) if "revenue_by_nation_segment" in line)
    version = next(i for i, line in enumerate(lines[at:], at + 1) if "version:" in line)
    # the file, the line of the field in the model's own block, the field by name
    assert (
        f"product marketing.revenue_by_nation_segment: invalid descriptor in {yml}: "
        f"line {version}: mesh.version: must be a semantic version" in joined
    ), joined


def test_two_models_cannot_claim_one_address(marketing):
    domain, manifest, known = marketing
    broken = copy.deepcopy(manifest)
    clone = copy.deepcopy(_model(broken, "customer_segments"))
    clone["unique_id"] = "model.marketing.customer_segments_copy"
    broken["nodes"][clone["unique_id"]] = clone
    problems = manifest_problems(domain, broken, known)
    assert any("marketing.customer_segments is declared twice" in p for p in problems), problems
