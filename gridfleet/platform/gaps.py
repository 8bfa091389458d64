"""Rounds that went by while the fleet heard nothing from the exchange, counted when events resume.

The exchange sends a round every tenth of a slot (tick index = completion // 10). From the last
round key seen to the next one, slot and tick arithmetic says how many rounds the fleet should
have seen in between: those are the gap. The slot length is learnt from a slot change between
consecutive rounds (the last tick of one slot, then the first of the next); until then a change
of slot is taken to be to the next slot.
"""

from __future__ import annotations

import datetime as dt

from gridfleet.platform.observers import Gap, GapCause
from gridfleet.platform.rounds import RoundKey, next_slot

ROUNDS_PER_SLOT = 10
"""Rounds per market slot: gsy-e (and the embedded exchange) dispatch events at 10 % steps."""

_SLOT_FORMAT = "%Y-%m-%dT%H:%M"


def _slot_time(slot: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(slot, _SLOT_FORMAT)
    except ValueError:
        return None


class ExchangeGaps:
    """Watches the round keys events carry; :meth:`observe` returns a :class:`Gap` when rounds
    were skipped between the previous key and this one."""

    def __init__(self, rounds_per_slot: int = ROUNDS_PER_SLOT) -> None:
        self.rounds_per_slot = rounds_per_slot
        self.slot_length_s: int | None = None
        self._last: RoundKey | None = None
        self._last_at = 0.0

    def observe(self, key: RoundKey, at: float) -> Gap | None:
        """Round ``key`` was seen at ``at`` (monotonic seconds)."""
        last = self._last
        if last is not None and (key.market_slot, key.tick_index) <= (
            last.market_slot,
            last.tick_index,
        ):
            return None  # the same round, or a late event of an older one
        self._last, previous_at = key, self._last_at
        self._last_at = at
        if last is None:
            return None
        steps = self._steps(last, key)
        if steps is None or steps <= 1:
            return None
        missed = steps - 1
        return Gap(
            GapCause.EXCHANGE,
            rounds=missed,
            seconds=at - previous_at,
            first=self._advance(last, 1),
            last=self._advance(last, missed),
        )

    def _steps(self, last: RoundKey, key: RoundKey) -> int | None:
        """Rounds from ``last`` to ``key`` (1: consecutive)."""
        if key.market_slot == last.market_slot:
            return key.tick_index - last.tick_index
        a, b = _slot_time(last.market_slot), _slot_time(key.market_slot)
        if a is None or b is None:
            return None
        seconds = int((b - a).total_seconds())
        if seconds <= 0:
            return None
        consecutive = last.tick_index == self.rounds_per_slot - 1 and key.tick_index == 0
        if consecutive and (self.slot_length_s is None or seconds < self.slot_length_s):
            # Consecutive rounds across a slot change: this is the slot length (or a multiple,
            # if whole slots were skipped: the shortest one seen is kept).
            self.slot_length_s = seconds
        slots = 1 if self.slot_length_s is None else max(1, round(seconds / self.slot_length_s))
        return slots * self.rounds_per_slot + key.tick_index - last.tick_index

    def _advance(self, key: RoundKey, n: int) -> str:
        """The id of the round ``n`` rounds after ``key``."""
        slots, tick = divmod(key.tick_index + n, self.rounds_per_slot)
        slot = key.market_slot
        if slots:
            if self.slot_length_s is None or _slot_time(slot) is None:
                return f"{n} after {key.id}"
            for _ in range(slots):
                slot = next_slot(slot, self.slot_length_s)
        return RoundKey(slot, tick).id
