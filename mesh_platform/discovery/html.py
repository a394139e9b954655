"""``mesh catalog``: the mesh's product catalog as one static, self-contained HTML page.

``index.html`` shows every domain and product: description, purpose, owner, version and status
(deprecations), schema with classification (personal data highlighted), SLA and check status,
the last published snapshot, lineage as in-page links, and who may read it and how to ask for
access. It needs no server and loads nothing: CSS, JS and the data (JSON in
``<script id="mesh-data">``) are inline. The page is rendered from the Jinja2 templates in
``templates/`` (``catalog.html.j2`` the page, ``product.html.j2`` one product, ``_macros.html.j2``
small pieces) with autoescaping on, so every text of a descriptor is escaped; the inline script
only filters it (search box, domain filter).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from mesh_platform.addressing import PLATFORM_NAMESPACE
from mesh_platform.config import Mesh
from mesh_platform.discovery.catalog import ProductRecord, product_records, search_text
from mesh_platform.discovery.lineage_view import column_lineage
from mesh_platform.discovery.usage import UsageReport, size, usage_report
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import MeshError
from mesh_platform.files import write_atomically
from mesh_platform.products.lineage import mesh_lineage

INDEX = "index.html"
HISTORY_SHOWN = 10
_EMAIL = re.compile(r"^[^@\s\"'<>]+@[^@\s\"'<>]+$")


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
    mesh: Mesh,
    records: Sequence[ProductRecord],
    now: dt.datetime | None = None,
    usage: UsageReport | None = None,
) -> dict[str, Any]:
    """Everything the page shows, JSON-able: domains and product records (``to_dict``), each
    with its search text, the other major versions of the same product and, given ``usage``,
    its usage and cost (``ProductUsage.to_dict`` with the window's ``days``)."""
    now = now or dt.datetime.now(dt.UTC)
    usages = {u.address: u for u in usage.products} if usage else {}
    versions: dict[tuple[str, str], list[ProductRecord]] = {}
    for r in records:
        versions.setdefault((r.domain, r.descriptor.name), []).append(r)
    products = []
    lineage = mesh_lineage(mesh)
    for r in records:
        item = r.to_dict(now)
        item["column_lineage"] = column_lineage(lineage, r.address)
        item["search_text"] = search_text(r)
        item["versions"] = [
            {"address": o.address, "version": o.descriptor.body.version,
             "status": o.descriptor.body.status}
            for o in versions[(r.domain, r.descriptor.name)]
        ]  # fmt: skip
        if usage is not None and r.address in usages:
            item["usage"] = {**usages[r.address].to_dict(), "days": usage.days}
        products.append(item)
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "domains": _domain_specs(mesh, (r.domain for r in records)),
        "products": products,
    }


# -- rendering: Jinja2 templates in templates/, every value autoescaped ---------------------


def _when(iso: str | None) -> str:
    return (iso or "").replace("T", " ").replace("+00:00", " UTC")


def _rows(n: int | None) -> str:
    return f"{n:,}" if n is not None else "unknown"


_TONES = {
    "holds": "good", "passed": "good", "active": "good",
    "violated": "bad", "failed": "bad",
    "warning": "warn", "deprecated": "warn", "draft": "warn",
}  # fmt: skip


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=lambda value: "" if value is None else value,
    )
    env.filters |= {
        "product_id": product_id,
        "when": _when,
        "rows": _rows,
        "size": size,
        "tone": lambda state: _TONES.get(state, ""),
    }
    env.tests |= {
        "email": lambda text: bool(_EMAIL.match(text)),
        "pii": lambda classification: (classification or "").startswith("pii:"),
    }
    return env


_ENV = _environment()


def render_catalog(data: dict[str, Any], today: dt.date | None = None) -> str:
    """The page for :func:`catalog_data`'s ``data``."""
    today = today or dt.date.fromisoformat(data["generated_at"][:10])
    products = data["products"]
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for p in products:
        by_domain.setdefault(p["domain"], []).append(p)
    sections = [(domain, by_domain.get(domain["name"], [])) for domain in data["domains"]]
    count = f"{len(products)} products in {len(sections)} domains"
    published = sum(1 for p in products if p["published"])
    return _ENV.get_template("catalog.html.j2").render(
        title="Data mesh · product catalog",
        summary=f"{count} · {published} published · generated {_when(data['generated_at'])}",
        count=count,
        sections=sections,
        known={p["address"] for p in products},
        today=today.isoformat(),  # grants expire on ISO dates: compared as text
        history_shown=HISTORY_SHOWN,
        generated_at=data["generated_at"],
        data=markupsafe.Markup(script_json(data)),  # safe in <script>: see script_json
    )


def write_catalog(mesh: Mesh, output_dir: Path, *, now: dt.datetime | None = None) -> Path:
    """Write ``output_dir/index.html`` (creating the directory) atomically; return its path.

    The page is rendered before anything is written; it then replaces any previous catalog in
    one rename, so a reader never sees a half-written page.
    """
    now = now or dt.datetime.now(dt.UTC)
    records = product_records(mesh)
    usage = usage_report(mesh, [r.address for r in records], now=now)
    page = render_catalog(catalog_data(mesh, records, now, usage), now.date())
    output_dir = Path(output_dir)
    target = output_dir / INDEX
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(target, page, mode=0o644)
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
