"""Class 3: a read at any snapshot is masked by the strictest of the classification recorded
with that snapshot and the current descriptor: time travel and a descriptor edit never unmask."""

from __future__ import annotations

import pytest

from mesh_platform.query.engine import QuerySession
from tests.security.conftest import ATTACKER, CUSTOMERS_DESCRIPTOR, edited

pytestmark = pytest.mark.e2e

PHONE_READ = "config: {meta: {classification: 'pii:phone', masking: truncate, masking_at: read}}"
PHONE_PUBLICATION = "config: {meta: {classification: 'pii:phone', masking: truncate}}"
NAME_INTERNAL = (
    "description: Customer account name (Customer#000000001), not a personal name.\n"
    "        config: {meta: {classification: 'internal'}}"
)
NAME_PII = (
    "description: Customer account name (Customer#000000001), not a personal name.\n"
    "        config: {meta: {classification: 'pii:name', masking: redact}}"
)


def _phones(mesh, principal: str, at=None) -> set[str]:
    with QuerySession(principal, mesh=mesh) as session:
        return {p for (p,) in session.rows("SELECT phone FROM sales.customers", at=at)[1] if p}


def test_a_column_stored_clear_stays_masked_after_the_descriptor_moves_to_publication(
    attacked_mesh,
):
    before = _phones(attacked_mesh, ATTACKER)
    assert before and all(p.endswith("***") for p in before)
    with QuerySession("sales", mesh=attacked_mesh) as owner:
        snapshot = owner.catalog.table_state(
            __import__("mesh_platform.addressing", fromlist=["x"]).ProductAddress.parse(
                "sales.customers"
            )
        ).current.snapshot_id
    with edited(attacked_mesh.root / CUSTOMERS_DESCRIPTOR, PHONE_READ, PHONE_PUBLICATION):
        for at in (None, snapshot):
            phones = _phones(attacked_mesh, ATTACKER, at=at)
            clear = [p for p in phones if not p.endswith("***")]
            assert not clear, f"clear phones served at {at}: {clear[:3]}"


def test_a_column_newly_classified_personal_is_masked_before_the_next_build(attacked_mesh):
    with QuerySession(ATTACKER, mesh=attacked_mesh) as session:
        names = {n for (n,) in session.rows("SELECT customer_name FROM sales.customers")[1]}
    assert any(n.startswith("Customer#") for n in names)
    descriptor = attacked_mesh.root / CUSTOMERS_DESCRIPTOR
    with (
        edited(descriptor, NAME_INTERNAL, NAME_PII),
        QuerySession(ATTACKER, mesh=attacked_mesh) as session,
    ):
        served = {n for (n,) in session.rows("SELECT customer_name FROM sales.customers")[1]}
    assert served == {"[redacted]"}, sorted(served)[:3]
