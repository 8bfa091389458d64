"""Benchmark the REST link's bring-up: login to the last ``selected_by_device``, N assets.

Against the aiohttp stand-in server of the tests (tests/exchange/rest_server.py) on loopback,
in this process (server and client share the 2 cores): an upper bound for the client's cost.
The embedded REST door of the simulator replaces it once it lands.

    python -m bench.bench_rest_bringup [--assets 10000] [--aggregators 100]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from pydantic import SecretStr

from bench._util import write_results
from gridfleet.exchange.link import AggregatorRequest, RestTarget
from gridfleet.exchange.rest import RestLink
from tests.exchange.rest_server import Node, RestExchangeServer


def serve(nodes: list[Node], ready: multiprocessing.Queue[int], stop: object) -> None:
    server = RestExchangeServer(nodes).start()
    ready.put(server.port)
    stop.wait()  # type: ignore[attr-defined]
    server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=10_000)
    ap.add_argument("--aggregators", type=int, default=100)
    args = ap.parse_args()
    nodes = [Node(f"Load {i}", "Load") for i in range(args.assets)]
    # The server in its own process, as the exchange would be: the client's cost alone.
    ctx = multiprocessing.get_context("fork")
    ready: multiprocessing.Queue[int] = ctx.Queue()
    stop = ctx.Event()
    child = ctx.Process(target=serve, args=(nodes, ready, stop), daemon=True)
    child.start()
    server = RestExchangeServer(nodes)
    server.port = ready.get(timeout=30)
    per = args.assets // args.aggregators
    requests = [
        AggregatorRequest(f"agg-{a}", [n.name for n in nodes[a * per : (a + 1) * per]])
        for a in range(args.aggregators)
    ]
    target = RestTarget(
        domain=server.domain,
        websocket=server.websocket,
        simulation_id=server.sim,
        username=SecretStr("user@example.com"),
        password=SecretStr("s3cret-pw"),
    )
    try:
        with RestLink(target) as link:
            t0 = time.perf_counter()
            up = link.bring_up(requests, timeout=120)
            seconds = time.perf_counter() - t0
    finally:
        stop.set()
        child.join(10)
    result = {
        "assets": args.assets,
        "aggregators": args.aggregators,
        "bring_up_s": round(seconds, 2),
        "selected": len(up.asset_uuid) - len(up.failures()),
        "failures": len(up.failures()),
    }
    print(result)
    write_results("rest_bringup", result)


if __name__ == "__main__":
    main()
