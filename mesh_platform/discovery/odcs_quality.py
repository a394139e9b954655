"""Great Expectations expectations (and the volume check) as ODCS quality rules.

Each expectation of a descriptor becomes one :class:`DataQuality` rule: a library metric
(``nullValues``, ``duplicateValues``, ``invalidValues``, ``rowCount``) where one says the same
thing, else a ``custom`` rule run by the ``great-expectations`` engine. Every such rule carries
the original expectation in its custom property ``greatExpectations``. The volume check is a
``custom`` rule of the ``mesh`` engine.
"""

from __future__ import annotations

import json
from typing import Any

from open_data_contract_standard.model import DataQuality

from mesh_platform.discovery.standard_fields import custom_property, jsonable
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.descriptor_sla import Expectation

GX_ENGINE = "great-expectations"
GX_PROPERTY = "greatExpectations"  # the custom property holding a rule's original expectation
MESH_ENGINE = "mesh"


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
    else:
        check = {"type": "custom", "engine": GX_ENGINE, "implementation": original}
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
        description=f"Each new snapshot has {' and '.join(bounds)} the rows of the published "
        f"one. Checked before every publication; {effect}.",
        type="custom",
        engine=MESH_ENGINE,
        implementation=jsonable({"check": "volume", **volume.model_dump(exclude_none=True)}),
        dimension="completeness",
        severity="error" if volume.blocking else "warning",
    )
