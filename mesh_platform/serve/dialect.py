"""What a PostgreSQL client says, in the engine's terms.

Clients of the query service speak PostgreSQL's SQL. Each statement is one of three kinds,
decided on sqlglot's tokens and tree, never on a regular expression over the text:

- a **session command** (``SET``, ``SHOW``, ``RESET``, ``BEGIN``/``COMMIT``/``ROLLBACK``,
  ``DISCARD``, ``DEALLOCATE``): answered by the service from the client's own settings; none
  reaches an engine;
- a **catalog query**: a query that reads nothing but ``pg_catalog``/``information_schema`` (or
  no table at all: ``SELECT version()``), run on the principal's catalog, an empty in-memory
  database shaped like the products it may read (:mod:`mesh_platform.serve.catalog`);
- a **product query**: everything else, translated to DuckDB's dialect with sqlglot and handed
  to the federated query engine, whose SQL guard (:func:`mesh_platform.query.sql.check_query`)
  decides what it may do, exactly as for ``mesh query``.

Bound parameters (``$1``) are substituted into the tree as literals before translation, so the
guard checks the query that runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Tokenizer, TokenType

from mesh_platform.query.sql import QueryRefusedError, function_name, sqlglot

Kind = Literal["empty", "session", "catalog", "products", "copy"]
CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_SESSION_WORDS = frozenset(
    {"SET", "SHOW", "RESET", "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "DISCARD",
     "DEALLOCATE", "SAVEPOINT", "RELEASE"}
)  # fmt: skip
_REGPROC_COLUMNS = frozenset({"typreceive", "typsend", "typinput", "typoutput"})
# The catalog relations tools read to list schemas, tables, columns, keys and types (an
# allowlist: pg_settings and the like would describe the service's engine, not the mesh)
CATALOG_RELATIONS = {
    "pg_catalog": frozenset(
        {"pg_am", "pg_attrdef", "pg_attribute", "pg_class", "pg_collation", "pg_constraint",
         "pg_database", "pg_depend", "pg_description", "pg_enum", "pg_extension", "pg_index",
         "pg_indexes", "pg_inherits", "pg_namespace", "pg_proc", "pg_range", "pg_roles",
         "pg_sequence", "pg_sequences", "pg_tables", "pg_tablespace", "pg_trigger", "pg_type",
         "pg_user", "pg_views", "pg_policy", "pg_statistic_ext", "pg_publication",
         "pg_publication_rel", "pg_publication_namespace", "pg_partitioned_table"}
    ),
    "information_schema": frozenset(
        {"tables", "columns", "schemata", "views", "table_constraints", "key_column_usage",
         "referential_constraints", "constraint_column_usage", "check_constraints",
         "character_sets"}
    ),
}  # fmt: skip
# pg_catalog relations the principal's catalog answers with PostgreSQL's rows and columns (a
# table macro ``mesh_<name>`` each, serve/catalog.py) where DuckDB's differ or are missing
SHADOWED_RELATIONS = frozenset(
    {"pg_type", "pg_class", "pg_attribute", "pg_collation", "pg_database", "pg_inherits",
     "pg_trigger", "pg_roles", "pg_policy", "pg_statistic_ext", "pg_publication",
     "pg_publication_rel", "pg_publication_namespace", "pg_partitioned_table"}
)  # fmt: skip


@dataclass(frozen=True)
class Statement:
    kind: Kind
    text: str  # the client's text of this statement
    word: str = ""  # session commands: the leading keyword (upper case)
    parameters: int = 0  # the highest $n the statement names


def _refuse(what: str, fix: str) -> QueryRefusedError:
    return QueryRefusedError(what, fix=fix)


def _tokens(text: str) -> list[Any]:
    try:
        return Tokenizer().tokenize(text)
    except TokenError:
        raise _refuse(
            "the query cannot be read: an unterminated string, quoted name or comment",
            "close every quote and comment",
        ) from None


def split(text: str) -> list[str]:
    """The statements of a simple-protocol query string (``;``-separated, as psql sends),
    cut on the tokenizer's semicolons: a ``;`` inside a string or comment does not split."""
    tokens = _tokens(text)
    statements, start = [], 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            statements.append(text[start : token.start])
            start = token.end + 1
    statements.append(text[start:])
    return [s for s in statements if s.strip()] or [""]


@functools.lru_cache(maxsize=1024)
def classify(text: str) -> Statement:
    """The kind of one statement (see the module docstring)."""
    tokens = _tokens(text)
    if not tokens:
        return Statement("empty", text)
    word = tokens[0].text.upper()
    if word in _SESSION_WORDS:
        return Statement("session", text, word=word)
    if word == "COPY":  # its query is classified when it runs (serve/copy_out.py)
        return Statement("copy", text, word=word)
    tree = _parse(text)
    parameters = max(
        (_parameter_number(p) for p in tree.find_all(exp.Parameter, exp.Placeholder)), default=0
    )
    tables = list(tree.find_all(exp.Table))
    ctes = {str(c.alias).lower() for c in tree.find_all(exp.CTE)}
    if isinstance(tree, exp.Query) and all(_is_catalog(t, ctes) for t in tables):
        return Statement("catalog", text, parameters=parameters)
    return Statement("products", text, parameters=parameters)


def _parse(text: str) -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(text, read="postgres") if s is not None]
    except (ParseError, TokenError) as exc:
        first = (getattr(exc, "errors", None) or [{}])[0]
        raise _refuse(
            f"the query is not valid SQL: {first.get('description', 'syntax error')}",
            "write one SELECT naming products as <domain>.<product>",
        ) from None
    if len(statements) != 1:
        raise _refuse("a statement is exactly one query", "send one SELECT per statement")
    return statements[0]


_ROW_FUNCTIONS = (exp.GenerateSeries, exp.ExplodingGenerateSeries, exp.Explode, exp.Unnest)


def _is_catalog(table: exp.Table, ctes: set[str]) -> bool:
    """Whether ``table`` is one of the catalog's relations (refused if it names the catalog
    schemas but is not on the allowlist: settings and prepared statements are not served)."""
    if table.catalog:
        return False
    if isinstance(table.this, _ROW_FUNCTIONS):  # rows computed from its arguments alone
        return table.db.lower() in ("", "pg_catalog")
    if not isinstance(table.this, exp.Identifier):
        return False
    schema, name = table.db.lower(), table.name.lower()
    if not schema and name in ctes:
        return True
    if schema not in ("", *CATALOG_SCHEMAS) or (not schema and not name.startswith("pg_")):
        return False
    if name not in CATALOG_RELATIONS.get(schema or "pg_catalog", frozenset()):
        raise _refuse(
            f"catalog relation {(schema or 'pg_catalog')}.{name[:63]} is not served",
            "introspect with information_schema (tables, columns, schemata, views) or the "
            "pg_catalog relations of tables, columns and types",
        )
    return True


def _parameter_number(node: exp.Expression) -> int:
    text = node.name if isinstance(node, exp.Parameter) else ""
    if not text.isdigit():
        raise _refuse(
            "only numbered parameters ($1, $2...) can be bound",
            "use $n placeholders (psycopg does so for %s)",
        )
    return int(text)


@functools.lru_cache(maxsize=1024)
def _tree(text: str) -> exp.Expression:
    return _parse(text)


NUMERIC_OIDS = frozenset({20, 21, 23, 26, 700, 701, 1700})
BOOL_OID = 16


def _literal(value: str | None, oid: int) -> exp.Expression:
    if value is None:
        return exp.null()
    if oid in NUMERIC_OIDS:
        try:
            float(value)
        except ValueError:
            raise _refuse(
                f"a bound number is not a number ({len(value)} characters)",
                "bind numbers as numbers",
            ) from None
        return exp.Literal.number(value.strip())
    if oid == BOOL_OID:
        truth = value.strip().lower() in {"t", "true", "1", "on", "yes"}
        return exp.true() if truth else exp.false()
    return exp.Literal.string(value)


def _postgres_names(tree: exp.Expression, user: str) -> exp.Expression:
    """PostgreSQL's spellings DuckDB binds otherwise: ``pg_catalog.f()`` is ``f()``, and the
    session's user and database are the service's, not the engine's."""
    for node in list(tree.find_all(exp.Dot)):
        left = node.this
        qualified = (
            isinstance(left, exp.Identifier | exp.Column) and left.name.lower() == "pg_catalog"
        )
        if qualified and isinstance(node.expression, exp.Func):
            node.replace(node.expression)
    for table in list(tree.find_all(exp.Table)):  # relations the catalog answers itself
        name = table.name.lower()
        if name in SHADOWED_RELATIONS and table.db.lower() in ("", "pg_catalog"):
            alias = table.alias or name
            call = exp.Anonymous(this=f"mesh_{name}")
            table.replace(exp.Table(this=call, alias=exp.TableAlias(this=exp.to_identifier(alias))))
    for column in list(tree.find_all(exp.Column)):  # pg_catalog.pg_class.relname: pg_class's
        if column.table.lower() in SHADOWED_RELATIONS and column.db.lower() == "pg_catalog":
            column.set("db", None)
    for compare in list(tree.find_all(exp.EQ, exp.NEQ)):  # regproc = 0: no function ('-')
        for side, other in ((compare.left, compare.right), (compare.right, compare.left)):
            if (isinstance(side, exp.Column) and side.name.lower() in _REGPROC_COLUMNS
                    and isinstance(other, exp.Literal) and other.name == "0"):  # fmt: skip
                other.replace(exp.Literal.string("-"))
    for cast in list(tree.find_all(exp.Cast)):  # oid::regtype is the type's name...
        to = cast.to.sql(dialect="postgres").lower().removesuffix("[]")
        if to in ("regtype", "regclass", "regnamespace"):
            named = isinstance(cast.this, exp.Literal) and cast.this.is_string
            function = f"mesh_{to}_oid" if named else f"mesh_{to}"  # 'sales.x'::regclass: oid
            cast.replace(exp.Anonymous(this=function, expressions=[cast.this]))
    for node in list(tree.find_all(exp.CurrentUser, exp.SessionUser)):
        node.replace(exp.Literal.string(user))
    for node in list(tree.find_all(exp.CurrentDatabase)):
        node.replace(exp.Literal.string("mesh"))
    return tree


_OPERATOR_CHARACTERS = frozenset("+-*/<>=~!@#%^&|`?")
# collations that compare as DuckDB compares by default (bytes): dropped, not translated
_PLAIN_COLLATIONS = frozenset({"default", "c", "posix", "ucs_basic"})


def _postgres_syntax(tree: exp.Expression) -> exp.Expression:
    """PostgreSQL's explicit spellings of operators, collations and types, as psql writes them
    (``relname OPERATOR(pg_catalog.~) '^(customers)$' COLLATE pg_catalog.default``,
    ``x::pg_catalog.text``), in the plain form DuckDB reads: the operator is the one its name
    spells, the type the one it names, and the default and byte-wise collations are DuckDB's
    own comparison (other collations, operators and types are left for DuckDB to refuse)."""
    for collate in list(tree.find_all(exp.Collate)):
        collation = collate.expression
        schema = collation.table.lower() if isinstance(collation, exp.Column) else ""
        if schema in ("", "pg_catalog") and collation.name.lower() in _PLAIN_COLLATIONS:
            collate.replace(collate.this)
    for cast in list(tree.find_all(exp.Cast)):  # ::pg_catalog.text is ::text
        for data_type in list(cast.to.find_all(exp.DataType)):
            kind = data_type.args.get("kind")
            if isinstance(kind, exp.Dot) and kind.this.name.lower() == "pg_catalog":
                try:
                    plain = exp.DataType.build(kind.expression.name, dialect="postgres")
                except (ParseError, TokenError, ValueError):
                    continue
                if data_type is cast.to:
                    cast.set("to", plain)
                else:
                    data_type.replace(plain)
    for table in list(tree.find_all(exp.Table)):  # pg_catalog.generate_series(): DuckDB's own
        if isinstance(table.this, exp.Func) and table.db.lower() == "pg_catalog":
            table.set("db", None)
        alias = table.args.get("alias")  # a one-column function's column is named by its alias
        single = not isinstance(table.this, exp.Unnest) or len(table.this.expressions) == 1
        if isinstance(table.this, _ROW_FUNCTIONS) and single and alias and not alias.columns:
            alias.set("columns", [exp.to_identifier(alias.name)])
    for call in tree.find_all(exp.Anonymous):  # DuckDB's name of a variadic function
        if call.name.lower() == "json_build_object":
            call.set("this", "json_object")
    for node in list(tree.find_all(exp.Operator)):
        name = str(node.args.get("operator") or "")
        schema, _, symbol = name.rpartition(".")
        if schema.lower() not in ("", "pg_catalog") or not set(symbol) <= _OPERATOR_CHARACTERS:
            continue
        try:  # the operator as PostgreSQL's parser reads it between two operands
            template = sqlglot.parse_one(f"mesh_left {symbol} mesh_right", read="postgres")
        except (ParseError, TokenError):
            continue
        operands = {"mesh_left": node.this, "mesh_right": node.expression}
        if sorted(c.name for c in template.find_all(exp.Column)) != sorted(operands):
            continue
        for column in list(template.find_all(exp.Column)):
            operand = operands[column.name].copy()
            compound = isinstance(operand, exp.Binary | exp.Not)
            column.replace(exp.paren(operand, copy=False) if compound else operand)
        node.replace(exp.paren(template, copy=False))
    return tree


def _column_names(tree: exp.Expression) -> exp.Expression:
    """Result columns named as PostgreSQL names them where the query does not: a function
    call by the function (``count(*)`` is ``count``), a cast by what it casts, anything else
    ``?column?`` (DuckDB would name them by their text: ``count_star()``, ``(a + 1)``)."""
    select = tree
    while isinstance(select, exp.SetOperation):  # a UNION's names are its first branch's
        select = select.this
    if not isinstance(select, exp.Select):
        return tree
    for item in list(select.expressions):
        if isinstance(item, exp.Alias | exp.Column | exp.Star):
            continue
        inner = item.this if isinstance(item, exp.Cast | exp.Window) else item
        if isinstance(inner, exp.Column):
            name = inner.name
        elif isinstance(inner, exp.Func) and not isinstance(item, exp.Cast):
            name = (function_name(inner) or "?column?").split(".")[-1]
        else:
            name = "?column?"
        item.replace(exp.alias_(item.copy(), name, quoted=True))
    return tree


@functools.lru_cache(maxsize=1024)  # dashboards and drivers repeat their statements
def _translated(text: str, user: str | None) -> str:
    tree = _postgres_syntax(_column_names(_tree(text).copy()))
    if user is not None:
        tree = _postgres_names(tree, user)
    if any(True for _ in tree.find_all(exp.Parameter, exp.Placeholder)):
        raise _refuse(
            "the query names parameters but no value was bound", "bind one value per placeholder"
        )
    return tree.sql(dialect="duckdb", comments=False)


def to_engine(
    text: str,
    parameters: tuple[str | None, ...] = (),
    types: tuple[int, ...] = (),
    *,
    user: str | None = None,
) -> str:
    """``text`` (PostgreSQL) in DuckDB's dialect, each ``$n`` replaced by its bound value as a
    literal: a number or boolean where the client declared that type (its oid), else a string
    literal (PostgreSQL's text format; DuckDB casts it where the context needs a type, as
    PostgreSQL does with an untyped parameter), NULL for NULL."""
    if not parameters:
        return _translated(text, user)
    tree = _postgres_syntax(_column_names(_tree(text).copy()))
    if user is not None:  # a catalog query
        tree = _postgres_names(tree, user)
    if parameters or any(True for _ in tree.find_all(exp.Parameter, exp.Placeholder)):
        tree = tree.copy()
        for node in list(tree.find_all(exp.Parameter, exp.Placeholder)):
            number = _parameter_number(node)
            if number > len(parameters):
                raise _refuse(
                    f"the query names ${number} but {len(parameters)} value(s) were bound",
                    "bind one value per placeholder",
                )
            oid = types[number - 1] if number <= len(types) else 0
            node.replace(_literal(parameters[number - 1], oid))
    return tree.sql(dialect="duckdb", comments=False)
