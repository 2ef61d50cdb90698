"""Undervaluation ("minoration de valeur"): declared unit value far below the norm.

The norm is a *reference unit value* per commodity code and origin, learned online as the
median of the log unit values of recent declarations, with the median absolute deviation
(MAD) as its spread. Both are robust: a minority of undervalued declarations in the window
does not drag the reference down. When a CN8 code has too few recent observations for an
origin, the reference backs off to CN6, then CN4, then the chapter.

Why not ``river.stats.MAD``: it approximates the MAD around a running median estimate and
only pickles; an exact window of recent values is as cheap here (median and MAD in C, see
``_robust.pyx``), and its state is a plain list an officer's report can quote.

Splitting, scoring and learning run in C (``_undervaluation.pyx``), with the same floats and
text as the Python expressions they replace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableMapping
from typing import Any, ClassVar, Self

from vigie.schemas import RiskScore

from . import _undervaluation
from ._robust import RankedWindow, UnitValueWindow
from ._undervaluation import LEVELS, ItemUnitValue
from .base import Operator, OperatorState, epoch_seconds

__all__ = ["LEVELS", "ItemUnitValue", "UndervaluationDetector", "UnitValueState", "UnitValueWindow"]


class UnitValueState(OperatorState):
    """Reference windows for one (origin, chapter) key: one window per level and code.

    Window names read ``"CN6:610910:kg"``: level, code prefix, quantity basis (``kg`` or
    the supplementary unit code, since pieces and kilograms are not comparable). The windows
    keep a sorted copy of their values, so every score reads its median and MAD without a
    selection; they are saved exactly as plain :class:`UnitValueWindow` ones.
    """

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self.windows: dict[str, RankedWindow] = {}

    def window(self, name: str) -> RankedWindow | None:
        return self.windows.get(name)

    def add(self, name: str, value: float, when: float) -> None:
        window = self.windows.get(name)
        if window is None:
            window = self.windows[name] = RankedWindow(self.capacity)
        window.add(value, when)

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "windows": {k: w.to_dict() for k, w in self.windows.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls(data["capacity"])
        state.windows = {k: RankedWindow.from_dict(w, state.capacity) for k, w in data["windows"].items()}
        return state


class UndervaluationDetector(Operator[ItemUnitValue, UnitValueState]):
    """Scores how far below its reference each goods item's unit value is.

    ``score = 1 / (1 + exp(-(z - 3)))`` where ``z`` is the number of robust standard
    deviations (1.4826 x MAD, floored at ``min_spread``) the declared log unit value sits
    below the reference median: 0.5 at 3 deviations below, 0.95 at 6, about 0.05 at the
    median. ``eur_at_stake`` is the duty and VAT on the value shortfall against the
    reference (0 when the item is not below it).

    >>> from datetime import UTC, datetime
    >>> detector = UndervaluationDetector(min_observations=5)
    >>> state = detector.new_state()
    >>> def item(value: float) -> ItemUnitValue:
    ...     return ItemUnitValue("e", "26FR000000000000A1", 1, datetime(2026, 3, 2, tzinfo=UTC), "FR000690",
    ...                          "FR12345678900010", "61091000", "CN", "kg", 100.0, value, 12.0)
    >>> for value in (900, 1000, 1100, 950, 1050, 1000):
    ...     detector.learn_one(item(value), state)
    >>> detector.score_one(item(1000), state).score < 0.1
    True
    >>> low = detector.score_one(item(250), state)
    >>> round(low.score, 3), low.reason_fields["reference_unit_value_eur"], low.reason_fields["level"]
    (1.0, 10.0, 'CN8')
    """

    name: ClassVar[str] = "undervaluation"
    state_type: ClassVar[type[OperatorState]] = UnitValueState

    def __init__(
        self,
        min_observations: int = 20,
        window: int = 128,
        min_spread: float = 0.05,
        vat_rate: float = 0.20,
        z_half: float = 3.0,
    ) -> None:
        self.min_observations = min_observations
        self.window = window
        self.min_spread = min_spread
        self.vat_rate = vat_rate
        self.z_half = z_half

    def new_state(self) -> UnitValueState:
        return UnitValueState(self.window)

    def units(self, event: Any) -> Iterable[tuple[str, ItemUnitValue]]:
        return _undervaluation.units(self, event)

    def learn_one(self, unit: ItemUnitValue, state: UnitValueState) -> None:
        value = math.log(unit.unit_value_eur)
        when = epoch_seconds(unit.event_time)
        for name in _undervaluation.window_names(unit.cn_code, unit.basis):
            state.add(name, value, when)

    def score_one(self, unit: ItemUnitValue, state: UnitValueState) -> RiskScore:
        return _undervaluation.score_one(self, unit, state)

    def score_learn_one(self, unit: ItemUnitValue, state: UnitValueState) -> RiskScore:
        """:meth:`score_one` then :meth:`learn_one`, looking each window up once."""
        return _undervaluation.score_learn_one(self, unit, state)

    def process(self, event: Any, store: MutableMapping[str, UnitValueState]) -> list[RiskScore]:
        """:meth:`Operator.process`, with the per-item loop in C (unless a subclass overrides a step)."""
        return _undervaluation.process(self, event, store)
