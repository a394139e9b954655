"""Who may read a product (``meta.mesh.grants``): one :class:`Grant` per principal, for a purpose,
until a date, over some columns and rows. Access decisions are made from them by
:mod:`mesh_platform.access.grants`.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mesh_platform.addressing import principal_problem


def normalise_principal(value: str) -> str:
    """'domain:sales' -> 'sales'; a principal is a domain, 'team:<t>' or 'user:<u>'."""
    value = str(value)
    if value.startswith("domain:"):
        value = value[len("domain:") :]
    if problem := principal_problem(value):
        raise ValueError(f"principal {value!r} {problem}")
    return value


class Grant(BaseModel):
    """Read access to a product for one principal: what for, until when, which columns and rows.

    ``rows`` is a SQL predicate over the product's columns (DuckDB dialect), checked when the
    descriptor loads; readers see only the rows it keeps.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str = Field(description="A domain, 'team:<t>' or 'user:<u>' declared in principals.yaml.")
    purpose: str = Field(min_length=5, description="Why the principal reads the product.")
    expires: dt.date = Field(description="Last day the grant is valid (YYYY-MM-DD).")
    columns: list[str] | None = Field(
        default=None, description="Columns the grant covers; all when omitted."
    )
    rows: str | None = Field(
        default=None, description="SQL predicate on the product's columns; all rows if omitted."
    )

    @field_validator("to")
    @classmethod
    def _principal(cls, value: str) -> str:
        return normalise_principal(value)

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty column list grants nothing: omit 'columns' for all")
        return value

    def expired(self, today: dt.date) -> bool:
        return today > self.expires
