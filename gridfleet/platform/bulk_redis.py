"""Redis commands with thousands of arguments, packed in C.

redis-py packs every argument of a command in Python (a generator, type checks, ``encode``):
about 1.3 µs each, so the three HMGETs of a 2 000-asset shard (state, rejections, market
answers: 4 000-6 000 uuids) cost the worker ~8 ms of an ~18 ms shard. ``hiredis.pack_command``
packs them in ~1 ms. Writing a shard's state is the same story twice over: 12 500 HSETs in a
redis-py pipeline took 54 ms of client CPU, one HSET of 12 500 fields packed by hiredis 3.5 ms.
On anything but a plain redis-py connection (a test's fakeredis) these fall back to a redis-py
pipeline: the same commands, the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import hiredis
import redis
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection

_PLAIN = (Connection, SSLConnection, UnixDomainSocketConnection)


Arg = str | bytes | int | float
Command = Sequence[Arg]
"""A command's name and arguments: ``("HSET", key, field, value, ...)``."""


def execute_many(r: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Every command in one round trip, in order; their answers (an error answer raises).

    Packed, the answers are Redis's own replies: ``b"OK"`` where redis-py's pipeline would
    say ``True``."""
    if not commands:
        return []
    answers = _packed(r, commands)
    if answers is None:
        pipe = r.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        answers = pipe.execute()
    return answers


def hmget_many(
    r: redis.Redis, requests: Sequence[tuple[str, Sequence[str]]]
) -> list[list[bytes | None]]:
    """``HMGET key fields...`` for each request, in one round trip; a request without fields
    answers ``[]``."""
    asked = [("HMGET", key, *fields) for key, fields in requests if fields]
    it = iter(execute_many(r, asked))
    return [next(it) if fields else [] for _, fields in requests]


def hset_command(key: str, mapping: Mapping[str, Arg]) -> Command:
    """``HSET key field value ...`` of a whole mapping as one command (for :func:`execute_many`)."""
    return ("HSET", key, *chain.from_iterable(mapping.items()))


def _packed(r: redis.Redis, commands: Sequence[Command]) -> list[Any] | None:
    """The commands sent packed by hiredis; None if ``r`` is not a plain connection pool."""
    if r.get_encoder().decode_responses:
        return None
    pool = r.connection_pool
    conn = pool.get_connection()
    try:
        if type(conn) not in _PLAIN:
            return None
        conn.send_packed_command(
            [  # one chunk: redis-py sends each item of a list
                b"".join(hiredis.pack_command(tuple(c)) for c in commands)  # type: ignore[arg-type]
            ]
        )
        return [conn.read_response() for _ in commands]
    except BaseException:
        conn.disconnect()  # a half-read answer must not reach the connection's next user
        raise
    finally:
        pool.release(conn)
