"""A whole fleet on one machine for integration tests: real Redis, the embedded exchange,
ingress and coordinator (threads of the test process), and real Celery worker processes.

``transport="rest"`` connects the fleet through the embedded exchange's REST + websocket door
(real aiohttp server on loopback, JWT login) instead of its Redis door.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis

from gridfleet.config import FleetConfig, parse_config
from gridfleet.exchange import channels
from gridfleet.exchange.link import ExchangeTarget
from gridfleet.platform.coordinator import Coordinator
from gridfleet.platform.ingress import Ingress
from gridfleet.runtime.redis_server import free_port
from gridfleet.settings import ShardInputsMode
from gridfleet.simulator.grid import assign_aggregators, generate_grid
from gridfleet.simulator.rest_door import RestOptions
from gridfleet.simulator.runner import SimConfig, Simulator

REPO = Path(__file__).resolve().parents[2]


class Recorder(threading.Thread):
    """Everything that crosses the exchange's Redis: events per aggregator and batches, in order."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.events: dict[str, list[bytes]] = defaultdict(list)
        self.batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.halt = threading.Event()
        self.ready = threading.Event()
        self.drops = 0

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self._record()
            except redis.ConnectionError:
                # Redis drops a subscriber whose output buffer passes its limit (a test may send
                # a huge message on purpose): subscribe again, as gridfleet's readers do.
                self.drops += 1
                time.sleep(0.05)

    def _record(self) -> None:
        ps = self.client.pubsub()
        ps.psubscribe(channels.aggregator_events_pattern())
        ps.subscribe(channels.batch_commands())
        self.ready.set()
        while not self.halt.is_set():
            msg = ps.get_message(timeout=0.2)
            if not msg or msg["type"] not in ("message", "pmessage"):
                continue
            ch = msg["channel"].decode()
            if ch == channels.batch_commands():
                body = orjson.loads(msg["data"])
                self.batches[body["aggregator_uuid"]].append(body)
            else:
                agg = channels.aggregator_of(ch)
                assert agg is not None
                self.events[agg].append(msg["data"])
        ps.close()


class BatchJournal:
    """Every batch the exchange took in, as it applies them, whichever door it came through:
    ``(aggregator name, transaction id, batch_commands)`` in order. Installed on the engine's
    intake (the one place both doors' batches pass), so it sees what was applied, not sent."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.entries: list[tuple[str, str, dict[str, Any]]] = []
        intake = sim.engine.intake
        original = intake.batch_item

        def recording(data: dict[str, Any], at: float) -> Any:
            agg = data.get("aggregator_uuid")
            name = sim.registry.aggregators.get(agg, str(agg)) if isinstance(agg, str) else "?"
            self.entries.append(
                (name, str(data.get("transaction_id")), data.get("batch_commands") or {})
            )
            return original(data, at)

        intake.batch_item = recording  # type: ignore[method-assign]

    def transaction_ids(self) -> Counter[tuple[str, str]]:
        return Counter((name, tid) for name, tid, _ in self.entries)

    def by_round(self) -> dict[tuple[str, str], list[Any]]:
        """(aggregator name, round tag ``<slot>/<n>%``) -> its commands per device, sorted,
        transaction ids left out: comparable across runs of one grid (its uuids are seeded)."""
        out: dict[tuple[str, str], list[Any]] = {}
        for name, tid, commands in self.entries:
            tag = tid.rsplit("/", 1)[0]
            rows = out.setdefault((name, tag), [])
            for device, cmds in commands.items():
                for cmd in cmds:
                    kept = {k: v for k, v in cmd.items() if k not in ("transaction_id", "id")}
                    rows.append((device, orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)))
            rows.sort()
        return out


REST_USER_ENV, REST_PASSWORD_ENV = "GRIDFLEET_TEST_REST_USER", "GRIDFLEET_TEST_REST_PASSWORD"


def start_workers(
    broker_url: str, concurrency: int = 2, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GRIDFLEET_BROKER_URL": broker_url, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the worker makes its own
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gridfleet.cli",
            "worker",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "ERROR",
            "--metrics-port",
            str(metrics_port),
        ],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Wait until the pool is up, so the first round does not pay for Celery's start-up.
    deadline = time.monotonic() + 60
    client = redis.Redis.from_url(broker_url)
    while time.monotonic() < deadline:
        if any(k.startswith(b"gf:alive:worker:") for k in client.keys("gf:alive:worker:*")):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        time.sleep(0.2)
    raise TimeoutError("worker did not come up in 60 s")


def start_ingress(
    config_path: Path, log_path: Path, role: str = "ingress"
) -> subprocess.Popen[bytes]:
    """``gridfleet ingress`` (or ``role``: ``coordinator``) as a process of its own (so a test
    can kill -9 it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gridfleet.cli",
                role,
                "-c",
                str(config_path),
                "--metrics-port",
                "0",
                "--log-level",
                "INFO",
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=15)


def pool_children(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


@dataclass
class Fleet:
    exchange_url: str
    broker_url: str
    assets: int = 2000
    aggregators: int = 20
    slots: int = 3
    tick_interval: float = 0.5
    tree: str = "pruned"
    shard_size: int = 500
    extra_config: dict[str, Any] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "linear_ramp"})
    partitions: int = 1  # ingress processes splitting the aggregators
    ingress_process: Path | None = None  # a work dir: run `gridfleet ingress` as a process there
    coordinator_processes: int = 0  # with ingress_process: `gridfleet coordinator`s, no thread
    transport: str = "redis"  # or "rest": the embedded exchange's REST + websocket door
    rest: dict[str, Any] = field(default_factory=dict)  # RestOptions fields (token lifetime...)
    rest_link: dict[str, Any] = field(default_factory=dict)  # the fleet file's exchange.rest extras
    sim_options: dict[str, Any] = field(default_factory=dict)  # more SimConfig fields
    shard_inputs: ShardInputsMode = "auto"  # in-process ingress only: where shard inputs wait

    def __post_init__(self) -> None:
        self.grid = generate_grid(self.assets, houses_size=10, seed=7)
        self.assignment = assign_aggregators(self.grid, self.aggregators)
        exchange: dict[str, Any] = {"url": self.exchange_url}
        rest_options = None
        if self.transport == "rest":
            port = free_port()
            self.rest_password = "pw-" + os.urandom(8).hex()
            os.environ[REST_USER_ENV] = "fleet@example.com"
            os.environ[REST_PASSWORD_ENV] = self.rest_password
            sim_id = "5e1f0000-0000-4000-8000-00000000abcd"
            rest_options = RestOptions(
                users={"fleet@example.com": self.rest_password},
                port=port,
                simulation_id=sim_id,
                **self.rest,
            )
            exchange = {
                "rest": {
                    "domain": f"http://127.0.0.1:{port}",
                    "websocket": f"ws://127.0.0.1:{port}/external-ws",
                    "simulation_id": sim_id,
                    "username_env": REST_USER_ENV,
                    "password_env": REST_PASSWORD_ENV,
                    **self.rest_link,
                }
            }
        self.config: FleetConfig = parse_config(
            {
                "exchange": exchange,
                "broker": {"url": self.broker_url},
                "aggregators": [
                    {"name": n, "assets": e["assets"], "strategy": self.strategy}
                    for n, e in self.assignment.items()
                ],
                "shard_size": self.shard_size,
                **self.extra_config,
            }
        )
        self.sim = Simulator(
            self.grid,
            self.exchange_url,
            SimConfig(
                slots=self.slots,
                tick_interval=self.tick_interval,
                tree=self.tree,
                paused=True,
                **self.sim_options,
            ),
            rest=rest_options,
        )  # type: ignore[arg-type]
        self.recorder = Recorder(self.exchange_url)
        self.journal = BatchJournal(self.sim)
        self.target: ExchangeTarget = self.config.exchange.target()

    def write_fleet_file(self, path: Path) -> Path:
        """The fleet's configuration as a fleet file (what the CLI reads)."""
        import yaml

        path.write_text(yaml.safe_dump(self.config.model_dump(mode="json", exclude_none=True)))
        return path

    def start_ingress_process(self) -> subprocess.Popen[bytes]:
        assert self.ingress_process is not None
        config = self.write_fleet_file(self.ingress_process / "fleet.yaml")
        self.ingress_proc = start_ingress(config, self.ingress_process / "ingress.log")
        return self.ingress_proc

    def wait_fleet_published(self, timeout: float = 60) -> None:
        """Until an ingress has connected the fleet and published its registry on the broker."""
        client = redis.Redis.from_url(self.broker_url)
        deadline = time.monotonic() + timeout
        while not client.exists(f"{self.config.namespace}:fleet"):
            proc = getattr(self, "ingress_proc", None)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"ingress exited with {proc.returncode}")
            assert time.monotonic() < deadline, "no ingress published the fleet"
            time.sleep(0.05)

    def lease_holder_pid(self, role: str) -> int | None:
        """The pid of the process holding ``role``'s lease (``coordinator``, ``ingress:p0``)."""
        raw = redis.Redis.from_url(self.broker_url).get(f"{self.config.namespace}:lease:{role}")
        return None if raw is None else int(raw.decode().rsplit("-", 2)[1])

    def wait_lease(self, role: str, timeout: float = 60, other_than: int | None = None) -> int:
        """Until a process (other than ``other_than``) holds ``role``'s lease; its pid."""
        deadline = time.monotonic() + timeout
        while (pid := self.lease_holder_pid(role)) is None or pid == other_than:
            assert time.monotonic() < deadline, f"nobody took the {role} lease"
            time.sleep(0.05)
        return pid

    def start(self) -> None:
        self.recorder.start()
        self.recorder.ready.wait(5)
        self.sim.start()
        if self.ingress_process is not None:
            self.ingresses = []
            self.start_ingress_process()
            self.wait_fleet_published()
            self.coordinator_procs = [
                start_ingress(
                    self.ingress_process / "fleet.yaml",
                    self.ingress_process / f"coordinator-{i}.log",
                    role="coordinator",
                )
                for i in range(self.coordinator_processes)
            ]
            self.coordinator = Coordinator(self.config, self.target, self.broker_url)
            self._threads = []
            if not self.coordinator_procs:
                self._threads.append(
                    threading.Thread(target=self.coordinator.run, daemon=True, name="coordinator")
                )
                self._threads[0].start()
            else:
                self.wait_lease("coordinator")
            time.sleep(0.5)
            self.sim.resume()
            return
        self.ingresses = [
            Ingress(
                self.config,
                self.target,
                self.broker_url,
                partition=(i, self.partitions),
                shard_inputs=self.shard_inputs,
            )
            for i in range(self.partitions)
        ]
        self.ingress = self.ingresses[0]
        self.coordinator = Coordinator(self.config, self.target, self.broker_url)
        for node in self.ingresses:
            node.connect()
        self._threads = [
            threading.Thread(target=n.run, daemon=True, name=f"ingress-{i}")
            for i, n in enumerate(self.ingresses)
        ]
        self._threads.append(
            threading.Thread(target=self.coordinator.run, daemon=True, name="coordinator")
        )
        for t in self._threads:
            t.start()
        time.sleep(0.5)
        self.sim.resume()

    def wait(self, timeout: float = 180) -> dict[str, Any]:
        assert self.sim.wait(timeout), "the simulation did not finish"
        time.sleep(0.3)
        return self.sim.report()

    def stop(self) -> None:
        if getattr(self, "ingress_proc", None) is not None:
            kill_group(self.ingress_proc, signal.SIGTERM)
        for proc in getattr(self, "coordinator_procs", []):
            kill_group(proc, signal.SIGTERM)
        for node in getattr(self, "ingresses", []):
            node.stop_event.set()
        self.coordinator.stop_event.set()
        for t in getattr(self, "_threads", []):
            t.join(timeout=5)
        for node in getattr(self, "ingresses", []):
            node.close()
        self.coordinator.close()
        self.sim.stop()
        self.recorder.halt.set()
        self.recorder.join(timeout=2)


@contextlib.contextmanager
def running_fleet(
    exchange_url: str, broker_url: str, *, worker_metrics_port: int = 0, **options: Any
) -> Iterator[tuple[Fleet, subprocess.Popen[bytes]]]:
    """Worker processes and a started fleet; everything stopped again on the way out."""
    workers = start_workers(broker_url, metrics_port=worker_metrics_port)
    fleet = Fleet(exchange_url, broker_url, **options)
    try:
        fleet.start()
        yield fleet, workers
    finally:
        fleet.stop()
        kill_group(workers, signal.SIGTERM)
