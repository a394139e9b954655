"""Masking rules for personal data, as DuckDB SQL: one definition for every path that masks.

Publication (``masking_at: publication``) stores the masked value (:func:`masked_relation`);
the read paths (federated query, cross-domain staging) apply the same expression to columns
stored in clear (``masking_at: read``) for readers not cleared for their class. The same salt
gives the same hash on both paths, so masked keys still join.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesh_platform.addressing import quote_ident, quote_literal
from mesh_platform.errors import MeshError

if TYPE_CHECKING:
    import duckdb

    from mesh_platform.products.descriptor import ProductDescriptor

# masking rule -> (DuckDB expression of {v} and {salt}, pattern a masked value matches); both
# are str.format templates, hence the doubled braces of regex repetitions.
MASKS: dict[str, tuple[str, str]] = {
    "hash": ("sha256({salt} || {v})", r"^[0-9a-f]{{64}}$"),
    "tokenise": ("'tok_' || left(sha256({salt} || {v}), 16)", r"^tok_[0-9a-f]{{16}}$"),
    "redact": ("'[redacted]'", r"^\[redacted\]$"),
    "truncate": ("left({v}, 2) || '***'", r"^.{{0,2}}\*\*\*$"),
}
SALTED = frozenset({"hash", "tokenise"})
# The DuckDB variable that holds the salt in a session (``SET VARIABLE``): SQL that masks in
# DuckDB names the variable, never the salt, so no view definition, plan or statement text
# carries the secret. The federated query's allowlist refuses getvariable().
SALT_VARIABLE = "mesh_pii_salt"


class _SessionSalt:
    """Marker: mask with the salt bound to the DuckDB session (:func:`bind_salt`)."""

    def __repr__(self) -> str:
        return "SESSION_SALT"


SESSION_SALT = _SessionSalt()


def bind_salt(conn: duckdb.DuckDBPyConnection, salt: str | None) -> None:
    """Bind ``salt`` to the DuckDB connection for :data:`SESSION_SALT` masks (unset: such masks
    give NULL, never clear values)."""
    if salt is None:
        conn.execute(f"RESET VARIABLE {SALT_VARIABLE}")
    else:
        conn.execute(f"SET VARIABLE {SALT_VARIABLE} = ?", [salt])


def require_salt(rule: str, salt: object, *, what: str) -> None:
    """A salted rule (hash, tokenise) without a salt is refused before anything is masked."""
    if rule in SALTED and salt is None:
        raise MeshError(
            f"{what}: masking personal data by {rule!r} needs a salt",
            fix="set MESH_PII_SALT in the environment (the embedded default creates one in "
            "<state>/secrets/pii_salt)",
        )


def mask_expression(
    rule: str, column_sql: str, salt: str | _SessionSalt | None, *, what: str
) -> str:
    """SQL masking ``column_sql`` by ``rule`` (NULL stays NULL); ``what`` names it in errors.
    ``salt``: :data:`SESSION_SALT` in DuckDB (the salt stays out of the SQL), the salt itself
    only for engines configured by an operator's file (Trino rules)."""
    require_salt(rule, salt, what=what)
    salt_sql = (
        f"getvariable({quote_literal(SALT_VARIABLE)})"
        if isinstance(salt, _SessionSalt)
        else quote_literal(salt or "")
    )
    expression = MASKS[rule][0].format(salt=salt_sql, v=f"CAST({column_sql} AS VARCHAR)")
    return f"CASE WHEN {column_sql} IS NULL THEN NULL ELSE {expression} END"


def masked_shape(rule: str) -> str:
    """The regular expression every value masked by ``rule`` matches."""
    return MASKS[rule][1].format()  # un-double the braces


def masked_relation(
    conn: Any, descriptor: ProductDescriptor, relation: str, salt: str | None
) -> str:
    """A view of ``relation`` with every column masked on publication masked; ``relation`` if
    none is. Columns masked at read (``masking_at: read``) are stored in clear."""
    masked = [c for c in descriptor.columns if c.masked_on_publication]
    if not masked:
        return relation
    schema, table = relation.split(".")
    what = f"product {descriptor.address}"
    for column in masked:
        require_salt(column.masking, salt, what=what)
    bind_salt(conn, salt)  # the SQL names the session's salt variable, never the salt
    replaces = [
        mask_expression(c.masking, quote_ident(c.name), SESSION_SALT, what=what)
        + f" AS {quote_ident(c.name)}"
        for c in masked
    ]
    # A temporary view: nothing of it is written into the domain's DuckDB file. Older
    # versions kept a view there whose SQL held the salt: dropped.
    conn.execute("DROP SCHEMA IF EXISTS mesh_publish CASCADE")
    name = f"mesh_publish_{descriptor.address.table}"
    conn.execute(
        f"CREATE OR REPLACE TEMP VIEW {quote_ident(name)} AS "
        f"SELECT * REPLACE ({', '.join(replaces)}) "
        f"FROM {quote_ident(schema)}.{quote_ident(table)}"
    )
    return f"temp.{name}"
