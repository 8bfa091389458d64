"""Forecasts and measurements over a hosted exchange's per-asset endpoints (rest.md 3.7).

Over Redis, and by default over REST, ``set_energy_forecast`` and ``set_energy_measurement``
ride in the aggregator's batch. A fleet file's ``exchange.rest.energy_data`` may send them
through each asset's own endpoint instead (``endpoints``), and a Canary Network's measured data
through ``set-live-generation/`` (``live``). :func:`split_energy` takes them out of a batch and
says where each goes; the link POSTs them beside the batch.

The exchange answers these on the asset's own websocket, which a fleet of thousands of assets
does not open: the HTTP status is the answer the link checks (and logs when it is not 2xx).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

ENERGY_TYPES = ("set_energy_forecast", "set_energy_measurement")
_MARKER = b'"set_energy_'  # a batch without it has nothing to split (the common case)

# command type -> (endpoint, the body's key, the command's field)
_ENDPOINTS = {
    "set_energy_forecast": ("set-energy-forecast", "energy_forecast", "energy_forecast"),
    "set_energy_measurement": (
        "set-energy-measurement",
        "energy_measurement",
        "energy_measurement",
    ),
}
_LIVE = ("set-live-generation", "live_data", "energy_measurement")


@dataclass(frozen=True)
class EnergyPost:
    """One per-asset request: ``POST .../{asset}/{endpoint}/`` with ``{key: {slot: kWh}}``."""

    asset_uuid: str
    endpoint: str
    key: str
    values: dict[str, Any]

    def body(self, transaction_id: str) -> dict[str, Any]:
        # gsy-e takes the request only with exactly these two keys (rest.md 3.7)
        return {self.key: self.values, "transaction_id": transaction_id}


def split_energy(commands_json: bytes, mode: str) -> tuple[bytes, list[EnergyPost]]:
    """The batch's commands without forecasts and measurements, and those as per-asset posts.

    ``mode`` ``batch`` (or a batch without any) returns the batch unchanged. An asset left with
    no command is left out of the batch; a batch left empty is ``b"{}"`` (not sent).
    """
    if mode == "batch" or _MARKER not in commands_json:
        return commands_json, []
    commands: dict[str, list[dict[str, Any]]] = orjson.loads(commands_json)
    kept: dict[str, list[dict[str, Any]]] = {}
    posts: list[EnergyPost] = []
    for asset, cmds in commands.items():
        rest = []
        for cmd in cmds:
            ctype = cmd.get("type")
            if ctype not in ENERGY_TYPES:
                rest.append(cmd)
                continue
            endpoint, key, field = (
                _LIVE if mode == "live" and ctype == "set_energy_measurement" else _ENDPOINTS[ctype]
            )
            posts.append(EnergyPost(asset, endpoint, key, cmd[field]))
        if rest:
            kept[asset] = rest
    return orjson.dumps(kept), posts
