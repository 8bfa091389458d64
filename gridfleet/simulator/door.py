"""The seam between the engine and the doors aggregators reach it through.

A door (:mod:`redis_door`, :mod:`rest_door`) turns what aggregators send into
:class:`Inbound` messages on the engine's queue, and delivers what the engine sends through an
:class:`Outbox`. The engine sees only these two: it never knows which door a message came
through or how its answers travel. With two doors open, a :class:`SplitOutlet` sends each
aggregator's events and answers through the door that aggregator came through.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any, Protocol

# kinds of inbound messages
AGG_COMMAND, BATCH, REGISTER, CONTROL = "agg", "batch", "register", "control"
# a function a door needs run on the engine thread (the REST door's reads and selections)
CALL = "call"


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
    # CALL only: run on the engine thread with the engine as its argument, between rounds, so
    # the state keeps its single owner (door.py cannot name the Engine type: it imports us)
    call: Callable[[Any], None] | None = None


class Pieces(tuple[bytes | memoryview, ...]):
    """One payload left in pieces, in order: an event's opening and close around the tree it
    shares with the aggregator's other events of the tick, or a slice of the tick's rendered
    trade entries. A door that writes pieces one after the other (Redis) never joins them:
    at 100 000 assets a settling tick's trade events alone would be ~80 MB copied once more."""

    __slots__ = ()

    def size(self) -> int:
        """The payload's length in bytes."""
        return sum(map(len, self))

    def join(self) -> bytes:
        """The payload as one ``bytes``."""
        return b"".join(self)


Payload = bytes | Pieces  # what an outbox takes: JSON bytes, whole or in pieces


def payload_bytes(payload: Payload) -> bytes:
    """The payload as one ``bytes`` (for doors that keep or queue what they send)."""
    return payload.join() if isinstance(payload, Pieces) else payload


def payload_size(payload: Payload) -> int:
    """The payload's length in bytes."""
    return payload.size() if isinstance(payload, Pieces) else len(payload)


class Outbox(Protocol):
    """What the engine sends in one pass, delivered together by :meth:`send`.

    Payloads are JSON in gsy-e's shapes, whole or in :class:`Pieces`; where they go is the
    door's business.
    """

    def aggregator_event(self, aggregator: str, payload: Payload) -> None:
        """A market, tick, trade or finish event for one aggregator."""

    def asset_event(self, name: str, event: str, payload: bytes) -> None:
        """gsy-e's per-participant event (``market``, ``tick``, ``finish``) by name or slug."""

    def batch_response(self, aggregator: str, payload: Payload) -> None:
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


class AggregatorOutbox(Protocol):
    """The part of an :class:`Outbox` a door that serves only aggregators implements."""

    def aggregator_event(self, aggregator: str, payload: Payload) -> None:
        """A market, tick, trade or finish event for one aggregator."""

    def batch_response(self, aggregator: str, payload: Payload) -> None:
        """The answer to one of its batches."""

    def send(self) -> None:
        """Deliver everything queued, in order."""


class AggregatorOutlet(Protocol):
    """Where a :class:`SplitOutlet` gets the second door's outbox for each pass."""

    def outbox(self) -> AggregatorOutbox:
        """A fresh, empty outbox."""


class SplitOutbox:
    """Routes each aggregator's events and batch answers to the door it came through: those
    in ``members`` to ``side``, every other message (and every other aggregator) to ``base``.

    Per message it costs the engine one set lookup beyond the base door's own work.
    """

    __slots__ = ("_base", "_members", "_side")

    def __init__(self, base: Outbox, side: AggregatorOutbox, members: Container[str]) -> None:
        self._base = base
        self._side = side
        self._members = members

    def aggregator_event(self, aggregator: str, payload: Payload) -> None:
        if aggregator in self._members:
            self._side.aggregator_event(aggregator, payload)
        else:
            self._base.aggregator_event(aggregator, payload)

    def batch_response(self, aggregator: str, payload: Payload) -> None:
        if aggregator in self._members:
            self._side.batch_response(aggregator, payload)
        else:
            self._base.batch_response(aggregator, payload)

    def asset_event(self, name: str, event: str, payload: bytes) -> None:
        self._base.asset_event(name, event, payload)

    def aggregator_response(self, payload: bytes) -> None:
        self._base.aggregator_response(payload)

    def register_response(self, name: str, payload: bytes) -> None:
        self._base.register_response(name, payload)

    def control_response(self, command: str, payload: bytes) -> None:
        self._base.control_response(command, payload)

    def heartbeat(self, payload: bytes) -> None:
        self._base.heartbeat(payload)

    def send(self) -> None:
        self._base.send()
        self._side.send()


class SplitOutlet:
    """Two doors on one engine: ``members`` (aggregator uuids, kept by the second door and
    changed only on the engine thread) are served by ``side``, everything else by ``base``."""

    def __init__(self, base: Outlet, side: AggregatorOutlet, members: Container[str]) -> None:
        self.base = base
        self.side = side
        self.members = members

    def outbox(self) -> SplitOutbox:
        return SplitOutbox(self.base.outbox(), self.side.outbox(), self.members)
