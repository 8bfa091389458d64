"""The exchange's tick interval, learnt from when distinct rounds arrive, and the budget it gives."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

DEFAULT_BUDGET_FRACTION = 0.85
"""Share of the tick interval a round may use before its batches must be out."""

OUTAGE_FACTOR = 3.0
"""A gap between rounds this many intervals long is an outage, not a change of the interval."""

GAP_WINDOW = 9
"""The interval is the median of this many latest gaps between rounds."""

MIN_GAPS = 3
"""Gaps seen before the learnt interval replaces the fallback budget.

One gap is not enough: a round's first event arrives when the exchange has built it, and the
exchange's first big round (a new market slot, every tree built afresh) can take half a tick
longer to build than the next, so the first gap can be half the interval. A budget learnt from
it would hedge every shard of the next rounds."""


@dataclass
class TickClock:
    """Learns the exchange's tick interval from the arrival of distinct rounds."""

    _gaps: deque[float] = field(default_factory=lambda: deque(maxlen=GAP_WINDOW))
    _last_key: tuple[str, str] | None = None
    _last_at: float = 0.0

    @property
    def interval_s(self) -> float | None:
        """The median of the latest gaps, once there are enough of them."""
        if len(self._gaps) < MIN_GAPS:
            return None
        return statistics.median(self._gaps)

    def observe(self, market_slot: str, completion: str, at: float) -> None:
        key = (market_slot, completion)
        if key == self._last_key:
            return
        if self._last_key is not None:
            gap = at - self._last_at
            # A silence (the exchange away) is not an interval: it would stretch the budget.
            interval = self.interval_s
            usual = interval is None or gap < OUTAGE_FACTOR * interval
            if 0.02 < gap < 60 and usual:
                self._gaps.append(gap)
        self._last_key, self._last_at = key, at

    def budget(self, configured: float | None, fallback: float = 0.8) -> float:
        """The round budget: ``configured``, else a share of the observed tick interval."""
        if configured is not None:
            return configured
        interval = self.interval_s
        if interval is None:
            return fallback
        return interval * DEFAULT_BUDGET_FRACTION
