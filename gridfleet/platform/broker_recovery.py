"""Ingress's side of a broker outage: count the rounds it loses, republish the fleet when it is back.

A restarted broker has lost what workers and the coordinator read (the fleet spec, the
registry): ingress writes them again before the first round after the outage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gridfleet.platform.observers import Observer, RoundLoss

log = logging.getLogger(__name__)


class BrokerRecovery:
    """Tracks whether the broker is reachable, from the outcome of ingress's round sends."""

    def __init__(self, republish: Callable[[], None], observers: Observer) -> None:
        self.republish = republish
        self.observers = observers
        self.ok = True
        self.lost_in_outage = 0  # rounds lost since the broker went away

    def before_send(self) -> None:
        """Republish the fleet if the broker was away (raises if it still is)."""
        if self.ok:
            return
        self.republish()
        self.ok = True
        log.warning(
            "broker is back: fleet spec published again; %d rounds were lost meanwhile",
            self.lost_in_outage,
        )
        self.lost_in_outage = 0

    def lost(self, round_id: str, exc: Exception, slot: str, tick: int) -> None:
        """A round could not be sent: the broker is unreachable."""
        self.lost_in_outage += 1
        self.observers.round_lost(RoundLoss.BROKER)
        if self.ok:
            self.observers.broker_outage()
        self.ok = False
        log.error(
            "round %s lost: broker unreachable (%s)",
            round_id,
            exc,
            extra={"slot": slot, "tick": tick},
        )
