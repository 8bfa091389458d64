"""The exchange's REST door: the hosted gsy-e aggregator API (REST + websockets, JWT auth).

The contract is ``tests/fixtures/protocol/rest.md`` (§3 endpoints, §4 websockets, §8 conformance).
This door sits beside :mod:`redis_door` on the seam of :mod:`door`: the same engine, grid and
market serve both, so an aggregator created here trades with one created over Redis.

- An aiohttp server runs in a thread of its own with its own event loop, on ``127.0.0.1``.
- What needs the exchange's state (creating aggregators, selections, the registry's owners,
  per-asset and per-market commands) runs on the engine thread as a :data:`~door.CALL`
  message, between rounds, so the state keeps its single owner; the HTTP handler awaits it.
- Batches go onto the engine's queue as ordinary :data:`~door.BATCH` messages, stamped with
  their arrival: the same :class:`~batch.BatchHandler` applies them and the same deadline
  tracker counts them as those from Redis.
- The engine sends through a :class:`~door.SplitOutlet`: events and batch answers of the
  aggregators created here come to :class:`RestOutbox`, which hands each pass to the server
  loop in one call; the loop writes every message as one binary frame to that aggregator's
  sockets. Events are dropped while an aggregator has no socket (at most once, like the hosted
  side); ``selected_by_device`` and command answers are kept and sent on connect (§8.1.7).
  Per-asset events and everything else stay on Redis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import uuid as uuid_mod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import WSMsgType, web

from gridfleet.simulator.batch import ASSET, MARKET
from gridfleet.simulator.door import BATCH, CALL, Inbound, Payload, payload_bytes
from gridfleet.simulator.grid import Grid
from gridfleet.simulator.rest_auth import DEFAULT_TOKEN_LIFETIME_S, TokenError, TokenIssuer
from gridfleet.simulator.rest_faults import BatchFault, FaultPlan, RestFaults
from gridfleet.simulator.rest_registry import read_configuration_uuid, registry, scenario

if TYPE_CHECKING:
    from gridfleet.simulator.engine import Engine

log = logging.getLogger(__name__)

T = TypeVar("T")
USER = web.RequestKey("user", str)  # who the request's token names
ARRIVED = web.RequestKey("arrived", float)  # time.time() when the request reached the door

TOKEN_PATH = "/api-token-auth/"
AGG_API = "/external-connection/aggregator-api/{sim}/"
DEVICE_API = "/external-connection/api/{sim}/"
WS_BASE = "/external-ws"
# how gsy-e's envelopes end (events.py); the hosted side puts the simulation id there (§4.3)
_NULL_SIM_TAIL = b'"simulation_id":null,"num_ticks":10.0}'
# per-asset endpoint -> (body key, the command the engine applies, the answer's command name)
_ENERGY_ENDPOINTS = {
    "set-energy-forecast": ("energy_forecast", "set_energy_forecast", "set_energy_forecast"),
    "set-energy-measurement": (
        "energy_measurement",
        "set_energy_measurement",
        "set_energy_measurement",
    ),
    # a Canary Network's live data: recorded as the measured energy of the slots it names
    "set-live-generation": ("live_data", "set_energy_measurement", "set-live-generation"),
}


@dataclass
class RestOptions:
    """How the REST door serves: where, whom, and how long a token lives."""

    users: dict[str, str]
    port: int = 0  # 0: a free port (see :attr:`RestDoor.port`)
    host: str = "127.0.0.1"
    token_lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S
    simulation_id: str = ""  # "" -> the engine's config id, or a fresh uuid when that is ""
    # with a paused engine: start the slots this long after the last selection, once every
    # selecting aggregator has its socket open (rest.md §8.1.8); None: wait for /resume
    autostart_after_s: float | None = None
    queue_limit: int = 1000  # messages kept per socket for a slow or not yet connected client
    ping_interval_s: float = 20.0
    call_timeout_s: float = 10.0  # how long a request waits for the engine thread
    faults: RestFaults | None = None  # batch POSTs failing on purpose (see :mod:`rest_faults`)
    remembered_transactions: int = 100_000  # batch transaction ids kept to refuse a replay


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message, "status": status}, status)


class RestOutbox:
    """What the engine sends the REST aggregators in one pass; :meth:`send` hands it over."""

    __slots__ = ("_door", "_items")

    def __init__(self, door: RestDoor) -> None:
        self._door = door
        self._items: list[tuple[str, bytes, bool]] = []  # (aggregator, payload, is an event)

    def aggregator_event(self, aggregator: str, payload: Payload) -> None:
        self._items.append((aggregator, payload_bytes(payload), True))

    def batch_response(self, aggregator: str, payload: Payload) -> None:
        self._items.append((aggregator, payload_bytes(payload), False))

    def send(self) -> None:
        if self._items:
            self._door.deliver(self._items)
            self._items = []


class _Peer:
    """One open websocket and the frames waiting to be written to it."""

    def __init__(self, ws: web.WebSocketResponse, limit: int) -> None:
        self.ws = ws
        self.limit = limit
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.dropped = 0

    def put(self, payload: bytes) -> None:
        if self.queue.qsize() >= self.limit:  # a client that does not read loses the oldest
            self.queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("a REST client does not keep up; dropping its oldest messages")
        self.queue.put_nowait(payload)

    async def write(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.CancelledError):
            while True:
                await self.ws.send_bytes(await self.queue.get())


class RestDoor:
    """Aggregators reach the engine over REST + websockets (see the module docstring)."""

    def __init__(self, grid: Grid, options: RestOptions, config_id: str = "") -> None:
        self.grid = grid
        self.options = options
        self.tokens = TokenIssuer(options.users, options.token_lifetime_s)
        self.simulation_id = options.simulation_id or config_id or str(uuid_mod.uuid4())
        self._sim_tail = (
            b'"simulation_id":' + orjson.dumps(self.simulation_id) + b',"num_ticks":10.0}'
        )
        # aggregator uuids created through this door: changed on the engine thread only (the
        # SplitOutlet reads it there); the server thread only tests membership
        self.aggregators: set[str] = set()
        self.port: int | None = None
        self._engine: Engine | None = None
        self._engine_running: Callable[[], bool] = lambda: False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        # the server thread's own state
        self._mine: dict[str, tuple[str, str]] = {}  # aggregator uuid -> (user, name)
        self._agg_peers: dict[str, set[_Peer]] = {}
        self._device_peers: dict[str, set[_Peer]] = {}
        self._pending: dict[str, collections.deque[bytes]] = {}  # key -> kept for the socket
        self._selectors: set[str] = set()  # aggregators that selected something
        self._last_select: float | None = None
        self._scenario_json: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # batches applied, by (aggregator, transaction id): a retried POST whose first answer
        # was lost is answered again but not applied twice
        self._applied: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self.duplicate_batches = 0
        self.fault_plan = FaultPlan(options.faults)
        self.dropped_sockets = 0

    # ------------------------------------------------------------------ wiring

    def attach(self, engine: Engine, running: Callable[[], bool]) -> None:
        """The engine whose queue :data:`CALL`s go to; ``running``: whether its thread drains
        that queue (when not, a call runs inline: nothing else touches the state then)."""
        self._engine = engine
        self._engine_running = running

    def outbox(self) -> RestOutbox:
        return RestOutbox(self)

    @property
    def url(self) -> str:
        """The HTTP base URL (rest.md's ``{domain}``)."""
        return f"http://{self.options.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The websocket base URL (rest.md's ``{ws}``)."""
        return f"ws://{self.options.host}:{self.port}{WS_BASE}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server thread and wait until it listens; the bind's OSError otherwise."""
        self._thread = threading.Thread(target=self._serve, name="sim-rest-door", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the REST door did not start listening in time")
        if self._start_error is not None:
            raise self._start_error

    def close(self) -> None:
        """Close every socket and stop the server thread."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def deliver(self, items: list[tuple[str, bytes, bool]]) -> None:
        """From the engine thread: one pass's messages, written by the server loop."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the run is over
            loop.call_soon_threadsafe(self._fan_out, items)

    def set_faults(self, faults: RestFaults) -> None:
        """Switch the injected batch faults (from any thread; the next POST sees them)."""
        self.fault_plan.set(faults)

    def drop_sockets(self, timeout: float = 10.0) -> int:
        """Close every aggregator websocket now, as a hosted exchange restarting its socket
        servers would (code 1012); returns how many were open. Clients must reconnect."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return 0

        async def close_all() -> int:
            peers = [p for group in self._agg_peers.values() for p in group]
            for peer in peers:
                with contextlib.suppress(Exception):
                    await peer.ws.close(code=1012, message=b"service restart")
            self.dropped_sockets += len(peers)
            return len(peers)

        return asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout)

    # ------------------------------------------------------------------ the server thread

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _open(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 << 20)
        a, d = AGG_API, DEVICE_API
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_post("/graphql/", self._graphql)
        app.router.add_get(a + "list-aggregators/", self._list)
        app.router.add_post(a + "create-aggregator/", self._create)
        app.router.add_post(a + "delete-aggregator/", self._delete)
        app.router.add_post(a + "select-aggregator/", self._select)
        app.router.add_post(a + "unselect-aggregator/", self._unselect)
        app.router.add_post(a + "batch-commands/", self._batch)
        app.router.add_get("/external-connection/configurations/{sim}/registry", self._registry)
        app.router.add_post(d + "set-scm-global-data/", self._scm)
        app.router.add_get(d + "{device}/dso-market-stats", self._dso_stats)
        app.router.add_post(d + "{device}/{action}/", self._device_command)
        app.router.add_get(WS_BASE + "/{sim}/aggregator/{agg}/", self._ws_aggregator)
        app.router.add_get(WS_BASE + "/{sim}/{device}/", self._ws_device)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        if self.options.autostart_after_s is not None:
            self._spawn(self._autostart(self.options.autostart_after_s))

    async def _shutdown(self) -> None:
        for peers in [*self._agg_peers.values(), *self._device_peers.values()]:
            for peer in list(peers):
                with contextlib.suppress(Exception):
                    await peer.ws.close(code=1001, message=b"exchange stopped")
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every path but the token's needs ``Authorization: JWT <token>`` (401 otherwise);
        every error is a JSON object, never a redirect or an empty body."""
        # A batch's arrival for the deadline report: the door's own work on a burst of POSTs
        # (auth, parsing, the ones ahead of it) must not count against the client.
        request[ARRIVED] = time.time()
        try:
            if request.path != TOKEN_PATH:
                try:
                    request[USER] = self.tokens.verify(request.headers.get("Authorization"))
                except TokenError as exc:
                    self.tokens.refused += 1
                    log.info("REST %s %s refused: %s", request.method, request.path, exc)
                    return _error(401, str(exc))
            return await handler(request)
        except _HTTPError as exc:
            return _error(exc.status, str(exc))
        except web.HTTPException as exc:  # no route (404), wrong method (405)
            return _error(exc.status, f"{request.method} {request.path}: {exc.reason}")

    def _check_sim(self, request: web.Request) -> None:
        sim = request.match_info.get("sim")
        if sim != self.simulation_id:
            raise _HTTPError(404, f"simulation {sim!r} not found")

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        """The request's JSON object ({} for no body: GETs may carry one or not)."""
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _HTTPError(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _HTTPError(400, "the body must be a JSON object")
        return data

    @staticmethod
    def _field(body: dict[str, Any], key: str) -> str:
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise _HTTPError(400, f"{key}: a non-empty string is required")
        return value

    def _own(self, request: web.Request, agg: str) -> None:
        """404 unless ``agg`` was created here by the requesting user."""
        mine = self._mine.get(agg)
        if mine is None or mine[0] != request[USER]:
            raise _HTTPError(404, f"aggregator {agg} not found")

    def _device(self, request: web.Request, uuid: str, kind: int) -> int:
        """The index of asset/market ``uuid`` (404 if unknown, 400 if of the other kind)."""
        assert self._engine is not None
        found = self._engine.devices.get(uuid)  # built once, read-only
        if found is None:
            raise _HTTPError(404, f"device {uuid} not found in this simulation")
        if found[0] != kind:
            want = "an asset" if kind == ASSET else "a market"
            raise _HTTPError(400, f"{uuid} is not {want}")
        return found[1]

    async def _on_engine(self, fn: Callable[[Engine], T]) -> T:
        """``fn(engine)`` on the engine thread, between rounds; its result or exception."""
        assert self._engine is not None, "attach() first"
        if not self._engine_running():
            return fn(self._engine)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        def run(engine: Engine) -> None:
            try:
                result, exc = fn(engine), None
            except Exception as e:
                result, exc = None, e
            with contextlib.suppress(RuntimeError):  # the server loop is gone
                loop.call_soon_threadsafe(settle, result, exc)

        self._engine.intake.inbound.put(Inbound(CALL, "rest", b"", time.time(), call=run))
        try:
            return await asyncio.wait_for(fut, self.options.call_timeout_s)
        except TimeoutError:
            raise _HTTPError(503, "the exchange did not answer in time") from None

    # ------------------------------------------------------------------ delivery

    def _fan_out(self, items: list[tuple[str, bytes, bool]]) -> None:
        tail, sim_tail = _NULL_SIM_TAIL, self._sim_tail
        for agg, payload, is_event in items:
            if is_event:
                if payload.endswith(tail):
                    payload = payload[: -len(tail)] + sim_tail
                peers = self._agg_peers.get(agg)
                if peers:
                    for peer in peers:
                        peer.put(payload)
                # else: at most once, like the hosted side; events for no socket are lost
            else:
                self._send(self._agg_peers, agg, payload)

    def _send(self, peers: dict[str, set[_Peer]], key: str, payload: bytes) -> None:
        """To ``key``'s sockets, or kept until one connects (§8.1.7)."""
        open_peers = peers.get(key)
        if open_peers:
            for peer in open_peers:
                peer.put(payload)
            return
        kept = self._pending.get(key)
        if kept is None:
            kept = self._pending[key] = collections.deque(maxlen=self.options.queue_limit)
        kept.append(payload)

    async def _socket(
        self, request: web.Request, key: str, peers: dict[str, set[_Peer]]
    ) -> web.StreamResponse:
        # No permessage-deflate, though clients offer it (websockets does by default): on
        # loopback, deflating every tree costs the exchange's core and saves nothing.
        ws = web.WebSocketResponse(
            heartbeat=self.options.ping_interval_s, max_msg_size=1 << 20, compress=False
        )
        await ws.prepare(request)
        peer = _Peer(ws, self.options.queue_limit)
        peers.setdefault(key, set()).add(peer)
        for payload in self._pending.pop(key, ()):
            peer.put(payload)
        writer = asyncio.ensure_future(peer.write())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                # clients send nothing on these sockets (commands go over REST): ignored
        finally:
            group = peers.get(key)
            if group is not None:
                group.discard(peer)
                if not group:
                    del peers[key]
            writer.cancel()
        return ws

    async def _ws_aggregator(self, request: web.Request) -> web.StreamResponse:
        self._check_sim(request)
        agg = request.match_info["agg"]
        self._own(request, agg)
        return await self._socket(request, agg, self._agg_peers)

    async def _ws_device(self, request: web.Request) -> web.StreamResponse:
        self._check_sim(request)
        uuid = request.match_info["device"]
        assert self._engine is not None
        if uuid not in self._engine.devices:
            raise _HTTPError(404, f"device {uuid} not found in this simulation")
        return await self._socket(request, uuid, self._device_peers)

    async def _autostart(self, after: float) -> None:
        """Resume a paused engine once the selections are done (rest.md §8.1.8)."""
        while True:
            await asyncio.sleep(0.1)
            if self._last_select is None or time.monotonic() - self._last_select < after:
                continue
            if not all(self._agg_peers.get(a) for a in self._selectors):
                continue

            def resume(engine: Engine) -> bool:
                was = engine.paused
                engine.paused = False
                return was

            if await self._on_engine(resume):
                log.info("REST selections done and sockets open: the slots start")
            return

    # ------------------------------------------------------------------ auth, lookups

    async def _token(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        token = self.tokens.login(body.get("username"), body.get("password"))
        if token is None:
            log.info("REST login refused for %r", body.get("username"))
            return _error(401, "no active account found with the given credentials")
        return _json({"access": token})

    async def _graphql(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        query = body.get("query")
        if not isinstance(query, str):
            return _json(
                {"data": None, "errors": [{"message": "query: a string is required"}]}, 400
            )
        wanted = read_configuration_uuid(query)
        if wanted is not None:
            if wanted != self.simulation_id:
                return _json(
                    {
                        "data": {"readConfiguration": None},
                        "errors": [{"message": f"configuration {wanted} not found"}],
                    }
                )
            if self._scenario_json is None:  # the grid never changes: serialized once
                self._scenario_json = orjson.dumps(scenario(self.grid)).decode()
            latest = {"serialized": self._scenario_json}
            return _json({"data": {"readConfiguration": {"scenarioData": {"latest": latest}}}})
        if "aggregatorsList" in query:
            mine = [a for a, (user, _) in self._mine.items() if user == request[USER]]
            selected = await self._on_engine(
                lambda e: {a: sorted(e.registry.selected.get(a, ())) for a in mine}
            )
            rows = [
                {
                    "configUuid": self.simulation_id,
                    "name": self._mine[a][1],
                    "devicesList": [{"deviceUuid": d} for d in selected[a]],
                }
                for a in mine
                if a in self._mine
            ]
            return _json({"data": {"aggregatorsList": rows}})
        return _json(
            {
                "data": None,
                "errors": [
                    {
                        "message": "the embedded exchange answers readConfiguration and aggregatorsList only"
                    }
                ],
            },
            400,
        )

    async def _registry(self, request: web.Request) -> web.Response:
        self._check_sim(request)
        await self._body(request)
        owners, names = await self._on_engine(
            lambda e: (dict(e.registry.owner), dict(e.registry.aggregators))
        )
        return _json(registry(self.grid, owners, names))

    # ------------------------------------------------------------------ aggregators

    async def _list(self, request: web.Request) -> web.Response:
        self._check_sim(request)
        await self._body(request)
        user = request[USER]
        return _json([{"name": n, "uuid": a} for a, (u, n) in self._mine.items() if u == user])

    async def _create(self, request: web.Request) -> web.Response:
        self._check_sim(request)
        name = self._field(await self._body(request), "name").strip()
        agg = str(uuid_mod.uuid4())  # the Redis quirk (uuid = CREATE's transaction id) kept inside

        def create(engine: Engine) -> bool:
            answers = engine.registry.command(
                {"type": "CREATE", "name": name, "transaction_id": agg}
            )
            if answers and answers[0].get("status") == "ready":
                self.aggregators.add(agg)
                return True
            return False

        if not await self._on_engine(create):
            raise _HTTPError(409, f"aggregator {name!r} could not be created")
        self._mine[agg] = (request[USER], name)
        log.info("REST aggregator %r created (%s)", name, agg)
        return _json({"uuid": agg, "name": name})

    async def _delete(self, request: web.Request) -> web.Response:
        self._check_sim(request)
        agg = self._field(await self._body(request), "aggregator_uuid")
        self._own(request, agg)

        def delete(engine: Engine) -> None:
            engine.registry.command(
                {"type": "DELETE", "aggregator_uuid": agg, "transaction_id": ""}
            )
            self.aggregators.discard(agg)

        await self._on_engine(delete)
        del self._mine[agg]
        self._selectors.discard(agg)
        return _json({"status": "deleted", "aggregator_uuid": agg})

    async def _selection(self, request: web.Request, select: bool) -> web.Response:
        self._check_sim(request)
        body = await self._body(request)
        agg, dev = self._field(body, "aggregator_uuid"), self._field(body, "device_uuid")
        self._own(request, agg)
        assert self._engine is not None
        if dev not in self._engine.devices:
            raise _HTTPError(404, f"device {dev} not found in this simulation")
        tid = body.get("transaction_id")

        def change(engine: Engine) -> str | None:
            """None when done, else why not."""
            reg = engine.registry
            current = reg.owner.get(dev)
            if select and current == agg:
                return None  # again (a reused aggregator re-selects): fine, told again
            if select and current is not None:
                return f"device {dev} is selected by another aggregator"
            if not select and current != agg:
                return f"device {dev} is not selected by aggregator {agg}"
            ctype = "SELECT" if select else "UNSELECT"
            reg.command(
                {"type": ctype, "aggregator_uuid": agg, "device_uuid": dev, "transaction_id": tid}
            )
            return None

        refused = await self._on_engine(change)
        if refused is not None:
            raise _HTTPError(409, refused)
        event = "selected_by_device" if select else "unselected_by_device"
        self._send(self._agg_peers, agg, orjson.dumps({"event": event, "device_uuid": dev}))
        if select:
            self._selectors.add(agg)
            self._last_select = time.monotonic()
        status = "SELECTED" if select else "UNSELECTED"
        return _json({"aggregator_uuid": agg, "device_uuid": dev, "status": status})

    async def _select(self, request: web.Request) -> web.Response:
        return await self._selection(request, select=True)

    async def _unselect(self, request: web.Request) -> web.Response:
        return await self._selection(request, select=False)

    async def _batch(self, request: web.Request) -> web.Response:
        """Onto the engine's queue as a BATCH, as the Redis door puts a BATCHED message."""
        self._check_sim(request)
        raw = await request.read()
        at = request[ARRIVED]
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _HTTPError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, "the body must be a JSON object")
        agg = self._field(body, "aggregator_uuid")
        self._own(request, agg)
        if not isinstance(body.get("batch_commands"), dict):
            raise _HTTPError(
                400, "batch_commands: an object of device uuid -> commands is required"
            )
        tid = body.get("transaction_id")
        if tid is None:
            tid = body["transaction_id"] = str(uuid_mod.uuid4())
            raw = orjson.dumps(body)
        elif not isinstance(tid, str):
            raise _HTTPError(400, "transaction_id: must be a string")
        fault, hold_s = self.fault_plan.next_batch()
        if fault is BatchFault.HANG:
            # A server that never answers: the client's timeout ends it; nothing is applied.
            await asyncio.sleep(hold_s)
            return _error(504, "injected fault: no answer in time; the batch was not applied")
        if fault is BatchFault.ERROR_BEFORE:
            return _error(500, "injected fault: the batch was not applied")
        accepted = {"status": "accepted", "aggregator_uuid": agg, "transaction_id": tid}
        duplicate = (agg, tid) in self._applied
        if duplicate:
            # A client retrying after a lost answer: answered again, applied once.
            self.duplicate_batches += 1
        else:
            self._applied[(agg, tid)] = None
            if len(self._applied) > self.options.remembered_transactions:
                self._applied.popitem(last=False)
            assert self._engine is not None
            self._engine.intake.inbound.put(Inbound(BATCH, f"rest {agg}", raw, at))
        if fault is BatchFault.ERROR_AFTER:
            self.fault_plan.answer_lost(agg, tid)
            return _error(500, "injected fault: the batch was applied but this answer is lost")
        if duplicate:
            self.fault_plan.answered(agg, tid)
            return _json({**accepted, "duplicate": True})
        return _json(accepted)

    # ------------------------------------------------------------------ assets and markets

    async def _device_command(self, request: web.Request) -> web.Response:
        self._check_sim(request)
        uuid, action = request.match_info["device"], request.match_info["action"]
        body = await self._body(request)
        tid = body.get("transaction_id")
        if action in _ENERGY_ENDPOINTS:
            key, ctype, answer_name = _ENERGY_ENDPOINTS[action]
            index = self._device(request, uuid, ASSET)
            extra = sorted(set(body) - {key, "transaction_id"})
            if extra:  # gsy-e refuses any other key
                raise _HTTPError(400, f"unexpected keys {extra}: send {{{key!r}: {{slot: kWh}}}}")
            if not isinstance(body.get(key), dict):
                raise _HTTPError(400, f"{key}: an object of 'YYYY-MM-DDTHH:mm' -> kWh is required")
            field = "energy_forecast" if ctype == "set_energy_forecast" else "energy_measurement"
            cmd = {"type": ctype, field: body[key]}

            def apply(engine: Engine) -> dict[str, Any]:
                return dict(engine.handler.command(ASSET, index, uuid, cmd, tid))

            answer = await self._on_engine(apply)
            answer["command"] = answer_name
            answer["transaction_id"] = tid
        elif action in ("register", "unregister"):
            assert self._engine is not None
            if uuid not in self._engine.devices:
                raise _HTTPError(404, f"device {uuid} not found in this simulation")
            register = action == "register"

            def mark(engine: Engine) -> None:
                if register:
                    engine.registry.registered.add(uuid)
                else:
                    engine.registry.registered.discard(uuid)

            await self._on_engine(mark)
            answer = {"command": action, "status": "ready", "transaction_id": tid}
            answer.update(
                {"registered": True, "device_uuid": uuid} if register else {"unregistered": True}
            )
        elif action == "grid-fee":
            m = self._device(request, uuid, MARKET)
            fee = body.get("fee_const")
            if isinstance(fee, bool) or not isinstance(fee, int | float):
                raise _HTTPError(400, "fee_const: a number (ct/kWh) is required")
            answer = await self._on_engine(
                lambda e: dict(e.handler.grid_fees(m, uuid, {"data": {"fee_const": fee}}, tid))
            )
            answer["transaction_id"] = tid
        elif action == "set-scm-timeseries-and-member-data":
            self._device(request, uuid, ASSET)
            return self._no_scm(tid)
        else:
            raise _HTTPError(404, f"unknown endpoint {action}/")
        self._send(self._device_peers, uuid, orjson.dumps(answer))
        return _json({"status": "accepted", "transaction_id": tid, "device_uuid": uuid})

    async def _dso_stats(self, request: web.Request) -> web.Response:
        self._check_sim(request)
        uuid = request.match_info["device"]
        m = self._device(request, uuid, MARKET)
        tid = (await self._body(request)).get("transaction_id")
        answer = await self._on_engine(lambda e: dict(e.handler.dso_market_stats(m, uuid)))
        answer["transaction_id"] = tid
        self._send(self._device_peers, uuid, orjson.dumps(answer))
        return _json({"status": "accepted", "transaction_id": tid, "device_uuid": uuid})

    async def _scm(self, request: web.Request) -> web.Response:
        self._check_sim(request)
        return self._no_scm((await self._body(request)).get("transaction_id"))

    @staticmethod
    def _no_scm(tid: Any) -> web.Response:
        # accepted, as the hosted side does, but there is nothing to apply it to
        return _json(
            {
                "status": "ignored",
                "transaction_id": tid,
                "reason": "the embedded exchange has no SCM (coefficients) mode",
            }
        )
