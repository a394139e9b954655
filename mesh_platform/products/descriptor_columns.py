"""A product's columns as its descriptor states them: the contract (name, type, description) and,
from each column's dbt ``meta``, its classification and how it is masked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Keys of a column's dbt meta (``columns: [{name: ..., config: {meta: {masking: hash}}}]``).
CLASSIFICATION_META_KEY = "classification"
MASKING_META_KEY = "masking"
MASKING_AT_META_KEY = "masking_at"
COLUMN_META_KEYS = frozenset({CLASSIFICATION_META_KEY, MASKING_META_KEY, MASKING_AT_META_KEY})

PII_KINDS = frozenset(
    {"email", "phone", "name", "address", "national_id", "date_of_birth", "ip_address",
     "credit_card", "iban", "other"}
)  # fmt: skip
CLASS_LEVELS = frozenset({"public", "internal", "confidential"})


class ColumnConstraint(BaseModel):
    """A constraint of the contract on one column, as dbt writes it (``constraints: [{type:
    not_null}]``); dbt's other keys (name, expression...) are dbt's own and not kept here."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["not_null", "primary_key", "unique", "check", "foreign_key", "custom"] = Field(
        description="The constraint: not_null and primary_key make the Iceberg column required "
        "(primary_key: an identifier field).",
        examples=["not_null"],
    )


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
        description="How a personal-data column is masked (pii_masking policy).",
    )
    constraints: list[ColumnConstraint] = Field(
        default_factory=list,
        description="The contract's constraints: [{type: not_null}, {type: primary_key}].",
    )
    masking_at: Literal["publication", "read"] = Field(
        default="publication",
        description="'publication': stored masked, every reader sees the mask. 'read': stored "
        "in clear, masked by the mesh's read paths for readers not cleared for its class.",
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

    @property
    def not_null(self) -> bool:
        """Declared not null (a primary key's column is): required in the Iceberg schema."""
        return any(c.type in ("not_null", "primary_key") for c in self.constraints)

    @property
    def primary_key(self) -> bool:
        return any(c.type == "primary_key" for c in self.constraints)

    @property
    def masked_on_publication(self) -> bool:
        return self.masking is not None and self.masking_at == "publication"

    @property
    def masked_on_read(self) -> bool:
        return self.masking is not None and self.masking_at == "read"
