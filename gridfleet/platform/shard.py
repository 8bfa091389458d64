"""A shard's trip through Redis: load its input and state, evaluate, store the result, say done.

Idempotent per (round, shard). State is stored per uuid as ``[round id, before, after]``: a run
for round R reads ``before`` if the entry was already written by round R (a retry, a hedge, a
late duplicate) and ``after`` otherwise, so running a shard twice gives the same state and the
same commands. The coordinator counts a shard once however many times it is reported done.

The fees a slot's orders are priced with are remembered on the broker (shards run on any worker):
at a market-event round each shard replaces its aggregators' ``Keys.slot_fees`` hashes with the
fees their trees showed (``platform.rounds``: the fee gsy-e applies to every order of the slot);
at the slot's ticks each shard reads them back, pipelined, in one round trip. A worker started
mid-slot still finds them; a fleet that started mid-slot (or whose market-event round was lost)
has none for that slot and prices from the tick's tree.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, cast

import numpy as np
import redis

from gridfleet.exchange.outbound import ExchangeProfile
from gridfleet.platform.bulk_redis import Command, execute_many, hmget_many, hset_command
from gridfleet.platform.codec import (
    array_header,
    bin_header,
    ctx_from_dict,
    ctx_to_dict,
    packb,
    unpackb,
)
from gridfleet.platform.evaluate import ShardOutput, evaluate_shard
from gridfleet.platform.keys import Keys
from gridfleet.platform.rounds import SlotFeeMap, TreePart, flatten_parts
from gridfleet.platform.shard_inputs import BrokerInputs, InputStore, resolve_input
from gridfleet.runtime.interpreter import gc_paused
from gridfleet.strategies import registry
from gridfleet.strategies.base import DSO_MARKET_STATS_KEY, AssetStrategy, MarketStrategy
from gridfleet.strategies.context import AssetBatch, AssetKind, MarketView, State, TickContext

log = logging.getLogger(__name__)

ROUND_TTL_S = 120
"""Round data (inputs, outputs, manifests) expire: nothing needs them a minute later."""

SLOT_FEES_SLOT_FIELD = "#slot"
"""The field of a ``Keys.slot_fees`` hash naming the slot its fees are for (never a uuid)."""

SLOT_FEES_MIN_TTL_S = 3600
"""Remembered fees outlive their slot (``2 x slot_length_s``, at least this): only the slot's ticks
read them, and a newer market event replaces them."""

REJECTED_KEY = "rejected"
"""Key under which an asset's last rejected command is shown to its strategy (not persisted)."""


@dataclass(frozen=True)
class FleetSpec:
    """What workers need to know of the fleet, written by ingress to ``Keys.spec``: the
    strategies and which asset and market each one serves."""

    strategies: list[dict[str, Any]]  # [{"name", "params"}], indexed by strategy_index
    market_strategies: list[dict[str, Any]] = field(default_factory=list)
    accepts_requirements: bool = False
    asset_uuids_by_name: dict[str, str] | None = None  # only when a strategy needs names
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # aggregator -> index per kind
    by_asset: dict[str, int] = field(default_factory=dict)  # asset uuid -> index (overrides)
    market_strategy: dict[str, int] = field(default_factory=dict)  # market uuid -> index
    own_markets: dict[str, frozenset[str]] = field(default_factory=dict)  # aggregator -> markets

    @property
    def version(self) -> str:
        return hashlib.sha256(packb(self.to_dict())).hexdigest()[:16]

    def strategy_indices(self, batch: AssetBatch) -> np.ndarray:
        """Each asset's strategy: its own override, else its aggregator's for its kind.

        Looked up once per run of an aggregator's rows (rows come tree by tree) when no asset
        of the batch has its own strategy; else row by row (:meth:`strategy_indices_per_row`).
        """
        if len(batch) == 0 or (self.by_asset and not self.by_asset.keys().isdisjoint(batch.uuid)):
            return self.strategy_indices_per_row(batch)
        runs = [(aggregator, len(list(rows))) for aggregator, rows in groupby(batch.aggregator)]
        table = [self.by_kind[aggregator] for aggregator, _ in runs]  # KeyError as per row
        if any(len(per_kind) != len(AssetKind) for per_kind in table):
            return self.strategy_indices_per_row(batch)
        run_of_row = np.repeat(np.arange(len(runs)), [n for _, n in runs])
        return np.asarray(table, dtype=np.int64)[run_of_row, batch.kind]

    def strategy_indices_per_row(self, batch: AssetBatch) -> np.ndarray:
        """:meth:`strategy_indices`, one asset at a time (the reference it is tested against)."""
        by_asset, by_kind = self.by_asset, self.by_kind
        return np.fromiter(
            (
                by_asset[u] if u in by_asset else by_kind[a][k]
                for u, a, k in zip(batch.uuid, batch.aggregator, batch.kind.tolist(), strict=True)
            ),
            dtype=np.int64,
            count=len(batch),
        )

    def market_strategy_indices(self, markets: list[MarketView]) -> list[int]:
        return [self.market_strategy[m.uuid] for m in markets]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategies": self.strategies,
            "market_strategies": self.market_strategies,
            "accepts_requirements": self.accepts_requirements,
            "asset_uuids_by_name": self.asset_uuids_by_name,
            "by_kind": self.by_kind,
            "by_asset": self.by_asset,
            "market_strategy": self.market_strategy,
            "own_markets": {a: sorted(m) for a, m in self.own_markets.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FleetSpec:
        return cls(
            strategies=list(d["strategies"]),
            market_strategies=list(d.get("market_strategies", [])),
            accepts_requirements=bool(d.get("accepts_requirements", False)),
            asset_uuids_by_name=d.get("asset_uuids_by_name"),
            by_kind={a: list(v) for a, v in d.get("by_kind", {}).items()},
            by_asset=dict(d.get("by_asset", {})),
            market_strategy=dict(d.get("market_strategy", {})),
            own_markets={a: frozenset(m) for a, m in d.get("own_markets", {}).items()},
        )


class Runtime:
    """Strategies built from a spec, cached by the spec's version (built once per process)."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.version = spec.version
        self.strategies: list[AssetStrategy] = []
        for s in spec.strategies:
            built = registry.build(s["name"], s.get("params") or {})
            if not isinstance(built, AssetStrategy):
                raise TypeError(f"strategy {s['name']!r} is not an asset strategy")
            self.strategies.append(built)
        self.market_strategies: list[MarketStrategy] = []
        for s in spec.market_strategies:
            built = registry.build(s["name"], s.get("params") or {})
            if not isinstance(built, MarketStrategy):
                raise TypeError(f"strategy {s['name']!r} is not a market strategy")
            self.market_strategies.append(built)
        self.profile = ExchangeProfile(accepts_requirements=spec.accepts_requirements)


_runtimes: dict[str, Runtime] = {}


def runtime_for(r: redis.Redis, keys: Keys, version: str) -> Runtime:
    rt = _runtimes.get(version)
    if rt is None:
        raw = r.hget(keys.spec, version)
        if raw is None:
            raise LookupError(
                f"fleet spec {version} is not in Redis ({keys.spec}); is ingress running?"
            )
        rt = _runtimes[version] = Runtime(FleetSpec.from_dict(unpackb(raw)))  # type: ignore[arg-type]
    return rt


def publish_spec(r: redis.Redis, keys: Keys, spec: FleetSpec) -> str:
    version = spec.version
    r.hset(keys.spec, version, packb(spec.to_dict()))
    return version


# ---------------------------------------------------------------------------------------------
# Writing a round (ingress) and reading/writing a shard (workers, coordinator)


_PARTS_KEY = b"\x81" + packb("parts")  # a map of one key, "parts"


@dataclass(slots=True)
class ShardInput:
    """The raw trees of the aggregators a shard evaluates (see :class:`TreePart`)."""

    parts: list[TreePart]

    @property
    def aggregators(self) -> list[str]:
        return [p.aggregator for p in self.parts]

    def pack(self) -> bytes:
        return packb({"parts": [[p.aggregator, p.tree, p.start, p.stop] for p in self.parts]})

    def pack_pieces(self) -> list[bytes]:
        """:meth:`pack`'s bytes in pieces, each tree as it is: at 100 000 assets a round's
        trees are ~33 MB, which packing into one buffer copied once more before it was written.
        ``b"".join(pack_pieces()) == pack()``."""
        out = [_PARTS_KEY + array_header(len(self.parts))]
        for p in self.parts:
            out.append(array_header(4) + packb(p.aggregator) + bin_header(len(p.tree)))
            out.append(p.tree)
            out.append(packb(p.start) + packb(p.stop))
        return out

    @classmethod
    def unpack(cls, raw: bytes) -> ShardInput:
        d = unpackb(raw)
        return cls([TreePart(a, tree, start, stop) for a, tree, start, stop in d["parts"]])


@dataclass(slots=True)
class Manifest:
    """What the coordinator and workers know of a dispatched round."""

    round_id: str
    ctx: TickContext
    spec_version: str
    shards: int
    aggregators: list[str]
    received_at: float  # wall clock, first event of the round
    deadline: float  # wall clock by which batches must be published
    skipped_aggregators: list[str] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)  # wall clock, per ``aggregators``
    # False while the round's events still arrive and its first shards are out: ``shards`` and
    # ``aggregators`` are what is out so far; the final one follows (DONE_FINAL on the done list)
    final: bool = True

    def pack(self) -> bytes:
        return packb(
            {
                "round_id": self.round_id,
                "ctx": ctx_to_dict(self.ctx),
                "spec_version": self.spec_version,
                "shards": self.shards,
                "aggregators": self.aggregators,
                "received_at": self.received_at,
                "deadline": self.deadline,
                "skipped_aggregators": self.skipped_aggregators,
                "arrived_at": self.arrived_at,
                "final": self.final,
            }
        )

    @classmethod
    def unpack(cls, raw: bytes) -> Manifest:
        d = unpackb(raw)
        d["ctx"] = ctx_from_dict(d["ctx"])
        return cls(**d)


DONE_FINAL = -1
"""Pushed on a round's done list (where workers push shard numbers) when its manifest is final."""
DONE_DROPPED = -2
"""Pushed on a round's done list when ingress drops a round it had sent shards of ahead."""


def mark_done(r: redis.Redis, keys: Keys, round_id: str, mark: int) -> None:
    """Push ``mark`` (:data:`DONE_FINAL`, :data:`DONE_DROPPED`) where the coordinator waits."""
    pipe = r.pipeline(transaction=False)
    pipe.rpush(keys.done(round_id), mark)
    pipe.expire(keys.done(round_id), ROUND_TTL_S)
    pipe.execute()


def write_round(
    r: redis.Redis,
    keys: Keys,
    manifest: Manifest,
    shards: list[ShardInput],
    first: int = 0,
    inputs: InputStore | None = None,
) -> None:
    """Store a round's manifest and shard inputs ``first``, ``first + 1``... in one pipeline
    (with a TTL); the inputs themselves on the broker or in ``inputs`` (shared memory, see
    :mod:`~gridfleet.platform.shard_inputs`). Ingress may write a round in parts: see
    ``Ingress._stream``."""
    store = inputs or BrokerInputs()
    pipe = r.pipeline(transaction=False)
    pipe.set(keys.manifest(manifest.round_id), manifest.pack(), ex=ROUND_TTL_S)
    for i, shard in enumerate(shards, start=first):
        key = keys.shard_input(manifest.round_id, i)
        store.put(pipe, key, shard.pack_pieces(), manifest.deadline, ROUND_TTL_S)
    pipe.execute()


def stored_input(r: redis.Redis, keys: Keys, round_id: str, shard: int) -> ShardInput | None:
    """A written shard input, wherever it waits (broker or shared memory); None once expired."""
    raw = cast(bytes | None, r.get(keys.shard_input(round_id, shard)))
    blob = None if raw is None else resolve_input(raw)
    return None if blob is None else ShardInput.unpack(blob)


def read_slot_fees(
    r: redis.Redis, keys: Keys, market_slot: str, aggregators: list[str]
) -> dict[str, SlotFeeMap]:
    """Aggregator -> the fees remembered at ``market_slot``'s market event, in one round trip.

    An aggregator whose hash is missing, expired or of another slot is left out (its tree's
    fees are used); so is a value that is not a finite, non-negative number.
    """
    if not aggregators:
        return {}
    pipe = r.pipeline(transaction=False)
    for aggregator in aggregators:
        pipe.hgetall(keys.slot_fees(aggregator))
    slot = market_slot.encode()
    out: dict[str, SlotFeeMap] = {}
    for aggregator, raw in zip(aggregators, pipe.execute(), strict=True):
        if not raw or raw.get(SLOT_FEES_SLOT_FIELD.encode()) != slot:
            continue
        fees: dict[str, float] = {}
        for market, value in raw.items():
            try:
                fee = float(value)
            except ValueError:
                continue  # the slot field, or a value gridfleet did not write
            if math.isfinite(fee) and fee >= 0.0:
                fees[market.decode()] = fee
        out[aggregator] = fees
    return out


def slot_fee_commands(
    keys: Keys,
    market_slot: str,
    fees: Mapping[str, Mapping[str, float]],
    slot_length_s: int,
) -> list[Command]:
    """Each aggregator's hash replaced by its fees of ``market_slot`` (for ``execute_many``)."""
    ttl = max(SLOT_FEES_MIN_TTL_S, 2 * slot_length_s)
    commands: list[Command] = []
    for aggregator, markets in fees.items():
        key = keys.slot_fees(aggregator)
        # DEL first: markets the aggregator no longer has assets in must not linger
        fields = {SLOT_FEES_SLOT_FIELD: market_slot, **{m: repr(f) for m, f in markets.items()}}
        commands += [("DEL", key), hset_command(key, fields), ("EXPIRE", key, ttl)]
    return commands


def _read_state(entries: list[bytes | None], uuids: list[str], round_id: str) -> dict[str, State]:
    state: dict[str, State] = {}
    for uuid, raw in zip(uuids, entries, strict=True):
        if raw is None:
            continue
        written_for, before, after = unpackb(raw)
        chosen = before if written_for == round_id else after
        if chosen is not None:
            state[uuid] = chosen
    return state


def claim_shard(r: redis.Redis, keys: Keys, round_id: str, shard: int, who: str) -> bool:
    """Say "I am running this shard"; False if someone already said so.

    Workers claim before they start, so the coordinator only hedges shards nobody runs (and a
    worker skips a shard the coordinator took). A claim is not a lock: the coordinator still
    runs a claimed shard that is not done at the deadline (its worker may have died), which
    is safe because a shard run is idempotent.
    """
    claim = f"{who} {time.time():.3f}"
    return bool(r.set(keys.claim(round_id, shard), claim, nx=True, ex=ROUND_TTL_S))


def claimed_at(r: redis.Redis, keys: Keys, round_id: str, shards: list[int]) -> dict[int, float]:
    """When each of ``shards`` was claimed (wall clock); shards nobody claimed are left out."""
    if not shards:
        return {}
    found: dict[int, float] = {}
    for shard, raw in zip(shards, r.mget([keys.claim(round_id, s) for s in shards]), strict=True):
        if raw is None:
            continue
        _, _, at = cast(bytes, raw).decode(errors="replace").rpartition(" ")
        try:
            found[shard] = float(at)
        except ValueError:
            found[shard] = 0.0  # a claim without its time: as old as can be
    return found


@dataclass(slots=True)
class ShardRun:
    output: ShardOutput
    duration_s: float
    already_done: bool = False
    assets: int = 0  # assets and markets evaluated


def run_shard(
    r: redis.Redis, keys: Keys, round_id: str, shard: int, *, worker: str | None = None
) -> ShardRun:
    """Evaluate one stored shard and store its result; safe to run more than once."""
    started = time.time()
    t0 = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.manifest(round_id))
    pipe.get(keys.shard_input(round_id, shard))
    raw_manifest, raw_input = pipe.execute()
    if raw_input is not None:
        raw_input = resolve_input(raw_input)
    if raw_manifest is None or raw_input is None:
        raise LookupError(f"round {round_id} shard {shard}: input expired or never written")
    manifest = Manifest.unpack(raw_manifest)
    shard_in = ShardInput.unpack(raw_input)
    rt = runtime_for(r, keys, manifest.spec_version)
    market_event = manifest.ctx.is_market_event
    remembered = (
        {}
        if market_event
        else read_slot_fees(
            r, keys, manifest.ctx.market_slot, list(dict.fromkeys(shard_in.aggregators))
        )
    )
    with gc_paused():
        flat = flatten_parts(shard_in.parts, rt.spec.own_markets, remembered, market_event)
    for aggregator, why in flat.unusable.items():
        log.error(
            "round %s: event of aggregator %s skipped: %s",
            round_id,
            aggregator,
            why,
            extra={"aggregator": aggregator},
        )
    batch, markets = flat.assets, flat.markets

    asset_uuids = batch.uuid
    market_uuids = [m.uuid for m in markets]
    uuids = asset_uuids + market_uuids
    raw_state, raw_rejected, raw_answers = hmget_many(
        r,
        [
            (keys.state, uuids),
            (keys.rejections, asset_uuids),
            (keys.market_answers, market_uuids),
        ],
    )
    stored = _read_state(raw_state, uuids, round_id) if uuids else {}

    # What strategies see: stored state plus what the exchange said since (not persisted as is).
    seen: dict[str, State] = dict(stored)
    if asset_uuids:
        for uuid, raw in zip(asset_uuids, raw_rejected, strict=True):
            if raw is not None:
                seen[uuid] = {**seen.get(uuid, {}), REJECTED_KEY: unpackb(raw)}
    answered: list[str] = []
    if market_uuids:
        for uuid, raw in zip(market_uuids, raw_answers, strict=True):
            if raw is not None:
                seen[uuid] = {**seen.get(uuid, {}), DSO_MARKET_STATS_KEY: unpackb(raw)}
                answered.append(uuid)

    ctx = manifest.ctx
    if rt.spec.asset_uuids_by_name is not None:
        ctx = TickContext(
            **{**ctx_to_dict(ctx), "asset_uuids_by_name": rt.spec.asset_uuids_by_name}
        )
    with gc_paused():
        output = evaluate_shard(
            ctx,
            batch,
            rt.spec.strategy_indices(batch),
            rt.strategies,
            seen,
            markets,
            rt.spec.market_strategy_indices(markets),
            rt.market_strategies,
            rt.profile,
        )
    duration = time.perf_counter() - t0
    result = {
        "fragments": output.fragments,
        # aggregators only partly in this shard: their batch waits for their other parts
        "split": sorted({p.aggregator for p in shard_in.parts if p.start or p.stop is not None}),
        "commands": output.commands,
        # every aggregator of the shard, none left out: its batch is decided with this shard
        "counts": {**dict.fromkeys(shard_in.aggregators, 0), **output.counts},
        "refusals": [x.as_dict() for x in output.refusals],
        "errors": [x.as_dict() for x in output.errors],
        "unusable": flat.unusable,
        "duration_s": duration,
        "started_at": started,  # wall clock: with the manifest's times, how long it queued
        "worker": worker or socket.gethostname(),
    }
    for new in output.state.values():
        new.pop(REJECTED_KEY, None)
    # One HSET of every asset's state, not one per asset: 12 500 commands cost 54 ms to pack.
    commands: list[Command] = []
    if output.state:
        states = {u: packb([round_id, stored.get(u), new]) for u, new in output.state.items()}
        commands.append(hset_command(keys.state, states))
    if answered:
        commands.append(("HDEL", keys.market_answers, *answered))
    if flat.slot_fees:
        slot, length = manifest.ctx.market_slot, manifest.ctx.slot_length_s
        commands += slot_fee_commands(keys, slot, flat.slot_fees, length)
    commands += [
        ("SET", keys.shard_output(round_id, shard), packb(result), "EX", ROUND_TTL_S),
        ("RPUSH", keys.done(round_id), shard),
        ("EXPIRE", keys.done(round_id), ROUND_TTL_S),
    ]
    execute_many(r, commands)
    return ShardRun(output=output, duration_s=duration, assets=len(uuids))
