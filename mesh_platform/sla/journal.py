"""The SLA history's journal: events the catalog refused (locked, down, disk full), one file per
refusal, ``<state>/sla/journal/*.jsonl`` (owner-only), written to ``mesh.sla_history`` by the next
record, exactly once (:mod:`mesh_platform.sla.history`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from mesh_platform.config import PRIVATE_FILE_MODE, Mesh, make_private_dir
from mesh_platform.files import write_atomically
from mesh_platform.sla.events import GateEvent, event_from_json, event_to_json


def journal_dir(mesh: Mesh) -> Path:
    """Where events the catalog refused wait for the next record (owner-only)."""
    return mesh.state_dir / "sla" / "journal"


def journal_files(mesh: Mesh) -> list[Path]:
    folder = journal_dir(mesh)
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def journal(mesh: Mesh, events: list[GateEvent], why: str) -> Path:
    """Keep ``events`` in a new journal file, written whole or not at all (a temporary file
    renamed into place: a reader never sees half of it), created 0600 in a 0700 folder: its
    details can name files and hosts."""
    folder = make_private_dir(journal_dir(mesh))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
    data = "".join(
        json.dumps({**event_to_json(e), "why": why}, sort_keys=True) + "\n" for e in events
    )
    write_atomically(path, data, mode=PRIVATE_FILE_MODE)
    return path


@dataclass(frozen=True)
class Pending:
    """Events in the journal, not yet in ``mesh.sla_history``."""

    events: list[GateEvent]
    files: list[Path]  # the journal files holding them
    why: str | None  # why the catalog refused the latest of them
    unreadable: list[Path]  # journal files that cannot be parsed: kept, never replayed

    def __len__(self) -> int:
        return len(self.events)


def pending(mesh: Mesh) -> Pending:
    """The journal's events (each once, oldest first)."""
    events: dict[str, GateEvent] = {}
    files, unreadable = [], []
    why = None
    for path in journal_files(mesh):
        try:
            entries = [json.loads(line) for line in path.read_text().splitlines() if line]
            found = [event_from_json(entry) for entry in entries]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            unreadable.append(path)
            continue
        files.append(path)
        for entry, event in zip(entries, found, strict=True):
            events.setdefault(event.event_id, event)
            why = entry.get("why") or why
    return Pending(sorted(events.values(), key=lambda e: e.recorded_at), files, why, unreadable)
