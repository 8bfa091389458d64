"""Retries for HTTP requests to a hosted exchange: jittered exponential backoff, bounded.

Retried: connection failures and timeouts, 429 (honouring a short ``Retry-After``) and 5xx.
Never retried: any other 4xx (our request is wrong; sending it again cannot help). Bounded in
attempts and in time, so a dead exchange costs a known delay, not a hang. Retrying a POST is
safe only because each carries a transaction id the exchange deduplicates by.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_ERRORS = (httpx.TransportError,)  # connect/read/write errors and timeouts


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_retries`` more attempts, none starting after ``budget_s``."""

    max_retries: int = 5
    budget_s: float = 30.0
    base_s: float = 0.1
    cap_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Full-jitter backoff: uniform in [0.5, 1] x min(cap, base x 2^attempt)."""
        return random.uniform(0.5, 1.0) * min(self.cap_s, self.base_s * (2**attempt))


def retryable(resp: httpx.Response) -> bool:
    return resp.status_code in RETRY_STATUSES or resp.status_code >= 500


async def send_with_retries(
    send: Callable[[], Awaitable[httpx.Response]], policy: RetryPolicy, *, what: str
) -> httpx.Response:
    """``send()`` until it gives an answer worth keeping; returns the last answer, or raises
    the last transport error once the attempts or the time budget are spent."""
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            resp = await send()
        except RETRY_ERRORS as exc:
            if not _again(policy, attempt, start):
                raise
            wait = policy.delay(attempt)
            log.debug("%s: %s; retry %d in %.2f s", what, type(exc).__name__, attempt + 1, wait)
        else:
            if not retryable(resp) or not _again(policy, attempt, start):
                return resp
            wait = policy.delay(attempt)
            if resp.status_code == 429:
                wait = max(wait, _retry_after(resp))
            log.debug("%s: HTTP %d; retry %d in %.2f s", what, resp.status_code, attempt + 1, wait)
        if time.monotonic() + wait - start > policy.budget_s:
            wait = max(0.0, policy.budget_s - (time.monotonic() - start))
        await asyncio.sleep(wait)
        attempt += 1


def _again(policy: RetryPolicy, attempt: int, start: float) -> bool:
    return attempt < policy.max_retries and time.monotonic() - start < policy.budget_s


def _retry_after(resp: httpx.Response) -> float:
    """A ``Retry-After`` in seconds (capped at 5 s: a tick is worth more than politeness)."""
    try:
        return min(5.0, max(0.0, float(resp.headers.get("Retry-After", "0"))))
    except ValueError:
        return 0.0
