"""The REST link's HTTP pool: one round's batch POSTs, all at once, to a local aiohttp server.

    .venv/bin/python -m bench.bench_http_pool [--posts 100] [--rounds 10]

A fleet POSTs one batch per aggregator per round concurrently (100 at 10 000 assets). This
times that burst through httpx's own pool (httpcore), through httpx over aiohttp's pool
(:class:`gridfleet.exchange.rest_transport.AiohttpTransport`, what the link uses) and through a
bare aiohttp session, alternating, against a server in another process. Results:
``bench/results/rest_http_pool.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import orjson

from bench._util import write_results
from gridfleet.exchange.rest_transport import AiohttpTransport

BODY = orjson.dumps(
    {
        "aggregator_uuid": "agg",
        "transaction_id": "tid",
        "batch_commands": {
            f"device-{i}": [{"type": "bid", "energy": 0.1, "price": 3.0, "replace_existing": True}]
            for i in range(100)
        },
    }
)
HEADERS = {"Authorization": "JWT token", "Content-Type": "application/json"}


def serve(ports: Any) -> None:
    from aiohttp import web

    async def batch(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(body=b'{"status":"accepted"}', content_type="application/json")

    async def main() -> None:
        app = web.Application(client_max_size=1 << 26)
        app.router.add_post("/batch-commands/", batch)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        ports.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


Burst = Callable[[], Awaitable[None]]


async def timed(make: Callable[[], Any], posts: int, rounds: int, url: str) -> dict[str, float]:
    """Median wall ms of a burst of ``posts`` POSTs, and client CPU ms per burst."""
    async with make() as client:

        async def one() -> None:
            if isinstance(client, httpx.AsyncClient):
                (await client.post(url, content=BODY, headers=HEADERS)).raise_for_status()
            else:
                async with client.post(url, data=BODY, headers=HEADERS) as resp:
                    await resp.read()

        await asyncio.gather(*(one() for _ in range(posts)))  # connections up
        walls = []
        cpu0 = time.process_time()
        for _ in range(rounds):
            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(posts)))
            walls.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / rounds
    return {"wall_ms": round(1e3 * statistics.median(walls), 2), "cpu_ms": round(1e3 * cpu, 2)}


CLIENTS: dict[str, Callable[[int], Callable[[], Any]]] = {
    "httpx_pool": lambda n: (
        lambda: httpx.AsyncClient(
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n), timeout=30
        )
    ),
    "httpx_over_aiohttp": lambda n: (
        lambda: httpx.AsyncClient(transport=AiohttpTransport(limit=n), timeout=30)
    ),
    "aiohttp": lambda n: lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--posts", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    ports: Any = multiprocessing.get_context("fork").Queue()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(ports,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}/batch-commands/"
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    for _ in range(2):  # alternate, so the machine's load falls on every client alike
        for name, make in CLIENTS.items():
            results[name].append(asyncio.run(timed(make(args.posts), args.posts, args.rounds, url)))
    server.terminate()
    best = {name: min(runs, key=lambda r: r["wall_ms"]) for name, runs in results.items()}
    for name, r in best.items():
        print(
            f"{name:20} {args.posts} concurrent POSTs: {r['wall_ms']:8.1f} ms, client CPU {r['cpu_ms']:7.1f} ms"
        )
    write_results(
        "rest_http_pool",
        {
            "posts": args.posts,
            "body_bytes": len(BODY),
            "rounds": args.rounds,
            "best": best,
            "runs": results,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
