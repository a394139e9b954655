"""`mesh catalog`: one self-contained static HTML page of every domain and product.

Rendering and writing are checked in Python; search, lineage links, personal-data marks, access
info, escaping of hostile descriptor text and "no network" in headless Chromium on the file:// page.
The shared mesh is prepared but never built, so every product is "not published" there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

import pytest

from mesh_platform.config import load_mesh
from mesh_platform.dbt.project import prepare
from mesh_platform.discovery.catalog import CheckInfo, SnapshotInfo, product_records, search
from mesh_platform.discovery.html import (
    INDEX,
    catalog_command,
    catalog_data,
    render_catalog,
    script_json,
    write_catalog,
)
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import MeshError
from mesh_platform.testing import ARTIFACTS, copy_mesh

HOSTILE = "</script><script>window.pwned=1</script><b>bold</b> &amp; <!-- x"
HOSTILE_PURPOSE = '<img src=x onerror="window.pwned=2"> "quoted" & more'
DATA_SCRIPT = re.compile(r'<script type="application/json" id="mesh-data">(.*?)</script>', re.S)


def _embedded(page_html: str) -> dict:
    (raw,) = DATA_SCRIPT.findall(page_html)
    return json.loads(raw)


def _product(address: str) -> str:
    """Selector of a product's section (its id has a dot: match the data attribute)."""
    return f'article.product[data-address="{address}"]'


@pytest.fixture(scope="module")
def records(prepared_mesh):
    return product_records(prepared_mesh)


@pytest.fixture(scope="module")
def catalog_file(prepared_mesh, tmp_path_factory) -> Path:
    return write_catalog(prepared_mesh, tmp_path_factory.mktemp("catalog") / "site" / "nested")


class Opened:
    def __init__(self, browser, path: Path) -> None:
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(path.as_uri())

    def visible(self) -> list[str]:
        return self.page.eval_on_selector_all(
            "article.product:not([hidden])", "els => els.map(e => e.dataset.address)"
        )

    def hidden(self) -> list[str]:
        return self.page.eval_on_selector_all(
            "article.product[hidden]", "els => els.map(e => e.dataset.address)"
        )


@pytest.fixture
def opened(browser, catalog_file):
    view = Opened(browser, catalog_file)
    yield view
    view.page.close()
    assert not view.errors, view.errors


# -- written file -------------------------------------------------------------------------------


def test_catalog_is_one_self_contained_file_with_every_product(
    prepared_mesh, catalog_file, records
):
    assert catalog_file.name == INDEX
    assert [p.name for p in catalog_file.parent.iterdir()] == [INDEX]  # no temp file left
    page = catalog_file.read_text()
    # no external asset of any kind: no stylesheet link, no src, no import, no web URL
    for needle in ("<link", " src=", "@import", "url(", "http://", "https://", "//cdn"):
        assert needle not in page, needle
    data = _embedded(page)
    assert [p["address"] for p in data["products"]] == [r.address for r in records]
    # every domain, plus the platform's own section (mesh.sla_history)
    assert [d["name"] for d in data["domains"]] == sorted(
        [*list_domain_names(prepared_mesh), "mesh"]
    )
    for r in records:
        assert f'id="product-{r.address}"' in page
    # unpublished products are shown as such, not skipped or failing
    assert all(not p["published"] for p in data["products"])
    assert page.count("Not published yet") == len(records)


def test_writing_again_replaces_the_page_atomically(prepared_mesh, tmp_path):
    first = write_catalog(prepared_mesh, tmp_path)
    first.write_text("left over from an earlier write")
    second = catalog_command(prepared_mesh, tmp_path)
    assert second == first.resolve() and second.is_absolute()
    assert "left over from an earlier write" not in second.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX]


def test_output_under_a_file_is_a_clear_error_and_writes_nothing(prepared_mesh, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    with pytest.raises(MeshError) as info:
        write_catalog(prepared_mesh, blocker / "catalog")
    assert "cannot write the catalog" in info.value.what
    assert "writable directory" in info.value.fix
    assert blocker.read_text() == "a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


def test_failed_rename_leaves_no_partial_file(prepared_mesh, tmp_path):
    (tmp_path / INDEX).mkdir()  # index.html cannot be replaced: it is a directory
    with pytest.raises(MeshError, match="cannot write the catalog"):
        write_catalog(prepared_mesh, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [INDEX]
    assert not any((tmp_path / INDEX).iterdir())


def test_script_json_cannot_close_its_script_tag():
    value = {"d": HOSTILE, "e": "a\u2028b </SCRIPT > <!-- -->"}
    text = script_json(value)
    assert "<" not in text and ">" not in text
    assert json.loads(text) == value


def test_placeholders_in_descriptor_text_are_not_substituted(prepared_mesh, records):
    data = catalog_data(prepared_mesh, records)
    data["products"][0]["description"] = "{{data}} {{title}}"
    page = render_catalog(data)
    assert page.count('id="mesh-data"') == 1
    assert "{{data}} {{title}}" in page


def test_a_domain_without_products_is_still_listed(prepared_mesh, records):
    sales_only = [r for r in records if r.domain == "sales"]
    page = render_catalog(catalog_data(prepared_mesh, sales_only))
    section = page.split('id="domain-logistics"', 1)[1].split("</section>", 1)[0]
    assert "No products yet." in section and "0 products" in section
    assert '<option value="logistics">' in page


def test_published_products_show_snapshot_rows_time_and_sla(prepared_mesh, records):
    now = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)
    old = SnapshotInfo(11, "2026-02-27T05:00:00+00:00", 1500, "b-1")
    fresh = SnapshotInfo(4242, "2026-03-02T05:00:00+00:00", 1234567, "batch-7")
    stale = SnapshotInfo(99, "2026-02-20T05:00:00+00:00", 10, "b-9")
    by = {r.address: r for r in records}
    orders = dataclasses.replace(
        by["sales.orders"], current=fresh, history=[old, fresh],
        checks=[CheckInfo("gate_contract", "passed", "2026-03-02T05:01:00+00:00")],
    )  # fmt: skip
    customers = dataclasses.replace(
        by["sales.customers"], current=stale, history=[stale],
        checks=[CheckInfo("gate_contract", "failed", "2026-02-20T05:01:00+00:00")],
    )  # fmt: skip
    page = render_catalog(catalog_data(prepared_mesh, [orders, customers], now))
    section = page.split('id="product-sales.orders"', 1)[1].split("</article>", 1)[0]
    for text in ("4242", "2026-03-02 05:00:00 UTC", "1,234,567", "batch-7", "SLA holds"):
        assert text in section, text
    assert "Snapshots on main (last 2 of 2)" in section
    section = page.split('id="product-sales.customers"', 1)[1].split("</article>", 1)[0]
    assert "SLA violated" in section and "checks failed" in section


# -- in the browser -----------------------------------------------------------------------------


def test_page_shows_every_product_and_makes_no_network_request(opened, records):
    page = opened.page
    assert opened.visible() == [r.address for r in records]
    assert page.locator("#search").is_visible()
    assert page.locator("#no-match").is_hidden()
    for r in records:
        section = page.locator(_product(r.address))
        assert section.locator("h3").inner_text() == r.address
        assert "Not published yet" in section.locator(".published").inner_text()
    # deprecations are visible
    for r in records:
        if r.descriptor.body.status == "deprecated":
            section = page.locator(_product(r.address))
            assert "deprecated" in section.get_attribute("class")
            assert section.locator(".deprecation").inner_text().startswith("Deprecated")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "catalog.png"), full_page=False)
    assert opened.requests and all(url.startswith("file://") for url in opened.requests), (
        opened.requests
    )


@pytest.mark.parametrize("text", ["customer", "nation_key", "REVENUE", "sales", "contact person"])
def test_search_filters_like_the_python_search(opened, records, text):
    page = opened.page
    page.fill("#search", text)
    expected = [r.address for r in search(records, text)]
    assert expected, "pick a term that matches something"
    assert opened.visible() == expected
    assert sorted(opened.hidden()) == sorted(set(r.address for r in records) - set(expected))
    assert (
        page.locator("#summary").inner_text() == f"{len(expected)} of {len(records)} products match"
    )
    assert page.locator("#no-match").is_hidden()
    page.fill("#search", "")
    assert len(opened.visible()) == len(records)


def test_search_without_match_says_so(opened, records):
    page = opened.page
    page.locator("#search").press_sequentially("no-such-product")
    assert opened.visible() == []
    assert page.locator("#no-match").is_visible()
    assert "No product matches" in page.locator("#no-match").inner_text()
    assert "no-such-product" in page.locator("#no-match").inner_text()
    assert page.locator("section.domain:not([hidden])").count() == 0
    page.keyboard.press("Escape")
    assert len(opened.visible()) == len(records)
    assert page.locator("#no-match").is_hidden()


def test_domain_filter_combines_with_search(opened, records):
    page = opened.page
    page.select_option("#domain-filter", "marketing")
    assert opened.visible() == [r.address for r in records if r.domain == "marketing"]
    page.fill("#search", "segment")
    expected = [r.address for r in search(records, "segment") if r.domain == "marketing"]
    assert opened.visible() == expected
    assert page.locator("section.domain:not([hidden])").count() == 1


def test_lineage_links_navigate_to_the_other_product(opened, records):
    page = opened.page
    by = {r.address: r for r in records}
    consumer = "marketing.customer_segments"
    assert "sales.customers" in by[consumer].upstream
    assert consumer in by["sales.customers"].downstream
    upstream = page.locator(f"{_product(consumer)} .upstream a", has_text="sales.customers")
    upstream.click()
    page.wait_for_function("location.hash === '#product-sales.customers'")
    target = page.locator(_product("sales.customers"))
    target.wait_for(state="visible")
    page.wait_for_function(
        "() => { const r = document.getElementById('product-sales.customers')"
        ".getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; }"
    )
    assert page.evaluate("document.querySelector(':target').dataset.address") == "sales.customers"
    page.locator(f"{_product('sales.customers')} .downstream a", has_text=consumer).click()
    page.wait_for_function(f"location.hash === '#product-{consumer}'")
    assert page.locator(_product(consumer)).is_visible()


def test_lineage_link_to_a_product_hidden_by_the_search_shows_it(opened, records):
    page = opened.page
    by = {r.address: r for r in records}
    product, source = "marketing.segment_summary", "marketing.customer_segments"
    assert by[product].upstream == [source]
    matching = [r.address for r in search(records, "segment_summary")]
    assert product in matching and source not in matching
    page.fill("#search", "segment_summary")
    assert page.locator(_product(source)).is_hidden()
    page.locator(f"{_product(product)} .upstream a", has_text=source).click()
    page.wait_for_function(f"location.hash === '#product-{source}'")
    page.locator(_product(source)).wait_for(state="visible")
    assert page.input_value("#search") == ""
    assert len(opened.visible()) == len(records)


def test_personal_data_columns_are_marked(opened, records):
    page = opened.page
    (customers,) = [r for r in records if r.address == "sales.customers"]
    pii = [
        c.name for c in customers.descriptor.columns if (c.classification or "").startswith("pii:")
    ]
    assert pii == ["full_name", "email", "phone"]
    section = page.locator(_product("sales.customers"))
    marked = section.locator("table.schema tr.pii")
    assert [marked.nth(i).get_attribute("data-column") for i in range(marked.count())] == pii
    for i in range(marked.count()):
        assert "personal data" in marked.nth(i).inner_text()
    assert section.locator("table.schema tbody tr").count() == len(customers.descriptor.columns)
    # a product without personal data has no mark
    assert page.locator(f"{_product('sales.orders')} tr.pii").count() == 0
    assert "3 personal-data column(s)" in section.locator(".schema h4").inner_text()


def test_grants_owner_contact_and_descriptor_file_are_shown(opened, records):
    page = opened.page
    for r in records:
        body = r.descriptor.body
        section = page.locator(_product(r.address))
        grants = section.locator("table.grants tbody tr")
        assert grants.count() == len(body.grants)
        for i, grant in enumerate(body.grants):
            assert grants.nth(i).locator(".principal").inner_text() == grant.to
            assert grants.nth(i).locator(".purpose").inner_text() == grant.purpose
        request = section.locator(".request")
        text = request.inner_text()
        assert body.owner.team in text and r.descriptor.source_file in text
        mail = request.locator(f'a[href="mailto:{body.owner.contact}"]')
        assert mail.inner_text() == body.owner.contact
    customers = page.locator(_product("sales.customers")).locator("table.grants").inner_text()
    assert "market_segment IN ('HOUSEHOLD', 'BUILDING')" in customers
    assert "2027-12-31" in customers


# -- hostile descriptor text --------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_catalog(tmp_path_factory) -> Path:
    root = copy_mesh(tmp_path_factory.mktemp("hostile") / "mesh")
    yml = root / "dbt_projects" / "sales" / "models" / "products" / "products.yml"
    text = yml.read_text()
    old_description = (
        "    description: >\n"
        "      One row per customer with market segment, nation and contact details. "
        "Contains personal\n      data (full name, email, phone).\n"
    )
    old_purpose = '"Segment customers by market and nation; no contact details needed."'
    assert old_description in text and old_purpose in text
    text = text.replace(old_description, f"    description: {json.dumps(HOSTILE)}\n")
    text = text.replace(old_purpose, json.dumps(HOSTILE_PURPOSE))
    yml.write_text(text)
    mesh = load_mesh(root)
    mesh.ensure_state_dir()
    for name in list_domain_names(mesh):
        prepare(mesh, load_domain(mesh, name))
    return write_catalog(mesh, tmp_path_factory.mktemp("hostile_site"))


def test_hostile_text_is_escaped_in_the_file(hostile_catalog):
    page = hostile_catalog.read_text()
    assert "<b>bold</b>" not in page
    assert "window.pwned=1</script>" not in page
    assert "<img src=x" not in page
    assert "&lt;/script&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;b&gt;bold" in page
    (raw,) = DATA_SCRIPT.findall(page)
    assert "</" not in raw and "<" not in raw
    (customers,) = [p for p in json.loads(raw)["products"] if p["address"] == "sales.customers"]
    assert customers["description"] == HOSTILE
    assert customers["grants"][0]["purpose"] == HOSTILE_PURPOSE


def test_hostile_text_is_shown_as_text_in_the_browser(browser, hostile_catalog):
    view = Opened(browser, hostile_catalog)
    page = view.page
    try:
        assert page.evaluate("typeof window.pwned") == "undefined"
        section = page.locator(_product("sales.customers"))
        assert section.locator(".description").inner_text() == HOSTILE
        assert section.locator("table.grants .purpose").first.inner_text() == HOSTILE_PURPOSE
        assert section.locator("b, img").count() == 0
        assert (
            page.evaluate(
                "JSON.parse(document.getElementById('mesh-data').textContent).products"
                ".find(p => p.address === 'sales.customers').description"
            )
            == HOSTILE
        )
        assert page.locator("article.product").count() == len(
            _embedded(hostile_catalog.read_text())["products"]
        )
        page.fill("#search", "<b>bold")
        assert view.visible() == ["sales.customers"]
        assert all(url.startswith("file://") for url in view.requests), view.requests
    finally:
        page.close()
    assert not view.errors, view.errors
