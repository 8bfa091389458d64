"""The run's event stream against a real Redis: records added while the broker is away are
written when it is back, and after a restart (kill -9 included) the last seconds' records are
written again, so none is lost; each keeps the id it was given."""

from __future__ import annotations

import orjson
import pytest
import redis

from gridfleet.platform.observers import Tally
from gridfleet.platform.records import EventStream
from gridfleet.runtime.redis_server import RedisServer

pytestmark = pytest.mark.integration


def rids(r: redis.Redis, stream: str) -> list[str]:
    return [orjson.loads(f[b"data"])["rid"] for _, f in r.xrange(stream)]


def test_records_added_while_the_broker_is_away_are_kept_and_written_when_it_is_back() -> None:
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        tally = Tally()
        events = EventStream(r, "s", tally, "test")
        for n in range(3):
            events.add({"kind": "finish", "aggregator": f"a{n}"})
        assert events.flush()
        server.stop()  # gone, and everything it held with it (no persistence)
        events.add({"kind": "finish", "aggregator": "a3"})
        events.add({"kind": "finish", "aggregator": "a4"})
        assert not events.flush()
        assert not events.flush()  # still away: still kept
        server.start()
        assert events.flush()
        got = rids(r, "s")
        # the two kept, then the three the restarted broker had lost, written again
        assert len(got) == len(set(got)) == 5
        aggs = sorted(orjson.loads(f[b"data"])["aggregator"] for _, f in r.xrange("s"))
        assert aggs == [f"a{n}" for n in range(5)]
        assert tally.lost_records == 0


def test_after_a_kill_9_every_record_is_on_the_stream_at_least_once() -> None:
    with RedisServer(appendonly=True) as server:
        r = redis.Redis.from_url(server.url)
        events = EventStream(r, "s", Tally(), "test")
        added = []
        for n in range(200):
            record = {"kind": "finish", "aggregator": f"a{n}"}
            events.add(record)
            added.append(record["rid"])
            if n % 20 == 19:
                assert events.flush()
        server.crash()  # the append-only file is up to a second behind
        events.add({"kind": "finish", "aggregator": "after"})
        assert events.flush()
        got = rids(r, "s")
        assert set(added) < set(got)  # duplicates possible: the ledger keeps each rid once
        assert len(set(got)) == len(added) + 1


def test_a_broker_that_refuses_a_write_keeps_the_record() -> None:
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url)
        events = EventStream(r, "s", Tally(), "test")
        r.set("filler", b"x" * 4_000_000)
        r.config_set("maxmemory", "1mb")  # over it: noeviction refuses writes
        events.add({"kind": "finish", "aggregator": "a"})
        assert not events.flush()
        r.config_set("maxmemory", "0")
        assert events.flush()
        assert len(rids(r, "s")) == 1
