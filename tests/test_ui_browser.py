"""The Dagster UI as the operators' window, read like a person reads it.

A real build of the sample mesh (SF 0.01, so every check has a result), then `mesh ui` on a free
loopback port, opened in headless Chromium: the asset page of a product shows its description,
owners, tags, kinds, column schema with classification, table name and mesh address, and its
checks with their results; marketing's lineage leads back into the sales domain. Full-page
screenshots of every page visited are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from mesh_platform.config import load_mesh
from mesh_platform.testing import ARTIFACTS, LOCATIONS, MESH, copy_mesh, free_port, graphql

pytestmark = pytest.mark.e2e

SF = 0.01
TIMEOUT_MS = 60_000  # the React app renders lazily: every wait is generous
PRODUCT = "sales/customers"
CHECKS = (
    "contract",
    "expectations",
    "pii_detection",
    "pii_masking_verified",
    "schema_compatible",
    "volume",
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}


@dataclass
class RunningUI:
    root: Path
    url: str
    log: Path


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUI]:
    """A built copy of the sample mesh with `mesh ui` serving it on loopback."""
    work = tmp_path_factory.mktemp("ui_browser")
    root = copy_mesh(work / "mesh")
    build = subprocess.run(
        [MESH, "--root", str(root), "build", "--scale", str(SF)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=_env(),
        cwd=root,
        check=False,
    )
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]

    port = free_port()
    log = work / "mesh-ui.log"  # a file, not a pipe: the UI logs for minutes, nobody reads it
    with log.open("w") as out:
        proc = subprocess.Popen(
            [MESH, "--root", str(root), "ui", "--port", str(port)],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        loaded = False
        while time.monotonic() < deadline and not loaded:
            assert proc.poll() is None, log.read_text()[-4000:]
            try:
                entries = graphql(port, LOCATIONS)["workspaceOrError"].get("locationEntries")
                loaded = bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)
            except OSError:
                pass
            if not loaded:
                time.sleep(2)
        assert loaded, f"the Dagster UI did not load its code locations:\n{log.read_text()[-4000:]}"
        yield RunningUI(root=root, url=f"http://127.0.0.1:{port}", log=log)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop `mesh ui`: on SIGTERM it stops the webserver's whole process group (INT, TERM, KILL
    in turn). SIGTERM rather than SIGINT: a runner may start pytest with SIGINT ignored."""
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        for pgid in (proc.pid, *map(int, children)):  # mesh ui, then `dagster dev`'s own group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        proc.wait()
        pytest.fail("mesh ui did not stop within 90 s of SIGTERM")


@pytest.fixture(scope="module")
def page(browser, ui: RunningUI):
    """One browser tab on the UI (its first-visit dialog is dismissed like a person would)."""
    page = browser.new_page(base_url=ui.url, viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)  # assertions wait like actions (default: 5 s)
    # On a fresh instance "Join the Dagster community" pops up a second after the first page
    # renders; skipped once, it stays away (browser storage and the instance remember).
    page.goto("/")
    page.get_by_text("Catalog", exact=True).first.wait_for()
    _dismiss_dialog(page, wait_ms=10_000)
    yield page
    expect.set_options(timeout=5_000)
    page.close()


def _open(page, path: str, ready: str) -> None:
    """Go to ``path`` and wait until the text ``ready`` is on screen."""
    page.goto(path)
    page.get_by_text(ready, exact=True).first.wait_for(state="visible")


def _dismiss_dialog(page, wait_ms: int = 0) -> None:
    """Click Skip on the "Join the Dagster community" dialog if it shows within ``wait_ms``."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    try:
        skip.wait_for(state="visible", timeout=max(wait_ms, 1))
    except PlaywrightTimeout:
        return
    skip.click()
    skip.wait_for(state="hidden")


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _dismiss_dialog(page)
    path = ARTIFACTS / name
    # The UI scrolls inner panes, not the document: grow the window to the tallest pane's
    # content so the screenshot holds the whole page, then restore it.
    size = page.viewport_size
    height = page.evaluate(
        "() => Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))"
    )
    page.set_viewport_size(
        {"width": size["width"], "height": min(max(height + 200, size["height"]), 8000)}
    )
    page.wait_for_timeout(500)  # let the layout settle at the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    return path


def _definition_field(page, label: str):
    """The value next to a label of the Definition panel (Owners, Kinds, Storage, Tags...)."""
    return page.locator(f"xpath=//span[normalize-space()='{label}']/following-sibling::*[1]").first


def _descriptor(name: str) -> dict:
    models = yaml.safe_load(
        Path(__file__)
        .resolve()
        .parents[1]
        .joinpath("dbt_projects/sales/models/products/products.yml")
        .read_text()
    )["models"]
    return next(m for m in models if m["name"] == name)


def test_asset_page_shows_the_products_metadata(page):
    model = _descriptor("customers")
    mesh = model["config"]["meta"]["mesh"]
    _open(page, f"/assets/{PRODUCT}", ready="Definition")
    try:
        # What the product is for, in the descriptor's own words.
        description = " ".join(model["description"].split())
        expect(page.get_by_text(description.split(". ")[0], exact=False).first).to_be_visible()
        expect(page.get_by_text(f"Purpose: {mesh['purpose']}", exact=False).first).to_be_visible()

        # Who owns it: the team and its contact.
        owners = _definition_field(page, "Owners")
        expect(owners).to_contain_text(mesh["owner"]["contact"])
        expect(owners).to_contain_text(mesh["owner"]["team"])

        # What it is built with and stored as.
        kinds = _definition_field(page, "Kinds")
        for kind in ("dbt", "duckdb", "iceberg"):
            expect(kinds).to_contain_text(re.compile(kind, re.IGNORECASE))

        # Where to find it: the catalog table name (Storage) and the mesh address and URN.
        expect(_definition_field(page, "Storage")).to_contain_text("mesh.sales.customers")
        for key, value in (
            ("mesh/address", "sales.customers"),
            ("mesh/urn", "urn:mesh:sales:customers:v1"),
            ("mesh/version", mesh["version"]),
            ("mesh/owner", mesh["owner"]["contact"]),
        ):
            row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))
            expect(row.first).to_contain_text(value)

        # Tags an operator filters on.
        tags = _definition_field(page, "Tags")
        for tag in (
            f"mesh/version: {mesh['version']}",
            f"mesh/status: {mesh['status']}",
            "mesh/pii: true",
            "mesh/domain: sales",
            "mesh/access: public",
        ):
            expect(tags).to_contain_text(tag)

        # The column schema, every column with its type and classification.
        for column in model["columns"]:
            row = page.get_by_role("row").filter(has=page.get_by_text(column["name"], exact=True))
            expect(row.first).to_contain_text(column["data_type"])
            classification = column["config"]["meta"]["classification"]
            if classification.startswith("pii:"):
                expect(row.first).to_contain_text("classification: pii")
                expect(row.first).to_contain_text(f"pii: {classification[4:]}")
            else:
                expect(row.first).to_contain_text(f"classification: {classification}")

        # The build's results at a glance: materialized, its checks evaluated, its rows.
        expect(page.get_by_text("Latest check results", exact=True)).to_be_visible()
        expect(page.get_by_text("1,500", exact=True).first).to_be_visible()
    finally:
        _screenshot(page, "ui_sales_customers_overview.png")


def test_checks_tab_shows_every_gate_check_with_its_result(page):
    _open(page, f"/assets/{PRODUCT}", ready="Definition")
    page.get_by_role("tab", name="Checks").or_(page.get_by_text("Checks", exact=True)).first.click()
    page.wait_for_url(re.compile(r"view=checks"))
    try:
        heading = page.get_by_text(re.compile(r"^Checks \(\d+\)$"))
        expect(heading).to_be_visible()
        total = int(re.search(r"\d+", heading.inner_text()).group())
        assert total >= len(CHECKS)
        expect(page.get_by_text("Succeeded", exact=True)).to_have_count(total)
        for name in CHECKS:
            # the list entry: a green check_circle, the check's name and its last result
            entry = page.locator(f'[title="{name}"]').first.locator("xpath=../..")
            expect(entry).to_contain_text("Succeeded")
            expect(entry.locator('[aria-label="check_circle"]')).to_be_visible()
        expect(page.get_by_text("Failed", exact=True)).to_have_count(0)

        # Open one: its latest evaluation passed, against the build's materialization.
        page.locator('[title="pii_detection"]').first.click()
        expect(page.get_by_text("Evaluation result", exact=True)).to_be_visible()
        expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
        expect(page.get_by_text("This is a blocking asset check.", exact=False)).to_be_visible()
        expect(page.get_by_text("No personal data (email, phone", exact=False)).to_be_visible()
    finally:
        _screenshot(page, "ui_sales_customers_checks.png")


def test_marketing_lineage_leads_back_to_the_sales_product(page):
    """From a marketing product, upstream through its staging model to sales/customers."""
    _open(page, "/assets/marketing/customer_segments", ready="Upstream assets")
    try:
        page.get_by_role("link", name="marketing / internal / stg_customer_geo").first.click()
        page.wait_for_url(re.compile(r"/assets/marketing/internal/stg_customer_geo"))
        page.get_by_text("Upstream assets", exact=True).wait_for()
        upstream = page.get_by_role("link", name="sales / customers")
        expect(upstream.first).to_be_visible()
        _screenshot(page, "ui_marketing_stg_customer_geo_overview.png")
        upstream.first.click()
        page.wait_for_url(re.compile(r"/assets/sales/customers"))
        expect(page.get_by_text("urn:mesh:sales:customers:v1").first).to_be_visible()

        # the lineage graph of the marketing product spans the producing domains' groups
        _open(
            page,
            "/assets/marketing/customer_segments?view=lineage&lineageScope=upstream&lineageDepth=3",
            ready="customer_segments",
        )
        for group in ("sales", "logistics", "marketing"):
            expect(page.get_by_text(group, exact=True).first).to_be_visible()
        # sales/customers is a node of the graph, all its checks passed
        node = page.locator(
            "xpath=//*[normalize-space()='customers']/ancestor::*[contains(., 'Asset checks')][1]"
        ).first
        expect(node).to_be_visible()
        expect(node).to_contain_text(re.compile(r"(\d+) / \1 Passed"))
    finally:
        _screenshot(page, "ui_marketing_customer_segments_lineage.png")


def test_storage_shows_where_the_table_really_lives(page, ui: RunningUI):
    from mesh_platform.storage.catalog import open_catalog

    location = open_catalog(load_mesh(ui.root)).load_table(("sales", "customers")).location()
    _open(page, f"/assets/{PRODUCT}", ready="Definition")
    expect(_definition_field(page, "Storage")).to_contain_text(location, timeout=5_000)
