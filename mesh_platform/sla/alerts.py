"""Alerts to a product's owner and to every domain that consumes it, once per incident.

An incident opens when a product's gate blocks a batch (``gate_failed``), when a publication
fails for the platform's own reason (``infrastructure_error``: the catalog or the warehouse
failed, no check judged the data) or when its freshness SLA is breached (``freshness_breached``),
and closes when a later batch publishes or a fresh snapshot is available again (``recovered``).
Consumers are told what it means for them (an infrastructure error: "not published:
infrastructure error, previous snapshot still served", never that the data failed its checks);
the owner gets the cause. A freshness evaluation that could not read the catalog says nothing
about freshness: it neither opens nor closes an incident. Each opening and each recovery is
sent to every recipient exactly once, whatever the number of retries in between: the open
incidents and the deliveries are kept in ``<state>/sla/incidents.json`` (updated under a file
lock, replaced atomically).

Recipients: the owner (``team:<owner>`` with its contact) and each consumer domain, i.e. a
domain whose dbt sources bind the product (the consumption mechanism) or whose Python products
declare it as an input. Sinks are configured in ``mesh.yaml`` (``alerts.sinks``): ``log`` (the
run's log), ``file`` (JSON lines, default ``<state>/alerts/alerts.jsonl``) and ``webhook``
(HTTP POST of the JSON notification).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import consumed_products
from mesh_platform.dbt.project import MANIFEST_FILE, load_manifest
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import MeshError
from mesh_platform.files import write_atomically
from mesh_platform.products.inventory import python_inputs
from mesh_platform.products.registry import load_directory
from mesh_platform.settings import AlertSink
from mesh_platform.sla.events import GateEvent


@dataclass(frozen=True)
class Notification:
    incident: str  # <address>:<kind>:<opened at>
    event: str  # gate_failed | infrastructure_error | freshness_breached | recovered
    product: str
    recipient: str  # team:<owner> or a consumer domain
    contact: str | None
    at: str
    cause: str
    run_id: str


def recipients(mesh: Mesh, address: str) -> list[tuple[str, str | None]]:
    """(recipient, contact) for the product's owner and every consumer domain."""

    owner = address.split(".")[0]
    descriptor = load_directory(mesh, refresh=False, domains={owner}).descriptors.get(address)
    found: list[tuple[str, str | None]] = []
    if descriptor is not None:
        found.append((f"team:{descriptor.body.owner.team}", descriptor.body.owner.contact))
    consumers = set(_consumer_domains(mesh).get(address, set()))
    consumers |= {a.split(".")[0] for a, inputs in python_inputs(mesh).items() if address in inputs}
    if descriptor is not None:
        consumers.discard(descriptor.domain)
    found += [(domain, None) for domain in sorted(consumers)]
    return found


# (domain.yaml, manifest) -> ((their mtimes), the products the domain consumes): a process asks
# for a product's consumers per alert; it reads a domain's manifest again only after a prepare,
# and keeps the addresses, not the manifests (every SLA monitor asks, in every code server).
_CONSUMED: dict[tuple[Path, Path], tuple[tuple[int, int], frozenset[str]]] = {}


def _consumer_domains(mesh: Mesh) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in list_domain_names(mesh):
        files = (mesh.domains_dir / name / "domain.yaml",
                 mesh.dbt_projects_dir / name / MANIFEST_FILE)  # fmt: skip
        try:
            stamp = (files[0].stat().st_mtime_ns, files[1].stat().st_mtime_ns)
            hit = _CONSUMED.get(files)
            if hit is None or hit[0] != stamp:
                manifest = load_manifest(load_domain(mesh, name), cache=False)
                hit = (stamp, frozenset(str(a) for a, _ in consumed_products(manifest)))
                _CONSUMED[files] = hit
        except (MeshError, OSError):  # not prepared, or a broken domain.yaml: no consumer
            continue
        for address in hit[1]:
            found.setdefault(address, set()).add(name)
    return found


@contextlib.contextmanager
def _locked_state(mesh: Mesh) -> Iterator[dict[str, Any]]:
    path = mesh.state_dir / "sla" / "incidents.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".incidents.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = path.read_text() if path.is_file() else ""
        state = json.loads(before) if before else {}
        state.setdefault("open", {})
        state.setdefault("sent", [])
        yield state
        after = json.dumps(state, indent=1, sort_keys=True)
        if after != before:  # every SLA monitor evaluates every few minutes; most change nothing
            write_atomically(path, after, mode=0o600)


CONSUMER_INFRASTRUCTURE_CAUSE = (
    "not published: infrastructure error, previous snapshot still served"
)


def _opening(event: GateEvent) -> str:
    if event.kind == "freshness":
        return "freshness_breached"
    return "infrastructure_error" if event.infrastructure_error else "gate_failed"


def _cause(event: GateEvent, owner: bool) -> str:
    """What a recipient is told about an event that did not publish."""
    if event.kind == "freshness":
        return event.detail or "no fresh snapshot within the freshness SLA"
    if event.infrastructure_error:
        if not owner:
            return CONSUMER_INFRASTRUCTURE_CAUSE
        domain = event.address.split(".")[0]
        error = (event.detail.strip().splitlines() or ["no detail recorded"])[0]
        return (
            f"not published: infrastructure error ({error}); no check judged the data, main "
            f"keeps its previous snapshot (fix: correct the cause, then `mesh build --domain "
            f"{domain}`)"
        )
    return (
        f"blocked by {', '.join(event.failed)}"
        if event.failed
        else (event.detail or "not published")
    ) + "; consumers keep the previous good snapshot"


def incidents_from(mesh: Mesh, events: Iterable[GateEvent]) -> list[Notification]:
    """Open or close incidents for ``events``; the notifications not sent before."""
    out: list[Notification] = []
    with _locked_state(mesh) as state:
        sent = set(state["sent"])
        for event in sorted(events, key=lambda e: e.recorded_at):
            if event.kind == "freshness" and event.infrastructure_error:
                continue  # freshness unknown, not breached: the monitor's log says why
            key = f"{event.address}|{event.kind}"
            opened = state["open"].get(key)
            at = event.recorded_at.isoformat(timespec="seconds")
            if not event.published:
                kind = _opening(event)
                if opened is None:
                    opened = {"id": f"{event.address}:{kind}:{at}", "at": at}
                    state["open"][key] = opened
            elif opened is not None:
                del state["open"][key]
                kind = "recovered"
            else:
                continue
            for recipient, contact in recipients(mesh, event.address):
                sent_key = f"{opened['id']}|{kind}|{recipient}"
                if sent_key in sent:
                    continue  # a retry of the same incident: already told
                sent.add(sent_key)
                if kind != "recovered":
                    cause = _cause(event, owner=recipient.startswith("team:"))
                elif event.kind == "gate":
                    cause = f"published snapshot {event.snapshot_id}"
                else:
                    cause = f"fresh again ({event.detail})"
                out.append(
                    Notification(
                        opened["id"], kind, event.address, recipient, contact, at, cause,
                        event.run_id,
                    )
                )  # fmt: skip
        # What was told about a closed incident is never looked up again (a new incident has a
        # new id); keeping only the open ones' bounds the file without forgetting any of them
        # (a cap at the 10,000 alphabetically last forgot the first domains' on a large mesh:
        # their consumers were told again on every evaluation).
        still_open = {o["id"] for o in state["open"].values()}
        state["sent"] = sorted(k for k in sent if k.split("|", 1)[0] in still_open)
    return out


def deliver(mesh: Mesh, notifications: Iterable[Notification], log: Any) -> None:
    """Send every notification to every configured sink; a failing sink is logged, not fatal."""
    notifications = list(notifications)
    for sink in mesh.settings.alerts.sinks:
        for note in notifications:
            try:
                _send(mesh, sink, note, log)
            except Exception as exc:
                log.error(f"alert to {note.recipient} via {sink.type} sink failed: {exc}")


def _send(mesh: Mesh, sink: AlertSink, note: Notification, log: Any) -> None:
    body = json.dumps(asdict(note), sort_keys=True)
    if sink.type == "log":
        line = f"SLA alert [{note.event}] {note.product} -> {note.recipient}: {note.cause}"
        (log.info if note.event == "recovered" else log.warning)(line)
    elif sink.type == "file":
        path = sink.path or mesh.state_dir / "alerts" / "alerts.jsonl"
        path = path if path.is_absolute() else mesh.root / path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (body + "\n").encode())
        finally:
            os.close(fd)
    else:
        request = urllib.request.Request(
            str(sink.url), data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=sink.timeout_seconds) as response:
            if response.status >= 300:
                raise RuntimeError(f"HTTP {response.status}")


def alert_on(mesh: Mesh, events: Iterable[GateEvent], log: Any) -> list[Notification]:
    """Open/close incidents for a run's gate events and deliver what is new."""
    notes = incidents_from(mesh, events)
    deliver(mesh, notes, log)
    return notes
