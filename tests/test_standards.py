"""mesh export: every product of the sample mesh as an ODCS v3 data contract and an ODPS v1 product
descriptor, validated against the standards' official JSON Schemas (ODCS from the installed
open-data-contract-standard package, ODPS vendored from bitol-io/open-data-product-standard).

The sample mesh is prepared but not built: nothing is published, and the exports still work.
"""

from __future__ import annotations

import collections
import copy
import datetime as dt
import errno
import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from mesh_platform import files
from mesh_platform.cli.main import cli
from mesh_platform.discovery import odcs_quality, odcs_types, standards, validation
from mesh_platform.discovery.catalog import product_records
from mesh_platform.discovery.standard_fields import FORMATS, safe_uri
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor_sla import Expectation
from mesh_platform.products.registry import UnknownProductError, load_directory

TODAY = dt.date(2026, 11, 25)
ODPS_SCHEMA = Path(validation.__file__).parent / "schemas" / "odps-json-schema-v1.1.0.json"


def _official_schema(fmt: str) -> dict:
    if fmt == "odcs":  # from the installed package, never a copy
        text = resources.files("open_data_contract_standard").joinpath("schema.json").read_text()
    else:
        text = ODPS_SCHEMA.read_text()
    return json.loads(text)


@pytest.fixture(scope="module", params=FORMATS)
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.protocols.Validator]:
    found = {}
    for fmt in FORMATS:
        schema = _official_schema(fmt)
        cls = jsonschema.validators.validator_for(schema)  # the draft its $schema names
        assert cls is jsonschema.Draft201909Validator
        cls.check_schema(schema)
        found[fmt] = cls(schema, format_checker=validation.format_checker(cls))
    return found


@pytest.fixture(scope="module")
def records(prepared_mesh):
    return {r.address: r for r in product_records(prepared_mesh, with_checks=False)}


@pytest.fixture(scope="module")
def documents(prepared_mesh, records) -> dict[str, dict[str, dict]]:
    """fmt -> address -> document, for every product of the sample mesh."""
    return {
        fmt: standards.export_all(prepared_mesh, records.values(), fmt, today=TODAY)
        for fmt in FORMATS
    }


def _errors(validator, document) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def _custom(items: list[dict]) -> dict:
    return {p["property"]: p["value"] for p in items}


def _rules(contract: dict) -> list[dict]:
    table = contract["schema"][0]
    rules = list(table.get("quality", []))
    for prop in table["properties"]:
        rules += prop.get("quality", [])
    return rules


# --- every product, both standards ---------------------------------------------------------------


def test_every_product_validates_against_the_official_schema(
    prepared_mesh, records, documents, validators, fmt
):
    descriptors = load_directory(prepared_mesh).descriptors
    assert descriptors, "the sample mesh has products"
    assert set(documents[fmt]) == set(descriptors)
    assert not any(r.published for r in records.values())  # prepared, never built
    problems = {
        address: errors
        for address, doc in documents[fmt].items()
        if (errors := _errors(validators[fmt], doc))
    }
    assert not problems, json.dumps(problems, indent=2)
    for address, doc in documents[fmt].items():
        assert validation.validation_errors(doc, fmt) == [], address  # what --validate runs
        assert yaml.safe_load(standards.to_yaml(doc, header="a comment")) == doc, address


def test_identity_version_and_status_of_every_product(prepared_mesh, documents):
    for address, d in load_directory(prepared_mesh).descriptors.items():
        odcs, odps = documents["odcs"][address], documents["odps"][address]
        assert odcs["apiVersion"].startswith("v3.") and odcs["kind"] == "DataContract"
        assert odps["apiVersion"] == "v1.1.0" and odps["kind"] == "DataProduct"
        for doc in (odcs, odps):
            assert doc["id"] == d.address.urn
            assert doc["name"] == address
            assert doc["version"] == d.body.version
            assert doc["status"] == d.body.status  # draft | active | deprecated: same words
            assert doc["domain"] == d.domain
            assert doc["description"]["purpose"] == d.body.purpose
        assert [c["name"] for c in odcs["schema"][0]["properties"]] == [c.name for c in d.columns]
        assert odcs["schema"][0]["physicalName"] == address
        (port,) = odps["outputPorts"]
        assert port["contractId"] == odcs["id"]
        assert port["version"] == odcs["version"]


def test_every_expectation_becomes_one_quality_rule(prepared_mesh, documents):
    for address, d in load_directory(prepared_mesh).descriptors.items():
        if d.domain == "mesh":  # the platform's own table declares no expectations
            continue
        rules = _rules(documents["odcs"][address])
        exported = [
            json.dumps(_custom(r["customProperties"])[odcs_quality.GX_PROPERTY], sort_keys=True)
            for r in rules
            if odcs_quality.GX_PROPERTY in _custom(r.get("customProperties", []))
        ]
        declared = [json.dumps(e.model_dump(), sort_keys=True) for e in d.body.sla.expectations]
        assert collections.Counter(exported) == collections.Counter(declared), address
        assert len(exported) == len(d.body.sla.expectations) > 0
        volume = [r for r in rules if r.get("engine") == odcs_quality.MESH_ENGINE]
        assert len(volume) == (1 if d.body.sla.volume else 0)


# --- specific content ----------------------------------------------------------------------------


def test_customers_contract_carries_personal_data_grants_and_sla(prepared_mesh, documents):
    doc = documents["odcs"]["sales.customers"]
    props = {p["name"]: p for p in doc["schema"][0]["properties"]}
    pii = {n: p["classification"] for n, p in props.items() if p["classification"] != "internal"}
    assert pii == {"full_name": "pii:name", "email": "pii:email", "phone": "pii:phone"}
    assert {n for n, p in props.items() if p["criticalDataElement"]} == set(pii)
    assert _custom(props["email"]["customProperties"])["masking"] == "hash"
    assert _custom(props["phone"]["customProperties"])["maskingAt"] == "read"
    assert props["customer_key"]["logicalType"] == "integer"
    assert props["customer_key"]["physicalType"] == "bigint"
    assert props["customer_key"]["primaryKey"] is True  # dbt's primary_key constraint
    assert props["account_balance"]["logicalType"] == "number"
    assert props["account_balance"]["physicalType"] == "decimal(15,2)"
    assert props["email"]["required"] is True  # expect_column_values_to_not_be_null
    assert "Contains personal data" in doc["description"]["limitations"]

    grants = {
        g.to: g for g in load_directory(prepared_mesh).descriptors["sales.customers"].body.grants
    }
    roles = {r["role"]: r for r in doc["roles"]}
    assert set(roles) == {"marketing", "team:customer-care"}
    assert roles["marketing"]["description"] == grants["marketing"].purpose
    assert roles["marketing"]["access"] == "read"
    marketing = _custom(roles["marketing"]["customProperties"])
    assert marketing["expires"] == "2027-12-31"
    assert marketing["columns"] == ["customer_key", "nation_key", "market_segment"]
    care = _custom(roles["team:customer-care"]["customProperties"])
    assert care["rows"] == "market_segment IN ('HOUSEHOLD', 'BUILDING')"

    (latency,) = [s for s in doc["slaProperties"] if s["property"] == "latency"]
    assert (latency["value"], latency["unit"]) == (26, "h")
    assert doc["team"]["name"] == "sales"
    assert doc["support"][0]["url"] == "mailto:sales-data@example.com"
    (server,) = doc["servers"]
    assert server["type"] == "iceberg"
    assert server["catalog"] == prepared_mesh.settings.catalog.name
    assert server["catalogUrl"] == safe_uri(prepared_mesh.catalog_uri)
    assert server["namespace"] == "sales"
    assert server["warehouse"] == safe_uri(prepared_mesh.warehouse)
    assert _custom(doc["customProperties"])["meshAddress"] == "sales.customers"


def test_orders_contract_keys_partitioning_and_rules(documents):
    doc = documents["odcs"]["sales.orders"]
    table = doc["schema"][0]
    props = {p["name"]: p for p in table["properties"]}
    assert props["order_key"]["primaryKey"] is True
    assert props["order_key"]["required"] is True and props["order_key"]["unique"] is True
    assert props["order_date"]["partitioned"] is True
    assert _custom(table["customProperties"])["partitionBy"] == {
        "column": "order_date",
        "granularity": "month",
    }
    (row_count,) = [r for r in table["quality"] if r.get("metric") == "rowCount"]
    assert row_count["mustBeGreaterOrEqualTo"] == 1
    (in_set,) = props["order_status"]["quality"]
    assert in_set["metric"] == "invalidValues"
    assert in_set["arguments"] == {"validValues": ["F", "O", "P"]}
    (between,) = props["total_price"]["quality"]  # no library metric: the standard's sql rule
    assert between["type"] == "sql" and "engine" not in between
    assert between["query"] == "SELECT COUNT(*) FROM ${table} WHERE ${column} < 0"
    assert (between["mustBe"], between["unit"]) == (0, "rows")
    volume = next(r for r in table["quality"] if r.get("engine") == odcs_quality.MESH_ENGINE)
    assert volume["type"] == "custom" and volume["description"].startswith(
        odcs_quality.NOT_STANDARD
    )


def test_deprecated_nations_maps_to_deprecated_then_retired(prepared_mesh, records, documents):
    odcs, odps = documents["odcs"]["logistics.nations"], documents["odps"]["logistics.nations"]
    assert odcs["status"] == odps["status"] == "deprecated"
    assert odcs["version"] == "1.3.0"
    assert odcs["schema"][0]["deprecated"] is True
    assert odps["deprecated"] is True and "deprecated" not in documents["odps"]["sales.orders"]
    assert {"property": "endOfLife", "value": "2027-06-30"}.items() <= next(
        s for s in odcs["slaProperties"] if s["property"] == "endOfLife"
    ).items()
    assert "use logistics.nations_v2" in odcs["description"]["limitations"]
    assert _custom(odps["customProperties"])["deprecatedOn"] == "2026-11-01"
    assert documents["odcs"]["logistics.nations_v2"]["status"] == "active"
    after_sunset = dt.date(2027, 7, 1)
    record = records["logistics.nations"]
    for fmt in FORMATS:
        doc = standards.build_document(prepared_mesh, record, fmt, today=after_sunset)
        assert doc["status"] == "retired"


def test_odps_input_ports_are_the_upstream_products(prepared_mesh, documents):
    descriptors = load_directory(prepared_mesh).descriptors
    doc = documents["odps"]["marketing.customer_segments"]
    upstream = ["logistics.nations", "sales.customers", "sales.order_lines", "sales.orders"]
    assert [p["name"] for p in doc["inputPorts"]] == upstream
    for port in doc["inputPorts"]:
        assert port["contractId"] == documents["odcs"][port["name"]]["id"]
        assert port["version"] == descriptors[port["name"]].body.version
    (output,) = doc["outputPorts"]
    assert output["type"] == "tables"
    assert [c["id"] for c in output["inputContracts"]] == [
        p["contractId"] for p in doc["inputPorts"]
    ]
    assert doc["team"]["name"] == "marketing"  # an object with members, as ODCS v3.1+
    assert doc["team"]["members"] == [
        {"username": "marketing-analytics@example.com", "role": "owner"}
    ]
    # a Python product's declared input; a product built from domain sources has no input port
    python = documents["odps"]["marketing.segment_summary"]
    assert [p["name"] for p in python["inputPorts"]] == ["marketing.customer_segments"]
    assert "inputPorts" not in documents["odps"]["sales.orders"]
    (compound,) = documents["odcs"]["marketing.segment_summary"]["schema"][0]["quality"][:1]
    assert compound["metric"] == "duplicateValues"
    assert compound["arguments"] == {"properties": ["market_segment", "value_tier"]}


# --- the validator is wired ----------------------------------------------------------------------


def test_broken_documents_fail_validation(documents, validators, fmt):
    doc = documents[fmt]["sales.customers"]
    assert _errors(validators[fmt], doc) == []

    missing_id = copy.deepcopy(doc)
    del missing_id["id"]
    assert any("'id' is a required property" in e for e in _errors(validators[fmt], missing_id))
    assert validation.validation_errors(missing_id, fmt)

    wrong_kind = copy.deepcopy(doc)
    wrong_kind["kind"] = "DataSet"
    assert _errors(validators[fmt], wrong_kind)

    unknown_field = copy.deepcopy(doc)
    unknown_field["owner"] = "sales"  # additionalProperties: false at the top level
    assert _errors(validators[fmt], unknown_field)

    if fmt == "odcs":  # conditional subschemas: an iceberg server needs its catalog URL
        no_catalog = copy.deepcopy(doc)
        del no_catalog["servers"][0]["catalogUrl"]
        assert any("catalogUrl" in e for e in _errors(validators[fmt], no_catalog))
        bad_rule = copy.deepcopy(doc)
        rule = bad_rule["schema"][0]["properties"][0]["quality"][0]
        rule["mustBeLessThan"] = 1  # a library metric takes exactly one operator
        assert _errors(validators[fmt], bad_rule)
    else:  # the format checker: support URLs must be URIs
        bad_url = copy.deepcopy(doc)
        bad_url["support"][0]["url"] = "not a uri"
        assert any("uri" in e for e in _errors(validators[fmt], bad_url))
        team_list = copy.deepcopy(doc)  # the pre-v1.0.0 shape: a list of members
        team_list["team"] = doc["team"]["members"]
        assert any(e.startswith("team:") for e in _errors(validators[fmt], team_list))


# --- mapping units -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_type", "expected"),
    [
        ("bigint", {"logicalType": "integer", "logicalTypeOptions": {"format": "i64"}}),
        ("INTEGER", {"logicalType": "integer", "logicalTypeOptions": {"format": "i32"}}),
        ("decimal(18,2)", {"logicalType": "number"}),
        ("double", {"logicalType": "number", "logicalTypeOptions": {"format": "f64"}}),
        ("varchar", {"logicalType": "string"}),
        ("varchar(12)", {"logicalType": "string", "logicalTypeOptions": {"maxLength": 12}}),
        ("date", {"logicalType": "date"}),
        ("timestamp", {"logicalType": "timestamp", "logicalTypeOptions": {"timezone": False}}),
        ("timestamptz", {"logicalType": "timestamp", "logicalTypeOptions": {"timezone": True}}),
        ("boolean", {"logicalType": "boolean"}),
        ("uuid", {"logicalType": "string", "logicalTypeOptions": {"format": "uuid"}}),
        ("integer[]", {"logicalType": "array", "items": {
            "logicalType": "integer", "logicalTypeOptions": {"format": "i32"},
            "physicalType": "integer"}}),
        ("map(varchar, double)", {"logicalType": "map", "map": {
            "key": {"logicalType": "string", "physicalType": "varchar"},
            "value": {"logicalType": "number", "logicalTypeOptions": {"format": "f64"},
                      "physicalType": "double"}}}),
        ("struct(a integer)", {"logicalType": "object"}),
        ("union(a integer)", {}),
        (None, {}),
    ],
)  # fmt: skip
def test_duckdb_types_map_to_logical_types(data_type, expected):
    assert odcs_types.logical_type(data_type) == expected


def test_published_locations_never_carry_a_password():
    uri = "postgresql+psycopg://mesh:s3cret@db:5432/mesh"
    assert safe_uri(uri) == "postgresql+psycopg://mesh@db:5432/mesh"
    assert safe_uri("sqlite:////srv/mesh state/c.db") == "sqlite:////srv/mesh%20state/c.db"


# --- the command ---------------------------------------------------------------------------------


def test_export_writes_a_yaml_file(prepared_mesh, tmp_path, fmt):
    out = tmp_path / f"customers.{fmt}.yaml"
    text = standards.export_product(
        prepared_mesh, "sales.customers", fmt, output=out, validate=True
    )
    assert out.read_text() == text
    assert text.startswith("# ")  # where it came from
    doc = yaml.safe_load(out.read_text())
    assert doc["id"] == "urn:mesh:sales:customers:v1"
    assert doc["kind"] == {"odcs": "DataContract", "odps": "DataProduct"}[fmt]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left
    # a URN addresses the product too; without --output nothing is written
    by_urn = standards.export_product(prepared_mesh, "urn:mesh:sales:customers:v1", fmt)
    assert yaml.safe_load(by_urn) == doc


def test_unknown_address_names_the_closest_product(prepared_mesh):
    with pytest.raises(UnknownProductError) as exc:
        standards.export_product(prepared_mesh, "sales.customer", "odcs")
    assert "did you mean sales.customers" in str(exc.value)


def test_unwritable_output_names_the_file_and_writes_nothing(prepared_mesh, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    out = blocker / "customers.odcs.yaml"
    with pytest.raises(MeshError) as exc:
        standards.export_product(prepared_mesh, "sales.customers", "odcs", output=out)
    assert str(out) in str(exc.value) and "fix:" in str(exc.value)
    assert blocker.read_text() == "a file, not a directory"
    with pytest.raises(MeshError, match="is a directory"):
        standards.export_product(prepared_mesh, "sales.customers", "odcs", output=tmp_path)


def test_a_failed_write_keeps_the_previous_file(prepared_mesh, tmp_path, monkeypatch):
    out = tmp_path / "customers.odcs.yaml"
    out.write_text("previous export\n")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(MeshError) as exc:
        standards.export_product(prepared_mesh, "sales.customers", "odcs", output=out)
    assert str(out) in str(exc.value) and "nothing was written" in str(exc.value)
    assert out.read_text() == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_mesh_export_command(prepared_mesh, tmp_path):
    """Through the CLI: `mesh export ADDRESS --format odps --output FILE --validate`."""
    root = ["--root", str(prepared_mesh.root)]
    out = tmp_path / "segments.odps.yaml"
    result = CliRunner().invoke(
        cli, [*root, "export", "marketing.customer_segments", "--format", "odps", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["id"] == "urn:mesh:marketing:customer_segments:v1"
    result = CliRunner().invoke(cli, [*root, "export", "sales.orders", "--format", "odcs"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["kind"] == "DataContract"
    result = CliRunner().invoke(cli, [*root, "export", "sales.orders", "--format", "csv"])
    assert result.exit_code == 2  # click rejects the format
    result = CliRunner().invoke(cli, [*root, "export", "sales.ordrs", "--format", "odcs"])
    assert result.exit_code == 1
    assert "did you mean sales.orders" in result.output


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"min_value": 0}, {"type": "sql", "mustBe": 0, "unit": "rows",
          "query": "SELECT COUNT(*) FROM ${table} WHERE ${column} < 0"}),
        ({"min_value": 1, "max_value": 50, "strict_max": True}, {"type": "sql", "mustBe": 0,
          "unit": "rows",
          "query": "SELECT COUNT(*) FROM ${table} WHERE ${column} < 1 OR ${column} >= 50"}),
        ({"max_value": 0.1, "mostly": 0.95}, {"type": "sql", "mustBeLessOrEqualTo": 5.0,
          "unit": "percent", "query": "SELECT COALESCE(100.0 * SUM(CASE WHEN ${column} > 0.1 "
          "THEN 1 ELSE 0 END) / NULLIF(COUNT(${column}), 0), 0) FROM ${table}"}),
        ({"min_value": "2020-01-01"}, {"type": "custom"}),  # no number: no standard form
    ],
)  # fmt: skip
def test_between_on_values_is_the_standards_sql_rule(kwargs, expected):
    rule = odcs_quality.quality_rule(
        Expectation(type="expect_column_values_to_be_between", kwargs={"column": "x", **kwargs})
    ).model_dump(by_alias=True, exclude_none=True)
    assert expected.items() <= rule.items()
    if rule["type"] == "custom":
        assert rule["engine"] == odcs_quality.GX_ENGINE
        assert rule["description"].startswith(odcs_quality.NOT_STANDARD)
