"""Faults the REST door injects on purpose, so a client's resilience can be tried on loopback.

A hosted exchange drops websockets, answers 500 and stalls; a fleet operator (and gridfleet's
own tests) wants to see what a fleet does then, without waiting for it to happen. The door reads
one :class:`RestFaults` per request, so faults can be switched on and off while a run goes on
(:meth:`RestDoor.set_faults <gridfleet.simulator.rest_door.RestDoor.set_faults>`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum


class BatchFault(Enum):
    """What the door does to one ``batch-commands/`` request."""

    NONE = "none"
    ERROR_BEFORE = "error_before"  # 500, the batch not applied: a retry applies it
    ERROR_AFTER = "error_after"  # applied, then 500 (the answer is lost): a retry is a duplicate
    HANG = "hang"  # held ``hang_s``, then 504, not applied (the client's timeout fires first)


@dataclass(frozen=True)
class RestFaults:
    """Which batch POSTs fail, and how.

    ``error_every``: every n-th batch POST is answered 500 (0: none); they alternate between
    failing before and after the batch was applied, so both a plain retry and a duplicate are
    tried. ``hang_s``: every batch POST is held this long before it is handled (0: none).
    """

    error_every: int = 0
    hang_s: float = 0.0

    def __post_init__(self) -> None:
        if self.error_every < 0:
            raise ValueError("error_every must be 0 (off) or a positive count")
        if self.hang_s < 0:
            raise ValueError("hang_s must not be negative")

    @property
    def active(self) -> bool:
        return self.error_every > 0 or self.hang_s > 0


class FaultPlan:
    """The faults in force and the request counter that picks the failing ones (thread-safe)."""

    def __init__(self, faults: RestFaults | None = None) -> None:
        self._faults = faults or RestFaults()
        self._lock = threading.Lock()
        self._seen = 0
        self._failed = 0
        self.injected: dict[BatchFault, int] = dict.fromkeys(BatchFault, 0)
        # (aggregator, transaction id) of batches applied whose answer was lost, and of those
        # a retry then got an answer for: a client that retries as it should empties the gap
        self.lost_answers: set[tuple[str, str]] = set()
        self.answered_on_retry: set[tuple[str, str]] = set()

    def answer_lost(self, aggregator: str, transaction_id: str) -> None:
        with self._lock:
            self.lost_answers.add((aggregator, transaction_id))

    def answered(self, aggregator: str, transaction_id: str) -> None:
        """A duplicate of an applied batch was answered (200)."""
        with self._lock:
            self.answered_on_retry.add((aggregator, transaction_id))

    @property
    def faults(self) -> RestFaults:
        return self._faults

    def set(self, faults: RestFaults) -> None:
        with self._lock:
            self._faults = faults
            self._seen = 0

    def next_batch(self) -> tuple[BatchFault, float]:
        """The fault for the next batch POST, and how long to hold it."""
        with self._lock:
            f = self._faults
            if f.hang_s > 0:
                self.injected[BatchFault.HANG] += 1
                return BatchFault.HANG, f.hang_s
            if f.error_every <= 0:
                return BatchFault.NONE, 0.0
            self._seen += 1
            if self._seen % f.error_every:
                return BatchFault.NONE, 0.0
            self._failed += 1
            kind = BatchFault.ERROR_AFTER if self._failed % 2 else BatchFault.ERROR_BEFORE
            self.injected[kind] += 1
            return kind, 0.0
