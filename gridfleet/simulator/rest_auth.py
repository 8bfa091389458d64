"""The REST door's users and tokens: who may log in, and the JWTs they get.

Users come from a file (``{username: password}``, JSON or YAML) or ``NAME:PASSWORD`` flags; there
is no default user and no default password. Tokens are HS256 JWTs signed with a secret drawn
afresh for every run (a token never outlives its exchange), with ``exp`` set to the configured
lifetime. Passwords are compared in constant time and never appear in a message.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import yaml

ALGORITHM = "HS256"
# gsy-framework's JWT_TOKEN_EXPIRY_IN_SECS: the official client refreshes every quarter of it
DEFAULT_TOKEN_LIFETIME_S = 48 * 3600.0


class UsersError(ValueError):
    """A users file or ``--rest-user`` flag is wrong; the message names it (never a password)."""


def parse_user_flag(text: str) -> tuple[str, str]:
    """``NAME:PASSWORD`` -> (name, password); the password may itself contain colons."""
    name, sep, password = text.partition(":")
    if not sep or not name.strip() or not password:
        raise UsersError(
            f"--rest-user {name.strip() or '?'}:...: use NAME:PASSWORD (both non-empty)"
        )
    return name.strip(), password


def load_users_file(path: str | Path) -> dict[str, str]:
    """``{username: password}`` from a JSON or YAML file; UsersError naming what is wrong."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsersError(f"{p}: cannot read the users file ({exc.strerror})") from None
    try:
        data: Any = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsersError(f"{p}: not valid JSON/YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not data:
        raise UsersError(f"{p}: expected a non-empty mapping of username to password")
    users: dict[str, str] = {}
    for name, password in data.items():
        if not isinstance(name, str) or not name.strip():
            raise UsersError(f"{p}: every username must be a non-empty string")
        if not isinstance(password, str) or not password:
            raise UsersError(f"{p}: {name}: the password must be a non-empty string")
        users[name.strip()] = password
    return users


class TokenError(Exception):
    """A request's token is missing, malformed, forged or expired; the message says which."""


class TokenIssuer:
    """Checks credentials, issues and verifies the run's JWTs."""

    def __init__(self, users: dict[str, str], lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S) -> None:
        if not users:
            raise UsersError("the REST door needs at least one user (--rest-user or --rest-users)")
        if lifetime_s <= 0:
            raise ValueError("the token lifetime must be positive")
        self._users = dict(users)
        self._secret = secrets.token_bytes(32)  # per run: tokens die with the exchange
        self.lifetime_s = lifetime_s
        self.issued = 0  # tokens handed out (a client renewing its token shows here)
        # token -> (user, exp): a fleet sends hundreds of requests a round with one token; the
        # signature is checked once, the expiry on every request
        self._verified: dict[str, tuple[str, int]] = {}
        self.refused = 0  # requests refused for a missing, expired or invalid token

    def login(self, username: object, password: object) -> str | None:
        """A fresh token for good credentials, else None."""
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        expected = self._users.get(username)
        # compare even for an unknown user, so timing does not tell which users exist
        ok = (
            hmac.compare_digest((expected or "\0").encode(), password.encode())
            and expected is not None
        )
        if not ok:
            return None
        now = time.time()
        claims = {
            "sub": username,
            "iat": int(now),
            # A whole second, rounded up: PyJWT (ours and most clients') truncates a float
            # `exp`, so `now + 3.0` would die up to a second before the client expects it.
            "exp": math.ceil(now + self.lifetime_s),
            "jti": secrets.token_hex(8),
            "token_type": "access",
        }
        self.issued += 1
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, authorization: str | None) -> str:
        """The user an ``Authorization: JWT <token>`` header names; TokenError otherwise."""
        if not authorization:
            raise TokenError("authentication credentials were not provided")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme != "JWT" or not token.strip():
            raise TokenError("use the header 'Authorization: JWT <token>'")
        token = token.strip()
        known = self._verified.get(token)
        if known is not None:
            user, exp = known
            if exp <= time.time():  # PyJWT's rule: expired at `exp`
                del self._verified[token]
                raise TokenError("the token has expired; get a new one from /api-token-auth/")
            return user
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired; get a new one from /api-token-auth/") from None
        except jwt.InvalidTokenError:
            raise TokenError("the token is not valid") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or sub not in self._users:
            raise TokenError("the token is not valid")
        if len(self._verified) > 10_000:  # stale tokens of clients long gone
            now = time.time()
            self._verified = {t: v for t, v in self._verified.items() if v[1] > now}
        self._verified[token] = (sub, int(claims["exp"]))
        return sub
