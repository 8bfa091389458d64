"""``gridfleet demo``: a whole fleet trading on the embedded exchange, on this machine.

It starts two private Redis servers (the exchange's and the broker's), the embedded exchange,
Celery workers, the coordinator, the ingress and Flower; runs the fleet for a few market slots
with a live view of what the exchange measures; then stops everything it started and writes a
report (``report.json``, ``report.html``) into the run directory.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
import redis
import yaml

from gridfleet.platform.keys import Keys
from gridfleet.runtime.processes import ProcessGroup, gridfleet_command
from gridfleet.runtime.redis_server import RedisServer, free_port

TICKS_PER_SLOT = 10


@dataclass
class DemoOptions:
    assets: int = 5000
    aggregators: int = 50
    markets: int | None = None
    slots: int = 4
    tick_interval: float = 1.0
    tree: str = "pruned"
    workers: int = 2
    shard_size: int = 2000
    report_dir: Path | None = None
    flower: bool = True
    headless: bool = False
    seed: int = 0
    strategy: str = "linear_ramp"
    # Midday: PVs produce, houses export, fees are earned; a night start shows storages only.
    start: datetime = datetime(2024, 6, 1, 12, 0)


@dataclass
class LiveFigures:
    """What the live view shows, refreshed from the exchange and the fleet's event stream."""

    rounds_done: int = 0
    rounds_total: int = 0
    slot: str = "-"
    tick: int = 0
    on_time: int = 0
    late: int = 0
    missing: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    trades: int = 0
    energy_kwh: float = 0.0
    commands: int = 0
    refused: int = 0
    rejected: int = 0
    hedged: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)


class Demo:
    def __init__(self, opts: DemoOptions) -> None:
        from gridfleet.simulator.grid import assign_aggregators, generate_grid

        self.opts = opts
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = (opts.report_dir or Path("runs") / stamp).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.grid = generate_grid(
            opts.assets, communities=opts.markets, houses_size=10, seed=opts.seed
        )
        self.assignment = assign_aggregators(self.grid, opts.aggregators)
        self.stop_event = threading.Event()
        self.servers: list[RedisServer] = []
        self.group = ProcessGroup(log_dir=self.run_dir / "logs")
        self.sim: Any = None
        self.recorder: Any = None
        self.flower_url: str | None = None
        self.keys = Keys("gf")
        self.live = LiveFigures(rounds_total=max(0, opts.slots - 1) * TICKS_PER_SLOT)
        self._stream_id = "0-0"
        self.started = time.time()

    # -- set-up -------------------------------------------------------------------------------

    def write_fleet_file(self, exchange_url: str, broker_url: str) -> Path:
        """The fleet file the processes read: a real one, kept in the run directory to look at."""
        grid_file = self.run_dir / "grid-assets.json"
        grid_file.write_bytes(orjson.dumps(self.assignment, option=orjson.OPT_INDENT_2))
        fleet = {
            "exchange": {"url_env": "GRIDFLEET_EXCHANGE_URL"},
            "broker": {"url_env": "GRIDFLEET_BROKER_URL"},
            "grid_file": grid_file.name,
            "shard_size": self.opts.shard_size,
            "flower_events": self.opts.flower,
            "aggregators": [
                {"name": name, "assets": entry["assets"], "strategy": {"name": self.opts.strategy}}
                for name, entry in self.assignment.items()
            ],
        }
        path = self.run_dir / "fleet.yaml"
        path.write_text(
            "# Written by `gridfleet demo`: the fleet it ran.\n"
            + yaml.safe_dump(fleet, sort_keys=False)
        )
        return path

    def start(self, say: Any) -> None:
        from gridfleet.simulator.runner import SimConfig, Simulator

        exchange = RedisServer().start()
        self.servers.append(exchange)
        broker = RedisServer().start()
        self.servers.append(broker)
        say(f"exchange Redis {exchange.url}, broker Redis {broker.url}")
        fleet_path = self.write_fleet_file(exchange.url, broker.url)
        self.sim = Simulator(
            self.grid,
            exchange.url,
            SimConfig(
                slots=self.opts.slots,
                tick_interval=self.opts.tick_interval,
                tree=self.opts.tree,  # type: ignore[arg-type]
                paused=True,
                start=self.opts.start,
            ),
        ).start()
        from gridfleet.report import SimStatsRecorder

        self.recorder = SimStatsRecorder(self.sim).start()
        env = {
            "GRIDFLEET_EXCHANGE_URL": exchange.url,
            "GRIDFLEET_BROKER_URL": broker.url,
            "GRIDFLEET_CONFIG": str(fleet_path),
            "GRIDFLEET_LOG_FORMAT": "text",
        }
        base = gridfleet_command()
        self.group.start(
            "worker",
            [
                *base,
                "worker",
                "--concurrency",
                str(self.opts.workers),
                "--loglevel",
                "WARNING",
                *(["--task-events"] if self.opts.flower else []),
            ],
            env,
        )
        self.group.start("coordinator", [*base, "coordinator", "--metrics-port", "0"], env)
        self.group.start("ingress", [*base, "ingress", "--metrics-port", "0"], env)
        if self.opts.flower:
            port = free_port()
            self.group.start("flower", [*base, "flower", "--port", str(port)], env)
            self.flower_url = f"http://127.0.0.1:{port}"
            say(f"Flower: {self.flower_url}")
        self.broker = redis.Redis.from_url(broker.url)
        self._wait_ready(say)
        self.sim.resume()
        self.started = time.time()

    def _wait_ready(self, say: Any, timeout: float = 180) -> None:
        """Until ingress has selected the fleet and a worker is up (first rounds then run warm)."""
        deadline = time.monotonic() + timeout
        fleet_ok = worker_ok = False
        while time.monotonic() < deadline and not self.stop_event.is_set():
            self._check_children()
            fleet_ok = fleet_ok or bool(self.broker.hlen(f"{self.keys.ns}:fleet"))
            worker_ok = worker_ok or bool(self.broker.keys(f"{self.keys.ns}:alive:worker:*"))
            if fleet_ok and worker_ok:
                say(
                    f"fleet connected: {self.opts.aggregators} aggregators, {self.opts.assets} assets selected; workers up"
                )
                return
            time.sleep(0.2)
        if not self.stop_event.is_set():
            raise click.ClickException(
                f"the fleet did not come up in {timeout:.0f} s (fleet connected: {fleet_ok}, worker up: {worker_ok}); see {self.group.log_dir}"
            )

    def _check_children(self) -> None:
        dead = [c for c in self.group.dead() if c.name != "flower"]
        if dead:
            c = dead[0]
            raise click.ClickException(
                f"{c.name} exited with code {c.process.returncode if c.process else '?'}; its log: {c.log_path}"
            )

    # -- while it runs ------------------------------------------------------------------------

    def refresh(self) -> LiveFigures:
        live = self.live
        with contextlib.suppress(redis.RedisError):
            streams: Any = (
                self.broker.xread({self.keys.events: self._stream_id}, count=10_000) or []
            )
            for _, entries in streams:
                for entry_id, fields in entries:
                    self._stream_id = entry_id.decode()
                    data = fields.get(b"data")
                    if data:
                        live.records.append(orjson.loads(data))
            raw_counters: Any = self.broker.hgetall(self.keys.counters)
            counters = {k.decode(): v.decode() for k, v in raw_counters.items()}
            live.trades = int(counters.get("trades", 0))
            live.energy_kwh = float(counters.get("energy_traded_kwh", 0.0))
            live.commands = int(counters.get("commands_sent", 0))
            live.refused = int(counters.get("commands_refused", 0))
            live.rejected = int(counters.get("commands_rejected", 0))
            live.hedged = int(counters.get("hedged_shards", 0))
        rounds = [r for r in live.records if r.get("kind") == "round"]
        live.rounds_done = len({r["round"].split(".")[0] for r in rounds})
        if rounds:
            live.slot, live.tick = rounds[-1]["slot"], rounds[-1]["tick"]
        s = self.sim.report()["summary"]
        live.on_time, live.late, live.missing = s["on_time"], s["late"], s["missing"]
        live.p50_ms, live.p99_ms = s["first_batch_ms"]["p50"], s["first_batch_ms"]["p99"]
        return live

    def finished(self) -> bool:
        return bool(self.sim is not None and self.sim.wait(0))

    # -- the end ------------------------------------------------------------------------------

    def collect(self) -> dict[str, Any]:
        time.sleep(min(1.0, self.opts.tick_interval))  # trailing batches and trade records
        self.refresh()
        counters = {}
        with contextlib.suppress(redis.RedisError):
            raw: Any = self.broker.hgetall(self.keys.counters)
            counters = {k.decode(): v.decode() for k, v in raw.items()}
        return {"sim_report": self.sim.report(), "records": self.live.records, "counters": counters}

    def write_report(self, data: dict[str, Any]) -> Path:
        from gridfleet.report import write_report

        meta = {
            "assets": self.opts.assets,
            "aggregators": self.opts.aggregators,
            "markets": len(self.grid.markets),
            "slots": self.opts.slots,
            "tick_interval_s": self.opts.tick_interval,
            "tree": self.opts.tree,
            "workers": self.opts.workers,
            "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - self.started, 1),
            "command": " ".join(["gridfleet", *sys.argv[1:]]),
        }
        (self.run_dir / "exchange-report.json").write_bytes(
            orjson.dumps(data["sim_report"], option=orjson.OPT_INDENT_2)
        )
        self.recorder.stop()
        return write_report(
            self.run_dir,
            market_stats=self.recorder.market_stats,
            slot_totals=self.recorder.slot_totals,
            meta=meta,
            **data,
        )

    def stop(self) -> None:
        self.stop_event.set()
        self.group.stop(grace_s=10)
        if self.recorder is not None:
            self.recorder.stop()
        if self.sim is not None:
            self.sim.stop()
        for server in self.servers:
            server.stop()


# ---------------------------------------------------------------------------------------------
# Presentation


def _panel(live: LiveFigures, opts: DemoOptions, flower: str | None) -> Any:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    answered = live.on_time + live.late + live.missing
    on_time = f"{100 * live.on_time / answered:.1f} %" if answered else "-"
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", justify="right")
    table.add_column()
    table.add_row("slot / tick", f"{live.slot}  tick {live.tick}/{TICKS_PER_SLOT - 1}")
    table.add_row("rounds", f"{live.rounds_done} of {live.rounds_total}")
    table.add_row(
        "batches on time",
        f"{on_time}  ({live.on_time} on time, {live.late} late, {live.missing} missing; measured by the exchange)",
    )

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} ms"

    table.add_row(
        "event -> batch",
        f"p50 {fmt(live.p50_ms)}   p99 {fmt(live.p99_ms)}   (deadline {opts.tick_interval * 1000:.0f} ms)",
    )
    table.add_row("trades", f"{live.trades}   {live.energy_kwh:.1f} kWh")
    table.add_row(
        "commands",
        f"{live.commands} sent, {live.refused} refused before sending, {live.rejected} rejected by the exchange",
    )
    table.add_row("hedged shards", str(live.hedged))
    if flower:
        table.add_row("Flower", flower)
    bar = ProgressBar(total=max(1, live.rounds_total), completed=live.rounds_done, width=60)
    return Group(table, bar)


def _summary_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(
        title="gridfleet demo: what the exchange measured", show_header=True, header_style="bold"
    )
    t.add_column("figure")
    t.add_column("value", justify="right")
    lat = report.get("latency_ms", {})
    rows = [
        ("assets / aggregators", f"{report['assets']} / {report['aggregators']}"),
        ("rounds (ticks) evaluated", str(report["ticks"])),
        ("batches expected", str(report["batches_expected"])),
        (
            "on time / late / missing",
            f"{report['batches_on_time']} / {report['batches_late']} / {report['batches_missing']}",
        ),
        (
            "event -> batch p50 / p95 / p99 / max",
            " / ".join(
                "-" if lat.get(k) is None else f"{lat[k]:.0f} ms"
                for k in ("p50", "p95", "p99", "max")
            ),
        ),
        ("commands sent / rejected", f"{report['commands_sent']} / {report['commands_rejected']}"),
        ("hedged shards", str(report["hedged_shards"])),
        ("trades / energy traded", f"{report['trades']} / {report['energy_traded_kwh']:.1f} kWh"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def run_demo(opts: DemoOptions) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(soft_wrap=True)
    demo = Demo(opts)
    console.print(
        f"[bold]gridfleet demo[/]: {opts.assets} assets in {opts.aggregators} aggregators, {opts.slots} slots, a tick every {opts.tick_interval:g} s ({opts.tree} trees)"
    )
    console.print(f"run directory: {demo.run_dir}")

    def on_signal(signum: int, _frame: object) -> None:
        demo.stop_event.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupted = False
    try:
        demo.start(lambda msg: console.print(f"  {msg}"))
        if opts.headless:
            last_slot = None
            while not demo.finished() and not demo.stop_event.wait(0.5):
                demo._check_children()
                live = demo.refresh()
                if live.slot != last_slot:
                    last_slot = live.slot
                    console.print(
                        f"  slot {live.slot}: {live.rounds_done}/{live.rounds_total} rounds, {live.on_time} batches on time, {live.late} late, {live.missing} missing, {live.trades} trades"
                    )
        else:
            with Live(
                _panel(demo.live, opts, demo.flower_url), console=console, refresh_per_second=4
            ) as view:
                while not demo.finished() and not demo.stop_event.wait(0.25):
                    demo._check_children()
                    view.update(_panel(demo.refresh(), opts, demo.flower_url))
        interrupted = demo.stop_event.is_set() and not demo.finished()
        if interrupted:
            console.print("[yellow]interrupted: stopping every process gridfleet started[/]")
            return 130
        data = demo.collect()
        demo.group.stop(grace_s=10)
        html = demo.write_report(data)
        report = orjson.loads((demo.run_dir / "report.json").read_bytes())
        console.print()
        console.print(_summary_table(report))
        console.print(f"report: {html}\n        {demo.run_dir / 'report.json'}")
        return 0
    finally:
        demo.stop()
        for s, h in old.items():
            signal.signal(s, h)


@click.command()
@click.option(
    "--assets",
    type=click.IntRange(1, 1_000_000),
    default=5000,
    show_default=True,
    help="Assets in the generated grid.",
)
@click.option(
    "--aggregators",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Aggregators sharing them (whole houses each).",
)
@click.option(
    "--markets",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Community markets (default: one per 100 houses).",
)
@click.option(
    "--slots",
    type=click.IntRange(2, 1000),
    default=4,
    show_default=True,
    help="Market slots; the first is the exchange's warm-up (its ticks carry no tree).",
)
@click.option(
    "--tick-interval",
    type=click.FloatRange(0.05, 60),
    default=1.0,
    show_default=True,
    help="Real seconds between tick events (the deadline).",
)
@click.option(
    "--tree",
    type=click.Choice(["full", "pruned"]),
    default="pruned",
    show_default=True,
    help="full: every aggregator gets the whole grid (gsy-e); pruned: only its paths.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Celery worker processes.",
)
@click.option(
    "--shard-size",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="Assets per shard task.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory for the report (default runs/<timestamp>).",
)
@click.option(
    "--no-flower", is_flag=True, help="Do not start Flower (saves the task-event overhead)."
)
@click.option("--headless", is_flag=True, help="Plain progress lines instead of the live view.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated grid.")
def demo(
    assets: int,
    aggregators: int,
    markets: int | None,
    slots: int,
    tick_interval: float,
    tree: str,
    workers: int,
    shard_size: int,
    report_dir: Path | None,
    no_flower: bool,
    headless: bool,
    seed: int,
) -> None:
    """Run a fleet on the embedded exchange, show it live, and write a report.

    Starts private Redis servers, the exchange, Celery workers, coordinator, ingress and Flower;
    stops all of them at the end or on Ctrl-C.
    """
    from gridfleet.simulator.grid import GridError

    opts = DemoOptions(
        assets=assets,
        aggregators=aggregators,
        markets=markets,
        slots=slots,
        tick_interval=tick_interval,
        tree=tree,
        workers=workers,
        shard_size=shard_size,
        report_dir=report_dir,
        flower=not no_flower,
        headless=headless,
        seed=seed,
    )
    try:
        code = run_demo(opts)
    except GridError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(code)
