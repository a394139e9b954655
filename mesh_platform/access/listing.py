"""What a principal may read of each product, as `mesh products --as` lists it: its access
(owner, granted with its row filter, or why not) and the columns it reads, masked ones marked.

Decisions layer: imports the access decision (:func:`~mesh_platform.access.grants.plan_read`)
and the descriptors, nothing of Dagster.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from mesh_platform.access.grants import plan_read
from mesh_platform.access.principals import AccessDeniedError, Principal
from mesh_platform.products.descriptor import ProductDescriptor


@dataclass(frozen=True)
class ProductAccess:
    state: str  # "owner", "granted" (with " (rows: <filter>)"), or why access is denied
    columns: list[str] = field(default_factory=list)  # readable ones, masked ones ending in "*"


def product_access(
    principal: Principal, descriptor: ProductDescriptor, *, today: dt.date | None = None
) -> ProductAccess:
    """What ``principal`` may read of ``descriptor``'s product (its declared columns)."""
    try:
        plan = plan_read(
            principal,
            descriptor,
            stored_columns=[c.name for c in descriptor.columns],
            today=today or dt.date.today(),
        )
    except AccessDeniedError as exc:
        return ProductAccess(exc.what.split(": ", 1)[-1])
    state = "owner" if plan.owner else "granted"
    if plan.row_filter:
        state += f" (rows: {plan.row_filter})"
    masked = {c.name for c in descriptor.columns if c.masking} | set(plan.masks)
    return ProductAccess(state, [c + ("*" if c in masked else "") for c in plan.columns])
