"""``report.html``: one self-contained page (inline CSS, PNGs as data URIs, no script)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

DASH = "\u2013"  # en dash: an absent figure

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1d2330;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1080px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 10px}
.sub{color:#5b6475;margin:0 0 18px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.card{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .v{font-size:28px;font-weight:700}
.card .l{color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .n{color:#5b6475;font-size:12px}
.ok{color:#2e9d5b}.warn{color:#c98200}.bad{color:#d64541}
.bar{height:6px;background:#e3e6eb;border-radius:3px;margin-top:6px;overflow:hidden}
.bar span{display:block;height:100%}
section.panel{background:#fff;border-radius:8px;padding:12px 16px;margin:12px 0;box-shadow:0 1px 2px rgba(0,0,0,.08);overflow-x:auto}
figure{margin:0}figure img{width:100%;height:auto;display:block}
figcaption{color:#5b6475;font-size:12px;margin-top:4px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 7px;border-bottom:1px solid #e6e8ec;text-align:right;white-space:nowrap}
th{background:#fafbfc;color:#5b6475;font-weight:600}
td:first-child,th:first-child{text-align:left}
tr.total td{font-weight:600}
.muted{color:#8a92a3}
footer{color:#8a92a3;font-size:12px;margin-top:28px}
"""


def fmt(v: Any, digits: int = 0, unit: str = "") -> str:
    """Numbers with thousands separators; ``None`` as a dash."""
    if v is None:
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    s = f"{v:,.{digits}f}" if isinstance(v, int | float) else str(v)
    return f"{s} {unit}".strip()


def pct(r: float | None) -> str:
    return DASH if r is None else f"{100 * r:.1f} %"


def _tone(r: float | None) -> str:
    if r is None:
        return "muted"
    return "ok" if r >= 0.999 else "warn" if r >= 0.95 else "bad"


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<section class="panel"><figure><img alt="{escape(alt)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{escape(caption)}</figcaption>'
        "</figure></section>"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<section class="panel"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></section>'


def _cards(rep: Mapping[str, Any]) -> str:
    ratio = rep["on_time_ratio"]
    p99, dl = rep["latency_ms"]["p99"], rep["deadline_ms"]
    share = None if p99 is None or not dl else p99 / dl
    lat_tone = "muted" if share is None else "ok" if share < 0.8 else "warn" if share < 1 else "bad"
    width = 0 if share is None else min(100, 100 * share)
    cards = [
        (
            "on time",
            f'<div class="v {_tone(ratio)}">{pct(ratio)}</div>',
            f"{fmt(rep['batches_on_time'])} of {fmt(rep['batches_expected'])} batches; "
            f"{fmt(rep['batches_late'])} late, {fmt(rep['batches_missing'])} missing, "
            f"{fmt(rep['batches_idle'])} idle",
        ),
        (
            "p99 latency",
            f'<div class="v {lat_tone}">{fmt(p99, 0, "ms")}</div>'
            f'<div class="bar"><span class="{lat_tone}" style="width:{width:.0f}%;background:currentColor"></span></div>',
            f"deadline {fmt(dl, 0, 'ms')} (tick interval); p50 {fmt(rep['latency_ms']['p50'], 0, 'ms')}",
        ),
        (
            "trades",
            f'<div class="v">{fmt(rep["trades"])}</div>',
            f"{fmt(rep['commands_sent'])} commands sent, {fmt(rep['commands_rejected'])} rejected",
        ),
        (
            "energy traded",
            f'<div class="v">{fmt(rep["energy_traded_kwh"], 1, "kWh")}</div>',
            "grid fees " + fmt(rep["fee_revenue_ct"], 0, "ct")
            if rep["fee_revenue_ct"] is not None
            else "matched by the exchange",
        ),
    ]
    settled = rep.get("settlement")
    if settled:
        cards.append(
            (
                "settled after the slot",
                f'<div class="v">{fmt(settled["energy_kwh"], 2, "kWh")}</div>',
                f"{fmt(settled['trades'])} settlement trades (not in spot trades); "
                f"{fmt(settled['deviation_kwh'], 2, 'kWh')} deviation measured, "
                f"{fmt(settled['unsettled_kwh'], 2, 'kWh')} left unsettled",
            )
        )
    body = "".join(
        f'<div class="card"><div class="l">{escape(label)}</div>{value}<div class="n">{escape(note)}</div></div>'
        for label, value, note in cards
    )
    return f'<div class="cards">{body}</div>'


def _summary(rep: Mapping[str, Any]) -> str:
    c = rep["client"]
    cc = c["counters"]
    lat = rep["latency_ms"]
    clat = c["latency_ms"]

    def ms(d: Mapping[str, Any]) -> str:
        return " / ".join(fmt(d[k], 0) for k in ("p50", "p95", "p99", "max")) + " ms"

    rows = [
        ("tick rounds evaluated", fmt(rep["ticks"]), fmt(c["rounds"])),
        (
            "batches on time / expected",
            f"{fmt(rep['batches_on_time'])} / {fmt(rep['batches_expected'])}",
            f"{fmt(c['rounds_on_time'])} / {fmt(c['rounds'])} rounds",
        ),
        (
            "batches late / missing",
            f"{fmt(rep['batches_late'])} / {fmt(rep['batches_missing'])}",
            DASH,
        ),
        (
            "idle rounds (nothing to trade, no batch)",
            fmt(rep["batches_idle"]),
            DASH,
        ),
        (
            "rounds undelivered (exchange's Redis down)",
            fmt(rep["undelivered_rounds"])
            + "".join(
                f" · {escape(str(g['first_round']))} .. {escape(str(g['last_round']))}"
                for g in rep["delivery_gaps"]
            ),
            DASH,
        ),
        ("latency p50 / p95 / p99 / max", ms(lat), ms(clat)),
        (
            "commands answered / sent",
            fmt(rep["exchange"].get("commands")),
            fmt(rep["commands_sent"]),
        ),
        ("commands rejected by the exchange", DASH, fmt(rep["commands_rejected"])),
        ("commands refused before sending", DASH, fmt(rep["commands_refused"])),
        ("shards hedged by the coordinator", DASH, fmt(rep["hedged_shards"])),
        ("strategy errors", DASH, fmt(rep["strategy_errors"])),
        ("trades", fmt(rep["trades"]), fmt(cc["trades"]) + " (each side counted)"),
        (
            "energy traded",
            fmt(rep["energy_traded_kwh"], 3, "kWh"),
            fmt(cc["energy_traded_kwh"], 3, "kWh") + " (each side)",
        ),
        *_settlement_rows(rep),
        (
            "late / bad events, lost rounds",
            DASH,
            f"{fmt(cc['late_events'])} / {fmt(cc['bad_events'] + cc['unusable_trees'])} / {fmt(cc['lost_rounds'])}",
        ),
        (
            "outages seen: rounds missed (exchange silent / broker away)",
            DASH,
            f"{fmt(cc['gaps'])}: {fmt(cc['exchange_gap_rounds'])} / {fmt(cc['broker_gap_rounds'])}",
        ),
    ]
    return _table(
        ["", "exchange (measured)", "fleet (client-side)"],
        [(escape(a), b, d) for a, b, d in rows],
    )


def _settlement_rows(rep: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    settled = rep.get("settlement")
    if not settled:
        return []
    return [
        (
            "settlement trades",
            fmt(settled["trades"]),
            fmt(settled["fleet_trades"]) + " (each side counted)",
        ),
        (
            "energy settled",
            fmt(settled["energy_kwh"], 3, "kWh"),
            fmt(settled["fleet_energy_kwh"], 3, "kWh")
            + f" (each side), {fmt(settled['fleet_price_ct'], 1, 'ct')}",
        ),
    ]


def _aggregators(rows: Sequence[Mapping[str, Any]], top: int = 20) -> str:
    shown = rows[:top]
    body = [
        (
            f'{escape(a["name"] or DASH)} <span class="muted">{escape(a["uuid"][:8])}</span>',
            f'<span class="{_tone(a["on_time_ratio"])}">{pct(a["on_time_ratio"])}</span>',
            fmt(a["on_time"]),
            fmt(a["late"]),
            fmt(a["missing"]),
            fmt(a["idle"]),
            fmt(a["trades"]),
            fmt(a["energy_kwh"], 3),
            fmt(a["fees_ct"], 2),
        )
        for a in shown
    ]
    head = [
        "aggregator",
        "on time",
        "on-time batches",
        "late",
        "missing",
        "idle",
        "trades recv.",
        "kWh recv.",
        "fees ct",
    ]
    note = f"<p class='sub'>Worst first; {len(shown)} of {len(rows)} aggregators.</p>"
    return note + _table(head, body)


def _slots(rows: Sequence[Mapping[str, Any]]) -> str:
    body = [
        (
            escape(str(s["slot"])),
            fmt(s["rounds"]),
            f'<span class="{_tone(s["on_time_ratio"])}">{pct(s["on_time_ratio"])}</span>',
            fmt(s["late"]),
            fmt(s["missing"]),
            fmt(s["latency_max_ms"], 0),
            fmt(s["commands"]),
            fmt(s["hedged"]),
            fmt(s["trades"]),
            fmt(s["energy_kwh"], 3),
            fmt(s["fleet_trades"]),
            fmt(s.get("settlement_energy_kwh"), 3),
            fmt(s["avg_rate_ct_kwh"], 2),
            fmt(s["fee_revenue_ct"], 1),
        )
        for s in rows
    ]
    head = [
        "slot", "rounds", "on time", "late", "missing", "max ms", "commands", "hedged",
        "trades", "kWh", "fleet trades", "settled kWh", "avg ct/kWh", "fees ct",
    ]  # fmt: skip
    return _table(head, body)


def _markets(rows: Sequence[Mapping[str, Any]], top: int = 20) -> str:
    if not rows:
        return "<p class='sub'>No market statistics were given for this run.</p>"
    body = [
        (
            escape(m["market"]),
            fmt(m["fee_revenue_ct"], 2),
            fmt(m["traded_kwh"], 3),
            fmt(m["avg_rate"], 2),
            fmt(m["import_kwh"], 3),
            fmt(m["export_kwh"], 3),
        )
        for m in rows[:top]
    ]
    note = f"<p class='sub'>Highest fee revenue first; {min(top, len(rows))} of {len(rows)} markets. Traded energy includes energy passing through a market.</p>"
    return note + _table(
        ["market", "fee revenue ct", "traded kWh", "avg ct/kWh", "import kWh", "export kWh"], body
    )


def render(rep: Mapping[str, Any], plots: Mapping[str, bytes]) -> str:
    """The whole page; ``plots`` maps latency/on_time/energy/fees to PNG bytes."""
    m = rep["meta"]
    facts = " · ".join(
        escape(s)
        for s in (
            f"{fmt(m.get('assets'))} assets",
            f"{fmt(m.get('aggregators'))} aggregators",
            f"{fmt(m.get('markets'))} markets",
            f"{fmt(m.get('slots'))} slots",
            f"tick every {fmt(m.get('tick_interval_s'), 2, 's')}",
            f"tree {m.get('tree', DASH)}",
            f"{fmt(m.get('workers'))} workers",
            f"started {m.get('started_at', DASH)}",
            f"took {fmt(m.get('duration_s'), 1, 's')}",
        )
    )
    command = escape(str(m.get("command", "")))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        "<title>gridfleet run report</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>gridfleet run report</h1>",
        f'<p class="sub">{facts}<br><code>{command}</code></p>',
        _cards(rep),
        "<h2>Summary</h2>",
        _summary(rep),
        "<h2>Deadline</h2>",
        _img(
            plots["latency"],
            "event-to-batch latency per tick",
            "Time from the exchange sending a tick event to receiving the aggregator's first batch, "
            "over the aggregators of each tick. The dashed line is the deadline: the next tick.",
        ),
        _img(
            plots["on_time"],
            "on-time rate per tick",
            "Share of aggregators whose batch arrived before the next tick (exchange's classification).",
        ),
        "<h2>Market</h2>",
        _img(
            plots["energy"],
            "energy traded and average trade rate per slot",
            "Bars: energy matched per market slot. Line: energy-weighted average price of the trades the fleet received.",
        ),
        _img(
            plots["fees"],
            "grid-fee revenue per market",
            "Grid fees earned per market over the run.",
        ),
        "<h2>Per aggregator</h2>",
        _aggregators(rep["per_aggregator"]),
        "<h2>Per slot</h2>",
        _slots(rep["per_slot"]),
        "<h2>Per market</h2>",
        _markets(rep["per_market"]),
        "<footer>Exchange figures are measured by the exchange (arrival of each batch at the exchange); "
        "fleet figures are the fleet's own view. See docs/report.md. Full data: report.json.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts)
