"""Ingress's side of a broker outage: count the rounds it loses, republish the fleet when it is back.

A restarted broker has lost what workers and the coordinator read (the fleet spec, the
registry): ingress writes them again before the first round after the outage. When it is back,
the outage is told once, as a :class:`~gridfleet.platform.observers.Gap` (one log line: how
long, how many rounds, which).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gridfleet.platform.observers import Gap, GapCause, Observer, RoundLoss

log = logging.getLogger(__name__)


class BrokerRecovery:
    """Tracks whether the broker is reachable, from the outcome of ingress's round sends."""

    def __init__(self, republish: Callable[[], None], observers: Observer) -> None:
        self.republish = republish
        self.observers = observers
        self.ok = True
        self.lost_in_outage = 0  # rounds lost since the broker went away
        self._since = 0.0  # monotonic: when the first round of this outage was lost
        self._first = self._last = ""

    def before_send(self) -> Gap | None:
        """Republish the fleet if the broker was away (raises if it still is); the outage's
        gap once it is over."""
        if self.ok:
            return None
        self.republish()
        self.ok = True
        gap = Gap(
            GapCause.BROKER,
            rounds=self.lost_in_outage,
            seconds=time.monotonic() - self._since,
            first=self._first,
            last=self._last,
        )
        log.warning(
            "broker gap closed: %.1f s unreachable, %d rounds lost (%s .. %s); fleet spec"
            " published again",
            gap.seconds,
            gap.rounds,
            gap.first,
            gap.last,
        )
        self.observers.gap_closed(gap)
        self.lost_in_outage = 0
        return gap

    def lost(self, round_id: str, exc: Exception, slot: str, tick: int) -> None:
        """A round could not be sent: the broker is unreachable."""
        self.lost_in_outage += 1
        self.observers.round_lost(RoundLoss.BROKER)
        if self.ok:
            self.observers.broker_outage()
            self._since = time.monotonic()
            self._first = f"{slot}#{tick}"
        self._last = f"{slot}#{tick}"
        self.ok = False
        log.error(
            "round %s lost: broker unreachable (%s)",
            round_id,
            exc,
            extra={"slot": slot, "tick": tick},
        )
