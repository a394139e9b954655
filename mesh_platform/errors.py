"""One error hierarchy for the whole platform.

Every message names the thing that is wrong (a domain, product, file or value) and the fix, so a
domain team can act on it without reading platform code. Errors that can have several causes at
once (a workspace, a set of descriptors) collect every problem before raising.
"""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
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


class LoadProblem(str):
    """One problem that keeps a domain from loading: reads as its one-line text (``what (fix:
    fix)``, the form lists of problems print) and keeps its parts, so a report (``mesh check``'s
    table, JSON, JUnit) names the file, the line and the fix apart."""

    what: str
    fix: str
    file: str | None
    line: int | None
    subject: str | None  # the product it is about (an address), when it is one product's

    def __new__(
        cls, what: str, *, fix: str, file: str | None = None, line: int | None = None,
        subject: str | None = None,
    ) -> LoadProblem:  # fmt: skip
        self = super().__new__(cls, f"{what} (fix: {fix})")
        self.what, self.fix, self.file, self.line = what, fix, file, line
        self.subject = subject
        return self

    @classmethod
    def of(cls, exc: MeshError, *, subject: str | None = None) -> LoadProblem:
        """The problem an error reports (its file and, when it has one, its line)."""
        file = str(exc.path) if exc.path is not None else None
        return cls(exc.what, fix=exc.fix, file=file, line=getattr(exc, "line", None),
                   subject=subject)  # fmt: skip

    @staticmethod
    def parts(text: str) -> tuple[str, str | None]:
        """(what, fix) of a problem's text: ``what (fix: fix)`` or ``what; fix: fix``."""
        if isinstance(text, LoadProblem):
            return text.what, text.fix
        for marker, end in ((" (fix: ", ")"), ("; fix: ", "")):
            what, found, fix = text.partition(marker)
            if found:
                return what, fix.removesuffix(end) if end else fix
        return text, None


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


RUNBOOK = "docs/operations.md"
# The runbook's sections the errors point to (their headings in docs/operations.md)
DISK_FULL = "The disk filled up"
LOST_DATA_FILE = "A data file was lost"
CORRUPT_METADATA = "A product's metadata is corrupt"


def runbook(section: str) -> str:
    """Where the recovery procedure of a fault is written: ``docs/operations.md "<section>"``."""
    return f'{RUNBOOK} "{section}"'


class CatalogUnavailableError(MeshError):
    """The Iceberg catalog could not be read or written (locked, disk full, missing, not a
    catalog). Never means "not published": readers fail closed."""


def catalog_unavailable(
    uri: str, cause: BaseException | str, *, state_dir: Path | None = None
) -> CatalogUnavailableError:
    """The error of a catalog that could not be read, with the fix its cause calls for.

    ``uri``: the catalog's URI with no password (``urls.redact``); ``state_dir``: the
    mesh's, named in the fix when the catalog is the default sqlite file inside it."""
    text = one_line(cause)
    lowered = text.lower()
    where = f" (state_dir is {state_dir})" if state_dir is not None else ""
    if "locked" in lowered or "busy" in lowered:
        fix = (
            "another process holds the catalog locked (a long commit, or a stuck process "
            "holding it open): retry in a moment; if it stays locked, stop the stuck `mesh` "
            "process (`mesh build`, `mesh maintain`), then retry"
        )
    elif is_disk_full(cause) or (state_dir is not None and nearly_full(state_dir)):
        fix = (
            "the disk holding the catalog is full: free space on it (see "
            f"{runbook(DISK_FULL)}), then retry"
        )
    else:
        fix = (
            f"check state_dir in mesh.yaml or MESH_STATE_DIR{where}: it must be the folder "
            "the mesh was built in, readable by you (a mesh never built has no catalog yet: "
            "`mesh build`)"
        )
    return CatalogUnavailableError(f"the catalog at {uri} could not be read: {text}", fix=fix)


class UnreadableMetadataError(MeshError):
    """A product's current Iceberg metadata (its metadata file, a manifest list or a manifest)
    is missing or corrupt. Readers fail closed; ``mesh repair`` rolls the table back to its last
    readable metadata."""

    def __init__(self, product: str, what: str, *, file: str, fix: str | None = None) -> None:
        self.product = product
        self.file = file
        super().__init__(
            f"product {product}: {what}",
            fix=fix
            or (
                f"run `mesh repair --product {product}`: it rolls the table back to its last "
                "readable metadata and lists what it rolled back (when none is left, it says "
                f"how to republish it from its sources); see {runbook(CORRUPT_METADATA)}"
            ),
        )


class SnapshotExpiredError(MeshError):
    """A time-travel read of a snapshot that maintenance expired."""


def one_line(cause: BaseException | str) -> str:
    """An exception's message (or a text) on one line, its type named when it says little."""
    text = " ".join(str(cause).split())
    if isinstance(cause, BaseException) and (not text or len(text) < 12):
        text = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    return printable(text)


_DISK_FULL_ERRNOS = {28, 122}  # ENOSPC, EDQUOT
_DISK_FULL_TEXT = ("no space left on device", "database or disk is full", "disk quota exceeded")
_FILE_TOO_LARGE_ERRNO = 27  # EFBIG: the process's file size limit (ulimit -f) or the filesystem's
_FILE_TOO_LARGE_TEXT = "file too large"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes and contexts, each once."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return seen


def is_disk_full(exc: BaseException | str) -> bool:
    """Whether ``exc`` (or any exception in its chain) says a disk is full or a write went over
    the size limit: OSError ENOSPC/EDQUOT/EFBIG, sqlite's and DuckDB's messages of the same."""
    if isinstance(exc, str):
        lowered = exc.lower()
        return any(t in lowered for t in (*_DISK_FULL_TEXT, _FILE_TOO_LARGE_TEXT))
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno in (*_DISK_FULL_ERRNOS, _FILE_TOO_LARGE_ERRNO):
            return True
        if is_disk_full(str(item)):
            return True
    return False


def disk_full(exc: BaseException | str, state_dir: Path, *, doing: str) -> MeshError:
    """The error of a write that found no space: the disk (its mount point, free and total
    space), the path when the exception names one, and the fix. ``exc``: the exception, or
    the message a failed step reported (``is_disk_full`` said yes to it)."""

    chain: list[BaseException] = [] if isinstance(exc, str) else _chain(exc)
    path = next((Path(e.filename) for e in chain if isinstance(e, OSError) and e.filename), None)
    if path is None and (quoted := re.search(r"[\"'](/[^\"']+)[\"']", str(exc))):
        path = Path(quoted.group(1))  # DuckDB's 'Could not write file "<path>"'

    target = path if path is not None else state_dir
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    mount = probe
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        usage = shutil.disk_usage(probe)
        space = f"{usage.free / 2**20:,.1f} MiB free of {usage.total / 2**20:,.1f} MiB"
    except OSError:
        space = "free space unknown"
    limit = any(
        (isinstance(e, OSError) and e.errno == _FILE_TOO_LARGE_ERRNO)
        or _FILE_TOO_LARGE_TEXT in str(e).lower()
        for e in chain or [exc]
    )
    kind = (
        "a file reached the size limit (the process's `ulimit -f`, or the filesystem's)"
        if limit
        else "the disk is full"
    )
    causes = [e for e in chain if is_disk_full(str(e)) or isinstance(e, OSError)]
    cause = min(causes, key=lambda e: len(str(e))) if causes else exc  # sqlite's, not its wrapper's
    return DiskFullError(
        f"{doing} failed: {kind}: the disk holding {target} (filesystem mounted at {mount}: "
        f"{space}) [{one_line(cause)[:300]}]",
        fix=f"free space on {mount} (`mesh maintain` removes expired snapshots and orphan "
        "files; old dbt run artifacts are pruned by every run), or move state_dir in mesh.yaml "
        "to a larger volume, then run the command again: nothing was published half (an "
        f"Iceberg commit is all or nothing); see {runbook(DISK_FULL)}",
    )


DISK_SLACK_BYTES = 2 * 2**20  # less free space than this: the disk counts as full


def nearly_full(folder: Path) -> bool:
    """Whether the filesystem holding ``folder`` (or its nearest existing parent) has less
    than :data:`DISK_SLACK_BYTES` free: some writes on a full disk fail with another error
    (sqlite: "disk I/O error", "unable to open database file")."""

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free < DISK_SLACK_BYTES
    except OSError:
        return False


class DiskFullError(MeshError):
    """A write found no space left on the disk (or went over the file size limit)."""


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
