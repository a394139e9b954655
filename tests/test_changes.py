"""Contract changes between two revisions (products/changes.py), the base revision read from git
without a checkout (products/revision.py), column lineage of a hand-written manifest and the
columns a logged query read (no mesh is built here: fast)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mesh_platform.config import load_mesh
from mesh_platform.discovery.diff import _consumers
from mesh_platform.products.changes import (
    BREAKING,
    RULES,
    diff_products,
    normalise_type,
    type_change,
)
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.lineage import ANY_COLUMN, domain_lineage
from mesh_platform.products.revision import model_nodes, read_revision
from mesh_platform.query.readers import query_columns
from mesh_platform.query.sql import check_query
from mesh_platform.testing import copy_mesh

TODAY = dt.date(2026, 12, 1)


def column(name: str, data_type: str = "bigint", description: str = "", **meta: Any) -> dict:
    return {"name": name, "data_type": data_type, "description": description,
            "config": {"meta": meta}}  # fmt: skip


def product(
    columns: list[dict], *, version: str = "1.0.0", grants: list | None = None, **mesh: Any
) -> ProductDescriptor:
    body = {
        "purpose": "Customer master data for the change tests.",
        "owner": {"team": "sales", "contact": "sales@example.com"},
        "version": version,
        "grants": grants if grants is not None
        else [{"to": "marketing", "purpose": "Segmentation.", "expires": "2027-12-31"}],
        **mesh,
    }  # fmt: skip
    return descriptor_from_node("sales", {
        "resource_type": "model", "access": "public", "name": "customers",
        "description": "Customers.", "patch_path": "sales://models/products.yml",
        "config": {"meta": {"mesh": body}}, "columns": {c["name"]: c for c in columns},
    })  # fmt: skip


BASE = [
    column("customer_key", description="Customer id."),
    column("nation_key", "integer", "Customer's nation."),
    column("segment", "varchar", "Market segment."),
    column("email", "varchar", "Contact email.", classification="pii:email", masking="hash"),
]


def kinds(base: ProductDescriptor, head: ProductDescriptor | None) -> dict[str, str | None]:
    (diff,) = diff_products({"sales.customers": base},
                            {} if head is None else {str(head.address): head}, TODAY)  # fmt: skip
    return {c.kind: c.column or c.principal for c in diff.changes}


def test_the_rule_set_is_one_table_and_names_what_breaks():
    assert {k for k, breaking, _ in RULES if breaking} == BREAKING
    assert {"column_removed", "column_renamed", "column_retyped", "grant_narrowed",
            "classification_stricter", "product_removed"} <= BREAKING  # fmt: skip
    assert not {"column_added", "column_widened", "grant_added"} & BREAKING


def test_removed_added_and_renamed_columns():
    base = product(BASE)
    # nation_key -> nation_id: same type, same description: a rename; a new column: added
    head = product([BASE[0], column("nation_id", "int", "Customer's nation."), *BASE[2:],
                    column("tier", "varchar")])  # fmt: skip
    assert kinds(base, head) == {"column_renamed": "nation_key", "column_added": None}
    # nothing ties segment to code (other type): removed plus added, never a guessed rename
    head = product([*BASE[:2], column("code", "bigint", "A code."), BASE[3]])
    assert kinds(base, head) == {"column_removed": "segment", "column_added": None}
    # two added columns match segment as well: ambiguous, not a rename
    head = product([*BASE[:2], column("a", "varchar", "Market segment."), BASE[3],
                    column("b", "varchar", "Market segment.")])  # fmt: skip
    assert kinds(base, head) == {"column_removed": "segment", "column_added": None}
    # same type and position, another description: a rename (the best effort's other half)
    head = product([*BASE[:2], column("segment_name", "varchar", "Segment."), BASE[3]])
    assert kinds(base, head) == {"column_renamed": "segment", "description_changed": "segment"}


def test_types_spelled_differently_are_one_type_and_promotions_are_not_breaking():
    assert normalise_type("INT") == normalise_type("integer") == "integer"
    assert normalise_type("VARCHAR(20)") == normalise_type("text") == "varchar"
    assert type_change("integer", "int4") is None
    assert type_change("integer", "bigint") == "column_widened"
    assert type_change("decimal(15,2)", "decimal(18,2)") == "column_widened"
    assert type_change("decimal(15,2)", "decimal(15,4)") == "column_retyped"
    assert type_change("bigint", "integer") == "column_retyped"
    assert type_change("varchar", "date") == "column_retyped"
    head = product([BASE[0], column("nation_key", "bigint", "Customer's nation."), *BASE[2:]])
    (diff,) = diff_products({"sales.customers": product(BASE)}, {"sales.customers": head}, TODAY)
    assert [c.kind for c in diff.changes] == ["column_widened"] and not diff.violations


def test_classification_and_masking_changes():
    stricter = [BASE[0], column("nation_key", "integer", "Customer's nation.",
                                classification="confidential"), *BASE[2:]]  # fmt: skip
    assert kinds(product(BASE), product(stricter)) == {"classification_stricter": "nation_key"}
    assert kinds(product(stricter), product(BASE)) == {"classification_looser": "nation_key"}
    other_kind = [*BASE[:3], column("email", "varchar", "Contact email.",
                                    classification="pii:name", masking="hash")]  # fmt: skip
    assert kinds(product(BASE), product(other_kind)) == {"classification_stricter": "email"}
    redact = [*BASE[:3], column("email", "varchar", "Contact email.",
                                classification="pii:email", masking="redact")]  # fmt: skip
    assert kinds(product(BASE), product(redact)) == {"masking_changed": "email"}
    at_read = [*BASE[:3], column("email", "varchar", "Contact email.",
                                 classification="pii:email", masking="hash",
                                 masking_at="read")]  # fmt: skip
    assert kinds(product(BASE), product(at_read)) == {"masking_loosened": "email"}
    assert kinds(product(at_read), product(BASE)) == {"masking_changed": "email"}


def test_grants_narrowed_removed_widened_per_principal():
    grant = {"to": "marketing", "purpose": "Segmentation.", "expires": "2027-12-31"}
    base = product(BASE, grants=[grant])
    narrowed = product(BASE, grants=[{**grant, "columns": ["customer_key", "segment"]}])
    (diff,) = diff_products({"sales.customers": base}, {"sales.customers": narrowed}, TODAY)
    (change,) = diff.changes
    assert (change.kind, change.principal, change.columns) == (
        "grant_narrowed", "marketing", ("email", "nation_key"))  # fmt: skip
    rows = product(BASE, grants=[{**grant, "rows": "segment = 'X'"}])
    assert kinds(base, rows) == {"grant_narrowed": "marketing"}
    assert kinds(base, product(BASE, grants=[])) == {"grant_removed": "marketing"}
    assert kinds(narrowed, base) == {"grant_widened": "marketing"}
    team = {"to": "team:campaigns", "purpose": "Campaigns.", "expires": "2027-12-31"}
    assert kinds(base, product(BASE, grants=[grant, team])) == {"grant_added": "team:campaigns"}
    # a grant that loses a column because the column is gone: the removal says it, once
    without = [c for c in BASE if c["name"] != "segment"]
    listed = {**grant, "columns": ["customer_key", "segment"]}
    head = product(without, grants=[{**grant, "columns": ["customer_key"]}])
    assert kinds(product(BASE, grants=[listed]), head) == {"column_removed": "segment"}


def test_the_versioning_rule_a_major_bump_allows_breaking_changes():
    base = product(BASE)
    dropped = [c for c in BASE if c["name"] != "nation_key"]
    (same,) = diff_products({"sales.customers": base}, {"sales.customers": product(dropped)})
    assert [c.kind for c in same.violations] == ["column_removed"]
    (draft,) = diff_products({"sales.customers": product(BASE, status="draft")},
                             {"sales.customers": product(dropped, status="draft")})  # fmt: skip
    assert draft.breaking and not draft.violations  # a draft promises nothing yet
    bumped = product(dropped, version="2.0.0")
    assert str(bumped.address) == "sales.customers_v2"
    (diff,) = diff_products({"sales.customers": base}, {"sales.customers_v2": bumped}, TODAY)
    assert diff.major_bump and diff.breaking and not diff.violations
    # a new major beside the old one: the old one compared with itself, the new one added
    diffs = diff_products({"sales.customers": base},
                          {"sales.customers": base, "sales.customers_v2": bumped})  # fmt: skip
    assert [(d.base is not None, d.head is not None, d.changes) for d in diffs] == [
        (True, True, ()), (False, True, ())]  # fmt: skip


def test_a_removed_product_breaks_unless_its_sunset_passed():
    base = product(BASE)
    assert kinds(base, None) == {"product_removed": None}
    sunset = product(BASE, status="deprecated", deprecated_on="2026-01-01",
                     sunset_on="2026-06-30")  # fmt: skip
    (diff,) = diff_products({"sales.customers": sunset}, {}, TODAY)
    assert not diff.breaking


def test_model_versions_resolve_like_dbt():
    model = {
        "name": "nations", "description": "Nations.",
        "columns": [column("nation_key", "integer"), column("nation_name", "varchar")],
        "versions": [
            {"v": 1, "config": {"meta": {"mesh": {"version": "1.3.0"}}}},
            {"v": 2, "config": {"meta": {"mesh": {"version": "2.0.0"}}},
             "columns": [{"include": "all", "exclude": ["nation_name"]}, column("nation")]},
        ],
    }  # fmt: skip
    v1, v2 = model_nodes(model, "logistics://models/products.yml")
    assert (v1["version"], list(v1["columns"])) == (1, ["nation_key", "nation_name"])
    assert (v2["version"], list(v2["columns"])) == (2, ["nation_key", "nation"])
    assert v2["config"]["meta"]["mesh"]["version"] == "2.0.0"


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@example.com", "-c",
                    "user.name=t", *args], check=True, capture_output=True)  # fmt: skip


def test_the_base_revision_is_read_from_git_and_the_working_tree_is_left_alone(tmp_path):
    root = copy_mesh(tmp_path / "repo")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "base")
    products = root / "dbt_projects" / "sales" / "models" / "products" / "products.yml"
    products.write_text(products.read_text().replace("version: 1.0.0", "version: 1.1.0"))
    before = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                            capture_output=True, text=True).stdout  # fmt: skip
    revision = read_revision(load_mesh(root), "HEAD")
    assert not revision.problems
    assert {"sales.customers", "logistics.nations", "logistics.nations_v2",
            "marketing.segment_summary"} <= set(revision.descriptors)  # fmt: skip
    assert revision.descriptors["sales.orders"].body.version == "1.0.0"  # the base, not the edit
    assert revision.descriptors["logistics.nations_v2"].column("nation") is not None
    after = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                           capture_output=True, text=True).stdout  # fmt: skip
    assert before == after == " M dbt_projects/sales/models/products/products.yml\n"
    with pytest.raises(Exception, match="no-such-ref"):
        read_revision(load_mesh(root), "no-such-ref")


def test_lineage_of_a_manifest_expands_stars_and_keeps_joins_apart():
    def model(name: str, sql: str, deps: list[str]) -> dict:
        return {"resource_type": "model", "name": name, "compiled_code": sql,
                "relation_name": f'"shop"."main"."{name}"', "depends_on": {"nodes": deps}}  # fmt: skip

    manifest = {
        "sources": {"source.shop.sales.customers": {
            "resource_type": "source", "name": "customers", "source_name": "sales",
            "relation_name": '"shop"."sales"."customers"', "meta": {"mesh_domain": "sales"}}},
        "nodes": {
            "model.shop.base": model("base", 'select * from "shop"."sales"."customers"',
                                     ["source.shop.sales.customers"]),
            "model.shop.top": model(
                "top", 'select b.segment, count(*) as n from "shop"."main"."base" b '
                'where b.nation_key = 3 group by all', ["model.shop.base"]),
            "model.shop.broken": model("broken", "select from from", ["model.shop.base"]),
        },
    }  # fmt: skip
    lineage = domain_lineage("shop", manifest, {"sales.customers": ["id", "nation_key",
                                                                     "segment"]})  # fmt: skip
    assert lineage.columns["model.shop.base"] == ["id", "nation_key", "segment"]  # star expanded
    assert lineage.derives[("model.shop.top", "segment")] == {("model.shop.base", "segment")}
    assert ("model.shop.base", "nation_key") in lineage.uses["model.shop.top"]  # a filter
    assert lineage.direct_users("sales.customers", "nation_key") == ["model.shop.base"]
    assert lineage.nodes["model.shop.broken"].problem  # opaque: reads any column of base
    assert lineage.uses["model.shop.broken"] == {("model.shop.base", ANY_COLUMN)}
    assert lineage.downstream_nodes(["model.shop.base"]) == ["model.shop.broken", "model.shop.top"]
    assert lineage.inputs["sales.customers"] == {("shop", "dbt_projects/shop/")}


def test_who_breaks_a_dropped_column_is_everything_downstream_a_retype_only_what_derives():
    mesh_block = {"purpose": "Products of the impact test.", "version": "1.0.0",
                  "owner": {"team": "shop", "contact": "shop@example.com"}}  # fmt: skip

    def model(name: str, sql: str, deps: list[str], public: bool = True) -> dict:
        return {"resource_type": "model", "name": name, "compiled_code": sql,
                "relation_name": f'"shop"."main"."{name}"', "depends_on": {"nodes": deps},
                "access": "public" if public else "private", "description": name,
                "config": {"meta": {"mesh": mesh_block}}}  # fmt: skip

    manifest = {
        "sources": {"source.shop.sales.customers": {
            "resource_type": "source", "name": "customers", "source_name": "sales",
            "relation_name": '"shop"."sales"."customers"', "meta": {"mesh_domain": "sales"},
            "original_file_path": "models/sources.yml"}},
        "nodes": {
            "model.shop.geo": model("geo", 'select c.id, c.segment from "shop"."sales"."customers" '
                                    "c where c.nation_key = 1", ["source.shop.sales.customers"],
                                    public=False),
            "model.shop.ids": model("ids", 'select id from "shop"."main"."geo"', ["model.shop.geo"]),
            "model.shop.seg": model("seg", 'select segment from "shop"."main"."geo"',
                                    ["model.shop.geo"]),
        },
    }  # fmt: skip
    lineage = domain_lineage("shop", manifest, {"sales.customers": ["id", "nation_key", "segment"]})

    def breaks(column: str, fails: bool) -> tuple[list[str], dict[str, list[str]]]:
        (shop,) = _consumers(lineage, "sales.customers", [column], None, fails)
        assert shop["inputs"] == ["dbt_projects/shop/models/sources.yml"]
        return [m["name"] for m in shop["models"]], {p["address"]: p["columns"]
                                                     for p in shop["products"]}  # fmt: skip

    # dropped, even if only filtered on: geo fails, so every product built from it breaks
    assert breaks("nation_key", True) == (["shop:geo"], {"shop.ids": [], "shop.seg": []})
    # retyped: geo reads it, and only shop.seg's segment is computed from it
    assert breaks("segment", False) == (["shop:geo"], {"shop.seg": ["segment"]})
    assert _consumers(lineage, "sales.customers", ["segment"], "team:other", False) == []


def test_columns_of_a_logged_query():
    columns = {"sales.customers": ["customer_key", "nation_key", "segment"],
               "sales.orders": ["order_key", "customer_key", "total"]}  # fmt: skip

    def read(sql: str) -> tuple[dict, bool]:
        checked = check_query(sql)  # the audit log keeps checked.redacted
        return query_columns(checked.redacted, [str(a) for a in checked.addresses], columns)

    used, exact = read("SELECT segment, count(*) FROM sales.customers WHERE nation_key = 3 "
                       "GROUP BY 1")  # fmt: skip
    assert exact and used == {"sales.customers": {"segment", "nation_key"}}
    used, _ = read("SELECT * FROM sales.customers")
    assert used["sales.customers"] == {"customer_key", "nation_key", "segment"}
    used, _ = read("SELECT c.segment, sum(o.total) FROM sales.orders o JOIN sales.customers c "
                   "USING (customer_key) GROUP BY ALL")  # fmt: skip
    assert used == {"sales.orders": {"customer_key", "total"},
                    "sales.customers": {"customer_key", "segment"}}  # fmt: skip
    used, exact = query_columns("SELECT ( ( ( FROM", ["sales.customers"], columns)
    assert not exact and used["sales.customers"] == set(columns["sales.customers"])
