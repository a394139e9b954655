"""Great Expectations expectations (and the volume check) as ODCS quality rules.

Each expectation of a descriptor becomes one :class:`DataQuality` rule in a form the standard
defines, so that ODCS tools (datacontract-cli's ``datacontract test``) execute it instead of
skipping it: a library metric (``nullValues``, ``duplicateValues``, ``invalidValues``,
``rowCount`` with ``mustBe`` / ``mustBeBetween`` / ``mustBeGreaterOrEqualTo`` /
``mustBeLessOrEqualTo``) where one says the same thing; a ``sql`` rule (a count of the rows that
break it, written with the standard's ``${table}`` / ``${column}`` placeholders) for a
"between" on column values, which no library metric says. Only what has no standard form stays
``custom`` (engine ``great-expectations``), and says so in its description: ODCS tools skip it,
the mesh runs it. Every rule carries the original expectation in its custom property
``greatExpectations``.

The volume check compares a new snapshot's row count with the published one's: the standard
has no form for a rule over two snapshots (``rowCount`` bounds one), so it stays a ``custom``
rule of the ``mesh`` engine, marked the same way.
"""

from __future__ import annotations

import json
from typing import Any

from open_data_contract_standard.model import DataQuality

from mesh_platform.discovery.standard_fields import custom_property, jsonable
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.descriptor_sla import Expectation
from mesh_platform.products.expectations_sql import outside_bounds

GX_ENGINE = "great-expectations"
GX_PROPERTY = "greatExpectations"  # the custom property holding a rule's original expectation
MESH_ENGINE = "mesh"
NOT_STANDARD = (
    "Custom rule: the standard has no form for it, so ODCS tools skip it; the mesh runs it."
)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_DIMENSIONS = {
    "expect_column_values_to_not_be_null": "completeness",
    "expect_column_values_to_be_null": "completeness",
    "expect_table_row_count_to_be_between": "completeness",
    "expect_column_values_to_be_unique": "uniqueness",
    "expect_compound_columns_to_be_unique": "uniqueness",
    "expect_column_proportion_of_unique_values_to_be_between": "uniqueness",
    "expect_column_min_to_be_between": "accuracy",
    "expect_column_max_to_be_between": "accuracy",
    "expect_column_mean_to_be_between": "accuracy",
    "expect_column_sum_to_be_between": "accuracy",
}  # every other expectation checks values against a rule: conformity


def _count_operator(mostly: Any) -> dict[str, Any] | None:
    """No failing row, or at most (1 - mostly) of them."""
    if mostly is None or (is_number(mostly) and mostly >= 1):
        return {"mustBe": 0, "unit": "rows"}
    if is_number(mostly) and 0 <= mostly < 1:
        return {"mustBeLessOrEqualTo": round((1 - mostly) * 100, 6), "unit": "percent"}
    return None


def _library_metric(expectation: Expectation) -> dict[str, Any] | None:
    """The ODCS library metric saying exactly what the expectation checks, if there is one."""
    kwargs = dict(expectation.kwargs)
    mostly = kwargs.pop("mostly", None)
    keys = set(kwargs)
    kind = expectation.type
    count = _count_operator(mostly)
    if count is None:
        return None
    if kind == "expect_column_values_to_not_be_null" and keys == {"column"}:
        return {"metric": "nullValues", **count}
    if kind == "expect_column_values_to_be_unique" and keys == {"column"}:
        return {"metric": "duplicateValues", **count}
    if (
        kind == "expect_column_values_to_be_in_set"
        and keys == {"column", "value_set"}
        and isinstance(kwargs["value_set"], list | tuple)
    ):
        valid = jsonable(kwargs["value_set"])
        return {"metric": "invalidValues", "arguments": {"validValues": valid}, **count}
    if (
        kind == "expect_column_values_to_match_regex"
        and keys == {"column", "regex"}
        and isinstance(kwargs["regex"], str)
    ):
        return {"metric": "invalidValues", "arguments": {"pattern": kwargs["regex"]}, **count}
    if kind == "expect_compound_columns_to_be_unique" and keys == {"column_list"}:
        return {"metric": "duplicateValues",
                "arguments": {"properties": list(kwargs["column_list"])}, **count}  # fmt: skip
    if kind == "expect_table_row_count_to_be_between" and mostly is None:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if not keys <= {"min_value", "max_value"} or (low is None and high is None):
            return None
        if any(v is not None and not is_number(v) for v in (low, high)):
            return None
        if low is not None and high is not None:
            bound = {"mustBe": low} if low == high else {"mustBeBetween": [low, high]}
        elif low is not None:
            bound = {"mustBeGreaterOrEqualTo": low}
        else:
            bound = {"mustBeLessOrEqualTo": high}
        return {"metric": "rowCount", **bound, "unit": "rows"}
    return None


def _literal(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _between_sql(expectation: Expectation) -> dict[str, Any] | None:
    """expect_column_values_to_be_between as an ODCS ``sql`` rule: the rows (or the percent of
    non-null rows, ``mostly``'s denominator) whose value is out of bounds; NULLs are not
    counted, as Great Expectations does."""
    kwargs = dict(expectation.kwargs)
    mostly = kwargs.pop("mostly", None)
    if expectation.type != "expect_column_values_to_be_between" or not expectation.column:
        return None
    if not set(kwargs) <= {"column", "min_value", "max_value", "strict_min", "strict_max"}:
        return None
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if (low is None and high is None) or any(
        v is not None and not is_number(v) for v in (low, high)
    ):
        return None
    broken = outside_bounds("${column}", kwargs, _literal)
    count = _count_operator(mostly)
    if count is None:
        return None
    if count["unit"] == "rows":
        query = f"SELECT COUNT(*) FROM ${{table}} WHERE {broken}"
    else:
        query = (
            f"SELECT COALESCE(100.0 * SUM(CASE WHEN {broken} THEN 1 ELSE 0 END) / "
            "NULLIF(COUNT(${column}), 0), 0) FROM ${table}"
        )
    return {"query": query, **count}


def quality_rule(expectation: Expectation) -> DataQuality:
    """One ODCS quality rule for one Great Expectations expectation of the descriptor."""
    kwargs = jsonable(expectation.kwargs)
    target = (
        expectation.column
        or ", ".join(expectation.kwargs.get("column_list") or [])
        or ("the table")
    )
    args = ", ".join(
        f"{k}={json.dumps(v)}" for k, v in kwargs.items() if k not in ("column", "column_list")
    )
    description = (
        f"Great Expectations {expectation.type} on {target}"
        + (f" ({args})" if args else "")
        + ". Checked on the staged rows before every publication; a failure blocks it."
    )
    original = {"type": expectation.type, "kwargs": kwargs}
    if (metric := _library_metric(expectation)) is not None:
        check: dict[str, Any] = {"type": "library", **metric}
    elif (sql := _between_sql(expectation)) is not None:
        check = {"type": "sql", **sql}
    else:
        check = {"type": "custom", "engine": GX_ENGINE, "implementation": original}
        description = f"{NOT_STANDARD} {description}"
    return DataQuality(
        name=expectation.label(),
        description=description,
        **check,
        dimension=_DIMENSIONS.get(expectation.type, "conformity"),
        severity="error",
        customProperties=[
            custom_property(
                GX_PROPERTY, original, "The descriptor's expectation this rule comes from."
            )
        ],
    )


def volume_rule(descriptor: ProductDescriptor) -> DataQuality | None:
    """The volume SLA (row count against the published snapshot's) as a ``mesh`` rule."""
    volume = descriptor.body.sla.volume
    if volume is None or (volume.min_ratio is None and volume.max_ratio is None):
        return None
    bounds = []
    if volume.min_ratio is not None:
        bounds.append(f"at least {volume.min_ratio:g}x")
    if volume.max_ratio is not None:
        bounds.append(f"at most {volume.max_ratio:g}x")
    effect = "a failure blocks it" if volume.blocking else "a failure is only a warning"
    return DataQuality(
        name="volume",
        description=f"{NOT_STANDARD} Each new snapshot has {' and '.join(bounds)} the rows of "
        f"the published one. Checked before every publication; {effect}.",
        type="custom",
        engine=MESH_ENGINE,
        implementation=jsonable({"check": "volume", **volume.model_dump(exclude_none=True)}),
        dimension="completeness",
        severity="error" if volume.blocking else "warning",
    )
