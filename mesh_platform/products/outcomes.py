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

    @property
    def blocks(self) -> bool:
        return self.blocking and not self.passed
