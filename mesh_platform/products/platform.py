"""The platform's own products: ``mesh.sla_history``, the record of every gate and freshness
evaluation (written by :mod:`mesh_platform.sla.history`), which every principal may read."""

from __future__ import annotations

from mesh_platform.addressing import PLATFORM_NAMESPACE, ProductAddress
from mesh_platform.products.descriptor import DescriptorBody, ProductDescriptor

HISTORY = ProductAddress(PLATFORM_NAMESPACE, "sla_history")
_COLUMNS = (
    ("recorded_at", "timestamp with time zone", "When the gate evaluated the batch (UTC)."),
    ("kind", "varchar", "'gate': a gate evaluation; 'freshness': a freshness evaluation."),
    ("address", "varchar", "The product's address."),
    ("run_id", "varchar", "The Dagster run (also the batch id)."),
    ("published", "boolean", "Whether the batch became main's snapshot."),
    ("snapshot_id", "bigint", "main's new snapshot, if published."),
    ("passed", "boolean", "Published, with no blocking check failed."),
    ("failed_checks", "varchar", "Blocking checks that failed, comma-separated."),
    ("checks", "varchar", "Every check's result, JSON {check: passed}."),
    ("rows", "bigint", "Rows of the staged snapshot."),
    ("seconds", "double", "Time the publication took."),
    ("detail", "varchar", "Why it was not published."),
    ("event_id", "varchar", "The event's stable id: kind, product, run and time."),
    (
        "status",
        "varchar",
        "gate: published | blocked (a check failed) | infrastructure_error (catalog or "
        "warehouse failed, main kept its snapshot); freshness: fresh | stale | "
        "infrastructure_error (the catalog could not be read).",
    ),
)


def history_descriptor() -> ProductDescriptor:
    """The descriptor of ``mesh.sla_history``: a platform product every principal may read."""
    return ProductDescriptor(
        domain=HISTORY.domain,
        name=HISTORY.product,
        description="Every gate evaluation of every product: checks, rows, snapshot, duration.",
        body=DescriptorBody(
            purpose="SLA history of the mesh: attainment, error budgets, breaches (mesh sla).",
            owner={"team": "platform", "contact": "platform@example.com"},
            version="1.0.0",
        ),
        columns=[
            {"name": n, "data_type": t, "description": d, "classification": "internal"}
            for n, t, d in _COLUMNS
        ],
        source_file="mesh_platform/sla/history.py",
        built_with="python",
    )
