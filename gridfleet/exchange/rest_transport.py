"""An ``httpx`` transport that sends through an ``aiohttp`` connection pool.

Why: a fleet POSTs one batch per aggregator per round, concurrently: 100 at once at 10 000
assets, 1 000 at 100 000. httpx's own async pool (httpcore) spends about 5 ms of CPU per request
at that concurrency (100 concurrent POSTs of 7 KB to a local server: 514 ms with httpx's pool,
19 ms with httpx over aiohttp's, 10 ms with bare aiohttp; ``python -m bench.bench_http_pool``,
``bench/results/rest_http_pool.json``), a known upstream limitation (encode/httpx#3215). The link keeps httpx's API (requests, responses, timeouts, its exception
types, which the retry policy reads); only the wire underneath is aiohttp's.

Redirects are never followed (a redirect would turn a POST into a GET without its body), and
responses are read whole (the exchange's answers are small JSON objects).
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    t = request.extensions.get("timeout") or {}
    return aiohttp.ClientTimeout(
        total=None,
        connect=t.get("connect"),
        sock_connect=t.get("connect"),
        sock_read=t.get("read"),
    )


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AiohttpTransport(limit=200))``: up to ``limit`` pooled
    keep-alive connections. Build it on the event loop that will use it."""

    def __init__(self, *, limit: int = 200) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content  # the link always sends bytes it built
        try:
            async with self._session.request(
                request.method,
                str(request.url),
                data=body if body else None,
                headers=list(request.headers.multi_items()),
                allow_redirects=False,
                timeout=_timeout(request),
            ) as resp:
                content = await resp.read()
                return httpx.Response(
                    status_code=resp.status,
                    headers=list(resp.raw_headers),
                    content=content,
                    request=request,
                )
        except (TimeoutError, asyncio.TimeoutError) as exc:  # noqa: UP041 (aiohttp raises either)
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.NetworkError(str(exc), request=request) from exc

    async def aclose(self) -> None:
        await self._session.close()
