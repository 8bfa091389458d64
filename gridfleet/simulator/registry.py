"""Aggregators, registered participants and who selected which device.

Answers CREATE/SELECT/UNSELECT/DELETE and registrations exactly as the captures show
(``tests/fixtures/protocol/examples/0[1-4]_*``); the door the messages came through is not its concern.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


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
    # counts the selection changes (what the batch handler remembers of a sender's devices
    # holds while it stays); ``selected`` is changed here only
    version: int = 0

    def register(self, name: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """The answer to the registration of asset or market ``name``; None if unknown."""
        uuid = self.names.get(name)
        if uuid is None:
            log.info("register_participant for unknown asset or market %r ignored", name)
            return None
        self.registered.add(uuid)
        return {
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
            self.version += 1
            return [{"status": "ready", "name": data.get("name"), "transaction_id": tid}]
        if ctype == "DELETE":
            if agg not in self.aggregators:
                return [{"status": "error", "aggregator_uuid": agg, "transaction_id": tid}]
            for d in self.selected.pop(agg, set()):
                self.owner.pop(d, None)
            del self.aggregators[agg]
            self.changed.add(agg)
            self.version += 1
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
            self.version += 1
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
            self.version += 1
            answer = {"status": "UNSELECTED", **base}
            return [answer, answer]  # gsy-e publishes a successful UNSELECT twice
        log.info("aggregator command of unknown type %r ignored", ctype)
        return []
