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
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from mesh_platform.addressing import ProductAddress
from mesh_platform.errors import MeshError
from mesh_platform.query.surface import ALLOWED_FUNCTIONS, ALLOWED_TABLE_FUNCTIONS, function_fix

DIALECT = "duckdb"
_SIMPLE_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
# The syntax a federated query may use: every node of the checked tree is one of these (an
# allowlist: a construct sqlglot adds, or one DuckDB reads as a table or a file without sqlglot
# seeing a table, such as SUMMARIZE 'path' or DESCRIBE, is refused until reviewed here).
# Functions (exp.Func) are further checked by name against query/surface.py.
_ALLOWED_NODES: tuple[type[exp.Expression], ...] = (
    exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery, exp.With, exp.CTE,
    exp.From, exp.Join, exp.Where, exp.Group, exp.Having, exp.Qualify, exp.Order, exp.Ordered,
    exp.Limit, exp.Offset, exp.LimitOptions, exp.Distinct, exp.Window, exp.WindowSpec,
    exp.Filter, exp.Table, exp.TableAlias, exp.Alias, exp.Identifier, exp.Column, exp.Star,
    exp.Bracket, exp.Slice, exp.Literal, exp.Boolean, exp.Null, exp.Var, exp.DataType,
    exp.DataTypeParam, exp.Interval, exp.Tuple, exp.Lambda, exp.Binary, exp.Unary, exp.Func,
    exp.Predicate, exp.TableSample,
)  # fmt: skip
# Token kinds the audit log keeps verbatim; every other token (literals of any quoting) is '?'.
_KEPT_TOKENS = frozenset(
    {"VAR", "IDENTIFIER", "STAR", "DOT", "COMMA", "L_PAREN", "R_PAREN", "L_BRACKET",
     "R_BRACKET", "L_BRACE", "R_BRACE", "COLON", "DCOLON", "SEMICOLON", "EQ", "NEQ", "LT",
     "LTE", "GT", "GTE", "PLUS", "DASH", "SLASH", "PERCENT", "DPIPE", "AMP", "PIPE", "CARET",
     "TILDA", "ARROW", "DARROW", "FARROW", "NULLSAFE_EQ", "PARAMETER", "PLACEHOLDER"}
)  # fmt: skip


class QueryRefusedError(MeshError):
    """User SQL asks for something the federated query does not allow."""


@dataclass(frozen=True)
class CheckedQuery:
    sql: str  # regenerated from the checked tree: what the engine runs
    addresses: tuple[ProductAddress, ...]  # every product the query reads
    redacted: str  # the SQL with every literal replaced by '?': what the audit log keeps


def function_name(node: exp.Func) -> str | None:
    """The name DuckDB binds for ``node`` (None: the node regenerates as syntax, not a call)."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    match = _CALL.match(node.sql(dialect=DIALECT, comments=False))
    return match.group(1).lower() if match else None


def refused_function(node: exp.Expression) -> str | None:
    """The name of a function call outside the allowlist (:mod:`mesh_platform.query.surface`)."""
    if not isinstance(node, exp.Func):
        return None
    name = function_name(node)
    # None: the node regenerates as syntax (operators, CASE, [...]); the SQL is a fixed point of
    # parse/generate (_normalised), so any call inside that syntax is a node checked on its own.
    return None if name is None or name in ALLOWED_FUNCTIONS else name


def _shown(name: object, *, quote: bool = True) -> str:
    """A user-given name as a refusal may repeat it (refusals are logged): plain identifiers
    only, anything else (a quoted string that could hold data) is not echoed."""
    text = str(name)
    if not _SIMPLE_NAME.match(text.replace(".", "_")):
        return "(a quoted name)"
    return repr(text) if quote else text


def _refuse(what: str, fix: str) -> QueryRefusedError:
    return QueryRefusedError(what, fix=fix)


def _parse_one(sql: str) -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except TokenError:
        raise _refuse(  # sqlglot's message quotes the query: not repeated
            "the query cannot be read: an unterminated string, quoted name or comment",
            "close every quote and comment; write one SELECT naming products as <domain>.<product>",
        ) from None
    except ParseError as exc:
        first = (exc.errors or [{}])[0]
        where = f" (line {first.get('line')}, column {first.get('col')})" if first else ""
        raise _refuse(  # the parser's own message quotes the query: not repeated
            f"the query is not valid SQL: {first.get('description', 'syntax error')}{where}",
            "write one SELECT (DuckDB dialect) naming products as <domain>.<product>",
        ) from None
    if len(statements) != 1:
        raise _refuse(
            f"the text holds {len(statements)} statements; a query is exactly one",
            "send one SELECT per query (no ';'-separated statements)",
        )
    return statements[0]


def _normalised(sql: str) -> tuple[exp.Expression, str]:
    """The tree of the SQL DuckDB will run and that SQL, regenerated without comments until it
    is a fixed point: every call in the executed text is then a node of the checked tree."""
    statement = _parse_one(sql)
    text = statement.sql(dialect=DIALECT, comments=False)
    for _ in range(3):
        statement = _parse_one(text)
        again = statement.sql(dialect=DIALECT, comments=False)
        if again == text:
            return statement, text
        text = again
    raise _refuse(
        "the query cannot be normalised to one stable form, so it cannot be checked",
        "simplify the query (plain SELECT syntax of DuckDB)",
    )


@functools.cache
def _kept_token_types() -> frozenset[object]:
    """Token kinds kept verbatim in the audit log: the kinds named in _KEPT_TOKENS and the
    dialect's keywords and punctuation; never a literal kind (strings of any quoting, numbers)."""
    tokenizer = sqlglot.Dialect.get_or_raise(DIALECT).tokenizer_class
    kinds = {*tokenizer.KEYWORDS.values(), *tokenizer.SINGLE_TOKENS.values()}
    kinds |= {k for k in TokenType if k.name in _KEPT_TOKENS}
    return frozenset(k for k in kinds if "STRING" not in k.name and k.name != "NUMBER")


def redact(sql: str) -> str:
    """``sql`` with every literal (any quoting: '...', E'...', N'...', $$...$$, numbers) replaced
    by ``?`` and comments dropped: only tokens of an allowlist of kinds (names, keywords,
    operators) are kept verbatim, so a new literal form is redacted by default."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(sql)
    except Exception:  # untokenisable: keep nothing of it
        return "?"
    kept = _kept_token_types()
    out = []
    for token in tokens:
        if token.token_type not in kept:
            out.append("?")
        elif token.token_type.name == "IDENTIFIER":  # quoted: a plain name is kept, else data
            out.append(f'"{token.text}"' if _SIMPLE_NAME.match(token.text) else '"?"')
        else:
            out.append(token.text)
    return " ".join(out)


@functools.lru_cache(maxsize=256)  # a pure function of the text: dashboards repeat queries
def check_query(sql: str) -> CheckedQuery:
    """Parse ``sql``; refuse anything but one read-only query over product addresses, using
    only functions of the allowlist (:mod:`mesh_platform.query.surface`)."""
    statement, checked_sql = _normalised(sql)
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
        alias = str(cte.alias)
        if not _SIMPLE_NAME.match(alias) or alias.lower().startswith("mesh_"):
            raise _refuse(
                f"CTE name {_shown(cte.alias)} is refused: CTE names are plain identifiers not "
                "starting with mesh_",
                "name CTEs with letters, digits and '_' (e.g. WITH recent AS (...))",
            )
    addresses: dict[str, ProductAddress] = {}
    for node in statement.walk():
        if not isinstance(node, _ALLOWED_NODES):
            kind = type(node).__name__.upper()
            raise _refuse(
                f"the SQL construct {kind} is not allowed in federated queries",
                "write a SELECT over products (<domain>.<product>); if analysts need this "
                "syntax, ask the platform team to review it for _ALLOWED_NODES in "
                "mesh_platform/query/sql.py",
            )
        if name := refused_function(node):
            raise _refuse(
                f"function {_shown(name, quote=False)}() is not on the federated query's allowlist",
                function_fix(_shown(name, quote=False)),
            )
        if isinstance(node, exp.Table) and (address := _table_address(node)):
            addresses[str(address)] = address
    return CheckedQuery(checked_sql, tuple(addresses.values()), redact(checked_sql))


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
        name = function_name(node.this) if isinstance(node.this, exp.Func) else None
        if name in ALLOWED_TABLE_FUNCTIONS:
            return None
        name = name or node.sql()
        raise _refuse(
            f"table function {_shown(name, quote=False)}() is refused: a federated query "
            "reads products only",
            "name products by address in FROM: <domain>.<product> (e.g. sales.orders)",
        )
    if node.args.get("version") is not None or node.args.get("when") is not None:
        raise _refuse(
            f"time travel in SQL (on {_shown(node.name)}) is refused",
            "pass --at SNAPSHOT|TIMESTAMP (or at=...) to travel the whole query",
        )
    if node.catalog:
        raise _refuse(
            f"table {_shown(node.name)} names a catalog; products are <domain>.<product>",
            "drop the catalog part",
        )
    if not node.db:
        if _SIMPLE_NAME.match(node.name) and node.name.lower() in _visible_ctes(node):
            return None
        raise _refuse(
            f"table {_shown(node.name)} is not a product address",
            "name products as <domain>.<product> (e.g. sales.orders); list them with "
            "`mesh products`",
        )
    text = f"{node.db}.{node.name}"
    try:
        return ProductAddress.parse(text.lower())
    except MeshError:
        raise _refuse(
            f"{_shown(text)} is not a product address",
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
        if name := refused_function(sub):
            raise ValueError(f"{what}: function {name}() is not allowed")
        if isinstance(sub, exp.Column):
            if sub.table:
                raise ValueError(f"{what}: name columns without a table ({sub.sql()})")
            if sub.name.lower() not in known:
                raise ValueError(f"{what}: {sub.name!r} is not a column of the product")
    return node.sql(dialect=DIALECT)
