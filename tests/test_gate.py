"""The publication gate on a real tmp Iceberg catalog, real DuckDB and real Great Expectations:
a failing blocking check keeps main where it was, and check results never carry personal data."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from mesh_platform.addressing import ProductAddress
from mesh_platform.assets.checks import check_result, check_specs
from mesh_platform.assets.keys import product_key
from mesh_platform.products.descriptor import ProductDescriptor, descriptor_from_node
from mesh_platform.products.gate import (
    GateCheck,
    GateContext,
    register_gate_check,
    unregister_gate_check,
)
from mesh_platform.products.outcomes import CheckOutcome
from mesh_platform.products.publish import publish_product
from mesh_platform.storage.metadata import is_published
from mesh_platform.storage.wap import audit_branch
from mesh_platform.testing import read_published

SECRET = "leaked-secret-value"
IDENT = ("sales", "orders")


def descriptor(
    *,
    expectations: list[dict] | None = None,
    volume: dict | None = None,
    extra_columns: dict[str, dict] | None = None,
) -> ProductDescriptor:
    return descriptor_from_node("sales", node(expectations, volume, extra_columns))


def node(
    expectations: list[dict] | None = None,
    volume: dict | None = None,
    extra_columns: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """The dbt manifest node of the test product ``sales.orders``."""
    sla: dict[str, Any] = {}
    if expectations is not None:
        sla["expectations"] = expectations
    if volume is not None:
        sla["volume"] = volume
    return {
        "resource_type": "model",
        "access": "public",
        "name": "orders",
        "description": "One row per customer order.",
        "original_file_path": "models/products/orders.sql",
        "config": {
            "meta": {
                "mesh": {
                    "purpose": "Order headers for revenue reporting.",
                    "owner": {"team": "sales", "contact": "sales-data@example.com"},
                    "version": "1.0.0",
                    "sla": sla,
                }
            }
        },
        "columns": {
            "order_key": {"data_type": "bigint"},
            "email": {"data_type": "varchar", "config": {"meta": {"classification": "pii:email"}}},
            "amount": {"data_type": "double", "config": {"meta": {"classification": "internal"}}},
            **(extra_columns or {}),
        },
    }


DATA_POLICIES = {"pii_detection", "pii_masking_verified"}  # every gate has them (stand-ins here)


class _StandIn(GateCheck):
    """Passes: stands in for a governance data policy in tests of the gate's mechanics."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.description = f"stand-in for {name}"
        self.personal_data = True

    def evaluate(self, ctx: GateContext) -> CheckOutcome:
        return CheckOutcome(True, "stand-in for the governance data policy", {})


@pytest.fixture(autouse=True)
def _gate_without_governance():
    """These tests are about the gate's mechanics on an unmasked PII column; the governance
    data policies (which would block that column) are tested in test_governance.py. They are
    replaced by stand-ins that pass: the gate refuses a batch when they are missing."""
    from mesh_platform.governance.data import PiiDetection, PiiMaskingVerified

    for check in (PiiDetection, PiiMaskingVerified):
        unregister_gate_check(check.name)
        register_gate_check(_StandIn(check.name))
    yield
    for check in (PiiDetection, PiiMaskingVerified):
        unregister_gate_check(check.name)
        register_gate_check(check())


@pytest.fixture
def conn(duck):
    return duck


def make(conn, name: str, rows: int, *, select: str | None = None) -> str:
    """main.<name> with ``rows`` good orders (or the given select over range(rows))."""
    select = select or (
        "range AS order_key, 'c' || range || '@example.com' AS email, (range * 1.5)::DOUBLE AS amount"
    )
    conn.execute(f"CREATE OR REPLACE TABLE main.{name} AS SELECT {select} FROM range({rows})")
    return f"main.{name}"


def publish(catalog, d, conn, relation, batch, **kwargs):
    return publish_product(
        catalog, d, conn, relation, batch_id=batch, run_id=f"run-{batch}", **kwargs
    )


def main_id(catalog) -> int:
    return catalog.load_table(IDENT).current_snapshot().snapshot_id


def main_rows(catalog):
    return catalog.load_table(IDENT).scan().to_arrow()


EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[a-z]+$"
GOOD_SUITE = [
    {"expect_column_values_to_not_be_null": {"column": "order_key"}},
    {"expect_column_values_to_be_unique": {"column": "order_key"}},
    {"expect_column_values_to_match_regex": {"column": "email", "regex": EMAIL_REGEX}},
    {"expect_table_row_count_to_be_between": {"min_value": 1, "max_value": 1000}},
]


# --- everything passes ----------------------------------------------------------------------


def test_publishes_when_every_check_passes(catalog, conn):
    d = descriptor(expectations=GOOD_SUITE, volume={"min_ratio": 0.5})
    first = publish(catalog, d, conn, make(conn, "v1", 10), "b1")
    assert first.published, first.error
    assert first.error is None
    assert first.failed_checks == []
    assert set(first.outcomes) == {"schema_compatible", "expectations", "volume"} | DATA_POLICIES
    assert all(o.passed for o in first.outcomes.values()), first.outcomes
    assert first.snapshot_id == main_id(catalog)
    assert main_rows(catalog).num_rows == 10
    assert first.outcomes["volume"].description == "first publication"
    results = first.outcomes["expectations"].metadata["results"]
    assert len(results) == len(GOOD_SUITE)
    assert results["expect_table_row_count_to_be_between(table)"]["observed_value"] == 10
    assert first.outcomes["expectations"].metadata["rows_checked"] == 10

    table = catalog.load_table(IDENT)
    assert table.properties["mesh.urn"] == "urn:mesh:sales:orders:v1"
    assert table.properties["mesh.classification.email"] == "pii:email"
    assert audit_branch("b1") not in table.metadata.refs  # cleaned up once published
    summary = table.current_snapshot().summary
    assert summary["mesh.run_id"] == "run-b1"
    assert summary["mesh.product_version"] == "1.0.0"

    second = publish(catalog, d, conn, make(conn, "v2", 12), "b2")
    assert second.published, second.error
    assert second.snapshot_id == main_id(catalog) != first.snapshot_id
    volume = second.outcomes["volume"]
    assert volume.passed and volume.metadata["rows"] == 12
    assert volume.metadata["published_rows"] == 10
    assert volume.metadata["ratio"] == pytest.approx(1.2)
    assert main_rows(catalog).num_rows == 12


# --- expectations on personal data ----------------------------------------------------------


def test_a_failing_expectation_on_pii_blocks_and_leaks_nothing(catalog, conn):
    suite = [
        *GOOD_SUITE,
        {"expect_column_values_to_not_be_in_set": {"column": "email", "value_set": ["x"]}},
        {"expect_column_values_to_be_in_set": {"column": "email", "value_set": ["a@b.co"]}},
        {
            "expect_column_distinct_values_to_be_in_set": {
                "column": "email",
                "value_set": ["a@b.co"],
            }
        },
        {"expect_column_value_lengths_to_be_between": {"column": "email", "max_value": 5}},
        {"expect_column_values_to_be_unique": {"column": "email"}},
        {"expect_column_max_to_be_between": {"column": "amount", "max_value": 1}},
    ]
    d = descriptor(expectations=suite)
    before = publish(catalog, descriptor(), conn, make(conn, "v1", 5), "good")
    assert before.published, before.error
    main_before = main_id(catalog)

    bad = make(
        conn,
        "v2",
        6,
        select="range AS order_key, CASE WHEN range < 2 THEN '" + SECRET + "' "
        "ELSE 'c' || range || '@example.com' END AS email, (range * 1.5)::DOUBLE AS amount",
    )
    publication = publish(catalog, d, conn, bad, "bad")

    assert not publication.published
    assert publication.snapshot_id is None
    assert main_id(catalog) == main_before
    assert main_rows(catalog).num_rows == 5
    assert SECRET not in main_rows(catalog).column("email").to_pylist()
    table = catalog.load_table(IDENT)
    assert publication.stage is not None
    branch = audit_branch("bad")
    assert publication.stage.branch == branch
    assert branch in table.metadata.refs  # the rejected data is kept for inspection
    staged = table.scan().use_ref(branch).to_arrow()
    assert staged.num_rows == 6
    assert SECRET in staged.column("email").to_pylist()
    assert "expectations" in publication.failed_checks
    assert branch in publication.error and str(main_before) in publication.error

    outcome = publication.outcomes["expectations"]
    assert not outcome.passed and outcome.blocking and outcome.blocks
    results = outcome.metadata["results"]
    regex = results["expect_column_values_to_match_regex(email)"]
    assert regex["success"] is False
    assert regex["unexpected_count"] == 2  # counts survive, values do not
    assert "expect_column_values_to_match_regex(email)" in outcome.description
    assert results["expect_column_values_to_not_be_null(order_key)"]["success"] is True
    # a non-personal column keeps its observed value
    assert results["expect_column_max_to_be_between(amount)"]["observed_value"] == 7.5

    everything = [
        repr(publication.outcomes),
        str(publication.outcomes),
        publication.error,
        *(repr(check_result(d, name, o)) for name, o in publication.outcomes.items()),
    ]
    for text in everything:
        assert SECRET not in text
        assert "leaked" not in text


def test_expectation_results_are_attributed_to_the_right_expectation(catalog, conn):
    """Each result is reported under the expectation that produced it, whatever the order of
    the suite (order_key is checked before and after email)."""
    suite = [
        {"expect_column_values_to_be_unique": {"column": "order_key"}},
        {"expect_column_values_to_be_unique": {"column": "email"}},  # the only failure
        {"expect_column_values_to_not_be_null": {"column": "order_key"}},
        {"expect_table_row_count_to_be_between": {"min_value": 1, "max_value": 1000}},
        {"expect_column_max_to_be_between": {"column": "amount", "max_value": 100}},
    ]
    dupes = "range AS order_key, 'same@example.com' AS email, (range * 1.5)::DOUBLE AS amount"
    publication = publish(
        catalog, descriptor(expectations=suite), conn, make(conn, "v1", 4, select=dupes), "b1"
    )
    assert not publication.published
    outcome = publication.outcomes["expectations"]
    results = outcome.metadata["results"]
    success = {label: r["success"] for label, r in results.items()}
    assert success == {
        "expect_column_values_to_be_unique(order_key)": True,
        "expect_column_values_to_be_unique(email)": False,
        "expect_column_values_to_not_be_null(order_key)": True,
        "expect_table_row_count_to_be_between(table)": True,
        "expect_column_max_to_be_between(amount)": True,
    }
    assert outcome.description == (
        "failed: expect_column_values_to_be_unique(email) (4 row(s) unexpected)"
    )
    assert "sla.expectations of dbt_projects/sales/models/products/orders.sql" in outcome.fix
    assert results["expect_table_row_count_to_be_between(table)"]["observed_value"] == 4


def test_observed_values_of_pii_columns_never_leak(catalog, conn):
    """An aggregate of a personal-data column (max income) is dropped; the same aggregate of a
    non-personal column is kept, whatever the order of the suite."""
    suite = [
        {"expect_column_max_to_be_between": {"column": "amount", "max_value": 1000}},
        {"expect_column_max_to_be_between": {"column": "income", "max_value": 1e9}},
        {"expect_column_min_to_be_between": {"column": "amount", "min_value": 0}},
    ]
    d = descriptor(
        expectations=suite,
        extra_columns={
            "income": {"data_type": "double", "config": {"meta": {"classification": "pii:other"}}}
        },
    )
    assert d.pii_columns == {"email": "email", "income": "other"}
    select = (
        "range AS order_key, 'c' || range || '@example.com' AS email, "
        "(range * 1.5)::DOUBLE AS amount, (range + 987654.25)::DOUBLE AS income"
    )
    publication = publish(catalog, d, conn, make(conn, "v1", 3, select=select), "b1")
    assert publication.published, publication.error
    results = publication.outcomes["expectations"].metadata["results"]
    assert results["expect_column_max_to_be_between(amount)"]["observed_value"] == 3.0
    assert results["expect_column_min_to_be_between(amount)"]["observed_value"] == 0.0
    assert "observed_value" not in results["expect_column_max_to_be_between(income)"]
    for name, outcome in publication.outcomes.items():
        assert "98765" not in repr(outcome)
        assert "98765" not in repr(check_result(d, name, outcome))


# --- schema compatibility -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("select", "what"),
    [
        pytest.param(
            "range AS order_key, (range * 1.5)::DOUBLE AS amount", "dropped", id="drop-column"
        ),
        pytest.param(
            "range::INTEGER AS order_key, 'e@x.io' AS email, (range * 1.5)::DOUBLE AS amount",
            "type_changes",
            id="bigint-to-integer",
        ),
        pytest.param(
            "range::VARCHAR AS order_key, 'e@x.io' AS email, (range * 1.5)::DOUBLE AS amount",
            "type_changes",
            id="bigint-to-varchar",
        ),
        pytest.param(
            "range AS order_key, 'e@x.io' AS email, (range * 1.5)::FLOAT AS amount",
            "type_changes",
            id="double-to-float",
        ),
        pytest.param(
            "range AS order_key, 'e@x.io' AS email, (range * 1.5)::DOUBLE AS amount_eur",
            "dropped",
            id="rename-column",
        ),
    ],
)
def test_a_breaking_schema_change_is_blocked(catalog, conn, select, what):
    d = descriptor()
    assert publish(catalog, d, conn, make(conn, "v1", 10), "b1").published
    before_id = main_id(catalog)
    before_schema = catalog.load_table(IDENT).schema()

    publication = publish(catalog, d, conn, make(conn, "v2", 3, select=select), "b2")

    assert not publication.published
    assert publication.failed_checks == ["schema_compatible"]
    outcome = publication.outcomes["schema_compatible"]
    assert not outcome.passed and outcome.blocking
    assert outcome.metadata[what], outcome.metadata
    assert "new major version" in outcome.fix
    assert "dbt_projects/sales/models/products/orders.sql" in outcome.fix
    assert "schema_compatible" in publication.error
    assert publication.stage is None  # refused before anything was staged
    table = catalog.load_table(IDENT)
    assert table.current_snapshot().snapshot_id == before_id
    assert table.schema() == before_schema
    assert audit_branch("b2") not in table.metadata.refs
    assert main_rows(catalog).num_rows == 10


def test_adding_a_column_publishes_and_evolves_the_schema(catalog, conn):
    d = descriptor()
    assert publish(catalog, d, conn, make(conn, "v1", 4), "b1").published
    assert "discount" not in catalog.load_table(IDENT).schema().column_names

    wider = make(
        conn,
        "v2",
        4,
        select="range AS order_key, 'e@x.io' AS email, (range * 1.5)::DOUBLE AS amount, 0.1::DOUBLE AS discount",
    )
    publication = publish(catalog, d, conn, wider, "b2")

    assert publication.published, publication.error
    outcome = publication.outcomes["schema_compatible"]
    assert outcome.passed
    assert outcome.metadata["added"] == ["discount"]
    assert "discount" in outcome.description
    schema = catalog.load_table(IDENT).schema()
    assert schema.column_names == ["order_key", "email", "amount", "discount"]
    assert main_rows(catalog).column("discount").to_pylist() == [pytest.approx(0.1)] * 4


def test_widening_a_type_publishes(catalog, conn):
    d = descriptor()
    narrow = "range::INTEGER AS order_key, 'e@x.io' AS email, (range * 1.5)::DOUBLE AS amount"
    assert publish(catalog, d, conn, make(conn, "v1", 4, select=narrow), "b1").published
    publication = publish(catalog, d, conn, make(conn, "v2", 4), "b2")
    assert publication.published, publication.error
    assert publication.outcomes["schema_compatible"].metadata["widened"] == [
        "order_key: int -> long"
    ]
    assert str(catalog.load_table(IDENT).schema().find_field("order_key").field_type) == "long"


def test_a_blocked_publication_leaves_main_readers_schema_alone(mesh, catalog, conn):
    """A compatible new column is staged, then the gate blocks: main's readers must not see a
    column that no published snapshot has."""
    d = descriptor()
    assert publish(catalog, d, conn, make(conn, "v1", 4), "b1").published
    before = main_rows(catalog).schema.names
    wider = make(
        conn,
        "v2",
        4,
        select="range AS order_key, 'e@x.io' AS email, (range * 1.5)::DOUBLE AS amount, 0.1::DOUBLE AS discount",
    )
    publication = publish(catalog, d, conn, wider, "b2", failed_elsewhere=["dbt test x"])
    assert not publication.published
    pyiceberg_sees = main_rows(catalog).schema.names
    seen, _ = read_published(mesh, ProductAddress("sales", "orders"))  # the mesh's read path
    assert {"pyiceberg": pyiceberg_sees, "mesh read path": seen} == {
        "pyiceberg": before,
        "mesh read path": before,
    }


# --- volume ---------------------------------------------------------------------------------


def test_volume_drop_blocks_when_declared(catalog, conn):
    d = descriptor(volume={"min_ratio": 0.5})
    assert publish(catalog, d, conn, make(conn, "v1", 100), "b1").published
    before = main_id(catalog)

    publication = publish(catalog, d, conn, make(conn, "v2", 10), "b2")

    assert not publication.published
    assert publication.failed_checks == ["volume"]
    volume = publication.outcomes["volume"]
    assert not volume.passed and volume.blocking
    assert volume.metadata["rows"] == 10
    assert volume.metadata["published_rows"] == 100
    assert volume.metadata["ratio"] == pytest.approx(0.1)
    assert volume.description == (
        "10 rows is 10.0% of the published 100, below the minimum of 50% (min_ratio 0.5)"
    )
    assert "change sla.volume in dbt_projects/sales/models/products/orders.sql" in volume.fix
    assert main_id(catalog) == before
    assert main_rows(catalog).num_rows == 100

    # within the limit: publishes
    ok = publish(catalog, d, conn, make(conn, "v3", 60), "b3")
    assert ok.published, ok.error
    assert ok.outcomes["volume"].passed


def test_volume_growth_blocks_above_max_ratio(catalog, conn):
    d = descriptor(volume={"min_ratio": None, "max_ratio": 2})
    assert publish(catalog, d, conn, make(conn, "v1", 10), "b1").published
    publication = publish(catalog, d, conn, make(conn, "v2", 50), "b2")
    assert not publication.published
    assert publication.failed_checks == ["volume"]
    assert publication.outcomes["volume"].metadata["ratio"] == pytest.approx(5.0)
    assert publication.outcomes["volume"].description.endswith(
        "above the maximum of 200% (max_ratio 2)"
    )


def test_volume_without_a_volume_block_only_warns(catalog, conn):
    d = descriptor()
    assert d.body.sla.volume is None
    assert publish(catalog, d, conn, make(conn, "v1", 100), "b1").published

    publication = publish(catalog, d, conn, make(conn, "v2", 10), "b2")

    assert publication.published, publication.error
    volume = publication.outcomes["volume"]
    assert not volume.passed  # the default ratio is still reported ...
    assert not volume.blocking  # ... as a warning
    assert not volume.blocks
    assert publication.failed_checks == []
    assert main_rows(catalog).num_rows == 10


def test_non_blocking_volume_block_only_warns(catalog, conn):
    d = descriptor(volume={"min_ratio": 0.9, "blocking": False})
    assert publish(catalog, d, conn, make(conn, "v1", 10), "b1").published
    publication = publish(catalog, d, conn, make(conn, "v2", 5), "b2")
    assert publication.published, publication.error
    assert not publication.outcomes["volume"].passed


# --- checks that failed outside the gate ----------------------------------------------------


def test_a_check_failed_elsewhere_blocks(catalog, conn):
    d = descriptor()
    assert publish(catalog, d, conn, make(conn, "v1", 10), "b1").published
    before = main_id(catalog)

    publication = publish(
        catalog, d, conn, make(conn, "v2", 11), "b2", failed_elsewhere=["dbt test x"]
    )

    assert not publication.published
    assert all(o.passed for o in publication.outcomes.values() if o.blocking)
    assert "dbt test x" in publication.error
    assert main_id(catalog) == before
    assert audit_branch("b2") in catalog.load_table(IDENT).metadata.refs


def test_a_first_publication_blocked_elsewhere_stays_unpublished(catalog, conn):
    publication = publish(
        catalog, descriptor(), conn, make(conn, "v1", 3), "b1", failed_elsewhere=["dbt test x"]
    )
    assert not publication.published
    assert not is_published(catalog.load_table(IDENT).current_snapshot())


# --- the hook point -------------------------------------------------------------------------


class Failing(GateCheck):
    name = "custom_policy"
    description = "A governance policy that never passes."

    def __init__(self, *, blocking: bool = True) -> None:
        self._blocking = blocking
        self.seen: list[int] = []

    def blocking(self, descriptor):
        return self._blocking

    def evaluate(self, ctx: GateContext) -> CheckOutcome:
        self.seen.append(ctx.staged_rows)
        return CheckOutcome(False, "policy says no", {"rows": ctx.staged_rows}, self._blocking)


class Raising(GateCheck):
    name = "broken_policy"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def evaluate(self, ctx: GateContext) -> CheckOutcome:
        raise self.exc


class OnlyForPii(GateCheck):
    name = "pii_only"

    def applies(self, descriptor):
        return bool(descriptor.pii_columns) and descriptor.body.version.startswith("9.")

    def evaluate(self, ctx: GateContext) -> CheckOutcome:  # pragma: no cover - never applies
        raise AssertionError("evaluated a check that does not apply")


@pytest.fixture
def registered():
    names: list[str] = []

    def add(check: GateCheck) -> GateCheck:
        register_gate_check(check)
        names.append(check.name)
        return check

    try:
        yield add
    finally:
        for name in names:
            unregister_gate_check(name)


def test_a_registered_check_that_fails_blocks(catalog, conn, registered):
    check = registered(Failing())
    d = descriptor()
    assert "custom_policy" in {s.name for s in check_specs(d, contract=True)}

    publication = publish(catalog, d, conn, make(conn, "v1", 7), "b1")

    assert not publication.published
    assert publication.failed_checks == ["custom_policy"]
    assert publication.outcomes["custom_policy"].description == "policy says no"
    assert check.seen == [7]  # it saw exactly the staged data
    assert not is_published(catalog.load_table(IDENT).current_snapshot())


def test_a_non_blocking_registered_check_only_warns(catalog, conn, registered):
    registered(Failing(blocking=False))
    d = descriptor()
    spec = next(s for s in check_specs(d, contract=True) if s.name == "custom_policy")
    assert spec.blocking is False
    publication = publish(catalog, d, conn, make(conn, "v1", 7), "b1")
    assert publication.published, publication.error
    assert not publication.outcomes["custom_policy"].passed


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad config\nsecond line"), RuntimeError(), KeyError("x")],
    ids=["message", "no-message", "key-error"],
)
def test_a_check_that_raises_becomes_a_failed_blocking_outcome(catalog, conn, registered, exc):
    d = descriptor()
    assert publish(catalog, d, conn, make(conn, "v1", 5), "b1").published
    before = main_id(catalog)
    registered(Raising(exc))
    publication = publish(catalog, d, conn, make(conn, "v2", 5), "b2")
    assert not publication.published
    outcome = publication.outcomes["broken_policy"]
    assert not outcome.passed and outcome.blocking
    assert type(exc).__name__ in outcome.description
    assert "second line" not in outcome.description
    assert publication.failed_checks == ["broken_policy"]
    assert main_id(catalog) == before


def test_register_refuses_empty_duplicate_and_reserved_names(registered):
    registered(Failing())
    for name in ("custom_policy", "expectations", "volume", "schema_compatible", "contract", ""):
        check = Failing()
        check.name = name
        with pytest.raises(ValueError):
            register_gate_check(check)
    assert [s.name for s in check_specs(descriptor(), contract=True)].count("custom_policy") == 1


def test_unregister_removes_the_check(registered):
    register_gate_check(Failing())
    try:
        assert "custom_policy" in {s.name for s in check_specs(descriptor(), contract=False)}
    finally:
        unregister_gate_check("custom_policy")
    assert "custom_policy" not in {s.name for s in check_specs(descriptor(), contract=False)}


def test_a_check_that_does_not_apply_is_neither_declared_nor_run(catalog, conn, registered):
    registered(OnlyForPii())
    d = descriptor()
    assert "pii_only" not in {s.name for s in check_specs(d, contract=True)}
    publication = publish(catalog, d, conn, make(conn, "v1", 3), "b1")
    assert publication.published, publication.error
    assert "pii_only" not in publication.outcomes


# --- declared checks ------------------------------------------------------------------------


def test_check_specs_match_the_descriptor():
    with_all = descriptor(expectations=GOOD_SUITE, volume={"min_ratio": 0.5})
    specs = {s.name: s for s in check_specs(with_all, contract=True)}
    assert set(specs) == {"schema_compatible", "contract", "expectations", "volume"} | DATA_POLICIES
    assert {n: s.blocking for n, s in specs.items()} == {
        "schema_compatible": True,
        "contract": True,
        "expectations": True,
        "volume": True,
        **dict.fromkeys(DATA_POLICIES, True),
    }
    assert all(s.asset_key.path == ["sales", "orders"] for s in specs.values())
    assert all(s.description for s in specs.values())

    bare = {s.name: s for s in check_specs(descriptor(), contract=True)}
    assert set(bare) == {"schema_compatible", "contract", "volume"} | DATA_POLICIES  # no suite
    assert bare["volume"].blocking is False  # no volume block: a warning only

    python = {s.name for s in check_specs(descriptor(), contract=False)}
    assert python == {"schema_compatible", "volume"} | DATA_POLICIES

    lenient = descriptor(volume={"blocking": False})
    assert {s.name: s.blocking for s in check_specs(lenient, contract=True)}["volume"] is False


def test_check_result_maps_blocking_to_severity():
    import dagster as dg

    d = descriptor()
    error = check_result(d, "volume", CheckOutcome(False, "no", {"rows": 1}, True))
    warn = check_result(d, "volume", CheckOutcome(False, "no", {"rows": 1}, False))
    assert error.severity == dg.AssetCheckSeverity.ERROR
    assert warn.severity == dg.AssetCheckSeverity.WARN
    assert error.passed is False
    assert error.asset_key == product_key(d.address)
    assert error.metadata["rows"].value == 1


@pytest.mark.parametrize(
    "module", ["mesh_platform.assets.checks", "mesh_platform.products.publish"]
)
def test_the_data_policies_are_gate_checks_wherever_the_gate_is_used(module):
    """Whoever declares (assets) or runs (publication) the gate gets the governance data
    policies among its checks, in a process that imported nothing else: no product is declared
    or published without them."""
    probe = (
        f"import {module}; from mesh_platform.products.gate import gate_checks, _REGISTRY; "
        "print(' '.join(c.name for c in _REGISTRY))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {"pii_detection", "pii_masking_verified"} <= set(result.stdout.split())


def test_the_gate_fails_closed_when_the_personal_data_policies_are_not_loaded():
    """A process that never imported the governance package runs a gate without its data
    policies: each is reported failed and blocking, so no batch passes unchecked."""
    probe = (
        "from mesh_platform.products.gate import GateContext, run_gate\n"
        "from mesh_platform.products.descriptor import descriptor_from_node\n"
        "import json, sys\n"
        "node = json.loads(sys.argv[1])\n"
        "outcomes = run_gate(GateContext(descriptor_from_node('sales', node), None, None))\n"
        "print(json.dumps({n: [o.passed, o.blocking] for n, o in outcomes.items()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(node(), default=str)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    assert outcomes["pii_detection"] == [False, True]
    assert outcomes["pii_masking_verified"] == [False, True]
