"""Events for slots that are not the open market are counted and never evaluated."""

from __future__ import annotations

import logging

import orjson
import pytest

from gridfleet.exchange.messages import MarketEvent, TickEvent, decode_event
from gridfleet.platform.collector import RoundCollector
from tests.conftest import load_example

TICK = load_example("05_event_tick")["data"]
SLOT = TICK["market_slot"]


def tick(slot: str, completion: str = "20%") -> MarketEvent | TickEvent:
    ev = decode_event(orjson.dumps({**TICK, "market_slot": slot, "slot_completion": completion}))
    assert isinstance(ev, MarketEvent | TickEvent)
    return ev


def test_a_far_future_tick_is_counted_and_does_not_stall_the_open_market(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = RoundCollector(["a", "b"], window_s=10)
    c.add("a", tick(SLOT), now=0.0)
    with caplog.at_level(logging.WARNING):
        c.add("b", tick("2099-01-01T00:00"), now=0.001)
        c.add("b", tick("2099-01-01T00:00", "30%"), now=0.002)  # logged once per slot
    c.add("b", tick(SLOT), now=0.003)
    (rnd,) = c.ready(now=0.004)
    assert rnd.key.market_slot == SLOT and set(rnd.events) == {"a", "b"}
    assert c.stats.foreign_slot_events == 2 and c.open_slot == SLOT
    lines = [r.getMessage() for r in caplog.records if "2099-01-01T00:00" in r.getMessage()]
    assert len(lines) == 1 and "aggregator b" in lines[0] and "not the open market" in lines[0]


def test_the_next_slot_opens_and_a_closed_slot_is_not_evaluated() -> None:
    c = RoundCollector(["a"], window_s=10)
    c.add("a", tick("2024-06-01T12:00"), now=0.0)
    assert [r.key.market_slot for r in c.ready(now=0.1)] == ["2024-06-01T12:00"]
    c.add("a", tick("2024-06-01T12:15", "0%"), now=1.0)  # the slot changes by one
    assert [r.key.market_slot for r in c.ready(now=1.1)] == ["2024-06-01T12:15"]
    c.add("a", tick("2024-06-01T12:00", "90%"), now=1.2)  # late, for the slot that closed
    assert c.ready(now=2.0) == [] and c.stats.past_slot_events == 1


def test_a_slot_that_is_no_date_is_refused() -> None:
    c = RoundCollector(["a"], window_s=10)
    c.add("a", tick("tomorrow"), now=0.0)
    assert c.ready(now=1.0) == [] and c.stats.foreign_slot_events == 1
