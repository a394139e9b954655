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
              grants:                   # deny by default: nobody else reads it
                - to: marketing         # a domain, team:<t> or user:<u> (principals.yaml)
                  purpose: Revenue by customer segment.
                  expires: 2027-12-31
                  columns: [order_key, customer_key, order_date]   # optional
                  rows: "order_date >= DATE '2020-01-01'"          # optional
        columns:
          - name: email
            config: {meta: {classification: "pii:email", masking: hash}}

The contract (column names and types) is dbt's enforced contract; a Python product gives its
columns in its own YAML file (:mod:`mesh_platform.products.python`). Everything else the platform
shows or enforces (asset specs, Iceberg properties, the gate's checks) is derived from the
:class:`ProductDescriptor` built here.

The parts of a descriptor live beside it: the columns, their classification and masking in
:mod:`~mesh_platform.products.descriptor_columns`, the grants in
:mod:`~mesh_platform.products.descriptor_grants`, the service levels (freshness, expectations,
volume, targets) in :mod:`~mesh_platform.products.descriptor_sla`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mesh_platform.addressing import ProductAddress, email_problem, suggest_team, team_problem
from mesh_platform.errors import MeshError
from mesh_platform.formats import read_yaml
from mesh_platform.products.descriptor_columns import (
    Column,
)
from mesh_platform.products.descriptor_grants import Grant
from mesh_platform.products.descriptor_lines import (
    DescriptorError,
    DescriptorSource,
    FieldError,
    Problem,
    dbt_source,
    invalid_descriptor,
    located_problems,
    missing_descriptor,
    node_columns,
    node_meta,
    refuse_unknown,
    validated,
)
from mesh_platform.products.descriptor_sla import Sla
from mesh_platform.query.sql import check_row_filter
from mesh_platform.storage.tablespec import TableSpec

DESCRIPTOR_META_KEY = "mesh"

# Full-match pattern (\A...\Z, fullmatch): `$` would accept a trailing newline. Names, teams,
# contacts and principals follow the rules of mesh_platform/addressing.py.
_SEMVER = re.compile(r"\A(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\Z", re.ASCII)


class Owner(BaseModel):
    """The team accountable for the product, and how to reach it."""

    model_config = ConfigDict(extra="forbid")

    team: str = Field(
        description="Owning team, shown as 'team:<team>': lower case, a-z, 0-9, '_', '.', '-'.",
        examples=["sales"],
    )
    contact: str = Field(
        description="Contact: one plain email address.", examples=["sales-data@example.com"]
    )

    @field_validator("team")
    @classmethod
    def _team(cls, team: str) -> str:
        if problem := team_problem(team):
            raise ValueError(f"owner team {team!r} {problem}; write it as {suggest_team(team)!r}")
        return team

    @field_validator("contact")
    @classmethod
    def _contact(cls, contact: str) -> str:
        if problem := email_problem(contact):
            raise ValueError(f"contact {contact!r} {problem}")
        return contact

    @property
    def dagster_owners(self) -> list[str]:
        return [f"team:{self.team}", self.contact]


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
    grants: list[Grant] = Field(
        default_factory=list,
        description="Who may read it (deny by default; the owning domain always may).",
    )
    tags: list[str] = Field(default_factory=list, description="Free-form search tags.")
    partition_by: PartitionBy | None = Field(
        default=None, description="Date partitioning; runs publish only changed partitions."
    )
    sort_by: list[str] = Field(
        default_factory=list,
        description="Columns the table's files are sorted by (its Iceberg sort order): the "
        "columns readers filter on most, so engines skip row groups.",
        examples=[["order_date", "customer_key"]],
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "readers" in value:
            raise FieldError(
                ("mesh", "readers"), "'readers' was replaced by 'grants'",
                fix="write `grants: [{to: marketing, purpose: ..., expires: YYYY-MM-DD}]` "
                "(optional: columns, rows)",
            )  # fmt: skip
        return value

    @field_validator("version")
    @classmethod
    def _semver(cls, version: str) -> str:
        if not _SEMVER.fullmatch(str(version)):
            raise ValueError("must be a semantic version MAJOR.MINOR.PATCH, e.g. '1.0.0'")
        return str(version)

    @model_validator(mode="after")
    def _deprecation(self) -> DescriptorBody:
        if self.status == "deprecated" and self.deprecated_on is None:
            raise FieldError(
                ("mesh", "status"), "a deprecated product needs a `deprecated_on` date",
                fix="add `deprecated_on: YYYY-MM-DD` beside `status: deprecated`",
            )  # fmt: skip
        if self.status != "deprecated" and self.deprecated_on is not None:
            raise FieldError(
                ("mesh", "deprecated_on"), f"is only for status 'deprecated' (status is "
                f"{self.status!r})", fix="remove `deprecated_on`, or set `status: deprecated`",
            )  # fmt: skip
        return self

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


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
    successor: str | None = Field(
        default=None,
        description="The newest major of the same product, when newer than this one (set by "
        "the registry; a read past this version's sunset names it).",
    )

    @model_validator(mode="after")
    def _column_references(self) -> ProductDescriptor:
        part = self.body.partition_by
        names = [c.name for c in self.columns]
        if part is not None:
            field = ("mesh", "partition_by", "column")
            refuse_unknown(field, [part.column], names, "name one of the product's columns")
            column = self.column(part.column)
            if (
                column
                and column.data_type
                and not re.search(r"date|timestamp", column.data_type, re.I)
            ):
                raise FieldError(
                    field, f"{part.column!r} is {column.data_type}; it must be a date or "
                    "timestamp column", fix="partition by a date or timestamp column",
                )  # fmt: skip
        for i, name in enumerate(self.body.sort_by):
            refuse_unknown(("mesh", "sort_by", i), [name], names, "sort by columns of the product")
        for column in self.columns:
            if column.primary_key and re.search(r"float|double|real", column.data_type or "", re.I):
                raise FieldError(
                    ("columns", column.name, "constraints"), f"primary key {column.name!r} is "
                    f"{column.data_type}; Iceberg identifier fields cannot be float or double",
                    fix="make the key an integer, string, date or decimal column",
                )  # fmt: skip
        for i, grant in enumerate(self.body.grants):
            field = ("mesh", "grants", i, "columns")
            refuse_unknown(field, grant.columns or [], names, "grant columns of the product")
            if grant.rows is not None:
                try:
                    check_row_filter(grant.rows, names, what="the row filter")
                except ValueError as exc:
                    raise FieldError(
                        ("mesh", "grants", i, "rows"), str(exc),
                        fix="write one boolean SQL expression over the product's columns, e.g. "
                        "\"region = 'EUROPE'\"",
                    ) from None  # fmt: skip
        return self

    @property
    def address(self) -> ProductAddress:
        return ProductAddress(self.domain, self.name, self.body.major)

    @property
    def pii_columns(self) -> dict[str, str]:
        return {c.name: k for c in self.columns if (k := c.pii_kind)}

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def table_spec(self) -> TableSpec:
        """What the contract says of the product's Iceberg table, as plain data for storage:
        column docs, not-null columns (required), the primary key (identifier fields), the
        sort order."""
        return TableSpec(
            docs={c.name: c.description for c in self.columns if c.description.strip()},
            required=tuple(c.name for c in self.columns if c.not_null),
            identifier=tuple(c.name for c in self.columns if c.primary_key),
            sort_by=tuple(self.body.sort_by),
        )

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
                props[f"mesh.masking.{col.name}"] = f"{col.masking}@{col.masking_at}"
        return props

    def classification_record(self) -> dict[str, dict[str, str | None]]:
        """The columns' classification and masking, as published with each snapshot (summary
        property :data:`~mesh_platform.storage.metadata.CLASSIFICATION_PROPERTY`, JSON): reads
        at a snapshot are masked by the strictest of its record and the current descriptor, so
        time travel never unmasks."""
        return {
            col.name: {"classification": col.classification, "masking": col.masking,
                       "at": col.masking_at if col.masking else None}
            for col in self.columns
            if col.classification
        }  # fmt: skip


def _fix_hint(source_file: str) -> str:
    return (
        f"edit the product's `config.meta.mesh` block in {source_file} (see "
        "mesh_platform/products/descriptor.py for every field), then `mesh prepare`"
    )


def descriptor_from_node(
    domain: str,
    node: Mapping[str, Any],
    *,
    project_dir: Path | None = None,
    yaml_text: str | None = None,
) -> ProductDescriptor:
    """Build and validate the descriptor of the public dbt model ``node`` (a manifest node).

    ``project_dir``: the domain's dbt project, where the YAML describing the model is read to
    name the line of each problem (``yaml_text``: that YAML's text, when it is not on disk yet).
    Every problem is reported at once."""
    source_file = f"dbt_projects/{domain}/{node.get('original_file_path', '')}"
    yaml_file = None
    patch = node.get("patch_path") or ""
    if "://" in patch:  # dbt records the YAML that describes the model as project://path
        relative = patch.split("://", 1)[1]
        source_file = f"dbt_projects/{domain}/{relative}"
        yaml_file = project_dir / relative if project_dir is not None else None
    source = dbt_source(node, source_file, yaml_file, yaml_text)
    meta = node_meta(node)
    raw = meta.get(DESCRIPTOR_META_KEY)
    label = f"product {domain}.{node['name']}"
    if not isinstance(raw, Mapping):
        raise missing_descriptor(label, meta, source, _fix_hint(source_file))
    columns, problems = node_columns(node, source)
    shown = {"mesh": raw, "columns": columns, "description": node.get("description")}
    body = validated(DescriptorBody, raw, problems, source, shown, at=("mesh",))
    valid = [validated(Column, c, problems, source, shown, at=("columns", c["name"]))
             for c in columns]  # fmt: skip
    config = node.get("config") or {}
    descriptor = None
    if not problems:
        try:
            descriptor = ProductDescriptor(
                domain=domain, name=node["name"], description=node.get("description") or "",
                body=body, columns=valid, source_file=source_file,
                incremental=config.get("materialized") == "incremental",
            )  # fmt: skip
            descriptor.address  # noqa: B018 - validates the domain and product names
        except ValidationError as exc:
            problems += located_problems(exc, ProductDescriptor, source, shown)
        except MeshError as exc:  # a bad name, from the address
            raise DescriptorError(f"{label}: {exc.what}", fix=exc.fix, path=source_file) from exc
    if problems or descriptor is None:
        raise invalid_descriptor(label, source, problems)
    _check_release(label, node, descriptor, source)
    return descriptor


def _check_release(
    label: str, node: Mapping[str, Any], descriptor: ProductDescriptor, source: DescriptorSource
) -> None:
    """What the manifest says beside the descriptor: the dbt model version is its major, and
    the model has a description."""
    dbt_version, file = node.get("version"), source.file
    if dbt_version is not None and str(dbt_version) != str(descriptor.body.major):
        line = source.line(("mesh", "version"))
        raise DescriptorError(
            f"{label}: dbt model version v{dbt_version} but descriptor version "
            f"{descriptor.body.version} (major {descriptor.body.major}) in {file}"
            + (f" line {line}" if line else ""),
            fix=f"make the descriptor's major version {dbt_version} (e.g. '{dbt_version}.0.0'); "
            "each dbt model version is one major version of the product",
            path=file, line=line,
        )  # fmt: skip
    if not descriptor.description.strip():
        line = source.line(("description",))
        raise DescriptorError(
            f"{label} has no description",
            fix=f"add a `description:` to the model in {file}" + (f", line {line}" if line else ""),
            path=file, line=line,
        )  # fmt: skip


class PythonDescriptorFile(BaseModel):
    """The YAML descriptor of a Python product."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The product's name, as its address says it (snake_case).")
    description: str = Field(min_length=10, description="What one row is, for whom.")
    mesh: DescriptorBody
    columns: list[Column] = Field(min_length=1, description="The product's columns, typed.")


def load_python_descriptor(path: Path, domain: str, source_file: str) -> ProductDescriptor:
    """Read and validate the YAML descriptor of a Python product (``source_file``: ``path``
    relative to the mesh root, as errors name it). Every problem is reported at once, each
    with its line."""
    label = f"Python product descriptor {source_file}"
    fix = f"edit {source_file} (fields: see mesh_platform/products/descriptor.py)"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        text = None  # read_yaml says why
    raw = read_yaml(
        path, what=label, error=DescriptorError, shown=source_file, text=text,
        missing_fix="create it beside the product's module (name, description, mesh, columns)",
    )  # fmt: skip
    source = DescriptorSource(source_file, text=text or "", kind="python")
    if not isinstance(raw, Mapping):
        message = f"{label} is not a mapping of name, description, mesh and columns"
        raise DescriptorError(message, fix=fix, path=source_file)
    cols = raw.get("columns")
    cols = cols if isinstance(cols, list) else []
    names = [str(c.get("name")) for c in cols if isinstance(c, Mapping)]
    problems: list[Problem] = []
    parsed = validated(PythonDescriptorFile, raw, problems, source, raw, columns=names)
    if parsed is not None:
        problems += [
            Problem(f"columns[{c.name}].data_type", source.line(("columns", c.name, "data_type")),
                    "is missing", "give the column a DuckDB type (bigint, varchar, decimal(18,2), "
                    "date...): the columns are the product's enforced contract")
            for c in parsed.columns if not c.data_type
        ]  # fmt: skip
    if problems or parsed is None:
        raise invalid_descriptor(label, source, problems)
    try:
        descriptor = ProductDescriptor(
            domain=domain, name=parsed.name, description=parsed.description, body=parsed.mesh,
            columns=parsed.columns, source_file=source_file, built_with="python",
        )  # fmt: skip
        descriptor.address  # noqa: B018 - validates the domain and product names
    except ValidationError as exc:
        raise invalid_descriptor(
            label, source, located_problems(exc, ProductDescriptor, source, raw)
        ) from exc
    except MeshError as exc:  # a bad name
        line = source.line(("name",))
        raise DescriptorError(
            f"{label}" + (f" line {line}" if line else "") + f": {exc.what}",
            fix=exc.fix, path=source_file,
        ) from exc  # fmt: skip
    return descriptor
