"""Coordinator: shard results in, one BATCHED message per aggregator out, before the deadline.

For each round ingress announces, it waits on the round's done list (BLPOP: no polling, no Celery
result backend). A shard no worker has started by ``deadline - hedge margin`` it claims and
evaluates itself from the stored input (the same function the workers run); one a worker started
but has not finished by ``deadline - hedge margin / 2`` it evaluates too, so a dead or slow
worker does not cost the tick. A shard reported after that is ignored. Then it merges each
aggregator's fragments and publishes every batch in one pipeline.

It also reads the exchange's batch responses: each rejected command is counted, logged with its
reason and stored where the asset's strategy sees it on its next evaluation; ``dso_market_stats``
answers go to the market strategies' state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import cast

import orjson
import redis

from gridfleet.config import FleetConfig
from gridfleet.exchange.link import ExchangeLink, ExchangeTarget, OutgoingBatch, open_link
from gridfleet.exchange.messages import BatchResponse, ProtocolError, decode
from gridfleet.platform.codec import packb, unpackb
from gridfleet.platform.evaluate import merge_fragments
from gridfleet.platform.keys import Keys
from gridfleet.platform.shard import Manifest, claim_shard, run_shard
from gridfleet.runtime.metrics import Metrics

log = logging.getLogger(__name__)


def round_tag(market_slot: str, tick_index: int) -> str:
    """The round a batch answers, as the first part of its transaction id: ``<slot>/<n>%``.

    gsy-e only echoes transaction ids, so this costs nothing there; an exchange that reads it
    (gridfleet's simulator) attributes the batch to the right event even after a lost round,
    instead of guessing from arrival times.
    """
    return f"{market_slot}/{tick_index * 10}%"


@dataclass
class RoundOutcome:
    round_id: str
    aggregators: int
    shards: int
    hedged: int
    commands: int
    refusals: int
    errors: int
    unusable: int
    latency_s: float  # first event of the round -> batches published
    budget_s: float
    on_time: bool  # published before the deadline ingress set (the exchange's own figure is in the sim report)
    shard_seconds: list[float] = field(default_factory=list)


class Coordinator:
    def __init__(
        self,
        config: FleetConfig,
        exchange_url: ExchangeTarget,
        broker_url: str,
        *,
        metrics: Metrics | None = None,
        link: ExchangeLink | None = None,
    ) -> None:
        self.config = config
        self.keys = Keys(config.namespace)
        self.metrics = metrics or Metrics()
        self.broker = redis.Redis.from_url(
            broker_url, socket_keepalive=True, health_check_interval=10
        )
        self.link = link or open_link(
            exchange_url,
            config_id=config.exchange_config_id,
            on_reconnect=lambda _: self.metrics.reconnects.inc(),
        )
        self.stop_event = threading.Event()
        self._responses: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._subscribed: set[str] = set()
        self.asset_names: dict[str, str] = {}
        self.aggregator_names: dict[str, str] = {}
        self.outcomes: list[RoundOutcome] = []
        self.broker_errors = 0
        self.skipped_rounds = 0
        self._response_thread = threading.Thread(
            target=self._response_loop, daemon=True, name="batch-responses"
        )
        self._response_thread.start()

    # -- fleet registry (written by ingress) ----------------------------------------------------

    def refresh_fleet(self) -> None:
        """Learn (new) aggregators and asset names from ingress, and subscribe to their answers."""
        parts = self.broker.hgetall(f"{self.keys.ns}:fleet")
        new: list[str] = []
        for raw in parts.values():
            reg = orjson.loads(raw)
            self.aggregator_names.update(reg["aggregators"])
            self.asset_names.update(reg["assets"])
            self.asset_names.update(reg.get("markets", {}))
            new += [a for a in reg["aggregators"] if a not in self._subscribed]
        if new:
            self.link.subscribe_answers(new, lambda agg, raw, t: self._responses.put((agg, raw)))
            self._subscribed.update(new)

    # -- rounds -------------------------------------------------------------------------------

    def run(self, max_rounds: int | None = None) -> None:
        handled = 0
        while not self.stop_event.is_set():
            self.metrics.beat()
            try:
                item = self.broker.blpop([self.keys.rounds], timeout=0.5)
            except redis.ConnectionError as exc:
                log.error("broker unreachable (%s); retrying", exc)
                self.broker_errors += 1
                self.stop_event.wait(0.5)
                continue
            if item is None:
                if self.broker.hget(self.keys.counters, "finished"):
                    break
                continue
            round_id = cast(bytes, item[1]).decode()
            try:
                self.handle_round(round_id)
            except (LookupError, redis.RedisError) as exc:
                log.error("round %s lost: %s", round_id, exc)
                self.broker.hincrby(self.keys.counters, "lost_rounds", 1)
            handled += 1
            if max_rounds is not None and handled >= max_rounds:
                break

    def handle_round(self, round_id: str) -> RoundOutcome | None:
        raw = self.broker.get(self.keys.manifest(round_id))
        if raw is None:
            raise LookupError("manifest expired before the coordinator saw it")
        manifest = Manifest.unpack(cast(bytes, raw))
        if not self._subscribed.issuperset(manifest.aggregators):
            self.refresh_fleet()
        if time.time() > manifest.deadline and self.broker.llen(self.keys.rounds) > 0:
            # Behind: this round's tick has passed and newer rounds wait; answering it would
            # only push them past their own deadlines.
            self.skipped_rounds += 1
            self.broker.hincrby(self.keys.counters, "stale_rounds_coordinator", 1)
            log.warning("round %s skipped: past its deadline with newer rounds waiting", round_id)
            return None
        done: set[int] = set()
        hedge_at = manifest.deadline - self.config.hedge_margin_s
        done_key = self.keys.done(round_id)
        self._wait_done(done_key, done, manifest.shards, hedge_at)
        hedged = []
        # Shards no worker has started: take them (a worker that gets one later skips it).
        for shard in sorted(set(range(manifest.shards)) - done):
            if claim_shard(self.broker, self.keys, round_id, shard, "coordinator"):
                self._hedge(round_id, shard, "no worker had started it")
                hedged.append(shard)
                self._drain_done(done_key, done)
        # Shards a worker is running: give it half the margin more, then run them here too (the
        # worker may be dead; its result, if it ever comes, is the same and ignored).
        last_call = manifest.deadline - self.config.hedge_margin_s / 2
        self._wait_done(done_key, done, manifest.shards, last_call)
        for shard in sorted(set(range(manifest.shards)) - done - set(hedged)):
            self._hedge(round_id, shard, "its worker had not finished")
            hedged.append(shard)
        # Results reported after this point are ignored: this round's batches are decided.
        outputs = self.broker.mget(
            [self.keys.shard_output(round_id, s) for s in range(manifest.shards)]
        )
        fragments: dict[str, list[bytes]] = {a: [] for a in manifest.aggregators}
        commands = refusals = errors = 0
        unusable: dict[str, str] = {}  # aggregators whose tree a worker could not parse
        shard_seconds = []
        for raw_out in outputs:
            if raw_out is None:
                continue
            out = unpackb(cast(bytes, raw_out))
            commands += out["commands"]
            refusals += len(out["refusals"])
            errors += len(out["errors"])
            unusable.update(out.get("unusable", {}))
            shard_seconds.append(out["duration_s"])
            for agg, frag in out["fragments"].items():
                fragments.setdefault(agg, []).append(frag)
        for agg in unusable:  # skipped this tick (the worker logged why)
            fragments.pop(agg, None)
        tag = round_tag(manifest.ctx.market_slot, manifest.ctx.tick_index)
        bodies = [
            OutgoingBatch(agg, f"{tag}/{uuid.uuid4()}", merge_fragments(frags))
            for agg, frags in fragments.items()
        ]
        self.link.send_batches(bodies)
        published = time.time()
        latency = published - manifest.received_at
        on_time = published <= manifest.deadline
        outcome = RoundOutcome(
            round_id=round_id,
            aggregators=len(bodies),
            shards=manifest.shards,
            hedged=len(hedged),
            commands=commands,
            refusals=refusals,
            errors=errors,
            unusable=len(unusable),
            latency_s=latency,
            budget_s=manifest.deadline - manifest.received_at,
            on_time=on_time,
            shard_seconds=shard_seconds,
        )
        self._record(outcome, manifest)
        return outcome

    def _wait_done(self, done_key: str, done: set[int], shards: int, until: float) -> None:
        while len(done) < shards:
            remaining = until - time.time()
            if remaining <= 0:
                return
            got = self.broker.blpop([done_key], timeout=max(0.01, min(remaining, 1.0)))
            if got is not None:
                done.add(int(got[1]))

    def _drain_done(self, done_key: str, done: set[int]) -> None:
        """Take what workers finished meanwhile, without waiting."""
        for raw in self.broker.lpop(done_key, 1000) or []:
            done.add(int(raw))

    def _hedge(self, round_id: str, shard: int, why: str) -> None:
        run_shard(self.broker, self.keys, round_id, shard, worker="coordinator-hedge")
        log.warning("round %s: shard %d hedged by the coordinator (%s)", round_id, shard, why)

    def _record(self, o: RoundOutcome, manifest: Manifest) -> None:
        m = self.metrics
        m.deadline.labels("hit" if o.on_time else "miss").inc()
        m.hedged.inc(o.hedged)
        m.commands_sent.inc(o.commands)
        m.commands_refused.inc(o.refusals)
        m.strategy_errors.inc(o.errors)
        m.bad_events.inc(o.unusable)
        for s in o.shard_seconds:
            m.shard_seconds.observe(s)
        for agg in manifest.aggregators:
            m.latency.labels(self.aggregator_names.get(agg, agg)).observe(o.latency_s)
        record = {
            "kind": "round",
            "round": o.round_id.split(":", 1)[-1],
            "slot": manifest.ctx.market_slot,
            "tick": manifest.ctx.tick_index,
            "aggregators": o.aggregators,
            "shards": o.shards,
            "hedged": o.hedged,
            "commands": o.commands,
            "refused": o.refusals,
            "strategy_errors": o.errors,
            "latency_ms": round(o.latency_s * 1e3, 2),
            "budget_ms": round(o.budget_s * 1e3, 2),
            "on_time": o.on_time,
            "shard_ms_max": round(max(o.shard_seconds, default=0.0) * 1e3, 2),
        }
        pipe = self.broker.pipeline(transaction=False)
        pipe.xadd(
            self.keys.events, {"data": orjson.dumps(record)}, maxlen=100_000, approximate=True
        )
        pipe.hincrby(self.keys.counters, "rounds", 1)
        pipe.hincrby(self.keys.counters, "batches", o.aggregators)
        pipe.hincrby(self.keys.counters, "commands_sent", o.commands)
        pipe.hincrby(self.keys.counters, "commands_refused", o.refusals)
        pipe.hincrby(self.keys.counters, "hedged_shards", o.hedged)
        pipe.hincrby(self.keys.counters, "strategy_errors", o.errors)
        pipe.hincrby(self.keys.counters, "unusable_trees", o.unusable)
        pipe.hincrby(self.keys.counters, "deadline_hit" if o.on_time else "deadline_miss", 1)
        pipe.execute()
        self.outcomes.append(o)
        log.info(
            "round %s: %d batches, %d commands, %d refused, %d hedged, %.0f ms of %.0f ms",
            record["round"],
            o.aggregators,
            o.commands,
            o.refusals,
            o.hedged,
            o.latency_s * 1e3,
            o.budget_s * 1e3,
            extra={"slot": manifest.ctx.market_slot, "tick": manifest.ctx.tick_index},
        )

    # -- batch responses ----------------------------------------------------------------------

    def _response_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                _aggregator, raw = self._responses.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.handle_response(raw)
            except redis.RedisError as exc:
                log.error("could not record a batch response: %s", exc)

    def handle_response(self, raw: bytes) -> int:
        """Record one batch response; returns how many commands it rejected."""
        if b'"error"' not in raw and b"market_stats" not in raw:
            # Nothing to record: every command was accepted. Most responses are like this, and
            # at 100 000 assets decoding them all would cost a core a tenth of every tick.
            return 0
        try:
            resp = decode(raw, BatchResponse)
        except ProtocolError as exc:
            log.error("unusable batch response skipped: %s", exc)
            return 0
        agg_name = self.aggregator_names.get(resp.aggregator_uuid, resp.aggregator_uuid)
        rejected = 0
        examples: list[str] = []
        pipe = self.broker.pipeline(transaction=False)
        for asset, answers in resp.responses.items():
            name = self.asset_names.get(asset)
            if name is None:
                log.warning(
                    "batch response of %s names an asset the fleet does not know: %s",
                    agg_name,
                    asset,
                    extra={"aggregator": agg_name},
                )
                continue
            for answer in answers:
                command = answer.command if isinstance(answer.command, str) else "?"
                if not answer.ok:
                    rejected += 1
                    reason = answer.reason or "no reason given"
                    if len(examples) < 3:
                        examples.append(f"{command} of {name}: {reason}")
                    log.debug(
                        "exchange rejected %s of %s (%s): %s",
                        command,
                        name,
                        agg_name,
                        reason,
                        extra={"aggregator": agg_name},
                    )
                    pipe.hset(
                        self.keys.rejections,
                        asset,
                        packb(
                            {
                                "command": command,
                                "reason": reason,
                                "transaction_id": resp.transaction_id,
                            }
                        ),
                    )
                elif command == "dso_market_stats" and isinstance(answer.market_stats, dict):
                    pipe.hset(self.keys.market_answers, asset, packb(answer.market_stats))
        if rejected:
            # One line per batch: a bad tick can reject tens of thousands of commands.
            log.warning(
                "exchange rejected %d commands of %s (batch %s), e.g. %s",
                rejected,
                agg_name,
                resp.transaction_id,
                "; ".join(examples),
                extra={"aggregator": agg_name},
            )
            pipe.hincrby(self.keys.counters, "commands_rejected", rejected)
            self.metrics.commands_rejected.inc(rejected)
        pipe.execute()
        return rejected

    def close(self) -> None:
        self.stop_event.set()
        self.link.close()
        self.broker.close()
