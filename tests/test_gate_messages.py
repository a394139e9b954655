"""What the terminal says when the gate blocks a batch: the product, the check, the column and the
figures (personal data: kind and row count, never a value; volume: rows against the published
rows and the ratio against its bound; schema: the column and the change) and the fix; once, and
without a traceback, which only --verbose shows."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from mesh_platform.build_log import failure_message, with_build_console
from mesh_platform.cli.main import cli
from mesh_platform.config import load_mesh
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import descriptor_from_node
from mesh_platform.products.publish import publish_product
from mesh_platform.scaffold import new_domain
from mesh_platform.testing import copy_mesh, run_mesh

MODEL = """select
    cast(region_key as integer) as region_key,
    cast('R' || region_key as varchar) as region_name,
    cast(5 as bigint) as nation_count{extra}
from range({rows}) as t(region_key)
"""
CONTACT = """
      - name: contact
        data_type: varchar
        description: Who answers for the region.
        config: {meta: {classification: 'public'}}
"""
PRODUCTS_YML = "dbt_projects/finance/models/products/products.yml"


def _domain_without_raw_tables(root: Path) -> Path:
    """A scaffolded domain that lands nothing: its product is computed, from no source."""
    mesh = load_mesh(copy_mesh(root))
    new_domain(mesh, "finance", team="finance", description="Invoices and payments of customers.")
    spec = root / "domains" / "finance" / "domain.yaml"
    spec.write_text(spec.read_text().split("# Sample sources")[0])
    models = root / "dbt_projects" / "finance" / "models"
    (models / "staging" / "sources.yml").unlink()
    (models / "staging" / "staging.yml").unlink()
    (models / "staging" / "stg_regions.sql").unlink()
    return models / "products"


def _product(models: Path, *, rows: int, contact: bool) -> None:
    extra = ",\n    'ops' || region_key || '@example.com' as contact" if contact else ""
    (models / "regions.sql").write_text(MODEL.format(extra=extra, rows=rows))
    yml = (models / "products.yml").read_text().split(CONTACT)[0]
    (models / "products.yml").write_text(yml + (CONTACT if contact else ""))


def _build(root: Path, *args: str) -> str:
    result = run_mesh(root, "build", "--domain", "finance", *args)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.e2e
def test_gate_blocks_name_product_check_column_figures_and_fix_without_a_traceback(tmp_path):
    root = tmp_path / "mesh"
    models = _domain_without_raw_tables(root)

    # 1. personal data in clear, on a fresh state (the domain's state folder does not exist yet)
    _product(models, rows=5, contact=True)
    code, out = _build(root)
    assert code == 1, out[-3000:]
    assert "finance.regions: not published: blocking check(s) failed: pii_detection" in out
    assert "the product stays unpublished (its first batch)" in out
    assert out.count("pii_detection: personal data in unclassified column(s): column contact: "
                     "email in 5 row(s)") == 1, out[-3000:]  # fmt: skip
    assert f"fix: classify the column(s) as personal data in {PRODUCTS_YML}" in out
    assert "contact: config: {meta: {classification: 'pii:email', masking: hash}}" in out
    assert "quarantined at once" in out
    assert "@example.com" not in out  # never a value
    assert "Traceback" not in out and "Stack Trace" not in out, out[-3000:]

    # 2. classified out of the product: published (5 rows)
    _product(models, rows=5, contact=False)
    code, out = _build(root)
    assert code == 0, out[-3000:]

    # 3. two rows of five: the volume check blocks; --verbose shows Dagster's log and traces
    _product(models, rows=2, contact=False)
    code, out = _build(root, "--verbose")
    assert code == 1, out[-3000:]
    assert "finance.regions: not published: blocking check(s) failed: volume; main stays at " \
        "snapshot" in out  # fmt: skip
    assert (
        "volume: 2 rows is 40.0% of the published 5, below the minimum of 50% (min_ratio 0.5)"
        in out
    )
    assert f"change sla.volume in {PRODUCTS_YML}" in out
    assert "Stack Trace:" in out and 'File "' in out  # behind --verbose only


def test_a_schema_block_names_the_column_the_change_and_the_fix(catalog, duck):
    node = {
        "resource_type": "model", "access": "public", "name": "orders",
        "description": "One row per order.", "original_file_path": "models/products/orders.sql",
        "config": {"meta": {"mesh": {
            "purpose": "Orders for revenue reporting.", "version": "1.0.0",
            "owner": {"team": "sales", "contact": "sales-data@example.com"},
        }}},
        "columns": {"order_key": {"data_type": "bigint"}, "amount": {"data_type": "double"}},
    }  # fmt: skip
    descriptor = descriptor_from_node("sales", node)

    def publish(select: str, batch: str):
        duck.execute(f"CREATE OR REPLACE TABLE main.o_{batch} AS SELECT {select} FROM range(3)")
        return publish_product(catalog, descriptor, duck, f"main.o_{batch}", batch_id=batch,
                               run_id=batch)  # fmt: skip

    assert publish("range AS order_key, (range * 1.5)::DOUBLE AS amount", "b1").published
    blocked = publish("range AS order_key, (range * 1.5)::FLOAT AS amount", "b2")

    assert not blocked.published
    lines = blocked.error.splitlines()
    assert lines[0] == (
        "not published: blocking check(s) failed: schema_compatible; refused before anything "
        "was staged: main keeps its snapshot and schema"
    )
    assert lines[1] == (
        "    schema_compatible: breaking change: incompatible type change(s) "
        "amount: double -> float"
    )
    assert lines[2].startswith("      fix: keep the columns and their types")
    assert "dbt_projects/sales/models/products/orders.sql" in lines[2]


@pytest.mark.parametrize("flag", [(), ("--verbose",)], ids=["quiet", "verbose"])
def test_an_expected_failure_has_a_traceback_only_behind_verbose(mesh, flag):
    """A MeshError of `mesh build` (refused before anything runs): its message and fix; the
    traceback only with the command's --verbose."""
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--root", str(mesh.root), "build", *flag, "--product", "sales.orders"]
    )
    assert result.exit_code == 1
    if flag:
        assert isinstance(result.exception, MeshError)  # raised: click prints its traceback
    else:
        assert not isinstance(result.exception, MeshError)
        assert "--product selects what a full refresh rebuilds" in result.output
        assert "fix: add --full-refresh" in result.output
        assert "Traceback" not in result.output


@dg.op
def _blocked():
    raise dg.Failure("finance.regions: not published")


@dg.op
def _refused():
    raise MeshError("the landing of finance is corrupt", fix="run mesh repair")


@dg.op
def _bug():
    raise KeyError("a fault of the platform")


@dg.job
def _three_failures():
    _blocked()
    _refused()
    _bug()


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_the_build_console_prints_expected_failures_once_and_keeps_faults_traces(capfd, level):
    """What `mesh build` prints itself (from the run's outcome) is left out of Dagster's
    console below INFO, tracebacks and all; a fault of the platform keeps its trace."""
    result = with_build_console(_three_failures).execute_in_process(
        raise_on_error=False, run_config={"loggers": {"console": {"config": {"log_level": level}}}}
    )
    console = capfd.readouterr().err
    failures = {
        e.step_key: failure_message(e.step_failure_data.error)
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.STEP_FAILURE
    }
    assert failures["_blocked"] == "finance.regions: not published"
    assert failures["_refused"] == "the landing of finance is corrupt\n  fix: run mesh repair"
    assert failures["_bug"].endswith("KeyError: 'a fault of the platform'")
    assert 'Execution of step "_bug" failed' in console and "Stack Trace" in console
    quiet = level == "WARNING"
    for step in ("_blocked", "_refused"):
        assert (f'Execution of step "{step}" failed' not in console) is quiet, console
