"""The access decision: what one principal sees of one product, and the SQL that serves it.

Deny by default. A principal reads a product if it acts as the owning domain (owners see every
column and row in clear), or if a grant in the product's descriptor names it (directly or
through ``member_of``) and has not expired. Several grants add up: the union of their columns,
the OR of their row filters (a grant without ``rows`` lifts the filter). A personal-data column
stored in clear (``masking_at: read``) is served masked unless the principal is cleared for its
class; one without a masking rule is served redacted to readers not cleared.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mesh_platform.access.masking import SESSION_SALT, mask_expression
from mesh_platform.access.principals import AccessDeniedError, Principal
from mesh_platform.addressing import PLATFORM_NAMESPACE, ProductAddress, quote_ident
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.descriptor_grants import Grant
from mesh_platform.products.lifecycle import past_sunset, sunset_message

ROW_FENCE = "mesh_row_fence"  # the volatile column of a row-filter barrier (select_sql)


class SunsetError(AccessDeniedError):
    """The product is a deprecated version past its sunset: nobody reads it any more."""


@dataclass(frozen=True)
class ReadPlan:
    address: ProductAddress
    principal: str
    columns: tuple[str, ...]  # visible columns, in the table's order
    masks: dict[str, str] = field(default_factory=dict)  # column -> masking rule served
    row_filter: str | None = None
    owner: bool = False
    purposes: tuple[str, ...] = ()

    def select_sql(self, source: str) -> str:
        """``SELECT`` of the visible columns of ``source``, masked and filtered for the reader;
        salted masks read the salt bound to the session (``masking.bind_salt``).

        A row filter is a barrier: the reader's expressions never see a row it drops, whatever
        the optimiser does. DuckDB may evaluate a query's predicates on rows a filter in the
        same plan drops (an expression that fails would then reveal a hidden row in its
        error), so the filtered rows pass through a projection holding a volatile column
        (``random()``), which no optimiser may push a predicate through (doing so would change
        the query's meaning), and every visible column is guarded by it: the reader's
        predicates are evaluated above the filter, on the granted rows only. Column pruning
        and the filter's own pushdown into the scan are unaffected.
        """
        items = []
        for name in self.columns:
            ident = quote_ident(name)
            if rule := self.masks.get(name):
                what = f"product {self.address}, column {name}"
                items.append(f"{mask_expression(rule, ident, SESSION_SALT, what=what)} AS {ident}")
            else:
                items.append(ident)
        if not self.row_filter:
            return f"SELECT {', '.join(items)} FROM {source}"
        fence = quote_ident(ROW_FENCE)
        guarded = ", ".join(
            f"CASE WHEN {fence} THEN {quote_ident(c)} END AS {quote_ident(c)}" for c in self.columns
        )
        return (
            f"SELECT {guarded} FROM (SELECT {', '.join(items)}, random() < 2 AS {fence} "
            f"FROM {source} WHERE {self.row_filter}) AS mesh_granted"
        )


def grant_fix(descriptor: ProductDescriptor, principal: str) -> str:
    owner = descriptor.body.owner
    return (
        f"access is granted by the owner, team {owner.team} ({owner.contact}), in the product's "
        f"descriptor {descriptor.source_file}: `grants: [{{to: {principal}, purpose: <why>, "
        "expires: YYYY-MM-DD}]` (optional: columns, rows)"
    )


def _live_grants(
    principal: Principal, descriptor: ProductDescriptor, today: dt.date
) -> list[Grant]:
    mine = [g for g in descriptor.body.grants if g.to in principal.acts_as]
    live = [g for g in mine if not g.expired(today)]
    if mine and not live:
        last = max(g.expires for g in mine)
        raise AccessDeniedError(
            f"{principal.id} may not read {descriptor.address}: its grant expired on "
            f"{last.isoformat()}",
            fix="ask for a renewal: " + grant_fix(descriptor, principal.id),
            path=descriptor.source_file,
        )
    if not live:
        raise AccessDeniedError(
            f"{principal.id} may not read {descriptor.address}: no grant (deny by default)",
            fix=grant_fix(descriptor, principal.id),
            path=descriptor.source_file,
        )
    return live


def plan_read(
    principal: Principal,
    descriptor: ProductDescriptor,
    *,
    stored_columns: Sequence[str],
    published: Mapping[str, Mapping[str, str | None]] | None = None,
    today: dt.date | None = None,
) -> ReadPlan:
    """What ``principal`` may read of ``descriptor``'s table, whose columns are
    ``stored_columns``. ``published``: the classification recorded with the snapshot
    read (``ProductDescriptor.snapshot_classification``), or None for a snapshot published
    without one. Masks follow the strictest of that record and the current descriptor: a
    column personal now or then is masked unless the reader is cleared for both kinds, and
    served masked at read unless the snapshot stored it masked (a snapshot without a record
    counts as stored in clear: hashing a hash is harmless, serving a clear value is not).
    Raises AccessDeniedError naming the product and the fix; SunsetError for a version past its
    sunset (:mod:`mesh_platform.products.lifecycle`), naming its successor."""
    today = today or dt.date.today()
    if past_sunset(descriptor, today):  # every reader, its owner too: it is not served
        what, fix = sunset_message(descriptor)
        raise SunsetError(what, fix=fix, path=descriptor.source_file)
    owner = principal.domain_member(descriptor.domain)
    declared = {c.name: c for c in descriptor.columns}
    if owner:
        return ReadPlan(descriptor.address, principal.id, tuple(stored_columns), owner=True)
    if descriptor.domain == PLATFORM_NAMESPACE:  # the platform's own tables (SLA history)
        return ReadPlan(descriptor.address, principal.id, tuple(stored_columns))
    grants = _live_grants(principal, descriptor, today)
    granted: set[str] = set()
    for grant in grants:
        granted.update(grant.columns or declared)
    filters = [g.rows for g in grants]
    row_filter = None if any(f is None for f in filters) else " OR ".join(f"({f})" for f in filters)
    columns = tuple(c for c in stored_columns if c in granted and c in declared)
    masks: dict[str, str] = {}
    for name in columns:
        column = declared[name]
        then = (published or {}).get(name) or {}
        kinds = [
            c for c in (column.classification, then.get("classification")) if c and c[:4] == "pii:"
        ]
        if all(principal.cleared_for(kind) for kind in kinds):  # also: not personal at all
            continue
        stored_masked = (
            published is not None and then.get("at") == "publication" and bool(then.get("masking"))
        )
        if stored_masked:
            continue
        rule = column.masking if column.pii_kind else then.get("masking")
        masks[name] = rule or "redact"  # personal data without a rule: fail closed
    return ReadPlan(
        descriptor.address,
        principal.id,
        columns,
        masks,
        row_filter,
        purposes=tuple(g.purpose for g in grants),
    )
