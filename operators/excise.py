"""Excise inconsistencies: quantities, physics and arithmetic that do not add up.

Harmonised excise goods (alcohol, tobacco, energy products) are taxed on a physical base
(hl of pure alcohol, hl x degree, 1,000 sticks, 1,000 litres at 15 degC...). Frauds bend
that base: an alcoholic strength cut, a volume that no longer matches the mass, fewer
sticks than the mass holds, a duty below rate x base, spirits filed as wine, goods that
vanish between dispatch and receipt, imports never released or exported. This detector
checks every excise record and every import declaration of excise goods on its own
(**physics and arithmetic**), and reconciles records that should agree (**cross-record**).

**Checks on one record or declaration item** (see :data:`EXCISE_RATES`,
:data:`CN_PRODUCTS`, :data:`STRENGTH_RANGES`, :data:`FUEL_DENSITY`, :data:`STICK_MASS_G`):

* product category vs CN code (spirits 2207/2208, beer 2203, wine 2204, cigarettes 2402 20,
  fuels 2710...); the duty is then recomputed for the category the CN code implies;
* alcoholic strength within the range of the product (e.g. whisky at least 40 % vol);
  pure alcohol = volume x strength (supplementary units in l alc. 100 % on declarations);
* mass = volume x density for fuels (petrol 0.720-0.775 kg/l, diesel 0.820-0.845 kg/l);
  outside the range, the volume the mass implies at the nominal density is taken;
* mass per cigarette within 0.5-1.3 g (pack share included); outside, the sticks the mass
  implies at 1.0 g are taken;
* duty = rate x base, on the corrected base: the EUR gap is what the corrected base owes
  beyond the duty declared;
* on a report of receipt, received below dispatched beyond the loss allowance (shortage).

**Cross-record reconciliation**, each under its own state key:

``imp:<import MRN>``
    The import declaration's excise quantities per CN code, and the records that quote it
    (e-AD, release for consumption, export, report of receipt): quantities dispatched or
    released must account for the quantity imported (the reconciliation unit is the
    excise base quantity: litres, litres of pure alcohol, sticks, kg); a report of receipt
    or an export must match its e-AD (same ARC): shortage, another quantity dispatched,
    a strength that moved. Records without an import MRN use ``arc:<ARC>``.
``ledger:<consignor excise number>``
    e-ADs still open (no report of receipt or export). An e-AD is overdue after its deadline
    (``receipt_deadline_hours``, 6 days by default: the e-AD journey plus the 5 working days
    the consignee has to report receipt). Every runtime wakes the ledger when the stream's
    time passes it (:meth:`ExciseDetector.deadlines_of`, :meth:`ExciseDetector.expire`,
    :mod:`vigie.operators.deadlines`), so a consignor who goes silent is flagged too; a later
    record of the consignor that comes first reveals the gap itself (same score, same id).
    Either way the score concerns the overdue e-AD (``subject_event_id``), not what revealed it.
``ens:<ENS reference>``
    Gross mass on the ENS vs net mass on the import declaration that quotes it: beyond
    what packaging explains (:data:`MAX_GROSS_NET_RATIO`), the undeclared mass could hide
    excise goods (cover loads of cigarettes): its EUR is valued as if it were cigarettes
    (1.2 kg gross per 1,000 sticks), the usual cargo of cover loads.

**Score.** ``gap_eur`` is the excise duty a finding says is missing (corrected base minus
declared duty, plus shortages and quantities unaccounted for, each valued at the product's
rate). A unit with no finding scores 0; one with findings scores
``floor + (1 - floor) x (1 - exp(-gap_eur / scale_eur))`` (defaults 0.1 and 1,000 EUR:
0.1 for an inconsistency that costs nothing, 0.67 at 1,000 EUR, 0.96 at 3,000 EUR).
``eur_at_stake`` adds VAT on that excise (``gap_eur x 1.2``).

**Exposure of consistent movements.** An e-AD or an export with no finding still moves goods
without excise paid: if they are diverted (never received, exported only on paper), the whole
duty under suspension is lost, and these records alone cannot show it until the receipt
deadline passes or at all. Such a record scores ``suspension_prior`` (default 0.05, a prior
chance of diversion, not a finding) with that duty plus VAT as ``eur_at_stake``, so a fusion
ranking by expected revenue puts large suspended movements before small ones.

**Not detected.** A false export (an e-AD to export followed by an export record, goods sold
at home) looks exactly like a real one in these records: it needs the exit confirmation of
the office of export. Tolerances and the reference tables are plausible, French-like
values (2025, rounded, as in the synthetic world): a deployment loads the national rates,
its product register and its own tolerances.

**Memory.** Per key: one ENS summary; up to ``max_lines`` CN lines and ``max_movements``
e-ADs per import; up to ``max_open`` open e-ADs per consignor (the oldest is dropped and
counted). Every state records ``last_seen`` (event time) so a runtime can evict idle keys:
an import's records arrive within days, so a retention of ``receipt_deadline_hours`` plus a
margin (e.g. 30 days) loses nothing. ``ens:`` keys only wait for the declaration that quotes
their ENS (lodged on or soon after arrival), so they are forgotten ``ens_retention_days`` after
the ETA: they are most of the keys, one per heavy consignment.

**Speed.** Most events are only weighed (an ENS, a declaration quoting one): the split into
units, the units and the mass comparison are in C (:mod:`._excise`), as is the scan of a
consignor's open e-ADs; records and declarations of excise goods are checked here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar, Self

from vigie.schemas import ExciseMovement, RiskScore

from ._excise import (
    DeclaredExcise,
    DeclaredExciseItem,
    DeclaredMass,
    EnsMass,
    ExcisePath,
    ExciseRecord,
    learn_ens,
    overdue,
)
from .base import Operator, OperatorState, epoch_seconds


# --- reference tables ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExciseRate:
    """Excise rate: ``amount`` EUR per unit of ``base``.

    Bases: ``hl_pure_alcohol`` (hl x strength / 100), ``hl_degree`` (hl x % vol), ``hl``,
    ``1000_litres`` (at 15 degC), ``kg``, ``stick``.
    """

    base: str
    amount: float


EXCISE_RATES: dict[str, ExciseRate] = {
    "spirits": ExciseRate("hl_pure_alcohol", 1800.0),
    "beer": ExciseRate("hl_degree", 7.5),
    "wine": ExciseRate("hl", 4.10),
    "intermediate": ExciseRate("hl", 200.0),
    # 70 EUR per 1,000 sticks + 55 % of a retail price of 0.60 EUR a stick (12 EUR a pack of 20).
    "cigarettes": ExciseRate("stick", 0.070 + 0.55 * 0.60),
    "cigars": ExciseRate("stick", 0.30),
    "fine_cut_tobacco": ExciseRate("kg", 300.0),
    "petrol": ExciseRate("1000_litres", 683.0),
    "diesel": ExciseRate("1000_litres", 594.0),
    "heating_oil": ExciseRate("1000_litres", 156.2),
}
"""French-like 2025 excise rates, rounded (the synthetic world's rates; a deployment loads the national ones)."""

CN_PRODUCTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("240210", ("cigars",)),
    ("240220", ("cigarettes",)),
    ("2402", ("cigarettes", "cigars")),
    ("2403", ("fine_cut_tobacco",)),
    ("2203", ("beer",)),
    ("2204", ("wine", "intermediate")),
    ("2205", ("intermediate", "wine")),
    ("2206", ("wine", "intermediate", "beer")),
    ("2207", ("spirits",)),
    ("2208", ("spirits",)),
    ("271012", ("petrol",)),
    ("271019", ("diesel", "heating_oil")),
    ("2710", ("petrol", "diesel", "heating_oil")),
)
"""Excise categories a CN code allows, longest prefix first; the first is the default."""

STRENGTH_RANGES: tuple[tuple[str, float, float], ...] = (
    ("220830", 40.0, 100.0),  # whisky
    ("220840", 37.5, 100.0),  # rum
    ("220850", 37.5, 100.0),  # gin
    ("220860", 37.5, 100.0),  # vodka
    ("220820", 36.0, 100.0),  # grape brandy
    ("2208", 15.0, 100.0),  # spirit drinks
    ("2207", 80.0, 100.0),  # undenatured ethyl alcohol
    ("2203", 2.8, 14.0),  # beer (typical commercial range)
    ("2204", 8.5, 22.0),  # wine, liqueur wine
    ("2205", 14.5, 22.0),  # vermouth
    ("2206", 1.2, 22.0),  # cider, perry, mead
)
"""Plausible alcoholic strength (% vol) by CN prefix: EU minimum strengths of spirit drinks
(Regulation (EU) 2019/787), typical ranges otherwise."""

FUEL_DENSITY: dict[str, tuple[float, float, float]] = {
    "petrol": (0.720, 0.775, 0.745),
    "diesel": (0.820, 0.845, 0.835),
    "heating_oil": (0.820, 0.860, 0.845),
}
"""(min, max, nominal) density at 15 degC in kg/l (EN 228, EN 590)."""

STICK_MASS_G: tuple[float, float, float] = (0.5, 1.3, 1.0)
"""(min, max, nominal) grams per cigarette or cigar stick, pack share included."""

LIQUID_DENSITY = 1.0
"""kg per litre assumed for beverages when only a mass is known."""

MAX_GROSS_NET_RATIO: tuple[tuple[str, float], ...] = (("22", 2.0), ("33", 2.0), ("", 1.7))
"""Largest plausible ENS gross mass / declared net mass by CN chapter (beverages and
cosmetics travel in glass); ``""`` is the default."""

COVER_KG_PER_1000_STICKS = 1.2
"""Gross kg of 1,000 smuggled cigarettes with their master cases, to value undeclared mass."""

_ALCOHOL = frozenset(("beer", "wine", "intermediate", "spirits"))
_FUELS = frozenset(FUEL_DENSITY)
_STICKS = frozenset(("cigarettes", "cigars"))
QUANTITY_UNIT: dict[str, str] = {
    **dict.fromkeys(_ALCOHOL, "l"),
    **dict.fromkeys(_FUELS, "l"),
    **dict.fromkeys(_STICKS, "sticks"),
    "fine_cut_tobacco": "kg",
}
"""The ``quantity_unit`` an excise record of each category should use."""

RECONCILIATION_UNIT: dict[str, str] = {
    **dict.fromkeys(("beer", "wine", "intermediate"), "l"),
    "spirits": "l alc. 100 %",
    **dict.fromkeys(_FUELS, "l"),
    **dict.fromkeys(_STICKS, "sticks"),
    "fine_cut_tobacco": "kg",
}
"""Unit in which imports and records of a category are reconciled."""

VAT_RATE = 0.20
_EXCISE_CHAPTERS = frozenset(("22", "24", "27"))
_RECORD_KINDS = {
    "e_ad": "e-AD",
    "report_of_receipt": "Report of receipt",
    "release_for_consumption": "Release for consumption",
    "export": "Export",
}
"""How a reason names each record type."""


@lru_cache(maxsize=4096)  # a few hundred CN codes of excise goods, looked up for every record and item
def products_for_cn(cn_code: str) -> tuple[str, ...]:
    """Excise categories allowed for a CN code (empty: not an excise good).

    >>> products_for_cn("22083030"), products_for_cn("27101943"), products_for_cn("61091000")
    (('spirits',), ('diesel', 'heating_oil'), ())
    """
    if cn_code[:2] not in _EXCISE_CHAPTERS:
        return ()
    for prefix, products in CN_PRODUCTS:
        if cn_code.startswith(prefix):
            return products
    return ()


def strength_range(cn_code: str) -> tuple[float, float] | None:
    for prefix, low, high in STRENGTH_RANGES:
        if cn_code.startswith(prefix):
            return low, high
    return None


def excise_duty(
    product: str,
    volume_l: float | None = None,
    strength: float | None = None,
    mass_kg: float | None = None,
    sticks: float | None = None,
) -> float:
    """Excise in EUR: rate x base for ``product``.

    >>> round(excise_duty("spirits", volume_l=1000.0, strength=40.0), 2)  # 4 hl of pure alcohol
    7200.0
    """
    rate = EXCISE_RATES[product]
    base = rate.base
    if base == "hl_pure_alcohol":
        quantity = (volume_l or 0.0) / 100.0 * (strength or 0.0) / 100.0
    elif base == "hl_degree":
        quantity = (volume_l or 0.0) / 100.0 * (strength or 0.0)
    elif base == "hl":
        quantity = (volume_l or 0.0) / 100.0
    elif base == "1000_litres":
        quantity = (volume_l or 0.0) / 1000.0
    elif base == "kg":
        quantity = mass_kg or 0.0
    else:
        quantity = sticks or 0.0
    return rate.amount * quantity


def duty_per_reconciliation_unit(product: str, strength: float | None) -> float:
    """EUR of excise per unit of :data:`RECONCILIATION_UNIT` (beer needs its strength)."""
    unit = RECONCILIATION_UNIT[product]
    if unit == "l alc. 100 %":
        return EXCISE_RATES[product].amount / 100.0
    if unit == "l":
        return excise_duty(product, volume_l=1.0, strength=strength)
    if unit == "sticks":
        return excise_duty(product, sticks=1.0)
    return excise_duty(product, mass_kg=1.0)


def _fmt_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def _q(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


# --- assessment ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class Assessment:
    """Findings on one unit: sentences for the officer and the EUR of excise each says is missing.

    ``duty_gap``: corrected base x rate minus declared duty; ``other_gaps``: missing
    quantities (shortage, unaccounted imports) valued at the rate. They add up: each
    concerns different goods.
    """

    findings: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    duty_gap: float = 0.0
    other_gaps: float = 0.0
    fields: dict[str, float | str | None] = field(default_factory=dict)

    def add(self, code: str, text: str, gap_eur: float = 0.0) -> None:
        self.codes.append(code)
        self.findings.append(text)
        self.other_gaps += max(0.0, gap_eur)

    @property
    def gap_eur(self) -> float:
        return max(0.0, self.duty_gap) + self.other_gaps


@dataclass(slots=True)
class CorrectedFacts:
    """A record's or item's physical base after the physics checks (what the goods really are)."""

    product: str
    volume_l: float | None
    strength: float | None
    mass_kg: float | None
    sticks: float | None

    def duty(self) -> float:
        return excise_duty(self.product, self.volume_l, self.strength, self.mass_kg, self.sticks)

    def reconciliation_quantity(self) -> float | None:
        """Quantity in :data:`RECONCILIATION_UNIT` of the product, None if it cannot be told."""
        unit = RECONCILIATION_UNIT[self.product]
        if unit == "l alc. 100 %":
            if self.volume_l is None or self.strength is None:
                return None
            return self.volume_l * self.strength / 100.0
        if unit == "l":
            return self.volume_l
        if unit == "sticks":
            return self.sticks
        return self.mass_kg


# --- units -------------------------------------------------------------------------------------------------
ExciseUnit = EnsMass | DeclaredMass | DeclaredExcise | ExciseRecord

AssessedItem = tuple[Assessment, CorrectedFacts, float | None, float]
"""A declared item's findings, corrected facts, reconciliation quantity and its tolerance."""


# --- state -------------------------------------------------------------------------------------------------
class ExciseState(OperatorState):
    """State of one key; which parts are used depends on the key's prefix.

    ``ens`` (``ens:``): ``{"id", "t", "gross", "n"}`` of the ENS. ``lines`` (``imp:``,
    ``arc:``): per CN code, ``{"product", "unit", "imported", "accounted", "tolerance",
    "item"}``: the quantity the import declared in the reconciliation unit, what the records
    quoting it accounted for so far, and the relative gap tolerated (wider when the
    quantity was derived from a mass). ``movements`` (``imp:``, ``arc:``): per ARC, the e-AD's
    ``{"id", "t", "product", "unit", "q", "strength", "closed"}``. ``office``: customs office
    of the import. ``open`` (``ledger:``): per ARC, the open e-AD's ``{"id", "t", "cn",
    "product", "q", "unit", "duty", "mrn"}``; ``dropped``: open e-ADs forgotten because
    ``max_open`` was reached. ``last_seen``: latest event time (epoch s) on this key.

    :meth:`to_dict` shares the state's containers (no copy on every checkpoint): serialise
    it, do not modify it.
    """

    __slots__ = ("dropped", "ens", "last_seen", "lines", "movements", "office", "open")

    def __init__(self) -> None:
        self.ens: dict[str, Any] | None = None
        self.lines: dict[str, dict[str, Any]] = {}
        self.movements: dict[str, dict[str, Any]] = {}
        self.office: str | None = None
        self.open: dict[str, dict[str, Any]] = {}
        self.dropped = 0
        self.last_seen = 0.0

    def touch(self, when: float) -> None:
        if when > self.last_seen:  # max(last_seen, when), without the call
            self.last_seen = when

    def last_activity(self) -> float | None:
        return self.last_seen

    def to_dict(self) -> dict[str, Any]:
        return {
            "ens": self.ens,
            "lines": self.lines,
            "movements": self.movements,
            "office": self.office,
            "open": self.open,
            "dropped": self.dropped,
            "last_seen": self.last_seen,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls()
        state.ens = None if data["ens"] is None else dict(data["ens"])
        state.lines = {k: dict(v) for k, v in data["lines"].items()}
        state.movements = {k: dict(v) for k, v in data["movements"].items()}
        state.office = data["office"]
        state.open = {k: dict(v) for k, v in data["open"].items()}
        state.dropped = data["dropped"]
        state.last_seen = data["last_seen"]
        return state


# --- the detector ---------------------------------------------------------------------------------------
class ExciseDetector(Operator[ExciseUnit, ExciseState]):
    """Scores excise records and declarations of excise goods for inconsistencies (module docstring).

    >>> from datetime import UTC, datetime
    >>> from vigie.schemas import ExciseMovement
    >>> detector = ExciseDetector()
    >>> record = ExciseMovement(event_id="x1", event_time=datetime(2026, 3, 2, tzinfo=UTC), source_system="emcs",
    ...     record_type="release_for_consumption", product_category="spirits", cn_code="22083030",
    ...     operator_eori="FR12345678900010", consignor_excise_number="FR012345E0001", volume_litres=1000.0,
    ...     alcohol_strength_pct=20.0, dispatched_quantity=1000.0, quantity_unit="l", duty_declared_eur=3600.0)
    >>> [(key, type(unit).__name__) for key, unit in detector.units(record)]
    [('op:FR012345E0001:spirits', 'ExciseRecord'), ('ledger:FR012345E0001', 'ExciseRecord')]
    >>> score = detector.process(record, {})[0]
    >>> round(score.score, 3), score.reason_fields["excise_gap_eur"]
    (0.975, 3600.0)
    >>> print(score.reason)
    Release for consumption of spirits (CN 22083030), operator FR12345678900010: alcoholic strength 20.0 % vol
    is below the 40.0 % vol minimum for CN 22083030 (taken at 40.0 % vol). Excise declared 3,600 EUR, rate x base
    gives 7,200 EUR. Excise at stake 3,600 EUR.
    """

    name: ClassVar[str] = "excise"
    state_type: ClassVar[type[OperatorState]] = ExciseState

    def __init__(
        self,
        scale_eur: float = 1000.0,
        floor: float = 0.1,
        duty_tolerance: float = 0.01,
        duty_tolerance_eur: float = 1.0,
        loss_allowance: float = 0.005,
        mass_conversion_tolerance: float = 0.05,
        strength_tolerance: float = 0.3,
        receipt_deadline_hours: float = 144.0,
        min_cover_mass_kg: float = 100.0,
        cover_slack_kg: float = 25.0,
        max_lines: int = 64,
        max_movements: int = 64,
        max_open: int = 256,
        idle_margin_days: float = 30.0,
        ens_retention_days: float = 7.0,
        suspension_prior: float = 0.05,
    ) -> None:
        self.scale_eur = scale_eur
        self.floor = floor
        self.duty_tolerance = duty_tolerance
        self.duty_tolerance_eur = duty_tolerance_eur
        self.loss_allowance = loss_allowance
        self.mass_conversion_tolerance = mass_conversion_tolerance
        self.strength_tolerance = strength_tolerance
        self.receipt_deadline_s = receipt_deadline_hours * 3600.0
        self.suspension_prior = suspension_prior
        # An import's records arrive within days; a month past the receipt deadline loses nothing.
        self.idle_retention = timedelta(hours=receipt_deadline_hours, days=idle_margin_days)
        self.ens_retention = timedelta(days=ens_retention_days)
        self.min_cover_mass_kg = min_cover_mass_kg
        self.cover_slack_kg = cover_slack_kg
        self.max_lines = max_lines
        self.max_movements = max_movements
        self.max_open = max_open
        # The last record assessed and its corrected facts: a cache of a function of the record, not state.
        self._assessed: tuple[ExciseMovement, CorrectedFacts] | None = None
        # Splits every event into units and weighs ENS and declarations, in C (reads the masses above once).
        self._path = ExcisePath(
            min_cover_mass_kg, cover_slack_kg, MAX_GROSS_NET_RATIO, products_for_cn, _EXCISE_CHAPTERS, ExciseState
        )

    def score_of(self, gap_eur: float, has_finding: bool) -> float:
        """``floor + (1 - floor)(1 - exp(-gap / scale))`` with a finding, else 0."""
        if not has_finding:
            return 0.0
        return self.floor + (1.0 - self.floor) * (1.0 - math.exp(-max(0.0, gap_eur) / self.scale_eur))

    # --- units -----------------------------------------------------------------------------------------
    def units(self, event: Any) -> Iterable[tuple[str, ExciseUnit]]:
        return self._path.units(event)

    # --- dispatch --------------------------------------------------------------------------------------
    def score_one(self, unit: ExciseUnit, state: ExciseState) -> RiskScore | None:
        if isinstance(unit, ExciseRecord):
            if unit.role == "ledger":
                return self._score_overdue(unit, state, self._overdue(unit.event, state))
            return self._score_record(unit.event, state, *self._assess_record(unit.event))
        if isinstance(unit, DeclaredExcise):
            return self._score_declaration(unit, state, self._assess_items(unit))
        if isinstance(unit, DeclaredMass):
            return self._path.score_mass(self, unit, state)
        return None

    def learn_one(self, unit: ExciseUnit, state: ExciseState) -> None:
        if isinstance(unit, ExciseRecord):
            if unit.role == "ledger":
                self._learn_ledger(unit, state, self._overdue(unit.event, state))
            else:
                self._learn_record(unit.event, state, None)
            state.touch(unit.when)
        elif isinstance(unit, DeclaredExcise):
            self._learn_declaration(unit, state, self._assess_items(unit))
            state.touch(epoch_seconds(unit.event_time))
        elif isinstance(unit, EnsMass):
            learn_ens(unit, state)
        else:
            state.touch(epoch_seconds(unit.event_time))

    def process(self, event: Any, store: MutableMapping[str, ExciseState]) -> list[RiskScore]:
        """:meth:`Operator.process`, with ENS and declaration masses handled in C (most events)."""
        return self._path.process(self, event, store)

    def score_learn_one(self, unit: ExciseUnit, state: ExciseState) -> RiskScore | None:
        """:meth:`score_one` then :meth:`learn_one`, sharing what both work out (a record's physics, the
        overdue e-AD of a ledger, a declaration's item physics)."""
        if isinstance(unit, ExciseRecord):
            record = unit.event
            if unit.role == "ledger":
                found = self._overdue(record, state)
                score = self._score_overdue(unit, state, found)
                self._learn_ledger(unit, state, found)
            else:
                assessment, facts = self._assess_record(record)
                score = self._score_record(record, state, assessment, facts)
                self._learn_record(record, state, facts)
            state.touch(unit.when)
            return score
        if isinstance(unit, DeclaredExcise):
            assessed = self._assess_items(unit)
            score = self._score_declaration(unit, state, assessed)
            self._learn_declaration(unit, state, assessed)
            state.touch(epoch_seconds(unit.event_time))
            return score
        score = self.score_one(unit, state)
        self.learn_one(unit, state)
        return score

    # --- physics and arithmetic of one record ----------------------------------------------------------
    def _physics(
        self,
        assessment: Assessment,
        cn: str,
        product: str,
        volume: float | None,
        strength: float | None,
        mass: float | None,
        sticks: float | None,
        density: float | None = None,
    ) -> CorrectedFacts:
        """Category, strength, density and stick-mass checks; returns the corrected physical base."""
        allowed = products_for_cn(cn)
        true_product = product
        if allowed and product not in allowed:
            true_product = allowed[0]
            assessment.add(
                "category_vs_cn",
                f"category {product} does not match CN {cn} ({' or '.join(allowed)} expected; duty recomputed as "
                f"{true_product})",
            )
        if true_product in _ALCOHOL:
            bounds = strength_range(cn)
            if strength is None:
                assessment.add("no_strength", "no alcoholic strength given for an alcoholic product")
            elif bounds is not None and strength < bounds[0]:
                assessment.add(
                    "strength_below_range",
                    f"alcoholic strength {strength:.1f} % vol is below the {bounds[0]:.1f} % vol minimum for CN {cn} "
                    f"(taken at {bounds[0]:.1f} % vol)",
                )
                strength = bounds[0]
            elif bounds is not None and strength > bounds[1]:
                assessment.add(
                    "strength_above_range",
                    f"alcoholic strength {strength:.1f} % vol is above the {bounds[1]:.1f} % vol maximum for CN {cn}",
                )
        if true_product in _FUELS:
            low, high, nominal = FUEL_DENSITY[true_product]
            if density is not None and not low <= density <= high:
                assessment.add(
                    "density_out_of_range",
                    f"declared density {density:.3f} kg/l is outside {true_product}'s {low:.3f}-{high:.3f} kg/l",
                )
            if mass is not None and volume is not None:
                implied = mass / volume
                if not low * 0.99 <= implied <= high * 1.01:
                    mass_volume = mass / nominal
                    assessment.add(
                        "mass_vs_volume",
                        f"{_q(mass, 'kg')} for {_q(volume, 'l')} is {implied:.3f} kg/l, outside {true_product}'s "
                        f"{low:.3f}-{high:.3f} kg/l (the mass implies {_q(mass_volume, 'l')} at {nominal:.3f} kg/l)",
                    )
                    volume = max(volume, mass_volume)
        if true_product in _STICKS and mass is not None and sticks:
            low, high, nominal = STICK_MASS_G
            grams = mass * 1000.0 / sticks
            if not low <= grams <= high:
                mass_sticks = mass * 1000.0 / nominal
                assessment.add(
                    "mass_per_stick",
                    f"{_q(mass, 'kg')} for {sticks:,.0f} sticks is {grams:.2f} g a stick, outside {low}-{high} g "
                    f"(the mass holds about {mass_sticks:,.0f} sticks)",
                )
                sticks = max(sticks, mass_sticks)
        return CorrectedFacts(true_product, volume, strength, mass, sticks)

    def _duty_check(self, assessment: Assessment, facts: CorrectedFacts, declared: float, tolerance: float) -> None:
        expected = facts.duty()
        gap = expected - declared
        assessment.fields["excise_declared_eur"] = round(declared, 2)
        assessment.fields["excise_expected_eur"] = round(expected, 2)
        if gap > max(self.duty_tolerance_eur, tolerance * expected):
            assessment.duty_gap = gap
            assessment.add(
                "duty_below_rate_x_base",
                f"Excise declared {declared:,.0f} EUR, rate x base gives {expected:,.0f} EUR",
            )

    @staticmethod
    def _record_quantity_fields(record: ExciseMovement) -> tuple[float | None, float | None, float | None]:
        """(volume, mass, sticks) the record states, filled from its quantity when a field is missing."""
        quantity = record.received_quantity if record.record_type == "report_of_receipt" else None
        if quantity is None:
            quantity = record.dispatched_quantity
        volume, mass, sticks = record.volume_litres, record.mass_kg, record.sticks
        if record.quantity_unit == "l" and volume is None:
            volume = quantity
        elif record.quantity_unit == "kg" and mass is None:
            mass = quantity
        elif record.quantity_unit == "sticks" and sticks is None:
            sticks = int(quantity)
        return volume, mass, sticks

    def _assess_record(self, record: ExciseMovement) -> tuple[Assessment, CorrectedFacts]:
        assessment = Assessment()
        expected_unit = QUANTITY_UNIT.get(record.product_category)
        if expected_unit is not None and record.quantity_unit != expected_unit:
            assessment.add(
                "quantity_unit",
                f"quantity in {record.quantity_unit} where {record.product_category} is counted in {expected_unit}",
            )
        volume, mass, sticks = self._record_quantity_fields(record)
        stated = record.received_quantity if record.record_type == "report_of_receipt" else record.dispatched_quantity
        physical = {"l": volume, "kg": mass, "sticks": sticks}.get(record.quantity_unit)
        if stated is not None and physical is not None and abs(stated - physical) > max(1.0, 0.005 * physical):
            assessment.add(
                "quantity_vs_fields",
                f"quantity {_q(stated, record.quantity_unit)} does not match the {_q(physical, record.quantity_unit)} "
                "described",
            )
        facts = self._physics(
            assessment,
            record.cn_code,
            record.product_category,
            volume,
            record.alcohol_strength_pct,
            mass,
            None if sticks is None else float(sticks),
            record.density_kg_per_l_at_15c,
        )
        self._duty_check(assessment, facts, record.duty_declared_eur, self.duty_tolerance)
        if record.record_type == "report_of_receipt" and record.received_quantity is not None:
            dispatched, received = record.dispatched_quantity, record.received_quantity
            if dispatched - received > self.loss_allowance * dispatched:
                short = dispatched - received
                per_unit = self._duty_per_record_unit(record, facts)
                assessment.add(
                    "shortage",
                    f"received {_q(received, record.quantity_unit)} of {_q(dispatched, record.quantity_unit)} "
                    f"dispatched: {_q(short, record.quantity_unit)} short ({100.0 * short / dispatched:.1f} %), "
                    f"{short * per_unit:,.0f} EUR of excise",
                    short * per_unit,
                )
                assessment.fields["shortage_quantity"] = round(short, 3)
        self._assessed = (record, facts)
        return assessment, facts

    def _record_facts(self, record: ExciseMovement) -> CorrectedFacts:
        """The corrected facts of :meth:`_assess_record`, not worked out again for the record last assessed
        (a record's ledger unit follows its primary unit)."""
        assessed = self._assessed
        if assessed is not None and assessed[0] is record:
            return assessed[1]
        return self._assess_record(record)[1]

    @staticmethod
    def _duty_per_record_unit(record: ExciseMovement, facts: CorrectedFacts) -> float:
        """EUR of excise per unit of the record's ``quantity_unit``."""
        if record.quantity_unit == "l":
            return excise_duty(facts.product, volume_l=1.0, strength=facts.strength)
        if record.quantity_unit == "sticks":
            return excise_duty(facts.product, sticks=1.0) if facts.product in _STICKS else 0.0
        return excise_duty(facts.product, mass_kg=1.0) if facts.product == "fine_cut_tobacco" else 0.0

    # --- records: primary key ------------------------------------------------------------------------
    def _score_record(
        self, record: ExciseMovement, state: ExciseState, assessment: Assessment, facts: CorrectedFacts
    ) -> RiskScore:
        """The score of ``record`` given its own :meth:`_assess_record` (completed here against its state)."""
        kind = record.record_type
        if kind == "report_of_receipt" or (kind == "export" and record.arc in state.movements):
            self._against_ead(assessment, record, facts, state)
        if kind in ("e_ad", "release_for_consumption") or (kind == "export" and record.arc not in state.movements):
            self._against_import(assessment, record, facts, state)
        exposure = facts.duty() if kind in ("e_ad", "export") and not assessment.findings else 0.0
        return self._record_score(record, assessment, state.office, exposure)

    def _against_ead(
        self, assessment: Assessment, record: ExciseMovement, facts: CorrectedFacts, state: ExciseState
    ) -> None:
        ead = state.movements.get(record.arc or "")
        if ead is None:
            return
        unit = record.quantity_unit
        if ead["unit"] != unit:
            assessment.add("unit_vs_ead", f"quantity in {unit} where the e-AD counted in {ead['unit']}")
            return
        sent = ead["q"]
        if abs(record.dispatched_quantity - sent) > max(1e-6, 0.001 * sent):
            assessment.add(
                "dispatched_vs_ead",
                f"states {_q(record.dispatched_quantity, unit)} dispatched where the e-AD of "
                f"{_fmt_time(ead['t'])} dispatched {_q(sent, unit)}",
            )
        arrived = record.received_quantity if record.received_quantity is not None else record.dispatched_quantity
        intrinsic = record.dispatched_quantity - arrived if record.record_type == "report_of_receipt" else 0.0
        short = sent - arrived
        if short > self.loss_allowance * sent and short > intrinsic + 1e-9:
            per_unit = self._duty_per_record_unit(record, facts)
            what = "received" if record.record_type == "report_of_receipt" else "exported"
            # Only what the record's own shortage finding does not already count.
            assessment.add(
                "short_vs_ead",
                f"{what} {_q(arrived, unit)} against {_q(sent, unit)} on the e-AD: {_q(short, unit)} missing",
                (short - max(0.0, intrinsic)) * per_unit,
            )
        if ead["product"] != record.product_category:
            assessment.add(
                "category_vs_ead", f"category {record.product_category} where the e-AD said {ead['product']}"
            )
        s0, s1 = ead.get("strength"), record.alcohol_strength_pct
        if s0 is not None and s1 is not None and abs(s0 - s1) > self.strength_tolerance:
            lost = excise_duty(facts.product, arrived if unit == "l" else facts.volume_l, s0) - excise_duty(
                facts.product, arrived if unit == "l" else facts.volume_l, s1
            )
            assessment.add(
                "strength_vs_ead",
                f"alcoholic strength {s1:.1f} % vol where the e-AD said {s0:.1f} % vol",
                lost,
            )

    @staticmethod
    def _line_for(state: ExciseState, cn: str, product: str) -> tuple[str, dict[str, Any]] | None:
        """The import line a record reconciles with: same CN code, else the only line of its category."""
        line = state.lines.get(cn)
        if line is not None:
            return cn, line
        same = [(code, line) for code, line in state.lines.items() if line["product"] == product]
        return same[0] if len(same) == 1 else None

    def _against_import(
        self, assessment: Assessment, record: ExciseMovement, facts: CorrectedFacts, state: ExciseState
    ) -> None:
        found = self._line_for(state, record.cn_code, facts.product)
        if found is None:
            return
        import_cn, line = found
        if import_cn != record.cn_code:
            assessment.add("cn_vs_import", f"CN {record.cn_code} where import {record.import_mrn} declared {import_cn}")
        quantity = facts.reconciliation_quantity()
        if quantity is None or line["product"] != facts.product:
            return
        imported, before = line["imported"], line["accounted"]
        accounted = before + quantity
        missing = imported - accounted
        tolerance = line.get("tolerance", self.loss_allowance)
        unit = line["unit"]
        assessment.fields["imported_quantity"] = round(imported, 3)
        assessment.fields["accounted_quantity"] = round(accounted, 3)
        if missing > tolerance * imported:
            per_unit = duty_per_reconciliation_unit(facts.product, facts.strength)
            gap = missing * per_unit
            so_far = f"; records so far account for {_q(accounted, unit)}" if before > 0 else ""
            assessment.add(
                "import_not_accounted",
                f"import {record.import_mrn} declared {_q(imported, unit)} of CN {import_cn}, this "
                f"{record.record_type.replace('_', ' ')} covers {_q(quantity, unit)}{so_far}: {_q(missing, unit)} "
                f"unaccounted for, {gap:,.0f} EUR of excise",
                gap,
            )

    def _record_score(
        self, record: ExciseMovement, assessment: Assessment, office: str | None, exposure_eur: float = 0.0
    ) -> RiskScore:
        head = f"{_RECORD_KINDS[record.record_type]} of {record.product_category} (CN {record.cn_code})"
        if record.arc:
            head += f" ARC {record.arc}"
        head += f", operator {record.operator_eori}"
        reference = record.arc or record.import_mrn or record.event_id
        return self._build(
            subject_id=record.event_id,
            id_key=record.event_id,
            item_number=None,
            subject_type="excise",
            reference=reference,
            when=record.event_time,
            office=office or "unknown",
            operator=record.operator_eori,
            cn=record.cn_code,
            origin=None,
            head=head,
            assessment=assessment,
            exposure_eur=exposure_eur,
        )

    def _learn_record(self, record: ExciseMovement, state: ExciseState, facts: CorrectedFacts | None) -> None:
        """Learn ``record``; ``facts``: its corrected physics if already worked out (else when needed)."""
        kind = record.record_type
        if kind == "e_ad" and record.arc is not None:
            strength = record.alcohol_strength_pct
            state.movements[record.arc] = {
                "id": record.event_id,
                "t": epoch_seconds(record.event_time),
                "product": record.product_category,
                "unit": record.quantity_unit,
                "q": record.dispatched_quantity,
                "strength": strength,
                "closed": False,
            }
            while len(state.movements) > self.max_movements:
                del state.movements[next(iter(state.movements))]
        if kind in ("report_of_receipt", "export") and record.arc in state.movements:
            state.movements[record.arc]["closed"] = True
        accounts = kind in ("e_ad", "release_for_consumption") or (
            kind == "export" and record.arc not in state.movements
        )
        if accounts and state.lines:
            if facts is None:
                facts = self._record_facts(record)
            found = self._line_for(state, record.cn_code, facts.product)
            quantity = facts.reconciliation_quantity()
            if found is not None and quantity is not None and found[1]["product"] == facts.product:
                found[1]["accounted"] += quantity

    # --- records: ledger of open e-ADs -------------------------------------------------------------------
    def _overdue(self, record: ExciseMovement, state: ExciseState) -> tuple[str, dict[str, Any]] | None:
        """The open e-AD past its deadline with the most duty at stake (ties: the oldest)."""
        return overdue(state.open, record.arc, epoch_seconds(record.event_time), self.receipt_deadline_s)

    def _score_overdue(
        self, unit: ExciseRecord, state: ExciseState, found: tuple[str, dict[str, Any]] | None
    ) -> RiskScore | None:
        """The score of the e-AD :meth:`_overdue` found for ``unit`` (None: nothing overdue)."""
        if found is None:
            return None
        arc, entry = found
        now = unit.when
        late_h = (now - entry["t"] - self.receipt_deadline_s) / 3600.0
        assessment = Assessment()
        assessment.add(
            "no_receipt",
            f"dispatched {_fmt_time(entry['t'])} under duty suspension ({_q(entry['q'], entry['unit'])}), no report "
            f"of receipt or export {self.receipt_deadline_s / 3600.0:.0f} h later (still none at {_fmt_time(now)}, "
            f"{late_h:.0f} h past the deadline): the goods may have been released on the home market, "
            f"{entry['duty']:,.0f} EUR of excise",
            entry["duty"],
        )
        assessment.fields["dispatched_at"] = _fmt_time(entry["t"])
        assessment.fields["hours_past_deadline"] = round(late_h, 1)
        return self._build(
            subject_id=entry["id"],
            id_key=f"{entry['id']}/overdue",
            item_number=None,
            subject_type="excise",
            reference=arc,
            when=unit.event.event_time,
            office="unknown",
            operator=unit.event.operator_eori if unit.event.record_type == "e_ad" else None,
            cn=entry["cn"],
            origin=None,
            head=(
                f"e-AD of {entry['product']} (CN {entry['cn']}) ARC {arc}, "
                f"consignor {unit.event.consignor_excise_number}"
            ),
            assessment=assessment,
        )

    # --- idle keys ------------------------------------------------------------------------------------------
    def evict_idle(self, store: MutableMapping[str, ExciseState], now: datetime) -> int:
        """As :meth:`Operator.evict_idle`, with ``ens:`` keys forgotten :attr:`ens_retention` after their
        ETA (or their last declaration) rather than after the excise retention."""
        now_s = now.timestamp()
        horizon = now_s - self.idle_retention.total_seconds()
        ens_horizon = now_s - self.ens_retention.total_seconds()
        idle = [
            key
            for key, state in store.items()
            if state.last_seen < (ens_horizon if key.startswith("ens:") else horizon)
        ]
        for key in idle:
            del store[key]
        return len(idle)

    # --- deadline timers (see vigie.operators.deadlines) ---------------------------------------------------
    def deadlines(self, key: str, unit: ExciseUnit, state: ExciseState | None = None) -> list[float]:
        """Epoch seconds at which ``key`` must be checked again after ``unit`` was learned: the
        receipt deadline of an e-AD, for its consignor's ledger (it is overdue strictly after:
        wake a moment later); nothing for other units. From the unit alone, not the state: an
        e-AD received meanwhile just makes the check find nothing."""
        if not key.startswith("ledger:") or not isinstance(unit, ExciseRecord) or unit.role != "ledger":
            return []
        return self._receipt_deadline(unit.event)

    deadline_event_types: ClassVar[tuple[type, ...]] = (ExciseMovement,)
    """The events :meth:`deadlines_of` can find a deadline in (see :mod:`vigie.operators.deadlines`)."""

    def deadlines_of(self, event: Any) -> list[tuple[str, float]]:
        """``(state key, epoch seconds)`` of the deadline ``event`` sets: an e-AD's receipt deadline, on its
        consignor's ledger (the ledger unit of :meth:`units`, as :meth:`deadlines` gives it)."""
        if not isinstance(event, ExciseMovement):
            return []
        return [(f"ledger:{event.consignor_excise_number}", at) for at in self._receipt_deadline(event)]

    def _receipt_deadline(self, record: ExciseMovement) -> list[float]:
        if record.record_type != "e_ad" or record.arc is None:
            return []
        return [epoch_seconds(record.event_time) + self.receipt_deadline_s]

    def expire(self, key: str, state: ExciseState, now: datetime) -> list[RiskScore]:
        """Scores of every e-AD of a ledger key overdue at ``now`` with no receipt or export, each
        reported once (removed from the ledger). Same score and id as when a later record of the
        consignor reveals the gap, so a gap found both ways is one record downstream.

        Without timers (the in-process runner) the detector notices an overdue e-AD only when a
        later record of the same consignor arrives.
        """
        if not key.startswith("ledger:") or not state.open:
            return []
        # A probe record "at now" from the key's consignor: it closes nothing (no ARC) and is no
        # e-AD, so the overdue test and its text apply unchanged.
        probe = ExciseMovement.model_construct(
            event_id=f"timer:{key}",
            event_time=now,
            record_type="report_of_receipt",
            arc=None,
            consignor_excise_number=key.split(":", 1)[1],
            operator_eori=None,
        )
        unit = ExciseRecord("ledger", probe)
        scores: list[RiskScore] = []
        while (found := self._overdue(probe, state)) is not None:
            score = self._score_overdue(unit, state, found)
            del state.open[found[0]]
            if score is not None:
                scores.append(score)
        return scores

    def _learn_ledger(self, unit: ExciseRecord, state: ExciseState, found: tuple[str, dict[str, Any]] | None) -> None:
        """Learn ``unit`` in its consignor's ledger; ``found``: what :meth:`_overdue` gives for it."""
        record = unit.event
        if found is not None:
            del state.open[found[0]]  # reported once; the next overdue e-AD waits for the next event
        if record.record_type in ("report_of_receipt", "export") and record.arc is not None:
            state.open.pop(record.arc, None)
        if record.record_type == "e_ad" and record.arc is not None:
            facts = self._record_facts(record)
            state.open[record.arc] = {
                "id": record.event_id,
                "t": unit.when,
                "cn": record.cn_code,
                "product": record.product_category,
                "q": record.dispatched_quantity,
                "unit": record.quantity_unit,
                "duty": round(max(facts.duty(), record.duty_declared_eur), 2),
                "mrn": record.import_mrn,
            }
            while len(state.open) > self.max_open:
                del state.open[next(iter(state.open))]
                state.dropped += 1

    # --- declarations of excise goods -----------------------------------------------------------------------
    def _item_facts(
        self, assessment: Assessment, item: DeclaredExciseItem
    ) -> tuple[CorrectedFacts, float | None, float]:
        """Physics of a declared item: corrected facts, reconciliation quantity and its tolerance."""
        product = products_for_cn(item.cn_code)[0]
        code = item.supplementary_unit_code
        units = item.supplementary_units
        mass = item.net_mass_kg
        volume = strength = sticks = None
        tolerance = self.loss_allowance
        if product == "spirits":
            if units and code == "l alc. 100 %":
                # Pure alcohol is what is taxed; the volume is unknown, so state it at 100 % vol.
                volume, strength = units, 100.0
            else:
                volume = mass / LIQUID_DENSITY
                strength = (strength_range(item.cn_code) or (15.0, 100.0))[0]  # the lowest plausible
                tolerance = self.mass_conversion_tolerance
        elif product in ("beer", "wine", "intermediate"):
            if units and code == "l":
                volume = units
            else:
                volume = mass / LIQUID_DENSITY
                tolerance = self.mass_conversion_tolerance
            bounds = strength_range(item.cn_code)
            strength = bounds[0] if bounds else None  # unknown on the declaration: the lowest plausible
        elif product in _FUELS:
            volume = mass / FUEL_DENSITY[product][2]
            tolerance = self.mass_conversion_tolerance
        elif product in _STICKS:
            if units and code == "1000 p/st":
                sticks = units * 1000.0
            else:
                sticks = mass * 1000.0 / STICK_MASS_G[2]
                tolerance = self.mass_conversion_tolerance
        facts = self._physics(assessment, item.cn_code, product, volume, strength, mass, sticks)
        return facts, facts.reconciliation_quantity(), tolerance

    def _assess_item(self, item: DeclaredExciseItem, procedure: str) -> AssessedItem:
        """Findings on one declared item, with what :meth:`_item_facts` gives (learned too)."""
        assessment = Assessment()
        facts, quantity, tolerance = self._item_facts(assessment, item)
        if item.excise_eur is not None:
            self._duty_check(assessment, facts, item.excise_eur, max(self.duty_tolerance, tolerance))
        elif procedure == "4000":
            expected = facts.duty()
            if expected > self.duty_tolerance_eur:
                assessment.duty_gap = expected
                assessment.fields["excise_expected_eur"] = round(expected, 2)
                assessment.add(
                    "no_excise_on_release",
                    f"released for free circulation (procedure 4000) with no excise declared; rate x base gives "
                    f"{expected:,.0f} EUR",
                )
        return assessment, facts, quantity, tolerance

    def _assess_items(self, unit: DeclaredExcise) -> list[AssessedItem]:
        return [self._assess_item(item, unit.procedure_code) for item in unit.items]

    def _score_declaration(self, unit: DeclaredExcise, state: ExciseState, assessed: list[AssessedItem]) -> RiskScore:
        """The score of ``unit`` given its :meth:`_assess_items`."""
        worst: tuple[Assessment, DeclaredExciseItem] | None = None
        total_gap = 0.0
        findings: list[str] = []
        for item, (assessment, *_) in zip(unit.items, assessed, strict=True):
            total_gap += assessment.gap_eur
            if assessment.findings:
                findings.append(f"item {item.item_number} (CN {item.cn_code}): " + "; ".join(assessment.findings))
            if worst is None or assessment.gap_eur > worst[0].gap_eur:
                worst = (assessment, item)
        assert worst is not None
        merged = Assessment(findings=findings, codes=[c for c in worst[0].codes], other_gaps=total_gap)
        merged.fields = dict(worst[0].fields)
        item = worst[1]
        return self._build(
            subject_id=unit.event_id,
            id_key=unit.event_id,
            item_number=item.item_number,
            subject_type="declaration",
            reference=unit.mrn,
            when=unit.event_time,
            office=unit.office,
            operator=unit.importer_eori,
            cn=item.cn_code,
            origin=item.origin,
            head=f"Import {unit.mrn} of excise goods, importer {unit.importer_eori}",
            assessment=merged,
        )

    def _learn_declaration(self, unit: DeclaredExcise, state: ExciseState, assessed: list[AssessedItem]) -> None:
        """Learn ``unit`` given its :meth:`_assess_items`."""
        state.office = unit.office
        for item, (_, facts, quantity, tolerance) in zip(unit.items, assessed, strict=True):
            if quantity is None:
                continue
            line = state.lines.get(item.cn_code)
            if line is None:
                if len(state.lines) >= self.max_lines:
                    continue
                line = state.lines[item.cn_code] = {
                    "product": facts.product,
                    "unit": RECONCILIATION_UNIT[facts.product],
                    "imported": 0.0,
                    "accounted": 0.0,
                    "tolerance": tolerance,
                    "item": item.item_number,
                }
            line["imported"] += quantity
            line["tolerance"] = max(line["tolerance"], tolerance)

    # --- ENS gross mass vs declared net mass ------------------------------------------------------------
    def _report_mass(self, unit: DeclaredMass, state: ExciseState, excess: float, ratio: float) -> RiskScore:
        """The score of a declaration whose ENS weighs ``excess`` kg more than packaging explains (see
        :meth:`ExcisePath.score_mass`, which scores nothing otherwise)."""
        ens = state.ens
        assert ens is not None
        sticks = excess / COVER_KG_PER_1000_STICKS * 1000.0
        gap = excise_duty("cigarettes", sticks=sticks)
        assessment = Assessment()
        assessment.add(
            "undeclared_mass",
            f"the ENS filed {_fmt_time(ens['t'])} weighs {_q(ens['gross'], 'kg')} gross for {_q(unit.net_kg, 'kg')} "
            f"net declared, {_q(excess, 'kg')} more than packaging explains (at most x{ratio:.1f} + "
            f"{self.cover_slack_kg:.0f} kg): room for about {sticks:,.0f} undeclared cigarettes under a cover load, "
            f"{gap:,.0f} EUR of excise",
            gap,
        )
        assessment.fields["ens_gross_kg"] = round(ens["gross"], 1)
        assessment.fields["declared_net_kg"] = round(unit.net_kg, 1)
        assessment.fields["undeclared_kg"] = round(excess, 1)
        return self._build(
            subject_id=unit.event_id,
            id_key=unit.event_id,
            item_number=None,
            subject_type="declaration",
            reference=unit.mrn,
            when=unit.event_time,
            office=unit.office,
            operator=unit.importer_eori,
            cn=unit.main_cn,
            origin=unit.main_origin,
            head=f"Import {unit.mrn} (ENS {unit.ens_reference}), importer {unit.importer_eori}",
            assessment=assessment,
        )

    # --- output ----------------------------------------------------------------------------------------------
    def _build(
        self,
        *,
        subject_id: str,
        id_key: str,
        item_number: int | None,
        subject_type: str,
        reference: str,
        when: datetime,
        office: str,
        operator: str | None,
        cn: str | None,
        origin: str | None,
        head: str,
        assessment: Assessment,
        exposure_eur: float = 0.0,
    ) -> RiskScore:
        gap = assessment.gap_eur
        score = self.score_of(gap, bool(assessment.findings))
        at_stake = gap * (1.0 + VAT_RATE)
        if assessment.findings:
            body = ". ".join(f if i == 0 else f[0].upper() + f[1:] for i, f in enumerate(assessment.findings))
            reason = f"{head}: {body}."
            if gap > 0:
                reason += f" Excise at stake {gap:,.0f} EUR."
        elif exposure_eur > 0:
            # No finding, but the duty is suspended: a prior, not a suspicion (module docstring).
            score = self.suspension_prior
            at_stake = exposure_eur * (1.0 + VAT_RATE)
            reason = (
                f"{head}: quantities, physics and duty consistent; {exposure_eur:,.0f} EUR of excise under "
                "suspension, lost if the goods are diverted."
            )
        else:
            reason = f"{head}: quantities, physics and duty consistent."
        fields = dict(assessment.fields)
        if exposure_eur > 0:
            fields["suspended_duty_eur"] = round(exposure_eur, 2)
        fields["findings"] = ",".join(dict.fromkeys(assessment.codes)) or None
        fields["excise_gap_eur"] = round(gap, 2)
        return self.risk_score(
            subject_event_id=subject_id,
            subject_type=subject_type,
            subject_reference=reference,
            item_number=item_number,
            event_time=when,
            office=office,
            operator_eori=operator,
            cn_code=cn,
            origin_country=origin,
            score=score,
            eur_at_stake=at_stake,
            reason=reason,
            reason_fields=fields,
            id_key=id_key,
        )
