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

DEFAULT_MODE = 0o644


def write_atomically(path: Path, data: str | bytes, *, mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and one rename.

    ``mode``: the new file's permission bits; ``None`` keeps those of the file it replaces
    (0644 for a new file). The temporary file never has wider bits than that, even briefly.
    Raises ``OSError`` when it cannot write; the temporary file is then removed and ``path``
    is untouched.
    """
    path = Path(path)
    if mode is None:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else DEFAULT_MODE
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
