"""Reading a 100 000-asset round off pub/sub: one thread per connection, or one for them all.

    .venv/bin/python -m bench.bench_pubsub_readers

A real Redis; 1 000 channels (one per aggregator) spread over 64 connections, as the link
spreads them; each round publishes 1 000 messages of 33 KB (a pruned 100-asset tree) in one
pipeline and waits until every message is handed on. Compares, in one run and alternating:
a thread per connection (the link's readers before :mod:`gridfleet.exchange.pubsub_reader`)
and :class:`~gridfleet.exchange.pubsub_reader.ReaderLoop` (one thread polling all 64). Wall is
publish -> last message handed on; CPU is this process's (publisher included, the same in
both). Writes ``bench/results/pubsub_readers.json``.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import threading
import time
from collections.abc import Callable

import redis

from bench._util import write_results
from gridfleet.exchange.pubsub_reader import ReaderLoop, Subscriber
from gridfleet.runtime.redis_server import RedisServer


def threads_per_connection(
    url: str, chans: list[str], n: int, handed: queue.SimpleQueue
) -> Callable[[], None]:
    """A thread per connection, each blocking in ``get_message``; returns its stopper."""
    client = redis.Redis.from_url(url)
    pubs = [client.pubsub(ignore_subscribe_messages=True) for _ in range(n)]
    for i, ch in enumerate(chans):
        pubs[i % n].subscribe(ch)
    for p in pubs:  # the confirmations, before the threads take over
        while p.get_message(timeout=0.1) is not None:
            pass
    halt = threading.Event()

    def read(p: redis.client.PubSub) -> None:
        while not halt.is_set():
            msg = p.get_message(timeout=0.5)
            if msg is not None:
                handed.put(msg["data"])

    threads = [threading.Thread(target=read, args=(p,), daemon=True) for p in pubs]
    for t in threads:
        t.start()

    def stop() -> None:
        halt.set()
        for t in threads:
            t.join()
        for p in pubs:
            p.close()
        client.close()  # held until here: a collected client closes its pool's connections

    return stop


def one_loop(url: str, chans: list[str], n: int, handed: queue.SimpleQueue) -> Callable[[], None]:
    client = redis.Redis.from_url(url)
    subs = [Subscriber(client, lambda ch, raw, t: handed.put(raw), name=f"s{i}") for i in range(n)]
    for i, ch in enumerate(chans):
        subs[i % n].subscribe(ch)
    loop = ReaderLoop(subs, name="bench-loop")
    loop.start()
    loop.wait_ready()

    def stop() -> None:
        loop.stop()
        loop.join()

    return stop


MODELS = {"thread per connection": threads_per_connection, "one polling thread": one_loop}


def measure(url: str, model: str, args: argparse.Namespace) -> tuple[list[float], float]:
    chans = [f"bench-agg-{i}" for i in range(args.aggregators)]
    handed: queue.SimpleQueue = queue.SimpleQueue()
    stop = MODELS[model](url, chans, args.connections, handed)
    time.sleep(0.3)  # subscriptions confirmed (the thread model does not wait for them)
    pub = redis.Redis.from_url(url)
    payload = b"x" * args.message_bytes
    walls = []
    cpu0 = time.process_time()
    for _ in range(args.rounds):
        pipe = pub.pipeline(transaction=False)
        for ch in chans:
            pipe.publish(ch, payload)
        t0 = time.perf_counter()
        pipe.execute()
        for _ in chans:
            handed.get(timeout=10)
        walls.append(time.perf_counter() - t0)
        time.sleep(0.1)
    cpu = (time.process_time() - cpu0) / args.rounds
    stop()
    return walls, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aggregators", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--message-bytes", type=int, default=33_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="alternations of the two models")
    args = ap.parse_args()
    runs: dict[str, dict[str, list[float]]] = {m: {"wall_ms": [], "cpu_ms": []} for m in MODELS}
    with RedisServer() as server:
        for _ in range(args.repeats):
            for model in MODELS:
                walls, cpu = measure(server.url, model, args)
                runs[model]["wall_ms"] += [w * 1e3 for w in walls]
                runs[model]["cpu_ms"].append(cpu * 1e3)
    rows = []
    for model, r in runs.items():
        row = {
            "model": model,
            "wall_ms_p50": round(statistics.median(r["wall_ms"]), 1),
            "cpu_ms_per_round": round(statistics.median(r["cpu_ms"]), 1),
        }
        rows.append(row)
        print(
            f"{model:22}: publish -> all handed on p50 {row['wall_ms_p50']:6.1f} ms,"
            f" CPU {row['cpu_ms_per_round']:6.1f} ms a round (publisher included)"
        )
    path = write_results(
        "pubsub_readers",
        {
            "aggregators": args.aggregators,
            "connections": args.connections,
            "message_bytes": args.message_bytes,
            "rounds": args.rounds * args.repeats,
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
