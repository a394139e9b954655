"""Class 3: a read at any snapshot is masked by the strictest of the classification recorded
with that snapshot and the current descriptor: time travel and a descriptor edit never unmask."""

from __future__ import annotations

import pytest

from mesh_platform.query.engine import QuerySession
from mesh_platform.testing import (
    ATTACKER,
    CUSTOMERS_DESCRIPTOR,
    SF,
    add_attacker,
    copy_mesh,
    edited,
    run_mesh,
)

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


@pytest.fixture(scope="module")
def sales_only(tmp_path_factory):
    """A copy of the mesh with only sales built (its own: the test republishes it)."""
    from mesh_platform.config import load_mesh

    root = copy_mesh(tmp_path_factory.mktemp("masks") / "mesh")
    add_attacker(root)
    result = run_mesh(root, "build", "--domain", "sales", "--scale", str(SF))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return load_mesh(root)


def test_time_travel_to_a_snapshot_stored_clear_stays_masked(sales_only):
    """The reported attack: a column moves from masking at read to masking on publication and
    is republished; reading the older snapshot (stored in clear) with --at must stay masked."""
    from mesh_platform.addressing import ProductAddress

    address = ProductAddress.parse("sales.customers")
    with QuerySession("sales", mesh=sales_only) as owner:
        old = owner.catalog.table_state(address).current.snapshot_id
        clear = {p for (p,) in owner.rows("SELECT phone FROM sales.customers", at=old)[1] if p}
    assert clear and not any(p.endswith("***") for p in clear)  # stored in clear
    descriptor = sales_only.root / CUSTOMERS_DESCRIPTOR
    descriptor.write_text(descriptor.read_text().replace(PHONE_READ, PHONE_PUBLICATION))
    result = run_mesh(sales_only.root, "build", "--domain", "sales", "--scale", "0.01")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with QuerySession("sales", mesh=sales_only) as owner:
        new = owner.catalog.table_state(address).current.snapshot_id
    assert new != old
    for at in (old, new, None):
        served = _phones(sales_only, ATTACKER, at=at)
        assert served and not (served & clear), f"clear phones served at snapshot {at}"
    assert _phones(sales_only, ATTACKER, at=old) <= {p[:2] + "***" for p in clear}
