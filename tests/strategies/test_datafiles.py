"""Data files: the shipped ones load; malformed ones fail at start-up naming file, line, column."""

from __future__ import annotations

import json

import pytest

from gridfleet.strategies import registry
from gridfleet.strategies.datafiles import (
    DataFileError,
    load_aziiz,
    load_profile,
    load_requirements,
    load_tou,
)
from tests.strategies.helpers import STRATEGY_DATA

TOU_HEADER = "Time;Community;Grid;;;\n"


def test_shipped_files_load():
    tou = load_tou(STRATEGY_DATA / "ToU.csv")
    assert tou.fee("Grid", "00:00") == 1.68 and tou.fee("Community", "23:45") == 0.46
    aziiz = load_aziiz(STRATEGY_DATA / "aziiz.json")
    assert aziiz.steps["Grid"][0] == (10.0, 0.9)
    assert aziiz.fee("Grid", 50.0) == 30 and aziiz.fee("Grid", 50.01) == 2000
    reqs = load_requirements(STRATEGY_DATA / "requirements.json")
    assert (
        reqs.by_load["Load 2 L21"][0].energy_kwh == 10 and reqs.by_load["Load 2 L21"][0].rate == 3
    )
    assert reqs.partner_names() == {"PV 9 (15kW)", "PV 5 (10kW)"}


@pytest.mark.parametrize(
    ("body", "line", "column", "reason"),
    [
        ("00:00:00;0,42;1,68;;;\n00:15:00;0,4x;1,68;;;\n", 3, 2, "not a number"),
        ("00:00:00;0,42;-1;;;\n", 2, 3, "not a number >= 0"),
        ("00:00:00;0,42\n", 2, 2, "columns"),
        ("25:00:00;0,42;1;;;\n", 2, 1, "not HH:MM:SS"),
        ("00:00:00;0,42;1;;;\n00:00:00;0,5;1;;;\n", 3, 1, "already given on line 2"),
        ("00:00:00;0,42;1;;7;\n", 2, 5, "no market name"),
        ("", 2, None, "no fee rows"),
    ],
)
def test_malformed_tou_rows_are_refused(tmp_path, body, line, column, reason):
    path = tmp_path / "ToU.csv"
    path.write_text(TOU_HEADER + body)
    with pytest.raises(DataFileError) as info:
        load_tou(path)
    error = info.value
    assert (error.path, error.line, error.column) == (path, line, column)
    assert reason in str(error)
    assert str(error).startswith(f"{path}:{line}")


def test_tou_header_errors(tmp_path):
    path = tmp_path / "ToU.csv"
    path.write_text("Hour;Grid\n00:00:00;1\n")
    with pytest.raises(DataFileError, match=r"ToU.csv:1:1: first column must be 'Time'"):
        load_tou(path)
    path.write_text("Time;Grid;Grid\n")
    with pytest.raises(DataFileError, match=r":1:3: market 'Grid' appears twice"):
        load_tou(path)


def test_bad_tou_is_refused_when_the_strategy_is_built(tmp_path):
    path = tmp_path / "ToU.csv"
    path.write_text(TOU_HEADER + "00:00:00;zero;1;;;\n")
    with pytest.raises(DataFileError, match=r"ToU.csv:2:2"):
        registry.build("grid_fee_tou", {"path": str(path)})


def aziiz(tmp_path, data):
    path = tmp_path / "aziiz.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def step(threshold, fee):
    return {"Import / Export threshold": threshold, "Grid fee": fee}


@pytest.mark.parametrize(
    ("data", "json_path", "reason"),
    [
        (
            {"Grid": [step(10, 1), step(10, 2)]},
            '$["Grid"][1]["Import / Export threshold"]',
            "ascending",
        ),
        (
            {"Grid": [step(20, 1), step(10, 2)]},
            '$["Grid"][1]["Import / Export threshold"]',
            "ascending",
        ),
        ({"Grid": [step(10, -1)]}, '$["Grid"][0]["Grid fee"]', ">= 0"),
        ({"Grid": [step(True, 1)]}, '$["Grid"][0]["Import / Export threshold"]', "number"),
        ({"Grid": [{"Grid fee": 1}]}, '$["Grid"][0]', "missing"),
        ({"Grid": [{**step(1, 1), "Fee": 2}]}, '$["Grid"][0]', "unknown keys"),
        ({"Grid": []}, '$["Grid"]', "non-empty"),
        ([1, 2], "$", "object"),
    ],
)
def test_malformed_aziiz_is_refused(tmp_path, data, json_path, reason):
    path = aziiz(tmp_path, data)
    with pytest.raises(DataFileError) as info:
        load_aziiz(path)
    assert info.value.json_path == json_path
    assert reason in str(info.value)
    assert str(path) in str(info.value)


def test_aziiz_json_syntax_error_has_line_and_column(tmp_path):
    path = aziiz(
        tmp_path, '{\n  "Grid": [\n    {"Import / Export threshold": 10,, "Grid fee": 1}\n  ]\n}'
    )
    with pytest.raises(DataFileError) as info:
        registry.build("grid_fee_aziiz", {"path": str(path)})
    assert (info.value.line, info.value.column) == (3, 38)  # the second comma


@pytest.mark.parametrize(
    ("entry", "json_path"),
    [
        (
            {"Trading Partners": "PV", "Energy Types": [], "Energy": 1, "Rate": 1},
            '$["L"][0]["Trading Partners"]',
        ),
        (
            {"Trading Partners": [], "Energy Types": [], "Energy": 0, "Rate": 1},
            '$["L"][0]["Energy"]',
        ),
        (
            {"Trading Partners": [], "Energy Types": [], "Energy": 1, "Rate": "3"},
            '$["L"][0]["Rate"]',
        ),
        ({"Trading Partners": [], "Energy Types": [], "Energy": 1}, '$["L"][0]'),
    ],
)
def test_malformed_requirements_are_refused(tmp_path, entry, json_path):
    path = tmp_path / "requirements.json"
    path.write_text(json.dumps({"L": [entry]}))
    with pytest.raises(DataFileError) as info:
        load_requirements(path)
    assert info.value.json_path == json_path


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("time,kWh\n12:00,1\n12:15,x\n", 3, 2),
        ("time,kWh\n12:00,1\nnoon,1\n", 3, 1),
        ("time,kWh\n12:00,-1\n", 2, 2),
        ("time,kWh\n12:00,1,2\n", 3 - 1, 3),
        ("time,kWh\n12:00,1\n12:00,2\n", 3, 1),
        ("a,b,c,d\n", 1, None),
    ],
)
def test_malformed_profiles_are_refused(tmp_path, text, line, column):
    path = tmp_path / "Load.csv"
    path.write_text(text)
    with pytest.raises(DataFileError) as info:
        load_profile(path)
    assert (info.value.line, info.value.column) == (line, column)


def test_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="file not found"):
        load_tou(tmp_path / "nope.csv")
