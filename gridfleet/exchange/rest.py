"""The aggregator side of a hosted exchange over REST + websocket: an :class:`ExchangeLink`.

Threads and loop: one asyncio loop on one background thread carries everything, the pooled
keep-alive ``httpx`` client and one websocket task per aggregator (hundreds per process). The
:class:`~gridfleet.exchange.link.ExchangeLink` methods are synchronous (ingress and coordinator
are threads) and hand their work to the loop with ``asyncio.run_coroutine_threadsafe``. Socket
readers only queue ``(aggregator, raw, time)``; one dispatcher thread reads the queue, tells
events from answers and calls the owner's handlers, so a slow handler never stalls the loop (and
with it every socket's pings).

Bring-up (rest.md 3.3-3.5): list aggregators and reuse one by name, else create it; open its
socket *before* selecting (the official client's race, rest.md 7.8); read the registry for names,
kinds and uuids (GraphQL ``readConfiguration`` for names it gives no uuid); select every asset
and market with bounded concurrency; wait for each ``selected_by_device`` and name those that
never came.

Batches: one ``POST batch-commands/`` per aggregator, concurrently, fire-and-forget for the
caller; retried on connect errors, 429 and 5xx within ``batch_retry_budget_s`` under the same
transaction id (we assume the exchange applies a transaction id once, as gsy-e's own
correlation by transaction id suggests); the answer arrives on the aggregator's socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import httpx
import msgspec
import orjson

from gridfleet.exchange.link import (
    AggregatorRequest,
    BroughtUp,
    ExchangeCatalog,
    ExchangeError,
    ExchangeUnreachable,
    OutgoingBatch,
    RawHandler,
    ReconnectHandler,
    RestTarget,
    UndeliveredHandler,
    new_transaction_id,
)
from gridfleet.exchange.rest_auth import AuthError, TokenKeeper
from gridfleet.exchange.rest_energy import EnergyPost, split_energy
from gridfleet.exchange.rest_registry import Registry, find_uuid, parse_registry
from gridfleet.exchange.rest_retry import RetryPolicy, send_with_retries
from gridfleet.exchange.rest_socket import AggregatorSocket, socket_uri
from gridfleet.exchange.rest_transport import AiohttpTransport

log = logging.getLogger(__name__)

T = TypeVar("T")

TREE_EVENTS = frozenset({"market", "tick", "trade", "finish"})
RECHECK_AFTER_S = 0.5
"""After a socket comes back, wait this long for the others that dropped with it: one registry
read then re-checks the selections of all of them."""
SELECTION_EVENTS = frozenset({"selected_by_device", "unselected_by_device"})


class RestRequestError(ExchangeError):
    """A REST request got an answer we cannot use (a 4xx, a 5xx after retries, not JSON)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Head(msgspec.Struct):
    """The routing fields of a socket message; everything else is left raw for its owner."""

    event: str | None = None
    command: str | None = None
    device_uuid: str | None = None


_head = msgspec.json.Decoder(_Head)


class RestLink:
    """A fleet's connection to one simulation of a hosted exchange (see the module docstring)."""

    def __init__(
        self,
        target: RestTarget,
        *,
        on_reconnect: ReconnectHandler | None = None,
        on_undelivered: UndeliveredHandler | None = None,
    ) -> None:
        self.target = target
        self._on_reconnect = on_reconnect
        self._on_undelivered = on_undelivered
        sim = target.simulation_id
        self._aggregator_api = f"{target.domain}/external-connection/aggregator-api/{sim}/"
        self._asset_api = f"{target.domain}/external-connection/api/{sim}/"
        self._registry_url = f"{target.domain}/external-connection/configurations/{sim}/registry"
        self._graphql_url = f"{target.domain}/graphql/"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rest-link-loop", daemon=True
        )
        self._thread.start()
        self._inbox: queue.SimpleQueue[tuple[str, bytes, float] | None] = queue.SimpleQueue()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="rest-link-dispatch", daemon=True
        )
        self._dispatcher.start()
        self._http: httpx.AsyncClient = self._call(self._make_client())
        self.tokens = TokenKeeper(self._http, target)
        self._sockets: dict[str, AggregatorSocket] = {}
        self._event_handlers: dict[str, RawHandler] = {}
        self._answer_handlers: dict[str, RawHandler] = {}
        # Loop-only state (touched on the loop thread alone, so no lock):
        self._confirmed: dict[str, set[str]] = {}  # aggregator -> devices it was told it holds
        self._wanted: dict[str, list[str]] = {}  # aggregator -> devices the fleet selects
        self._agg_name: dict[str, str] = {}  # aggregator uuid -> its name
        self._recheck_due: set[str] = set()  # aggregators back from a reconnect, not re-checked
        self._recheck: asyncio.Task[None] | None = None
        self._waiters: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._pending_batches: set[concurrent.futures.Future[bool]] = set()
        self._registry: Registry | None = None
        self._unknown_events: set[str] = set()
        self.sent_batches = 0
        self.lost_batches = 0
        self.sent_energy_posts = 0  # forecasts/measurements over the per-asset endpoints
        self.lost_energy_posts = 0
        self.bad_frames = 0
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------------

    async def _make_client(self) -> httpx.AsyncClient:
        # httpx's API over aiohttp's pool: httpx's own is ~30x slower at a round's hundreds of
        # concurrent batch POSTs (rest_transport.py).
        return httpx.AsyncClient(
            transport=AiohttpTransport(limit=200),
            timeout=httpx.Timeout(self.target.request_timeout_s),
            follow_redirects=False,  # a redirect would turn a POST into a GET without its body
            headers={"Content-Type": "application/json"},
        )

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the link's loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _request(
        self, method: str, url: str, body: dict[str, Any] | bytes, policy: RetryPolicy | None = None
    ) -> Any:
        """One JSON request with auth and retries; the parsed answer, or an error naming it."""
        t = self.target
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        path = url.removeprefix(t.domain)
        policy = policy or RetryPolicy(t.max_retries, t.retry_budget_s)
        token = await self.tokens.token()
        for renewed in (False, True):
            headers = {"Authorization": f"JWT {token}"}
            try:
                resp = await send_with_retries(
                    lambda h=headers: self._http.request(method, url, content=content, headers=h),  # type: ignore[misc]
                    policy,
                    what=f"{method} {path}",
                )
            except httpx.TimeoutException:
                raise RestRequestError(
                    f"{method} {path}: no answer from {t.domain} within {t.request_timeout_s} s"
                ) from None
            except httpx.TransportError as exc:
                raise ExchangeUnreachable(
                    f"cannot reach the exchange at {t.domain} ({method} {path}: {type(exc).__name__})"
                ) from None
            if resp.status_code == 401 and not renewed:
                token = await self.tokens.renew(token)
                continue
            break
        if resp.status_code == 401:
            raise AuthError(
                f"{t.domain} refused a freshly issued token for {method} {path} (HTTP 401)"
            )
        if not 200 <= resp.status_code < 300:
            snippet = resp.text[:200].replace("\n", " ")
            raise RestRequestError(
                f"{method} {path}: HTTP {resp.status_code} {snippet}".strip(), resp.status_code
            )
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise RestRequestError(f"{method} {path}: the answer is not JSON") from None

    # -- sockets and the dispatcher ------------------------------------------------------------

    async def _open_sockets(self, aggregator_uuids: Iterable[str], wait_s: float) -> list[str]:
        """A socket per aggregator (once); waits up to ``wait_s`` for them to connect and
        returns the aggregators whose socket is not up yet (they keep trying)."""
        t = self.target
        fresh = []
        for agg in aggregator_uuids:
            if agg in self._sockets:
                continue
            sock = AggregatorSocket(
                socket_uri(t.websocket, t.simulation_id, agg),
                agg,
                self.tokens,
                self._on_frame,
                self._on_back,
                open_timeout=t.request_timeout_s,
                max_size=t.max_message_bytes,
            )
            self._sockets[agg] = sock
            self._confirmed.setdefault(agg, set())
            sock.start()
            fresh.append(sock)
        waits = [asyncio.create_task(s.connected.wait()) for s in self._sockets.values()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=wait_s)
            for w in pending:
                w.cancel()
        return [a for a, s in self._sockets.items() if not s.connected.is_set()]

    def _on_frame(self, aggregator: str, raw: bytes, t: float) -> None:
        # On the loop: hand over only; the dispatcher thread does the rest.
        self._inbox.put((aggregator, raw, t))

    def _dispatch(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            aggregator, raw, t = item
            try:
                head = _head.decode(raw)
            except msgspec.DecodeError as exc:
                self.bad_frames += 1
                log.warning("aggregator %s: skipping a websocket message: %s", aggregator, exc)
                continue
            try:
                self._route(aggregator, head, raw, t)
            except Exception:  # a handler's bug must not end the dispatcher
                log.exception("aggregator %s: handler failed", aggregator)

    def _route(self, aggregator: str, head: _Head, raw: bytes, t: float) -> None:
        if head.event is not None:
            if head.event in SELECTION_EVENTS:
                if head.device_uuid:
                    self._loop.call_soon_threadsafe(
                        self._on_selection, aggregator, head.event, head.device_uuid
                    )
            elif head.event in TREE_EVENTS:
                handler = self._event_handlers.get(aggregator)
                if handler is not None:
                    handler(aggregator, raw, t)
            elif head.event not in self._unknown_events:
                self._unknown_events.add(head.event)
                log.warning("aggregator %s: skipping unknown event kind %r", aggregator, head.event)
        elif head.command is not None:
            handler = self._answer_handlers.get(aggregator)
            if handler is not None:
                handler(aggregator, raw, t)

    def _on_selection(self, aggregator: str, kind: str, device: str) -> None:
        held = self._confirmed.setdefault(aggregator, set())
        if kind == "selected_by_device":
            held.add(device)
            waiter = self._waiters.pop((aggregator, device), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        else:
            held.discard(device)

    def _on_back(self, aggregator: str, down_s: float) -> None:
        log.warning(
            "aggregator %s: websocket back after %.2f s down; events and answers sent meanwhile"
            " are lost; re-checking its selections",
            aggregator,
            down_s,
        )
        if self._on_reconnect is not None:
            # The owner's callback may do I/O (ingress counts in Redis): not on the loop.
            threading.Thread(
                target=self._on_reconnect, args=(f"websocket {aggregator}",), daemon=True
            ).start()
        if self._wanted.get(aggregator):
            self._recheck_due.add(aggregator)
            if self._recheck is None or self._recheck.done():
                self._recheck = self._loop.create_task(self._recheck_selections())

    async def _recheck_selections(self) -> None:
        """Re-check the selections of the aggregators whose sockets came back, with one
        registry read for all of them, and select again only what the exchange no longer has
        as theirs (the exchange replays nothing, and may have dropped selections meanwhile).
        A registry that cannot be read: everything of theirs is selected again."""
        await asyncio.sleep(RECHECK_AFTER_S)
        due, self._recheck_due = self._recheck_due, set()
        try:
            held = (await self._read_registry()).held_by()
        except ExchangeError as exc:
            log.warning("re-check after reconnect: registry not readable (%s)", exc)
            held = {}
        pairs = [
            (agg, d)
            for agg in sorted(due)
            for d in self._wanted.get(agg, ())
            if held.get(d) != self._agg_name.get(agg)
        ]
        wanted = sum(len(self._wanted.get(a, ())) for a in due)
        if not pairs:
            log.info(
                "after the reconnect of %d aggregator(s): all %d selections still held",
                len(due),
                wanted,
            )
            return
        errors = await self._select_many(pairs, concurrency=self.target.select_concurrency)
        for agg, device in pairs:
            if device not in errors:
                self._confirmed.setdefault(agg, set()).add(device)
        level = logging.ERROR if errors else logging.WARNING
        shown = "; ".join(f"{d}: {why}" for d, why in list(errors.items())[:3])
        log.log(
            level,
            "after the reconnect of %d aggregator(s): %d of %d selections were gone and selected"
            " again, %d could not be%s",
            len(due),
            len(pairs),
            wanted,
            len(errors),
            f" ({shown})" if shown else "",
        )

    # -- the catalogue -------------------------------------------------------------------------

    async def _read_registry(self) -> Registry:
        tree = await self._request(
            "GET", self._registry_url, {"transaction_id": new_transaction_id()}
        )
        self._registry = parse_registry(tree)
        return self._registry

    def catalog(self, timeout: float = 60.0) -> ExchangeCatalog:
        """Every asset and market registered to this user, from the configuration registry."""
        return self._call(self._read_registry(), timeout).catalog()

    async def _graphql_uuids(self, names: set[str]) -> dict[str, str]:
        """Names the registry gave no uuid for, looked up in the scenario (GraphQL)."""
        query = (
            f'query {{ readConfiguration(uuid: "{self.target.simulation_id}") '
            "{ scenarioData { latest { serialized } } } }"
        )
        try:
            answer = await self._request(
                "POST",
                self._graphql_url,
                {"query": query, "variables": None, "operationName": None},
            )
            serialized = answer["data"]["readConfiguration"]["scenarioData"]["latest"]["serialized"]
            scenario = orjson.loads(serialized)
        except (ExchangeError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            log.warning("GraphQL readConfiguration gave no scenario (%s)", exc)
            return {}
        return {n: u for n in names if (u := find_uuid(scenario, n)) is not None}

    # -- bring-up ------------------------------------------------------------------------------

    def bring_up(
        self,
        aggregators: Sequence[AggregatorRequest],
        timeout: float = 60.0,
        *,
        fleet_id: str = "",
    ) -> BroughtUp:
        """Find or create the aggregators (by name: the exchange keeps them across runs, so
        ``fleet_id`` is not needed for a stable identity), select every asset and market and
        wait for the exchange to confirm each on the aggregator's socket."""
        return self._call(self._bring_up(list(aggregators), timeout), timeout + 30.0)

    async def _bring_up(self, aggregators: list[AggregatorRequest], timeout: float) -> BroughtUp:
        listed = await self._request(
            "GET",
            self._aggregator_api + "list-aggregators/",
            {"transaction_id": new_transaction_id()},
        )
        known: dict[str, str] = {}
        for item in listed if isinstance(listed, list) else []:
            if isinstance(item, dict) and isinstance(item.get("name"), str) and item.get("uuid"):
                known.setdefault(item["name"], str(item["uuid"]))
        reused = [a.name for a in aggregators if a.name in known]
        uuids = {a.name: known[a.name] for a in aggregators if a.name in known}
        for a in aggregators:
            if a.name not in uuids:
                made = await self._request(
                    "POST",
                    self._aggregator_api + "create-aggregator/",
                    {"name": a.name, "transaction_id": new_transaction_id()},
                )
                if not isinstance(made, dict) or not made.get("uuid"):
                    raise ExchangeError(
                        f"create-aggregator/ for {a.name!r} answered without a uuid"
                    )
                uuids[a.name] = str(made["uuid"])
        down = await self._open_sockets(uuids.values(), wait_s=self.target.request_timeout_s)
        if down:
            why = self._sockets[down[0]].last_error or "no connection"
            raise ExchangeUnreachable(
                f"the websocket of {len(down)} aggregator(s) did not open at {self.target.websocket}"
                f" ({why})"
            )
        registry = await self._read_registry()
        missing_uuid = {
            n
            for a in aggregators
            for n in (*a.assets, *a.markets)
            if n in registry.nodes and registry.nodes[n].uuid is None
        }
        extra = await self._graphql_uuids(missing_uuid) if missing_uuid else {}
        for name, uuid in extra.items():
            registry.nodes[name].uuid = uuid
        asset_uuid: dict[str, str] = {}
        market_uuid: dict[str, str] = {}
        unregistered: dict[str, str] = {}
        wanted: list[tuple[str, str]] = []
        for a in aggregators:
            agg = uuids[a.name]
            for names, out, market in (
                (a.assets, asset_uuid, False),
                (a.markets, market_uuid, True),
            ):
                for name in names:
                    reason = registry.why_not(name, market)
                    if reason is not None:
                        unregistered[name] = reason
                        continue
                    device = registry.nodes[name].uuid
                    assert device is not None
                    out[name] = device
                    wanted.append((agg, device))
        for agg, device in wanted:
            self._wanted.setdefault(agg, []).append(device)
        self._agg_name.update({u: n for n, u in uuids.items()})
        errors = await self._select_many(wanted, concurrency=self.target.select_concurrency)
        await self._await_confirmations(
            [(a, d) for a, d in wanted if d not in errors], timeout, errors
        )
        log.info(
            "REST bring-up at %s: %d aggregators (%d reused), %d devices selected, %d not",
            self.target.domain,
            len(uuids),
            len(reused),
            len(wanted) - len(errors),
            len(errors) + len(unregistered),
        )
        return BroughtUp(
            uuids,
            asset_uuid,
            market_uuid,
            selection_errors=errors,
            unregistered=unregistered,
            reused=reused,
        )

    async def _select_many(
        self, pairs: list[tuple[str, str]], *, concurrency: int
    ) -> dict[str, str]:
        """POST select-aggregator/ for every ``(aggregator, device)``; device -> error."""
        gate = asyncio.Semaphore(max(1, concurrency))
        errors: dict[str, str] = {}
        url = self._aggregator_api + "select-aggregator/"

        async def one(agg: str, device: str) -> None:
            async with gate:
                try:
                    answer = await self._request(
                        "POST",
                        url,
                        {
                            "aggregator_uuid": agg,
                            "device_uuid": device,
                            "transaction_id": new_transaction_id(),
                        },
                    )
                except AuthError:
                    raise
                except ExchangeError as exc:
                    errors[device] = f"select-aggregator/ failed: {exc}"
                    return
                held_by = answer.get("aggregator_uuid") if isinstance(answer, dict) else None
                if held_by is not None and str(held_by) != agg:
                    errors[device] = f"selected by another aggregator ({held_by})"

        await asyncio.gather(*(one(a, d) for a, d in pairs))
        return errors

    async def _await_confirmations(
        self, pairs: list[tuple[str, str]], timeout: float, errors: dict[str, str]
    ) -> None:
        """Wait for ``selected_by_device`` of every pair; the missing ones go into ``errors``."""
        waits: dict[tuple[str, str], asyncio.Future[None]] = {}
        for agg, device in pairs:
            if device in self._confirmed.get(agg, set()):
                continue
            fut = self._waiters.get((agg, device))
            if fut is None:
                fut = self._waiters[(agg, device)] = self._loop.create_future()
            waits[(agg, device)] = fut
        # Confirmations that came before the waiter existed are in _confirmed already; the
        # dispatcher may still hold some in its queue: they resolve the waiters as they land.
        if waits:
            _, pending = await asyncio.wait(list(waits.values()), timeout=timeout)
            for (agg, device), fut in waits.items():
                if fut in pending and device not in self._confirmed.get(agg, set()):
                    self._waiters.pop((agg, device), None)
                    errors[device] = (
                        f"the exchange accepted the selection but sent no selected_by_device on"
                        f" aggregator {agg}'s websocket within {timeout:.0f} s"
                    )

    # -- events, answers, batches --------------------------------------------------------------

    def subscribe_events(self, aggregator_uuids: Iterable[str], handler: RawHandler) -> None:
        aggs = list(aggregator_uuids)
        for a in aggs:
            self._event_handlers[a] = handler
        self._ensure_sockets(aggs)

    def subscribe_answers(self, aggregator_uuids: Iterable[str], handler: RawHandler) -> None:
        aggs = list(aggregator_uuids)
        for a in aggs:
            self._answer_handlers[a] = handler
        self._ensure_sockets(aggs)

    def _ensure_sockets(self, aggs: list[str]) -> None:
        wait = self.target.request_timeout_s
        down = self._call(self._open_sockets(aggs, wait_s=wait), wait + 5.0)
        if down:
            log.warning(
                "%d aggregator websocket(s) not open yet (%s); they keep trying",
                len(down),
                self._sockets[down[0]].last_error or "connecting",
            )

    def warm_up(self) -> None:
        """Nothing to open: the HTTP client's connections are the ones bring-up used."""

    def send_batches(self, batches: Iterable[OutgoingBatch]) -> int:
        """POST every batch concurrently; returns at once with how many were handed over.

        A batch still failing after ``batch_retry_budget_s`` is logged and counted in
        ``lost_batches``: its round is lost, the fleet goes on. An empty batch is not sent.
        """
        n = 0
        for b in batches:
            if b.empty:
                continue
            commands_json, energy = split_energy(b.commands_json, self.target.energy_data)
            for post in energy:
                self._spawn(self._post_energy(b, post))
            if commands_json.strip() == b"{}":
                continue  # only forecasts and measurements: they went to the assets' endpoints
            head = orjson.dumps(
                {"aggregator_uuid": b.aggregator_uuid, "transaction_id": b.transaction_id}
            )
            body = head[:-1] + b',"batch_commands":' + commands_json + b"}"
            self._spawn(self._post_batch(b, body))
            n += 1
        return n

    def _spawn(self, coro: Coroutine[Any, Any, bool]) -> None:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        self._pending_batches.add(fut)
        fut.add_done_callback(self._pending_batches.discard)

    async def _post_energy(self, batch: OutgoingBatch, post: EnergyPost) -> bool:
        """One forecast or measurement to its asset's endpoint (rest.md 3.7), retried as a
        batch is; the exchange answers on the asset's socket, so the HTTP status is the answer."""
        t = self.target
        policy = RetryPolicy(t.max_retries, t.batch_retry_budget_s, base_s=0.05, cap_s=0.5)
        url = f"{self._asset_api}{post.asset_uuid}/{post.endpoint}/"
        body = orjson.dumps(post.body(f"{batch.transaction_id}/{post.endpoint}"))
        try:
            await self._request("POST", url, body, policy)
        except ExchangeError as exc:
            self.lost_energy_posts += 1
            log.error(
                "asset %s: %s of aggregator %s not delivered: %s",
                post.asset_uuid,
                post.endpoint,
                batch.aggregator_uuid,
                exc,
            )
            return False
        self.sent_energy_posts += 1
        return True

    async def _post_batch(self, batch: OutgoingBatch, body: bytes) -> bool:
        t = self.target
        policy = RetryPolicy(t.max_retries, t.batch_retry_budget_s, base_s=0.05, cap_s=0.5)
        try:
            await self._request("POST", self._aggregator_api + "batch-commands/", body, policy)
        except ExchangeError as exc:
            self.lost_batches += 1
            log.error(
                "aggregator %s: batch %s not delivered: %s",
                batch.aggregator_uuid,
                batch.transaction_id,
                exc,
            )
            if self._on_undelivered is not None:
                # The owner counts it (Redis I/O): off the loop, which carries every socket.
                self._loop.run_in_executor(
                    None, self._on_undelivered, batch.aggregator_uuid, batch.transaction_id
                )
            return False
        self.sent_batches += 1
        return True

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every batch handed to :meth:`send_batches` was delivered or given up."""
        concurrent.futures.wait(list(self._pending_batches), timeout=timeout)

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in list(self._sockets.values()))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            await asyncio.gather(*(s.close() for s in self._sockets.values()))
            await self._http.aclose()

        try:
            self._call(shut(), timeout=10.0)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("REST link: closing the sockets took too long")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._inbox.put(None)
        self._dispatcher.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> RestLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
