"""What a domain's SQL may touch: its own data and the products it is granted, nothing else.

Security class 4, "domain code reads around grants", closed by two walls that do not trust each
other:

1. At load (:func:`isolation_problems`, part of :func:`mesh_platform.dbt.checks.manifest_problems`,
   so the code location and ``mesh check`` say the same): allowlists over the prepared manifest
   and over sqlglot's tree of every node's compiled SQL (see the comment above
   :data:`READ_FIX`). Each problem names the node, its file and the fix.
2. At run time (:func:`mesh_platform.dbt.lockdown.lock_down`, applied by the dbt-duckdb plugin
   :mod:`mesh_platform.dbt.duckdb_plugin` named in the profile the platform writes): every
   DuckDB connection the domain's SQL runs in has external access off except the domain's own
   state folder (its raw area and its DuckDB file), no extension loading, and its configuration
   locked, so no ``SET`` undoes it. Another domain's warehouse files, raw area or DuckDB file
   cannot be read, written or ATTACHed, whatever got past the load check (a Jinja branch not
   taken at compile time, a string built at run time).

Consumed products never need the warehouse here: the platform stages them into the domain's
DuckDB, as the grants allow, before dbt runs.

Longer than 450 lines because it is one allowlist, reviewed as a whole: every kind of node,
config, macro and compiled query a dbt project can hold is decided here, in one place.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

with warnings.catch_warnings():  # sqlglotrs (pulled in by a dependency) warns on import
    warnings.simplefilter("ignore", DeprecationWarning)
    import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from mesh_platform.dbt.nodes import input_domain

# The query guard's function decisions: one reviewed allowlist for both read paths.
from mesh_platform.query.sql import DIALECT, function_name, refused_function
from mesh_platform.query.surface import ALLOWED_TABLE_FUNCTIONS

if TYPE_CHECKING:
    pass


# -- load time: what a domain's dbt project may say --------------------------------------------
#
# Allowlists, decided on the manifest (sources, configs, Jinja text) and on sqlglot's tree of each
# node's compiled SQL:
# - a model, test or snapshot is exactly one query; every table it names is one of its ref() or
#   source() relations (or its own relation, or a CTE); the only file it may name is the Parquet
#   file of a raw source in the domain's own raw area; table functions compute only (range,
#   generate_series, unnest); scalar functions are those of the query guard's reviewed list
#   (mesh_platform/query/surface.py), so read_text, getenv, current_setting... are refused;
# - the only SQL a domain runs is those queries: hooks (pre_hook, post_hook, on-run-start/end),
#   sql_header, incremental_predicates, Python models, custom materializations and UDFs are
#   refused, and no macro may execute SQL itself (run_query, statement, adapter.execute) or
#   replace a dbt or dbt-duckdb macro;
# - configs dbt pastes into DDL (column data types, check constraints, unique_key, schema,
#   alias) are plain types, expressions and identifiers.
# The compiled SQL is one branch of the Jinja (is_incremental() is false on the empty database
# dbt compile runs against): the Jinja text of every node and macro is also searched for file
# functions, file paths after FROM/JOIN and statements, and whatever still gets through meets
# the locked connection at run time.


READ_FIX = (
    "declare the data as a source in your raw area (raw.tables in domains/{domain}/domain.yaml) "
    "or consume the product through a grant: a source with meta.mesh_domain"
)
_MODEL_MATERIALIZATIONS = frozenset({"view", "table", "incremental", "ephemeral"})
_ADAPTER_PACKAGES = frozenset({"dbt", "dbt_duckdb"})
# dbt context members a macro could replace to change what ref()/source() render.
_BUILTINS = frozenset({"ref", "source", "config", "env_var", "var", "this", "return"})
_IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_JINJA_BLOCK = re.compile(r"\{%.*?%\}|\{\{.*?\}\}", re.S)
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
# Jinja that executes SQL outside the node's own query.
_JINJA_SQL = re.compile(
    r"\b(run_query|statement|load_result|set_sql_header|adapter\s*\.\s*(?:execute|add_query|"
    r"submit_python_job))\b"
)
# Functions that read files, databases or the host, however they are spelled in the text.
_FILE_FUNCTION = re.compile(
    r"(?i)\b(read_[a-z_]+|[a-z_]+_scan|[a-z_]+_attach|parquet_[a-z_]+|iceberg_[a-z_]+|"
    r"delta_[a-z_]+|postgres_query|mysql_query|sniff_csv|glob|getenv|query_table|"
    r"current_setting|duckdb_[a-z_]+|pragma_[a-z_]+)\s*\("
)
_FILE_AFTER_FROM = re.compile(r"""(?i)\b(?:from|join)\s*\(?\s*(['"])([^'"]*[/\\:.][^'"]*)\1""")
_STATEMENT = re.compile(
    r"(?i)(?:\A|;)\s*(attach|detach|copy|install|force\s+install|load|set|reset|pragma|export|"
    r"import|call|use|checkpoint|create|insert|update|delete|drop|alter|vacuum)\b"
)


@dataclass(frozen=True)
class _Node:
    """A manifest node as problems name it: kind, name and the file that declares it."""

    kind: str
    name: str
    file: str

    def problem(self, what: str, fix: str) -> str:
        return f"{self.kind} {self.name} ({self.file}) {what}; fix: {fix}"


def _node(domain: str, project: str, props: Mapping[str, Any], kind: str | None = None) -> _Node:
    path = props.get("original_file_path") or props.get("path") or "?"
    package = props.get("package_name")
    if package is None or package == project:
        file = f"dbt_projects/{domain}/{path}"
    elif package == "mesh":
        file = f"mesh_platform/dbt/dbt_package/{path}"
    else:
        file = f"dbt package {package}: {path}"
    return _Node(kind or props.get("resource_type", "node"), props.get("name", "?"), file)


def _raw_file(relation_name: str | None) -> str | None:
    """The path a source renders as when it is a file (``'...'``: an external_location)."""
    if relation_name and len(relation_name) > 1 and relation_name[0] == relation_name[-1] == "'":
        return relation_name[1:-1].replace("''", "'")
    return None


def _parts(relation_name: str | None) -> tuple[str, str, str] | None:
    """(database, schema, table), lower-cased, of a relation dbt renders as an identifier."""
    if not relation_name or _raw_file(relation_name) is not None or "(" in relation_name:
        return None
    try:
        table = exp.to_table(relation_name, dialect=DIALECT)
    except (ParseError, ValueError):
        return None
    if not isinstance(table.this, exp.Identifier):
        return None
    return (table.catalog.lower(), table.db.lower(), table.name.lower())


def _strip_comments(text: str) -> str:
    return _SQL_COMMENT.sub(" ", _JINJA_COMMENT.sub(" ", text))


def _text_problems(node: _Node, text: str | None, fix: str, *, sql: bool = True) -> list[str]:
    """File functions, file paths after FROM/JOIN, statements and SQL-executing Jinja in the
    text of a node or macro (every Jinja branch, taken or not)."""
    if not text:
        return []
    text = _strip_comments(text)
    problems = []
    for name in dict.fromkeys(m.group(1).lower() for m in _FILE_FUNCTION.finditer(text)):
        problems.append(node.problem(f"calls {name}(), which reads files or the host", fix))
    jinja = " ".join(_JINJA_BLOCK.findall(text))
    for name in dict.fromkeys(re.sub(r"\s+", "", m.group(1)) for m in _JINJA_SQL.finditer(jinja)):
        problems.append(
            node.problem(
                f"runs SQL from Jinja ({name}), outside its checked query",
                "compute it in the model's SELECT over ref()/source() relations",
            )
        )
    if sql:
        plain = _JINJA_BLOCK.sub(" ", text)
        for match in _FILE_AFTER_FROM.finditer(plain):
            problems.append(node.problem(f"reads the file {match.group(2)!r} by its path", fix))
        for name in dict.fromkeys(m.group(1).upper() for m in _STATEMENT.finditer(plain)):
            problems.append(
                node.problem(
                    f"holds the statement {' '.join(name.split())}; a model is one SELECT",
                    "remove the statement: the platform runs everything but the SELECT",
                )
            )
    return problems


def _data_type_problem(data_type: str) -> str | None:
    """Why ``data_type`` (pasted into DDL by dbt and by the platform) is not one plain type."""
    if any(token in data_type for token in (";", "--", "/*")):
        return "holds ';' or a comment"
    try:
        statements = sqlglot.parse(f"SELECT CAST(NULL AS {data_type})", read=DIALECT)
    except ParseError:
        return "is not a DuckDB type"
    if len(statements) != 1 or not isinstance(statements[0], exp.Select):
        return "is not one DuckDB type"
    select = statements[0]
    cast = select.expressions[0] if len(select.expressions) == 1 else None
    if not isinstance(cast, exp.Cast) or {k for k, v in select.args.items() if v} != {
        "expressions"
    }:
        return "is not one DuckDB type"
    if any(isinstance(n, exp.Query | exp.Func) for n in cast.to.walk() if n is not cast.to):
        return "is not one DuckDB type"
    return None


def data_type_problems(types: Mapping[str, str | None]) -> list[str]:
    """'column x: data_type '...' <why>' for every declared type that is not one plain type."""
    return [
        f"column {name}: data_type {data_type!r} {why}"
        for name, data_type in types.items()
        if data_type and (why := _data_type_problem(str(data_type)))
    ]


def _expression_problem(text: str) -> str | None:
    """Why a constraint expression is not one scalar expression over the row."""
    try:
        node = sqlglot.parse_one(str(text), read=DIALECT)
    except ParseError:
        return "is not a SQL expression"
    for sub in node.walk():
        if isinstance(sub, exp.Query | exp.Table | exp.Command):
            return "holds a query or a table"
        if name := refused_function(sub):
            return f"calls {name}()"
    return None


def _config_problems(node: _Node, props: Mapping[str, Any], domain: str) -> list[str]:
    """Hooks, headers and every config dbt pastes into SQL, for any node."""
    config = props.get("config") or {}
    problems = []
    hooks = [h for key in ("pre-hook", "post-hook") for h in (config.get(key) or [])]
    if hooks:
        problems.append(
            node.problem(
                f"declares {len(hooks)} pre_hook/post_hook(s), which run SQL outside its query",
                "remove the hooks: a model is one SELECT; the platform runs and publishes it",
            )
        )
    if config.get("sql_header"):
        problems.append(
            node.problem(
                "declares a sql_header, which runs SQL before its query",
                "remove sql_header (and set_sql_header): a model is one SELECT",
            )
        )
    if config.get("incremental_predicates"):
        problems.append(
            node.problem(
                "declares incremental_predicates (SQL pasted into the merge)",
                "filter in the model's SELECT inside {% if is_incremental() %}",
            )
        )
    keys = config.get("unique_key")
    for key in [keys] if isinstance(keys, str) else list(keys or []):
        if not (isinstance(key, str) and _IDENT.match(key.strip())):
            problems.append(
                node.problem(f"has unique_key {key!r}", "name key columns plainly (a-z, 0-9, _)")
            )
    types = dict(config.get("column_types") or {})
    types.update(
        {c: (col or {}).get("data_type") for c, col in (props.get("columns") or {}).items()}
    )
    for problem in data_type_problems(types):
        problems.append(node.problem(problem, "declare a DuckDB type, e.g. bigint, decimal(18,2)"))
    constraints = list(props.get("constraints") or [])
    for col in (props.get("columns") or {}).values():
        constraints += (col or {}).get("constraints") or []
    for constraint in constraints:
        expression = (constraint or {}).get("expression")
        if expression and (why := _expression_problem(expression)):
            problems.append(
                node.problem(
                    f"has a {constraint.get('type')} constraint {expression!r} that {why}",
                    "constrain with an expression over the row's own columns",
                )
            )
    if props.get("resource_type") in ("model", "snapshot"):
        if props.get("database") != domain:
            problems.append(
                node.problem(
                    f"is built in database {props.get('database')!r}, not the domain's own",
                    "remove the database config: a domain builds in its own DuckDB only",
                )
            )
        for key in ("schema", "alias"):
            if not _IDENT.match(str(props.get(key) or "")):
                problems.append(
                    node.problem(f"has {key} {props.get(key)!r}", f"name the {key} plainly")
                )
    return problems


def _model_problems(node: _Node, props: Mapping[str, Any]) -> list[str]:
    problems = []
    if props.get("language", "sql") != "sql":
        problems.append(
            node.problem(
                "is a Python dbt model (arbitrary code in the dbt run)",
                "build it as a Python product (@python_product, mesh_platform/products/python.py)",
            )
        )
    materialized = (props.get("config") or {}).get("materialized")
    if materialized not in _MODEL_MATERIALIZATIONS:
        problems.append(
            node.problem(
                f"is materialized as {materialized!r}",
                f"use one of {', '.join(sorted(_MODEL_MATERIALIZATIONS))}: the platform "
                "publishes products itself",
            )
        )
    return problems


def _source_problems(
    domain: str, project: str, props: Mapping[str, Any], raw_dir: Path
) -> tuple[list[str], str | None]:
    """Problems of a source, and the file it may be read from (a raw Parquet file), if any."""
    node = _node(domain, project, props)
    node = _Node("source", f"{props.get('source_name')}.{props.get('name')}", node.file)
    relation = props.get("relation_name")
    path = _raw_file(relation)
    if input_domain(props) is not None:
        expected = (domain, str(props.get("schema", "")).lower(), str(props.get("name")).lower())
        if path is not None or _parts(relation) != expected:
            return [
                node.problem(
                    f"is a mesh input rendered as {relation}; the platform stages the product "
                    f'as "{domain}"."{props.get("schema")}"."{props.get("name")}"',
                    "remove external_location, identifier and database from the mesh input",
                )
            ], None
        return [], None
    if path is None:
        if relation and "(" in relation:
            return [
                node.problem(
                    f"renders as {relation}, a function call",
                    f"point external_location at {raw_dir}/<table>.parquet (no reader options)",
                )
            ], None
        return [], None
    expected_file = str(raw_dir / f"{props.get('name')}.parquet")
    if path != expected_file:
        return [
            node.problem(
                f"reads the file {path!r}; a raw source is a table this domain lands, at "
                f"{expected_file}",
                READ_FIX.format(domain=domain)
                + " (external_location: \"{{ env_var('MESH_STATE_DIR') }}/domains/"
                + domain
                + '/raw/{name}.parquet")',
            )
        ], None
    return [], path


def _compiled_problems(
    node: _Node,
    code: str,
    relations: set[tuple[str, str, str]],
    files: set[str],
    fix: str,
) -> list[str]:
    """The allowlist on sqlglot's tree of a node's compiled SQL (see the module comment)."""
    try:
        statements = [s for s in sqlglot.parse(code, read=DIALECT) if s is not None]
    except ParseError as exc:
        return [
            node.problem(
                f"cannot be checked: sqlglot does not parse its compiled SQL "
                f"({str(exc).splitlines()[0]})",
                "write it in plain DuckDB SQL (target/mesh_compile/compiled/ holds the "
                "compiled text)",
            )
        ]
    if len(statements) != 1:
        return [node.problem(f"compiles to {len(statements)} statements; a model is one", fix)]
    (statement,) = statements
    if not isinstance(statement, exp.Query):
        kind = type(statement).__name__.upper()
        if isinstance(statement, exp.Command):
            kind = str(statement.this).upper()
        return [node.problem(f"compiles to the statement {kind}, not a query", fix)]
    problems: dict[str, None] = {}
    if statement.find(exp.Into):
        problems[node.problem("selects INTO a table", "remove INTO")] = None
    ctes = {str(cte.alias).lower() for cte in statement.find_all(exp.CTE)}
    table_functions = set()
    for table in statement.find_all(exp.Table):
        if isinstance(table.this, exp.Func):
            table_functions.add(id(table.this))
            name = function_name(table.this) or type(table.this).__name__.lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                problems[node.problem(f"reads the table function {name}()", fix)] = None
            continue
        if not isinstance(table.this, exp.Identifier):
            problems[node.problem(f"reads {table.sql(dialect=DIALECT)}", fix)] = None
            continue
        if not table.db and not table.catalog:
            if table.name.lower() in ctes or table.name in files:
                continue
            what = (
                f"reads the file {table.name!r} by its path"
                if any(c in table.name for c in "/\\:.")
                else f"reads the table {table.name!r}, which is not a ref() or source() relation"
            )
            problems[node.problem(what, fix)] = None
            continue
        parts = (table.catalog.lower(), table.db.lower(), table.name.lower())
        if parts not in relations:
            name = ".".join(p for p in (table.catalog, table.db, table.name) if p)
            problems[
                node.problem(
                    f"reads {name}, which is not one of its ref() or source() relations", fix
                )
            ] = None
    for sub in statement.walk():
        if id(sub) in table_functions:
            continue
        if name := refused_function(sub):
            problems[
                node.problem(
                    f"calls {name}(), outside the reviewed function list "
                    "(mesh_platform/query/surface.py)",
                    f"rewrite it without {name}(); functions that read files or the host "
                    "(read_text, getenv...) are never allowed",
                )
            ] = None
    return list(problems)


def _macro_problems(
    domain: str, project: str, props: Mapping[str, Any], reserved: set[str]
) -> list[str]:
    node = _node(domain, project, props, "macro")
    text = props.get("macro_sql") or ""
    problems = []
    if re.search(r"\{%-?\s*materialization\b", text):
        problems.append(
            node.problem(
                "defines a materialization (arbitrary SQL around every model using it)",
                "use view, table, incremental or ephemeral",
            )
        )
    if props.get("name") in reserved:
        problems.append(
            node.problem(
                f"replaces dbt's own {props.get('name')}()",
                "rename the macro: dbt and dbt-duckdb macros are the platform's",
            )
        )
    return problems + _text_problems(node, text, READ_FIX.format(domain=domain))


def text_problems(domain: str, manifest: Mapping[str, Any], *, raw_dir: Path) -> list[str]:
    """Every problem decidable without compiled SQL: sources, configs, hooks, macros, the Jinja
    text of every node. ``mesh prepare`` compiles only when this is empty, so refused Jinja
    never runs, not even at compile time."""
    return _problems(domain, manifest, raw_dir=raw_dir, compiled=False)


def isolation_problems(domain: str, manifest: Mapping[str, Any], *, raw_dir: Path) -> list[str]:
    """Every way the domain's dbt project reads around the mesh's grants (empty: none)."""
    return _problems(domain, manifest, raw_dir=raw_dir, compiled=True)


def _other_problems(domain: str, project: str, manifest: Mapping[str, Any], fix: str) -> list[str]:
    """Unit-test fixtures written in SQL, user-defined functions and the project's macros."""
    problems: list[str] = []
    for props in manifest.get("unit_tests", {}).values():
        node = _node(domain, project, props, "unit test")
        for fixture in [*(props.get("given") or []), props.get("expect") or {}]:
            if fixture.get("format") == "sql" and isinstance(fixture.get("rows"), str):
                problems += _text_problems(node, fixture["rows"], fix)
    for props in manifest.get("functions", {}).values():
        problems.append(
            _node(domain, project, props, "function").problem(
                "is a user-defined function (SQL run outside any model)",
                "compute it in the model's SELECT",
            )
        )
    reserved = {
        str(m.get("name"))
        for m in manifest.get("macros", {}).values()
        if m.get("package_name") in _ADAPTER_PACKAGES
    } | _BUILTINS
    for props in manifest.get("macros", {}).values():
        if props.get("package_name") not in _ADAPTER_PACKAGES:
            problems += _macro_problems(domain, project, props, reserved)
    return problems


def _problems(
    domain: str, manifest: Mapping[str, Any], *, raw_dir: Path, compiled: bool
) -> list[str]:
    project = (manifest.get("metadata") or {}).get("project_name") or domain
    fix = READ_FIX.format(domain=domain)
    problems: list[str] = []
    files: dict[str, str] = {}  # source unique_id -> the raw file it may read
    for uid, props in manifest.get("sources", {}).items():
        found, path = _source_problems(domain, project, props, raw_dir)
        problems += found
        if path is not None:
            files[uid] = path
    relations: dict[str, tuple[str, str, str]] = {}
    for uid, props in [*manifest.get("nodes", {}).items(), *manifest.get("sources", {}).items()]:
        if (parts := _parts(props.get("relation_name"))) is not None:
            relations[uid] = parts
    pending: list[tuple[_Node, Mapping[str, Any]]] = []
    for props in manifest.get("nodes", {}).values():
        kind = props.get("resource_type")
        node = _node(domain, project, props)
        if kind == "operation":
            problems.append(
                node.problem(
                    "is a project hook (on-run-start/on-run-end), which runs SQL outside any model",
                    "remove it from dbt_project.yml: the only SQL a domain runs is its models' "
                    "SELECTs and tests",
                )
            )
            continue
        if kind in ("analysis", "sql_operation"):
            continue
        problems += _config_problems(node, props, domain)
        if kind not in ("model", "test", "snapshot"):
            continue
        if kind == "model":
            problems += _model_problems(node, props)
        found = _text_problems(node, props.get("raw_code"), fix)
        problems += found
        if not found and props.get("language", "sql") == "sql":
            pending.append((node, props))
    problems += _other_problems(domain, project, manifest, fix)
    if not compiled:
        return problems
    uncompiled = [node.name for node, props in pending if props.get("compiled_code") is None]
    if uncompiled and not problems:  # prepare compiles only a project without text problems
        problems.append(
            f"dbt_projects/{domain}: {len(uncompiled)} model(s)/test(s) have no compiled SQL to "
            f"check ({', '.join(sorted(uncompiled)[:5])}...): the manifest was not compiled; "
            f"fix: run `mesh prepare --domain {domain} --force`"
        )
    for node, props in pending:
        code = props.get("compiled_code")
        if code is None:
            continue
        deps = (props.get("depends_on") or {}).get("nodes") or []
        allowed = {relations[d] for d in deps if d in relations}
        if (own := relations.get(str(props.get("unique_id")))) is not None:
            allowed.add(own)  # {{ this }} in an incremental model
        problems += _compiled_problems(
            node, code, allowed, {files[d] for d in deps if d in files}, fix
        )
    return problems
