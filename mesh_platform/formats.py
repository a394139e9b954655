"""Text formats the platform reads: durations, and YAML files validated into pydantic models.

Ground layer: imports only the standard library, yaml, pydantic and :mod:`mesh_platform.errors`.

Durations come in two grammars:

* a descriptor's (``sla.freshness.max_age``): a whole number and a unit m, h or d (``90m``,
  ``26h``, ``7d``, ``12 h``); zero is allowed. :func:`parse_duration`.
* a command-line option's (``--retain``, ``--since``): any decimal number and a unit s, m, h or
  d (``90s``, ``1.5h``, ``7d``), longer than zero. ``parse_duration(text, command_line=True)``.

domain.yaml, principals.yaml, governance.yaml and a Python product's descriptor are read and
validated by :func:`load_yaml_model`; mesh.yaml (validated later, merged with the environment) is
parsed by :func:`read_yaml`. The caller chooses the
error class and the wording, so each file keeps the messages its users know; the loader does the
reading, the parsing and the catching once. :class:`YamlLines` keeps a document's nodes with
their lines, so a message about a field can name the line it is written on.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from mesh_platform.errors import MeshError

__all__ = [
    "YamlLines",
    "did_you_mean",
    "load_yaml_model",
    "located_errors",
    "model_at",
    "model_keys",
    "parse_duration",
    "read_yaml",
]

# Full match (\A...\Z, fullmatch): `$` would accept a trailing newline; ASCII: no other digits.
_DURATION = re.compile(r"\A([0-9]+) *(m|h|d)\Z", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str, *, command_line: bool = False) -> dt.timedelta:
    """``'90m'``, ``'26h'``, ``'7d'`` -> timedelta; ValueError naming the accepted form otherwise.

    ``command_line=True``: the grammar of a command-line option (``'90s'``, ``'1.5h'``), which
    must be longer than zero; the ValueError's text is the message to show the user.
    """
    if command_line:
        try:
            value = dt.timedelta(**{_UNITS[text[-1]]: float(text[:-1])})
        except (KeyError, ValueError, IndexError, OverflowError):
            raise ValueError(f"{text!r}: use a number and a unit s, m, h or d (e.g. 7d)") from None
        if value <= dt.timedelta(0):
            raise ValueError(f"{text!r}: must be longer than zero")
        return value
    match = _DURATION.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"duration {text!r} must look like '90m', '26h' or '7d'")
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


ModelT = TypeVar("ModelT", bound=BaseModel)
# Builds the error to raise from (message, fix=..., path=...): an error class of the platform, or
# a functools.partial of one (``partial(DomainError, name)``).
ErrorFactory = Callable[..., MeshError]


def describe_duration(delta: dt.timedelta) -> str:
    """A duration as people read it beside an SLA: minutes under an hour (a ``2m`` SLA), hours
    under two days, days beyond."""
    hours = delta.total_seconds() / 3600
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def read_yaml(
    path: Path,
    *,
    what: str,
    error: ErrorFactory = MeshError,
    shown: Path | str | None = None,
    text: str | None = None,
    syntax: str = "{what} is not valid YAML ({exc})",
    syntax_fix: str = "fix the YAML syntax",
    missing_fix: str | None = None,
) -> Any:
    """The parsed YAML document of ``path`` (or of ``text``, already read from it).

    Errors are ``error(message, fix=..., path=shown or path)``. ``what`` names the file in
    messages; ``syntax`` words a YAML error, with the fields ``what``, ``exc`` (the YAML error),
    ``problem`` (its short problem) and ``line`` (``' line N'``, or ``''`` when unknown).
    ``missing_fix``: say a missing file "does not exist" with this fix (otherwise a missing file
    is a file that "cannot be read").
    """
    where = path if shown is None else shown
    if text is None:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            if missing_fix is not None and isinstance(exc, FileNotFoundError):
                raise error(f"{what} does not exist", fix=missing_fix, path=where) from None
            message = f"{what} cannot be read ({exc})"
            raise error(message, fix="make it a readable UTF-8 text file", path=where) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        message = syntax.format(
            what=what,
            exc=exc,
            problem=getattr(exc, "problem", exc),
            line=f" line {mark.line + 1}" if mark else "",
        )
        raise error(message, fix=syntax_fix, path=where) from exc


def load_yaml_model(
    path: Path,
    model: type[ModelT],
    *,
    what: str,
    fix: str,
    error: ErrorFactory = MeshError,
    invalid: str = "{what} is invalid: {problems}",
    problems: Callable[[ValidationError], str] | None = None,
    empty: Any = None,
    shown: Path | str | None = None,
    text: str | None = None,
    syntax: str = "{what} is not valid YAML ({exc})",
    syntax_fix: str = "fix the YAML syntax",
    missing_fix: str | None = None,
) -> ModelT:
    """Read ``path`` and validate it into ``model`` (reading and YAML errors: :func:`read_yaml`,
    which takes ``what``, ``error``, ``shown``, ``text``, ``syntax``, ``syntax_fix`` and
    ``missing_fix``).

    An invalid document raises ``error(message, fix=fix, path=shown or path)``, the message being
    ``invalid`` formatted with ``what`` and ``problems`` (the pydantic errors, by default
    ``line N: field[0].path: message`` joined by '; ', with "did you mean" for a mistyped key:
    :func:`located_errors`). ``empty``: what an empty document (nothing, or a false
    value such as ``[]``) is validated as, e.g. ``{}`` when every field has a default; by default
    the document is validated as it is.
    """
    if text is None:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            text = None  # read_yaml says why
    raw = read_yaml(
        path, what=what, error=error, shown=shown, text=text, syntax=syntax,
        syntax_fix=syntax_fix, missing_fix=missing_fix,
    )  # fmt: skip
    try:
        return model.model_validate(raw if raw or empty is None else empty)
    except ValidationError as exc:
        listed = problems(exc) if problems else located_errors(exc, model, YamlLines(text or ""))
        message = invalid.format(what=what, problems=listed)
        raise error(message, fix=fix, path=path if shown is None else shown) from exc


# One step into a YAML document: a mapping's key, a sequence's index, or (key, value): the item
# of a sequence of mappings whose ``key`` is ``value`` (``("name", "email")``: the column email).
Step = str | int | tuple[str, str]


class YamlLines:
    """A YAML document's nodes with their lines (PyYAML's composer keeps each node's marks).

    Validation works on plain values, which know no lines; this is how a message names the line
    a field is written on. A document that does not parse has no lines (every lookup is None):
    its syntax error is reported where it is read.
    """

    def __init__(self, text: str) -> None:
        try:
            self.root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self.root = None

    @classmethod
    def of_file(cls, path: Path) -> YamlLines:
        try:
            return cls(path.read_text())
        except (OSError, UnicodeDecodeError):
            return cls("")

    @staticmethod
    def child(node: yaml.Node | None, step: Step) -> tuple[yaml.Node, yaml.Node] | None:
        """(the node naming the step, its value): a mapping's key node, or a sequence's item."""
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == step:
                    return key, value
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            if 0 <= step < len(node.value):
                return node.value[step], node.value[step]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, tuple):
            key, wanted = step
            for item in node.value:
                found = YamlLines.child(item, key)
                if found and isinstance(found[1], yaml.ScalarNode) and found[1].value == wanted:
                    return item, item
        return None

    def find(self, steps: tuple[Step, ...], node: yaml.Node | None = None) -> yaml.Node | None:
        """The value node at ``steps`` from ``node`` (default: the root), None if absent."""
        node = self.root if node is None else node
        for step in steps:
            found = self.child(node, step)
            if found is None:
                return None
            node = found[1]
        return node

    def line(
        self, steps: tuple[Step, ...], node: yaml.Node | None = None
    ) -> tuple[int | None, int]:
        """(1-based line, steps found): the line of the deepest step present (a key's line, an
        item's first line), so a missing field points at the block it belongs in."""
        node = self.root if node is None else node
        line = node.start_mark.line + 1 if node is not None else None
        for depth, step in enumerate(steps):
            found = self.child(node, step)
            if found is None:
                return line, depth
            line, node = found[0].start_mark.line + 1, found[1]
        return line, len(steps)

    def strings(self, node: yaml.Node | None = None) -> Iterator[tuple[tuple[Step, ...], int, str]]:
        """(path, line, text) of every string value of the document (keys excluded); the
        line its text starts on."""
        todo: list[tuple[yaml.Node | None, tuple[Step, ...]]] = [
            (self.root if node is None else node, ())
        ]
        while todo:
            current, path = todo.pop()
            if isinstance(current, yaml.MappingNode):
                todo += [(v, (*path, str(k.value))) for k, v in reversed(current.value)]
            elif isinstance(current, yaml.SequenceNode):
                todo += [(v, (*path, i)) for i, v in reversed(list(enumerate(current.value)))]
            elif isinstance(current, yaml.ScalarNode) and current.tag.endswith(":str"):
                block = current.style in ("|", ">")  # its text starts below the indicator
                yield path, current.start_mark.line + 1 + block, current.value


def model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model validating the value at ``loc`` of ``model`` (list positions
    skipped), None when it is not a model."""
    current: type[BaseModel] | None = model
    for step in loc:
        if isinstance(step, int):
            continue
        info = current.model_fields.get(str(step)) if current else None
        current = _inner_model(info.annotation) if info else None
        if current is None:
            return None
    return current


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _inner_model(arg)) is not None:
            return found
    return None


def model_keys(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts: its fields and their aliases."""
    keys = []
    for name, info in model.model_fields.items():
        keys += [name] + ([info.alias] if info.alias else [])
    return keys


def did_you_mean(word: str, choices: Sequence[str], *, cutoff: float = 0.6) -> str | None:
    """The choice closest to a mistyped ``word`` (difflib), None when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def located_errors(exc: ValidationError, model: type[BaseModel], lines: YamlLines) -> str:
    """The pydantic errors of a YAML document, each as ``line N: field: message`` (the line of
    the field, or of the block it is missing from; list items as ``[i]``), with "did you mean"
    for a mistyped key; joined by '; '."""
    found = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = lines.line(loc)[0] if loc and lines.root is not None else None
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and (parent := model_at(model, loc[:-1])):
            close = did_you_mean(str(loc[-1]), model_keys(parent))
            message = f"unknown key {loc[-1]!r}" + (f"; did you mean {close!r}?" if close else "")
        found.append((f"line {line}: " if line else "") + f"{field or '<root>'}: {message}")
    return "; ".join(found)
