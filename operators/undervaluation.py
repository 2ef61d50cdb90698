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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

import numpy as np

from vigie.schemas import ImportDeclaration, RiskScore

from ._robust import median_mad
from .base import Operator, OperatorState

LEVELS: tuple[tuple[str, int], ...] = (("CN8", 8), ("CN6", 6), ("CN4", 4), ("chapter", 2))
"""Back-off hierarchy: level name and how many leading digits of the CN code it keeps."""

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


class UnitValueWindow:
    """The last ``capacity`` log unit values of one group, as a ring buffer.

    ``seen`` counts every value ever added (the buffer holds the most recent ones);
    ``last_seen`` is the event time (epoch seconds) of the latest, for idle-key eviction.
    """

    __slots__ = ("last_seen", "pos", "seen", "values")

    def __init__(self, capacity: int) -> None:
        self.values = np.zeros(capacity, dtype=np.float64)
        self.pos = 0
        self.seen = 0
        self.last_seen = 0.0

    @property
    def size(self) -> int:
        """How many values the window holds now."""
        return min(self.seen, self.values.shape[0])

    def add(self, value: float, when: float) -> None:
        self.values[self.pos] = value
        self.pos = (self.pos + 1) % self.values.shape[0]
        self.seen += 1
        self.last_seen = max(self.last_seen, when)

    def median_mad(self) -> tuple[float, float]:
        """Median and MAD of the values held (log space)."""
        return median_mad(self.values, self.size)

    def to_dict(self) -> dict[str, Any]:
        return {"values": self.values[: self.size].tolist(), "pos": self.pos, "seen": self.seen, "last": self.last_seen}

    @classmethod
    def from_dict(cls, data: dict[str, Any], capacity: int) -> UnitValueWindow:
        window = cls(capacity)
        held = data["values"]
        window.values[: len(held)] = held
        window.pos, window.seen, window.last_seen = data["pos"], data["seen"], data["last"]
        return window


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


@dataclass(frozen=True, slots=True)
class ItemUnitValue:
    """One goods item seen by the undervaluation detector."""

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
        for item in event.goods_items:
            if item.supplementary_units and item.supplementary_unit_code:
                basis, quantity = item.supplementary_unit_code, item.supplementary_units
            else:
                basis, quantity = "kg", item.net_mass_kg
            unit = ItemUnitValue(
                event_id=event.event_id,
                mrn=event.mrn,
                item_number=item.item_number,
                event_time=event.event_time,
                office=event.customs_office,
                importer_eori=event.importer_eori,
                cn_code=item.cn_code,
                origin_country=item.origin_country,
                basis=basis,
                quantity=quantity,
                customs_value_eur=item.customs_value_eur,
                duty_rate_pct=item.duty_rate_pct,
            )
            yield f"{item.origin_country}:{item.cn_code[:2]}", unit

    @staticmethod
    def _window_names(unit: ItemUnitValue) -> Iterable[tuple[str, str]]:
        for level, digits in LEVELS:
            yield level, f"{level}:{unit.cn_code[:digits]}:{unit.basis}"

    def learn_one(self, unit: ItemUnitValue, state: UnitValueState) -> None:
        value = math.log(unit.unit_value_eur)
        when = unit.event_time.timestamp()
        for _, name in self._window_names(unit):
            state.add(name, value, when)

    def score_one(self, unit: ItemUnitValue, state: UnitValueState) -> RiskScore:
        reference = None
        for level, name in self._window_names(unit):
            window = state.window(name)
            if window is not None and window.size >= self.min_observations:
                reference = level, window
                break
        if reference is None:
            cn8 = state.window(f"CN8:{unit.cn_code}:{unit.basis}")
            have = cn8.seen if cn8 else 0
            reason = (
                f"No reference unit value yet for CN {unit.cn_code} from {unit.origin_country}: "
                f"{have} declaration(s) seen, {self.min_observations} needed at some level of CN8/CN6/CN4/chapter."
            )
            return self._score(unit, 0.0, 0.0, reason, {"level": None, "observations": float(have)})

        level, window = reference
        median, mad = window.median_mad()
        spread = max(_MAD_TO_SIGMA * mad, self.min_spread)
        declared_log = math.log(unit.unit_value_eur)
        z = (median - declared_log) / spread
        score = 1.0 / (1.0 + math.exp(-(z - self.z_half)))
        reference_uv = math.exp(median)
        declared_uv = unit.unit_value_eur
        shortfall = max(0.0, reference_uv * unit.quantity - unit.customs_value_eur)
        duty = shortfall * unit.duty_rate_pct / 100.0
        vat = (shortfall + duty) * self.vat_rate
        below_pct = 100.0 * (1.0 - declared_uv / reference_uv)
        per = "kg" if unit.basis == "kg" else unit.basis
        group = f"CN {unit.cn_code} from {unit.origin_country}"
        basis_text = f"median of {window.size} recent declarations at {level} level"
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
            "observations": float(window.size),
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
