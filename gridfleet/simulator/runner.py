"""The exchange's main loop and the library entry point, :class:`Simulator`.

One engine thread owns all state. It wakes every ``internal_tick`` (10 ms) or when a message
arrives, applies what came in (aggregator commands and registrations at once, batches at this
internal tick), and every ``tick_interval`` seconds dispatches the next tick event round:

    match open orders -> trade events -> next tick event (market + 0 % tick at a slot start)

A slot has 10 tick events (0 %..90 %); the slot closes one interval after its 90 % tick. Like
gsy-e, tick events of the very first slot carry an empty ``grid_tree`` and null rates and there
is no market event for it. After the last slot: per-market and per-aggregator finish events.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
import uuid as uuid_mod
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import redis

from gridfleet.exchange import channels
from gridfleet.runtime.interpreter import gc_paused
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.batch import ASSET, MARKET, BatchHandler
from gridfleet.simulator.deadline import DeadlineTracker, percentiles
from gridfleet.simulator.events import (
    FINISH_EVENT,
    EventBuilder,
    TreeMode,
    owner_array,
    trade_rows,
)
from gridfleet.simulator.grid import Grid
from gridfleet.simulator.protocol_server import (
    AGG_COMMAND,
    BATCH,
    CONTROL,
    REGISTER,
    AggregatorRegistry,
    Inbound,
    Inbox,
)
from gridfleet.simulator.state import ExchangeState, TradeReport

log = logging.getLogger(__name__)

TICKS_PER_SLOT = 10


@dataclass
class SimConfig:
    """How a simulation runs. ``tick_interval=None`` means manual stepping (:meth:`Simulator.advance`)."""

    slots: int = 8
    slot_length: timedelta = timedelta(minutes=15)
    tick_interval: float | None = 1.0
    start: datetime = datetime(2024, 6, 1)
    paused: bool = False
    tree: TreeMode = "full"
    internal_tick: float = 0.01
    heartbeat_interval: float = 5.0
    config_id: str = ""


@dataclass
class Counts:
    """What the exchange did so far."""

    rounds: int = 0
    events_sent: int = 0
    batches_received: int = 0
    batches_answered: int = 0
    commands: int = 0
    trades: int = 0
    energy_traded_kwh: float = 0.0
    bytes_sent: int = 0  # event payload bytes (market, tick, trade)
    round_ms: list[float] = field(default_factory=list)  # match + build + publish of each round
    match_ms: list[float] = field(default_factory=list)  # the matching part of it
    event_round_ms: list[float] = field(default_factory=list)  # refresh + build + publish ticks
    trade_events_ms: list[float] = field(default_factory=list)


class Simulator:
    """The embedded gsy-e-compatible exchange.

    >>> sim = Simulator(grid, redis_url=None, config=SimConfig(slots=4, tick_interval=0.2))
    >>> sim.start()            # embedded redis-server when redis_url is None
    >>> sim.redis_url          # hand this to clients
    >>> sim.wait(timeout=60)   # True once the finish events went out
    >>> sim.report()           # deadline report (dict); sim.counts for totals
    >>> sim.stop()
    """

    def __init__(
        self, grid: Grid, redis_url: str | None = None, config: SimConfig | None = None
    ) -> None:
        self.grid = grid
        self.config = config or SimConfig()
        if self.config.tree not in ("full", "pruned"):
            raise ValueError("tree must be 'full' or 'pruned'")
        if self.config.slots < 1:
            raise ValueError("slots must be at least 1")
        self._redis_url = redis_url
        self._server: RedisServer | None = None
        self.state = ExchangeState(grid, self.config.slot_length, self.config.start)
        devices: dict[str, tuple[int, int]] = {u: (ASSET, i) for i, u in enumerate(grid.asset_uuid)}
        devices.update({m.uuid: (MARKET, m.index) for m in grid.markets})
        self.devices = devices
        self.registry = AggregatorRegistry(devices={u: "" for u in devices})
        for n, u in zip(grid.asset_name, grid.asset_uuid, strict=True):
            self.registry.names.setdefault(n, u)  # duplicate names: the first one registers
        for m in grid.markets:
            self.registry.names.setdefault(m.slug, m.uuid)
        self.handler = BatchHandler(self.state, devices)
        self.events = EventBuilder(grid, self.config.tree)
        self.deadline = DeadlineTracker()
        self.counts = Counts()
        self.paused = self.config.paused
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._steps: queue.Queue[threading.Event] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._inbox: Inbox | None = None
        self._pub: redis.Redis | None = None
        self._opened = False
        self._slot = 0
        self._tick = 0
        self._heads_slot = -2
        self._trade_seq = 0
        self._refresh_ms = 0.0
        self._asset_owner: dict[int, str] = {}
        self._owner_arr = owner_array(grid, {})
        self._trees: dict[str, bytes] = {}  # trees built since the last refresh (trade events)
        self._backlog: collections.deque[Inbound] = collections.deque()
        self.batch_chunk = 200  # messages applied between two looks at the dispatch clock
        # batches count for the deadline report from the first round of slot 1 on
        self._counting_since = math.inf
        self._own_assets: dict[str, list[int]] = {}
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def redis_url(self) -> str:
        if self._redis_url is None:
            raise RuntimeError("start() the simulator first")
        return self._redis_url

    def preselect(self, fleet: dict[str, dict[str, list[str]]]) -> dict[str, str]:
        """Create the aggregators of a fleet assignment (see ``grid.assign_aggregators``) and
        select their assets and markets without the wire. Call before :meth:`start`. Returns
        name -> aggregator uuid (uuid5 of the name, so it is stable across runs)."""
        if self._thread is not None:
            raise RuntimeError("preselect() must be called before start()")
        out = {}
        for name, entry in fleet.items():
            agg = str(uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"gridfleet-aggregator/{name}"))
            self.registry.command({"type": "CREATE", "name": name, "transaction_id": agg})
            for dev in [*entry.get("asset_uuids", []), *entry.get("market_uuids", [])]:
                self.registry.command(
                    {
                        "type": "SELECT",
                        "aggregator_uuid": agg,
                        "device_uuid": dev,
                        "transaction_id": "",
                    }
                )
            out[name] = agg
        return out

    def start(self, engine: bool = True) -> Simulator:
        """Connect (or start an embedded Redis), subscribe, and start the engine thread.

        ``engine=False`` only connects: the caller drives rounds with :meth:`step` (benchmarks).
        """
        if self._redis_url is None:
            self._server = RedisServer().start()
            self._redis_url = self._server.url
        self._pub = redis.Redis.from_url(self._redis_url)
        if not engine:
            return self
        # The inbox thread stamps each batch's arrival while the engine applies earlier ones:
        # run the exchange with gridfleet.runtime.interpreter.favour_reader_threads() (the
        # `gridfleet` command and the benchmarks do) or it measures its own backlog.
        self._inbox = Inbox(
            redis.Redis.from_url(self._redis_url, socket_read_size=1 << 20), self.config.config_id
        )
        self._inbox.start()
        self._thread = threading.Thread(target=self._run, name="sim-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the engine (no finish events), close connections, stop an embedded Redis."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._inbox is not None:
            self._inbox.stop()
        if self._pub is not None:
            self._pub.close()
        if self._server is not None:
            self._server.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the simulation finished; False on timeout."""
        return self.finished.wait(timeout)

    def advance(self, timeout: float = 30.0) -> None:
        """Manual mode: dispatch the next tick round now and wait until it is published."""
        done = threading.Event()
        self._steps.put(done)
        if not done.wait(timeout):
            raise TimeoutError("the engine did not dispatch the tick in time")

    def step(self) -> None:
        """Dispatch one round in the calling thread (only after ``start(engine=False)``)."""
        if self._thread is not None:
            raise RuntimeError("step() is for start(engine=False); use advance() with the engine")
        self._dispatch()

    def resume(self) -> None:
        self.paused = False

    def report(self) -> dict[str, Any]:
        """The deadline report (see :mod:`deadline`), with the run's counts in ``meta``."""
        c = asdict(self.counts)
        round_ms = c.pop("round_ms")
        match_ms = c.pop("match_ms")
        event_ms = c.pop("event_round_ms")
        c.pop("trade_events_ms")
        cfg = asdict(self.config)
        cfg["slot_length"] = self.config.slot_length.total_seconds()
        cfg["start"] = self.config.start.isoformat()
        return self.deadline.report(
            {
                "grid": self.grid.describe(),
                "config": cfg,
                "counts": c,
                "round_build_publish_ms": {
                    k: None if v is None else round(v, 3) for k, v in percentiles(round_ms).items()
                },
                "event_round_ms": {
                    k: None if v is None else round(v, 3) for k, v in percentiles(event_ms).items()
                },
                "match_ms": {
                    k: None if v is None else round(v, 3) for k, v in percentiles(match_ms).items()
                },
                "first_slot_excluded": True,
            },
            names=dict(self.registry.aggregators),
        )

    # ------------------------------------------------------------------ engine

    def _run(self) -> None:
        cfg = self.config
        next_dispatch = time.time()
        next_heartbeat = time.time()
        try:
            while not self._stop.is_set() and not self.finished.is_set():
                now = time.time()
                if now >= next_heartbeat:
                    self._publish(channels.HEARTBEAT, {"time": int(now)})
                    next_heartbeat = now + cfg.heartbeat_interval
                if cfg.tick_interval is None or self.paused:
                    wait = cfg.internal_tick
                else:
                    wait = min(cfg.internal_tick, max(0.0, next_dispatch - now))
                self._drain(wait, next_dispatch if cfg.tick_interval is not None else math.inf)
                if cfg.tick_interval is None:
                    while not self._steps.empty():
                        done = self._steps.get()
                        if not self.finished.is_set():
                            self._dispatch()
                        done.set()
                elif self.paused:
                    next_dispatch = time.time()
                elif time.time() >= next_dispatch:
                    self._dispatch()
                    # keep the cadence; if a round overran the interval, do not try to catch up
                    next_dispatch = max(next_dispatch + cfg.tick_interval, time.time())
        except BaseException as exc:  # keep the reason for whoever waits on us
            log.exception("simulator engine crashed")
            self.error = exc
            self.finished.set()
            raise

    def _drain(self, wait: float, until: float = math.inf) -> None:
        """Apply what came in, in chunks of ``batch_chunk`` messages, until ``until`` (the next
        dispatch): a backlog never delays a tick round; what is left waits in ``_backlog`` for
        the next pass. Each message keeps the time the inbox read it (deadline accounting)."""
        assert self._inbox is not None
        q = self._inbox.queue
        backlog = self._backlog
        try:
            if not backlog:
                backlog.append(q.get(timeout=wait) if wait > 0 else q.get_nowait())
            while len(backlog) < 20000:
                backlog.append(q.get_nowait())
        except queue.Empty:
            pass
        while backlog:
            n = min(len(backlog), self.batch_chunk)
            with gc_paused():
                self._apply([backlog.popleft() for _ in range(n)])
            if time.time() >= until:
                break

    def _account_backlog(self, now: float) -> None:
        """At the finish: batches read before it but not applied yet still count as arrived
        (deadline report); they get no answer, like any batch after the final tick."""
        backlog = self._backlog
        if self._inbox is not None:
            with contextlib.suppress(queue.Empty):
                while True:
                    backlog.append(self._inbox.queue.get_nowait())
        while backlog:
            msg = backlog.popleft()
            if msg.kind == BATCH and msg.at <= now:
                data = self._parse(msg)
                if data is not None:
                    self._batch_item(data, msg.at)

    def _apply(self, msgs: list[Inbound]) -> None:
        """Handle messages in order; consecutive batches are applied together (one numpy pass
        over all their orders, see ``BatchHandler.respond_many``)."""
        assert self._pub is not None
        pipe = self._pub.pipeline(transaction=False)
        group: list[tuple[dict[str, Any], set[str], str]] = []
        for msg in msgs:
            try:
                data = self._parse(msg)
                if data is None:
                    continue
                if msg.kind == BATCH:
                    item = self._batch_item(data, msg.at)
                    if item is not None:
                        group.append(item)
                    continue
                if group:
                    self._answer(group, pipe)
                    group = []
                self._handle(msg.kind, msg.channel, data, pipe)
            except Exception:  # one bad message must never stop the exchange
                log.exception("could not handle a message on %s", msg.channel)
        if group:
            self._answer(group, pipe)
        pipe.execute()

    @staticmethod
    def _parse(msg: Inbound) -> dict[str, Any] | None:
        try:
            data = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            log.info("non-JSON message on %s ignored", msg.channel)
            return None
        if not isinstance(data, dict):
            log.info("message on %s is not a JSON object; ignored", msg.channel)
            return None
        return data

    def _handle(self, kind: str, channel: str, data: dict[str, Any], pipe: Any) -> None:
        if kind == AGG_COMMAND:
            for answer in self.registry.command(data):
                pipe.publish(channels.AGGREGATOR_RESPONSE, orjson.dumps(answer))
        elif kind == REGISTER:
            out = self.registry.register(channel, data)
            if out is not None:
                pipe.publish(out[0], orjson.dumps(out[1]))
        elif kind == CONTROL:
            self._control(channel, data, pipe)

    def _control(self, channel: str, data: dict[str, Any], pipe: Any) -> None:
        command = channel.rsplit("/", 1)[-1]
        if command == "pause":
            self.paused = True
        elif command == "resume":
            self.paused = False
        elif command != "stop":
            return
        pipe.publish(
            channels.sim_control_response(command, self.config.config_id),
            orjson.dumps(
                {
                    "command": command,
                    "simulation_id": self.config.config_id,
                    "transaction_id": data.get("transaction_id"),
                    "status": "success",
                }
            ),
        )
        if command == "stop":
            pipe.execute()
            self._finish()

    def _batch_item(
        self, data: dict[str, Any], at: float
    ) -> tuple[dict[str, Any], set[str], str] | None:
        """Count a batch and record its arrival (``at``: when the inbox read it from Redis);
        return what the handler needs, or None when it gets no answer."""
        self.counts.batches_received += 1
        agg = data.get("aggregator_uuid")
        if not isinstance(agg, str) or agg not in self.registry.aggregators:
            return None
        if self.registry.selected.get(agg) and at >= self._counting_since:
            self.deadline.batch_arrived(agg, at, data.get("transaction_id"))
        if self.finished.is_set():
            return None  # answered after the final tick: no response, as gsy-e
        return data, self.registry.selected.get(agg, set()), agg

    def _answer(self, group: list[tuple[dict[str, Any], set[str], str]], pipe: Any) -> None:
        cid = self.config.config_id
        for (_, _, agg), result in zip(group, self.handler.respond_many(group), strict=True):
            if isinstance(result, Exception):
                log.error("could not answer a batch of %s: %r", agg, result)
                continue
            answer, n_cmds = result
            if answer is None:
                continue
            self.counts.commands += n_cmds
            self.counts.batches_answered += 1
            pipe.publish(channels.batch_response(agg, cid), answer)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self) -> None:
        """One tick boundary: match, trade events, next tick round (or slot change / finish)."""
        t0 = time.perf_counter()
        if not self._opened:
            self._opened = True
            self.state.open_slot(0)
            self._round(market=False)
        else:
            t_match = time.perf_counter()
            report = self.state.match_tick()
            self.counts.match_ms.append((time.perf_counter() - t_match) * 1000)
            self._tick += 1
            self._sync_selection()
            if self._tick < TICKS_PER_SLOT:
                self._refresh()
                self._trade_events(report)
                self._round(market=False, refreshed=True)
            else:
                if len(report):
                    self._refresh()
                    self._trade_events(report)
                    self._refresh_ms = 0.0  # that refresh served the trade events only
                self.state.close_slot()
                if self._slot + 1 >= self.config.slots:
                    self._finish()
                    return
                self._slot += 1
                self._tick = 0
                self.state.open_slot(self._slot)
                self._round(market=True)
        self.counts.round_ms.append((time.perf_counter() - t0) * 1000)

    def _sync_selection(self) -> None:
        """Rebuild templates of aggregators whose selection changed since the last round."""
        reg = self.registry
        for agg in reg.changed:
            if agg not in reg.aggregators:
                self.events.forget(agg)
                self._own_assets.pop(agg, None)
                continue
            assets = sorted(
                self.devices[d][1] for d in reg.selected[agg] if self.devices[d][0] == ASSET
            )
            markets = [
                self.devices[d][1] for d in reg.selected[agg] if self.devices[d][0] == MARKET
            ]
            self._own_assets[agg] = assets
            self.events.template(agg, assets, markets)
        if reg.changed:
            self._asset_owner = {a: agg for agg, assets in self._own_assets.items() for a in assets}
            self._owner_arr = owner_array(self.grid, self._asset_owner)
            self._trees.clear()
        reg.changed.clear()

    def _refresh(self) -> None:
        t0 = time.perf_counter()
        self._refresh_pieces()
        self._refresh_ms += (time.perf_counter() - t0) * 1000

    def _refresh_pieces(self) -> None:
        self._trees.clear()
        if self._slot == 0:
            return  # first-slot trees are empty
        if self._heads_slot != self._slot or self.state.fee_changed:
            self.events.refresh_heads(self.state)
            self._heads_slot = self._slot
            self.state.fee_changed = False
        self.events.refresh_own_leaves(self.state, self._asset_owner)

    def _rates(self) -> tuple[float | None, float | None]:
        if self._slot == 0:
            return None, None
        return self.grid.feed_in_tariff_rate, self.grid.market_maker_rate

    def _tree(self, agg: str, keep: bool = False) -> bytes:
        """The aggregator's serialised tree; ``keep``: remember it until the next refresh (the
        trade events of a tick and its tick event carry the same tree)."""
        if self._slot == 0:
            return b"{}"
        tree = self._trees.get(agg)
        if tree is None:
            tree = self.events.tree(agg)
            if keep:
                self._trees[agg] = tree
        return tree

    def _sim_time(self) -> datetime:
        return self.state.slot_start + self._tick * self.config.slot_length / TICKS_PER_SLOT

    def _trade_events(self, report: TradeReport) -> None:
        if not len(report):
            return
        t0 = time.perf_counter()
        assert self._pub is not None
        self.counts.trades += len(report)
        self.counts.energy_traded_kwh += float(sum(report.energy.tolist()))
        when = self._sim_time().strftime("%Y-%m-%dT%H:%M:%S+00:00")
        rows = trade_rows(
            report, self.grid, self._owner_arr, when, self._trade_seq, self.events.name_js
        )
        self._trade_seq += len(report)
        fit, mmr = self._rates()
        pipe = self._pub.pipeline(transaction=False)
        for agg, trade_list in rows.items():
            payload = self.events.trade_event(trade_list, self._tree(agg, keep=True), fit, mmr)
            self.counts.bytes_sent += len(payload)
            pipe.publish(channels.aggregator_events(agg, self.config.config_id), payload)
        self.counts.events_sent += len(rows)
        pipe.execute()
        self.counts.trade_events_ms.append((time.perf_counter() - t0) * 1000)

    def _round(self, market: bool, refreshed: bool = False) -> None:
        """Build and publish one tick event (plus the market event) to every aggregator."""
        assert self._pub is not None
        t0 = time.perf_counter()
        self._sync_selection()
        if not refreshed:
            self._refresh()
        self.handler.sim_time = self._sim_time().strftime("%Y-%m-%dT%H:%M:%S")
        self.handler.closing = self._tick == TICKS_PER_SLOT - 1
        slot, completion = self.state.market_slot, self._tick * 10
        fit, mmr = self._rates()
        cid = self.config.config_id
        pipe = self._pub.pipeline(transaction=False)
        aggs = list(self.registry.aggregators)
        env = self.events.envelope
        for agg in aggs:
            tree = self._tree(agg)
            ch = channels.aggregator_events(agg, cid)
            if market:
                payload = env("market", slot, 0, tree, fit, mmr)
                self.counts.bytes_sent += len(payload)
                pipe.publish(ch, payload)
            payload = env("tick", slot, completion, tree, fit, mmr)
            self.counts.bytes_sent += len(payload)
            pipe.publish(ch, payload)
        self._direct_asset_events(pipe, market, completion)
        sent = time.time()
        if self._slot > 0:  # no answer is expected to the first slot's empty trees
            self._counting_since = min(self._counting_since, sent)
            active = [a for a in aggs if self.registry.selected.get(a)]
            self.deadline.round_sent(slot, completion, sent, active)
        pipe.execute()
        self.counts.rounds += 1
        self.counts.events_sent += len(aggs) * (2 if market else 1)
        self.counts.event_round_ms.append((time.perf_counter() - t0) * 1000 + self._refresh_ms)
        self._refresh_ms = 0.0

    def _direct_asset_events(self, pipe: Any, market: bool, completion: int) -> None:
        """Registered but unselected assets get gsy-e's per-asset events (08_direct_asset_*)."""
        reg = self.registry
        # A set difference in C: at 100 000 assets, all selected, a Python loop over every
        # registered device cost a fifth of the exchange's time for nothing.
        for uuid in reg.registered.difference(reg.owner):
            kind, index = self.devices[uuid]
            if kind != ASSET:
                continue
            name = self.grid.asset_name[index]
            info = self.state.asset_info(index)
            parent = self.grid.markets[int(self.grid.asset_market[index])]
            if market:
                pipe.publish(
                    channels.asset_events(name, "market"),
                    orjson.dumps(
                        {
                            "name": parent.name,
                            "id": parent.uuid,
                            "start_time": self.state.market_slot,
                            "duration_min": int(self.config.slot_length.total_seconds() // 60),
                            "time_slots": [self.state.market_slot],
                            "type_name": "Spot Market",
                            "device_info": info,
                            "event": "market",
                            "area_uuid": uuid,
                            "device_bill": None,
                            "last_market_maker_rate": self.grid.market_maker_rate,
                            "last_market_stats": self.state.stats.last_market_stats(parent.index),
                        }
                    ),
                )
            pipe.publish(
                channels.asset_events(name, "tick"),
                orjson.dumps(
                    {
                        "slot_completion": f"{completion}%",
                        "market_slot": self.state.market_slot,
                        "event": "tick",
                        "area_uuid": uuid,
                        "device_info": info,
                    }
                ),
            )

    def _finish(self) -> None:
        assert self._pub is not None
        now = time.time()
        self._account_backlog(now)
        self.deadline.finish(now)
        pipe = self._pub.pipeline(transaction=False)
        for m in self.grid.markets:
            pipe.publish(channels.asset_events(m.slug, "finish"), b'{"event":"finish"}')
        for uuid in self.registry.registered:
            kind, index = self.devices[uuid]
            if kind == ASSET:
                pipe.publish(
                    channels.asset_events(self.grid.asset_name[index], "finish"),
                    orjson.dumps({"event": "finish", "area_uuid": uuid}),
                )
        for agg in self.registry.aggregators:
            pipe.publish(channels.aggregator_events(agg, self.config.config_id), FINISH_EVENT)
            self.counts.events_sent += 1
        pipe.execute()
        self.finished.set()

    def _publish(self, channel: str, payload: dict[str, Any]) -> None:
        assert self._pub is not None
        self._pub.publish(channel, orjson.dumps(payload))


def sim_seconds(config: SimConfig) -> float:
    """Real seconds a run takes once started (10 tick intervals per slot)."""
    return (
        math.inf
        if config.tick_interval is None
        else config.slots * TICKS_PER_SLOT * config.tick_interval
    )
