"""The report's figures as PNG bytes (matplotlib's object API: no pyplot, no global state)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

GREEN, ORANGE, RED, BLUE, GREY = "#2e9d5b", "#f0a030", "#d64541", "#3b6fb6", "#888888"
WIDTH, HEIGHT, DPI = 10.0, 3.6, 100


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # no Software/date metadata: the same run gives the same bytes
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _figure(height: float = HEIGHT) -> Figure:
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    return fig


def _style(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _slot_marks(ax: Any, ticks: Sequence[Mapping[str, Any]]) -> None:
    """Thin lines where a new market slot starts, labelled with its time."""
    for i, t in enumerate(ticks):
        if i and t["slot"] != ticks[i - 1]["slot"]:
            ax.axvline(i - 0.5, color=GREY, lw=0.6, ls=":")
    starts = [i for i, t in enumerate(ticks) if i == 0 or t["slot"] != ticks[i - 1]["slot"]]
    ax.set_xticks(starts, [str(ticks[i]["slot"])[-5:] for i in starts])
    ax.set_xlabel("tick round (labels: market slot start)")


def _nan(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _empty(fig: Figure, text: str) -> bytes:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", color=GREY, fontsize=12)
    return _png(fig)


def latency_per_tick(ticks: Sequence[Mapping[str, Any]]) -> bytes:
    """Exchange-measured event-to-first-batch latency (p50, max) per tick vs the deadline."""
    fig = _figure()
    if not ticks:
        return _empty(fig, "no evaluated tick rounds")
    ax = fig.add_subplot()
    x = range(len(ticks))
    # NaN draws as a gap: a tick without any batch shows as a hole, not as 0 ms
    p50 = _nan([t["latency_ms"]["p50"] for t in ticks])
    mx = _nan([t["latency_ms"]["max"] for t in ticks])
    dl = _nan([t["deadline_ms"] for t in ticks])
    ax.fill_between(x, p50, mx, color=BLUE, alpha=0.12, lw=0)
    ax.plot(x, mx, color=BLUE, lw=1, marker=".", ms=3, label="max")
    ax.plot(x, p50, color=BLUE, lw=2, marker=".", ms=4, label="p50")
    ax.step(
        x,
        dl,
        where="mid",
        color=RED,
        lw=1.5,
        ls="--",
        label="deadline (next tick)",
    )
    top = max((v for v in [*mx, *dl] if v == v), default=1.0)  # v == v drops NaN
    ax.set_ylim(0, top * 1.3)  # headroom so the legend never covers the deadline
    _style(ax, "Event-to-batch latency per tick (measured by the exchange)", "ms")
    _slot_marks(ax, ticks)
    ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=3)
    return _png(fig)


def on_time_per_tick(ticks: Sequence[Mapping[str, Any]]) -> bytes:
    """Share of aggregators whose batch was on time, late or missing, per tick."""
    fig = _figure(3.0)
    if not ticks:
        return _empty(fig, "no evaluated tick rounds")
    ax = fig.add_subplot()
    x = list(range(len(ticks)))
    totals = [max(1, t["on_time"] + t["late"] + t["missing"]) for t in ticks]
    on = [100 * t["on_time"] / n for t, n in zip(ticks, totals, strict=True)]
    late = [100 * t["late"] / n for t, n in zip(ticks, totals, strict=True)]
    miss = [100 * t["missing"] / n for t, n in zip(ticks, totals, strict=True)]
    ax.bar(x, on, width=0.9, color=GREEN, label="on time")
    ax.bar(x, late, width=0.9, bottom=on, color=ORANGE, label="late")
    ax.bar(
        x,
        miss,
        width=0.9,
        bottom=[a + b for a, b in zip(on, late, strict=True)],
        color=RED,
        label="missing",
    )
    ax.set_ylim(0, 120)  # the legend sits above the 100 % line
    ax.set_yticks([0, 25, 50, 75, 100])
    _style(ax, "Batches on time per tick (exchange)", "% of aggregators")
    _slot_marks(ax, ticks)
    ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=3)
    return _png(fig)


def energy_per_slot(slots: Sequence[Mapping[str, Any]]) -> bytes:
    """Energy traded per slot (exchange when known, else fleet-side) and average trade rate."""
    fig = _figure()
    rows = [s for s in slots if s["energy_kwh"] is not None or s["fleet_trades"]]
    if not rows:
        return _empty(fig, "no trades")
    ax = fig.add_subplot()
    x = list(range(len(rows)))
    exchange = all(s["energy_kwh"] is not None for s in rows)
    energy = [s["energy_kwh"] if exchange else s["fleet_energy_kwh"] for s in rows]
    ax.bar(x, energy, width=0.6, color=BLUE, label="energy traded")
    ax.set_ylim(0, max([*energy, 1e-9]) * 1.3)  # headroom for the legend
    ax.set_xticks(x, [str(s["slot"])[-5:] for s in rows])
    ax.set_xlabel("market slot")
    src = "exchange" if exchange else "received by the fleet"
    _style(ax, f"Energy traded per slot ({src}) and average trade rate", "kWh")
    rate = _nan([s["avg_rate_ct_kwh"] for s in rows])
    ax2 = ax.twinx()
    ax2.plot(x, rate, color=ORANGE, marker="o", lw=2, label="avg rate")
    ax2.set_ylabel("ct/kWh")
    ax2.set_ylim(0, max([r for r in rate if r == r] or [1.0]) * 1.3)
    ax2.spines[["top"]].set_visible(False)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(
        handles,
        ["energy traded", "avg rate (fleet trades)"],
        loc="upper left",
        fontsize=8,
        frameon=False,
    )
    return _png(fig)


def fees_per_market(markets: Sequence[Mapping[str, Any]], top: int = 20) -> bytes:
    """Grid-fee revenue per market over the run, highest first (top ``top``)."""
    rows = [m for m in markets if m["fee_revenue_ct"] > 0][:top]
    fig = _figure(max(1.6, 0.8 + 0.28 * len(rows)))
    if not rows:
        why = "no market statistics were given" if not markets else "no market earned grid fees"
        return _empty(fig, f"Grid-fee revenue per market: {why}")
    ax = fig.add_subplot()
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [m["fee_revenue_ct"] for m in rows], color=GREEN)
    ax.set_yticks(y, [str(m["market"]) for m in rows], fontsize=8)
    ax.set_xlabel("ct")
    ax.set_title(
        f"Grid-fee revenue per market (top {len(rows)} of {len(markets)})",
        loc="left",
        fontsize=11,
        fontweight="bold",
    )
    ax.grid(True, axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)
