"""What a check of the publication gate concludes about a batch (products/gate.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    blocking: bool = True  # a failed non-blocking check is a warning
    # What the product's owner does about a failure, naming the file to edit: shown with the
    # description (what was found, with its figures) wherever a blocked batch is reported.
    fix: str = ""

    @property
    def blocks(self) -> bool:
        return self.blocking and not self.passed
