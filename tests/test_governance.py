"""Federated computational governance: the shipped static policies, the council's
governance.yaml (errors with line numbers, waivers, severities), the data policies in the
publication gate (PII detection and masking on a real tmp catalog), and the same verdicts at
deploy time (code location load) and in CI (`mesh check`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from mesh_platform.errors import DomainError, MeshError
from mesh_platform.governance.data import iban_valid, luhn_valid
from mesh_platform.governance.policy import (
    GovernanceError,
    PolicyContext,
    PolicySet,
    Violation,
    evaluate_static,
    load_policy_set,
)
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.publish import publish_product

MESH = Path(sys.executable).parent / "mesh"
TODAY = dt.date(2025, 6, 1)
SOURCE = "dbt_projects/sales/models/products/products.yml"


def node(
    name: str = "orders",
    *,
    columns: dict[str, dict] | None = None,
    mesh: dict[str, Any] | None = None,
    description: str = "One row per customer order, for revenue reporting.",
    enforced: bool = True,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "purpose": "Order headers for revenue reporting.",
        "owner": {"team": "sales", "contact": "sales-data@example.com"},
        "version": "1.0.0",
        "sla": {"freshness": {"max_age": "26h"}},
        "grants": [{"to": "marketing", "purpose": "Revenue by segment.", "expires": "2099-12-31"}],
    }
    body.update(mesh or {})
    if columns is None:
        columns = {
            "order_key": col("bigint", "internal"),
            "email": col("varchar", "pii:email", masking="hash"),
        }
    return {
        "resource_type": "model",
        "access": "public",
        "name": name,
        "description": description,
        "original_file_path": f"models/products/{name}.sql",
        "patch_path": "sales://models/products/products.yml",
        "config": {"meta": {"mesh": body}, "contract": {"enforced": enforced}},
        "columns": columns,
    }


def col(data_type: str | None, classification: str | None, *, masking: str | None = None,
        description: str = "A column.") -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {}
    if classification is not None:
        meta["classification"] = classification
    if masking is not None:
        meta["masking"] = masking
    out: dict[str, Any] = {"description": description, "config": {"meta": meta}}
    if data_type is not None:
        out["data_type"] = data_type
    return out


def evaluate(
    tmp_path: Path, *nodes: dict[str, Any], governance: str | None = None, today: dt.date = TODAY
) -> list[Violation]:
    if governance is not None:
        (tmp_path / "governance.yaml").write_text(governance)
    descriptors = [descriptor_from_node("sales", n) for n in nodes]
    policy_set = load_policy_set(tmp_path, known_products=[str(d.address) for d in descriptors])
    ctx = PolicyContext(
        "sales",
        descriptors,
        {str(d.address): n for d, n in zip(descriptors, nodes, strict=True)},
        today=today,
    )
    return evaluate_static(policy_set, ctx)


def of(violations: list[Violation], policy: str) -> list[Violation]:
    return [v for v in violations if v.policy == policy]


# --- 1. each shipped static policy ----------------------------------------------------------


def test_a_compliant_product_breaks_no_policy(tmp_path):
    repo_file = (Path(__file__).resolve().parents[1] / "governance.yaml").read_text()
    assert evaluate(tmp_path, node(), governance=repo_file) == []
    empty = tmp_path / "no_file"
    empty.mkdir()
    assert evaluate(empty, node()) == []


def _assert_names(v: Violation, policy: str, column: str | None) -> None:
    assert v.policy == policy
    assert v.subject == "sales.orders"
    assert v.column == column
    assert v.file == SOURCE
    assert v.fix.strip()
    assert v.blocking
    line = v.line()
    assert policy in line and "sales.orders" in line and SOURCE in line and v.fix in line
    if column:
        assert column in line


def test_naming_fires_on_a_bad_column_name(tmp_path):
    bad = node(columns={"OrderKey": col("bigint", "internal"), "ok_col": col("int", "public")})
    found = of(evaluate(tmp_path, bad), "naming")
    assert len(found) == 1
    _assert_names(found[0], "naming", "OrderKey")
    assert "snake_case" in found[0].message and "snake_case" in found[0].fix
    assert of(evaluate(tmp_path, node()), "naming") == []


def test_required_metadata_fires_on_unclassified_column_and_missing_freshness(tmp_path):
    bad = node(
        columns={"order_key": col("bigint", None), "amount": col("double", "internal")},
        mesh={"sla": {}},
    )
    found = of(evaluate(tmp_path, bad), "required_metadata")
    by_column = {v.column: v for v in found}
    assert set(by_column) == {"order_key", None}, found
    _assert_names(by_column["order_key"], "required_metadata", "order_key")
    assert "classification" in by_column["order_key"].message
    assert "classification" in by_column["order_key"].fix
    _assert_names(by_column[None], "required_metadata", None)
    assert "freshness" in by_column[None].message and "freshness" in by_column[None].fix
    # a column with no description and a too-short product description are also caught
    terse = node(columns={"order_key": col("bigint", "internal", description="")},
                 description="Orders.")  # fmt: skip
    messages = [v.message for v in of(evaluate(tmp_path, terse), "required_metadata")]
    assert any("column has no description" in m for m in messages)
    assert any("description is missing or shorter" in m for m in messages)
    assert of(evaluate(tmp_path, node()), "required_metadata") == []


def test_pii_masking_fires_on_personal_data_without_masking(tmp_path):
    bad = node(columns={"email": col("varchar", "pii:email"), "k": col("int", "internal")})
    found = of(evaluate(tmp_path, bad), "pii_masking")
    assert len(found) == 1
    _assert_names(found[0], "pii_masking", "email")
    assert "pii:email" in found[0].message and "masking" in found[0].fix
    # 'confidential' is not personal data: no masking required
    fine = node(columns={"email": col("varchar", "confidential")})
    assert of(evaluate(tmp_path, fine), "pii_masking") == []
    assert of(evaluate(tmp_path, node()), "pii_masking") == []


def test_access_fires_when_no_grants_are_declared(tmp_path):
    found = of(evaluate(tmp_path, node(mesh={"grants": []})), "access")
    assert len(found) == 1
    _assert_names(found[0], "access", None)
    assert "grants" in found[0].fix
    assert of(evaluate(tmp_path, node()), "access") == []


@pytest.mark.parametrize(
    ("sunset", "fires"),
    [(None, True), ("2025-03-01", True), ("2025-03-31", False), ("2026-01-01", False)],
)
def test_contracts_fires_on_deprecation_without_enough_sunset_window(tmp_path, sunset, fires):
    # deprecated_on 2025-01-01 + 89 days = 2025-03-31 (the governance.yaml sets 89 days)
    body = {"status": "deprecated", "deprecated_on": "2025-01-01"}
    if sunset:
        body["sunset_on"] = sunset
    governance = "policies:\n  contracts: {severity: error, params: {min_deprecation_days: 89}}\n"
    found = of(evaluate(tmp_path, node(mesh=body), governance=governance), "contracts")
    if not fires:
        assert found == []
        return
    assert len(found) == 1
    _assert_names(found[0], "contracts", None)
    assert "89 days" in found[0].message
    assert "2025-03-31" in found[0].fix


def test_contracts_default_window_is_90_days(tmp_path):
    body = {"status": "deprecated", "deprecated_on": "2025-01-01", "sunset_on": "2025-03-31"}
    found = of(evaluate(tmp_path, node(mesh=body)), "contracts")
    assert len(found) == 1 and "2025-04-01" in found[0].fix


def test_contracts_fires_on_an_unenforced_dbt_contract_and_an_untyped_column(tmp_path):
    found = of(evaluate(tmp_path, node(enforced=False)), "contracts")
    assert len(found) == 1
    _assert_names(found[0], "contracts", None)
    assert "enforced" in found[0].message and "contract: {enforced: true}" in found[0].fix
    untyped = node(columns={"k": col(None, "internal")})
    found = of(evaluate(tmp_path, untyped), "contracts")
    assert [(v.column, v.message) for v in found] == [("k", "column has no data_type")]
    assert of(evaluate(tmp_path, node()), "contracts") == []


# --- 2. governance.yaml ---------------------------------------------------------------------


def _load_error(tmp_path: Path, text: str, known: list[str] | None = None) -> str:
    (tmp_path / "governance.yaml").write_text(text)
    with pytest.raises(GovernanceError) as info:
        load_policy_set(tmp_path, known_products=known)
    message = str(info.value)
    assert "governance.yaml" in message
    return message


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    message = _load_error(tmp_path, "policies:\n  naming: {severity: error}\n  access: [\n")
    assert re.search(r"line [34]\b", message), message


def test_unknown_policy_id_names_the_line(tmp_path):
    text = "policies:\n  naming: {severity: error}\n  nameing: {severity: warn}\n"
    message = _load_error(tmp_path, text)
    assert "line 3" in message and "nameing" in message


WAIVER = "  - {{product: {product}, policy: access, reason: {reason}, expires: {expires}}}\n"


def test_waiver_for_a_product_that_does_not_exist_names_the_line(tmp_path):
    text = (
        "# council\npolicies: {}\nwaivers:\n"
        + WAIVER.format(
            product="sales.orders", reason="'pilot with marketing'", expires="2030-01-01"
        )
        + WAIVER.format(product="sales.nope", reason="'pilot with marketing'", expires="2030-01-01")
    )
    message = _load_error(tmp_path, text, known=["sales.orders"])
    assert "line 5" in message and "sales.nope" in message
    assert "line 4" not in message


def test_waiver_with_a_too_short_reason_names_the_line(tmp_path):
    text = "policies: {}\nwaivers:\n\n" + WAIVER.format(
        product="sales.orders", reason="short", expires="2030-01-01"
    )
    message = _load_error(tmp_path, text, known=["sales.orders"])
    assert "line 4" in message and "reason" in message


def test_a_valid_waiver_makes_the_violation_non_blocking(tmp_path):
    text = "policies: {}\nwaivers:\n" + WAIVER.format(
        product="sales.orders", reason="'pilot with marketing'", expires="2025-06-01"
    )
    found = evaluate(tmp_path, node(mesh={"grants": []}), governance=text)
    assert len(found) == 1
    assert found[0].policy == "access"
    assert found[0].waived_by == "pilot with marketing"
    assert not found[0].blocking
    # the waiver is for one policy only: another violation of the same product still blocks
    found = evaluate(tmp_path, node(mesh={"grants": [], "sla": {}}), governance=text)
    assert [v.policy for v in found if v.blocking] == ["required_metadata"]


def test_an_expired_waiver_no_longer_waives_and_says_so(tmp_path):
    text = "policies: {}\nwaivers:\n" + WAIVER.format(
        product="sales.orders", reason="'pilot with marketing'", expires="2025-05-31"
    )
    found = evaluate(tmp_path, node(mesh={"grants": []}), governance=text)
    access = of(found, "access")
    assert len(access) == 1 and access[0].blocking and access[0].waived_by is None
    (warning,) = of(found, "waivers")
    assert warning.severity == "warn" and not warning.blocking
    assert warning.subject == "sales.orders"
    assert "expired" in warning.message and "2025-05-31" in warning.message
    assert "access" in warning.message
    assert warning.file == "governance.yaml" and warning.at == 3
    assert warning.where == "governance.yaml line 3"


def test_severity_warn_makes_a_policy_non_blocking(tmp_path):
    found = evaluate(
        tmp_path, node(mesh={"grants": []}), governance="policies:\n  access: {severity: warn}\n"
    )
    assert [(v.policy, v.severity, v.blocking) for v in found] == [("access", "warn", False)]


def test_a_missing_governance_file_applies_every_policy_at_its_default(tmp_path):
    policy_set = load_policy_set(tmp_path)
    assert isinstance(policy_set, PolicySet)
    assert policy_set.severity("access") == "error"
    assert of(evaluate(tmp_path, node(mesh={"grants": []})), "access")[0].blocking


# --- 3. data policies in the publication gate -----------------------------------------------


@pytest.fixture
def conn(duck):
    return duck


def product(name: str, columns: dict[str, dict]) -> ProductDescriptor:
    n = node(name, columns=columns)
    n["config"]["meta"]["mesh"]["sla"] = {}
    return descriptor_from_node("sales", n)


NOTES = product(
    "notes", {"order_key": col("bigint", "internal"), "note": col("varchar", "internal")}
)


def publish(catalog, d, conn, relation, batch, **kwargs):
    return publish_product(
        catalog, d, conn, relation, batch_id=batch, run_id=f"run-{batch}", **kwargs
    )


def notes(conn, name: str, value: str | None = None) -> str:
    """main.<name>: 4 rows of harmless notes, the last one ``value`` when given."""
    last = f"'{value}'" if value is not None else "'note 3'"
    conn.execute(
        f"CREATE OR REPLACE TABLE main.{name} AS SELECT range AS order_key, "
        f"CASE WHEN range = 3 THEN {last} ELSE 'note ' || range END AS note FROM range(4)"
    )
    return f"main.{name}"


def test_luhn_and_iban_validators():
    assert luhn_valid("4111 1111 1111 1111")
    assert not luhn_valid("4111 1111 1111 1112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB83 WEST 1234 5698 7654 32")


@pytest.mark.parametrize(
    ("secret", "kind"),
    [
        ("jane.doe@example.com", "email"),
        ("4111 1111 1111 1111", "credit_card"),
        ("GB82WEST12345698765432", "iban"),
        ("GB82 WEST 1234 5698 7654 32", "iban"),  # the printed form: not detected (bug)
        ("192.168.10.42", "ip_address"),
    ],
)
def test_personal_data_in_an_unclassified_column_blocks_and_leaks_nothing(
    catalog, conn, secret, kind
):
    value = f"see {secret} today"
    first = publish(catalog, NOTES, conn, notes(conn, "clean"), "clean")
    assert first.published, first.error
    assert first.outcomes["pii_detection"].passed
    ident = ("sales", "notes")
    main_before = catalog.load_table(ident).current_snapshot().snapshot_id

    publication = publish(catalog, NOTES, conn, notes(conn, "dirty", value), "dirty")

    assert not publication.published
    assert "pii_detection" in publication.failed_checks
    outcome = publication.outcomes["pii_detection"]
    assert "column note" in outcome.description and kind in outcome.description
    assert outcome.metadata["hits"]["note"].get(kind) == 1, outcome.metadata
    assert "pii_detection" in publication.error
    assert catalog.load_table(ident).current_snapshot().snapshot_id == main_before
    for text in (str(publication.outcomes), repr(publication.outcomes), publication.error):
        assert secret not in text
        assert secret.replace(" ", "") not in text


def test_a_luhn_invalid_card_number_is_not_flagged(catalog, conn):
    publication = publish(
        catalog, NOTES, conn, notes(conn, "t", "card 4111 1111 1111 1112 on file"), "b1"
    )
    assert publication.published, publication.error
    assert publication.outcomes["pii_detection"].passed
    assert publication.outcomes["pii_detection"].metadata["hits"] == {}


def customers(conn, name: str = "customers") -> str:
    conn.execute(
        f"CREATE OR REPLACE TABLE main.{name} AS SELECT range AS customer_key, "
        f"'c' || range || '@example.com' AS email FROM range(5)"
    )
    return f"main.{name}"


def emails_of(catalog, table: str) -> list[str]:
    return catalog.load_table(("sales", table)).scan().to_arrow().column("email").to_pylist()


def masked(rule: str | None) -> ProductDescriptor:
    return product(
        f"customers_{rule or 'clear'}",
        {"customer_key": col("bigint", "internal"),
         "email": col("varchar", "pii:email", masking=rule)},
    )  # fmt: skip


def test_hash_masking_publishes_salted_sha256(catalog, conn, tmp_path):
    d = masked("hash")
    clear = [f"c{i}@example.com" for i in range(5)]
    first = publish(catalog, d, conn, customers(conn), "s1", salt="s1")
    assert first.published, first.error
    assert first.outcomes["pii_masking_verified"].passed
    assert first.outcomes["pii_detection"].passed
    values = emails_of(catalog, "customers_hash")
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in values), values
    assert sorted(values) == sorted(hashlib.sha256(f"s1{e}".encode()).hexdigest() for e in clear)
    assert not set(clear) & set(values)

    second = publish(catalog, d, conn, customers(conn), "s2", salt="s2")
    assert second.published, second.error
    assert not set(values) & set(emails_of(catalog, "customers_hash"))


@pytest.mark.parametrize(
    ("rule", "shape"),
    [("redact", r"\[redacted\]"), ("truncate", r"c\d\*\*\*"), ("tokenise", r"tok_[0-9a-f]{16}")],
)
def test_other_masking_rules_publish_their_shape(catalog, conn, rule, shape):
    publication = publish(catalog, masked(rule), conn, customers(conn), "b1", salt="s1")
    assert publication.published, publication.error
    assert publication.outcomes["pii_masking_verified"].passed
    values = emails_of(catalog, f"customers_{rule}")
    assert len(values) == 5
    assert all(re.fullmatch(shape, v) for v in values), values


def test_a_pii_column_without_masking_blocks(catalog, conn):
    publication = publish(catalog, masked(None), conn, customers(conn), "b1", salt="s1")
    assert not publication.published
    assert "pii_masking_verified" in publication.failed_checks
    outcome = publication.outcomes["pii_masking_verified"]
    assert "email" in outcome.description and "no masking rule" in outcome.description
    assert "@example.com" not in str(publication.outcomes) + publication.error


def test_hashing_without_a_salt_raises_with_a_fix(catalog, conn):
    with pytest.raises(MeshError) as info:
        publish(catalog, masked("hash"), conn, customers(conn), "b1")
    assert "MESH_PII_SALT" in info.value.fix
    assert "sales.customers_hash" in info.value.what


# --- 4. deploy time and CI ------------------------------------------------------------------


def run_mesh(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "DAGSTER_HOME"))}
    return subprocess.run(
        [str(MESH), "--root", str(root), *args],
        capture_output=True, text=True, timeout=600, env=env, cwd=root, check=False,
    )  # fmt: skip


def test_an_unclassified_column_stops_deploy_and_ci(mesh_copy):
    from mesh_platform.definitions import domain_definitions
    from mesh_platform.governance.evaluate import check_domain

    yml = mesh_copy.root / SOURCE
    text = yml.read_text()
    line = "        config: {meta: {classification: 'pii:email', masking: hash}}\n"
    assert text.count(line) == 1
    yml.write_text(text.replace(line, ""))
    mesh_copy.ensure_state_dir()

    violations = check_domain(mesh_copy, "sales")
    found = [
        v for v in violations
        if v.policy == "required_metadata" and v.subject == "sales.customers"
        and v.column == "email"
    ]  # fmt: skip
    assert len(found) == 1, violations
    assert found[0].blocking and found[0].file == SOURCE
    assert "classification" in found[0].message

    with pytest.raises(DomainError) as info:
        domain_definitions(mesh_copy.root / "domains/sales/definitions.py")
    message = str(info.value)
    for needed in ("required_metadata", "sales.customers", "email", SOURCE):
        assert needed in message, message

    result = run_mesh(mesh_copy.root, "check", "--domain", "sales", "--format", "junit")
    assert result.returncode == 1, result.stderr
    xml = ET.fromstring(result.stdout)
    failures = [
        case for case in xml.iter("testcase")
        if case.find("failure") is not None
    ]  # fmt: skip
    assert any(
        c.get("classname") == "sales.required_metadata" and c.get("name") == "sales.customers.email"
        for c in failures
    ), result.stdout


def test_the_sample_mesh_passes_mesh_check(prepared_mesh):
    result = run_mesh(prepared_mesh.root, "check", "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["blocking"] == 0
    assert not any(v["blocking"] for v in report["violations"])


def test_a_waiver_or_warn_severity_turns_a_data_policy_into_a_warning(mesh, catalog, conn):
    """The council's file applies to the gate's data policies too: a waiver for one product
    lets it publish with the failure reported as a warning; other products stay blocked."""
    from mesh_platform.governance.evaluate import gate_exemptions

    (mesh.root / "governance.yaml").write_text(
        "waivers:\n"
        "  - {product: sales.notes, policy: pii_detection, reason: 'contact notes reviewed by "
        "legal', expires: 2999-01-01}\n"
    )
    exemptions = gate_exemptions(mesh, "sales.notes")
    assert set(exemptions) == {"pii_detection"}
    assert gate_exemptions(mesh, "sales.orders") == {}
    relation = notes(conn, "t", "mail anna@example.com")
    waived = publish(catalog, NOTES, conn, relation, "b1", exemptions=exemptions)
    assert waived.published, waived.error
    outcome = waived.outcomes["pii_detection"]
    assert not outcome.passed and not outcome.blocking
    assert "contact notes reviewed by legal" in outcome.description

    (mesh.root / "governance.yaml").write_text("policies:\n  pii_detection: {severity: warn}\n")
    assert "severity warn" in gate_exemptions(mesh, "sales.orders")["pii_detection"]
    assert publish(catalog, NOTES, conn, relation, "b2").failed_checks == ["pii_detection"]
