"""Trade events, the readable definition: an f-string per entry, joined per aggregator.

Frozen copy of ``gridfleet.simulator.trade_events.trade_rows`` / ``trade_event`` as they were
before the events were made in bulk (:func:`gridfleet.simulator.trade_events.trade_payloads`,
held to these byte for byte by tests/simulator/test_trade_events.py). Unlike events_v1 it knows
the order-id prefixes of settlement markets.
"""

from __future__ import annotations

import numpy as np
import orjson

from gridfleet.simulator.grid import Grid
from gridfleet.simulator.numfmt import hex12, reprs, round8
from gridfleet.simulator.state import TradeReport


def _js(x: str) -> str:
    return orjson.dumps(x).decode()


def trade_event(
    trade_list: list[bytes], tree: bytes, fit: float | None, mmr: float | None
) -> bytes:
    """A ``trade`` event; ``trade_list``: the pieces of its entries, serialised and
    comma-separated once joined (:func:`trade_rows`, joined per aggregator)."""
    return b"".join(
        [
            b'{"trade_list":[',
            *trade_list,
            b'],"grid_tree":',
            tree,
            b',"feed_in_tariff_rate":',
            orjson.dumps(fit),
            b',"market_maker_rate":',
            orjson.dumps(mmr),
            b',"event":"trade","simulation_id":null,"num_ticks":10.0}',
        ]
    )


def trade_rows(
    report: TradeReport,
    grid: Grid,
    owner: tuple[np.ndarray, list[str]],
    time_str: str,
    seq: int,
    name_js: list[str] | None = None,
) -> dict[str, list[str]]:
    """Serialised trade-list entries per aggregator key: each side of a trade goes to its
    asset's owner, the counterparty shown as ``anonymous`` (as gsy-e does).

    The readable definition (the engine sends :func:`trade_payloads`, the same bytes): the
    columns are prepared with numpy (owners, ids, which trades concern nobody) and one f-string
    per entry does the rest.
    ``owner`` comes from :func:`owner_array`; ``name_js`` are the asset names as JSON strings.
    """
    n = len(report)
    if n == 0:
        return {}
    own_arr, keys = owner
    buyer = np.asarray(report.buyer, dtype=np.int64)
    seller = np.asarray(report.seller, dtype=np.int64)
    b_own = own_arr[buyer]  # -1 (the Market Maker) reads the extra last slot: nobody
    s_own = own_arr[seller]
    keep = np.flatnonzero((b_own >= 0) | (s_own >= 0))
    if len(keep) == 0:
        return {}
    if name_js is None:
        name_js = [_js(x) for x in grid.asset_name]
    mm = _js(grid.market_maker_name)
    names = [*name_js, mm]  # index -1 is the Market Maker
    uuids = grid.asset_uuid
    bid_seq = np.asarray(report.bid_seq, dtype=np.int64)[keep]
    offer_seq = np.asarray(report.offer_seq, dtype=np.int64)[keep]
    res_b = np.asarray(report.bid_residual, dtype=bool)[keep].tolist()
    res_o = np.asarray(report.offer_residual, dtype=bool)[keep].tolist()
    # numbers and ids rendered in bulk, exactly as repr / round(x, 8) / :012x would
    energy = reprs(np.asarray(report.energy, dtype=np.float64)[keep].tolist())
    price = reprs(round8(np.asarray(report.price, dtype=np.float64)[keep]).tolist())
    fee = reprs(round8(np.asarray(report.fee, dtype=np.float64)[keep]).tolist())
    trade_ids = hex12(keep + seq)
    prefix = report.id_prefix
    bid_ids = [
        f"{prefix}{h}" if q >= 0 else "market-maker-bid"
        for h, q in zip(hex12(np.maximum(bid_seq, 0)), bid_seq.tolist(), strict=True)
    ]
    offer_ids = [
        f"{prefix}{h}" if q >= 0 else "market-maker-offer"
        for h, q in zip(hex12(np.maximum(offer_seq, 0)), offer_seq.tolist(), strict=True)
    ]
    cols = zip(
        buyer[keep].tolist(),
        seller[keep].tolist(),
        b_own[keep].tolist(),
        s_own[keep].tolist(),
        strict=True,
    )
    out: list[list[str]] = [[] for _ in keys]
    for j, (b, s, bo, so) in enumerate(cols):
        b_name, s_name = names[b], names[s]
        bid_id, offer_id, f = bid_ids[j], offer_ids[j], fee[j]
        common = (
            f'"trade_id":"00000000-0000-4000-9000-{trade_ids[j]}","time":"{time_str}",'
            f'"trade_price":{price[j]},"traded_energy":{energy[j]},"total_fee":{f},'
            f'"local_market_fee":{f}'
        )
        ids = (
            f'"seller_origin":{s_name},"buyer_origin":{b_name},"bid_id":"{bid_id}",'
            f'"offer_id":"{offer_id}","residual_bid_id":"{bid_id if res_b[j] else "None"}",'
            f'"residual_offer_id":"{offer_id if res_o[j] else "None"}"}}'
        )
        if bo >= 0:
            out[bo].append(
                f'{{"event":"trade","asset_id":"{uuids[b]}",{common},'
                f'"seller":"anonymous","buyer":{b_name},{ids}'
            )
        if so >= 0:
            out[so].append(
                f'{{"event":"trade","asset_id":"{uuids[s]}",{common},'
                f'"seller":{s_name},"buyer":"anonymous",{ids}'
            )
    return {keys[k]: rows for k, rows in enumerate(out) if rows}
