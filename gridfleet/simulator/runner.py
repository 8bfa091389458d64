"""The library entry point, :class:`Simulator`: an :class:`~engine.Engine` behind the Redis door
and, when asked for, the REST door beside it.

The engine (:mod:`engine`) runs the market and its clock; the door (:mod:`redis_door`) carries
gsy-e's protocol over Redis. The REST door (:mod:`rest_door`, with ``rest=RestOptions(...)``)
feeds the same :attr:`Simulator.inbound` queue; a :class:`~door.SplitOutlet` sends each
aggregator's events and answers through the door it came through.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

from gridfleet.simulator.batch import BatchHandler
from gridfleet.simulator.deadline import DeadlineTracker
from gridfleet.simulator.door import Inbound, Outlet, SplitOutlet
from gridfleet.simulator.engine import Engine
from gridfleet.simulator.events import EventBuilder
from gridfleet.simulator.grid import Grid
from gridfleet.simulator.redis_door import RedisDoor
from gridfleet.simulator.registry import AggregatorRegistry
from gridfleet.simulator.reporting import Counts, deadline_report
from gridfleet.simulator.selection import preselect
from gridfleet.simulator.simconfig import SimConfig, sim_seconds
from gridfleet.simulator.state import ExchangeState

if TYPE_CHECKING:
    from gridfleet.simulator.rest_door import RestDoor, RestOptions

__all__ = ["SimConfig", "Simulator", "sim_seconds"]


class Simulator:
    """The embedded gsy-e-compatible exchange.

    >>> sim = Simulator(grid, redis_url=None, config=SimConfig(slots=4, tick_interval=0.2))
    >>> sim.start()            # embedded redis-server when redis_url is None
    >>> sim.redis_url          # hand this to clients
    >>> sim.wait(timeout=60)   # True once the finish events went out
    >>> sim.report()           # deadline report (dict); sim.counts for totals
    >>> sim.stop()

    With ``rest=RestOptions(users={...})`` the same engine also serves the REST + websocket
    API on :attr:`rest_url` / :attr:`rest_ws_url` (see :mod:`rest_door`).
    """

    def __init__(
        self,
        grid: Grid,
        redis_url: str | None = None,
        config: SimConfig | None = None,
        rest: RestOptions | None = None,
    ) -> None:
        self.grid = grid
        self.config = config or SimConfig()
        if self.config.tree not in ("full", "pruned"):
            raise ValueError("tree must be 'full' or 'pruned'")
        if self.config.slots < 1:
            raise ValueError("slots must be at least 1")
        self.door = RedisDoor(redis_url, self.config.config_id)
        self.rest_door: RestDoor | None = None
        outlet: Outlet = self.door
        if rest is not None:
            from gridfleet.simulator.rest_door import RestDoor  # aiohttp only when asked for

            self.rest_door = RestDoor(grid, rest, self.config.config_id)
            outlet = SplitOutlet(self.door, self.rest_door, self.rest_door.aggregators)
        self.engine = Engine(grid, self.config, outlet)
        self._stop = threading.Event()
        self._steps: queue.Queue[threading.Event] = queue.Queue()
        self._thread: threading.Thread | None = None
        if self.rest_door is not None:
            self.rest_door.attach(self.engine, self._engine_running)

    # ------------------------------------------------------------------ the engine's parts

    @property
    def state(self) -> ExchangeState:
        return self.engine.state

    @property
    def registry(self) -> AggregatorRegistry:
        return self.engine.registry

    @property
    def handler(self) -> BatchHandler:
        return self.engine.handler

    @property
    def events(self) -> EventBuilder:
        return self.engine.events

    @property
    def deadline(self) -> DeadlineTracker:
        return self.engine.deadline

    @property
    def counts(self) -> Counts:
        return self.engine.counts

    @property
    def devices(self) -> dict[str, tuple[int, int]]:
        return self.engine.devices

    @property
    def finished(self) -> threading.Event:
        """Set once the finish events went out (or the engine crashed: see :attr:`error`)."""
        return self.engine.finished

    @property
    def error(self) -> BaseException | None:
        """Why the engine thread died, if it did."""
        return self.engine.error

    @property
    def paused(self) -> bool:
        return self.engine.paused

    @property
    def inbound(self) -> queue.Queue[Inbound]:
        """The queue every door puts what it reads on (tests put messages here directly)."""
        return self.engine.intake.inbound

    @property
    def batch_chunk(self) -> int:
        """Messages applied between two looks at the dispatch clock."""
        return self.engine.intake.batch_chunk

    @batch_chunk.setter
    def batch_chunk(self, n: int) -> None:
        self.engine.intake.batch_chunk = n

    @property
    def _own_assets(self) -> dict[str, list[int]]:
        # aggregator uuid -> its asset indices; bench/bench_simulator.py builds batches from it
        return self.engine.selection.own_assets

    # ------------------------------------------------------------------ lifecycle

    @property
    def redis_url(self) -> str:
        if self.door.url is None:
            raise RuntimeError("start() the simulator first")
        return self.door.url

    @property
    def rest_url(self) -> str:
        """The REST door's HTTP base URL (rest.md's ``{domain}``)."""
        return self._rest().url

    @property
    def rest_ws_url(self) -> str:
        """The REST door's websocket base URL (rest.md's ``{ws}``)."""
        return self._rest().ws_url

    @property
    def simulation_id(self) -> str:
        """The id in the REST door's paths (rest.md's ``{sim}``)."""
        return self._rest().simulation_id

    def _rest(self) -> RestDoor:
        if self.rest_door is None:
            raise RuntimeError("this simulator has no REST door (pass rest=RestOptions(...))")
        if self.rest_door.port is None:
            raise RuntimeError("start() the simulator first")
        return self.rest_door

    def _engine_running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self.engine.finished.is_set()

    def preselect(self, fleet: dict[str, dict[str, list[str]]]) -> dict[str, str]:
        """Create the aggregators of a fleet assignment (see ``grid.assign_aggregators``) and
        select their assets and markets without the wire. Call before :meth:`start`. Returns
        name -> aggregator uuid (uuid5 of the name, so it is stable across runs)."""
        if self._thread is not None:
            raise RuntimeError("preselect() must be called before start()")
        return preselect(self.engine.registry, fleet)

    def start(self, engine: bool = True) -> Simulator:
        """Connect (or start an embedded Redis), subscribe, and start the engine thread.

        ``engine=False`` only connects: the caller drives rounds with :meth:`step` (benchmarks).
        """
        self.door.connect()
        if self.rest_door is not None:
            try:
                self.rest_door.start()  # OSError when the port is taken
            except BaseException:
                self.door.close()
                raise
        if not engine:
            return self
        # The inbox thread stamps each batch's arrival while the engine applies earlier ones:
        # run the exchange with gridfleet.runtime.interpreter.favour_reader_threads() (the
        # `gridfleet` command and the benchmarks do) or it measures its own backlog.
        self.door.open_inbox(self.inbound)
        self._thread = threading.Thread(
            target=self.engine.run, args=(self._stop, self._steps), name="sim-engine", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the engine (no finish events), close connections, stop an embedded Redis."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.rest_door is not None:
            self.rest_door.close()
        self.door.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the simulation finished; False on timeout."""
        return self.finished.wait(timeout)

    def advance(self, timeout: float = 30.0) -> None:
        """Manual mode: dispatch the next tick round now and wait until it is published."""
        done = threading.Event()
        self._steps.put(done)
        if not done.wait(timeout):
            raise TimeoutError("the engine did not dispatch the tick in time")

    def step(self) -> None:
        """Dispatch one round in the calling thread (only after ``start(engine=False)``)."""
        if self._thread is not None:
            raise RuntimeError("step() is for start(engine=False); use advance() with the engine")
        self.engine.dispatch()

    def resume(self) -> None:
        """Start dispatching (a run created with ``paused=True``, or paused by ``/pause``)."""
        self.engine.paused = False

    def report(self) -> dict[str, Any]:
        """The deadline report (see :mod:`deadline`), with the run's counts in ``meta``."""
        settlement = self.engine.state.settlement
        if settlement is not None:
            dev, left = settlement.totals()
            self.engine.counts.settlement_deviation_kwh = round(dev, 6)
            self.engine.counts.settlement_unsettled_kwh = round(left, 6)
        return deadline_report(
            self.grid,
            self.config,
            self.engine.counts,
            self.engine.deadline,
            names=dict(self.engine.registry.aggregators),
        )
