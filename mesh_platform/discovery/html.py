"""``mesh catalog``: the mesh's product catalog as one static, self-contained HTML page.

``index.html`` shows every domain and product: description, purpose, owner, version and status
(deprecations), schema with classification (personal data highlighted), SLA and check status,
the last published snapshot, lineage as in-page links, and who may read it and how to ask for
access. It needs no server and loads nothing: CSS, JS and the data (JSON in
``<script id="mesh-data">``) are inline. The page is rendered here with every text escaped; the
inline script only filters it (search box, domain filter).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from mesh_platform.addressing import PLATFORM_NAMESPACE
from mesh_platform.config import Mesh
from mesh_platform.discovery.catalog import ProductRecord, product_records, search_text
from mesh_platform.errors import MeshError

INDEX = "index.html"
HISTORY_SHOWN = 10
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_EMAIL = re.compile(r"^[^@\s\"'<>]+@[^@\s\"'<>]+$")


def _h(value: Any) -> str:
    """Text as HTML (element content or a quoted attribute value)."""
    return escape("" if value is None else str(value), quote=True)


def script_json(value: Any) -> str:
    """JSON safe inside ``<script>``: no ``<``, ``>`` or ``&`` (so no ``</script>``, no
    ``<!--``), written as JSON escapes that JSON.parse reads back to the same text."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def product_id(address: str) -> str:
    return f"product-{address}"


def _domain_specs(mesh: Mesh, names: Iterable[str]) -> list[dict[str, Any]]:
    from mesh_platform.domain import list_domain_names, load_domain

    domains = []
    for name in sorted(set(list_domain_names(mesh)) | set(names)):
        if name == PLATFORM_NAMESPACE:
            domains.append(
                {
                    "name": name,
                    "description": "The platform's own tables (the SLA history of every "
                    "product), readable by every principal.",
                    "kind": "platform",
                    "owners": ["team:platform"],
                }
            )
            continue
        try:
            spec = load_domain(mesh, name).spec
        except MeshError as exc:  # still list its products; say why the domain is incomplete
            domains.append({"name": name, "description": exc.what, "kind": None, "owners": []})
            continue
        domains.append(
            {
                "name": name,
                "description": spec.description.strip(),
                "kind": spec.kind,
                "owners": list(spec.owners),
            }
        )
    return domains


def catalog_data(
    mesh: Mesh, records: Sequence[ProductRecord], now: dt.datetime | None = None
) -> dict[str, Any]:
    """Everything the page shows, JSON-able: domains and product records (``to_dict``), each
    with its search text and the other major versions of the same product."""
    now = now or dt.datetime.now(dt.UTC)
    versions: dict[tuple[str, str], list[ProductRecord]] = {}
    for r in records:
        versions.setdefault((r.domain, r.descriptor.name), []).append(r)
    products = []
    for r in records:
        item = r.to_dict(now)
        item["search_text"] = search_text(r)
        item["versions"] = [
            {"address": o.address, "version": o.descriptor.body.version,
             "status": o.descriptor.body.status}
            for o in versions[(r.domain, r.descriptor.name)]
        ]  # fmt: skip
        products.append(item)
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "domains": _domain_specs(mesh, (r.domain for r in records)),
        "products": products,
    }


# -- rendering (every text through _h) ------------------------------------------------------


def _badge(text: str, tone: str = "") -> str:
    return f'<span class="badge {tone}">{_h(text)}</span>'


_TONES = {
    "holds": "good", "passed": "good", "active": "good",
    "violated": "bad", "failed": "bad",
    "warning": "warn", "deprecated": "warn", "draft": "warn",
}  # fmt: skip


def _tone(state: str) -> str:
    return _TONES.get(state, "")


def _contact(contact: str) -> str:
    if _EMAIL.match(contact):
        return f'<a href="mailto:{_h(contact)}">{_h(contact)}</a>'
    return _h(contact)


def _product_link(address: str, known: set[str]) -> str:
    if address in known:
        return f'<a class="lineage-link" href="#{_h(product_id(address))}">{_h(address)}</a>'
    return f'{_h(address)} <span class="none">(not in this catalog)</span>'


def _when(iso: str | None) -> str:
    return (iso or "").replace("T", " ").replace("+00:00", " UTC")


def _rows(n: int | None) -> str:
    return f"{n:,}" if n is not None else "unknown"


def _table(head: Sequence[str], rows: Iterable[str], cls: str) -> str:
    ths = "".join(f"<th>{_h(h)}</th>" for h in head)
    return (
        f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _render_product(p: dict[str, Any], known: set[str], today: dt.date) -> str:
    address = p["address"]
    sla = p["sla"]
    deprecated = p["status"] == "deprecated"
    head = [
        f'<h3><a href="#{_h(product_id(address))}">{_h(address)}</a></h3>',
        _badge(f"v{p['version']}"),
        _badge(p["status"], _tone(p["status"])),
        _badge(f"SLA {sla['status']}", _tone(sla["status"])),
        _badge(f"checks {p['check_status']}", _tone(p["check_status"])),
        _badge(
            "published" if p["published"] else "not published", "" if p["published"] else "warn"
        ),
    ]
    parts = [f"<header>{' '.join(head)}</header>", f'<p class="urn mono">{_h(p["urn"])}</p>']
    if deprecated or p["deprecated_on"]:
        text = "Deprecated"
        if p["deprecated_on"]:
            text += f" since {p['deprecated_on']}"
        if p["sunset_on"]:
            text += f", sunset on {p['sunset_on']}"
        newer = [v for v in p["versions"] if v["address"] != address and v["status"] == "active"]
        tail = ""
        if newer:
            links = ", ".join(_product_link(v["address"], known) for v in newer)
            tail = f" Use {links} instead."
        parts.append(f'<p class="deprecation">{_h(text)}.{tail}</p>')
    parts.append(f'<p class="description">{_h(p["description"])}</p>')

    facts = [
        ("purpose", _h(p["purpose"])),
        ("owner", f"team {_h(p['owner']['team'])} · {_contact(p['owner']['contact'])}"),
        ("built with", _h(p["built_with"])),
        ("descriptor", f"<code>{_h(p['source_file'])}</code>"),
    ]
    if p["tags"]:
        facts.append(("tags", " ".join(_badge(t) for t in p["tags"])))
    if p["partition_by"]:
        part = p["partition_by"]
        facts.append(("partitioned", _h(f"by {part.get('granularity')} of {part.get('column')}")))
    if len(p["versions"]) > 1:
        items = [
            f"{_product_link(v['address'], known)} {_h(v['version'])} ({_h(v['status'])})"
            for v in p["versions"]
        ]
        facts.append(("versions", ", ".join(items)))
    parts.append(
        '<dl class="facts">' + "".join(f"<dt>{_h(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    )

    cur = p["current"]
    if cur:
        published = (
            '<dl class="facts">'
            f'<dt>snapshot</dt><dd class="mono">{_h(cur["snapshot_id"])}</dd>'
            f"<dt>published</dt><dd>{_h(_when(cur['published_at']))}</dd>"
            f"<dt>rows</dt><dd>{_h(_rows(cur['rows']))}</dd>"
            f'<dt>batch</dt><dd class="mono">{_h(cur["batch_id"] or "")}</dd>'
            "</dl>"
        )
    else:
        published = '<p class="none">Not published yet: no snapshot on main.</p>'
    fresh = sla["freshness_state"]
    fresh_text = fresh + (f" ({sla['freshness_detail']})" if sla["freshness_detail"] else "")
    sla_items = [
        f"<dt>status</dt><dd>{_badge(sla['status'], _tone(sla['status']))}</dd>",
        f"<dt>freshness</dt><dd>{_badge(fresh, _tone(fresh))} {_h(fresh_text)}</dd>",
        f"<dt>checks</dt><dd>{_badge(p['check_status'], _tone(p['check_status']))}</dd>",
    ]
    if sla["volume"]:
        volume = ", ".join(
            f"{k}: {'yes' if v is True else 'no' if v is False else v}"
            for k, v in sla["volume"].items()
        )
        sla_items.append(f"<dt>volume</dt><dd>{_h(volume)}</dd>")
    sla_html = f'<dl class="facts">{"".join(sla_items)}</dl>'
    if sla["expectations"]:
        sla_html += (
            "<details><summary>expectations checked on every batch "
            f"({len(sla['expectations'])})</summary><ul>"
            + "".join(f'<li class="mono">{_h(e)}</li>' for e in sla["expectations"])
            + "</ul></details>"
        )
    if p["checks"]:
        sla_html += (
            f"<details><summary>latest check results ({len(p['checks'])})</summary>"
            + _table(
                ("check", "status", "at"),
                (
                    f'<tr><td class="mono">{_h(c["name"])}</td>'
                    f"<td>{_badge(c['status'], _tone(c['status']))}</td>"
                    f"<td>{_h(_when(c['at']))}</td></tr>"
                    for c in p["checks"]
                ),
                "checks",
            )
            + "</details>"
        )
    parts.append(
        '<div class="cards">'
        f'<section class="card published"><h4>Last published</h4>{published}</section>'
        f'<section class="card sla"><h4>SLA</h4>{sla_html}</section>'
        "</div>"
    )

    columns = []
    for c in p["columns"]:
        classification = c["classification"] or ""
        pii = classification.startswith("pii:")
        label = _h(classification or "unclassified")
        if pii:
            label = f"{_badge('personal data', 'pii-badge')} {label}"
        masking = f"{c['masking']} at {c['masking_at']}" if c["masking"] else ""
        columns.append(
            f'<tr class="{"pii" if pii else "column"}" data-column="{_h(c["name"])}"'
            f' data-classification="{_h(classification)}">'
            f'<td class="column-name mono">{_h(c["name"])}</td>'
            f'<td class="mono">{_h(c["type"] or "")}</td>'
            f"<td>{label}</td><td>{_h(masking)}</td><td>{_h(c['description'])}</td></tr>"
        )
    n_pii = sum(1 for c in p["columns"] if (c["classification"] or "").startswith("pii:"))
    pii_note = f" · {n_pii} personal-data column(s)" if n_pii else ""
    parts.append(
        f'<section class="schema"><h4>Schema (the enforced contract){_h(pii_note)}</h4>'
        + _table(("column", "type", "classification", "masking", "description"), columns, "schema")
        + "</section>"
    )

    def links(addresses: list[str], empty: str) -> str:
        if not addresses:
            return f'<span class="none">{_h(empty)}</span>'
        return (
            '<ul class="links">'
            + "".join(f"<li>{_product_link(a, known)}</li>" for a in addresses)
            + "</ul>"
        )

    upstream = links(p["upstream"], "none: built from its domain's own sources")
    downstream = links(p["downstream"], "no product is built from it")
    parts.append(
        '<section class="lineage"><h4>Lineage</h4><dl class="facts">'
        f'<dt>upstream</dt><dd class="upstream">{upstream}</dd>'
        f'<dt>downstream</dt><dd class="downstream">{downstream}</dd>'
        "</dl></section>"
    )

    grants = []
    for g in p["grants"]:
        expired = dt.date.fromisoformat(g["expires"]) < today
        expires = g["expires"] + (" (expired)" if expired else "")
        grants.append(
            f'<tr class="{"expired" if expired else "grant"}">'
            f'<td class="principal mono">{_h(g["to"])}</td>'
            f'<td class="purpose">{_h(g["purpose"])}</td><td>{_h(expires)}</td>'
            f"<td>{_h(', '.join(g['columns']) if g['columns'] else 'all')}</td>"
            f'<td class="mono">{_h(g["rows"] or "all")}</td></tr>'
        )
    grants_html = (
        _table(("principal", "purpose", "expires", "columns", "rows"), grants, "grants")
        if grants
        else '<p class="none">No grants: only the owning team may read it.</p>'
    )
    owner = p["owner"]
    read = f'mesh query --as <principal> "SELECT * FROM {address}"'
    parts.append(
        '<section class="access"><h4>Who may read it</h4>'
        "<p>Deny by default: the owning team always, others only with a grant.</p>"
        f"{grants_html}"
        '<div class="request"><strong>Request access:</strong> '
        f"ask team {_h(owner['team'])} ({_contact(owner['contact'])}) for a grant (principal, "
        f"purpose, expiry, optionally columns and rows) in "
        f"<code>{_h(p['source_file'])}</code>. Then read it with "
        f"<code>{_h(read)}</code>."
        "</div></section>"
    )

    history = p["history"][-HISTORY_SHOWN:]
    if history:
        rows = (
            f'<tr><td class="mono">{_h(s["snapshot_id"])}</td>'
            f"<td>{_h(_when(s['published_at']))}</td><td>{_h(_rows(s['rows']))}</td>"
            f'<td class="mono">{_h(s["batch_id"] or "")}</td></tr>'
            for s in reversed(history)
        )
        parts.append(
            '<details class="history"><summary>Snapshots on main (last '
            f"{len(history)} of {len(p['history'])})</summary>"
            + _table(("snapshot", "published", "rows", "batch"), rows, "history")
            + "</details>"
        )
    cls = "product deprecated" if deprecated else "product"
    return (
        f'<article class="{cls}" id="{_h(product_id(address))}" data-address="{_h(address)}"'
        f' data-domain="{_h(p["domain"])}">' + "".join(parts) + "</article>"
    )


def render_catalog(data: dict[str, Any], today: dt.date | None = None) -> str:
    """The page for :func:`catalog_data`'s ``data``."""
    today = today or dt.date.fromisoformat(data["generated_at"][:10])
    products = data["products"]
    known = {p["address"] for p in products}
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for p in products:
        by_domain.setdefault(p["domain"], []).append(p)

    sections, toc, options = [], [], []
    empty = '<p class="none">No products yet.</p>'
    for domain in data["domains"]:
        name = domain["name"]
        mine = by_domain.get(name, [])
        owners = " · ".join(_contact(o) if "@" in o else _h(o) for o in domain["owners"])
        kind = _badge(domain["kind"]) if domain["kind"] else ""
        sections.append(
            f'<section class="domain" id="domain-{_h(name)}" data-domain="{_h(name)}">'
            f"<header><h2>{_h(name)}</h2> {kind} "
            f"{_badge(f'{len(mine)} product' + ('s' if len(mine) != 1 else ''))}"
            f'<p class="domain-description">{_h(domain["description"])}</p>'
            f'<p class="domain-owners">owners: {owners or _h("none declared")}</p></header>'
            + ("".join(_render_product(p, known, today) for p in mine) or empty)
            + "</section>"
        )
        options.append(f'      <option value="{_h(name)}">{_h(name)}</option>')
        if not mine:
            continue
        toc.append(
            f'<div data-toc-domain="{_h(name)}"><h2>{_h(name)}</h2><ul>'
            + "".join(
                f'<li data-address="{_h(p["address"])}"><a href="#{_h(product_id(p["address"]))}">'
                f"{_h(p['name'])}</a>{' ⚠' if p['status'] == 'deprecated' else ''}</li>"
                for p in mine
            )
            + "</ul></div>"
        )

    n_domains = len(sections)
    count = f"{len(products)} products in {n_domains} domains"
    published = sum(1 for p in products if p["published"])
    values = {
        "title": _h("Data mesh · product catalog"),
        "summary": _h(f"{count} · {published} published · generated {_when(data['generated_at'])}"),
        "domain_options": "\n".join(options),
        "toc": "\n".join(toc),
        "count": _h(count),
        "domains": "\n".join(sections) or '<p class="none">This mesh has no products yet.</p>',
        "generated_at": _h(_when(data["generated_at"])),
        "data": script_json(data),
    }
    template = resources.files(__package__).joinpath("templates", "catalog.html").read_text("utf-8")
    # One pass: a value that happens to contain "{{x}}" is never substituted again.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_catalog(mesh: Mesh, output_dir: Path, *, now: dt.datetime | None = None) -> Path:
    """Write ``output_dir/index.html`` (creating the directory) atomically; return its path.

    The page is rendered before anything is written; it then replaces any previous catalog in
    one rename, so a reader never sees a half-written page.
    """
    now = now or dt.datetime.now(dt.UTC)
    page = render_catalog(catalog_data(mesh, product_records(mesh), now), now.date())
    output_dir = Path(output_dir)
    target = output_dir / INDEX
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(target, page)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MeshError(
            f"cannot write the catalog: {reason}",
            fix="choose a writable directory for --output (it is created if missing)",
            path=exc.filename or output_dir,
        ) from exc
    return target


def catalog_command(mesh: Mesh, output: Path) -> Path:
    """``mesh catalog --output DIR``: write the catalog; the path of its ``index.html``."""
    return write_catalog(mesh, output).resolve()
