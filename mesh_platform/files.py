"""Atomic file writes: a reader sees the previous file or the complete new one, never a part.

The one way the platform replaces a local file in place (exports, the HTML catalog, cut markers):
the content goes to a temporary file beside the target, is flushed to disk, and takes the
target's name in one ``os.replace``. Ground layer: standard library only.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o077)  # elsewhere: set and restore (briefly the strictest value)
    os.umask(current)
    return current


def write_atomically(path: Path, data: str | bytes, *, mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and one rename.

    ``mode``: the new file's permission bits; ``None`` keeps those of the file it replaces
    (for a new file: 0666 less the process's umask, as ``open`` would create it; 0600 in the
    platform's processes, which run with umask 077). The temporary file never has wider bits
    than that, even briefly.
    Raises ``OSError`` when it cannot write; the temporary file is then removed and ``path``
    is untouched.
    """
    path = Path(path)
    if mode is None:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # mkstemp creates 0600
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
