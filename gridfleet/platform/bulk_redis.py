"""Redis commands with thousands of arguments, packed in C.

redis-py packs every argument of a command in Python (a generator, type checks, ``encode``):
about 1.3 µs each, so the three HMGETs of a 2 000-asset shard (state, rejections, market
answers: 4 000-6 000 uuids) cost the worker ~8 ms of an ~18 ms shard. ``hiredis.pack_command``
packs them in ~1 ms, and a run of uuids (ASCII, one length) is packed by one ``join`` in
less (:func:`bulk_strings`). Writing a shard's state is the same story twice over: 12 500 HSETs in a
redis-py pipeline took 54 ms of client CPU, one HSET of 12 500 fields packed by hiredis 3.5 ms.
On anything but a plain redis-py connection (a test's fakeredis) these fall back to a redis-py
pipeline: the same commands, the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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

    def pack() -> bytes:
        return b"".join(hiredis.pack_command(tuple(c)) for c in commands)  # type: ignore[arg-type]

    answers = _round_trip(r, pack, len(commands))
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
    asked = [(key, fields) for key, fields in requests if fields]
    answers = _round_trip(r, lambda: b"".join(_pack_hmget(k, f) for k, f in asked), len(asked))
    if answers is None:
        pipe = r.pipeline(transaction=False)
        for key, fields in asked:
            pipe.hmget(key, fields)
        answers = pipe.execute()
    it = iter(answers)
    return [next(it) if fields else [] for _, fields in requests]


def hset_command(key: str, mapping: Mapping[str, Arg]) -> Command:
    """``HSET key field value ...`` of a whole mapping as one command (for :func:`execute_many`)."""
    return ("HSET", key, *chain.from_iterable(mapping.items()))


def bulk_strings(fields: Sequence[str]) -> bytes | None:
    """``fields`` as the arguments of a packed command (RESP bulk strings), or None unless they
    are ASCII strings of one length (uuids): then the lot is one ``join``, where
    ``hiredis.pack_command`` spends ~120 ns on each (1.5 ms for a 12 500-asset shard's uuids)."""
    size = len(fields[0])
    text = f"\r\n${size}\r\n".join(fields)
    if not text.isascii() or len(set(map(len, fields))) != 1:
        return None
    return f"${size}\r\n{text}\r\n".encode()


def _pack_hmget(key: str, fields: Sequence[str]) -> bytes:
    body = bulk_strings(fields)
    if body is None:
        return hiredis.pack_command(("HMGET", key, *fields))  # type: ignore[arg-type]
    name = key.encode()
    return b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n" % (len(fields) + 2, len(name), name) + body


def _round_trip(r: redis.Redis, pack: Callable[[], bytes], replies: int) -> list[Any] | None:
    """``pack()`` sent as one chunk and ``replies`` answers read; None (nothing sent) if ``r``
    is not a plain redis-py connection pool (a test's fakeredis)."""
    if r.get_encoder().decode_responses:
        return None
    pool = r.connection_pool
    conn = pool.get_connection()
    try:
        if type(conn) not in _PLAIN:
            return None
        conn.send_packed_command([pack()])  # one chunk: redis-py sends each item of a list
        return [conn.read_response() for _ in range(replies)]
    except BaseException:
        conn.disconnect()  # a half-read answer must not reach the connection's next user
        raise
    finally:
        pool.release(conn)
