"""Event parse time: gridfleet's protocol models against plain ``orjson.loads``.

    .venv/bin/python -m bench.bench_protocol            # 1 000, 10 000, 100 000 assets

Builds a gsy-e-shaped ``market`` event (Grid > communities > houses > load, PV, storage, with the
aggregator's ``asset_info`` on every asset, as gsy-e sends to an aggregator that owns them all),
then times, in the same run: ``orjson.loads`` of the bytes, and ``decode_event`` (bytes to typed,
type-checked structs). Writes ``bench/results/protocol.json``.
"""

from __future__ import annotations

import argparse
import uuid

import orjson

from bench._util import best_and_median, write_results
from gridfleet.exchange.messages import MarketEvent, decode_event

STATS = {
    "min_trade_rate": 26.0,
    "max_trade_rate": 30.0,
    "avg_trade_rate": 28.0,
    "median_trade_rate": 28.0,
    "total_traded_energy_kWh": 0.3,
}
BILL = {"accumulated_trades": {}, "external_trades": {}}


def _market(name: str, children: dict) -> dict:
    return {
        "last_market_bill": BILL,
        "last_market_stats": STATS,
        "last_market_fee": 1.0,
        "current_market_fee": 1,
        "area_name": name,
        "children": children,
    }


def _asset(name: str, i: int) -> dict:
    kind = i % 3
    if kind == 0:
        info = {
            "energy_requirement_kWh": 0.0239,
            "energy_active_in_bids": 0.0,
            "energy_traded": 0,
            "total_cost": 0,
        }
    elif kind == 1:
        info = {
            "available_energy_kWh": 0.125,
            "energy_active_in_offers": 0,
            "energy_traded": 0,
            "total_cost": 0,
        }
    else:
        info = {
            "energy_to_sell": 0.5,
            "energy_active_in_bids": 0,
            "energy_to_buy": 1.25,
            "energy_active_in_offers": 0,
            "free_storage": 12.6,
            "used_storage": 1.4,
            "energy_traded": 0,
            "total_cost": 0,
        }
    return {
        "asset_info": info,
        "last_slot_asset_info": {"energy_traded": 0, "total_cost": 0},
        "asset_bill": None,
        "area_name": name,
    }


def make_event(n_assets: int, per_house: int = 3, houses_per_community: int = 50) -> bytes:
    """A market event with ``n_assets`` own assets, as raw JSON bytes."""
    houses: dict = {}
    for h in range(max(1, n_assets // per_house)):
        kids = {
            str(uuid.uuid4()): _asset(f"H{h} A{a}", h * per_house + a) for a in range(per_house)
        }
        houses[str(uuid.uuid4())] = _market(f"House {h}", kids)
    communities: dict = {}
    items = list(houses.items())
    for c in range(0, len(items), houses_per_community):
        communities[str(uuid.uuid4())] = _market(
            f"Community {c // houses_per_community}", dict(items[c : c + houses_per_community])
        )
    communities[str(uuid.uuid4())] = {"area_name": "Market Maker"}
    event = {
        "slot_completion": "0%",
        "market_slot": "2024-06-01T00:15",
        "grid_tree": {str(uuid.uuid4()): _market("Grid", communities)},
        "feed_in_tariff_rate": 12,
        "market_maker_rate": 30,
        "event": "market",
        "simulation_id": None,
        "num_ticks": 10.0,
    }
    return orjson.dumps(event)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        raw = make_event(n)
        assert isinstance(decode_event(raw), MarketEvent)
        repeats = max(3, args.repeats if n <= 10_000 else args.repeats // 2)
        # Interleave the two so machine noise hits both alike.
        o_best, o_med = best_and_median(lambda raw=raw: orjson.loads(raw), repeats)
        m_best, m_med = best_and_median(lambda raw=raw: decode_event(raw), repeats)
        o_best2, o_med2 = best_and_median(lambda raw=raw: orjson.loads(raw), repeats)
        o_best, o_med = min(o_best, o_best2), min(o_med, o_med2)
        row = {
            "assets": n,
            "event_mb": round(len(raw) / 1e6, 2),
            "orjson_loads_ms": {"best": round(o_best * 1e3, 2), "median": round(o_med * 1e3, 2)},
            "decode_event_ms": {"best": round(m_best * 1e3, 2), "median": round(m_med * 1e3, 2)},
            "ratio_median": round(m_med / o_med, 2),
        }
        rows.append(row)
        print(
            f"{n:>7} assets  {row['event_mb']:6.2f} MB  orjson.loads {o_med * 1e3:8.2f} ms  "
            f"decode_event {m_med * 1e3:8.2f} ms  ratio {row['ratio_median']:.2f}x"
        )
    path = write_results(
        "protocol", {"what": "market event parse time, median of repeats", "rows": rows}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
