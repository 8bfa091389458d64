"""report.html opens offline: nothing fetched from anywhere, plots embedded, text escaped."""

from __future__ import annotations

import re
from pathlib import Path

from tests.report.pages import image_sizes, parse


def test_page_references_no_url_and_loads_nothing(report_html: Path) -> None:
    html = report_html.read_text("utf-8")
    assert not re.search(r"https?:", html, re.IGNORECASE), "the page must not reference any URL"
    assert not re.search(r"url\(|@import|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE)
    tags = set(parse(html).tags)
    assert not tags & {"script", "link", "iframe", "object", "embed"}, tags


def test_all_four_plots_are_embedded_pngs(report_html: Path) -> None:
    sizes = image_sizes(report_html.read_text("utf-8"))
    assert len(sizes) == 4
    assert all(w >= 600 and h >= 100 for w, h in sizes), sizes


def test_headline_and_tables_show_the_figures(report_html: Path) -> None:
    html = report_html.read_text("utf-8")
    assert "62.5 %" in html  # on time
    assert "700 ms" in html and "deadline 500 ms" in html  # p99 vs deadline
    assert "3.5 kWh" in html  # energy
    assert "agg-a" in html and "House 1" in html and "2024-06-01T00:30" in html
    assert '<script>alert("x")</script>' not in html
    assert "&lt;script&gt;" in html
