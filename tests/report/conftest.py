"""One report written from the fixture inputs, shared by the HTML and browser tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridfleet.report import write_report
from tests.report import fixtures as fx


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    records = fx.records()
    # a hostile name must come out as text, never as markup
    sim = fx.sim_report()
    sim["aggregators"][fx.B]["name"] = '<script>alert("x")</script>'
    return write_report(out, **fx.inputs(records=records, sim_report=sim))
