"""One aggregator's websocket to a hosted exchange, kept open on the link's event loop.

Each :class:`AggregatorSocket` is one asyncio task (hundreds share one loop and one thread).
It opens ``{ws}/{sim}/aggregator/{uuid}/`` with a fresh ``Authorization: JWT`` header, accepts
binary and text frames alike (the official client dies on text frames), lets ``websockets``
answer pings and ping the server, takes messages up to the target's ``max_message_bytes`` (a big
grid tree is far over the library's 1 MiB default), and reconnects with jittered exponential
backoff (not a fixed 30 s sleep) until it is closed. Each message goes to ``on_message`` with
its monotonic receive time; each reconnect to ``on_back`` with how long the socket was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException

from gridfleet.exchange.link import ExchangeUnreachable
from gridfleet.exchange.rest_auth import TokenKeeper

log = logging.getLogger(__name__)

# websockets logs every handshake header at DEBUG, our token among them: its logger for these
# sockets never goes below INFO, whatever the root level.
_ws_log = logging.getLogger(f"{__name__}.protocol")
_ws_log.setLevel(logging.INFO)

MessageSink = Callable[[str, bytes, float], None]
BackSink = Callable[[str, float], None]

PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
STABLE_AFTER_S = 2.0  # a connection that lived this long resets the backoff


def socket_uri(websocket_base: str, simulation_id: str, aggregator_uuid: str) -> str:
    """``{ws}/{sim}/aggregator/{uuid}/`` (rest.md 4.1)."""
    return f"{websocket_base.rstrip('/')}/{simulation_id}/aggregator/{aggregator_uuid}/"


class AggregatorSocket:
    """The websocket of one aggregator: connects, reads, reconnects; runs until :meth:`close`."""

    def __init__(
        self,
        uri: str,
        aggregator_uuid: str,
        tokens: TokenKeeper,
        on_message: MessageSink,
        on_back: BackSink,
        *,
        open_timeout: float,
        max_size: int,
    ) -> None:
        self.uri = uri
        self.aggregator_uuid = aggregator_uuid
        self._tokens = tokens
        self._on_message = on_message
        self._on_back = on_back
        self._open_timeout = open_timeout
        self._max_size = max_size
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.last_error = ""
        self._closing = False
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self.run(), name=f"ws-{self.aggregator_uuid}"
        )

    async def run(self) -> None:
        attempt = 0
        down_since: float | None = None  # None before the first connection
        while not self._closing:
            opened_at = 0.0
            token = ""
            try:
                token = await self._tokens.token()
                async with connect(
                    self.uri,
                    additional_headers={"Authorization": f"JWT {token}"},
                    open_timeout=self._open_timeout,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    max_size=self._max_size,
                    max_queue=64,
                    logger=_ws_log,
                ) as ws:
                    self._ws = ws
                    opened_at = time.monotonic()
                    self.connected.set()
                    self.last_error = ""
                    if down_since is not None:
                        self.reconnects += 1
                        self._on_back(self.aggregator_uuid, opened_at - down_since)
                    await self._read(ws)
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                self.last_error = f"handshake refused with HTTP {status}"
                if status in (401, 403):
                    # Our token may have expired: the next attempt logs in again.
                    with contextlib.suppress(ExchangeUnreachable):
                        await self._tokens.renew(token)
            except ExchangeUnreachable as exc:
                self.last_error = str(exc)
            except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                self._ws = None
                self.connected.clear()
            if self._closing:
                break
            now = time.monotonic()
            if opened_at:
                down_since = now
                log.warning(
                    "aggregator %s: websocket lost (%s); reconnecting",
                    self.aggregator_uuid,
                    self.last_error or "closed by the exchange",
                )
            elif down_since is None:
                down_since = now
            if opened_at and now - opened_at > STABLE_AFTER_S:
                attempt = 0
            delay = random.uniform(0.5, 1.0) * min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _read(self, ws: ClientConnection) -> None:
        sink = self._on_message
        agg = self.aggregator_uuid
        async for message in ws:
            t = time.monotonic()
            sink(agg, message if isinstance(message, bytes) else message.encode(), t)

    async def close(self) -> None:
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
