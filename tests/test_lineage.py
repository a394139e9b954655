"""Column-level lineage of the sample mesh (sqlglot over the prepared manifests' compiled SQL),
and the same lineage in `mesh describe` and the HTML catalog."""

from __future__ import annotations

import json
import re

import pytest

from mesh_platform.config import Mesh
from mesh_platform.discovery.catalog import product_records
from mesh_platform.discovery.html import catalog_data, render_catalog
from mesh_platform.products.lineage import mesh_lineage
from mesh_platform.testing import run_mesh, why

pytestmark = pytest.mark.e2e


def test_columns_are_traced_within_and_across_domains(sample_build: Mesh):
    lineage = mesh_lineage(sample_build)
    assert not lineage.problems
    assert not [n.key for n in lineage.nodes.values() if n.problem]
    # marketing.customer_segments.market_segment <- its staging model <- sales' product <- raw
    assert lineage.upstream("marketing.customer_segments", "market_segment") == [
        ("model.marketing.stg_customer_geo", "market_segment"),
        ("sales.customers", "market_segment"),
        ("model.sales.stg_customers", "market_segment"),
        ("source.sales.raw.customer", "c_mktsegment"),
    ]
    derived = lineage.derived_from("sales.customers", "market_segment")
    assert ("marketing.revenue_by_nation_segment", "market_segment") in derived
    # nation_key is only joined on: no column is computed from it, but a model uses it
    assert lineage.derived_from("sales.customers", "nation_key") == []
    assert lineage.direct_users("sales.customers", "nation_key") == [
        "model.marketing.stg_customer_geo"
    ]
    # a Python product reads its inputs opaquely: every column
    assert "marketing.segment_summary" in lineage.direct_users("marketing.customer_segments",
                                                               "value_tier")  # fmt: skip
    value_tier = set(lineage.upstream("marketing.customer_segments", "value_tier"))
    assert {("sales.order_lines", "net_revenue"), ("sales.orders", "customer_key")} <= value_tier


def test_describe_shows_each_columns_lineage(sample_build: Mesh):
    result = run_mesh(sample_build.root, "describe", "marketing.customer_segments")
    assert result.returncode == 0, why(result)
    assert "column lineage" in result.stdout
    lineage = result.stdout[result.stdout.index("column lineage") :]
    (row,) = [line for line in lineage.splitlines() if line.startswith("│ market_segment ")]
    assert "marketing:stg_customer_geo.market_segment" in row  # within marketing
    assert "sales.customers.market_segment" in row  # across domains, through the source
    assert "marketing.segment_summary" in row  # read by the Python product


def test_the_catalog_shows_each_columns_lineage(sample_build: Mesh):
    records = product_records(sample_build, with_checks=False)
    data = catalog_data(sample_build, records)
    (customers,) = [p for p in data["products"] if p["address"] == "sales.customers"]
    rows = {r["column"]: r for r in customers["column_lineage"]}
    assert rows["nation_key"]["read_by"] == ["marketing:stg_customer_geo"]
    assert "marketing.customer_segments.market_segment" in rows["market_segment"]["downstream"]
    page = render_catalog(json.loads(json.dumps(data, default=str)))
    article = re.search(r'<article[^>]*data-address="sales\.customers".*?</article>', page, re.S)
    assert article is not None
    section = article.group(0)
    assert 'class="column-lineage"' in section
    nation = re.search(r'<tr data-column="nation_key">.*?</tr>', section, re.S)
    assert nation is not None and "marketing:stg_customer_geo" in nation.group(0)
