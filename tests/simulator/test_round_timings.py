"""The engine's per-round timings add up: each part of a round is inside its whole."""

from __future__ import annotations

from gridfleet.simulator import SimConfig, Simulator, assign_aggregators, generate_grid


def test_an_event_round_is_never_longer_than_its_dispatch(redis_url: str) -> None:
    """Market rounds (a slot opening: every leaf rendered again) counted their refresh twice,
    so the tick-event part came out longer than the whole round."""
    grid = generate_grid(20_000, houses_size=10, seed=0)
    sim = Simulator(grid, redis_url=redis_url, config=SimConfig(slots=3, tick_interval=None))
    sim.preselect(assign_aggregators(grid, 20))
    sim.start(engine=False)
    try:
        for _ in range(1 + 10 + 10 + 1):  # slot 0, slot 1, into slot 2's market round
            sim.step()
    finally:
        sim.stop()
    c = sim.counts
    assert len(c.event_round_ms) == len(c.round_ms) == 22
    # slot 1's and slot 2's market rounds render every leaf: a refresh worth measuring
    assert all(c.event_round_ms[i] > 1.0 for i in (10, 20))
    over = [
        (i, e, r)
        for i, (e, r) in enumerate(zip(c.event_round_ms, c.round_ms, strict=True))
        if e > r + 0.5
    ]
    assert not over, over
