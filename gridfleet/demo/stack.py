"""What the demo runs, on this machine, and how it is brought up, watched and stopped.

:class:`DemoStack` starts two private Redis servers (the exchange's and the broker's), the
embedded exchange, Celery workers, the coordinator, the ingress and Flower; reads the figures
the live view shows; collects what the report needs; and stops everything it started.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml
from sqlalchemy.exc import SQLAlchemyError

from gridfleet.demo.live import TICKS_PER_SLOT, LiveFigures
from gridfleet.platform.keys import Keys
from gridfleet.platform.runs import new_run_id
from gridfleet.runtime.processes import ProcessGroup, gridfleet_command
from gridfleet.runtime.redact import redact, redact_argv
from gridfleet.runtime.redis_server import RedisServer, free_port


class DemoError(Exception):
    """The demo cannot go on (a process died, the fleet did not come up); the message says why."""


log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    """The demo's knobs (the ``gridfleet demo`` flags)."""

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
    transport: str = "redis"  # redis: gsy-e's local Redis dialect; rest: the hosted REST API
    settlement: bool = False  # settlement markets on the exchange, the settlement strategy too
    # Midday: PVs produce, houses export, fees are earned; a night start shows storages only.
    start: datetime = datetime(2024, 6, 1, 12, 0)


# the demo's settlement strategy (ct/kWh): a bid and an offer meet across a few grid fees
SETTLEMENT_RATES = {"bid_rate": 26.0, "offer_rate": 14.0}

# where the fleet's processes find the REST credentials the demo makes up (never in the file)
REST_USERNAME_ENV, REST_PASSWORD_ENV = "EXCHANGE_USERNAME", "EXCHANGE_PASSWORD"


class DemoStack:
    """Every process and server of one demo run, and the run directory it writes to."""

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
        self.run_id = new_run_id()
        self.keys = Keys("gf").for_run(self.run_id)  # the run's counters and records
        self.live = LiveFigures(rounds_total=max(0, opts.slots - 1) * TICKS_PER_SLOT)
        self._stream_id = "0-0"
        self._seen_rids: set[str] = set()  # records the fleet wrote again after a broker restart
        self.started = time.time()
        # --transport rest: a user made up for this run; the password only goes to the env
        self.rest_user = f"demo-{secrets.token_hex(4)}"
        self.rest_password = secrets.token_urlsafe(24)
        self.simulation_id = str(uuid.uuid4())

    # -- set-up -------------------------------------------------------------------------------

    def exchange_section(self) -> dict[str, Any]:
        """The fleet file's ``exchange``: the Redis URL from the env, or (``--transport rest``)
        the embedded exchange's REST door with the credentials' env var names."""
        if self.opts.transport != "rest":
            return {"url_env": "GRIDFLEET_EXCHANGE_URL"}
        return {
            "rest": {
                "domain": self.sim.rest_url,
                "websocket": self.sim.rest_ws_url,
                "simulation_id": self.sim.simulation_id,
                "username_env": REST_USERNAME_ENV,
                "password_env": REST_PASSWORD_ENV,
            }
        }

    def strategy_spec(self) -> dict[str, Any]:
        """The assets' strategy; with settlement, the settlement strategy runs after it, bidding
        above and offering below the spot range's middle so deviations meet in the market."""
        if not self.opts.settlement:
            return {"name": self.opts.strategy}
        return {
            "name": "composite",
            "params": {
                "strategies": [
                    {"name": self.opts.strategy},
                    {"name": "settlement", "params": SETTLEMENT_RATES},
                ]
            },
        }

    def write_fleet_file(self, exchange_url: str, broker_url: str) -> Path:
        """The fleet file the processes read: a real one, kept in the run directory to look at."""
        grid_file = self.run_dir / "grid-assets.json"
        grid_file.write_bytes(orjson.dumps(self.assignment, option=orjson.OPT_INDENT_2))
        fleet = {
            "exchange": self.exchange_section(),
            "broker": {"url_env": "GRIDFLEET_BROKER_URL"},
            "grid_file": grid_file.name,
            "shard_size": self.opts.shard_size,
            "flower_events": self.opts.flower,
            "aggregators": [
                {"name": name, "assets": entry["assets"], "strategy": self.strategy_spec()}
                for name, entry in self.assignment.items()
            ],
        }
        path = self.run_dir / "fleet.yaml"
        path.write_text(
            "# Written by `gridfleet demo`: the fleet it ran.\n"
            + yaml.safe_dump(fleet, sort_keys=False)
        )
        return path

    def start_exchange(self, exchange_url: str) -> Any:
        """The embedded exchange, paused until the fleet is up; with ``--transport rest`` its
        REST door too, for the user this run made up."""
        from gridfleet.simulator import SimConfig, Simulator

        rest = None
        if self.opts.transport == "rest":
            from gridfleet.simulator.rest_door import RestOptions

            rest = RestOptions(
                users={self.rest_user: self.rest_password}, simulation_id=self.simulation_id
            )
        self.sim = Simulator(
            self.grid,
            exchange_url,
            SimConfig(
                slots=self.opts.slots,
                tick_interval=self.opts.tick_interval,
                tree=self.opts.tree,  # type: ignore[arg-type]
                paused=True,
                start=self.opts.start,
                settlement=self.opts.settlement,
                seed=self.opts.seed,
            ),
            rest=rest,
        ).start()
        return self.sim

    def fleet_env(self) -> dict[str, str]:
        """What the fleet's processes need beyond the URLs: the REST credentials, if any."""
        if self.opts.transport != "rest":
            return {}
        return {REST_USERNAME_ENV: self.rest_user, REST_PASSWORD_ENV: self.rest_password}

    def start(self, say: Callable[[str], object]) -> None:
        """Start everything, wait until the fleet is connected, then let the exchange run."""
        exchange = RedisServer().start()
        self.servers.append(exchange)
        broker = RedisServer().start()
        self.servers.append(broker)
        say(f"exchange Redis {redact(exchange.url)}, broker Redis {redact(broker.url)}")
        self.start_exchange(exchange.url)
        if self.opts.transport == "rest":
            say(f"exchange REST door {self.sim.rest_url} (simulation {self.sim.simulation_id})")
        fleet_path = self.write_fleet_file(exchange.url, broker.url)
        from gridfleet.report import SimStatsRecorder

        self.recorder = SimStatsRecorder(self.sim).start()
        env = {
            "GRIDFLEET_EXCHANGE_URL": exchange.url,
            "GRIDFLEET_BROKER_URL": broker.url,
            "GRIDFLEET_CONFIG": str(fleet_path),
            "GRIDFLEET_LOG_FORMAT": "text",
        }
        env.update(self.fleet_env())
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
        run = ["--run-id", self.run_id]
        self.group.start("coordinator", [*base, "coordinator", "--metrics-port", "0", *run], env)
        self.group.start("ingress", [*base, "ingress", "--metrics-port", "0", *run], env)
        # the run, written into the ledger beside the run folders as it happens
        self.group.start(
            "ledger", [*base, "ledger", *run], {**env, "GRIDFLEET_LEDGER_URL": self.ledger_url}
        )
        if self.opts.flower:
            port = free_port()
            self.group.start("flower", [*base, "flower", "--port", str(port)], env)
            self.flower_url = f"http://127.0.0.1:{port}"
            say(f"Flower: {self.flower_url}")
        self.broker = redis.Redis.from_url(broker.url)
        self._wait_ready(say)
        self.sim.resume()
        self.started = time.time()

    def _wait_ready(self, say: Callable[[str], object], timeout: float = 180) -> None:
        """Until ingress has selected the fleet and a worker is up (first rounds then run warm)."""
        deadline = time.monotonic() + timeout
        fleet_ok = worker_ok = False
        while time.monotonic() < deadline and not self.stop_event.is_set():
            self.check_children()
            fleet_ok = fleet_ok or bool(self.broker.hlen(self.keys.fleet))
            worker_ok = worker_ok or bool(self.broker.keys(f"{self.keys.ns}:alive:worker:*"))
            if fleet_ok and worker_ok:
                say(
                    f"fleet connected: {self.opts.aggregators} aggregators, {self.opts.assets} assets selected; workers up"
                )
                return
            time.sleep(0.2)
        if not self.stop_event.is_set():
            raise DemoError(
                f"the fleet did not come up in {timeout:.0f} s (fleet connected: {fleet_ok}, worker up: {worker_ok}); see {self.group.log_dir}"
            )

    @property
    def ledger_url(self) -> str:
        """The demo's ledger: ``ledger.sqlite`` beside its run folder (runs/ledger.sqlite)."""
        return f"sqlite:///{self.run_dir.parent / 'ledger.sqlite'}"

    def drain_ledger(self, timeout: float = 30.0) -> bool:
        """After the finish: wait for the ledger writer to write the run's last records."""
        for child in self.group.children:
            if child.name == "ledger" and child.process is not None:
                try:
                    return child.process.wait(timeout=timeout) == 0
                except subprocess.TimeoutExpired:
                    return False
        return False

    def check_children(self) -> None:
        """Raise :class:`DemoError` naming the first process that died (Flower may die)."""
        dead = [
            c
            for c in self.group.dead()
            if c.name != "flower"
            and not (c.name == "ledger" and c.process is not None and c.process.returncode == 0)
        ]
        if dead:
            c = dead[0]
            raise DemoError(
                f"{c.name} exited with code {c.process.returncode if c.process else '?'}; its log: {c.log_path}"
            )

    # -- while it runs ------------------------------------------------------------------------

    def refresh(self) -> LiveFigures:
        """Bring :attr:`live` up to date: the fleet's records and counters, the exchange's figures."""
        live = self.live
        with contextlib.suppress(redis.RedisError):
            streams: Any = (
                self.broker.xread({self.keys.events: self._stream_id}, count=10_000) or []
            )
            for _, entries in streams:
                for entry_id, fields in entries:
                    self._stream_id = entry_id.decode()
                    data = fields.get(b"data")
                    if not data:
                        continue
                    record = orjson.loads(data)
                    rid = record.get("rid")
                    if rid is not None:  # written again after a broker restart: seen already
                        if rid in self._seen_rids:
                            continue
                        self._seen_rids.add(rid)
                    live.records.append(record)
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
        """True once the exchange sent its finish events."""
        return bool(self.sim is not None and self.sim.wait(0))

    # -- the end ------------------------------------------------------------------------------

    def collect(self) -> dict[str, Any]:
        """What the report is made of: the exchange's report, the fleet's records and counters."""
        time.sleep(min(1.0, self.opts.tick_interval))  # trailing batches and trade records
        self.refresh()
        counters = {}
        with contextlib.suppress(redis.RedisError):
            raw: Any = self.broker.hgetall(self.keys.counters)
            counters = {k.decode(): v.decode() for k, v in raw.items()}
        return {"sim_report": self.sim.report(), "records": self.live.records, "counters": counters}

    def write_report(self, data: dict[str, Any]) -> Path:
        """Write ``exchange-report.json``, ``report.json`` and ``report.html``; the HTML's path."""
        from gridfleet.report import write_report

        meta = {
            "assets": self.opts.assets,
            "aggregators": self.opts.aggregators,
            "markets": len(self.grid.markets),
            "slots": self.opts.slots,
            "tick_interval_s": self.opts.tick_interval,
            "tree": self.opts.tree,
            "workers": self.opts.workers,
            "run_id": self.run_id,
            "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - self.started, 1),
            "command": redact_argv(["gridfleet", *sys.argv[1:]]),
        }
        (self.run_dir / "exchange-report.json").write_bytes(
            orjson.dumps(data["sim_report"], option=orjson.OPT_INDENT_2)
        )
        self.recorder.stop()
        html = write_report(
            self.run_dir,
            market_stats=self.recorder.market_stats,
            slot_totals=self.recorder.slot_totals,
            meta=meta,
            **data,
        )
        self.keep_in_ledger(data["sim_report"], meta)
        return html

    def keep_in_ledger(self, sim_report: dict[str, Any], meta: dict[str, Any]) -> None:
        """What the exchange measured, beside the run's records in the ledger, so that
        ``gridfleet report RUN`` rebuilds this report later (a failure is one warning)."""
        from gridfleet.ledger.store import LedgerError, open_ledger, put_documents

        try:
            engine = open_ledger(self.ledger_url)
            put_documents(
                engine,
                self.run_id,
                {
                    "sim_report": sim_report,
                    "market_stats": self.recorder.market_stats,
                    "slot_totals": self.recorder.slot_totals,
                    "report_meta": meta,
                },
            )
            engine.dispose()
        except (LedgerError, SQLAlchemyError) as exc:
            log.warning("the exchange's figures were not kept in the ledger: %s", exc)

    def stop(self) -> None:
        """Stop every process and server this stack started (safe to call more than once)."""
        self.stop_event.set()
        self.group.stop(grace_s=10)
        if self.recorder is not None:
            self.recorder.stop()
        if self.sim is not None:
            self.sim.stop()
        for server in self.servers:
            server.stop()
