"""The product descriptor: one typed source of truth for everything the mesh says about a product.

A dbt product keeps its descriptor beside the model, in the domain's dbt YAML::

    models:
      - name: orders
        description: One row per customer order ...
        config:
          meta:
            mesh:
              purpose: Order headers for revenue reporting across the mesh.
              owner: {team: sales, contact: sales-data@example.com}
              version: 1.2.0            # semantic; the major is part of the address
              status: active            # draft | active | deprecated (+ deprecated_on)
              sla:
                freshness: {max_age: 26h}
                expectations:           # Great Expectations, run on the staged data
                  - expect_column_values_to_not_be_null: {column: order_key}
                volume: {min_ratio: 0.5}
              readers: [marketing]
        columns:
          - name: email
            config: {meta: {classification: "pii:email"}}

The contract (column names and types) is dbt's enforced contract; a Python product gives its
columns in its own YAML file (:mod:`mesh_platform.products.python`). Everything else the platform
shows or enforces (asset specs, Iceberg properties, the gate's checks) is derived from the
:class:`ProductDescriptor` built here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import MeshError, format_validation_error

DESCRIPTOR_META_KEY = "mesh"
CLASSIFICATION_META_KEY = "classification"
MASKING_META_KEY = "masking"

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DURATION = re.compile(r"^(\d+)\s*(m|h|d)$")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days"}

PII_KINDS = frozenset(
    {"email", "phone", "name", "address", "national_id", "date_of_birth", "ip_address",
     "credit_card", "iban", "other"}
)  # fmt: skip
CLASS_LEVELS = frozenset({"public", "internal", "confidential"})

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


def parse_duration(text: str) -> dt.timedelta:
    """'90m', '26h', '7d' -> timedelta."""
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ValueError(f"duration {text!r} must look like '90m', '26h' or '7d'")
    return dt.timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


class Owner(BaseModel):
    """The team accountable for the product, and how to reach it."""

    model_config = ConfigDict(extra="forbid")

    team: str = Field(description="Owning team, shown as 'team:<team>'.", examples=["sales"])
    contact: str = Field(description="Contact email.", examples=["sales-data@example.com"])

    @field_validator("team")
    @classmethod
    def _team(cls, team: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]+$", team):
            raise ValueError("must be letters, digits, '.', '_' or '-' (e.g. 'sales')")
        return team

    @field_validator("contact")
    @classmethod
    def _contact(cls, contact: str) -> str:
        if not _EMAIL.match(contact):
            raise ValueError("must be an email address (e.g. 'sales-data@example.com')")
        return contact

    @property
    def dagster_owners(self) -> list[str]:
        return [f"team:{self.team}", self.contact]


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


class Sla(BaseModel):
    model_config = ConfigDict(extra="forbid")

    freshness: Freshness | None = Field(default=None, description="Maximum age.")
    expectations: list[Expectation] = Field(
        default_factory=list, description="Quality expectations, checked before publication."
    )
    volume: Volume | None = Field(
        default=None, description="Row-count change allowed between two snapshots."
    )


class PartitionBy(BaseModel):
    """Partition the Iceberg table by a date column: a run republishes only the partitions
    whose rows changed (an incremental product)."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(description="A date or timestamp column.", examples=["order_date"])
    granularity: Literal["day", "month", "year"] = "month"


class DescriptorBody(BaseModel):
    """The ``meta.mesh`` block of a product (everything but name, description and columns)."""

    model_config = ConfigDict(extra="forbid")

    purpose: str = Field(min_length=10, description="Why the product exists, for whom.")
    owner: Owner
    version: str = Field(description="Semantic version, e.g. '1.2.0'.", examples=["1.0.0"])
    status: Literal["draft", "active", "deprecated"] = "active"
    deprecated_on: dt.date | None = Field(
        default=None, description="Date from which the product (version) is deprecated."
    )
    sunset_on: dt.date | None = Field(
        default=None, description="Date after which a deprecated version stops being published."
    )
    sla: Sla = Field(default_factory=Sla)
    readers: list[str] = Field(
        default_factory=list,
        description="Domains, teams ('team:x') or users allowed to read it; empty: owner only.",
    )
    tags: list[str] = Field(default_factory=list, description="Free-form search tags.")
    partition_by: PartitionBy | None = Field(
        default=None, description="Date partitioning; runs publish only changed partitions."
    )

    @field_validator("version")
    @classmethod
    def _semver(cls, version: str) -> str:
        if not _SEMVER.match(str(version)):
            raise ValueError("must be a semantic version MAJOR.MINOR.PATCH, e.g. '1.0.0'")
        return str(version)

    @model_validator(mode="after")
    def _deprecation(self) -> DescriptorBody:
        if self.status == "deprecated" and self.deprecated_on is None:
            raise ValueError("a deprecated product needs 'deprecated_on: YYYY-MM-DD'")
        if self.status != "deprecated" and self.deprecated_on is not None:
            raise ValueError("'deprecated_on' is only for status 'deprecated'")
        return self

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    data_type: str | None = None
    description: str = ""
    classification: str | None = Field(
        default=None,
        description="'public', 'internal', 'confidential' or 'pii:<kind>' "
        f"(kinds: {', '.join(sorted(PII_KINDS))}).",
    )

    masking: Literal["hash", "redact", "truncate", "tokenise"] | None = Field(
        default=None,
        description="How a personal-data column is masked on publication (pii_masking policy).",
    )

    @field_validator("classification")
    @classmethod
    def _classification(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value in CLASS_LEVELS:
            return value
        if value.startswith("pii:") and value[4:] in PII_KINDS:
            return value
        raise ValueError(
            f"classification {value!r} must be one of {', '.join(sorted(CLASS_LEVELS))} "
            f"or pii:<kind> with kind in {', '.join(sorted(PII_KINDS))}"
        )

    @property
    def pii_kind(self) -> str | None:
        c = self.classification or ""
        return c[4:] if c.startswith("pii:") else None


class ProductDescriptor(BaseModel):
    """A validated product descriptor: identity, promises and contract of one product."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str
    name: str
    description: str
    body: DescriptorBody
    columns: list[Column]
    source_file: str = Field(description="File declaring the product, relative to the mesh root.")
    built_with: Literal["dbt", "python"] = "dbt"
    incremental: bool = False

    @model_validator(mode="after")
    def _partition_column(self) -> ProductDescriptor:
        part = self.body.partition_by
        if part is not None:
            column = self.column(part.column)
            if column is None:
                raise ValueError(f"partition_by.column {part.column!r} is not a column")
            if column.data_type and not re.search(r"date|timestamp", column.data_type, re.I):
                raise ValueError(
                    f"partition_by.column {part.column!r} is {column.data_type}; it must be a "
                    "date or timestamp column"
                )
        return self

    @property
    def address(self) -> ProductAddress:
        return ProductAddress(self.domain, self.name, self.body.major)

    @property
    def pii_columns(self) -> dict[str, str]:
        return {c.name: k for c in self.columns if (k := c.pii_kind)}

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def iceberg_properties(self) -> dict[str, str]:
        """Table properties that make the product self-describing to any Iceberg reader."""
        props = {
            "mesh.address": str(self.address),
            "mesh.urn": self.address.urn,
            "mesh.version": self.body.version,
            "mesh.status": self.body.status,
            "mesh.owner": self.body.owner.team,
            "mesh.contact": self.body.owner.contact,
            "comment": self.description.strip(),
        }
        if self.body.deprecated_on:
            props["mesh.deprecated_on"] = self.body.deprecated_on.isoformat()
        for col in self.columns:
            if col.classification:
                props[f"mesh.classification.{col.name}"] = col.classification
            if col.masking:
                props[f"mesh.masking.{col.name}"] = col.masking
        return props


class DescriptorError(MeshError):
    """A product's descriptor is missing or invalid."""


def _fix_hint(source_file: str) -> str:
    return (
        f"edit the product's `config.meta.mesh` block in {source_file} (see "
        "mesh_platform/products/descriptor.py for every field), then `mesh prepare`"
    )


def descriptor_from_node(domain: str, node: Mapping[str, Any]) -> ProductDescriptor:
    """Build and validate the descriptor of the public dbt model ``node`` (a manifest node)."""
    meta = {**(node.get("meta") or {}), **((node.get("config") or {}).get("meta") or {})}
    source_file = f"dbt_projects/{domain}/{node.get('original_file_path', '')}"
    patch = node.get("patch_path") or ""
    if "://" in patch:  # dbt records the YAML that describes the model as project://path
        source_file = f"dbt_projects/{domain}/{patch.split('://', 1)[1]}"
    raw = meta.get(DESCRIPTOR_META_KEY)
    label = f"product {domain}.{node['name']}"
    if not isinstance(raw, Mapping):
        raise DescriptorError(
            f"{label} has no descriptor (`config.meta.{DESCRIPTOR_META_KEY}`)",
            fix=_fix_hint(source_file)
            + "; at least purpose, owner {team, contact}, version and status",
            path=source_file,
        )
    columns = []
    for name, col in (node.get("columns") or {}).items():
        col_meta = {**(col.get("meta") or {}), **((col.get("config") or {}).get("meta") or {})}
        columns.append(
            {
                "name": name,
                "data_type": col.get("data_type"),
                "description": col.get("description") or "",
                "classification": col_meta.get(CLASSIFICATION_META_KEY),
                "masking": col_meta.get(MASKING_META_KEY),
            }
        )
    config = node.get("config") or {}
    try:
        descriptor = ProductDescriptor(
            domain=domain,
            name=node["name"],
            description=node.get("description") or "",
            body=DescriptorBody.model_validate(raw),
            columns=columns,
            source_file=source_file,
            incremental=config.get("materialized") == "incremental",
        )
        descriptor.address  # noqa: B018 - validates the domain and product names
    except ValidationError as exc:
        raise DescriptorError(
            f"{label}: invalid descriptor: {format_validation_error(exc)}",
            fix=_fix_hint(source_file),
            path=source_file,
        ) from exc
    except MeshError as exc:  # a bad name, from the address
        raise DescriptorError(f"{label}: {exc.what}", fix=exc.fix, path=source_file) from exc
    dbt_version = node.get("version")
    if dbt_version is not None and str(dbt_version) != str(descriptor.body.major):
        raise DescriptorError(
            f"{label}: dbt model version v{dbt_version} but descriptor version "
            f"{descriptor.body.version} (major {descriptor.body.major})",
            fix=f"make the descriptor's major version {dbt_version} (e.g. '{dbt_version}.0.0'); "
            "each dbt model version is one major version of the product",
            path=source_file,
        )
    if not descriptor.description.strip():
        raise DescriptorError(
            f"{label} has no description",
            fix=f"add a `description:` to the model in {source_file}",
            path=source_file,
        )
    return descriptor
