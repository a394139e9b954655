"""The exported contracts in other tools' hands, on the built sample mesh.

Every product's ODPS document validates against the official schema vendored from Bitol
(mesh_platform/discovery/schemas/, its provenance in the README there), and every product's ODCS
contract, written by `mesh export` and never edited afterwards, passes datacontract-cli's
`datacontract lint` and `datacontract test`: the real tool (its Python API, one import for the
module; one run through its command line), reading the published Iceberg tables through the
contract's own ``iceberg`` server. Its quality rules are executed, not skipped: the row counts and
"between" rules show up in its results as checks that ran, and a contract whose rule cannot hold
fails.

datacontract-cli reads the stored data with the catalog's credentials (the owner's view, before
the mesh's read-time masks and grants): see mesh_platform/discovery/odcs.py ``_server``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from mesh_platform.discovery import odcs_quality, odps, validation
from mesh_platform.discovery.catalog import product_records
from mesh_platform.discovery.standards import export_product
from mesh_platform.products.registry import load_directory

pytestmark = pytest.mark.e2e

VENDORED_ODPS = Path(validation.__file__).parent / "schemas" / validation.ODPS_SCHEMA_FILE


@pytest.fixture(autouse=True)
def _no_datacontract_settings(monkeypatch: pytest.MonkeyPatch):
    """The runs see only the mesh root's datacontract-config.yaml, none of the developer's
    DATACONTRACT_* settings."""
    for key in list(os.environ):
        if key.startswith("DATACONTRACT_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def addresses(sample_build) -> list[str]:
    found = sorted(load_directory(sample_build).descriptors)
    assert len(found) >= 10, found  # the sample mesh's products, every one of them
    return found


@pytest.fixture(scope="module")
def rows(sample_build) -> dict[str, int]:
    """address -> rows of the published snapshot, as the mesh's catalog records them."""
    return {
        r.address: r.current.rows
        for r in product_records(sample_build, with_checks=False)
        if r.current is not None
    }


@pytest.fixture(scope="module")
def contracts(sample_build, addresses, tmp_path_factory) -> dict[str, Path]:
    """address -> the ODCS file `mesh export --validate --output` wrote (never edited)."""
    folder = tmp_path_factory.mktemp("odcs")
    files = {}
    for address in addresses:
        files[address] = folder / f"{address}.odcs.yaml"
        export_product(sample_build, address, "odcs", output=files[address], validate=True)
    return files


@pytest.fixture(scope="module")
def data_contract(sample_build):
    """datacontract-cli's DataContract, with the tool's settings from the mesh root's
    datacontract-config.yaml (what its command line reads there): the catalog type only."""
    from datacontract.config import Config  # heavy: datacontract-cli (ibis, duckdb, pyiceberg)
    from datacontract.data_contract import DataContract  # heavy: datacontract-cli

    settings = Config.from_yaml(sample_build.root / "datacontract-config.yaml")
    assert settings.model_dump(exclude_none=True) == {"iceberg_catalog_type": "sql"}
    return lambda path: DataContract(data_contract_file=str(path), config=settings)


def _result(run) -> str:
    return run.model_dump(mode="json")["result"]


def _checks(run) -> list[dict]:
    return [c.model_dump(mode="json") for c in run.checks]


def _not_passed(run) -> list[dict]:
    return [
        {k: c[k] for k in ("key", "type", "name", "result", "reason")}
        for c in _checks(run)
        if c["result"] != "passed"
    ]


def _standard_rules(document: dict) -> list[dict]:
    """The quality rules in a form the standard defines (library metric or sql)."""
    table = document["schema"][0]
    rules = list(table.get("quality", []))
    for prop in table["properties"]:
        rules += prop.get("quality", [])
    return [r for r in rules if r.get("type") in ("library", "sql")]


def test_odps_of_every_product_validates_against_the_official_schema(
    sample_build, addresses, tmp_path
):
    schema = json.loads(VENDORED_ODPS.read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    checker = cls(schema, format_checker=validation.format_checker(cls))
    assert schema["properties"]["apiVersion"]["default"] == odps.API_VERSION  # its current one
    problems = {}
    for address in addresses:
        out = tmp_path / f"{address}.odps.yaml"
        export_product(sample_build, address, "odps", output=out, validate=True)
        document = yaml.safe_load(out.read_text())
        if errors := [
            f"{list(e.absolute_path)}: {e.message}" for e in checker.iter_errors(document)
        ]:
            problems[address] = errors
        assert set(document["team"]) >= {"name", "members"}, address  # an object, not a list
        assert document["outputPorts"][0]["contractId"] == document["id"]
    assert not problems, json.dumps(problems, indent=2)


def test_datacontract_lint_and_test_pass_every_exported_contract_as_is(
    contracts, rows, data_contract
):
    failures, executed = {}, {}
    for address, path in contracts.items():
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        lint = data_contract(path).lint()
        test = data_contract(path).test()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # run as exported
        if _result(lint) != "passed" or _result(test) != "passed":
            failures[address] = {"lint": _not_passed(lint), "test": _not_passed(test)}
            continue
        checks = _checks(test)
        document = yaml.safe_load(path.read_text())
        quality = [c for c in checks if c["category"] == "quality"]
        # every rule in a standard form ran as a check of its own (none skipped or unexecuted)
        assert len(quality) >= len(_standard_rules(document)), address
        assert all(c["result"] == "passed" for c in checks), address
        executed[address] = {c["type"] for c in quality}
        for rule in _standard_rules(document):
            if rule.get("metric") == "rowCount":
                (row_count,) = [c for c in checks if c["type"] == "row_count"]
                assert row_count["result"] == "passed", address
    assert not failures, json.dumps(failures, indent=2)
    assert set(contracts) <= set(rows)  # every product was published and tested
    kinds = set().union(*executed.values())
    # row counts, "between" (sql), nulls, duplicates, value sets and patterns all ran
    assert {
        "row_count",
        "field_quality_sql",
        "field_null_values",
        "field_duplicate_values",
        "field_invalid_values",
        "model_duplicate_values",
    } <= kinds, kinds


def _edited(path: Path, tmp_path: Path, edit) -> Path:
    document = yaml.safe_load(path.read_text())
    edit(document)
    out = tmp_path / f"edited-{path.name}"
    out.write_text(yaml.safe_dump(document, sort_keys=False))
    return out


def test_a_rule_that_cannot_hold_fails(contracts, rows, data_contract, tmp_path):
    """The same contract with the row count bound above the published rows, then with a
    "between" no value meets: datacontract test fails on exactly that rule."""
    address = "sales.orders"
    real = rows[address]

    def more_rows(document):
        (rule,) = [r for r in document["schema"][0]["quality"] if r.get("metric") == "rowCount"]
        rule["mustBeGreaterOrEqualTo"] = real + 1

    run = data_contract(_edited(contracts[address], tmp_path, more_rows)).test()
    assert _result(run) == "failed"
    failed = _not_passed(run)
    assert [c["type"] for c in failed] == ["row_count"], failed

    def no_price_fits(document):
        props = {p["name"]: p for p in document["schema"][0]["properties"]}
        (rule,) = props["total_price"]["quality"]
        assert rule["type"] == "sql"
        rule["query"] = rule["query"].replace("< 0", "< 1e15")  # every price is below 1e15

    run = data_contract(_edited(contracts[address], tmp_path, no_price_fits)).test()
    assert _result(run) == "failed"
    failed = _not_passed(run)
    assert [(c["type"], c["result"]) for c in failed] == [("field_quality_sql", "failed")], failed


def test_the_command_line_runs_an_export_as_is(sample_build, contracts):
    """`datacontract lint` and `datacontract test` as the owner runs them from the mesh root:
    the file as exported, no DATACONTRACT_* variable (the root's datacontract-config.yaml)."""
    path = contracts["sales.customers"]
    tool = Path(sys.executable).with_name("datacontract")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACONTRACT_")}
    for command in ("lint", "test"):
        result = subprocess.run(
            [str(tool), command, str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=sample_build.root,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = yaml.safe_load(path.read_text())
    (volume,) = [
        r for r in document["schema"][0]["quality"] if r.get("engine") == odcs_quality.MESH_ENGINE
    ]
    assert volume["description"].startswith(odcs_quality.NOT_STANDARD)  # skipped, and says so
