"""One error hierarchy for the whole platform.

Every message names the thing that is wrong (a domain, product, file or value) and the fix, so a
domain team can act on it without reading platform code. Errors that can have several causes at
once (a workspace, a set of descriptors) collect every problem before raising.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def format_validation_error(exc: ValidationError) -> str:
    """One line per pydantic problem, as ``field.path: message``, joined by '; '."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
    )


def printable(text: object) -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences, carriage
    returns, bidi overrides...) are shown escaped (``\\x1b``, ``\\u202e``); newlines and tabs
    are kept only when ``text`` is not a single value (use :func:`printable_value`)."""
    import unicodedata

    out = []
    for char in str(text):
        if char in "\n\t" or unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def printable_value(value: object) -> str:
    """One value (a cell, a name) on one line: newlines and tabs escaped too."""
    return printable(str(value).replace("\t", "\\t").replace("\n", "\\n"))


class MeshError(Exception):
    """Base of every error the platform raises on purpose."""

    def __init__(self, what: str, *, fix: str, path: Path | str | None = None) -> None:
        self.what = what
        self.fix = fix
        self.path = Path(path) if path is not None else None
        location = f" [{self.path}]" if self.path is not None else ""
        super().__init__(f"{what}{location}\n  fix: {fix}")


class MeshConfigError(MeshError):
    """The mesh configuration (mesh.yaml or MESH_* environment variables) is invalid."""


class StateDirError(MeshError):
    """The state directory cannot be created or written."""


class DomainError(MeshError):
    """A domain is missing, misdeclared, or its dbt project is broken."""

    def __init__(self, domain: str, what: str, *, fix: str, path: Path | str | None = None) -> None:
        self.domain = domain
        super().__init__(f"domain '{domain}': {what}", fix=fix, path=path)


class DbtExecutableNotFoundError(MeshError):
    """The dbt executable is not installed where the platform looks for it."""


class InvalidNameError(MeshError):
    """A domain, product or column name breaks the naming rule."""


class ProductNotPublishedError(MeshError):
    """A consumed product has no published snapshot yet."""


class ConcurrentPublishError(MeshError):
    """Main moved after a batch was staged; publishing it would drop the newer commits."""


class WorkspaceError(MeshError):
    """workspace.yaml and domains/ disagree. Lists every problem at once."""

    def __init__(self, problems: Iterable[str], *, path: Path) -> None:
        self.problems = list(problems)
        listing = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"workspace.yaml has {len(self.problems)} problem(s):\n{listing}",
            fix="make workspace.yaml list exactly the folders in domains/ that hold a "
            "domain.yaml (or run `mesh workspace --write` to regenerate it)",
            path=path,
        )
