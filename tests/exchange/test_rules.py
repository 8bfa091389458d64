"""Every constant of the exchange's rules is defined once, in gridfleet/strategies/rules.py."""

from __future__ import annotations

import ast
from pathlib import Path

from gridfleet.exchange import outbound, rules
from gridfleet.simulator import state
from gridfleet.strategies import invariants
from gridfleet.strategies import rules as strategy_rules

PACKAGE = Path(__file__).resolve().parents[2] / "gridfleet"
HOME = PACKAGE / "strategies" / "rules.py"
RULE_VALUES = {strategy_rules.MIN_ORDER_ENERGY_KWH, strategy_rules.OFFER_TOLERANCE_KWH}


def _definitions(path: Path) -> list[str]:
    """Assignments of a rule's value, or of a number to a rule-like name (``*ENERGY_KWH``,
    ``*TOLERANCE*``): a second home of a rule."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        value = node.value
        number = isinstance(value, ast.Constant) and isinstance(value.value, int | float)
        if not number:
            continue
        assert isinstance(value, ast.Constant)
        rule_like = any(
            n.isupper() and (("MIN_" in n and "ENERGY" in n) or "TOLERANCE" in n) for n in names
        )
        if value.value in RULE_VALUES or rule_like:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {names} = {value.value}")
    return found


def test_the_rules_are_defined_once() -> None:
    seconds = [d for p in sorted(PACKAGE.rglob("*.py")) if p != HOME for d in _definitions(p)]
    assert seconds == []
    assert len(_definitions(HOME)) == 2


def test_every_side_uses_the_one_definition() -> None:
    assert rules.MIN_ORDER_ENERGY_KWH is strategy_rules.MIN_ORDER_ENERGY_KWH
    assert outbound.MIN_ORDER_ENERGY_KWH is strategy_rules.MIN_ORDER_ENERGY_KWH
    assert outbound.OFFER_TOLERANCE_KWH is strategy_rules.OFFER_TOLERANCE_KWH
    assert state.MIN_ENERGY_KWH is strategy_rules.MIN_ORDER_ENERGY_KWH
    assert state.OFFER_TOLERANCE_KWH is strategy_rules.OFFER_TOLERANCE_KWH
    assert invariants.MIN_ORDER_ENERGY_KWH is strategy_rules.MIN_ORDER_ENERGY_KWH
