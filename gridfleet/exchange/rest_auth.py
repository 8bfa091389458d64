"""Logging in to a hosted exchange: JWT tokens from ``/api-token-auth/``, kept fresh.

One :class:`TokenKeeper` per link (not per aggregator): every request and every websocket
handshake asks it for the current token, so a fleet of hundreds of aggregators logs in once,
and again only shortly before the token expires (its ``exp`` claim, read without verifying the
signature, which only the server can) or when the server answers 401.

The password is sent in the token request's body and nowhere else: no error message, log line
or repr here contains it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import jwt

from gridfleet.exchange.link import ExchangeUnreachable, RestTarget
from gridfleet.exchange.rest_retry import RetryPolicy, send_with_retries

log = logging.getLogger(__name__)

TOKEN_PATH = "/api-token-auth/"

REFRESH_AT = 0.8
"""Refresh a token once this share of its lifetime has passed."""


class AuthError(ExchangeUnreachable):
    """The exchange refused our credentials, or answered the token request with no token."""


class TokenKeeper:
    """The current JWT of one user at one exchange, fetched on first use and renewed lazily."""

    def __init__(self, http: httpx.AsyncClient, target: RestTarget) -> None:
        self._http = http
        self._target = target
        self._token: str | None = None
        self._renew_at = 0.0  # monotonic
        self._lock = asyncio.Lock()
        self.logins = 0

    @property
    def url(self) -> str:
        return self._target.domain + TOKEN_PATH

    async def token(self) -> str:
        """A token that has not reached its refresh time; logs in if needed (one at a time)."""
        if self._token is not None and time.monotonic() < self._renew_at:
            return self._token
        async with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                await self._login()
            assert self._token is not None
            return self._token

    async def renew(self, rejected: str) -> str:
        """A new token after the server refused ``rejected`` (a 401); no second login when
        another request already renewed it."""
        async with self._lock:
            if self._token == rejected or self._token is None:
                self._token = None
                await self._login()
            assert self._token is not None
            return self._token

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"JWT {await self.token()}"}

    async def _login(self) -> None:
        target = self._target
        body = {
            "username": target.username.get_secret_value(),
            "password": target.password.get_secret_value(),
        }
        where = f"the exchange at {target.domain}"
        policy = RetryPolicy(target.max_retries, target.retry_budget_s)
        try:
            resp = await send_with_retries(
                lambda: self._http.post(self.url, json=body), policy, what=f"login at {self.url}"
            )
        except httpx.HTTPError as exc:
            raise ExchangeUnreachable(
                f"cannot reach {where} to log in: {type(exc).__name__}"
            ) from None
        if resp.status_code in (400, 401, 403):
            raise AuthError(
                f"{where} refused the credentials in ${target.username_env} / "
                f"${target.password_env} (HTTP {resp.status_code})"
            )
        if resp.status_code != 200:
            raise ExchangeUnreachable(f"{where} answered the login with HTTP {resp.status_code}")
        try:
            token = resp.json()["access"]
            if not isinstance(token, str) or not token:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"{where} answered the login without an `access` token") from None
        self._token = token
        self._renew_at = time.monotonic() + REFRESH_AT * self._lifetime(token)
        self.logins += 1
        log.info(
            "logged in to %s (token renewed in %.0f s)",
            target.domain,
            self._renew_at - time.monotonic(),
        )

    def _lifetime(self, token: str) -> float:
        """Seconds the token is valid: its ``exp`` claim when it has one, else the configured
        lifetime (a token that is not a JWT at all is the server's business)."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
        except jwt.PyJWTError:
            return self._target.token_lifetime_s
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            return self._target.token_lifetime_s
        return max(1.0, float(exp) - time.time())


def check_credentials(target: RestTarget) -> None:
    """Log in once (start-up check of ``gridfleet run``): raises :class:`ExchangeUnreachable`
    (or :class:`AuthError`) naming the domain and the variables, never the password."""

    async def login() -> None:
        async with httpx.AsyncClient(
            timeout=target.request_timeout_s, follow_redirects=False
        ) as http:
            await TokenKeeper(http, target).token()

    asyncio.run(login())
