"""What a new product's name must not be, and where it goes: the names a domain already uses
(models, seeds, snapshots, Python products), SQL's reserved words, and adding the new model's
entry to a dbt YAML file the team keeps editing.

The YAML file is edited structurally with ruamel.yaml's round trip, which keeps the team's
comments, quoting, flow and block styles and indentation (guessed from the file): whatever form
``models:`` has (absent, ``models: []``, a flow list, a block list followed by other blocks),
the new entry lands in the list and the file stays valid YAML.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlglot
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelError
from ruamel.yaml.util import load_yaml_guess_indent
from sqlglot import exp

from mesh_platform.duckdb_ext import connect
from mesh_platform.query.sql import DIALECT
from mesh_platform.scaffold.validate import ScaffoldError

_SKIPPED = frozenset({"target", "dbt_packages", "logs", "__pycache__"})
_DEFAULT_PATHS = {"model-paths": ["models"], "seed-paths": ["seeds"],
                  "snapshot-paths": ["snapshots"]}  # fmt: skip
_YAML_KINDS = {"models": "model", "seeds": "seed", "snapshots": "snapshot"}


def sql_word_problem(name: str) -> str | None:
    """Why ``name`` cannot name a table or column unquoted: a keyword DuckDB reserves (any
    category but 'unreserved' in ``duckdb_keywords()``), or a word sqlglot (which checks every
    query of the mesh) does not read as a plain name. None when it can."""
    conn = connect()
    try:
        row = conn.execute(
            "SELECT keyword_category FROM duckdb_keywords() WHERE keyword_name = ?", [name.lower()]
        ).fetchone()
    finally:
        conn.close()
    if row is not None and row[0] != "unreserved":
        return f"is a reserved SQL word (DuckDB keyword, category {row[0]!r})"
    try:
        tree = sqlglot.parse_one(f"SELECT {name} FROM {name}.{name}", read=DIALECT)
    except sqlglot.errors.SqlglotError:
        tree = None
    column = tree.expressions[0] if isinstance(tree, exp.Select) and tree.expressions else None
    if not isinstance(column, exp.Column) or column.name != name:
        return "is a SQL keyword (the mesh's SQL parser does not read it as a name)"
    return None


def _project_paths(project: Path) -> dict[str, list[str]]:
    try:
        config = yaml.safe_load((project / "dbt_project.yml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    config = config if isinstance(config, Mapping) else {}
    return {
        key: [str(p) for p in config.get(key) or default] for key, default in _DEFAULT_PATHS.items()
    }


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED and not d.startswith("."))
        for name in sorted(files):
            yield Path(root, name)


def taken_names(project: Path, python_dir: Path, root: Path) -> dict[str, str]:
    """Every name a domain already uses -> what and where (relative to ``root``): its dbt
    models, seeds and snapshots (files and YAML entries) and its Python products."""
    taken: dict[str, str] = {}

    def take(name: Any, what: str, path: Path) -> None:
        if isinstance(name, str) and name not in taken:
            where = path.relative_to(root) if path.is_relative_to(root) else path
            taken[name] = f"{what} in {where}"

    suffixes = {"model-paths": (".sql", ".py"), "seed-paths": (".csv",),
                "snapshot-paths": (".sql",)}  # fmt: skip
    kinds = {"model-paths": "a model", "seed-paths": "a seed", "snapshot-paths": "a snapshot"}
    for key, folders in _project_paths(project).items():
        for folder in folders:
            for path in _walk(project / folder):
                if path.suffix in suffixes[key]:
                    take(path.stem, kinds[key], path)
                elif path.suffix in (".yml", ".yaml"):
                    for kind, name in _yaml_entries(path):
                        take(name, f"a {kind}", path)
    if python_dir.is_dir():
        for path in sorted(python_dir.glob("*.yml")):
            take(path.stem, "a Python product", path)
    return taken


def _yaml_entries(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # a broken file is reported by dbt and mesh check
    if not isinstance(data, Mapping):
        return
    for key, kind in _YAML_KINDS.items():
        entries = data.get(key)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, Mapping):
                yield kind, entry.get("name")


def _yaml() -> YAML:
    rt = YAML()  # round trip: comments, quotes, flow/block styles kept
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a team's long lines
    rt.brace_single_entry_mapping_in_flow_sequence = True  # [{type: not_null}] stays so
    return rt


def with_model(text: str, entry: str, *, shown: str) -> str:
    """``text`` (a dbt YAML file, possibly empty) with the model ``entry`` (YAML of a
    one-item list) appended to its ``models:`` list, everything else as it was."""
    rt = _yaml()
    try:
        indent, offset = load_yaml_guess_indent(text)[1:] if text.strip() else (None, None)
        if indent is None or offset is None:  # no block list to learn from: dbt's usual style
            indent, offset = 4, 2
        rt.indent(mapping=max(indent - offset, 2), sequence=indent, offset=offset)
        data = rt.load(text) if text.strip() else None
        new = rt.load(entry)
    except RuamelError as exc:
        raise ScaffoldError(
            f"{shown} is not valid YAML ({' '.join(str(exc).split())}); nothing was written",
            fix=f"fix the syntax of {shown} first",
            path=shown,
        ) from exc
    if data is None:
        data = CommentedMap([("version", 2)])
    if not isinstance(data, CommentedMap):
        raise ScaffoldError(
            f"{shown} is not a YAML mapping (dbt's `version:` / `models:` file); nothing was "
            "written",
            fix=f"make {shown} a dbt properties file (`version: 2`, `models: [...]`)",
            path=shown,
        )
    models = data.get("models")
    if models is None:
        models = data["models"] = CommentedSeq()
    if not isinstance(models, CommentedSeq):
        raise ScaffoldError(
            f"`models:` in {shown} is not a list; nothing was written",
            fix=f"make `models:` in {shown} a list of models",
            path=shown,
        )
    models.fa.set_block_style()  # `models: []` becomes a block list; flow items stay flow
    models.extend(new)
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()
