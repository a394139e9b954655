"""Reading the mesh from Trino: an Iceberg catalog on the mesh's own catalog, and access rules
that express every grant (``mesh deploy trino``).

The catalog file points Trino's Iceberg connector at the same JDBC catalog database (pyiceberg's
``SqlCatalog`` keeps the tables and ``catalog_name`` column of Iceberg's ``JdbcCatalog``) and the
same warehouse. Credentials are never written: Trino substitutes ``${ENV:VAR}`` at startup.

The rules follow Trino's "File-based access control" (system level, ``rules.json``) and are
derived from the platform's own access decision, :func:`mesh_platform.access.grants.plan_read`,
so Trino serves a reader what ``mesh query`` serves it: granted columns (the others
``allow: false``), the grants' row filters (ORed), personal data masked unless the reader is
cleared for its class, owners everything in their namespace. DuckDB expressions (row filters,
masks) are transpiled to Trino SQL with sqlglot.

Identities (Trino matches users and groups by name)::

    user:carol           -> Trino user  carol
    team:customer-care   -> Trino group customer-care
    domain sales         -> Trino group domain-sales, and the domain's service user sales

group.txt (Trino's file group provider) lists every group with its members, memberships
expanded transitively. Trino applies the first matching rule, so each user gets its own rules
first (the union of everything it acts as, with its own clearances: what the mesh computes for
it); group rules follow, for users a group provider knows but principals.yaml does not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh_platform.access.grants import ReadPlan, plan_read
from mesh_platform.access.masking import mask_expression
from mesh_platform.access.principals import (
    AccessDeniedError,
    Principal,
    Principals,
    load_principals,
)
from mesh_platform.addressing import PLATFORM_NAMESPACE, quote_ident
from mesh_platform.config import Mesh
from mesh_platform.deploy import GeneratedFile, write_files
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.registry import load_directory

DEFAULT_ETC = "/etc/trino"  # the configuration directory of Trino's container image
CATALOG_USER_ENV = "MESH_TRINO_CATALOG_USER"
CATALOG_PASSWORD_ENV = "MESH_TRINO_CATALOG_PASSWORD"
DOMAIN_GROUP_PREFIX = "domain-"
READ = ["SELECT"]
# Owners read everything in their namespace, but write only through the mesh's publication
# path (gate, audit branch): a Trino UPDATE/DELETE would skip the checks and write delete files
# the mesh's read path refuses. Hence no write privilege and a read-only catalog.
OWNER_PRIVILEGES = ["SELECT"]
_REGEX_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\])")
_STRING_TYPE = re.compile(r"^\s*(varchar|text|string|char|bpchar)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Identities:
    """Trino users and groups of the mesh's principals, and each group's members."""

    users: dict[str, str]  # Trino user -> mesh principal
    groups: dict[str, str]  # Trino group -> mesh principal
    members: dict[str, tuple[str, ...]]  # Trino group -> Trino users (transitive)


def trino_group(principal: str) -> str:
    """``team:x`` -> ``x``; a domain ``d`` -> ``domain-d``."""
    if principal.startswith("team:"):
        return principal[len("team:") :]
    return DOMAIN_GROUP_PREFIX + principal


def resolve_identities(principals: Principals) -> Identities:
    """Users: every ``user:`` principal and every domain's service user; groups: every team and
    every domain. Two principals mapping to one Trino name are refused."""
    users: dict[str, str] = {}
    groups: dict[str, str] = {}
    for principal in sorted({*principals.specs, *principals.domains}):
        if principal.startswith("user:") or principal in principals.domains:
            name, table = principal.removeprefix("user:"), users
        else:
            name, table = trino_group(principal), groups
        if principal in principals.domains:
            _claim(groups, trino_group(principal), principal, principals)
        _claim(table, name, principal, principals)
    members = {
        group: tuple(
            user
            for user, who in sorted(users.items())
            if principal in principals.resolve(who).acts_as
        )
        for group, principal in sorted(groups.items())
    }
    return Identities(users, groups, members)


def _claim(table: dict[str, str], name: str, principal: str, principals: Principals) -> None:
    if table.setdefault(name, principal) != principal:
        raise MeshError(
            f"principals '{table[name]}' and '{principal}' both map to the Trino name '{name}'",
            fix=f"rename one of them in {principals.path.name} (a domain d is the Trino user d "
            f"and the group {DOMAIN_GROUP_PREFIX}d; user:u is the user u; team:t the group t)",
            path=principals.path,
        )


def _exact(name: str) -> str:
    """A Java regular expression matching exactly ``name`` (Trino matches whole names)."""
    return _REGEX_SPECIAL.sub(r"\\\1", name)


def _any_of(names: Iterable[str]) -> str:
    return "(" + "|".join(_exact(n) for n in sorted(names)) + ")"


def to_trino(sql: str, *, what: str) -> str:
    """A DuckDB expression as Trino SQL. DuckDB's ``sha256`` hashes text; Trino's hashes bytes,
    so its argument is encoded (``to_utf8``): both give the same lower-case hex digest."""
    import sqlglot  # heavy: sqlglot (~0.3 s), only when SQL is checked
    from sqlglot import exp  # heavy: sqlglot (~0.3 s), only when SQL is checked

    def encode_hashed(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.SHA2 | exp.SHA | exp.MD5) and not isinstance(node.this, exp.Encode):
            node.set("this", exp.Encode(this=node.this, charset=exp.Literal.string("utf-8")))
        return node

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
        return tree.transform(encode_hashed).sql(dialect="trino")
    except sqlglot.errors.SqlglotError as exc:
        raise MeshError(
            f"{what}: cannot translate {sql!r} to Trino SQL ({str(exc).splitlines()[0]})",
            fix="write the expression with standard SQL functions and operators",
        ) from exc


@dataclass
class RuleBook:
    """The rules being built, and what could not be expressed."""

    mesh: Mesh
    catalog: str
    salt: Callable[[], str]
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table_rule(
        self, who: dict[str, str], descriptor: ProductDescriptor, plan: ReadPlan
    ) -> dict[str, Any]:
        namespace, table = descriptor.address.iceberg_identifier
        rule: dict[str, Any] = {
            **who,
            "catalog": _exact(self.catalog),
            "schema": _exact(namespace),
            "table": _exact(table),
            "privileges": READ,
        }
        columns = []
        for column in descriptor.columns:
            what = f"product {descriptor.address}, column {column.name}"
            masking = plan.masks.get(column.name)
            if column.name not in plan.columns:
                columns.append({"name": column.name, "allow": False})
            elif masking is not None and not _STRING_TYPE.match(column.data_type or ""):
                # A Trino mask must keep the column's type; a text mask cannot: fail closed.
                columns.append({"name": column.name, "allow": False})
                self.notes.append(
                    f"{what} ({column.data_type or 'type not declared'}) is denied instead of "
                    f"masked by {masking!r} for {next(iter(who.values()))}: a Trino mask must "
                    "return the column's type"
                )
            elif masking is not None:
                salt = self.salt() if masking in ("hash", "tokenise") else None
                sql = mask_expression(masking, quote_ident(column.name), salt, what=what)
                columns.append({"name": column.name, "mask": to_trino(sql, what=what)})
        if columns:
            rule["columns"] = columns
        if plan.row_filter:
            rule["filter"] = to_trino(plan.row_filter, what=f"product {descriptor.address}")
        return rule

    def owner_rule(self, who: dict[str, str], domain: str) -> dict[str, Any]:
        return {
            **who,
            "catalog": _exact(self.catalog),
            "schema": _exact(domain),
            "privileges": OWNER_PRIVILEGES,
        }

    def add_principal(
        self,
        who: dict[str, str],
        principal: Principal,
        domains: Iterable[str],
        products: list[ProductDescriptor],
        today: dt.date,
    ) -> None:
        """Every rule ``principal`` gets: its domains' namespaces, then each product it may
        read (none for an expired or missing grant)."""
        owned = [d for d in sorted(domains) if principal.domain_member(d)]
        self.tables += [self.owner_rule(who, d) for d in owned]
        for descriptor in products:
            if descriptor.domain in owned:
                continue
            try:
                plan = plan_read(
                    principal,
                    descriptor,
                    stored_columns=[c.name for c in descriptor.columns],
                    published=descriptor.classification_record(),  # Trino reads the current table
                    today=today,
                )
            except AccessDeniedError:
                continue
            self.tables.append(self.table_rule(who, descriptor, plan))


def access_rules(
    mesh: Mesh,
    *,
    today: dt.date | None = None,
    directory: Any = None,
    principals: Principals | None = None,
) -> tuple[dict[str, Any], Identities, list[str]]:
    """(rules.json content, identities, notes on what could not be expressed or resolved)."""

    today = today or dt.date.today()
    domains = set(list_domain_names(mesh))
    principals = principals or load_principals(mesh.root, domains)
    directory = directory or load_directory(mesh)
    ids = resolve_identities(principals)
    catalog = mesh.settings.catalog.name
    book = RuleBook(mesh, catalog, _salt_once(mesh))
    for key, why in sorted(directory.problems.items()):
        book.notes.append(f"{key}: no rule (nobody reads it through Trino): {why}")
    descriptors = sorted(directory.descriptors.values(), key=lambda d: str(d.address))
    products = [d for d in descriptors if d.domain != PLATFORM_NAMESPACE]
    for user, principal in sorted(ids.users.items()):
        resolved = principals.resolve(principal)
        book.add_principal({"user": _exact(user)}, resolved, domains, products, today)
    for group, principal in sorted(ids.groups.items()):
        resolved = principals.resolve(principal)
        book.add_principal({"group": _exact(group)}, resolved, domains, products, today)
    # (rule selector, one principal it matches): every known user, every known group
    everyone = [
        ({kind: _any_of(names)}, next(iter(names.values())))
        for kind, names in (("user", ids.users), ("group", ids.groups))
        if names
    ]
    for descriptor in (d for d in descriptors if d.domain == PLATFORM_NAMESPACE):
        # The platform's tables (SLA history): every principal reads them (grants.plan_read).
        for who, principal in everyone:
            plan = plan_read(
                principals.resolve(principal),
                descriptor,
                stored_columns=[c.name for c in descriptor.columns],
                today=today,
            )
            book.tables.append(book.table_rule(who, descriptor, plan))
    book.tables.append(
        {"user": ".*", "catalog": ".*", "schema": ".*", "table": ".*", "privileges": []}
    )
    rules = {
        "catalogs": [
            *({**who, "catalog": _exact(catalog), "allow": "read-only"} for who, _ in everyone),
            {"user": ".*", "catalog": ".*", "allow": "none"},
        ],
        "schemas": [
            *(
                {
                    "group": _exact(trino_group(d)),
                    "catalog": _exact(catalog),
                    "schema": _exact(d),
                    "owner": True,
                }
                for d in sorted(domains)
            ),
            {"user": ".*", "catalog": ".*", "schema": ".*", "owner": False},
        ],
        "tables": book.tables,
    }
    return rules, ids, book.notes


def _salt_once(mesh: Mesh) -> Callable[[], str]:
    cached: list[str] = []

    def salt() -> str:
        if not cached:
            cached.append(mesh.pii_salt())
        return cached[0]

    return salt


def group_file(ids: Identities) -> str:
    """Trino's group file: ``group:user1,user2`` per line (groups without members left out)."""
    lines = [f"{group}:{','.join(users)}" for group, users in ids.members.items() if users]
    return "\n".join(lines) + "\n"


def jdbc_url(catalog_uri: str) -> tuple[str, str | None]:
    """(JDBC URL without credentials, why Trino cannot use it or None) of an SQLAlchemy URL."""
    from sqlalchemy.engine import make_url  # heavy: sqlalchemy (~0.5 s), only for a SQL catalog
    from sqlalchemy.exc import ArgumentError  # heavy: sqlalchemy (~0.5 s), only for a SQL catalog

    try:
        url = make_url(catalog_uri)
    except ArgumentError as exc:
        raise MeshError(
            f"the catalog URI is not an SQLAlchemy URL ({exc})",
            fix="set MESH_CATALOG__URI=postgresql+psycopg2://user@host:5432/db",
        ) from exc
    backend = url.get_backend_name()
    if backend == "postgresql":
        host = url.host or "localhost"
        return f"jdbc:postgresql://{host}:{url.port or 5432}/{url.database or ''}", None
    return (
        f"jdbc:{backend}:{url.database or ''}",
        f"the catalog is {url.drivername}: Trino cannot use it; "
        "the production profile's PostgreSQL catalog is needed (MESH_CATALOG__URI="
        "postgresql+psycopg2://...)",
    )


def catalog_properties(mesh: Mesh) -> tuple[str, list[str]]:
    """The Trino catalog file of the mesh, and warnings (a catalog or warehouse Trino cannot
    reach)."""
    url, problem = jdbc_url(mesh.catalog_uri)
    warnings = [problem] if problem else []
    lines = [
        f"# Trino catalog '{mesh.settings.catalog.name}': the mesh's Iceberg tables, read from its "
        "own catalog and warehouse.",
        "# Generated by `mesh deploy trino` (mesh_platform/deploy/trino.py): regenerate, do not "
        "edit. No credentials here:",
        f"# Trino reads them from the environment: {CATALOG_USER_ENV}, {CATALOG_PASSWORD_ENV}, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.",
    ]
    if problem:
        lines.append(f"# NOT USABLE: {problem}.")
    lines += [
        "connector.name=iceberg",
        "iceberg.catalog.type=jdbc",
        f"iceberg.jdbc-catalog.catalog-name={mesh.settings.catalog.name}",
        "iceberg.jdbc-catalog.driver-class=org.postgresql.Driver",
        f"iceberg.jdbc-catalog.connection-url={url}",
        f"iceberg.jdbc-catalog.connection-user=${{ENV:{CATALOG_USER_ENV}}}",
        f"iceberg.jdbc-catalog.connection-password=${{ENV:{CATALOG_PASSWORD_ENV}}}",
        f"iceberg.jdbc-catalog.default-warehouse-dir={mesh.warehouse}",
    ]
    if mesh.warehouse.startswith("s3://"):
        endpoint = mesh.settings.s3_endpoint
        lines += ["fs.native-s3.enabled=true"]
        lines += [f"s3.endpoint={endpoint}"] if endpoint else []
        lines += [
            f"s3.region={os.environ.get('AWS_REGION') or 'us-east-1'}",
            "s3.path-style-access=true",
            "s3.aws-access-key=${ENV:AWS_ACCESS_KEY_ID}",
            "s3.aws-secret-key=${ENV:AWS_SECRET_ACCESS_KEY}",
        ]
    else:
        warnings.append(
            f"the warehouse {mesh.warehouse} is local to this machine: Trino's workers cannot "
            "read it; the production profile's s3:// warehouse is needed (MESH_CATALOG__WAREHOUSE)"
        )
    return "\n".join(lines) + "\n", warnings


@dataclass(frozen=True)
class TrinoConfig:
    files: dict[str, GeneratedFile]
    identities: Identities
    warnings: list[str]  # the configuration cannot work as is (sqlite catalog, local warehouse)
    notes: list[str]  # what the rules could not express


def trino_config(
    mesh: Mesh, *, etc_dir: str = DEFAULT_ETC, today: dt.date | None = None
) -> TrinoConfig:
    """Every file of ``mesh deploy trino``, rendered (nothing written)."""
    properties, warnings = catalog_properties(mesh)
    rules, ids, notes = access_rules(mesh, today=today)
    etc = etc_dir.rstrip("/") or "/"
    files = {
        f"catalog/{mesh.settings.catalog.name}.properties": GeneratedFile(properties),
        "access-control.properties": GeneratedFile(
            "# Trino file-based access control: the mesh's grants (rules.json).\n"
            "access-control.name=file\n"
            f"security.config-file={etc}/rules.json\n"
            "security.refresh-period=1m\n"
        ),
        "group-provider.properties": GeneratedFile(
            "# Trino file group provider: the mesh's teams and domains (group.txt).\n"
            "group-provider.name=file\n"
            f"file.group-file={etc}/group.txt\n"
        ),
        "group.txt": GeneratedFile(group_file(ids)),
        "rules.json": GeneratedFile(json.dumps(rules, indent=2) + "\n", mode=0o600),
    }
    return TrinoConfig(files, ids, warnings, notes)


def write_trino(
    mesh: Mesh, output: Path, *, etc_dir: str = DEFAULT_ETC, today: dt.date | None = None
) -> tuple[TrinoConfig, list[Path]]:
    """``mesh deploy trino --output DIR``: render, then write every file under ``output``."""
    config = trino_config(mesh, etc_dir=etc_dir, today=today)
    return config, write_files(output, config.files, what="Trino configuration")
