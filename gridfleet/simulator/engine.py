"""The exchange's engine: the market clock, tick rounds, trade events and the finish.

One engine thread (:meth:`Engine.run`) owns all state. It wakes every ``internal_tick`` (10 ms)
or when a message arrives, applies what came in (:mod:`intake`), and every ``tick_interval``
seconds dispatches the next tick event round:

    match open orders -> trade events -> next tick event (market + 0 % tick at a slot start)

A slot has 10 tick events (0 %..90 %); the slot closes one interval after its 90 % tick. Like
gsy-e, tick events of the very first slot carry an empty ``grid_tree`` and null rates and there
is no market event for it. After the last slot: per-market and per-aggregator finish events.

The engine reads messages from :attr:`Intake.inbound` and sends through an
:class:`~gridfleet.simulator.door.Outlet`; it does not know which door either belongs to.

When a door cannot deliver (:class:`~gridfleet.simulator.door.DeliveryFailed`: its Redis is
restarting) the engine keeps its state and its clock: the rounds dispatched meanwhile are
recorded as a delivery gap and are missing for every aggregator (the deadline report says so).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Container
from datetime import datetime
from functools import partial

import numpy as np
import orjson

from gridfleet.runtime.interpreter import (
    freed_memory_kept,
    gc_paused,
    heap_for_assets,
    warm_heap,
)
from gridfleet.simulator.batch import ASSET, BatchHandler
from gridfleet.simulator.deadline import DeadlineTracker
from gridfleet.simulator.door import DeliveryFailed, Outbox, Outlet
from gridfleet.simulator.events import FINISH_EVENT, EventBuilder
from gridfleet.simulator.grid import Grid
from gridfleet.simulator.intake import Intake
from gridfleet.simulator.reporting import Counts
from gridfleet.simulator.selection import Selection, device_map, new_registry
from gridfleet.simulator.settlement import SettlementMarkets
from gridfleet.simulator.simconfig import TICKS_PER_SLOT, SimConfig
from gridfleet.simulator.state import ExchangeState, TradeReport
from gridfleet.simulator.trade_events import AssetLabels, trade_payloads

log = logging.getLogger(__name__)

# How long the finish events are retried when the door cannot deliver them (Redis down).
FINISH_RETRY_S = 30.0
# Heap faulted in before the first round beyond interpreter.HEAP_KB_PER_ASSET: with full trees
# a slot's first round (its market and tick events: two whole grids per aggregator, ~80 B per
# asset each); and at most.
FULL_TREE_BYTES_PER_ASSET = 80
WARM_HEAP_MAX_MB = 512


class EngineWatcher:
    """Hooks on the engine's clock, called on the engine thread; these do nothing. What a
    recorder of the run needs beside the outboxes it sees through the outlet
    (:class:`gridfleet.simulator.replay.Recorder`)."""

    def dispatch_started(self) -> None:
        """A tick boundary begins (its outboxes follow)."""

    def dispatch_ended(self) -> None:
        """The tick boundary is over."""

    def round_sent(
        self, market_slot: str, completion: int, aggregators: list[str], idle: Container[str]
    ) -> None:
        """The next events outbox is a counted round to ``aggregators`` (``idle``: those with
        nothing to trade in it)."""

    def finishing(self) -> None:
        """The next events outbox holds the finish events."""


class Engine:
    """The running market and its clock, for any door (see :mod:`door`)."""

    def __init__(self, grid: Grid, config: SimConfig, outlet: Outlet) -> None:
        self.grid = grid
        self.config = config
        self.outlet = outlet
        settlement = (
            SettlementMarkets(grid, seed=config.seed)
            if config.settlement or grid.settlement_markets
            else None
        )
        self.state = ExchangeState(grid, config.slot_length, config.start, settlement)
        self.devices = device_map(grid)
        self.registry = new_registry(grid, self.devices)
        self.handler = BatchHandler(self.state, self.devices)
        self.events = EventBuilder(grid, config.tree)
        self._labels = AssetLabels(grid, self.events.name_js)  # for trade events
        self.selection = Selection(grid, self.devices, self.registry, self.events)
        self.handler.own_devices = self.selection.own_devices  # shared: synced per round
        self.deadline = DeadlineTracker()
        self.watcher = EngineWatcher()
        self.counts = Counts(settlement_markets=settlement is not None)
        self.intake = Intake(self)
        self.paused = config.paused
        self.finished = threading.Event()
        self.error: BaseException | None = None
        # batches count for the deadline report from the first round of slot 1 on
        self.counting_since = math.inf
        self._opened = False
        self._slot = 0
        self._tick = 0
        self._heads_slot = -2
        self._trade_seq = 0
        self._refresh_ms = 0.0
        self._trees: dict[str, bytes] = {}  # trees built since the last refresh (trade events)

    # ------------------------------------------------------------------ the clock

    def run(self, stop: threading.Event, steps: queue.Queue[threading.Event]) -> None:
        """The engine thread: heartbeat, apply messages, dispatch on the clock (or, in manual
        mode, once per event put on ``steps``, set once dispatched) until finished or ``stop``."""
        cfg = self.config
        next_dispatch = time.time()
        next_heartbeat = time.time()
        try:
            while not stop.is_set() and not self.finished.is_set():
                now = time.time()
                if now >= next_heartbeat:
                    self.heartbeat(now)
                    next_heartbeat = now + cfg.heartbeat_interval
                if cfg.tick_interval is None or self.paused:
                    wait = cfg.internal_tick
                else:
                    wait = min(cfg.internal_tick, max(0.0, next_dispatch - now))
                self.intake.drain(
                    wait, next_dispatch if cfg.tick_interval is not None else math.inf
                )
                if cfg.tick_interval is None:
                    while not steps.empty():
                        done = steps.get()
                        if not self.finished.is_set():
                            self.dispatch()
                        done.set()
                elif self.paused:
                    next_dispatch = time.time()
                elif time.time() >= next_dispatch:
                    self.dispatch()
                    # keep the cadence; if a round overran the interval, do not try to catch up
                    next_dispatch = max(next_dispatch + cfg.tick_interval, time.time())
        except BaseException as exc:  # keep the reason for whoever waits on us
            log.exception("simulator engine crashed")
            self.error = exc
            self.finished.set()
            raise

    def heartbeat(self, now: float) -> None:
        """gsy-e's heartbeat, sent on its own."""
        out = self.outlet.outbox()
        out.heartbeat(orjson.dumps({"time": int(now)}))
        self.deliver(out)

    def deliver(self, out: Outbox) -> bool:
        """Send ``out``; False (logged once per gap, counted) when the door cannot deliver."""
        try:
            out.send()
        except DeliveryFailed as exc:
            self.counts.undelivered_sends += 1
            if self.deadline.delivery_failed(time.time()):
                log.warning(
                    "exchange cannot deliver (%s); the clock goes on, rounds sent meanwhile "
                    "are counted as undelivered",
                    exc,
                )
            return False
        gap = self.deadline.delivery_restored(time.time())
        if gap is not None and gap.end is not None:
            log.warning(
                "exchange delivers again after %.1f s: %d rounds undelivered (%s .. %s)",
                gap.end - gap.start,
                gap.rounds,
                gap.first_round or "-",
                gap.last_round or "-",
            )
        return True

    # ------------------------------------------------------------------ rounds

    def dispatch(self) -> None:
        """One tick boundary: match, trade events, next tick round (or slot change / finish)."""
        self.watcher.dispatch_started()
        try:
            # what a round allocates dies by reference counting (see gc_paused)
            with gc_paused():
                self._dispatch()
        finally:
            self.watcher.dispatch_ended()

    def _dispatch(self) -> None:
        t0 = time.perf_counter()
        if not self._opened:
            self._opened = True
            self._warm_heap()
            self.state.open_slot(0)
            self._round(market=False)
        else:
            t_match = time.perf_counter()
            report = self.state.match_tick()
            settled = self.state.match_settlement()
            self.counts.match_ms.append((time.perf_counter() - t_match) * 1000)
            self._tick += 1
            self._sync_selection()
            if self._tick < TICKS_PER_SLOT:
                self._refresh()
                self._trade_events(report, settled)
                self._round(market=False, refreshed=True)
            else:
                if len(report) or len(settled):
                    self._refresh()
                    self._trade_events(report, settled)
                    self._refresh_ms = 0.0  # that refresh served the trade events only
                self.state.close_slot()
                if self._slot + 1 >= self.config.slots:
                    self.finish()
                    return
                self._slot += 1
                self._tick = 0
                self.state.open_slot(self._slot)
                self._round(market=True)
        self.counts.round_ms.append((time.perf_counter() - t0) * 1000)

    def _warm_heap(self) -> None:
        """In a process that keeps freed memory (``gridfleet sim``, ``gridfleet demo``, the
        benchmarks), fault in the heap a heavy round needs now, from the thread that dispatches
        (malloc keeps an arena per thread): the run's first settling round otherwise took ~25 000
        page faults at 100 000 assets (~30 ms here), rounds after it none."""
        if freed_memory_kept():
            n = self.grid.n_assets
            full = self.config.tree == "full"
            events = (
                2 * len(self.registry.aggregators) * n * FULL_TREE_BYTES_PER_ASSET if full else 0
            )
            warm_heap(heap_for_assets(n, WARM_HEAP_MAX_MB, extra_bytes=events))

    def _sync_selection(self) -> None:
        if self.selection.sync():
            self._trees.clear()

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
        self.events.refresh_own_leaves(self.state, self.selection.asset_owner)

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

    def _trade_events(self, report: TradeReport, settled: TradeReport | None = None) -> None:
        """One trade event per aggregator with its spot and settlement trades of the tick."""
        if not len(report) and (settled is None or not len(settled)):
            return
        t0 = time.perf_counter()
        self.counts.trades += len(report)
        self.counts.energy_traded_kwh += float(sum(report.energy.tolist()))
        parts = [report] if settled is None else [report, settled]
        payloads = trade_payloads(
            parts,
            self._labels,
            self.selection.owner_arr,
            self._sim_time().strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            self._trade_seq,
            partial(self._tree, keep=True),
            self._rates(),
        )
        self._trade_seq += sum(len(p) for p in parts)
        if settled is not None and len(settled):
            self.counts.settlement_trades += len(settled)
            self.counts.settlement_energy_kwh += float(sum(settled.energy.tolist()))
        out = self.outlet.outbox()
        for agg, payload in payloads.items():
            self.counts.bytes_sent += payload.size()
            out.aggregator_event(agg, payload)
        self.counts.events_sent += len(payloads)
        self.deliver(out)
        self.counts.trade_events_ms.append((time.perf_counter() - t0) * 1000)

    def _round(self, market: bool, refreshed: bool = False) -> None:
        """Build and send one tick event (plus the market event) to every aggregator."""
        t0 = time.perf_counter()
        self._sync_selection()
        if not refreshed:
            self._refresh()
        self.handler.sim_time = self._sim_time().strftime("%Y-%m-%dT%H:%M:%S")
        self.handler.closing = self._tick == TICKS_PER_SLOT - 1
        slot, completion = self.state.market_slot, self._tick * 10
        fit, mmr = self._rates()
        out = self.outlet.outbox()
        send_event = out.aggregator_event
        aggs = list(self.registry.aggregators)
        env = self.events.envelope
        for agg in aggs:
            tree = self._tree(agg)
            if market:
                payload = env("market", slot, 0, tree, fit, mmr)
                self.counts.bytes_sent += payload.size()
                send_event(agg, payload)
            payload = env("tick", slot, completion, tree, fit, mmr)
            self.counts.bytes_sent += payload.size()
            send_event(agg, payload)
        self._direct_asset_events(out, market, completion)
        sent = time.time()
        number: int | None = None
        if self._slot > 0:  # no answer is expected to the first slot's empty trees
            self.counting_since = min(self.counting_since, sent)
            active = [a for a in aggs if self.registry.selected.get(a)]
            idle = self._idle(active)
            number = self.deadline.round_sent(slot, completion, sent, active, idle)
            self.watcher.round_sent(slot, completion, active, idle)
        if not self.deliver(out):
            self.deadline.round_undelivered(f"{slot} {completion}%", number)
        self.counts.rounds += 1
        self.counts.events_sent += len(aggs) * (2 if market else 1)
        # a refresh made before this round (for the tick's trade events) adds its time; one
        # made here is inside this round's own time already
        before = self._refresh_ms if refreshed else 0.0
        self.counts.event_round_ms.append((time.perf_counter() - t0) * 1000 + before)
        self._refresh_ms = 0.0

    def _idle(self, aggregators: list[str]) -> set[str]:
        """Those of ``aggregators`` with nothing they could trade now: no market selected and
        every asset's requirement, available energy and storage room to buy and to sell at or
        below the exchange's 2e-5 kWh floor (no order of theirs could be accepted)."""
        owner, keys = self.selection.owner_arr  # asset -> its owner's position in keys
        owner = owner[: self.grid.n_assets]
        busy = owner[self.state.tradeable() & (owner >= 0)]
        has_trade = np.bincount(busy, minlength=len(keys)) > 0
        trading = {agg for agg, yes in zip(keys, has_trade.tolist(), strict=True) if yes}
        devices = self.devices
        idle = set()
        for agg in aggregators:
            if agg in trading:
                continue
            if any(devices[d][0] != ASSET for d in self.registry.selected.get(agg, ())):
                continue  # a market to operate (fees, stats): never idle
            idle.add(agg)
        return idle

    def _direct_asset_events(self, out: Outbox, market: bool, completion: int) -> None:
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
                out.asset_event(
                    name,
                    "market",
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
            out.asset_event(
                name,
                "tick",
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

    # ------------------------------------------------------------------ the end

    def finish(self) -> None:
        """Account what was read but not applied, send the finish events (retried for up to
        ``FINISH_RETRY_S`` while the door cannot deliver), mark the run done."""
        now = time.time()
        self.intake.account_backlog(now)
        self.deadline.finish(now)
        self.watcher.finishing()
        self.counts.events_sent += len(self.registry.aggregators)
        out = self._finish_events()
        give_up = time.monotonic() + FINISH_RETRY_S
        while not self.deliver(out) and time.monotonic() < give_up:
            time.sleep(0.5)
            out = self._finish_events()
        self.finished.set()

    def _finish_events(self) -> Outbox:
        """An outbox holding every finish event: per market, registered asset and aggregator."""
        out = self.outlet.outbox()
        for m in self.grid.markets:
            out.asset_event(m.slug, "finish", b'{"event":"finish"}')
        for uuid in self.registry.registered:
            kind, index = self.devices[uuid]
            if kind == ASSET:
                out.asset_event(
                    self.grid.asset_name[index],
                    "finish",
                    orjson.dumps({"event": "finish", "area_uuid": uuid}),
                )
        for agg in self.registry.aggregators:
            out.aggregator_event(agg, FINISH_EVENT)
        return out
