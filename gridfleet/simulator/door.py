"""The seam between the engine and the doors aggregators reach it through.

A door (today :mod:`redis_door`; a REST door later, beside it) turns what aggregators send into
:class:`Inbound` messages on the engine's queue, and delivers what the engine sends through an
:class:`Outbox`. The engine sees only these two: it never knows which door a message came
through or how its answers travel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# kinds of inbound messages
AGG_COMMAND, BATCH, REGISTER, CONTROL = "agg", "batch", "register", "control"


class DeliveryFailed(ConnectionError):
    """:meth:`Outbox.send` could not deliver (the door's transport is down).

    What the outbox held is lost; the door reconnects by itself, and the engine keeps its clock
    and state and counts what went undelivered (the deadline report's gaps).
    """


@dataclass(slots=True)
class Inbound:
    """One message from outside, unparsed (the engine thread parses it)."""

    kind: str
    # what it is addressed to: the participant name (REGISTER), the command (CONTROL: pause,
    # resume, stop); for the other kinds where it came from, for logs
    origin: str
    data: bytes
    at: float  # time.time() when the door read it (the deadline report's arrival time)


class Outbox(Protocol):
    """What the engine sends in one pass, delivered together by :meth:`send`.

    Payloads are JSON bytes in gsy-e's shapes; where they go is the door's business.
    """

    def aggregator_event(self, aggregator: str, payload: bytes) -> None:
        """A market, tick, trade or finish event for one aggregator."""

    def asset_event(self, name: str, event: str, payload: bytes) -> None:
        """gsy-e's per-participant event (``market``, ``tick``, ``finish``) by name or slug."""

    def batch_response(self, aggregator: str, payload: bytes) -> None:
        """The answer to a BATCHED message."""

    def aggregator_response(self, payload: bytes) -> None:
        """An answer to CREATE / SELECT / UNSELECT / DELETE."""

    def register_response(self, name: str, payload: bytes) -> None:
        """The answer to a participant's registration."""

    def control_response(self, command: str, payload: bytes) -> None:
        """The answer to ``pause`` / ``resume`` / ``stop``."""

    def heartbeat(self, payload: bytes) -> None:
        """The exchange's heartbeat."""

    def send(self) -> None:
        """Deliver everything queued, in order; :class:`DeliveryFailed` when it cannot."""


class Outlet(Protocol):
    """Where the engine gets an :class:`Outbox` for each pass."""

    def outbox(self) -> Outbox:
        """A fresh, empty outbox."""
