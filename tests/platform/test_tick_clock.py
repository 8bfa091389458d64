"""The tick clock: the interval it learns from round arrivals and the budget it gives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridfleet.platform.tick_clock import DEFAULT_BUDGET_FRACTION, MIN_GAPS, TickClock


def arrivals(clock: TickClock, gaps: list[float], start: float = 100.0) -> None:
    at = start
    clock.observe("s", "0%", at)
    for i, gap in enumerate(gaps, start=1):
        at += gap
        clock.observe("s", f"{i}%", at)


def test_the_fallback_budget_holds_until_enough_gaps_are_seen() -> None:
    clock = TickClock()
    arrivals(clock, [1.0] * (MIN_GAPS - 1))
    assert clock.budget(None) == 0.8
    arrivals(clock, [1.0], start=200.0)  # another first arrival, then one more gap
    assert clock.budget(None) == pytest.approx(DEFAULT_BUDGET_FRACTION * 1.0)


def test_a_short_first_gap_does_not_shrink_the_budget() -> None:
    """The exchange's first big round arrives late, so the next one seems half a tick away."""
    clock = TickClock()
    arrivals(clock, [0.44, 1.0, 1.0, 1.02, 0.98])
    assert clock.interval_s == pytest.approx(1.0)


def test_events_of_the_same_round_are_not_gaps() -> None:
    clock = TickClock()
    for at in (1.0, 1.01, 1.02):
        clock.observe("s", "0%", at)
    assert clock.interval_s is None


def test_an_outage_is_not_an_interval() -> None:
    clock = TickClock()
    arrivals(clock, [1.0, 1.0, 1.0, 30.0])
    assert clock.interval_s == pytest.approx(1.0)


def test_a_configured_budget_wins() -> None:
    clock = TickClock()
    arrivals(clock, [1.0] * 5)
    assert clock.budget(0.3) == 0.3


@given(
    interval=st.floats(0.1, 10),
    jitter=st.lists(st.floats(-0.2, 0.2), min_size=MIN_GAPS, max_size=30),
)
def test_the_learnt_interval_stays_within_the_jitter(interval: float, jitter: list[float]) -> None:
    clock = TickClock()
    arrivals(clock, [interval * (1 + j) for j in jitter])
    learnt = clock.interval_s
    assert learnt is not None
    assert interval * 0.8 - 1e-9 <= learnt <= interval * 1.2 + 1e-9
