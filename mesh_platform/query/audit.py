"""The query audit log: who read which products at which snapshots, when, how many rows.

One JSON line per query, appended to ``<state>/audit/queries.jsonl``, for allowed, refused and
failed queries alike. It never holds data: the SQL is kept with every literal replaced by ``?``,
errors by their kind, results by their row count.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, entry: dict[str, Any]) -> None:
        line = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **entry}
        data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # One O_APPEND write per line: concurrent writers interleave whole lines.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def entries(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with self.path.open() as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)
