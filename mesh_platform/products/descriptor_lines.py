"""Where a descriptor says what: every problem found in a product's descriptor names the file, the
line, the field by name and the fix, and "did you mean" for a mistyped key.

Descriptors are validated from dbt's manifest (or a Python product's YAML read into values),
which know no lines and number list items (pydantic's ``columns.3.masking``). People edit YAML,
so a problem is reported as they wrote it: ``dbt_projects/sales/models/products/products.yml
line 41: columns[email].masking: 'sha256' is not one of hash, redact, truncate, tokenise; did you
mean 'hash'?``. The line comes from the file the model is described in, read with its nodes'
marks (:class:`~mesh_platform.formats.YamlLines`): for a dbt model, its entry in ``models:`` (the
entry of its version first, for a versioned model), ``config.meta.mesh`` or ``meta.mesh``, and a
column's ``config.meta`` or ``meta``. A mistyped key is matched (difflib) against the fields the
model at that place accepts; a disallowed value against the values it allows.

Values a person still has to write are marked ``TODO(mesh): ...`` (the scaffold and ``mesh adopt``
write them); a field holding one is reported as a TODO to fill, not as a wrong type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from mesh_platform.errors import MeshError
from mesh_platform.formats import Step, YamlLines, did_you_mean, model_at, model_keys
from mesh_platform.products.descriptor_columns import (
    CLASSIFICATION_META_KEY,
    COLUMN_META_KEYS,
    MASKING_AT_META_KEY,
    MASKING_META_KEY,
)

# The marker of a value a person must still write, at the start of a YAML string value.
TODO_MARKER = "TODO(mesh):"

# A field as people write it: ("mesh", *path in meta.mesh), ("columns", <column name>, key),
# ("description",), ("name",).
FieldPath = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)


class FieldError(ValueError):
    """A validator's problem about one field (a model validator's errors otherwise point at
    the whole model). ``field``: as :data:`FieldPath`; ``fix``: what to write instead."""

    def __init__(self, field: FieldPath, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.fix = fix


@dataclass(frozen=True)
class Problem:
    """One problem of a descriptor: where (line, field), what, and the fix."""

    field: str  # the field by name: columns[email].masking, mesh.grants[marketing].expires
    line: int | None
    message: str
    fix: str

    def text(self) -> str:
        return (f"line {self.line}: " if self.line else "") + f"{self.field}: {self.message}"


@dataclass(frozen=True)
class DescriptorSource:
    """The YAML a product's descriptor is written in, and the product's place in it. The file
    is read only when a line is asked for (a valid descriptor never needs one)."""

    file: str  # as messages show it (relative to the mesh root)
    path: Path | None = None  # the file on disk (None: not at hand, no line numbers)
    text: str | None = None  # or its text, when it is not on disk yet
    kind: Literal["dbt", "python"] = "dbt"
    model: str | None = None  # dbt: the model's name
    version: str | None = None  # dbt: the model version, for a versioned model

    @cached_property
    def lines(self) -> YamlLines | None:
        if self.text is not None:
            return YamlLines(self.text)
        return file_lines(self.path) if self.path is not None else None

    def _blocks(self) -> list[Any]:
        """The YAML nodes describing the product, most specific first (a dbt model version's
        entry, then the model's); the document's root for a Python product."""
        if self.lines is None or self.lines.root is None:
            return []
        if self.kind == "python":
            return [self.lines.root]
        model = self.lines.find(("models", ("name", str(self.model))))
        if model is None:
            return []
        version = None
        if self.version is not None:
            version = self.lines.find(("versions", ("v", self.version)), model)
        return [version, model] if version is not None else [model]

    def line(self, field: FieldPath) -> int | None:
        """The line ``field`` is written on, or of the block it belongs in when it is absent."""
        blocks = self._blocks()
        if not blocks or self.lines is None:
            return None
        lines = self.lines
        if self.kind == "python":
            steps: tuple[Step, ...] = tuple(_steps(field))
            if field[:1] == ("columns",) and len(field) >= 2:
                steps = ("columns", ("name", str(field[1])), *steps[2:])
            return lines.line(steps, blocks[0])[0]
        candidates: list[tuple[Any, tuple[Step, ...]]] = []
        for block in blocks:
            if field[:1] == ("mesh",):
                for prefix in (("config", "meta", "mesh"), ("meta", "mesh")):
                    candidates.append((block, (*prefix, *_steps(field[1:]))))
            elif field[:1] == ("columns",) and len(field) >= 2:
                column: tuple[Step, ...] = ("columns", ("name", str(field[1])))
                rest = tuple(_steps(field[2:]))
                if rest and rest[0] not in _COLUMN_FIELDS:  # a meta key (or a mistyped one)
                    candidates += [(block, (*column, "config", "meta", *rest)),
                                   (block, (*column, "meta", *rest))]  # fmt: skip
                candidates.append((block, (*column, *rest)))
            else:
                candidates.append((block, tuple(_steps(field))))
        # A candidate written in full wins, else the one written furthest down its path; the
        # most specific block (a model version's) on a tie.
        found = [(lines.line(steps, block), len(steps), -i)
                 for i, (block, steps) in enumerate(candidates)]  # fmt: skip
        best = max(found, key=lambda f: (f[0][1] == f[1], f[0][1], f[2]))
        return best[0][0]


_COLUMN_FIELDS = frozenset({"name", "data_type", "description", "constraints", "data_tests"})


def _steps(field: FieldPath) -> list[Step]:
    return [s if isinstance(s, int) else str(s) for s in field]


def dbt_source(node: Mapping[str, Any], source_file: str, yaml_file: Path | None,
               text: str | None = None) -> DescriptorSource:  # fmt: skip
    """Where a dbt model's descriptor is written: ``yaml_file`` (or its ``text``), the YAML
    that describes the model (dbt's ``patch_path``)."""
    version = node.get("version")
    return DescriptorSource(
        source_file, yaml_file, text, "dbt", str(node.get("name")),
        None if version is None else str(version),
    )  # fmt: skip


@lru_cache(maxsize=64)
def _file_lines(path: str, mtime_ns: int, size: int) -> YamlLines:
    return YamlLines.of_file(Path(path))


def file_lines(path: Path) -> YamlLines:
    """The nodes of a YAML file, parsed once while it does not change."""
    try:
        st = path.stat()
    except OSError:
        return YamlLines("")
    return _file_lines(str(path), st.st_mtime_ns, st.st_size)


def descriptor_source(root: Path, descriptor: Any) -> DescriptorSource:
    """Where a validated descriptor (a ``ProductDescriptor``) is written, under the mesh root."""
    path = root / descriptor.source_file
    if descriptor.built_with == "python":
        return DescriptorSource(descriptor.source_file, path, kind="python")
    # A versioned model's entry in `versions:` is found by its major (absent otherwise).
    return DescriptorSource(
        descriptor.source_file, path, None, "dbt", descriptor.name, str(descriptor.body.major)
    )


def field_name(field: FieldPath, raw: Mapping[str, Any]) -> str:
    """``field`` as people name it: list items by their name (a column's name, a grant's
    principal, an expectation's type), by position only when they have none."""
    if not field:
        return "descriptor"
    name = str(field[0])
    value: Any = raw.get(name) if isinstance(raw, Mapping) else None
    for step in field[1:]:
        if field[0] == "columns" and step == field[1]:
            name += f"[{step}]"
            value = None
        elif isinstance(step, int):
            item = value[step] if isinstance(value, list) and step < len(value) else None
            name += f"[{_item_label(item, step)}]"
            value = item
        else:
            name += f".{step}"
            value = value.get(step) if isinstance(value, Mapping) else None
    return name


def _item_label(item: Any, index: int) -> str:
    if isinstance(item, Mapping):
        for key in ("name", "to", "type"):
            if isinstance(item.get(key), str):
                return item[key]
        if len(item) == 1:  # the short form of an expectation: {expect_...: {column: x}}
            return str(next(iter(item)))
    return str(index)


def _describe(model: type[BaseModel] | None, key: str | int) -> str:
    info = model.model_fields.get(str(key)) if model is not None else None
    return (info.description or "").rstrip(".") if info is not None else ""


def located_problems(
    exc: ValidationError,
    model: type[BaseModel],
    source: DescriptorSource,
    raw: Mapping[str, Any],
    *,
    at: FieldPath = (),
    columns: Sequence[str] = (),
) -> list[Problem]:
    """Each pydantic error of ``exc`` (validating ``model`` at ``at``) as a :class:`Problem`.

    ``raw``: the descriptor's values as people wrote them, keyed ``mesh``, ``columns``,
    ``description`` (names list items); ``columns``: the column names, in order (pydantic
    numbers them). A model's ``body`` is the ``mesh`` block."""
    problems, renamed = [], set()
    for err in exc.errors():
        loc = tuple(err["loc"])
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, FieldError):
            field = error.field
            message, fix = str(error), error.fix
        else:
            field = _logical((*at, *loc), columns)
            message, fix = _message(err, model, loc)
        name = field_name(field, raw)
        line = source.line(field)
        if fix is None:
            fix = f"correct {name}" + (f" at line {line}" if line else "")
        problems.append(Problem(name, line, message, fix))
        if err["type"] == "extra_forbidden" and (close := _suggested(message)):
            renamed.add(field_name((*field[:-1], close), raw))
    # A missing key that a mistyped one is suggested for is said once, by the typo.
    return [p for p in problems if not (p.message == "is missing" and p.field in renamed)]


def _suggested(message: str) -> str | None:
    found = re.search(r"did you mean '([^']+)'\?$", message)
    return found.group(1) if found else None


def _logical(loc: tuple[Any, ...], columns: Sequence[str]) -> FieldPath:
    if loc[:1] == ("body",):
        return ("mesh", *loc[1:])
    index = loc[1] if loc[:1] == ("columns",) and len(loc) > 1 else None
    if isinstance(index, int) and index < len(columns):
        return ("columns", columns[index], *loc[2:])
    return loc


def _message(
    err: Mapping[str, Any], model: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[str, str | None]:
    """(what is wrong, the fix) of one pydantic error at ``loc`` of ``model``."""
    kind, value = err["type"], err.get("input")
    key = loc[-1] if loc else ""
    parent = model_at(model, loc[:-1]) if loc else model
    about = _describe(parent, key)
    todo = isinstance(value, str) and value.strip().startswith(TODO_MARKER)
    if todo and kind != "extra_forbidden":
        return (
            f"is still a TODO to fill: {value.strip()!r}",
            f"replace the {TODO_MARKER} text with the value" + (f" ({about})" if about else ""),
        )
    if kind == "extra_forbidden":
        keys = model_keys(parent) if parent is not None else []
        close = did_you_mean(str(key), keys)
        if close:
            return f"unknown key {key!r}; did you mean {close!r}?", f"rename {key!r} to {close!r}"
        return f"unknown key {key!r}", f"remove {key!r} (allowed here: {', '.join(keys)})"
    if kind == "missing":
        return "is missing", f"add `{key}:`" + (f" ({about})" if about else "")
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        close = did_you_mean(str(value), allowed) if allowed else None
        message = f"{value!r} is not one of {', '.join(allowed)}"
        return (
            message + (f"; did you mean {close!r}?" if close else ""),
            f"write one of {', '.join(allowed)}",
        )
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error"):
        message += f" (got {value!r})" if not isinstance(value, (Mapping, list)) else ""
    return message, (f"write {key} as: {about}" if about else None)


class DescriptorError(MeshError):
    """A product's descriptor is missing or invalid; ``line``: where its first problem is."""

    def __init__(
        self, what: str, *, fix: str, path: Path | str | None = None, line: int | None = None
    ) -> None:
        super().__init__(what, fix=fix, path=path)
        self.line = line


def invalid_descriptor(
    label: str, source: DescriptorSource, problems: Sequence[Problem]
) -> DescriptorError:
    """One error listing every problem of a descriptor, each with its line, field and fix."""
    ordered = sorted(problems, key=lambda p: (p.line or 0, p.field))
    listed = "; ".join(p.text() for p in ordered)
    fixes = "; ".join(dict.fromkeys(p.fix for p in ordered))
    return DescriptorError(
        f"{label}: invalid descriptor in {source.file}: {listed}", fix=fixes, path=source.file,
        line=ordered[0].line if ordered else None,
    )  # fmt: skip


def validated(
    model: type[ModelT], value: Any, problems: list[Problem], source: DescriptorSource,
    raw: Mapping[str, Any], *, at: FieldPath = (), columns: Sequence[str] = (),
) -> ModelT | None:  # fmt: skip
    """``value`` validated into ``model``, or None with its problems added to ``problems``."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems += located_problems(exc, model, source, raw, at=at, columns=columns)
        return None


def column_meta_typos(
    name: str, meta: Mapping[str, Any], source: DescriptorSource
) -> list[Problem]:
    """Keys of a column's meta that look like a mistyped mesh key (dbt's meta is free-form:
    other keys are other tools', but ``masknig`` would silently publish in clear)."""
    problems = []
    for key in meta:
        close = did_you_mean(str(key), sorted(COLUMN_META_KEYS), cutoff=0.75)
        if key not in COLUMN_META_KEYS and close and close not in meta:
            problems.append(
                Problem(
                    f"columns[{name}].{key}",
                    source.line(("columns", name, str(key))),
                    f"unknown key {key!r}; did you mean {close!r}?",
                    f"rename {key!r} to {close!r}",
                )
            )
    return problems


def node_meta(node: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest node's meta (dbt keeps it in two places)."""
    return {**(node.get("meta") or {}), **((node.get("config") or {}).get("meta") or {})}


def node_columns(
    node: Mapping[str, Any], source: DescriptorSource
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """A dbt model's columns as a descriptor states them (contract and meta), and the keys of
    their meta that look like a mistyped mesh key."""
    columns, problems = [], []
    for name, col in (node.get("columns") or {}).items():
        meta = node_meta(col)
        problems += column_meta_typos(name, meta, source)
        constraints = [c.get("type") for c in col.get("constraints") or ()]
        for constraint in node.get("constraints") or ():  # model-level: {type, columns}
            if name in (constraint.get("columns") or ()):
                constraints.append(constraint.get("type"))
        columns.append({
            "name": name, "data_type": col.get("data_type"),
            "description": col.get("description") or "",
            "classification": meta.get(CLASSIFICATION_META_KEY),
            "masking": meta.get(MASKING_META_KEY),
            "masking_at": meta.get(MASKING_AT_META_KEY) or "publication",
            "constraints": [{"type": t} for t in dict.fromkeys(constraints) if t],
        })  # fmt: skip
    return columns, problems


def missing_descriptor(
    label: str, meta: Mapping[str, Any], source: DescriptorSource, hint: str
) -> DescriptorError:
    """The error of a model without ``meta.mesh``; a meta key close to it was probably meant."""
    close = did_you_mean("mesh", [str(k) for k in meta], cutoff=0.7)
    line = source.line(("mesh",))
    return DescriptorError(
        f"{label} has no descriptor (`config.meta.mesh`) in {source.file}"
        + (f" (line {line})" if line else "") + (f"; did you mean {close!r}?" if close else ""),
        fix=(f"rename meta key {close!r} to 'mesh'; " if close else "") + hint
        + "; at least purpose, owner {team, contact}, version and status",
        path=source.file, line=line,
    )  # fmt: skip


def refuse_unknown(field: tuple[str | int, ...], wanted: list[str], names: list[str],
                    fix: str) -> None:  # fmt: skip
    """A FieldError at ``field`` if a name of ``wanted`` is not a column (did you mean)."""
    unknown = [c for c in wanted if c not in names]
    if unknown:
        close = [m for c in unknown if (m := did_you_mean(c, names))]
        raise FieldError(
            field, f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} "
            "not a column of the product"
            + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""),
            fix=f"{fix} ({', '.join(names)})",
        )  # fmt: skip
