"""SLA attainment and error budgets, computed from what the mesh recorded.

- Freshness attainment: the share of the window during which a fresh published snapshot was
  available. Each snapshot on main (Iceberg's main history: only batches that passed the gate
  get there) covers ``[published, published + max_age)``; attainment is the covered share of
  the window. A product first published inside the window is measured from that moment.
- Quality attainment: the share of gate runs in the window that published (no blocking check
  failed), from the SLA history (:mod:`mesh_platform.sla.history`).
- Error budget: what the target allows to fail (``1 - target``); the remaining share is
  ``1 - spent / allowed`` (negative: overspent).
- Last breach: the latest stale period or failed gate run, with its cause.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh_platform.formats import describe_duration


@dataclass(frozen=True)
class Breach:
    at: dt.datetime
    kind: str  # freshness | quality
    cause: str


@dataclass(frozen=True)
class Attainment:
    address: str
    since: dt.datetime
    until: dt.datetime
    freshness: float | None  # None: no freshness SLA, or never published in the window
    freshness_target: float
    quality: float | None  # None: no gate run in the window
    quality_target: float
    runs: int
    failed_runs: int
    last_breach: Breach | None

    @staticmethod
    def budget_left(attained: float | None, target: float) -> float | None:
        if attained is None:
            return None
        allowed = 1 - target
        spent = 1 - attained
        if allowed <= 0:
            return 1.0 if spent <= 0 else -float("inf")
        return 1 - spent / allowed

    @property
    def freshness_budget_left(self) -> float | None:
        return self.budget_left(self.freshness, self.freshness_target)

    @property
    def quality_budget_left(self) -> float | None:
        return self.budget_left(self.quality, self.quality_target)

    @property
    def met(self) -> bool:
        return all(
            left is None or left >= 0
            for left in (self.freshness_budget_left, self.quality_budget_left)
        )


def freshness_attainment(
    published: Sequence[dt.datetime],
    max_age: dt.timedelta,
    since: dt.datetime,
    until: dt.datetime,
) -> tuple[float | None, Breach | None]:
    """(covered share of [since, until), the latest stale period) for snapshots published at
    ``published`` (any order), each fresh for ``max_age``."""
    times = sorted(published)
    start = max(since, times[0]) if times else None
    if start is None or start >= until:
        return None, None
    covered = dt.timedelta(0)
    last_breach = None
    for i, t in enumerate(times):
        end = t + max_age
        following = times[i + 1] if i + 1 < len(times) else None
        interval_end = min(end, following) if following is not None else end
        lo, hi = max(t, start), min(interval_end, until)
        if hi > lo:
            covered += hi - lo
        gap_start = end
        gap_end = following if following is not None else until
        if gap_end > gap_start and gap_start < until and gap_end > start:
            last_breach = Breach(
                max(gap_start, start),
                "freshness",
                f"stale for {describe_duration(gap_end - gap_start)} (no snapshot published within "
                f"{describe_duration(max_age)} of {t.isoformat(timespec='seconds')})",
            )
    return covered / (until - start), last_breach


def quality_attainment(
    runs: Iterable[tuple[dt.datetime, bool, str]],
) -> tuple[float | None, int, int, Breach | None]:
    """(share passed, runs, failed runs, latest failure) of gate runs (time, passed, cause)."""
    runs = sorted(runs)
    if not runs:
        return None, 0, 0, None
    failed = [(t, cause) for t, ok, cause in runs if not ok]
    last = Breach(failed[-1][0], "quality", failed[-1][1]) if failed else None
    return (len(runs) - len(failed)) / len(runs), len(runs), len(failed), last


def attainment(
    address: str,
    *,
    published: Sequence[dt.datetime],
    max_age: dt.timedelta | None,
    runs: Iterable[tuple[dt.datetime, bool, str]],
    since: dt.datetime,
    until: dt.datetime,
    freshness_target: float,
    quality_target: float,
) -> Attainment:
    fresh, fresh_breach = (
        freshness_attainment(published, max_age, since, until) if max_age else (None, None)
    )
    quality, total, failed, quality_breach = quality_attainment(
        r for r in runs if since <= r[0] < until
    )
    breaches = [b for b in (fresh_breach, quality_breach) if b is not None]
    return Attainment(
        address,
        since,
        until,
        fresh,
        freshness_target,
        quality,
        quality_target,
        total,
        failed,
        max(breaches, key=lambda b: b.at) if breaches else None,
    )
