"""One worker process's shard throughput: what sizing workers needs.

    .venv/bin/python -m bench.bench_shard

Takes a real round (the embedded exchange's pruned events for 10 000 assets in 100 aggregators),
cuts it as ingress does into shards of 2 000 assets of raw trees on a real Redis, and times
``run_shard`` (load input and state, parse and flatten the trees, run the linear ramp, validate
every command, serialize per aggregator, store result and state): the whole of a worker task but
Celery's ~1 ms of messaging. Times a market-event round (where a shard writes the market fees
of the slot to the broker) and a later tick round of the same slot (where it reads them back),
each on its own. Writes ``bench/results/shard.json``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import redis

from bench._util import write_results
from gridfleet.exchange import channels
from gridfleet.exchange.messages import MarketEventHead, decode_event_for_ingress
from gridfleet.platform.keys import Keys
from gridfleet.platform.rounds import round_context
from gridfleet.platform.shard import (
    FleetSpec,
    Manifest,
    publish_spec,
    run_shard,
    write_round,
)
from gridfleet.platform.shard_plan import cut_shards
from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.grid import assign_aggregators, generate_grid
from gridfleet.simulator.runner import SimConfig, Simulator


def main() -> None:
    n, aggs, shard_size = 10_000, 100, 2_000
    grid = generate_grid(n, houses_size=10, seed=1)
    with RedisServer() as srv:
        sim = Simulator(grid, srv.url, SimConfig(tree="pruned", tick_interval=None))
        uuids = sim.preselect(assign_aggregators(grid, aggs))
        sim.start(engine=False)
        r = redis.Redis.from_url(srv.url)
        ps = r.pubsub()
        ps.psubscribe("external-aggregator/*/events/all")
        ps.get_message(timeout=1)
        raws: dict[str, bytes] = {}
        for _ in range(11):  # the first slot's ten ticks carry empty trees; the eleventh has them
            sim.step()
            raws = {}
            while (m := ps.get_message(timeout=0.5)) is not None:
                if m["type"] == "pmessage":
                    ev = decode_event_for_ingress(m["data"])
                    if isinstance(ev, MarketEventHead) and ev.has_tree:
                        raws[str(channels.aggregator_of(m["channel"].decode()))] = m["data"]
        heads = [(a, decode_event_for_ingress(raw)) for a, raw in raws.items()]
        heads = [(a, h) for a, h in heads if isinstance(h, MarketEventHead)]
        _, ctx = round_context(heads)  # type: ignore[arg-type]
        keys = Keys("bench")
        spec = FleetSpec(
            strategies=[{"name": "linear_ramp", "params": {}}],
            by_kind={a: [0, 0, 0, 0] for a in raws},
        )
        version = publish_spec(r, keys, spec)
        shards = cut_shards(heads, {a: n // aggs for a in raws}, shard_size)  # type: ignore[arg-type]
        assert sum(len(s.parts) for s in shards) == aggs, len(shards)
        times: dict[str, list[float]] = {"market_event": [], "tick": []}
        contexts = {
            "market_event": ctx,
            "tick": dataclasses.replace(ctx, tick_index=1, is_market_event=False),
        }
        for rep in range(15):
            for kind, round_ctx in contexts.items():
                rid = f"{kind}-{rep}"
                write_round(
                    r,
                    keys,
                    Manifest(
                        rid, round_ctx, version, len(shards), sorted(uuids.values()), 0.0, 1.0
                    ),
                    shards,
                )
                for i in range(len(shards)):
                    t0 = time.perf_counter()
                    run_shard(r, keys, rid, i)
                    times[kind].append(time.perf_counter() - t0)
        sim.stop()
    results: dict[str, object] = {"assets_per_shard": shard_size}
    for kind, runs in times.items():
        med = statistics.median(runs)
        rate = shard_size / med
        print(
            f"{kind}: shard of {shard_size} assets: median {med * 1e3:.1f} ms -> "
            f"{rate:,.0f} assets/s per worker process"
        )
        results[kind] = {
            "runs": len(runs),
            "median_ms": round(med * 1e3, 2),
            "p90_ms": round(sorted(runs)[int(0.9 * len(runs))] * 1e3, 2),
            "assets_per_s_per_process": round(rate),
        }
    write_results("shard", results)


if __name__ == "__main__":
    main()
