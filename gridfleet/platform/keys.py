"""Every Redis key and list gridfleet writes on the broker, in one place.

All keys of a fleet sit under its ``namespace`` so that fleets can share a Redis. Round data
(inputs, results, manifests) expire; strategy state lives as long as the fleet runs.

A *run* is one pass of the fleet over one simulation (see :mod:`gridfleet.platform.runs`). Its
counters, finished flag, round list, event stream and publication records sit under
``<ns>:run:<id>:``, so runs follow each other on one broker without reading each other's figures.
``Keys(ns)`` without a run names the fleet-wide keys only; its run-scoped properties then name
the keys of a process that has not joined a run (``<ns>:counters``...), which only unit tests use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Keys:
    ns: str = "gf"
    run: str | None = None

    def for_run(self, run_id: str) -> Keys:
        """The same fleet's keys, scoped to run ``run_id``."""
        return replace(self, run=run_id)

    @property
    def _run_prefix(self) -> str:
        return self.ns if self.run is None else f"{self.ns}:run:{self.run}"

    # -- fleet-wide: they survive runs --------------------------------------------------------
    @property
    def spec(self) -> str:
        """The resolved fleet (strategy specs, aggregators, assets) written by ingress."""
        return f"{self.ns}:spec"

    @property
    def fleet(self) -> str:
        """Hash: ingress partition -> its registry (aggregator, asset and market names)."""
        return f"{self.ns}:fleet"

    @property
    def current_run(self) -> str:
        """The id of the fleet's current run (see :mod:`gridfleet.platform.runs`)."""
        return f"{self.ns}:run:current"

    @property
    def state(self) -> str:
        """Hash: asset or market uuid -> msgpack [round id, state before, state after].

        Fleet-wide so a restarted ingress or worker goes on with it; emptied when a new run
        starts (:func:`gridfleet.platform.runs.join_run`), so a rerun inherits nothing.
        """
        return f"{self.ns}:state"

    @property
    def rejections(self) -> str:
        """Hash: asset uuid -> msgpack {round, command, reason} of the last rejected command."""
        return f"{self.ns}:rejections"

    @property
    def market_answers(self) -> str:
        """Hash: market uuid -> msgpack dso_market_stats answer, consumed by the next evaluation."""
        return f"{self.ns}:market-answers"

    def heartbeat(self, role: str, name: str) -> str:
        return f"{self.ns}:alive:{role}:{name}"

    def lease(self, role: str) -> str:
        """Who is the active ``role`` (``coordinator``, ``ingress:p0``...): a token with a TTL."""
        return f"{self.ns}:lease:{role}"

    # -- per run ------------------------------------------------------------------------------
    @property
    def rounds(self) -> str:
        """List of round ids ingress has dispatched; the coordinator BLPOPs it."""
        return f"{self._run_prefix}:rounds"

    @property
    def events(self) -> str:
        """Stream of round, trade, gap and finish records for reports and the demo's live view."""
        return f"{self._run_prefix}:events"

    @property
    def settlement_orders(self) -> str:
        """Hash: order id -> settled slot, for every settlement order the exchange accepted.
        Trade events look the same for both markets; this is how a trade is told apart."""
        return f"{self._run_prefix}:settlement-orders"

    @property
    def counters(self) -> str:
        """Hash of the run's counters (events, rounds, batches, hedges, rejections...) and its
        ``finished`` flag."""
        return f"{self._run_prefix}:counters"

    @property
    def run_meta(self) -> str:
        """Hash: when the run started, and who started it."""
        return f"{self._run_prefix}:meta"

    def dispatched(self, round_id: str) -> str:
        """Set once (NX) by the ingress that sends the round's shards: an ingress that takes
        over does not send a round its predecessor sent."""
        return f"{self._run_prefix}:dispatched:{round_id}"

    def published(self, round_id: str, part: str | None = None) -> str:
        """Set once (NX) by the coordinator that publishes the round's batches (``part``: one
        shard's, or the round's last wave): each is answered at most once, even across a
        takeover."""
        tail = "" if part is None else f":{part}"
        return f"{self._run_prefix}:published:{round_id}{tail}"

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
