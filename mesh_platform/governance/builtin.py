"""The policies shipped with the platform (static ones; data policies are in data.py)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

from mesh_platform.access.principals import load_principals
from mesh_platform.addressing import name_problem
from mesh_platform.governance.policy import Policy, PolicyContext, Violation, register_policy


@register_policy
class Naming(Policy):
    id = "naming"
    description = "Domain, product and column names are snake_case, short, not reserved."
    remedy = "rename it to snake_case (a-z, 0-9, _), at most 63 characters, not reserved"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        for d in ctx.descriptors:
            for column in d.columns:
                if problem := name_problem(column.name):
                    yield self.violation(d, f"column name {column.name!r} {problem}",
                                         column=column.name)  # fmt: skip


@register_policy
class RequiredMetadata(Policy):
    id = "required_metadata"
    description = (
        "Every public product has an owner, a description, a version, a freshness SLA, and a "
        "description and classification for every column."
    )
    remedy = "complete the product's descriptor (config.meta.mesh) and column meta"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        for d in ctx.descriptors:
            if len(d.description.strip()) < 20:
                yield self.violation(d, "description is missing or shorter than 20 characters")
            if d.body.sla.freshness is None:
                yield self.violation(
                    d, "no freshness SLA", fix="add sla: {freshness: {max_age: 26h}}"
                )
            for column in d.columns:
                if column.classification is None:
                    yield self.violation(
                        d,
                        "column has no classification",
                        column=column.name,
                        fix="add `config: {meta: {classification: ...}}` to the column: public, "
                        "internal, confidential or pii:<kind>",
                    )
                if not column.description.strip():
                    yield self.violation(d, "column has no description", column=column.name)


@register_policy
class PiiMasking(Policy):
    id = "pii_masking"
    description = (
        "A column classified as personal data is never published in clear: it carries a "
        "masking rule (hash, redact, truncate, tokenise) applied on publication."
    )
    remedy = "add `masking: hash` (or redact, truncate, tokenise) to the column's meta"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        for d in ctx.descriptors:
            for column in d.columns:
                if column.pii_kind and column.masking is None:
                    yield self.violation(
                        d,
                        f"personal data ({column.classification}) would be published in clear",
                        column=column.name,
                    )


# A column's name says personal data when its `_`-separated tokens contain one of these runs of
# tokens (whole tokens: `phonetic_code` and `addressable_market` say nothing). First match wins,
# so `email_address` is an email and `ip_address` an IP address, not a postal address. `name`
# alone is not personal (`customer_name` is an account name, `part_name` a product's): only a
# person's name is (`first_name`, `full_name`, `contact_name`, `surname`...).
_PII_NAMES = {  # kind -> runs of tokens, comma-separated
    "email": "email, e mail",
    "phone": "phone, telephone, cellphone, mobile number, msisdn, fax number",
    "national_id": "ssn, passport, social security, national id, tax id, driver license, "
    "driving licence",
    "iban": "iban",
    "credit_card": "card number, credit card, cc number",
    "date_of_birth": "birth, dob, birthday, birthdate",
    "ip_address": "ip, ipv4, ipv6",
    "name": "first name, last name, full name, person name, contact name, given name, "
    "family name, middle name, maiden name, firstname, lastname, fullname, surname",
    "address": "address, street",
}
PII_NAME_TOKENS: dict[tuple[str, ...], str] = {
    tuple(run.split()): kind for kind, runs in _PII_NAMES.items() for run in runs.split(", ")
}
# Tokens of a column *about* personal data rather than holding it: `email_count`, `has_phone`,
# `is_email_verified`, `address_type`, `email_domain`, and surrogate keys (`address_key`, as
# the scaffold names a product's key). Anything else is what a waiver is for.
ABOUT_TOKENS = frozenset(
    {"count", "has", "is", "type", "status", "domain", "consent", "flag", "key"}
)
_IDENTIFIER = re.compile(r'"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*)')


def name_tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def pii_name_kind(name: str) -> str | None:
    """The personal-data kind a column (or field) name says, None if it says none."""
    tokens = name_tokens(name)
    if ABOUT_TOKENS.intersection(tokens):
        return None
    for run, kind in PII_NAME_TOKENS.items():
        if any(tuple(tokens[i : i + len(run)]) == run for i in range(len(tokens))):
            return kind
    return None


def nested_field_names(data_type: str | None) -> list[str]:
    """Identifiers in a declared nested type (`struct(email varchar)[]`): its field names (and
    type keywords, which never name personal data)."""
    return [quoted or bare for quoted, bare in _IDENTIFIER.findall(data_type or "")]


@register_policy
class PiiColumnNames(Policy):
    id = "pii_column_names"
    description = (
        "A column whose name (or a nested field's) says personal data (email, phone, ssn, "
        "passport, iban, card number, birth date, address, a person's name, IP address) is "
        "classified as personal data (pii:<kind>). The gate's pii_detection scans the values."
    )
    remedy = "classify the column pii:<kind> with a masking rule, or rename it"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        for d in ctx.descriptors:
            for column in d.columns:
                if column.classification is None or column.pii_kind:
                    continue  # unclassified: required_metadata reports it
                kind, field_ = pii_name_kind(column.name), None
                if kind is None:
                    field_, kind = next(
                        ((f, k) for f in nested_field_names(column.data_type)
                         if (k := pii_name_kind(f))),
                        (None, None),
                    )  # fmt: skip
                if kind is None:
                    continue
                said = f"its field {field_!r}" if field_ else "its name"
                yield self.violation(
                    d,
                    f"{said} says personal data ({kind}) but the column is classified "
                    f"{column.classification!r}",
                    column=column.name,
                    fix=f"classify it `classification: 'pii:{kind}'` with a masking rule (hash, "
                    "redact, truncate, tokenise), or rename it; if it holds no personal data, "
                    f"the council can waive it in governance.yaml: `waivers: [{{product: "
                    f"{d.address}, policy: {self.id}, reason: '...', expires: YYYY-MM-DD}}]`",
                )


@register_policy
class Access(Policy):
    id = "access"
    description = (
        "Every public product grants read access explicitly (deny by default): each grant names "
        "a declared principal, a purpose and an expiry; nobody else may read it."
    )
    remedy = (
        "add grants to the descriptor: `grants: [{to: marketing, purpose: ..., expires: "
        "YYYY-MM-DD}]`; declare teams and users in principals.yaml"
    )

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        principals = _principals(ctx)
        for d in ctx.descriptors:
            if not d.body.grants:
                yield self.violation(d, "grants nobody: nobody outside its domain could use it")
            for grant in d.body.grants:
                if principals is not None and not principals.known(grant.to):
                    yield self.violation(
                        d,
                        f"grants {grant.to!r}, which is not a domain nor declared in "
                        "principals.yaml",
                        fix=f"declare {grant.to!r} in principals.yaml (or correct the name)",
                    )
                elif grant.to == d.domain:
                    yield self.violation(
                        d, f"grants its own domain {grant.to!r} (owners always read)"
                    )


def _principals(ctx: PolicyContext) -> Any:
    if ctx.mesh_root is None:
        return None

    return load_principals(ctx.mesh_root, set(ctx.domains))


@register_policy
class Contracts(Policy):
    id = "contracts"
    description = (
        "Public products have an enforced contract with a type per column; a deprecated version "
        "keeps serving for a minimum window (params: min_deprecation_days, default 90). Breaking "
        "changes need a major version: the gate's schema check enforces it at publication."
    )
    remedy = "enforce the contract and type every column; give deprecations a sunset_on date"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        window = int(ctx.params.get("min_deprecation_days", 90))
        for d in ctx.descriptors:
            if d.built_with == "dbt":
                node = ctx.nodes.get(str(d.address))
                enforced = ((node or {}).get("config", {}).get("contract") or {}).get("enforced")
                if node is not None and not enforced:
                    yield self.violation(
                        d, "public without an enforced contract",
                        fix="add `contract: {enforced: true}` to the model's config",
                    )  # fmt: skip
            for column in d.columns:
                if not column.data_type:
                    yield self.violation(d, "column has no data_type", column=column.name)
            body = d.body
            if body.status == "deprecated" and body.deprecated_on is not None:
                sunset = body.sunset_on
                if sunset is None or sunset < body.deprecated_on + dt.timedelta(days=window):
                    yield self.violation(
                        d,
                        f"deprecated on {body.deprecated_on} without a sunset_on at least "
                        f"{window} days later: consumers need time to move",
                        fix=f"set sunset_on to {body.deprecated_on + dt.timedelta(days=window)} "
                        "or later",
                    )
