"""Loaders for the data files strategies read: ToU.csv, aziiz.json, requirements.json, profiles.

Files are read and validated once, when a strategy is built; a strategy never touches the disk
while it evaluates. Every problem raises :class:`DataFileError` naming the file and the line and
column (CSV, JSON syntax) or the JSON path (JSON content), so a bad file stops the fleet at start-up
rather than in the middle of a slot.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridfleet.strategies.base import StrategyError

ABOVE_LAST_THRESHOLD_FEE = 2000.0
"""Aziiz fee (ct/kWh) when the value is above the last threshold, as in the SDK template."""

_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?$")


class DataFileError(StrategyError, ValueError):
    """A data file is missing or malformed; the message starts with ``file:line:column:``."""

    def __init__(
        self,
        path: Path | str,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        json_path: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.column = column
        self.json_path = json_path
        self.reason = message
        where = str(self.path)
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        if json_path is not None:
            where += f": at {json_path}"
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------------------- helpers


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: spreadsheet exports often start with a byte order mark.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataFileError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"cannot read: {exc}") from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError(
            path, f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno
        ) from None


def _clock(text: str) -> str | None:
    """``HH:MM`` or ``HH:MM:SS`` -> ``HH:MM`` (slots start on whole minutes), else None."""
    match = _TIME.match(text.strip())
    if not match:
        return None
    hours, minutes, seconds = int(match[1]), int(match[2]), int(match[3] or 0)
    if hours > 23 or minutes > 59 or seconds != 0:
        return None
    return f"{hours:02d}:{minutes:02d}"


def slot_clock(slot: str) -> str:
    """The ``HH:MM`` of a ``YYYY-MM-DDTHH:MM`` market slot."""
    return slot[11:16]


def _number(text: str, *, decimal_comma: bool) -> float | None:
    text = text.strip()
    if decimal_comma:
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _json_number(value: Any) -> float | None:
    # bool is an int subclass in Python; JSON true/false are not numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _jp(parent: str, key: str | int) -> str:
    return f"{parent}[{key}]" if isinstance(key, int) else f"{parent}[{json.dumps(key)}]"


# ------------------------------------------------------------------------------------ ToU table


@dataclass(frozen=True, slots=True)
class TouTable:
    """Time-of-use grid fees (ct/kWh): market name -> ``HH:MM`` -> fee."""

    path: Path
    fees: dict[str, dict[str, float]]

    @property
    def markets(self) -> list[str]:
        return list(self.fees)

    def fee(self, market: str, clock: str) -> float | None:
        """Fee of ``market`` for a slot starting at ``clock`` (``HH:MM``), None if not listed."""
        return self.fees.get(market, {}).get(clock)


def load_tou(path: Path | str) -> TouTable:
    """Read a ToU.csv: ``;``-separated, decimal comma, ``Time;<market>;<market>;;;...``."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    if not lines or not lines[0].strip():
        raise DataFileError(path, "empty file: expected a header 'Time;<market>;...'", line=1)
    header = lines[0].split(";")
    if header[0].strip().lower() != "time":
        raise DataFileError(
            path, f"first column must be 'Time', got {header[0]!r}", line=1, column=1
        )
    markets: dict[int, str] = {}  # 0-based column -> market name
    for col, raw in enumerate(header[1:], start=1):
        name = raw.strip()
        if not name:
            continue  # the SDK's file ends with empty columns
        if name in markets.values():
            raise DataFileError(path, f"market {name!r} appears twice", line=1, column=col + 1)
        markets[col] = name
    if not markets:
        raise DataFileError(path, "no market column in the header", line=1)
    last_market_col = max(markets)

    fees: dict[str, dict[str, float]] = {name: {} for name in markets.values()}
    seen: dict[str, int] = {}
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split(";")
        if not any(f.strip() for f in fields):
            continue
        clock = _clock(fields[0])
        if clock is None:
            raise DataFileError(path, f"time {fields[0]!r} is not HH:MM:SS", line=line_no, column=1)
        if clock in seen:
            raise DataFileError(
                path, f"time {clock} already given on line {seen[clock]}", line=line_no, column=1
            )
        seen[clock] = line_no
        if len(fields) <= last_market_col:
            raise DataFileError(
                path,
                f"{len(fields)} columns, the header needs at least {last_market_col + 1}",
                line=line_no,
                column=len(fields),
            )
        for col, raw in enumerate(fields[1:], start=1):
            if col not in markets:
                if raw.strip():
                    raise DataFileError(
                        path,
                        f"value {raw!r} under a column with no market name",
                        line=line_no,
                        column=col + 1,
                    )
                continue
            value = _number(raw, decimal_comma=True)
            if value is None or value < 0:
                raise DataFileError(
                    path,
                    f"fee {raw!r} for {markets[col]!r} is not a number >= 0",
                    line=line_no,
                    column=col + 1,
                )
            fees[markets[col]][clock] = value
    if not seen:
        raise DataFileError(path, "no fee rows after the header", line=2)
    return TouTable(path, fees)


# ---------------------------------------------------------------------------------- Aziiz table

_THRESHOLD = "Import / Export threshold"
_FEE = "Grid fee"


@dataclass(frozen=True, slots=True)
class AziizTable:
    """Per market, ascending ``(threshold kWh, fee ct/kWh)`` steps."""

    path: Path
    steps: dict[str, tuple[tuple[float, float], ...]]
    above_last_fee: float = ABOVE_LAST_THRESHOLD_FEE

    @property
    def markets(self) -> list[str]:
        return list(self.steps)

    def fee(self, market: str, value: float) -> float | None:
        """The first step's fee whose threshold is >= ``value``; above them all, the penalty.

        None when the market has no table.
        """
        steps = self.steps.get(market)
        if steps is None:
            return None
        for threshold, fee in steps:
            if value <= threshold:
                return fee
        return self.above_last_fee


def load_aziiz(path: Path | str, above_last_fee: float = ABOVE_LAST_THRESHOLD_FEE) -> AziizTable:
    """Read aziiz.json: ``{market: [{"Import / Export threshold": kWh, "Grid fee": ct}, ...]}``."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise DataFileError(path, "expected a non-empty object {market: [steps]}", json_path="$")
    steps: dict[str, tuple[tuple[float, float], ...]] = {}
    for market, entries in data.items():
        where = _jp("$", market)
        if not isinstance(entries, list) or not entries:
            raise DataFileError(path, "expected a non-empty list of steps", json_path=where)
        market_steps: list[tuple[float, float]] = []
        for i, entry in enumerate(entries):
            at = _jp(where, i)
            if not isinstance(entry, dict):
                raise DataFileError(path, "expected an object", json_path=at)
            unknown = set(entry) - {_THRESHOLD, _FEE}
            if unknown:
                raise DataFileError(path, f"unknown keys {sorted(unknown)}", json_path=at)
            for key in (_THRESHOLD, _FEE):
                if key not in entry:
                    raise DataFileError(path, f"missing {key!r}", json_path=at)
                value = _json_number(entry[key])
                if value is None or value < 0:
                    raise DataFileError(
                        path, f"{entry[key]!r} is not a number >= 0", json_path=_jp(at, key)
                    )
            threshold, fee = float(entry[_THRESHOLD]), float(entry[_FEE])
            if market_steps and threshold <= market_steps[-1][0]:
                raise DataFileError(
                    path,
                    f"thresholds must be ascending: {threshold} after {market_steps[-1][0]}",
                    json_path=_jp(at, _THRESHOLD),
                )
            market_steps.append((threshold, fee))
        steps[market] = tuple(market_steps)
    return AziizTable(path, steps, above_last_fee)


# -------------------------------------------------------------------------------- requirements


@dataclass(frozen=True, slots=True)
class Requirement:
    """One degree-of-freedom entry of a load (names, not uuids: uuids are resolved per tick)."""

    trading_partners: tuple[str, ...]
    energy_types: tuple[str, ...]
    energy_kwh: float | None  # None: the bid's whole energy
    rate: float | None  # None: the bid's rate
    json_path: str = ""  # where it came from, for error messages


@dataclass(frozen=True, slots=True)
class RequirementsFile:
    path: Path
    by_load: dict[str, tuple[Requirement, ...]] = field(default_factory=dict)

    def partner_names(self) -> set[str]:
        return {p for reqs in self.by_load.values() for r in reqs for p in r.trading_partners}


_REQ_KEYS = ("Trading Partners", "Energy Types", "Energy", "Rate")


def load_requirements(path: Path | str) -> RequirementsFile:
    """Read requirements.json: ``{load: [{"Trading Partners", "Energy Types", "Energy", "Rate"}]}``.

    ``"Energy"`` and ``"Rate"`` are numbers or the string ``"None"`` (JSON null is accepted too).
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataFileError(path, "expected an object {load name: [requirements]}", json_path="$")
    by_load: dict[str, tuple[Requirement, ...]] = {}
    for load, entries in data.items():
        where = _jp("$", load)
        if not isinstance(entries, list):
            raise DataFileError(path, "expected a list of requirements", json_path=where)
        reqs = []
        for i, entry in enumerate(entries):
            at = _jp(where, i)
            if not isinstance(entry, dict):
                raise DataFileError(path, "expected an object", json_path=at)
            missing = [k for k in _REQ_KEYS if k not in entry]
            if missing:
                raise DataFileError(path, f"missing keys {missing}", json_path=at)
            unknown = sorted(set(entry) - set(_REQ_KEYS))
            if unknown:
                raise DataFileError(path, f"unknown keys {unknown}", json_path=at)
            partners = _string_list(path, entry["Trading Partners"], _jp(at, "Trading Partners"))
            types = _string_list(path, entry["Energy Types"], _jp(at, "Energy Types"))
            energy = _optional_number(path, entry["Energy"], _jp(at, "Energy"), positive=True)
            rate = _optional_number(path, entry["Rate"], _jp(at, "Rate"), positive=False)
            reqs.append(Requirement(partners, types, energy, rate, at))
        by_load[load] = tuple(reqs)
    return RequirementsFile(path, by_load)


def _string_list(path: Path, value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DataFileError(path, f"expected a list of names, got {value!r}", json_path=where)
    return tuple(value)


def _optional_number(path: Path, value: Any, where: str, *, positive: bool) -> float | None:
    if value is None or value == "None":
        return None
    number = _json_number(value)
    if number is None or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise DataFileError(
            path, f'expected a number {bound} or "None", got {value!r}', json_path=where
        )
    return number


# ------------------------------------------------------------------------------------ profiles


@dataclass(frozen=True, slots=True)
class EnergyProfile:
    """An asset's energy per slot (kWh): forecast and, optionally, measurement.

    Keys are ``YYYY-MM-DDTHH:MM`` for dated rows and ``HH:MM`` for a daily profile that repeats;
    a dated row wins over the daily one.
    """

    path: Path
    forecast: dict[str, float]
    measurement: dict[str, float]

    def _at(self, table: dict[str, float], slot: str) -> float | None:
        value = table.get(slot)
        return value if value is not None else table.get(slot_clock(slot))

    def forecast_for(self, slot: str) -> float | None:
        return self._at(self.forecast, slot)

    def measurement_for(self, slot: str) -> float | None:
        """The measured energy of ``slot``; the forecast stands in when no column is given."""
        if not self.measurement:
            return self.forecast_for(slot)
        return self._at(self.measurement, slot)


def load_profile(path: Path | str) -> EnergyProfile:
    """Read a profile CSV: a header, then ``time, forecast kWh[, measurement kWh]`` per row.

    The separator is ``;`` (with decimal comma allowed) if the header has one, else ``,``.
    ``time`` is ``HH:MM[:SS]`` (daily) or ``YYYY-MM-DD[T ]HH:MM[:SS]``. Energies must be >= 0.
    """
    path = Path(path)
    lines = _read_text(path).splitlines()
    if not lines or not lines[0].strip():
        raise DataFileError(path, "empty file: expected a header 'time,energy_kWh'", line=1)
    sep = ";" if ";" in lines[0] else ","
    n_cols = len([c for c in lines[0].split(sep) if c.strip()])
    if n_cols not in (2, 3):
        raise DataFileError(
            path, "header must have 2 or 3 columns: time, forecast[, measurement]", line=1
        )
    forecast: dict[str, float] = {}
    measurement: dict[str, float] = {}
    for line_no, line in enumerate(lines[1:], start=2):
        fields = [f for f in line.split(sep)]
        while fields and not fields[-1].strip():
            fields.pop()
        if not fields:
            continue
        if len(fields) != n_cols:
            raise DataFileError(
                path,
                f"{len(fields)} columns, the header has {n_cols}",
                line=line_no,
                column=min(len(fields), n_cols) + 1,
            )
        key = _profile_key(fields[0])
        if key is None:
            raise DataFileError(
                path,
                f"time {fields[0]!r} is neither HH:MM nor YYYY-MM-DDTHH:MM",
                line=line_no,
                column=1,
            )
        if key in forecast:
            raise DataFileError(path, f"time {key} given twice", line=line_no, column=1)
        for col, table in ((1, forecast), (2, measurement)):
            if col >= n_cols:
                break
            value = _number(fields[col], decimal_comma=sep == ";")
            if value is None or value < 0:
                raise DataFileError(
                    path,
                    f"energy {fields[col]!r} is not a number >= 0",
                    line=line_no,
                    column=col + 1,
                )
            table[key] = value
    if not forecast:
        raise DataFileError(path, "no rows after the header", line=2)
    return EnergyProfile(path, forecast, measurement)


def _profile_key(text: str) -> str | None:
    text = text.strip()
    match = _DATETIME.match(text)
    if match:
        if int(match[2]) > 23 or int(match[3]) > 59 or int(match[4] or 0) != 0:
            return None
        return f"{match[1]}T{match[2]}:{match[3]}"
    return _clock(text)
