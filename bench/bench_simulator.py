"""Benchmark the embedded exchange: event-round build+publish time and matching time.

For each size N (assets) the grid is generated with houses of 10 assets and split between
N/100 aggregators (1 000 at 100 000 assets), every asset selected, ``--tree pruned``. Each
measured round: every aggregator's batch (one bid per load, one offer per PV, a bid and an
offer per storage) is applied as the engine applies what it read from Redis (raw bytes parsed
with orjson, ``respond_many`` over chunks of ``batch_chunk`` messages, answers serialised),
then the round is dispatched: matching, trade events, and every aggregator's tick event built
and published to a real Redis with a pattern subscriber (another process) draining all event
channels.

Before/after in the same run: every round's batches are applied twice, once through the
general path (``BatchHandler.fast = False``: the original per-command code and its dict
answers) and once through the fast path, alternating which goes first. All orders replace the
asset's earlier ones and the checks do not depend on open orders, so both see the same book
and give the same verdicts; only the order ids differ.

    .venv/bin/python bench/bench_simulator.py --sizes 1000 10000 100000 --rounds 10 \
        --out bench/results/simulator.json

Ten rounds reach the slot change (the round that closes slot 1 and opens slot 2), reported as
``slot_change_round`` beside the settling round.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gridfleet.runtime.interpreter import gc_paused, keep_freed_memory
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator import SimConfig, Simulator, assign_aggregators, generate_grid
from gridfleet.simulator.batch_decode import decode_batch
from gridfleet.simulator.grid import Kind

# A subscriber in its own process: reads and discards everything published to the event channels,
# so Redis really delivers the bytes (publishing to nobody would flatter the figures).
DRAIN = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$32\r\nexternal-aggregator//*/events/all\r\n")
while s.recv(1 << 20):
    pass
"""


def batches(sim: Simulator, owners: dict[str, str], tick: int) -> dict[str, dict[str, Any]]:
    """One BATCHED message per aggregator, as a fleet would send after an event."""
    st, g = sim.state, sim.grid
    out: dict[str, dict[str, Any]] = {}
    for name, agg in owners.items():
        cmds: dict[str, list[dict[str, Any]]] = {}
        for a in sim._own_assets.get(agg, []):
            k = g.kind[a]
            ramp = tick / 10
            if k == Kind.LOAD and st.requirement(a) > 1e-4:
                e = st.requirement(a)
                cmds[g.asset_uuid[a]] = [
                    {
                        "type": "bid",
                        "energy": e,
                        "price": e * (22 + 20 * ramp),
                        "replace_existing": True,
                    }
                ]
            elif k == Kind.PV and st.available(a) > 1e-4:
                e = st.available(a)
                cmds[g.asset_uuid[a]] = [
                    {
                        "type": "offer",
                        "energy": e,
                        "price": e * (24 - 14 * ramp),
                        "replace_existing": True,
                    }
                ]
            elif k == Kind.STORAGE:
                c = []
                if st.to_buy(a) + st.active_bid[a] > 1e-4:
                    e = float(st.to_buy(a) + st.active_bid[a]) / 2
                    c.append(
                        {
                            "type": "bid",
                            "energy": e,
                            "price": e * (8 + 4 * ramp),
                            "replace_existing": True,
                        }
                    )
                if st.to_sell(a) + st.active_offer[a] > 1e-4:
                    e = float(st.to_sell(a) + st.active_offer[a]) / 2
                    c.append(
                        {"type": "offer", "energy": e, "price": e * 29, "replace_existing": True}
                    )
                if c:
                    cmds[g.asset_uuid[a]] = c
        out[agg] = {
            "type": "BATCHED",
            "transaction_id": f"{name}-{tick}",
            "aggregator_uuid": agg,
            "batch_commands": cmds,
        }
    return out


def bench_size(url: str, n: int, rounds: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    grid = generate_grid(n, houses_size=10, seed=seed)
    gen_s = time.perf_counter() - t0
    n_aggs = max(1, n // 100)
    fleet = assign_aggregators(grid, n_aggs)
    # Midday start so PVs produce and both sides of the book are full.
    sim = Simulator(
        grid,
        redis_url=url,
        config=SimConfig(
            slots=1000,
            tick_interval=None,
            tree="pruned",
            start=__import__("datetime").datetime(2024, 6, 1, 11, 45),
        ),
    )
    owners = sim.preselect(fleet)
    sim.start(engine=False)
    for _ in range(11):  # the first slot (empty trees), up to the market event of slot 1
        sim.step()
    apply_ms: list[float] = []
    round_ms: list[float] = []
    match_ms: list[float] = []
    sizes: list[int] = []
    trades: list[int] = []
    commands: list[int] = []
    general_ms: list[float] = []
    event_ms: list[float] = []
    trade_ms: list[float] = []
    apply_cpu: list[float] = []
    step_cpu: list[float] = []
    new_slot: list[bool] = []  # the round closed a slot and sent the next one's market event
    for tick in range(rounds):
        raw = [(agg, orjson.dumps(m)) for agg, m in batches(sim, owners, tick + 1).items()]
        modes = [False, True] if tick % 2 == 0 else [True, False]
        for fast in modes:
            sim.handler.fast = fast
            c0 = time.process_time()
            ms, n_cmds = _apply(sim, raw)
            if fast:
                apply_cpu.append((time.process_time() - c0) * 1000)
            (apply_ms if fast else general_ms).append(ms)
        commands.append(n_cmds)
        before_bytes, before_trades = sim.counts.bytes_sent, sim.counts.trades
        slot = sim.state.slot_index
        c0 = time.process_time()
        sim.step()
        step_cpu.append((time.process_time() - c0) * 1000)
        new_slot.append(sim.state.slot_index != slot)
        round_ms.append(sim.counts.round_ms[-1])
        match_ms.append(sim.counts.match_ms[-1])
        event_ms.append(sim.counts.event_round_ms[-1])
        trade_ms.append(
            sim.counts.trade_events_ms[-1] if sim.counts.trades > before_trades else 0.0
        )
        sizes.append(sim.counts.bytes_sent - before_bytes)
        trades.append(sim.counts.trades - before_trades)
    sim.stop()
    # The whole round: applying the batches (fast path) and dispatching (matching, trade
    # events, the tick event round); the settling round is the one with the most trades.
    whole = [a + r for a, r in zip(apply_ms, round_ms, strict=True)]
    whole_cpu = [a + r for a, r in zip(apply_cpu, step_cpu, strict=True)]

    def parts(s: int) -> dict[str, Any]:
        return {
            "round": s,
            "trades": trades[s],
            "commands": commands[s],
            "event_round_build_publish_ms": round(event_ms[s], 2),
            "matching_ms": round(match_ms[s], 2),
            "batch_apply_ms": round(apply_ms[s], 2),
            "trade_events_ms": round(trade_ms[s], 2),
            "whole_round_ms": round(whole[s], 2),
            "whole_round_cpu_ms": round(whole_cpu[s], 2),
        }

    settling = parts(int(np.argmax(trades)))
    # the slot's last tick: its matching and trade events, then the next slot's market and
    # tick events with every leaf rendered again (reached with --rounds 10 or more)
    slot_change = parts(new_slot.index(True)) if any(new_slot) else None
    return {
        "assets": n,
        "aggregators": n_aggs,
        "markets": len(grid.markets),
        "tree": "pruned",
        "rounds_measured": rounds,
        "grid_generation_s": round(gen_s, 3),
        "event_round_build_publish_ms": _summary(event_ms),
        "matching_ms": _summary(match_ms),
        "trade_events_ms": _summary(trade_ms),
        "round_total_ms": _summary(round_ms),
        "whole_round_ms": _summary(whole),
        "whole_round_cpu_ms": _summary(whole_cpu),
        "settling_round": settling,
        "slot_change_round": slot_change,
        "batch_apply_cpu_ms": _summary(apply_cpu),
        "batch_apply_ms": _summary(apply_ms),
        "batch_apply_general_path_ms": _summary(general_ms),
        "batch_apply_speedup": round(
            statistics.median(general_ms) / statistics.median(apply_ms), 2
        ),
        "batch_apply_us_per_command": round(
            1000 * statistics.median(apply_ms) / statistics.median(commands), 2
        ),
        "commands_per_round": int(statistics.median(commands)),
        "trades_per_round": int(statistics.median(trades)),
        "trades_max_round": int(max(trades)),
        "event_bytes_per_round": int(statistics.median(sizes)),
    }


def _apply(sim: Simulator, raw: list[tuple[str, bytes]]) -> tuple[float, int]:
    """Apply raw BATCHED messages as the engine does (``Intake.parse_batch``, then
    ``respond_many``); (milliseconds, commands answered)."""
    sel = sim.registry.selected
    chunk = sim.batch_chunk
    n_cmds = 0
    t = time.perf_counter()
    for c in range(0, len(raw), chunk):
        with gc_paused():
            items = [
                (decode_batch(data) or orjson.loads(data), sel[agg], agg)
                for agg, data in raw[c : c + chunk]
            ]
            for result in sim.handler.respond_many(items, pieces=True):
                assert not isinstance(result, Exception)
                answer, n = result
                assert answer is not None
                n_cmds += n
            # freed before the collector is back, as Intake.drain frees what it applied (alive,
            # the chunk's containers make the collector walk them at the next allocation)
            del items
    return (time.perf_counter() - t) * 1000, n_cmds


def _summary(v: list[float]) -> dict[str, float]:
    a = np.array(v)
    return {
        "median": round(float(np.median(a)), 2),
        "max": round(float(a.max()), 2),
        "min": round(float(a.min()), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="measured rounds per size (10 reach the slot change)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    keep_freed_memory()  # as `gridfleet sim` sets it for the exchange's process
    results = []
    with RedisServer() as server:
        drain = subprocess.Popen([sys.executable, "-c", DRAIN, str(server.port)])
        time.sleep(0.3)
        try:
            for n in args.sizes:
                r = bench_size(server.url, n, args.rounds, args.seed)
                print(json.dumps(r), flush=True)
                w = r["settling_round"]
                print(
                    f"whole round, {n} assets, settling round ({w['trades']} trades, "
                    f"{w['commands']} commands): events {w['event_round_build_publish_ms']} ms"
                    f" + matching {w['matching_ms']} ms + batches {w['batch_apply_ms']} ms"
                    f" + trade events {w['trade_events_ms']} ms = {w['whole_round_ms']} ms"
                    f" (CPU {w['whole_round_cpu_ms']} ms); median round "
                    f"{r['whole_round_ms']['median']} ms",
                    flush=True,
                )
                if (c := r["slot_change_round"]) is not None:
                    print(
                        f"slot-change round ({c['trades']} trades, {c['commands']} commands): "
                        f"events {c['event_round_build_publish_ms']} ms + matching "
                        f"{c['matching_ms']} ms + batches {c['batch_apply_ms']} ms + trade "
                        f"events {c['trade_events_ms']} ms = {c['whole_round_ms']} ms",
                        flush=True,
                    )
                results.append(r)
        finally:
            drain.terminate()
            drain.wait(timeout=5)
    out = {
        "command": " ".join([".venv/bin/python", "bench/bench_simulator.py", *sys.argv[1:]]),
        "machine": {
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "cpus": __import__("os").cpu_count(),
        },
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": "event_round_build_publish_ms: one tick event round: refresh own asset leaves and market "
        "heads, build every aggregator's pruned tree and tick event, publish to Redis with a live "
        "subscriber. matching_ms: matching every open order. trade_events_ms: building and "
        "publishing trade events (0 when the round had no trade). round_total_ms: all of it. "
        "whole_round_ms: applying the round's batches (fast path) plus round_total_ms; "
        "whole_round_cpu_ms: the same in process CPU time; settling_round: the round with the "
        "most trades, its parts and whole; slot_change_round: the round that closed slot 1 and "
        "sent slot 2's market and tick events (null with fewer than 10 rounds). "
        "batch_apply_ms: applying one BATCHED message per aggregator as the engine does (parse the "
        "raw bytes, apply every command, serialise the answers), fast path; "
        "batch_apply_general_path_ms: the same batches through the general path (the original "
        "per-command code), in the same round. Medians over the measured rounds; the machine's 2 "
        "cores are shared with other work.",
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
