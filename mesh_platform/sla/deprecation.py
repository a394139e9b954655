"""Deprecation notices: a deprecated product's owner and readers are told, once per event.

Events: ``deprecated`` (the descriptor says ``status: deprecated`` and ``deprecated_on`` has
come), then ``sunset_in_<n>d`` for each of ``alerts.deprecation_notice_days`` in ``mesh.yaml``
(default 14 and 3) once the sunset is that close. When several are due at once (the monitor did
not run for a while), only the closest one is sent and the earlier ones count as sent: a
consumer gets one message, not a burst.

Recipients: the owner (``team:<owner>``, with its contact), every consumer domain (dbt sources,
Python inputs: :func:`mesh_platform.sla.alerts.recipients`) and every principal with a live
grant. Notices go through the SLA alerts' sinks (log, file, webhook). What was sent is kept in
``<state>/sla/deprecations.json`` (under a file lock, replaced atomically), keyed by product,
event, date and recipient: the SLA monitor and every build call :func:`notify_deprecations`,
and a notice is delivered once whatever the number of calls. A moved sunset date is a new event.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
from collections.abc import Iterable, Iterator
from typing import Any

from mesh_platform.config import Mesh
from mesh_platform.files import write_atomically
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.registry import load_directory
from mesh_platform.sla.alerts import Notification, deliver, recipients


@contextlib.contextmanager
def _sent_state(mesh: Mesh) -> Iterator[set[str]]:
    path = mesh.state_dir / "sla" / "deprecations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".deprecations.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sent = set(json.loads(path.read_text())["sent"]) if path.is_file() else set()
        yield sent
        write_atomically(path, json.dumps({"sent": sorted(sent)}, indent=1), mode=0o600)


def due_events(
    descriptor: ProductDescriptor, today: dt.date, days: Iterable[int]
) -> list[tuple[str, str]]:
    """(event, key date) of every notice due today, earliest first: ``deprecated`` from
    ``deprecated_on``, ``sunset_in_<n>d`` from ``n`` days before ``sunset_on`` until it."""
    body = descriptor.body
    if body.status != "deprecated" or body.deprecated_on is None or today < body.deprecated_on:
        return []
    due = [("deprecated", body.deprecated_on.isoformat())]
    if body.sunset_on is not None and today <= body.sunset_on:
        left = (body.sunset_on - today).days
        for n in sorted(set(days), reverse=True):
            if left <= n:
                due.append((f"sunset_in_{n}d", body.sunset_on.isoformat()))
    return due


def _message(descriptor: ProductDescriptor, today: dt.date, *, reminder: bool) -> str:
    body = descriptor.body
    text = f"{descriptor.address} (version {body.version}) is deprecated since {body.deprecated_on}"
    if body.sunset_on is not None:
        left = (body.sunset_on - today).days
        text += f"; it is published and readable until {body.sunset_on} ({left} day(s) left)"
    if descriptor.successor:
        text += f"; move to its successor {descriptor.successor}"
    return text + (" (reminder)" if reminder else "")


def readers(mesh: Mesh, descriptor: ProductDescriptor, today: dt.date) -> list[tuple[str, Any]]:
    """(recipient, contact): the owner team first, then the consumer domains, then every other
    principal with a live grant."""
    found = recipients(mesh, str(descriptor.address))
    known = {r for r, _ in found} | {descriptor.domain}
    for grant in descriptor.body.grants:
        if grant.to not in known and not grant.expired(today):
            found.append((grant.to, None))
            known.add(grant.to)
    return found


def deprecation_notices(
    mesh: Mesh,
    descriptors: Iterable[ProductDescriptor],
    *,
    today: dt.date | None = None,
    run_id: str = "",
) -> list[Notification]:
    """The notices due for ``descriptors`` and not sent before (now recorded as sent)."""
    today = today or dt.date.today()
    days = mesh.settings.alerts.deprecation_notice_days
    out: list[Notification] = []
    with _sent_state(mesh) as sent:
        for d in descriptors:
            due = due_events(d, today, days)
            if not due:
                continue
            address = str(d.address)
            incident = f"{address}:deprecated:{d.body.deprecated_on}"
            for recipient, contact in readers(mesh, d, today):
                keys = [f"{address}|{event}|{date}|{recipient}" for event, date in due]
                fresh = [i for i, key in enumerate(keys) if key not in sent]
                if not fresh:
                    continue
                told = len(fresh) < len(keys)  # an earlier notice reached this recipient
                sent.update(keys)
                event = due[fresh[-1]][0]  # several due at once: only the closest is sent
                out.append(
                    Notification(
                        incident, event, address, recipient, contact,
                        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        _message(d, today, reminder=told), run_id,
                    )
                )  # fmt: skip
    return out


def notify_deprecations(
    mesh: Mesh,
    log: Any,
    *,
    domain: str | None = None,
    today: dt.date | None = None,
    run_id: str = "",
) -> list[Notification]:
    """Send the deprecation notices due for ``domain``'s products (all domains: None)."""
    descriptors = [
        d
        for d in load_directory(
            mesh, refresh=False, domains=None if domain is None else {domain}
        ).descriptors.values()
        if domain is None or d.domain == domain
    ]
    notes = deprecation_notices(mesh, descriptors, today=today, run_id=run_id)
    deliver(mesh, notes, log)
    return notes


def notify_safely(mesh: Mesh, log: Any, *, domain: str, run_id: str = "") -> None:
    """:func:`notify_deprecations` from a build or the SLA monitor: a failure is logged, never
    raised (the products are published whether or not their readers could be told)."""
    try:
        notify_deprecations(mesh, log, domain=domain, run_id=run_id)
    except Exception as exc:
        log.error(f"deprecation notices of domain {domain} could not be sent: {exc}")
