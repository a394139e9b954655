"""What a blocked batch says to its product's owner, built once from the gate's structured result.

Each failed blocking check contributes its description (what it found, with the column and the
figures: the kind and the row count of personal data, rows against the published rows and the
ratio against its bound, the column and the change of a schema; never a value) and its fix (what
to edit, in which file). dbt tests that failed before the gate (on a model the product is built
from) add theirs. The message is the publication's error: the run's failure in Dagster, what
`mesh build` prints, the detail of the SLA history; nobody re-parses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mesh_platform.products.outcomes import CheckOutcome

INDENT = "    "  # under the `  - <product>: ` line the run's failure lists each product on
DBT_TEST_FIX = (
    "the test, of a model this product is built from, failed before publication (the run "
    "reports it as its own check); `dbt test --select <test>` in the domain's dbt project "
    "shows the failing rows. Correct the data (its source or the model), or the test if it is "
    "the one that is wrong; then build again"
)


def blocking_failures(
    outcomes: Mapping[str, CheckOutcome], failed_elsewhere: Sequence[str] = ()
) -> list[str]:
    """The names of the blocking checks that failed: dbt's tests first, then the gate's."""
    return sorted(failed_elsewhere) + [name for name, o in outcomes.items() if o.blocks]


def block_message(
    outcomes: Mapping[str, CheckOutcome],
    failed_elsewhere: Sequence[str] = (),
    *,
    state: str,
    aftermath: str = "",
) -> str:
    """``not published: blocking check(s) failed: <names>; <state>``, then one line per failed
    check with what it found and one with its fix, then ``aftermath`` (where the batch went)."""
    failed = blocking_failures(outcomes, failed_elsewhere)
    lines = [f"not published: blocking check(s) failed: {', '.join(failed)}; {state}"]
    for name in sorted(failed_elsewhere):
        lines += [f"{INDENT}{name}: failed", f"{INDENT}  fix: {DBT_TEST_FIX}"]
    for name, outcome in outcomes.items():
        if outcome.blocks:
            lines.append(f"{INDENT}{name}: {outcome.description}")
            if outcome.fix:
                lines.append(f"{INDENT}  fix: {outcome.fix}")
    if aftermath:
        lines.append(f"{INDENT}{aftermath}")
    return "\n".join(lines)
