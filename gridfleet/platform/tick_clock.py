"""The exchange's tick interval, learnt from when distinct rounds arrive, and the budget it gives."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BUDGET_FRACTION = 0.85
"""Share of the tick interval a round may use before its batches must be out."""

OUTAGE_FACTOR = 3.0
"""A gap between rounds this many intervals long is an outage, not a change of the interval."""


@dataclass
class TickClock:
    """Learns the exchange's tick interval from the arrival of distinct rounds."""

    interval_s: float | None = None
    _last_key: tuple[str, str] | None = None
    _last_at: float = 0.0

    def observe(self, market_slot: str, completion: str, at: float) -> None:
        key = (market_slot, completion)
        if key == self._last_key:
            return
        if self._last_key is not None:
            gap = at - self._last_at
            # A silence (the exchange away) is not an interval: it would stretch the budget.
            usual = self.interval_s is None or gap < OUTAGE_FACTOR * self.interval_s
            if 0.02 < gap < 60 and usual:
                self.interval_s = (
                    gap if self.interval_s is None else 0.7 * self.interval_s + 0.3 * gap
                )
        self._last_key, self._last_at = key, at

    def budget(self, configured: float | None, fallback: float = 0.8) -> float:
        """The round budget: ``configured``, else a share of the observed tick interval."""
        if configured is not None:
            return configured
        if self.interval_s is None:
            return fallback
        return self.interval_s * DEFAULT_BUDGET_FRACTION
