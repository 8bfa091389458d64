"""Every Redis key and list gridfleet writes on the broker, in one place.

All keys of a fleet sit under its ``namespace`` so that fleets can share a Redis. Round data
(inputs, results, manifests) expire; strategy state lives as long as the fleet runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    ns: str = "gf"

    # -- fleet-wide ---------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """The resolved fleet (strategy specs, aggregators, assets) written by ingress."""
        return f"{self.ns}:spec"

    @property
    def run(self) -> str:
        """The current run's id (see :mod:`gridfleet.platform.runs`)."""
        return f"{self.ns}:run"

    @property
    def rounds(self) -> str:
        """List of round ids ingress has dispatched; the coordinator BLPOPs it."""
        return f"{self.ns}:rounds"

    @property
    def state(self) -> str:
        """Hash: asset or market uuid -> msgpack [round id, state before, state after]."""
        return f"{self.ns}:state"

    @property
    def rejections(self) -> str:
        """Hash: asset uuid -> msgpack {round, command, reason} of the last rejected command."""
        return f"{self.ns}:rejections"

    @property
    def market_answers(self) -> str:
        """Hash: market uuid -> msgpack dso_market_stats answer, consumed by the next evaluation."""
        return f"{self.ns}:market-answers"

    @property
    def events(self) -> str:
        """Stream of round, trade and finish records for reports and the demo's live view."""
        return f"{self.ns}:events"

    @property
    def counters(self) -> str:
        """Hash of fleet-wide counters (events, rounds, batches, hedges, rejections...)."""
        return f"{self.ns}:counters"

    def heartbeat(self, role: str, name: str) -> str:
        return f"{self.ns}:alive:{role}:{name}"

    def slot_fees(self, aggregator: str) -> str:
        """Hash: the aggregator's market fees of its current slot, from the slot's market event:
        ``#slot`` -> the market slot, market uuid -> fee to the Market Maker (ct/kWh). Replaced
        at each market event, read at the slot's ticks (``platform.shard``); expires."""
        return f"{self.ns}:slot-fees:{aggregator}"

    # -- per round ----------------------------------------------------------------------------
    def manifest(self, round_id: str) -> str:
        return f"{self.ns}:r:{round_id}:manifest"

    def shard_input(self, round_id: str, shard: int) -> str:
        return f"{self.ns}:r:{round_id}:in:{shard}"

    def shard_output(self, round_id: str, shard: int) -> str:
        return f"{self.ns}:r:{round_id}:out:{shard}"

    def claim(self, round_id: str, shard: int) -> str:
        """Who started the shard (a worker or the coordinator); set once, see ``claim_shard``."""
        return f"{self.ns}:r:{round_id}:claim:{shard}"

    def done(self, round_id: str) -> str:
        """List the workers RPUSH finished shard numbers to."""
        return f"{self.ns}:r:{round_id}:done"
