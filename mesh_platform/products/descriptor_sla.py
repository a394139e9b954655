"""The service levels a product descriptor promises (``meta.mesh.sla``): freshness, attainment
targets, Great Expectations expectations and the allowed row-count change between snapshots.

Enforced by the gate before publication (:mod:`mesh_platform.products.gate`) and measured over time
by :mod:`mesh_platform.sla`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mesh_platform.formats import parse_duration

# Great Expectations (1.x) expectations a descriptor may declare, by their snake_case type.
# tests/test_products.py checks each against the installed Great Expectations.
SUPPORTED_EXPECTATIONS = frozenset(
    {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_null",
        "expect_column_values_to_be_unique",
        "expect_compound_columns_to_be_unique",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_in_set",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_not_match_regex",
        "expect_column_value_lengths_to_be_between",
        "expect_column_min_to_be_between",
        "expect_column_max_to_be_between",
        "expect_column_mean_to_be_between",
        "expect_column_sum_to_be_between",
        "expect_column_distinct_values_to_be_in_set",
        "expect_column_proportion_of_unique_values_to_be_between",
        "expect_table_row_count_to_be_between",
        "expect_table_columns_to_match_set",
    }
)


class Freshness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_age: str = Field(
        description="Oldest a published snapshot may be: '90m', '26h', '7d'.", examples=["26h"]
    )

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def timedelta(self) -> dt.timedelta:
        return parse_duration(self.max_age)


class Volume(BaseModel):
    """Row count of the new snapshot against the published one."""

    model_config = ConfigDict(extra="forbid")

    min_ratio: float | None = Field(
        default=0.5, ge=0, description="Block if new rows < min_ratio x published rows."
    )
    max_ratio: float | None = Field(
        default=None, gt=0, description="Block if new rows > max_ratio x published rows."
    )
    blocking: bool = Field(default=True, description="False: report only (a warning).")


class Expectation(BaseModel):
    """One Great Expectations expectation: its snake_case type and its arguments."""

    model_config = ConfigDict(extra="forbid")

    type: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        # `- expect_column_values_to_not_be_null: {column: id}` is the form used in YAML.
        if isinstance(value, Mapping) and len(value) == 1 and "type" not in value:
            ((name, kwargs),) = value.items()
            return {"type": name, "kwargs": kwargs or {}}
        return value

    @field_validator("type")
    @classmethod
    def _supported(cls, name: str) -> str:
        if name not in SUPPORTED_EXPECTATIONS:
            raise ValueError(
                f"unknown expectation {name!r}; supported: "
                + ", ".join(sorted(SUPPORTED_EXPECTATIONS))
            )
        return name

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")

    @property
    def columns(self) -> list[str]:
        """Every column the expectation reads (to load only those)."""
        cols = [self.kwargs["column"]] if "column" in self.kwargs else []
        cols += list(self.kwargs.get("column_list") or [])
        return cols

    def label(self) -> str:
        target = self.column or ",".join(self.kwargs.get("column_list") or []) or "table"
        return f"{self.type}({target})"


class Targets(BaseModel):
    """Attainment the owners promise over time; what falls short spends the error budget."""

    model_config = ConfigDict(extra="forbid")

    freshness: float = Field(
        default=0.99, gt=0, le=1, description="Share of time a fresh snapshot is available."
    )
    quality: float = Field(
        default=0.95, gt=0, le=1, description="Share of gate runs that pass every blocking check."
    )


class Sla(BaseModel):
    model_config = ConfigDict(extra="forbid")

    freshness: Freshness | None = Field(default=None, description="Maximum age.")
    targets: Targets = Field(default_factory=Targets, description="Attainment targets.")
    expectations: list[Expectation] = Field(
        default_factory=list, description="Quality expectations, checked before publication."
    )
    volume: Volume | None = Field(
        default=None, description="Row-count change allowed between two snapshots."
    )
