"""Redis commands with thousands of arguments, packed in C.

redis-py packs every argument of a command in Python (a generator, type checks, ``encode``):
about 1.3 µs each, so the three HMGETs of a 2 000-asset shard (state, rejections, market
answers: 4 000-6 000 uuids) cost the worker ~8 ms of an ~18 ms shard. ``hiredis.pack_command``
packs them in ~1 ms. On anything but a plain redis-py connection (a test's fakeredis) this
falls back to a redis-py pipeline: the same commands, the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection

_PLAIN = (Connection, SSLConnection, UnixDomainSocketConnection)


def hmget_many(
    r: redis.Redis, requests: Sequence[tuple[str, Sequence[str]]]
) -> list[list[bytes | None]]:
    """``HMGET key fields...`` for each request, in one round trip; a request without fields
    answers ``[]``."""
    asked = [(key, fields) for key, fields in requests if fields]
    answers = _packed(r, asked) if asked else []
    if answers is None:
        pipe = r.pipeline(transaction=False)
        for key, fields in asked:
            pipe.hmget(key, fields)
        answers = pipe.execute()
    it = iter(answers)
    return [next(it) if fields else [] for _, fields in requests]


def _packed(r: redis.Redis, asked: list[tuple[str, Sequence[str]]]) -> list[Any] | None:
    """The HMGETs sent packed by hiredis; None if ``r`` is not a plain connection pool."""
    if r.get_encoder().decode_responses:
        return None
    pool = r.connection_pool
    conn = pool.get_connection()
    try:
        if type(conn) not in _PLAIN:
            return None
        conn.send_packed_command(
            [  # one chunk: redis-py sends each item of a list
                b"".join(
                    hiredis.pack_command(("HMGET", key, *fields))  # type: ignore[arg-type]
                    for key, fields in asked
                )
            ]
        )
        return [conn.read_response() for _ in asked]
    except BaseException:
        conn.disconnect()  # a half-read answer must not reach the connection's next user
        raise
    finally:
        pool.release(conn)
