"""Event-to-batch latency and deadline hit rate of the whole pipeline, measured by the exchange.

    .venv/bin/python -m bench.bench_pipeline                       # the committed matrix
    .venv/bin/python -m bench.bench_pipeline --sizes 1000 --trees pruned --slots 2
    .venv/bin/python -m bench.bench_pipeline --exchange embedded replay --merge

For each fleet size (1 000 assets in 10 aggregators, 10 000 in 100, 100 000 in 1 000), each tree
mode and each client, it runs the embedded exchange in this process and the client in others:

- ``pipeline``: ``gridfleet ingress`` + ``gridfleet coordinator`` + ``gridfleet worker -c 2``;
- ``single``: ``gridfleet run --single-process`` (the same strategies in one process, no Celery).

The figures are the exchange's own deadline report (first batch after each event, on time when
before the next tick event). Results: ``bench/results/pipeline.json`` and ``pipeline.png``.

``--exchange replay``: the exchange side is a replay of a recording instead
(:mod:`gridfleet.simulator.replay`): the events of one embedded run per size, tree and slots,
recorded once under ``--cache-dir`` and published again at the tick interval to each client,
which is timed the same way. The replay builds, matches and answers nothing, so the client gets
(nearly) the whole machine; its own cores are reported as the ``exchange`` column.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

from bench._util import RESULTS, command_line, write_results
from gridfleet.platform.keys import Keys
from gridfleet.platform.runs import current_run
from gridfleet.runtime.interpreter import favour_reader_threads, keep_freed_memory
from gridfleet.runtime.processes import ProcessGroup, gridfleet_command
from gridfleet.runtime.redis_server import RedisServer, free_port
from gridfleet.simulator.deadline import percentiles
from gridfleet.simulator.grid import assign_aggregators, generate_grid
from gridfleet.simulator.replay import VERSION as RECORDING_VERSION
from gridfleet.simulator.replay import Recorder, Replay
from gridfleet.simulator.rest_door import RestOptions
from gridfleet.simulator.runner import SimConfig, Simulator

AGGREGATORS = {1_000: 10, 10_000: 100, 100_000: 1_000}
GRID_SEED = 1  # generate_grid's
SIM_SEED = 0  # SimConfig's (simulated measurements)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_by_component(components: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each component: a process and its descendants, less those
    of the other components. The exchange is this process, and the clients and both Redis
    servers are its children: counted under the exchange too, they made its column the
    machine's total (before this was so, a row's cores could add up to more than 2)."""
    trees = {name: set(_descendants(pid)) for name, pid in components.items()}
    out = {}
    for name, pids in trees.items():
        nested = [trees[n] for n, pid in components.items() if n != name and pid in pids]
        own = pids.difference(*nested)
        out[name] = sum(_cpu_s(p) for p in own)
    return out


def run_case(
    assets: int,
    aggregators: int,
    tree: str,
    client: str,
    slots: int,
    tick_interval: float,
    workdir: Path,
    transport: str = "redis",
    exchange_mode: str = "embedded",
    recording: Path | None = None,
) -> dict[str, Any]:
    """One fleet size, tree mode, client and transport (``redis``: the exchange's Redis door;
    ``rest``: its REST + websocket door, the client logging in with a made-up user).

    ``exchange_mode="replay"`` replays ``recording`` instead of running the embedded exchange
    (Redis door only); with the embedded exchange, a ``recording`` path records its events there.
    """
    if exchange_mode == "replay" and (recording is None or transport != "redis"):
        raise ValueError("a replay needs a recording and the Redis transport")
    grid = generate_grid(assets, houses_size=10, seed=GRID_SEED)
    assignment = assign_aggregators(grid, aggregators)
    case_dir = workdir / f"{assets}-{tree}-{client}-{transport}-{exchange_mode}"
    case_dir.mkdir(parents=True, exist_ok=True)
    fleet_file = case_dir / "fleet.yaml"
    rest_options = None
    exchange_section: dict[str, Any] = {"url_env": "GRIDFLEET_EXCHANGE_URL"}
    credentials: dict[str, str] = {}
    if transport == "rest":
        port, sim_id = free_port(), str(uuid.uuid4())
        credentials = {
            "BENCH_REST_USER": "bench@example.com",
            "BENCH_REST_PASSWORD": secrets.token_urlsafe(16),
        }
        rest_options = RestOptions(
            users={credentials["BENCH_REST_USER"]: credentials["BENCH_REST_PASSWORD"]},
            port=port,
            simulation_id=sim_id,
        )
        exchange_section = {
            "rest": {
                "domain": f"http://127.0.0.1:{port}",
                "websocket": f"ws://127.0.0.1:{port}/external-ws",
                "simulation_id": sim_id,
                "username_env": "BENCH_REST_USER",
                "password_env": "BENCH_REST_PASSWORD",
            }
        }
    fleet_file.write_text(
        yaml.safe_dump(
            {
                "exchange": exchange_section,
                "broker": {"url_env": "GRIDFLEET_BROKER_URL"},
                # 8 shards per round at 100 000 assets (the round's trees stream out as they
                # arrive); never under 2 500 assets: each shard costs its worker ~3 ms besides
                # its assets, and at 10 000 assets 9 shards of 1 250 gave p99 87-106 ms where
                # 4 of 2 500 gave 66-78 ms (this machine, 2026-12-08)
                "shard_size": max(2500, assets // 8),
                "aggregators": [{"name": n, "assets": e["assets"]} for n, e in assignment.items()],
            }
        )
    )
    recorder: Recorder | None = None
    with RedisServer() as exchange, RedisServer() as broker:
        sim: Simulator | Replay
        if exchange_mode == "replay":
            assert recording is not None
            sim = Replay(recording, exchange.url, tick_interval=tick_interval).start()
        else:
            sim = Simulator(
                grid,
                exchange.url,
                SimConfig(
                    slots=slots,
                    tick_interval=tick_interval,
                    tree=tree,  # type: ignore[arg-type]
                    paused=True,
                    seed=SIM_SEED,
                ),
                rest=rest_options,
            )
            if recording is not None:
                recorder = Recorder(recording).attach(sim)
            sim.start()
        env = {
            # an exchange URL in the environment would win over the fleet file's REST form
            **({"GRIDFLEET_EXCHANGE_URL": exchange.url} if transport == "redis" else {}),
            "GRIDFLEET_BROKER_URL": broker.url,
            "GRIDFLEET_CONFIG": str(fleet_file),
            "GRIDFLEET_LOG_FORMAT": "text",
            **credentials,
        }
        group = ProcessGroup(log_dir=case_dir / "logs")
        base = gridfleet_command()
        try:
            if client == "pipeline":
                group.start(
                    "worker", [*base, "worker", "--concurrency", "2", "--loglevel", "ERROR"], env
                )
                group.start(
                    "coordinator",
                    [*base, "coordinator", "--metrics-port", "0", "--log-level", "WARNING"],
                    env,
                )
                group.start(
                    "ingress",
                    [*base, "ingress", "--metrics-port", "0", "--log-level", "WARNING"],
                    env,
                )
            else:
                group.start(
                    "single", [*base, "run", "--single-process", "--log-level", "WARNING"], env
                )
            t0 = time.monotonic()
            while _selected(sim) < assets:
                if time.monotonic() - t0 > 600 or group.dead():
                    raise RuntimeError(f"client did not select the fleet; see {case_dir / 'logs'}")
                time.sleep(0.2)
            setup_s = time.monotonic() - t0
            time.sleep(3.0 if client == "pipeline" else 0.5)  # Celery's pool is up and warm
            components = {c.name: c.process.pid for c in group.children if c.process}
            components["exchange"] = os.getpid()  # the simulator (or replay) runs in this process
            for name, server in (("redis (exchange)", exchange), ("redis (broker)", broker)):
                assert server.process is not None
                components[name] = server.process.pid
            cpu_before, wall_before = cpu_by_component(components), time.monotonic()
            sim.resume()
            if not sim.wait(timeout=slots * 10 * tick_interval * 4 + 120):
                raise RuntimeError("the simulation did not finish")
            cpu_after, wall = cpu_by_component(components), time.monotonic() - wall_before
            if sim.error is not None:
                raise RuntimeError(f"the {exchange_mode} exchange failed: {sim.error!r}")
            time.sleep(0.5)
            report = sim.report()
            # every round's figures, for a look at a tail (the summary keeps only percentiles)
            (case_dir / "exchange-report.json").write_bytes(
                orjson.dumps(report, option=orjson.OPT_INDENT_2)
            )
            if recorder is not None:
                t_save = time.monotonic()
                recorder.save()
                print(
                    f"         recorded {len(recorder.frames)} dispatches to {recording}"
                    f" ({time.monotonic() - t_save:.1f} s to write)",
                    flush=True,
                )
            client_ms = (
                coordinator_latencies(broker.url, case_dir / "round-records.json")
                if client == "pipeline"
                else []
            )
        finally:
            group.stop()
            sim.stop()
    s = report["summary"]
    meta = report["meta"]
    return {
        "assets": assets,
        "aggregators": aggregators,
        "tree": tree,
        "client": client,
        "transport": transport,
        "exchange": exchange_mode,
        "rounds": s["rounds"],
        "aggregator_rounds": s["aggregator_rounds"],
        "on_time_ratio": s["on_time_ratio"],
        "late": s["late"],
        "missing": s["missing"],
        "latency_ms": s["first_batch_ms"],
        # The coordinator's own clock: from ingress reading a round's first event to the
        # batches being published. The gap to latency_ms is the exchange's side (publishing the
        # events, reading the batches) on the same two cores.
        "client_latency_ms": percentiles(client_ms) if client_ms else None,
        "setup_s": round(setup_s, 1),
        # Average cores each component used while the exchange ticked (2 on this machine).
        "cores_used": {
            name: round((cpu_after[name] - cpu_before[name]) / wall, 3) for name in components
        },
        "exchange_round_ms": meta.get("round_build_publish_ms"),
        "event_mb_per_round": round(
            meta["counts"]["bytes_sent"] / max(1, meta["counts"]["rounds"]) / 1e6, 2
        ),
    }


def _selected(sim: Simulator | Replay) -> int:
    """Devices the client selected so far."""
    if isinstance(sim, Replay):
        return sim.selected_count()
    return sum(len(v) for v in list(sim.registry.selected.values()))


def recording_path(
    cache_dir: Path, assets: int, aggregators: int, tree: str, slots: int, tick_interval: float
) -> Path:
    """Where the recording of one case lives: keyed by everything that shapes its events."""
    return cache_dir / (
        f"v{RECORDING_VERSION}-{assets}a-{aggregators}agg-{tree}-{slots}slots-{tick_interval:g}s"
        f"-grid{GRID_SEED}-sim{SIM_SEED}.msgpack.gz"
    )


def coordinator_latencies(broker_url: str, save_to: Path | None = None) -> list[float]:
    """The coordinator's own event-to-publish latencies of the fleet's current run (its round
    records written to ``save_to`` as well, for a look at one round)."""
    r = redis.Redis.from_url(broker_url)
    try:
        run = current_run(r, Keys())
        if run is None:
            return []
        records = [orjson.loads(f[b"data"]) for _, f in r.xrange(Keys().for_run(run).events)]
    finally:
        r.close()
    rounds = [x for x in records if x.get("kind") == "round"]
    if save_to is not None:
        save_to.write_bytes(orjson.dumps(rounds, option=orjson.OPT_INDENT_2))
    return [float(x["latency_ms"]) for x in rounds]


def plot(rows: list[dict[str, Any]], path: Path, tick_interval: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    modes = sorted({_exchange(r) for r in rows})
    for mode in modes:
        for tree, marker in (("pruned", "o"), ("full", "s")):
            for client, color in (("pipeline", "tab:blue"), ("single", "tab:gray")):
                if mode == "replay":
                    color = {"tab:blue": "tab:green", "tab:gray": "tab:olive"}[color]
                pts = sorted(
                    (
                        r["assets"],
                        r["latency_ms"]["p50"],
                        r["latency_ms"]["p99"],
                        r["on_time_ratio"],
                    )
                    for r in rows
                    if r["tree"] == tree
                    and r["client"] == client
                    and _exchange(r) == mode
                    and r["latency_ms"]["p99"] is not None
                )
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                label = f"{client}, {tree} trees" + (
                    ", replayed exchange" if mode == "replay" else ""
                )
                axes[0].plot(
                    xs,
                    [p[2] for p in pts],
                    marker=marker,
                    color=color,
                    linestyle="-" if tree == "pruned" else "--",
                    label=f"{label} (p99)",
                )
                axes[0].plot(
                    xs,
                    [p[1] for p in pts],
                    marker=marker,
                    color=color,
                    alpha=0.4,
                    linestyle=":",
                    label=f"{label} (p50)",
                )
                axes[1].plot(
                    xs,
                    [100 * (p[3] or 0) for p in pts],
                    marker=marker,
                    color=color,
                    linestyle="-" if tree == "pruned" else "--",
                    label=label,
                )
    axes[0].axhline(
        tick_interval * 1000, color="tab:red", linewidth=1, label="deadline (tick interval)"
    )
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("assets")
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("event -> first batch (ms, measured by the exchange)")
    axes[1].set_ylabel("batches on time (%)")
    axes[1].set_ylim(0, 105)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle("gridfleet pipeline (2 workers) vs one process, 2-core machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _exchange(row: dict[str, Any]) -> str:
    return row.get("exchange", "embedded")  # rows written before replays existed


def _key(row: dict[str, Any]) -> tuple[int, str, str, str]:
    return (row["assets"], row["tree"], row["client"], _exchange(row))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--trees", nargs="+", default=["pruned", "full"], choices=["pruned", "full"])
    ap.add_argument(
        "--clients", nargs="+", default=["pipeline", "single"], choices=["pipeline", "single"]
    )
    ap.add_argument(
        "--exchange",
        nargs="+",
        default=["embedded"],
        choices=["embedded", "replay"],
        help="embedded: the exchange runs (and costs) here; replay: a recording of its events"
        " is published again (recorded once per size, tree and slots)",
    )
    ap.add_argument(
        "--full-max-assets",
        type=int,
        default=10_000,
        help="full trees are gigabytes per tick beyond this",
    )
    ap.add_argument(
        "--slots", type=int, default=3, help="market slots (the first is the exchange's warm-up)"
    )
    ap.add_argument("--tick-interval", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gridfleet-bench"))
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gridfleet-bench-recordings",
        help="where recordings for --exchange replay are kept (reused when present)",
    )
    ap.add_argument(
        "--record-client",
        default="single",
        choices=["pipeline", "single"],
        help="the client of the embedded run that is recorded",
    )
    ap.add_argument(
        "--rerecord", action="store_true", help="record again even when a recording is cached"
    )
    ap.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="where pipeline.json and pipeline.png go (default: bench/results)",
    )
    ap.add_argument(
        "--merge", action="store_true", help="replace only these cases in the existing results file"
    )
    args = ap.parse_args()
    favour_reader_threads()  # as `gridfleet sim` runs the exchange
    keep_freed_memory()
    modes = [m for m in ("embedded", "replay") if m in args.exchange]
    results_json = args.results_dir / "pipeline.json"
    rows = []
    kept: list[dict[str, Any]] = []
    if args.merge and results_json.exists():
        kept = orjson.loads(results_json.read_bytes())["rows"]
    recorded: set[Path] = set()  # recorded by this invocation

    def report_row(row: dict[str, Any]) -> None:
        lat = row["latency_ms"]
        own = row["client_latency_ms"]
        print(
            "         cores used: " + ", ".join(f"{k} {v}" for k, v in row["cores_used"].items()),
            flush=True,
        )
        print(
            f"{row['assets']:>7} {row['tree']:6} {row['client']:8} {_exchange(row):8}: on time {100 * (row['on_time_ratio'] or 0):5.1f} %  p50 {lat['p50']} ms  p99 {lat['p99']} ms  max {lat['max']} ms"
            + (f"  (coordinator's clock: p50 {own['p50']} ms, p99 {own['p99']} ms)" if own else ""),
            flush=True,
        )

    for assets in args.sizes:
        aggregators = AGGREGATORS.get(assets, max(1, assets // 100))
        for tree in args.trees:
            if tree == "full" and assets > args.full_max_assets:
                print(
                    f"{assets:>7} {tree:6}: skipped (a full tree to each of {AGGREGATORS.get(assets)} aggregators is gigabytes per tick)",
                    flush=True,
                )
                continue
            rec = recording_path(
                args.cache_dir, assets, aggregators, tree, args.slots, args.tick_interval
            )

            def needs_recording(rec: Path = rec) -> bool:
                return (
                    "replay" in modes
                    and rec not in recorded
                    and (args.rerecord or not rec.exists())
                )

            # the recorded client first: its embedded run is the recording
            for client in sorted(args.clients, key=lambda c: c != args.record_client):
                for mode in modes:
                    case = (assets, aggregators, tree)
                    common = (args.slots, args.tick_interval, args.workdir)
                    if mode == "replay" and needs_recording():
                        print(
                            f"{assets:>7} {tree:6}: recording the embedded exchange"
                            f" ({args.record_client} client) to {rec}",
                            flush=True,
                        )
                        report_row(run_case(*case, args.record_client, *common, recording=rec))
                        recorded.add(rec)
                    record_here = (
                        mode == "embedded" and client == args.record_client and needs_recording()
                    )
                    row = run_case(
                        *case,
                        client,
                        *common,
                        exchange_mode=mode,
                        recording=rec if mode == "replay" or record_here else None,
                    )
                    if record_here:
                        recorded.add(rec)
                    # a merged file holds rows of several invocations: each says which
                    row["command"] = command_line()
                    row["date"] = datetime.now(UTC).isoformat(timespec="seconds")
                    rows.append(row)
                    report_row(row)
    done = {_key(r) for r in rows}
    rows = sorted(
        [r for r in kept if _key(r) not in done] + rows,
        key=lambda r: (r["assets"], r["tree"] != "pruned", r["client"], _exchange(r)),
    )
    overhead = {}
    for assets, tree in sorted({(r["assets"], r["tree"]) for r in rows}):
        for mode in ("embedded", "replay"):
            p, s = (
                next((r for r in rows if _key(r) == (assets, tree, c, mode)), None)
                for c in ("pipeline", "single")
            )
            if p and s and s["latency_ms"]["p50"] and p["latency_ms"]["p50"]:
                overhead[f"{assets}-{tree}" + ("" if mode == "embedded" else "-replay")] = {
                    "p50_ratio": round(p["latency_ms"]["p50"] / s["latency_ms"]["p50"], 2),
                    "p99_ratio": round(p["latency_ms"]["p99"] / s["latency_ms"]["p99"], 2),
                }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    png = args.results_dir / "pipeline.png"
    plot(rows, png, args.tick_interval)
    payload = {
        "tick_interval_s": args.tick_interval,
        "workers": 2,
        "cpus": os.cpu_count(),
        "rows": rows,
        "pipeline_over_single": overhead,
        "plot": png.name,
    }
    if args.results_dir.resolve() == RESULTS.resolve():
        path = write_results("pipeline", payload)
    else:  # a trial run: leave the committed results alone
        path = results_json
        path.write_bytes(
            orjson.dumps({"command": command_line(), **payload}, option=orjson.OPT_INDENT_2)
        )
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    sys.exit(main())
