"""A domain's descriptor (``domains/<domain>/domain.yaml``): who owns it and what it lands.

Products are declared in the domain's dbt project; this file holds what is true of the domain as
a whole. Every field has a type, a description and an example, so validation errors read well.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mesh_platform.addressing import (
    email_problem,
    name_problem,
    suggest_name,
    suggest_team,
    team_problem,
)
from mesh_platform.config import Mesh
from mesh_platform.errors import DomainError
from mesh_platform.formats import load_yaml_model
from mesh_platform.sources.tpch import AVAILABLE_TABLES, table_problems

DOMAIN_FILE = "domain.yaml"


class RawSources(BaseModel):
    """Source data the domain lands in its own raw area before dbt runs."""

    model_config = ConfigDict(extra="forbid")

    generator: Literal["tpch"] = Field(
        default="tpch",
        description="Generator of the sample sources: TPC-H dbgen plus synthetic contacts.",
        examples=["tpch"],
    )
    tables: list[str] = Field(
        min_length=1,
        description=f"Tables to land, among: {', '.join(AVAILABLE_TABLES)}.",
        examples=[["orders", "lineitem", "customer", "customer_contact"]],
    )

    @field_validator("tables")
    @classmethod
    def _landable(cls, tables: list[str]) -> list[str]:
        if problems := table_problems(tables):
            raise ValueError("; ".join(problems))
        return tables


class Schedule(BaseModel):
    """When the domain's pipeline runs on its own (source-aligned domains)."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(description="Cron expression, e.g. '0 5 * * *'.", examples=["0 5 * * *"])
    timezone: str = Field(default="UTC", description="IANA time zone of the cron expression.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        if len(cron.split()) != 5:
            raise ValueError(f"cron {cron!r} must have 5 fields (minute hour day month weekday)")
        return cron

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, zone: str) -> str:

        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r} (use an IANA name, e.g. UTC)") from None
        return zone


class DomainSpec(BaseModel):
    """The validated content of ``domains/<domain>/domain.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Domain name: snake_case, equal to its folder under domains/.",
        examples=["sales"],
    )
    description: str = Field(
        min_length=10,
        description="What the domain owns and why, for people browsing the mesh.",
        examples=["Source-aligned domain for customer orders."],
    )
    kind: Literal["source-aligned", "consumer-aligned", "aggregate"] = Field(
        description="Source-aligned domains own operational data; consumer-aligned domains "
        "build on other domains' products.",
        examples=["source-aligned"],
    )
    owners: list[str] = Field(
        min_length=1,
        description="Owning teams ('team:<name>', lower case) and contact emails (plain "
        "addresses), as Dagster shows them.",
        examples=[["team:sales", "sales-data@example.com"]],
    )
    schedule: Schedule | None = Field(
        default=None,
        description="Run the domain's pipeline on a schedule (source-aligned domains); "
        "consumers run when their inputs publish.",
    )
    raw: RawSources | None = Field(
        default=None, description="Sample source data to land (source-aligned domains)."
    )

    @field_validator("name")
    @classmethod
    def _snake_case(cls, name: str) -> str:
        if problem := name_problem(name):
            raise ValueError(f"domain name {name!r} {problem}")
        return name

    @field_validator("owners")
    @classmethod
    def _owner_format(cls, owners: list[str]) -> list[str]:
        problems = [p for o in owners if (p := owner_problem(o))]
        if problems:
            raise ValueError("; ".join(problems))
        return owners


def owner_problem(owner: str) -> str | None:
    """Why ``owner`` is neither 'team:<name>' nor a plain email address, or None."""
    if owner.startswith("team:"):
        team = owner.removeprefix("team:")
        if problem := team_problem(team):
            return f"owner {owner!r}: the team name {problem}; write 'team:{suggest_team(team)}'"
        return None
    if "@" in owner and (problem := email_problem(owner)):
        return f"owner {owner!r}: the contact {problem}"
    if "@" not in owner:
        return f"owner {owner!r} must be an email or 'team:<name>'"
    return None


@dataclass(frozen=True)
class Domain:
    """A domain as the platform sees it: its descriptor and where its parts live."""

    spec: DomainSpec
    code_dir: Path
    dbt_project_dir: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def descriptor_file(self) -> Path:
        return self.code_dir / DOMAIN_FILE


def load_domain(mesh: Mesh, name: str) -> Domain:
    """Load and validate one domain. Raises :class:`DomainError` naming the file and the fix."""
    if problem := name_problem(name):  # before the name becomes a path
        raise DomainError(
            repr(name).strip("'"),
            f"domain name {name!r} {problem}",
            fix=f"rename the folder domains/<name> to a snake_case name such as "
            f"{suggest_name(name)!r} (and its `name:` in {DOMAIN_FILE})",
            path=mesh.domains_dir,
        )
    code_dir = mesh.domains_dir / name
    descriptor = code_dir / DOMAIN_FILE
    if not code_dir.is_dir():
        known = ", ".join(list_domain_names(mesh)) or "none"
        raise DomainError(
            name,
            f"no folder domains/{name} (known domains: {known})",
            fix=f"create domains/{name}/ with domain.yaml and definitions.py (copy "
            "domains/sales as a template), or fix the name in workspace.yaml",
            path=code_dir,
        )
    if not descriptor.is_file():
        raise DomainError(
            name,
            f"missing {DOMAIN_FILE}",
            fix=f"add domains/{name}/{DOMAIN_FILE} with name, description, kind and owners",
            path=descriptor,
        )
    spec = parse_domain_spec(name, None, path=descriptor)
    dbt_dir = mesh.dbt_projects_dir / name
    if not (dbt_dir / "dbt_project.yml").is_file():
        raise DomainError(
            name,
            f"no dbt project at dbt_projects/{name} (dbt_project.yml is missing)",
            fix=f"create dbt_projects/{name}/ with dbt_project.yml and profiles.yml "
            "(copy dbt_projects/sales as a template)",
            path=dbt_dir / "dbt_project.yml",
        )
    return Domain(spec=spec, code_dir=code_dir, dbt_project_dir=dbt_dir)


def parse_domain_spec(name: str, text: str | None, *, path: Path) -> DomainSpec:
    """Validate ``domains/<name>/domain.yaml``: ``text``, or the file at ``path`` when ``text`` is
    None (the scaffolder checks the text it is about to write with this too). Raises
    :class:`DomainError` naming the field and the fix."""
    spec = load_yaml_model(
        path, DomainSpec, what=DOMAIN_FILE, error=partial(DomainError, name), text=text, empty={},
        syntax="{what} is not valid YAML: {exc}", syntax_fix="fix the YAML",
        invalid="invalid {what}: {problems}",
        fix="correct the fields listed (documented in mesh_platform/domain.py, DomainSpec)",
    )  # fmt: skip
    if spec.name != name:
        raise DomainError(
            name,
            f"{DOMAIN_FILE} says name: {spec.name!r} but the folder is domains/{name}",
            fix="make the folder name and the 'name' field agree",
            path=path,
        )
    return spec


def list_domain_names(mesh: Mesh) -> list[str]:
    """Folders under domains/ that hold a domain descriptor, sorted."""
    if not mesh.domains_dir.is_dir():
        return []
    return sorted(p.parent.name for p in mesh.domains_dir.glob(f"*/{DOMAIN_FILE}"))
