"""The one module that owns naming and addressing in the mesh.

A product is addressed as ``<domain>.<product>`` (``sales.orders``); major version N > 1 of a
product is ``<domain>.<product>_vN``, so two majors can be live side by side. The URN
``urn:mesh:<domain>:<product>:v<major>`` always names the major. From that address, and only
here, the platform derives the Dagster asset key, the Iceberg table identifier and the SQL
identifiers. Private (non-product) dbt models and raw landing tables get keys under the domain
too, so every asset of a domain sorts under its name in the Dagster UI.

    product  sales.orders       -> AssetKey(["sales", "orders"])        Iceberg: sales.orders
    major 2  sales.orders_v2    -> AssetKey(["sales", "orders_v2"])     Iceberg: sales.orders_v2
             URN                   urn:mesh:sales:orders:v2
    private  sales/stg_orders   -> AssetKey(["sales", "internal", "stg_orders"])
    raw      sales/orders       -> AssetKey(["sales", "raw", "orders"])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mesh_platform.errors import InvalidNameError

# Every pattern that validates a name is anchored with \A...\Z and used with fullmatch: `$`
# also matches before a trailing newline, so "sales\n" would pass a `^...$` check and reach a
# YAML file or a path. ASCII only: `\d` and `\w` match other scripts' digits and letters.
NAME_PATTERN = re.compile(r"\A[a-z][a-z0-9_]*\Z", re.ASCII)
MAX_NAME_LENGTH = 63
VERSION_SUFFIX = re.compile(r"_v([0-9]+)\Z", re.ASCII)
# Principals ('sales', 'team:customer-care', 'user:alice') and owner teams: lower case like
# other names, with '.' and '-' allowed for people's and teams' names.
PRINCIPAL_NAME_PATTERN = re.compile(r"\A[a-z][a-z0-9_.-]*\Z", re.ASCII)
PRINCIPAL_PATTERN = re.compile(r"\A(?:(?:team|user):)?[a-z][a-z0-9_.-]*\Z", re.ASCII)
# A contact is a plain email address: nothing a YAML file, a Markdown page or a shell would read
# as syntax (no quote, colon, '#', braces, spaces or newline).
EMAIL_PATTERN = re.compile(
    r"\A[A-Za-z0-9][A-Za-z0-9._+-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z",
    re.ASCII,
)
MAX_EMAIL_LENGTH = 254
RAW_PREFIX = "raw"
INTERNAL_PREFIX = "internal"
# Names a domain or product may not take: they would collide with key prefixes above, or with
# schemas every DuckDB / Iceberg deployment already has.
PLATFORM_NAMESPACE = "mesh"  # the platform's own tables (SLA history), never a domain
RESERVED_NAMES = frozenset(
    {RAW_PREFIX, INTERNAL_PREFIX, PLATFORM_NAMESPACE, "main", "information_schema", "pg_catalog",
     "system", "temp"}
)  # fmt: skip


def name_problem(name: object) -> str | None:
    """Why ``name`` breaks the naming rule, or None when it is fine."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
    if not NAME_PATTERN.fullmatch(name):
        return "must be snake_case: start with a-z, then only a-z, 0-9 and _"
    if "__" in name or name.endswith("_"):
        return "must not contain '__' or end with '_'"
    if VERSION_SUFFIX.search(name):
        return "must not end with '_v<number>' (the platform adds it for major versions > 1)"
    if name in RESERVED_NAMES:
        return f"is reserved (reserved names: {', '.join(sorted(RESERVED_NAMES))})"
    return None


def team_problem(team: object) -> str | None:
    """Why ``team`` cannot name an owning team (``team:<team>``), or None when it is fine."""
    if not isinstance(team, str) or not team:
        return "must be a non-empty string"
    if len(team) > MAX_NAME_LENGTH:
        return f"is {len(team)} characters long; the limit is {MAX_NAME_LENGTH}"
    if not PRINCIPAL_NAME_PATTERN.fullmatch(team):
        return "must be lower case: start with a-z, then only a-z, 0-9, '_', '.' or '-'"
    return None


def suggest_team(team: object) -> str:
    text = re.sub(r"[^a-z0-9_.-]+", "-", str(team).lower()).strip("-_.")
    if not text or not text[0].isalpha():
        text = f"team-{text}".rstrip("-")
    return text[:MAX_NAME_LENGTH]


def email_problem(contact: object) -> str | None:
    """Why ``contact`` is not a plain email address, or None when it is one."""
    if not isinstance(contact, str) or not contact:
        return "must be a non-empty email address"
    if len(contact) > MAX_EMAIL_LENGTH:
        return f"is {len(contact)} characters long; the limit is {MAX_EMAIL_LENGTH}"
    if not EMAIL_PATTERN.fullmatch(contact):
        return (
            "must be a plain email address such as 'sales-data@example.com' (letters, digits, "
            "'.', '_', '+', '-' before the '@'; no spaces, quotes, ':', '#', braces or newlines)"
        )
    return None


def principal_problem(principal: object) -> str | None:
    """Why ``principal`` is not a domain, 'team:<name>' or 'user:<name>', or None."""
    if not isinstance(principal, str) or not principal:
        return "must be a non-empty string"
    if len(principal.partition(":")[2] or principal) > MAX_NAME_LENGTH:
        return f"is too long: a principal's name has at most {MAX_NAME_LENGTH} characters"
    if not PRINCIPAL_PATTERN.fullmatch(principal):
        return (
            "must be a domain name, 'team:<name>' or 'user:<name>' (lower case letters, "
            "digits, '_', '.', '-')"
        )
    return None


def validate_name(kind: str, name: object, *, where: str | None = None) -> str:
    """Return ``name`` if it follows the rule, else raise naming the value, place and fix."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidNameError(
            f"{kind} name {name!r} {problem}",
            fix=f"rename the {kind} to snake_case, e.g. {suggest_name(name)!r}",
            path=where,
        )
    return name  # type: ignore[return-value]


def suggest_name(name: object) -> str:
    text = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    text = re.sub(r"_+", "_", text)
    text = VERSION_SUFFIX.sub(r"_version_\1", text)  # '_v3' is the platform's major suffix
    if not text or not text[0].isalpha():
        text = f"x_{text}".rstrip("_")
    if text in RESERVED_NAMES:
        text = f"{text}_data"
    return text[:MAX_NAME_LENGTH].rstrip("_")


def quote_ident(name: str) -> str:
    """Quote an identifier for DuckDB SQL after checking it against the naming pattern.

    Reserved words are fine here (``main`` is a schema); values are bound, never formatted.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"SQL identifier {name!r} is not a plain snake_case name",
            fix=f"use a snake_case name such as {suggest_name(name)!r}",
        )
    return f'"{name}"'


def quote_literal(value: str) -> str:
    """A SQL string literal, for the few places DuckDB takes no bound parameter (COPY ... TO,
    LOAD): single quotes are doubled, so a path with a quote cannot end the literal."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True, order=True)
class ProductAddress:
    """The unique, stable address of a data product: ``<domain>.<product>[_v<major>]``."""

    domain: str
    product: str
    major: int = 1

    def __post_init__(self) -> None:
        if self.domain != PLATFORM_NAMESPACE:  # the platform's own tables live in `mesh`
            validate_name("domain", self.domain)
        validate_name("product", self.product)
        if not isinstance(self.major, int) or self.major < 1:
            raise InvalidNameError(
                f"product {self.domain}.{self.product}: major version {self.major!r} must be "
                "an integer of at least 1",
                fix="give the product a semantic version such as '1.0.0'",
            )

    @classmethod
    def parse(cls, address: str) -> ProductAddress:
        """``sales.orders``, ``sales.orders_v2`` or ``urn:mesh:sales:orders:v2``."""
        if address.startswith("urn:mesh:"):
            parts = address.split(":")
            if len(parts) == 5 and re.fullmatch(r"v[1-9][0-9]*", parts[4]):
                return cls(parts[2], parts[3], int(parts[4][1:]))
            raise InvalidNameError(
                f"product URN {address!r} must have the form urn:mesh:<domain>:<product>:v<major>",
                fix="address products like 'urn:mesh:sales:orders:v1'",
            )
        parts = address.split(".")
        if len(parts) != 2:
            raise InvalidNameError(
                f"product address {address!r} must have the form <domain>.<product>",
                fix="address products like 'sales.orders' (or 'sales.orders_v2' for major 2)",
            )
        domain, product = parts
        if (match := VERSION_SUFFIX.search(product)) and int(match.group(1)) > 1:
            return cls(domain, product[: match.start()], int(match.group(1)))
        return cls(domain, product)

    @property
    def table(self) -> str:
        """Table (and asset) name: the product name, plus ``_v<major>`` from major 2 on."""
        return self.product if self.major == 1 else f"{self.product}_v{self.major}"

    def __str__(self) -> str:
        return f"{self.domain}.{self.table}"

    @property
    def urn(self) -> str:
        return f"urn:mesh:{self.domain}:{self.product}:v{self.major}"

    @property
    def key_path(self) -> tuple[str, str]:
        """The path of the product's asset key (``mesh_platform.assets.keys.product_key``)."""
        return (self.domain, self.table)

    @property
    def iceberg_identifier(self) -> tuple[str, str]:
        """(namespace, table) in the Iceberg catalog: one namespace per domain."""
        return (self.domain, self.table)

    def table_name(self, catalog: str) -> str:
        """Fully qualified name shown to users, e.g. ``mesh.sales.orders``."""
        return f"{catalog}.{self.domain}.{self.table}"


def raw_key_path(domain: str, table: str) -> tuple[str, str, str]:
    """The asset key path of a raw landed table (``mesh_platform.assets.keys.raw_asset_key``)."""
    return (domain, RAW_PREFIX, table)


def internal_key_path(domain: str, model: str) -> tuple[str, str, str]:
    """The asset key path of a domain's private model."""
    return (domain, INTERNAL_PREFIX, model)
