"""What user SQL may say, decided on sqlglot's syntax tree (never on the text).

A federated query is exactly one read-only query (SELECT, WITH, set operations). Every table it
names is a product address ``<domain>.<product>`` (or a CTE of the query itself); table
functions (``read_csv``, ``iceberg_scan``, ``query``...), other catalogs, time-travel clauses and
functions that reach the host (``getenv``, ``current_setting``...) are refused. What DuckDB runs
is the SQL sqlglot regenerates from the checked tree, so the engine executes exactly what was
checked; the engine is also locked down (:mod:`mesh_platform.query.engine`) as a second wall.

Grant row filters (``rows:`` in a descriptor) are checked here too: one boolean expression over
the product's own columns, without subqueries or table references.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

with warnings.catch_warnings():  # sqlglotrs (pulled in by a dependency) warns on import
    warnings.simplefilter("ignore", DeprecationWarning)
    import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import MeshError

DIALECT = "duckdb"
# Scalar functions that read the host, the engine's settings or its catalog.
_REFUSED_FUNCTIONS = frozenset(
    {"getenv", "current_setting", "getvariable", "glob", "query", "query_table", "which_secret",
     "sniff_csv", "checkpoint", "force_checkpoint", "load_aws_credentials", "current_database",
     "current_schema", "current_schemas", "pg_typeof"}
)  # fmt: skip
_REFUSED_PREFIXES = ("read_", "parquet_", "iceberg_", "duckdb_", "pragma_", "sqlite_", "delta_")
_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Table functions that only compute (no I/O).
_ALLOWED_TABLE_FUNCTIONS = (exp.GenerateSeries,)


class QueryRefusedError(MeshError):
    """User SQL asks for something the federated query does not allow."""


@dataclass(frozen=True)
class CheckedQuery:
    sql: str  # regenerated from the checked tree: what the engine runs
    addresses: tuple[ProductAddress, ...]  # every product the query reads
    redacted: str  # the SQL with every literal replaced by '?': what the audit log keeps


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _refused_function(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Func):
        name = _function_name(node)
        if name in _REFUSED_FUNCTIONS or name.startswith(_REFUSED_PREFIXES):
            return name
    return None


def _refuse(what: str, fix: str) -> QueryRefusedError:
    return QueryRefusedError(what, fix=fix)


@functools.lru_cache(maxsize=256)  # a pure function of the text: dashboards repeat queries
def check_query(sql: str) -> CheckedQuery:
    """Parse ``sql``; refuse anything but one read-only query over product addresses."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except ParseError as exc:
        raise _refuse(
            f"the query is not valid SQL: {str(exc).splitlines()[0]}",
            "write one SELECT (DuckDB dialect) naming products as <domain>.<product>",
        ) from None
    if len(statements) != 1:
        raise _refuse(
            f"the text holds {len(statements)} statements; a query is exactly one",
            "send one SELECT per query (no ';'-separated statements)",
        )
    (statement,) = statements
    if not isinstance(statement, exp.Query):
        kind = type(statement).__name__.upper()
        raise _refuse(
            f"only queries are allowed; {kind} statements are refused (the mesh is read-only "
            "here: no ATTACH, COPY, SET, INSTALL, PRAGMA, DDL or DML)",
            "write a SELECT; products are changed by their domain's pipeline, not by queries",
        )
    if statement.args.get("into"):
        raise _refuse("SELECT ... INTO is refused", "remove INTO: results are returned, not stored")
    for cte in statement.find_all(exp.CTE):
        if not _SIMPLE_NAME.match(str(cte.alias)):
            raise _refuse(
                f"CTE name {cte.alias!r} is refused: CTE names are plain identifiers",
                "name CTEs with letters, digits and '_' (e.g. WITH recent AS (...))",
            )
    addresses: dict[str, ProductAddress] = {}
    for node in statement.walk():
        if name := _refused_function(node):
            raise _refuse(
                f"function {name}() is refused in federated queries (it reads the host, files "
                "or the engine's state)",
                "query products by address: SELECT ... FROM <domain>.<product>",
            )
        if isinstance(node, exp.Table) and (address := _table_address(node)):
            addresses[str(address)] = address
    checked_sql = statement.sql(dialect=DIALECT)
    redacted = statement.transform(  # in place: the checked SQL is already generated
        lambda n: exp.Placeholder() if isinstance(n, exp.Literal) else n, copy=False
    ).sql(dialect=DIALECT)
    return CheckedQuery(checked_sql, tuple(addresses.values()), redacted)


def _visible_ctes(node: exp.Expression) -> set[str]:
    """CTE names in scope at ``node``: those of every enclosing WITH; inside a CTE's own body,
    only the CTEs defined before it (and itself, if the WITH is RECURSIVE), as DuckDB binds."""
    names: set[str] = set()
    child, parent = node, node.parent
    while parent is not None:
        if isinstance(parent, exp.With):
            ctes = parent.expressions
            position = next((i for i, c in enumerate(ctes) if c is child), len(ctes))
            visible = ctes[: position + 1] if parent.args.get("recursive") else ctes[:position]
            names |= {str(c.alias).lower() for c in visible}
        elif isinstance(parent, exp.Query):
            with_ = parent.args.get("with_")
            if with_ is not None and child is not with_:
                names |= {str(c.alias).lower() for c in with_.expressions}
        child, parent = parent, parent.parent
    return names


def _table_address(node: exp.Table) -> ProductAddress | None:
    if not isinstance(node.this, exp.Identifier):
        if isinstance(node.this, _ALLOWED_TABLE_FUNCTIONS):
            return None
        name = _function_name(node.this) if isinstance(node.this, exp.Func) else node.sql()
        raise _refuse(
            f"table function {name}() is refused: a federated query reads products only",
            "name products by address in FROM: <domain>.<product> (e.g. sales.orders)",
        )
    if node.args.get("version") is not None or node.args.get("when") is not None:
        raise _refuse(
            f"time travel in SQL ({node.sql(dialect=DIALECT)}) is refused",
            "pass --at SNAPSHOT|TIMESTAMP (or at=...) to travel the whole query",
        )
    if node.catalog:
        raise _refuse(
            f"{node.sql(dialect=DIALECT)} names a catalog; products are <domain>.<product>",
            "drop the catalog part",
        )
    if not node.db:
        if _SIMPLE_NAME.match(node.name) and node.name.lower() in _visible_ctes(node):
            return None
        raise _refuse(
            f"table {node.name!r} is not a product address",
            "name products as <domain>.<product> (e.g. sales.orders); list them with "
            "`mesh products`",
        )
    text = f"{node.db}.{node.name}"
    try:
        return ProductAddress.parse(text.lower())
    except MeshError:
        raise _refuse(
            f"{text!r} is not a product address",
            "name products as <domain>.<product> with lower-case letters, digits and '_' "
            "(list them with `mesh products`)",
        ) from None


def check_row_filter(text: str, columns: Iterable[str], *, what: str) -> str:
    """The normalised SQL of a grant's row filter; ValueError naming the problem otherwise."""
    try:
        node = sqlglot.parse_one(str(text), read=DIALECT)
    except ParseError as exc:
        raise ValueError(f"{what}: not a SQL expression ({str(exc).splitlines()[0]})") from None
    if isinstance(node, exp.Query) or not isinstance(node, exp.Condition):
        raise ValueError(f"{what}: must be one boolean expression, e.g. \"region = 'EUROPE'\"")
    known = {c.lower() for c in columns}
    for sub in node.walk():
        if isinstance(sub, exp.Query | exp.Table):
            raise ValueError(f"{what}: subqueries and table references are not allowed")
        if name := _refused_function(sub):
            raise ValueError(f"{what}: function {name}() is not allowed")
        if isinstance(sub, exp.Column):
            if sub.table:
                raise ValueError(f"{what}: name columns without a table ({sub.sql()})")
            if sub.name.lower() not in known:
                raise ValueError(f"{what}: {sub.name!r} is not a column of the product")
    return node.sql(dialect=DIALECT)
