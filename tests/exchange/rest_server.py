"""A small hosted-exchange stand-in for the REST link's tests: a real aiohttp server on loopback.

It follows rest.md (the paths and trailing slashes of 3.1, ``JWT`` auth with 401 for a bad
token, ``selected_by_device`` on the aggregator's socket after a select, batch answers on the
socket, binary frames) and lets a test inject faults: statuses to answer before the real one,
paths that never answer, confirmations that never come, sockets dropped. Batches are applied
once per transaction id, as we assume the hosted side does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from aiohttp import WSMsgType, web

SECRET = "test-signing-key-of-the-rest-stand-in-server"


@dataclass
class Node:
    name: str
    type: str
    registered: bool = True
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))


class RestExchangeServer:
    """Start with :meth:`start`, stop with :meth:`stop`; all state is inspectable from tests."""

    def __init__(
        self,
        nodes: list[Node],
        *,
        users: dict[str, str] | None = None,
        simulation_id: str = "sim-1",
        token_lifetime_s: float = 3600.0,
    ) -> None:
        self.nodes = nodes
        self.users = users or {"user@example.com": "s3cret-pw"}
        self.sim = simulation_id
        self.token_lifetime_s = token_lifetime_s
        self.aggregators: dict[str, str] = {}  # name -> uuid
        self.selected: dict[str, set[str]] = defaultdict(set)  # aggregator -> devices
        self.sockets: dict[str, list[web.WebSocketResponse]] = defaultdict(list)
        self.applied: dict[str, dict[str, Any]] = {}  # transaction id -> batch body
        self.requests: Counter[str] = Counter()  # path -> requests seen
        self.logins = 0
        self.inject: dict[str, list[int]] = defaultdict(list)  # path suffix -> statuses first
        self.inject_after_apply: dict[str, list[int]] = defaultdict(list)  # applied, then error
        self.hang: set[str] = set()  # path suffixes that never answer
        self.no_confirm: set[str] = set()  # devices whose selected_by_device never comes
        self.text_frames = False
        self.revoked_before = 0.0  # tokens issued before this (time.time()) get 401
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def domain(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def websocket(self) -> str:
        return f"ws://127.0.0.1:{self.port}/external-ws"

    def start(self) -> RestExchangeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        agg = f"/external-connection/aggregator-api/{self.sim}/"
        app.router.add_post("/api-token-auth/", self._token)
        app.router.add_get(agg + "list-aggregators/", self._list)
        app.router.add_post(agg + "create-aggregator/", self._create)
        app.router.add_post(agg + "select-aggregator/", self._select)
        app.router.add_post(agg + "batch-commands/", self._batch)
        app.router.add_get(
            f"/external-connection/configurations/{self.sim}/registry", self._registry
        )
        app.router.add_post("/graphql/", self._graphql)
        app.router.add_get(f"/external-ws/{self.sim}/aggregator/{{agg}}/", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        async def shut() -> None:
            self._stopping.set()
            for socks in self.sockets.values():
                for ws in list(socks):
                    with contextlib.suppress(Exception):
                        await ws.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- test helpers --------------------------------------------------------------------------

    def send(
        self, aggregator: str, message: dict[str, Any] | bytes, *, text: bool | None = None
    ) -> None:
        """Send one frame to every socket of ``aggregator`` (binary unless ``text``)."""
        raw = message if isinstance(message, bytes) else orjson.dumps(message)
        self.run(self._send(aggregator, raw, self.text_frames if text is None else text))

    async def _send(self, aggregator: str, raw: bytes, text: bool) -> None:
        for ws in list(self.sockets.get(aggregator, [])):
            if text:
                await ws.send_str(raw.decode())
            else:
                await ws.send_bytes(raw)

    def drop_sockets(self) -> None:
        async def drop() -> None:
            for socks in self.sockets.values():
                for ws in list(socks):
                    await ws.close(code=1011, message=b"server restart")

        self.run(drop())

    def open_sockets(self, aggregator: str) -> int:
        return len(self.sockets.get(aggregator, []))

    # -- auth ----------------------------------------------------------------------------------

    def _issue(self) -> str:
        now = time.time()
        claims = {
            "sub": "user",
            "iat": now,
            "exp": now + self.token_lifetime_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, SECRET, algorithm="HS256")

    def _valid(self, header: str | None) -> bool:
        if not header or not header.startswith("JWT "):
            return False
        try:
            claims = jwt.decode(header[4:], SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            return False
        return float(claims["iat"]) >= self.revoked_before

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        self.requests[path] += 1
        if any(path.endswith(h) for h in self.hang):
            await self._stopping.wait()  # never answers (until the server stops)
            raise web.HTTPServiceUnavailable()
        for suffix, statuses in self.inject.items():
            if path.endswith(suffix) and statuses:
                return web.json_response({"error": "injected"}, status=statuses.pop(0))
        if path != "/api-token-auth/" and not self._valid(request.headers.get("Authorization")):
            return web.json_response({"detail": "bad token"}, status=401)
        return await handler(request)

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.users.get(body.get("username")) != body.get("password"):
            return web.json_response({"detail": "No active account"}, status=401)
        self.logins += 1
        return web.json_response({"access": self._issue(), "refresh": "unused"})

    # -- endpoints -----------------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.Response:
        await request.read()  # the client sends a JSON body with its GET
        return web.json_response([{"name": n, "uuid": u} for n, u in self.aggregators.items()])

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        agg = self.aggregators.setdefault(body["name"], str(uuid.uuid4()))
        return web.json_response({"uuid": agg, "name": body["name"]})

    async def _registry(self, request: web.Request) -> web.Response:
        holder = {
            device: name
            for name, agg in self.aggregators.items()
            for device in self.selected.get(agg, ())
        }
        leaves = [
            {
                "name": n.name,
                "type": n.type,
                "uuid": n.uuid,
                "registered": n.registered,
                "aggregator_name": holder.get(n.uuid),
                "attributes": None,
            }
            for n in self.nodes
        ]
        tree = {
            "name": "Grid",
            "type": "Area",
            "uuid": "grid",
            "registered": False,
            "children": leaves,
        }
        return web.json_response(tree)

    async def _graphql(self, request: web.Request) -> web.Response:
        scenario = {
            "name": "Grid",
            "uuid": "grid",
            "children": [{"name": n.name, "uuid": n.uuid} for n in self.nodes],
        }
        return web.json_response(
            {
                "data": {
                    "readConfiguration": {
                        "scenarioData": {"latest": {"serialized": orjson.dumps(scenario).decode()}}
                    }
                }
            }
        )

    async def _select(self, request: web.Request) -> web.Response:
        body = await request.json()
        agg, device = body["aggregator_uuid"], body["device_uuid"]
        self.selected[agg].add(device)
        if device not in self.no_confirm:
            await self._send(
                agg,
                orjson.dumps({"event": "selected_by_device", "device_uuid": device}),
                self.text_frames,
            )
        return web.json_response({"aggregator_uuid": agg})

    async def _batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        tid = body["transaction_id"]
        first = tid not in self.applied
        self.applied.setdefault(tid, body)
        statuses = self.inject_after_apply.get("batch-commands/")
        if statuses:
            return web.json_response({"error": "lost answer"}, status=statuses.pop(0))
        if first:
            answer = {
                "command": "batch_commands",
                "transaction_id": tid,
                "aggregator_uuid": body["aggregator_uuid"],
                "responses": {
                    u: [{"status": "ready", "transaction_id": tid}] for u in body["batch_commands"]
                },
            }
            await self._send(body["aggregator_uuid"], orjson.dumps(answer), self.text_frames)
        return web.json_response({"status": "ok", "transaction_id": tid})

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if not self._valid(request.headers.get("Authorization")):
            return web.json_response({"detail": "bad token"}, status=401)
        agg = request.match_info["agg"]
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self.sockets[agg].append(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets[agg].remove(ws)
        return ws
