"""Undervaluation ("minoration de valeur"): declared unit value far below the norm.

The norm is a *reference unit value* per commodity code and origin, learned online as the
median of the log unit values of recent declarations, with the median absolute deviation
(MAD) as its spread. Both are robust: a minority of undervalued declarations in the window
does not drag the reference down. When a CN8 code has too few recent observations for an
origin, the reference backs off to CN6, then CN4, then the chapter.

Why not ``river.stats.MAD``: it approximates the MAD around a running median estimate and
only pickles; an exact window of recent values is as cheap here (median and MAD in C, see
``_robust.pyx``), and its state is a plain list an officer's report can quote.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar, Self

from vigie.schemas import ImportDeclaration, RiskScore

from ._robust import UnitValueWindow
from .base import Operator, OperatorState, epoch_seconds

__all__ = ["LEVELS", "ItemUnitValue", "UndervaluationDetector", "UnitValueState", "UnitValueWindow"]

LEVELS: tuple[tuple[str, int], ...] = (("CN8", 8), ("CN6", 6), ("CN4", 4), ("chapter", 2))
"""Back-off hierarchy: level name and how many leading digits of the CN code it keeps."""

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@lru_cache(maxsize=1 << 16)  # CN codes x quantity bases: bounded by the nomenclature
def _window_names(cn_code: str, basis: str) -> tuple[str, ...]:
    """Names of the windows an item of ``cn_code`` per ``basis`` reads and feeds, in :data:`LEVELS` order.

    >>> _window_names("61091000", "kg")
    ('CN8:61091000:kg', 'CN6:610910:kg', 'CN4:6109:kg', 'chapter:61:kg')
    """
    return tuple(f"{level}:{cn_code[:digits]}:{basis}" for level, digits in LEVELS)


class UnitValueState(OperatorState):
    """Reference windows for one (origin, chapter) key: one window per level and code.

    Window names read ``"CN6:610910:kg"``: level, code prefix, quantity basis (``kg`` or
    the supplementary unit code, since pieces and kilograms are not comparable).
    """

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self.windows: dict[str, UnitValueWindow] = {}

    def window(self, name: str) -> UnitValueWindow | None:
        return self.windows.get(name)

    def add(self, name: str, value: float, when: float) -> None:
        window = self.windows.get(name)
        if window is None:
            window = self.windows[name] = UnitValueWindow(self.capacity)
        window.add(value, when)

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "windows": {k: w.to_dict() for k, w in self.windows.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls(data["capacity"])
        state.windows = {k: UnitValueWindow.from_dict(w, state.capacity) for k, w in data["windows"].items()}
        return state


@dataclass(slots=True)
class ItemUnitValue:
    """One goods item seen by the undervaluation detector (not frozen: frozen dataclasses build slower)."""

    event_id: str
    mrn: str
    item_number: int
    event_time: datetime
    office: str
    importer_eori: str
    cn_code: str
    origin_country: str
    basis: str
    """``kg`` or the supplementary unit code the unit value is expressed per."""
    quantity: float
    customs_value_eur: float
    duty_rate_pct: float

    @property
    def unit_value_eur(self) -> float:
        return self.customs_value_eur / self.quantity


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
        if not isinstance(event, ImportDeclaration):
            return
        event_id, mrn, when, office, importer = (
            event.event_id, event.mrn, event.event_time, event.customs_office, event.importer_eori
        )  # fmt: skip
        for item in event.goods_items:
            if item.supplementary_units and item.supplementary_unit_code:
                basis, quantity = item.supplementary_unit_code, item.supplementary_units
            else:
                basis, quantity = "kg", item.net_mass_kg
            cn_code, origin = item.cn_code, item.origin_country
            unit = ItemUnitValue(
                event_id, mrn, item.item_number, when, office, importer, cn_code, origin, basis, quantity,
                item.customs_value_eur, item.duty_rate_pct,
            )  # fmt: skip
            yield f"{origin}:{cn_code[:2]}", unit

    def learn_one(self, unit: ItemUnitValue, state: UnitValueState) -> None:
        value = math.log(unit.unit_value_eur)
        when = epoch_seconds(unit.event_time)
        for name in _window_names(unit.cn_code, unit.basis):
            state.add(name, value, when)

    def score_one(self, unit: ItemUnitValue, state: UnitValueState) -> RiskScore:
        windows = state.windows
        return self._score_windows(unit, [windows.get(name) for name in _window_names(unit.cn_code, unit.basis)])

    def score_learn_one(self, unit: ItemUnitValue, state: UnitValueState) -> RiskScore:
        """:meth:`score_one` then :meth:`learn_one`, looking each window up once."""
        windows = state.windows
        found: list[UnitValueWindow] = []
        for name in _window_names(unit.cn_code, unit.basis):
            window = windows.get(name)
            if window is None:
                window = windows[name] = UnitValueWindow(state.capacity)  # empty: scores as if absent
            found.append(window)
        score = self._score_windows(unit, found)
        value = math.log(unit.unit_value_eur)
        when = epoch_seconds(unit.event_time)
        for window in found:
            window.add(value, when)
        return score

    def _score_windows(self, unit: ItemUnitValue, windows: Sequence[UnitValueWindow | None]) -> RiskScore:
        """The score of ``unit`` against its CN8, CN6, CN4 and chapter windows (None: never fed)."""
        reference = None
        for (level, _), window in zip(LEVELS, windows, strict=True):
            if window is not None and window.size >= self.min_observations:
                reference = level, window
                break
        if reference is None:
            cn8 = windows[0]
            have = cn8.seen if cn8 else 0
            reason = (
                f"No reference unit value yet for CN {unit.cn_code} from {unit.origin_country}: "
                f"{have} declaration(s) seen, {self.min_observations} needed at some level of CN8/CN6/CN4/chapter."
            )
            return self._score(unit, 0.0, 0.0, reason, {"level": None, "observations": float(have)})

        level, window = reference
        median, mad = window.median_mad()
        spread = max(_MAD_TO_SIGMA * mad, self.min_spread)
        declared_uv = unit.customs_value_eur / unit.quantity
        z = (median - math.log(declared_uv)) / spread
        score = 1.0 / (1.0 + math.exp(-(z - self.z_half)))
        reference_uv = math.exp(median)
        shortfall = max(0.0, reference_uv * unit.quantity - unit.customs_value_eur)
        duty = shortfall * unit.duty_rate_pct / 100.0
        vat = (shortfall + duty) * self.vat_rate
        below_pct = 100.0 * (1.0 - declared_uv / reference_uv)
        per = unit.basis
        group = f"CN {unit.cn_code} from {unit.origin_country}"
        size = window.size
        basis_text = f"median of {size} recent declarations at {level} level"
        if below_pct > 0:
            reason = (
                f"Declared {declared_uv:,.2f} EUR/{per} is {below_pct:.0f}% below the reference "
                f"{reference_uv:,.2f} EUR/{per} for {group} ({basis_text}, {z:.1f} robust SD below); "
                f"value shortfall {shortfall:,.0f} EUR, duty {duty:,.0f} EUR and VAT {vat:,.0f} EUR at stake."
            )
        else:
            reason = (
                f"Declared {declared_uv:,.2f} EUR/{per} is at or above the reference "
                f"{reference_uv:,.2f} EUR/{per} for {group} ({basis_text})."
            )
        fields: dict[str, float | str | None] = {
            "level": level,
            "observations": float(size),
            "reference_unit_value_eur": round(reference_uv, 4),
            "declared_unit_value_eur": round(declared_uv, 4),
            "unit": per,
            "below_reference_pct": round(below_pct, 2),
            "robust_z": round(z, 3),
            "value_shortfall_eur": round(shortfall, 2),
            "duty_at_stake_eur": round(duty, 2),
            "vat_at_stake_eur": round(vat, 2),
        }
        return self._score(unit, score, duty + vat, reason, fields)

    def _score(
        self, unit: ItemUnitValue, score: float, at_stake: float, reason: str, fields: dict[str, float | str | None]
    ) -> RiskScore:
        return self.risk_score(
            subject_event_id=unit.event_id,
            subject_type="declaration",
            subject_reference=unit.mrn,
            item_number=unit.item_number,
            event_time=unit.event_time,
            office=unit.office,
            operator_eori=unit.importer_eori,
            cn_code=unit.cn_code,
            origin_country=unit.origin_country,
            score=score,
            eur_at_stake=at_stake,
            reason=reason,
            reason_fields=fields,
        )
