"""Many-field HMGETs packed by hiredis answer what redis-py's own HMGETs answer, on a real Redis
(the packed path) and on fakeredis (the fallback); a failed read leaves no half-read answer on
a pooled connection."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from gridfleet.platform.bulk_redis import Command, execute_many, hmget_many, hset_command

FIELDS = [f"{i:08x}-uuid" for i in range(3000)]


def fill(r: redis.Redis) -> None:
    r.hset("a", mapping={f: f.upper().encode() for f in FIELDS[::3]})
    r.hset("b", "x", b"\x00\xff")


@pytest.mark.integration
def test_packed_hmgets_answer_as_redis_py_does(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    fill(r)
    requests = [("a", FIELDS), ("nothing", []), ("b", ["x", "y"]), ("missing", ["q"])]
    got = hmget_many(r, requests)
    assert got == [r.hmget("a", FIELDS), [], [b"\x00\xff", None], [None]]
    assert sum(v is not None for v in got[0]) == 1000
    assert hmget_many(r, [("a", [])]) == [[]]
    # the connection it used is back in the pool and in step: the next command reads its own answer
    assert r.ping() and r.hget("b", "x") == b"\x00\xff"


def test_fakeredis_takes_the_pipeline_and_answers_the_same() -> None:
    r = fakeredis.FakeRedis()
    fill(r)
    got = hmget_many(r, [("a", FIELDS[:10]), ("b", ["x"])])
    assert got == [r.hmget("a", FIELDS[:10]), [b"\x00\xff"]]


@pytest.mark.integration
def test_an_error_mid_read_drops_the_connection_not_the_next_answer(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.set("s", b"not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        hmget_many(r, [("s", ["f"]), ("b", ["x"])])
    r.hset("b", "x", b"1")
    assert r.hget("b", "x") == b"1"


def commands() -> list[Command]:
    return [
        hset_command("h", {f: f.encode() for f in FIELDS}),
        ("HDEL", "h", *FIELDS[:5]),
        ("SET", "k", b"\x00v", "EX", 60),
        ("RPUSH", "done", 3),
        ("HLEN", "h"),
    ]


@pytest.mark.integration
def test_packed_commands_do_what_a_pipeline_does(redis_url: str) -> None:
    packed, piped = redis.Redis.from_url(redis_url), fakeredis.FakeRedis()
    # SET's reply is Redis's own on the packed path (b"OK"), redis-py's True on the pipeline
    assert execute_many(packed, commands()) == [3000, 5, b"OK", 1, 2995]
    assert execute_many(piped, commands()) == [3000, 5, True, 1, 2995]
    for r in (packed, piped):
        assert r.hget("h", FIELDS[-1]) == FIELDS[-1].encode() and r.hget("h", FIELDS[0]) is None
        assert r.get("k") == b"\x00v" and 0 < r.ttl("k") <= 60 and r.lrange("done", 0, -1) == [b"3"]
    assert execute_many(packed, []) == []
