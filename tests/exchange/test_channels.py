"""Channel names and market slugs, as gsy-e makes them."""

from __future__ import annotations

import pytest

from gridfleet.exchange import channels


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("House 2", "house-2"),
        ("PV 1 (4kW)", "pv-1-4kw"),
        ("Grid", "grid"),
        ("Community_1", "community-1"),
        ("Straße 1", "strasse-1"),  # transliterated, as gsy-e's python-slugify does
        ("Ölmühle Süd", "olmuhle-sud"),
        ("Zürich-Nord", "zurich-nord"),
    ],
)
def test_market_slugs_match_gsy_e(name: str, slug: str) -> None:
    assert channels.slugify(name) == slug


def test_the_aggregator_of_an_event_or_answer_channel() -> None:
    agg = "3c77250c-b16b-463c-b852-1fff21b1d2be"
    assert channels.aggregator_of(channels.aggregator_events(agg)) == agg
    assert channels.aggregator_of(channels.batch_response(agg, "cfg")) == agg
    assert channels.aggregator_of(channels.batch_commands()) is None
