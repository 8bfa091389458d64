"""Runs, leases and gap arithmetic, against a real Redis (the Lua scripts run there)."""

from __future__ import annotations

import time

import fakeredis
import redis

from gridfleet.platform.gaps import ExchangeGaps
from gridfleet.platform.keys import Keys
from gridfleet.platform.lease import Lease, fenced_publish, lease_ttl_s
from gridfleet.platform.observers import BrokerCounters, Gap, GapCause
from gridfleet.platform.rounds import RoundKey
from gridfleet.platform.runs import join_run
from gridfleet.report.model import GAP_COUNTER_KEYS

KEYS = Keys("gf")


def test_a_finished_run_is_followed_by_a_new_one_and_an_unfinished_one_is_joined(
    redis_url: str,
) -> None:
    r = redis.Redis.from_url(redis_url)
    first, started = join_run(r, KEYS)
    assert started and r.get(KEYS.current_run) == first.encode()
    r.hset(KEYS.state, "asset", b"state of the first run")
    r.hset(KEYS.for_run(first).counters, "rounds", 7)

    # An ingress restarted mid-run joins it and keeps the state.
    again, started = join_run(r, KEYS)
    assert (again, started) == (first, False)
    assert r.hexists(KEYS.state, "asset")

    # Once it finished, the next ingress starts a new run: fresh counters, no inherited state.
    r.hset(KEYS.for_run(first).counters, "finished", 1)
    second, started = join_run(r, KEYS)
    assert started and second != first
    assert not r.exists(KEYS.state)
    assert not r.exists(KEYS.for_run(second).counters)
    assert r.hget(KEYS.for_run(first).counters, "rounds") == b"7"  # kept for reports...
    assert 0 < r.ttl(KEYS.for_run(first).counters) <= 7 * 24 * 3600  # ...for a while
    assert r.hget(KEYS.for_run(second).run_meta, "previous") == first.encode()


def test_a_run_id_given_by_the_starter_is_started_once_and_then_joined(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    join_run(r, KEYS)
    assert join_run(r, KEYS, "20260101T000000Z-abcdef") == ("20260101T000000Z-abcdef", True)
    assert join_run(r, KEYS, "20260101T000000Z-abcdef") == ("20260101T000000Z-abcdef", False)
    assert join_run(r, KEYS) == ("20260101T000000Z-abcdef", False)


def test_run_keys_do_not_overlap_and_fleet_keys_are_shared() -> None:
    a, b = KEYS.for_run("a"), KEYS.for_run("b")
    for name in ("counters", "rounds", "events", "run_meta"):
        assert getattr(a, name) != getattr(b, name)
        assert getattr(a, name).startswith("gf:run:a:")
    assert a.published("x") != b.published("x") and a.dispatched("x") != b.dispatched("x")
    for name in ("spec", "fleet", "state", "rejections", "market_answers", "current_run"):
        assert getattr(a, name) == getattr(b, name) == getattr(KEYS, name)


def test_one_lease_holder_at_a_time_and_a_standby_takes_over_when_it_stops_renewing(
    redis_url: str,
) -> None:
    r = redis.Redis.from_url(redis_url)
    changes: list[tuple[str, bool]] = []
    active = Lease(r, "gf:lease:x", 0.5, on_change=lambda h: changes.append(("active", h)))
    standby = Lease(r, "gf:lease:x", 0.5, on_change=lambda h: changes.append(("standby", h)))
    assert active.step() and active.held
    assert not standby.step() and not standby.held
    time.sleep(0.3)
    assert active.step()  # renewed: still the holder past its first TTL
    time.sleep(0.3)
    assert not standby.step()
    # The active one stops renewing (as a killed process does): the lease expires.
    time.sleep(0.6)
    assert not active.held
    assert standby.step() and standby.held
    assert not active.step()  # it cannot renew what is another's
    assert changes == [("active", True), ("standby", True), ("active", False)]
    standby.release()
    assert r.get("gf:lease:x") is None  # given up at once, not after a TTL


def test_a_lease_lost_with_a_restarted_broker_stays_with_its_holder(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    lease = Lease(r, "gf:lease:y", 1.0)
    assert lease.step()
    r.delete("gf:lease:y")  # what a broker restart without persistence does
    assert lease.step() and r.get("gf:lease:y") == lease.token.encode()


def test_publication_is_fenced_by_the_lease_and_recorded_once_per_round(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    first = Lease(r, "gf:lease:c", 0.5)
    second = Lease(r, "gf:lease:c", 0.5)
    assert first.step()
    published = KEYS.for_run("run").published("run:2024-06-01T00:15#3")
    assert fenced_publish(r, second, published) == 0  # not the holder: nothing recorded
    assert fenced_publish(r, first, published) == 1
    assert fenced_publish(r, first, published) == -1  # never twice
    time.sleep(0.6)
    assert second.step()
    assert fenced_publish(r, first, KEYS.for_run("run").published("next")) == 0  # deposed
    assert fenced_publish(r, second, published) == -1  # the new holder does not answer it again


def test_lease_ttl_is_most_of_a_tick_with_a_floor() -> None:
    assert lease_ttl_s(0.85) == 0.68
    assert lease_ttl_s(0.2) == 0.5


def test_gaps_are_counted_from_slot_and_tick_arithmetic() -> None:
    gaps = ExchangeGaps()
    t = 0.0
    assert gaps.observe(RoundKey("2024-06-01T00:00", 8), t) is None
    assert gaps.observe(RoundKey("2024-06-01T00:00", 9), t + 1) is None
    assert gaps.observe(RoundKey("2024-06-01T00:15", 0), t + 2) is None  # learns 15-min slots
    assert gaps.observe(RoundKey("2024-06-01T00:15", 0), t + 2.1) is None  # the same round
    assert gaps.observe(RoundKey("2024-06-01T00:15", 1), t + 3) is None
    gap = gaps.observe(RoundKey("2024-06-01T00:15", 5), t + 7)
    assert gap == Gap(GapCause.EXCHANGE, 3, 4.0, "2024-06-01T00:15#2", "2024-06-01T00:15#4")
    # Across slots: from tick 8 of 00:15 to tick 2 of 00:45 is 13 rounds missed.
    assert gaps.observe(RoundKey("2024-06-01T00:15", 8), t + 10) is not None
    gap = gaps.observe(RoundKey("2024-06-01T00:45", 2), t + 24)
    assert gap is not None and gap.rounds == 13
    assert (gap.first, gap.last) == ("2024-06-01T00:15#9", "2024-06-01T00:45#1")
    assert gaps.observe(RoundKey("2024-06-01T00:15", 9), t + 25) is None  # a late, older event


def test_gap_counters_reach_the_broker_hash_the_report_reads() -> None:
    r = fakeredis.FakeRedis()
    counters = BrokerCounters(r, "c")
    counters.gap_closed(Gap(GapCause.EXCHANGE, 4, 2.0, "a", "b"))
    counters.gap_closed(Gap(GapCause.BROKER, 3, 1.5, "c", "d"))
    got = {k.decode(): int(v) for k, v in r.hgetall("c").items()}
    assert got == {"gaps": 2, "exchange_gap_rounds": 4, "broker_gap_rounds": 3}
    assert set(got) <= set(GAP_COUNTER_KEYS)
    counters.enabled = False  # a standby ingress counts nothing on the broker
    counters.gap_closed(Gap(GapCause.EXCHANGE, 9, 2.0, "a", "b"))
    assert int(r.hget("c", "gaps")) == 2  # type: ignore[arg-type]
