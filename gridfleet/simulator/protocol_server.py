"""The Redis side of the exchange: who is subscribed to what, aggregators and their devices.

- :class:`Inbox` runs one reader thread on a pub/sub connection and queues every inbound
  message with its arrival time. It never parses: the engine thread does, so all state has a
  single owner and needs no locks.
- :class:`AggregatorRegistry` answers CREATE/SELECT/UNSELECT/DELETE and registrations exactly
  as the captures show (``../shared/protocol/examples/0[1-4]_*``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from gridfleet.exchange import channels

log = logging.getLogger(__name__)

REGISTER_PATTERN = "*/register_participant"

# kinds of inbound messages
AGG_COMMAND, BATCH, REGISTER, CONTROL = "agg", "batch", "register", "control"


@dataclass(slots=True)
class Inbound:
    kind: str
    channel: str
    data: bytes
    at: float  # time.time() at arrival


class Inbox:
    """Subscribes to every channel the exchange listens on; queues messages for the engine."""

    def __init__(self, client: redis.Redis, config_id: str = "") -> None:
        self.client = client
        self.config_id = config_id
        self.queue: queue.Queue[Inbound] = queue.Queue()
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kinds = {
            channels.AGGREGATOR_COMMANDS: AGG_COMMAND,
            channels.batch_commands(config_id): BATCH,
            **{channels.sim_control(c, config_id): CONTROL for c in channels.SIM_CONTROL_COMMANDS},
        }

    def start(self, timeout: float = 10.0) -> None:
        """Subscribe, wait until Redis confirmed every subscription, then start reading."""
        self._pubsub.subscribe(*self._kinds)
        self._pubsub.psubscribe(REGISTER_PATTERN)
        expected = len(self._kinds) + 1
        deadline = time.monotonic() + timeout
        while expected and time.monotonic() < deadline:
            msg = self._pubsub.get_message(timeout=0.1)
            if msg and msg["type"] in ("subscribe", "psubscribe"):
                expected -= 1
        if expected:
            raise TimeoutError("Redis did not confirm the exchange's subscriptions")
        self._thread = threading.Thread(target=self._run, name="sim-inbox", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ps = self._pubsub
        while not self._stop.is_set():
            try:
                msg = ps.get_message(timeout=0.05)
            except (redis.ConnectionError, ValueError, OSError):
                if self._stop.is_set():
                    return
                log.exception("exchange inbox lost its Redis connection; retrying")
                time.sleep(0.5)
                continue
            if msg is None:
                continue
            at = time.time()
            mtype = msg["type"]
            channel = (
                msg["channel"].decode() if isinstance(msg["channel"], bytes) else msg["channel"]
            )
            data = msg["data"] if isinstance(msg["data"], bytes) else str(msg["data"]).encode()
            if mtype == "pmessage":
                if "/response/" in channel:
                    continue  # our own answers also match */register_participant
                self.queue.put(Inbound(REGISTER, channel, data, at))
            elif mtype == "message":
                self.queue.put(Inbound(self._kinds.get(channel, CONTROL), channel, data, at))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(Exception):  # closing a dead connection is fine
            self._pubsub.close()


@dataclass
class AggregatorRegistry:
    """Aggregators, registered devices and who selected which device.

    ``devices`` maps every selectable uuid (assets and markets) to its name.
    """

    devices: dict[str, str]
    names: dict[str, str] = field(default_factory=dict)  # device name or market slug -> uuid
    aggregators: dict[str, str] = field(default_factory=dict)  # uuid -> name
    owner: dict[str, str] = field(default_factory=dict)  # device uuid -> aggregator uuid
    selected: dict[str, set[str]] = field(default_factory=dict)  # aggregator uuid -> device uuids
    registered: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)  # aggregators whose selection changed

    def register(self, channel: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """``<name>/register_participant`` -> (response channel, response); None if unknown."""
        name = channel[: -len("/register_participant")]
        uuid = self.names.get(name)
        if uuid is None:
            log.info("register_participant for unknown asset or market %r ignored", name)
            return None
        self.registered.add(uuid)
        return channels.register_participant_response(name), {
            "command": "register",
            "status": "ready",
            "registered": True,
            "transaction_id": data.get("transaction_id"),
            "device_uuid": uuid,
        }

    def command(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """Answers (zero, one or two messages) to one ``aggregator-commands`` message."""
        ctype = data.get("type")
        tid = data.get("transaction_id")
        agg = str(data.get("aggregator_uuid"))
        dev = str(data.get("device_uuid"))
        if ctype == "CREATE":
            if not isinstance(tid, str) or tid in self.aggregators:
                return [{"status": "error", "aggregator_uuid": tid, "transaction_id": tid}]
            # gsy-e quirk kept on purpose: the aggregator's uuid IS the CREATE's transaction id
            self.aggregators[tid] = str(data.get("name", ""))
            self.selected[tid] = set()
            return [{"status": "ready", "name": data.get("name"), "transaction_id": tid}]
        if ctype == "DELETE":
            if agg not in self.aggregators:
                return [{"status": "error", "aggregator_uuid": agg, "transaction_id": tid}]
            for d in self.selected.pop(agg, set()):
                self.owner.pop(d, None)
            del self.aggregators[agg]
            self.changed.add(agg)
            return [{"status": "deleted", "aggregator_uuid": agg, "transaction_id": tid}]
        if ctype == "SELECT":
            base = {"aggregator_uuid": agg, "device_uuid": dev, "transaction_id": tid}
            if agg not in self.aggregators:
                return [{"status": "error", **base, "msg": f"Aggregator {agg} does not exist"}]
            if dev not in self.devices:
                return [{"status": "error", **base, "msg": f"Device {dev} does not exist"}]
            current = self.owner.get(dev)
            if current is not None:  # gsy-e refuses a second SELECT, even by the same aggregator
                return [
                    {"status": "error", **base, "msg": f"Device already have selected {current}"}
                ]
            self.owner[dev] = agg
            self.selected[agg].add(dev)
            self.changed.add(agg)
            return [{"status": "SELECTED", **base}]
        if ctype == "UNSELECT":
            base = {"aggregator_uuid": agg, "device_uuid": dev, "transaction_id": tid}
            if agg not in self.aggregators or self.owner.get(dev) != agg:
                return [
                    {
                        "status": "error",
                        **base,
                        "msg": "Error unselecting aggregator : list.remove(x): x not in list",
                    }
                ]
            del self.owner[dev]
            self.selected[agg].discard(dev)
            self.changed.add(agg)
            answer = {"status": "UNSELECTED", **base}
            return [answer, answer]  # gsy-e publishes a successful UNSELECT twice
        log.info("aggregator command of unknown type %r ignored", ctype)
        return []
