"""One worker process's shard throughput: what sizing workers needs.

    .venv/bin/python -m bench.bench_shard

Builds a real round (the embedded exchange's pruned events for 10 000 assets in 100 aggregators,
parsed and flattened as ingress does), stores it as shards of 2 000 assets on a real Redis, and
times ``run_shard`` (load input and state, run the linear ramp, validate every command,
serialize per aggregator, store result and state): the whole of a worker task but Celery's
~1 ms of messaging. Writes ``bench/results/shard.json``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import redis

from bench._util import write_results
from gridfleet.platform.keys import Keys
from gridfleet.platform.protocol import decode_event
from gridfleet.platform.redis_server import RedisServer
from gridfleet.platform.rounds import build_round
from gridfleet.platform.shard import (
    FleetSpec,
    Manifest,
    ShardInput,
    publish_spec,
    run_shard,
    write_round,
)
from gridfleet.platform.simulator.grid import assign_aggregators, generate_grid
from gridfleet.platform.simulator.runner import SimConfig, Simulator


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
        events = []
        for _ in range(11):  # the first slot's ten ticks carry empty trees; the eleventh has them
            sim.step()
            events = []
            while (m := ps.get_message(timeout=0.5)) is not None:
                if m["type"] == "pmessage":
                    ev = decode_event(m["data"])
                    if (
                        getattr(ev, "grid_tree", None)
                        and getattr(ev, "slot_completion", "") == "0%"
                    ):
                        events.append((m["channel"].decode().split("/")[2], ev))
        rnd = build_round(list(dict(events).items()))  # the market event and its 0 % tick: once
        assert len(rnd.assets) == n, len(rnd.assets)
        keys = Keys("bench")
        version = publish_spec(
            r, keys, FleetSpec(strategies=[{"name": "linear_ramp", "params": {}}])
        )
        shards = [
            ShardInput(
                rnd.assets.take(np.arange(s, min(n, s + shard_size))),
                np.zeros(min(shard_size, n - s), np.int64),
            )
            for s in range(0, n, shard_size)
        ]
        times = []
        for rep in range(15):
            rid = f"r{rep}"
            write_round(
                r,
                keys,
                Manifest(rid, rnd.ctx, version, len(shards), sorted(uuids.values()), 0.0, 1.0),
                shards,
            )
            for i in range(len(shards)):
                t0 = time.perf_counter()
                run_shard(r, keys, rid, i)
                times.append(time.perf_counter() - t0)
        sim.stop()
    med = statistics.median(times)
    rate = shard_size / med
    print(
        f"shard of {shard_size} assets: median {med * 1e3:.1f} ms -> {rate:,.0f} assets/s per worker process"
    )
    write_results(
        "shard",
        {
            "assets_per_shard": shard_size,
            "runs": len(times),
            "median_ms": round(med * 1e3, 2),
            "p90_ms": round(sorted(times)[int(0.9 * len(times))] * 1e3, 2),
            "assets_per_s_per_process": round(rate),
        },
    )


if __name__ == "__main__":
    main()
