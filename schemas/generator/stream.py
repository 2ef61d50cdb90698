"""The event stream: consignments arrive, are declared, moved under excise, and controlled.

**Arrivals.** Consignments (each an ENS and/or an import declaration) arrive at French
offices of entry as a Poisson process whose daily mean is ``rate_per_hour``, with a mild
daily cycle (intensity x (1 + 0.35 cos(2 pi (h - 14) / 24)): busiest at 14:00 UTC, 0.65 x
the mean at 02:00; a 4 h window from midnight holds about 2.7 h worth of arrivals).
``eta`` is the arrival time; the window of generated ETAs is ``[start, start + duration)``.
Mix of what each consignment produces, for clean ones: ENS + declaration linked by
``ens_reference`` (85 %), both but unlinked (5 %), ENS only (goods declared in another
member state or moving on in transit, 7 %), declaration only (3 %). Fraudulent and excise
consignments always have a declaration.

**Timing.** ENS filing (its ``event_time``) precedes the ETA by: air and postal 4-24 h
(pre-loading filing), road 1-6 h, rail 2-12 h, sea the voyage plus 24-72 h before loading
(voyage by region: Mediterranean 2-6 days, Far East 20-35 days, see
:data:`~vigie.schemas.generator.catalogue.REGIONS`). A share of declarations is pre-lodged
up to 12 h before the ETA (but always after their ENS); the others are lodged after arrival
(median 0.7 h by road, 5 h by air, 14 h by sea; capped at 72 h). Excise records follow the
declaration (release for consumption within 2 h, e-AD dispatch within 12 h, report of
receipt 6 h to 5 days later). Control outcomes come 0.5-72 h after what they control.

**Order.** ETAs are generated in blocks of 6 h. Every event goes into a heap; after each
block, all events dated before ``block end - 12 h`` are emitted in ``event_time`` order. No
later block can produce a declaration, excise record or outcome dated before that mark, so
those are globally sorted. ENS are not: a sea ENS of a later block is filed weeks before
its ETA and is emitted when its block is generated, so it can carry an earlier
``event_time`` than events already emitted (a real stream is out of order too). An ENS
always precedes its own declaration, a control outcome always follows what it controls.

**Taxes.** ``duty = customs value x rate`` where the rate is the conventional rate (0 under a
tariff preference) plus any trade-defence duty for the origin; consignments of at most
150 EUR (non-excise) are relieved of duty. ``VAT = 20 % x (value + duty + excise)``. By
procedure: 4000 release for free circulation (duty, VAT and, for excise goods, excise paid);
4200 (VAT exempt, onward supply in another member state); 0700 (release with entry into a
tax warehouse: duty paid, excise and VAT suspended); 5100 / 7100 (duty and VAT suspended,
shown as 0).

**Fraud.** ``fraud_share`` is the expected share of consignments carrying at least one
injected fraud. Frauds are budgeted from the expected number of consignments: the
behaviour-change importers and the new importers are planned up front (at least one of
each whenever ``fraud_share > 0``, so tiny runs overshoot), the rest is drawn per arrival.
Excise frauds are capped at half of the excise consignments. The mix, as shares of
fraudulent consignments, is :data:`PATTERN_MIX`: undervaluation 34 %, behaviour change
12 %, misclassification 12 %, origin transshipment 10 %, splitting 8 % (counted in split
parts), new importer with large flows 8 %, cover-load smuggling 4 %, each excise pattern
4 %. ``vague_description`` is an add-on: 30 % of the ENS of customs frauds get a vague
goods description, and so do 1.5 % of clean ENS (one item), so that it is a signal, not a
label. See :mod:`vigie.schemas.generator` for what each pattern does to the events and how
:class:`GroundTruth` records it. The ground truth is never inside the events.

**Controls.** The legacy targeting controls ``control_rate`` of declarations and of excise
records: a quarter of that budget is drawn uniformly (``selection="random"``), the rest by
rules (``"other"``) tuned so that fraudulent events are controlled 4 times as often as
clean ones. A control of a fraudulent event finds it with probability 0.85, and then
recovers exactly the revenue at risk (duty in ``duty_recovered_eur``, VAT and excise in
``tax_recovered_eur``). Controls of clean events are negative.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from vigie.schemas.events import (
    ControlOutcome,
    EnsGoodsItem,
    EntrySummaryDeclaration,
    ExciseMovement,
    GoodsItem,
    ImportDeclaration,
    InboundEvent,
    InfringementType,
    Party,
)

from .catalogue import (
    ALCOHOL_STRENGTHS,
    BY_CN,
    CARRIERS,
    CIGARETTE_KG_PER_STICK,
    COMMODITIES,
    COUNTRY_REGION,
    COVER_CODES,
    CURRENCIES,
    DEFAULT_CURRENCIES,
    ENTRY_OFFICES,
    EUR_PER_UNIT,
    LOADING_PLACES,
    LOW_VALUE_THRESHOLD_EUR,
    MISCLASSIFICATION_PAIRS,
    MODE_MASS_FACTOR,
    MODE_MAX_CONSIGNMENT_KG,
    PREFERENCE_CLAIM,
    REGIONS,
    SECTORS,
    TRANSSHIPMENT_COUNTRIES,
    VAGUE_DESCRIPTIONS,
    VAT_RATE,
    Carrier,
    Commodity,
    excise_duty,
)
from .population import (
    Operator,
    Population,
    build_population,
    choose_pairs,
    make_operator,
    pick_by_bias,
    supplier_name,
    weighted_choice,
)

PATTERNS: tuple[str, ...] = (
    "undervaluation",
    "misclassification",
    "origin_transshipment",
    "splitting",
    "vague_description",
    "cover_load_smuggling",
    "excise_diversion",
    "excise_shortage",
    "excise_physics",
    "behaviour_change",
    "new_importer_large_flows",
)
"""Every fraud pattern the generator injects (``GroundTruth.patterns`` values)."""

PATTERN_MIX: dict[str, float] = {
    "undervaluation": 0.34,
    "misclassification": 0.12,
    "origin_transshipment": 0.10,
    "splitting": 0.08,
    "cover_load_smuggling": 0.04,
    "excise_diversion": 0.04,
    "excise_shortage": 0.04,
    "excise_physics": 0.04,
    "behaviour_change": 0.12,
    "new_importer_large_flows": 0.08,
}
"""Expected share of fraudulent consignments per main pattern (vague_description is an add-on)."""
EXCISE_PATTERNS = ("excise_diversion", "excise_shortage", "excise_physics")
GENERAL_RANDOM_PATTERNS = ("undervaluation", "misclassification", "origin_transshipment", "splitting",
                           "cover_load_smuggling")  # fmt: skip
VAGUE_ON_FRAUD = 0.30
"""Probability that the ENS of a customs fraud carries a vague goods description."""
VAGUE_ON_CLEAN = 0.015
"""Probability that a clean ENS has one vaguely described item (noise)."""
SPLIT_PARTS = (3, 8)
"""Number of declarations a split shipment is cut into (uniform, inclusive)."""

DIURNAL_AMPLITUDE = 0.35
"""Relative amplitude of the daily cycle of arrivals (peak at 14:00 UTC)."""
BLOCK_HOURS = 6.0
MAX_PRELODGE_H = 12.0
"""Earliest a declaration is lodged before the ETA; sets the emission watermark."""
DETECTION_PROB = 0.85
FRAUD_CONTROL_RATIO = 4.0
RANDOM_CONTROL_SHARE = 0.25

ENS_LEAD_H: dict[str, tuple[float, float]] = {"air": (4.0, 24.0), "postal": (4.0, 24.0), "road": (1.0, 6.0),
                                              "rail": (2.0, 12.0)}  # fmt: skip
"""Hours between ENS filing and ETA, uniform, for non-sea modes."""
SEA_BEFORE_LOADING_H = (24.0, 72.0)
"""Sea ENS are filed this long before loading at the foreign port (24 h rule)."""
PRELODGE_SHARE: dict[str, float] = {"sea": 0.25, "air": 0.2, "road": 0.35, "rail": 0.2, "postal": 0.05}
DECL_DELAY_MEDIAN_H: dict[str, float] = {"sea": 14.0, "air": 5.0, "road": 0.7, "rail": 4.0, "postal": 8.0}
VAT_SUSPENDED = frozenset(("4200", "0700", "5100", "7100"))
DUTY_SUSPENDED = frozenset(("5100", "7100"))

SOURCE_ENS = "ICS2"
SOURCE_DECLARATION = "AIDA"
SOURCE_EXCISE = "GAMMA2"
SOURCE_CONTROL = "CIBLAGE-LEGACY"

INFRINGEMENT_BY_PATTERN: dict[str, InfringementType] = {
    "undervaluation": InfringementType.UNDERVALUATION,
    "misclassification": InfringementType.MISCLASSIFICATION,
    "origin_transshipment": InfringementType.FALSE_ORIGIN,
    "splitting": InfringementType.SPLITTING,
    "vague_description": InfringementType.FALSE_DESCRIPTION,
    "cover_load_smuggling": InfringementType.SMUGGLING,
    "excise_diversion": InfringementType.EXCISE_DIVERSION,
    "excise_shortage": InfringementType.EXCISE_SHORTAGE,
    "excise_physics": InfringementType.OTHER,
    "behaviour_change": InfringementType.UNDERVALUATION,
    "new_importer_large_flows": InfringementType.OTHER,
}
"""The infringement a positive control records for each fraud pattern the generator injects."""


def infringement_of(patterns: Sequence[str]) -> InfringementType:
    """The infringement a positive control records for a fraud made of ``patterns``.

    The first pattern that is not a vague description names it: a vague description hides
    another fraud, which is what the officer finds (``OTHER`` for a pattern not listed).

    >>> infringement_of(["vague_description", "undervaluation"]).value
    'undervaluation'
    >>> infringement_of(["vague_description"]).value
    'false_description'
    """
    main = next((p for p in patterns if p != "vague_description"), patterns[0] if patterns else "")
    return INFRINGEMENT_BY_PATTERN.get(main, InfringementType.OTHER)


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HIGH_VALUE_CODES = ("85171300", "84713000", "95045000", "85176200", "85183095")
_NEW_ORIGINS = ("AE", "TH", "MY", "KH", "ID", "PK", "EG", "HK", "LK", "OM")
_ALCOHOL = frozenset(("beer", "wine", "spirits"))
_FUEL = frozenset(("petrol", "diesel"))
_PHYSICS_VARIANTS: dict[str, tuple[str, ...]] = {
    "spirits": ("strength_understated", "category_mismatch", "duty_understated"),
    "beer": ("strength_understated", "duty_understated"),
    "wine": ("duty_understated",),
    "cigarettes": ("sticks_understated", "duty_understated"),
    "fine_cut_tobacco": ("mass_understated", "duty_understated"),
    "petrol": ("volume_understated", "duty_understated"),
    "diesel": ("volume_understated", "duty_understated"),
}


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Same config, same bytes.

    ``rate_per_hour`` consignments arrive per hour on average over ``duration_hours`` of
    ETAs from ``start``; ``fraud_share`` of them carry a fraud; ``excise_share`` are excise
    goods; ``control_rate`` of declarations and excise records are controlled.
    """

    seed: int = 7
    start: datetime = datetime(2026, 3, 2, tzinfo=UTC)
    duration_hours: float = 24.0
    rate_per_hour: float = 1500.0
    fraud_share: float = 0.04
    n_operators: int = 3000
    excise_share: float = 0.05
    control_rate: float = 0.03

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not 0 < self.duration_hours <= 24 * 366:
            raise ValueError("duration_hours must be in (0, 8784]")
        if not 0 < self.rate_per_hour <= 1e6:
            raise ValueError("rate_per_hour must be in (0, 1e6]")
        for name in ("fraud_share", "excise_share", "control_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.fraud_share > 0.5:
            raise ValueError("fraud_share above 0.5 is not supported: frauds would no longer be exceptions")
        if self.n_operators < 20:
            raise ValueError("n_operators must be at least 20")


@dataclass(frozen=True)
class GroundTruth:
    """What is really wrong with one event. Never part of the event stream itself.

    ``revenue_at_risk_eur``: duty + VAT (+ excise) evaded if the fraud goes undetected. The
    ENS and the declaration of the same consignment carry the same figure (a control at
    either finds the same fraud): sum over distinct ``details["consignment_id"]`` for
    totals. ``item_numbers``: the goods items concerned (declaration or ENS numbering).
    ``details``: pattern figures, e.g. ``true_customs_value_eur``, ``true_cn_code``,
    ``true_origin``, ``duty_evaded_eur``, ``vat_evaded_eur``, ``excise_evaded_eur``.
    """

    event_id: str
    event_type: str
    reference: str
    patterns: tuple[str, ...]
    item_numbers: tuple[int, ...]
    revenue_at_risk_eur: float
    details: dict[str, float | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "reference": self.reference,
            "patterns": list(self.patterns),
            "item_numbers": list(self.item_numbers),
            "revenue_at_risk_eur": self.revenue_at_risk_eur,
            "details": dict(self.details),
        }


@dataclass
class GenerationStats:
    """Counts of one run. Everything but ``elapsed_seconds`` is deterministic.

    ``fraud_events_per_pattern`` counts events carrying a pattern; the ``*_consignments``
    figures count consignments (a split shipment counts once per part);
    ``revenue_at_risk_eur`` sums each fraudulent consignment once.
    """

    n_events: int = 0
    events_per_type: dict[str, int] = field(default_factory=dict)
    fraud_events_per_pattern: dict[str, int] = field(default_factory=dict)
    n_consignments: int = 0
    n_fraud_consignments: int = 0
    fraud_consignments_per_pattern: dict[str, int] = field(default_factory=dict)
    revenue_at_risk_eur: float = 0.0
    n_truth_records: int = 0
    elapsed_seconds: float = 0.0

    @property
    def fraud_share(self) -> float:
        """Share of consignments carrying at least one fraud."""
        return self.n_fraud_consignments / self.n_consignments if self.n_consignments else 0.0

    @property
    def events_per_second(self) -> float:
        """Generation speed (events / wall-clock second)."""
        return self.n_events / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "n_events": self.n_events,
            "events_per_type": dict(sorted(self.events_per_type.items())),
            "fraud_events_per_pattern": dict(sorted(self.fraud_events_per_pattern.items())),
            "n_consignments": self.n_consignments,
            "n_fraud_consignments": self.n_fraud_consignments,
            "fraud_share": round(self.fraud_share, 5),
            "fraud_consignments_per_pattern": dict(sorted(self.fraud_consignments_per_pattern.items())),
            "revenue_at_risk_eur": round(self.revenue_at_risk_eur, 2),
            "n_truth_records": self.n_truth_records,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


# --- internal structures -------------------------------------------------------------------------
@dataclass(slots=True)
class _Line:
    """One goods item: either what truly crosses the border or what is declared."""

    com: Commodity
    origin: str
    mass: float
    """Net mass, kg."""
    value: float
    """Customs value (CIF), EUR."""
    units: float | None
    preference: str
    volume: float | None = None
    """Litres at 15 degC (liquids)."""
    strength: float | None = None
    """% vol (alcohol)."""
    sticks: int | None = None

    def copy(self) -> _Line:
        """A shallow copy (faster than ``dataclasses.replace``)."""
        return _Line(self.com, self.origin, self.mass, self.value, self.units, self.preference, self.volume,
                     self.strength, self.sticks)  # fmt: skip


@dataclass(slots=True)
class _ExciseView:
    """What an excise record states about one goods item; ``duty`` is the amount declared."""

    product: str
    volume: float | None
    strength: float | None
    mass: float | None
    density: float | None
    sticks: int | None
    duty: float

    def quantity(self) -> tuple[float, str]:
        """(quantity, unit) in the record's ``quantity_unit``."""
        if self.sticks is not None:
            return float(self.sticks), "sticks"
        if self.volume is not None:
            return self.volume, "l"
        return self.mass or 0.0, "kg"


@dataclass(slots=True)
class _Taxes:
    rate: float
    duty: float
    excise: float
    vat: float


@dataclass(slots=True)
class _Consignment:
    cid: str
    op: Operator
    mode: str
    eta_h: float
    dispatch: str
    lines: list[_Line]
    declared: list[_Line]
    procedure: str = "4000"
    true_procedure: str = "4000"
    patterns: list[str] = field(default_factory=list)
    affected: list[int] = field(default_factory=list)
    details: dict[str, float | str] = field(default_factory=dict)
    routing_prefix: tuple[str, ...] = ()
    ens_hs: list[str] | None = None
    ens_desc: list[str] | None = None
    hidden_mass: float = 0.0
    has_ens: bool = True
    has_decl: bool = True
    linked: bool = True
    decl_h: float | None = None
    true_total_value: float | None = None
    """Intrinsic value deciding the low-value relief for the true taxes (split shipments)."""
    excise_flow: str | None = None
    excise_pattern: str | None = None
    excise_variant: str | None = None
    excise_views: list[_ExciseView] | None = None


@dataclass(slots=True)
class _BehaviourPlan:
    switch_h: float
    spike: float
    value_factor: float
    mass_mult: float
    origins: tuple[str, ...]


@dataclass(slots=True)
class _Process:
    """A homogeneous Poisson process of arrivals for one special operator."""

    kind: str
    op: Operator
    rate_per_h: float
    next_h: float


def _r2(x: float) -> float:
    return round(x, 2)


_CHAR_VALUE = {ch: i for i, ch in enumerate(_ALNUM)}
_BYTE_TO_ALNUM = bytes(ord(_ALNUM[b % 36]) for b in range(256))
_CHECK_WEIGHTS = tuple(1 << (i % 10) for i in range(32))


def _check_char(body: str) -> str:
    """Check digit in the spirit of ISO 6346 (weighted sum mod 11 mod 10); illustrative."""
    value = _CHAR_VALUE
    total = sum(map(int.__mul__, map(value.__getitem__, body), _CHECK_WEIGHTS))
    return str(total % 11 % 10)


class EventStream:
    """Iterate over ``(event, ground truth or None)`` in emission order; ``stats`` fills as you go.

    >>> stream = EventStream(GeneratorConfig(duration_hours=0.5, rate_per_hour=60))
    >>> n = sum(1 for _ in stream)
    >>> n == stream.stats.n_events > 0
    True
    """

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.stats = GenerationStats()
        seed = config.seed
        # Separate streams of randomness so that, e.g., adding an event id draw does not
        # reshuffle the population. String seeds are hashed with SHA-512: stable across runs.
        self._rng = random.Random(f"vigie:{seed}:stream")
        self._ids = random.Random(f"vigie:{seed}:ids")
        self.population: Population = build_population(config.n_operators, random.Random(f"vigie:{seed}:population"))
        self._year = config.start.year % 100
        self._heap: list[tuple[int, int, InboundEvent, GroundTruth | None]] = []
        self._seq = 0
        self._n_consignments = 0
        self._n_shipments = 0
        self._start = config.start
        self._ecommerce_ops = [op for op in self.population.general if op.sector == "ecommerce"]
        by_weight = sorted(self.population.general, key=lambda op: -op.weight)
        self._small_ops = by_weight[len(by_weight) // 2 :]
        self._behaviour: dict[Operator, _BehaviourPlan] = {}
        self._processes: list[_Process] = []
        self._started = False
        self._plan(by_weight)

    # --- planning the fraud budget -----------------------------------------------------------
    def _plan(self, by_weight: list[Operator]) -> None:
        cfg, rng = self.config, self._rng
        duration = cfg.duration_hours
        n_expected = cfg.rate_per_hour * self._diurnal_integral(duration)
        frauds = cfg.fraud_share * n_expected
        extra_arrivals = 0.0
        behaviour_base = 0.0  # expected base arrivals of behaviour operators after their switch

        if frauds > 0:
            target = frauds * PATTERN_MIX["behaviour_change"]
            # Trusted, long-standing, mid-sized importers (not the very biggest, not e-commerce).
            candidates = [op for op in by_weight[10:400] if op.sector != "ecommerce"]
            if cfg.excise_share >= 1.0:  # no general importer ever arrives
                candidates = []
            expected = 0.0
            while candidates and (expected < target or not self._behaviour):
                # Draw operators until one whose expected flagged consignments fit the remaining
                # budget (a top importer switching would alone exceed it); else take the smallest.
                best: tuple[float, int, float, float] | None = None
                for _ in range(30):
                    i = rng.randrange(len(candidates))
                    switch = rng.uniform(0.2, 0.7) * duration
                    spike = rng.uniform(3.0, 5.0)
                    rate = self._base_general_rate(candidates[i])
                    contribution = rate * spike * self._diurnal_span(switch, duration)
                    if best is None or contribution < best[0]:
                        best = (contribution, i, switch, spike)
                    if contribution <= 1.3 * (target - expected):
                        best = (contribution, i, switch, spike)
                        break
                assert best is not None
                contribution, i, switch, spike = best
                op = candidates.pop(i)
                base_rate = self._base_general_rate(op)
                new = tuple(o for o in _NEW_ORIGINS if o not in op.origins)
                plan = _BehaviourPlan(switch, spike, rng.uniform(0.3, 0.6), rng.uniform(1.5, 3.0),
                                      tuple(rng.sample(new, rng.randint(1, 2))))  # fmt: skip
                self._behaviour[op] = plan
                span = self._diurnal_span(switch, duration)
                expected += contribution
                behaviour_base += base_rate * span
                extra_arrivals += base_rate * (spike - 1) * (duration - switch)
                self._processes.append(_Process("behaviour", op, base_rate * (spike - 1), switch))

            target = frauds * PATTERN_MIX["new_importer_large_flows"]
            expected = 0.0
            n_new = 0
            while expected < target or n_new == 0:
                first = rng.uniform(0.0, 0.7) * duration
                rate = rng.uniform(0.5, 2.0) * cfg.rate_per_hour / 1000.0
                op = make_operator(rng, "electronics", self.population.eoris, self.population.declarants)
                op.codes = tuple(BY_CN[cn] for cn in _HIGH_VALUE_CODES)
                op.code_cum = tuple(float(i + 1) for i in range(len(op.codes)))
                op.size *= rng.uniform(4.0, 8.0)  # large lots from day one
                op.mode = "air" if rng.random() < 0.6 else "sea"
                op.special_procedure = None
                self._processes.append(_Process("new_importer", op, rate, first))
                expected += rate * (duration - first)
                extra_arrivals += rate * (duration - first)
                n_new += 1
        self._processes = [proc for proc in self._processes if proc.rate_per_h > 0]
        for proc in self._processes:
            proc.next_h = proc.next_h + rng.expovariate(proc.rate_per_h)

        mean_parts = (SPLIT_PARTS[0] + SPLIT_PARTS[1]) / 2
        split_consignments = frauds * PATTERN_MIX["splitting"]
        extra_arrivals += split_consignments * (1 - 1 / mean_parts)
        n_base = max(n_expected - extra_arrivals, 0.5 * n_expected)
        self._base_rate = cfg.rate_per_hour * n_base / n_expected  # mean over a whole day
        self._p_excise = min(1.0, cfg.excise_share * n_expected / n_base)
        n_excise = self._p_excise * n_base
        excise_frauds = frauds * sum(PATTERN_MIX[p] for p in EXCISE_PATTERNS)
        self._p_excise_fraud = min(0.5, excise_frauds / n_excise) if n_excise > 0 else 0.0
        # Arrival-level pattern weights: a split arrival turns into ~5.5 consignments.
        parts = {p: (mean_parts if p == "splitting" else 1.0) for p in GENERAL_RANDOM_PATTERNS}
        weights = {p: PATTERN_MIX[p] / parts[p] for p in GENERAL_RANDOM_PATTERNS}
        self._general_patterns = tuple(weights.items())
        per_fraud_arrival = sum(PATTERN_MIX[p] for p in GENERAL_RANDOM_PATTERNS) / sum(weights.values())
        general_arrivals = max(1.0, (1 - self._p_excise) * n_base - behaviour_base)
        random_frauds = frauds * sum(PATTERN_MIX[p] for p in GENERAL_RANDOM_PATTERNS)
        self._p_general_fraud = min(0.9, random_frauds / per_fraud_arrival / general_arrivals)
        # Control probabilities (see module docstring).
        level = cfg.control_rate / (1 + (FRAUD_CONTROL_RATIO - 1) * cfg.fraud_share)
        self._p_control_random = cfg.control_rate * RANDOM_CONTROL_SHARE
        self._p_control_clean = max(0.0, level - self._p_control_random)
        self._p_control_fraud = min(1.0, max(0.0, FRAUD_CONTROL_RATIO * level - self._p_control_random))

    def _base_general_rate(self, op: Operator) -> float:
        """Mean arrivals per hour of ``op`` through the base process (daily mean)."""
        cfg = self.config
        return cfg.rate_per_hour * (1 - cfg.excise_share) * op.weight / self.population.general_cum[-1]

    def _diurnal_span(self, begin: float, end: float) -> float:
        """Intensity-weighted hours between ``begin`` and ``end`` (hours from start)."""
        return self._diurnal_integral(end) - self._diurnal_integral(begin)

    def _diurnal_integral(self, hours: float) -> float:
        """Integral of the daily intensity factor over the first ``hours`` of the window.

        The factor is 1 + A cos(2 pi (h - 14) / 24) with A = DIURNAL_AMPLITUDE; its mean over a
        day is 1, so ``rate_per_hour`` is the daily mean rate.
        """
        h0 = self._start_hour_offset()
        k = 2 * math.pi / 24
        return hours + DIURNAL_AMPLITUDE / k * (math.sin(k * (h0 + hours - 14)) - math.sin(k * (h0 - 14)))

    # --- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[InboundEvent, GroundTruth | None]]:
        if self._started:
            raise RuntimeError("an EventStream can be iterated only once: create a new one")
        self._started = True
        t0 = time.perf_counter()
        rng = self._rng
        duration = self.config.duration_hours
        peak = 1 + DIURNAL_AMPLITUDE
        lam_max = self._base_rate * peak
        start_hour = self._start_hour_offset()
        next_base = rng.expovariate(lam_max)
        block_start = 0.0
        while block_start < duration:
            block_end = min(block_start + BLOCK_HOURS, duration)
            arrivals: list[tuple[float, int, str, Operator | None]] = []
            while next_base < block_end:
                hour = (start_hour + next_base) % 24
                if rng.random() * peak < 1 + DIURNAL_AMPLITUDE * math.cos(2 * math.pi * (hour - 14) / 24):
                    arrivals.append((next_base, len(arrivals), "base", None))
                next_base += rng.expovariate(lam_max)
            for proc in self._processes:
                while proc.next_h < block_end:
                    arrivals.append((proc.next_h, len(arrivals), proc.kind, proc.op))
                    proc.next_h += rng.expovariate(proc.rate_per_h)
            arrivals.sort(key=lambda a: (a[0], a[1]))
            for eta_h, _, kind, op in arrivals:
                self._arrival(eta_h, kind, op)
            watermark = round((block_end - MAX_PRELODGE_H) * 3600)
            while self._heap and self._heap[0][0] < watermark:
                yield self._pop()
            self.stats.elapsed_seconds = time.perf_counter() - t0
            block_start = block_end
        while self._heap:
            yield self._pop()
        self.stats.elapsed_seconds = time.perf_counter() - t0

    def _pop(self) -> tuple[InboundEvent, GroundTruth | None]:
        _, _, event, truth = heapq.heappop(self._heap)
        stats = self.stats
        stats.n_events += 1
        stats.events_per_type[event.event_type] = stats.events_per_type.get(event.event_type, 0) + 1
        if truth is not None:
            stats.n_truth_records += 1
            for p in truth.patterns:
                stats.fraud_events_per_pattern[p] = stats.fraud_events_per_pattern.get(p, 0) + 1
        return event, truth

    def _push(self, seconds: int, event: InboundEvent, truth: GroundTruth | None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (seconds, self._seq, event, truth))

    # --- small helpers -----------------------------------------------------------------------
    def _event_id(self) -> str:
        """A random (version 4) UUID drawn from the seeded id stream; same text as ``uuid.UUID``."""
        n = self._ids.getrandbits(128)
        n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
        n = (n & ~(0xF000 << 64)) | (4 << 76)  # version 4
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _dt(self, seconds: int) -> datetime:
        return self._start + timedelta(seconds=seconds)

    def _alnum(self, k: int) -> str:
        """``k`` random characters from [0-9A-Z] (byte mod 36: a negligible bias for synthetic ids)."""
        return self._ids.randbytes(k).translate(_BYTE_TO_ALNUM).decode()

    def _mrn(self) -> str:
        body = self._alnum(13)
        return f"{self._year:02d}FR{body}{_check_char(body)}"

    def _arc(self) -> str:
        body = self._alnum(16)
        return f"{self._year:02d}FR{body}{_check_char(body)}"

    def _supplier(self, op: Operator, country: str) -> str:
        name = op.suppliers.get(country)
        if name is None:
            name = op.suppliers[country] = supplier_name(self._rng, country)
        return name

    @staticmethod
    def _feasible(mode: str, country: str) -> bool:
        return ("air" if mode == "postal" else mode) in LOADING_PLACES[country]

    def _mode_for(self, op: Operator, country: str, com: Commodity) -> str:
        rng = self._rng
        if com.package_kg == 0:  # bulk liquids and fertilisers sail
            return "sea" if "sea" in LOADING_PLACES[country] else "road"
        if self._feasible(op.mode, country) and rng.random() < 0.9:
            return op.mode
        region = REGIONS[COUNTRY_REGION[country]]
        modes = tuple((m, w) for m, w in region.modes if self._feasible(m, country))
        return choose_pairs(rng, modes) if modes else "air"

    def _pick_origin(self, op: Operator, com: Commodity) -> str:
        rng = self._rng
        if rng.random() < 0.9:
            usual = [o for o in op.origins if o in com.origins]
            if usual:
                return usual[0] if len(usual) == 1 or rng.random() < 0.75 else rng.choice(usual)
        return weighted_choice(rng, com.origins, com.origin_cum)

    def _preference(self, op: Operator, origin: str, com: Commodity) -> str:
        # A given importer claims (or not) the preference of a given origin consistently.
        if com.duty_pct <= 0 or com.excise:
            return "100"
        draw = (op.bias * 7.0 + hash_country(origin) * 0.37) % 1.0
        return "300" if draw < PREFERENCE_CLAIM.get(origin, 0.0) else "100"

    def _line(self, op: Operator, com: Commodity, origin: str, mode: str, size: float = 1.0) -> _Line:
        """A clean goods item: mass from the code's typical size, log-normal unit value."""
        rng = self._rng
        if mode == "postal":
            mass = min(20.0, max(0.05, rng.lognormvariate(math.log(0.6), 0.8)))
        else:
            mass = com.mass_kg * MODE_MASS_FACTOR[mode] * op.size * size * rng.lognormvariate(0.0, 0.6)
            mass = max(0.5, mass)
        unit_value = com.unit_value_eur_kg * op.price_factor * rng.lognormvariate(0.0, com.sigma)
        line = _Line(com, origin, mass, 0.0, None, self._preference(op, origin, com))
        self._set_quantities(line, mass)
        line.value = unit_value * line.mass
        return line

    def _set_quantities(self, line: _Line, mass: float) -> None:
        """Derive volume / strength / sticks / supplementary units from a target net mass."""
        com, rng = line.com, self._rng
        product = com.excise
        if product in _ALCOHOL:
            assert com.density is not None
            line.volume = max(1.0, round(mass / com.density, 1))
            if line.strength is None:
                line.strength = rng.choice(ALCOHOL_STRENGTHS[com.cn])
            line.mass = line.volume * com.density
            line.units = line.volume if com.supp_unit == "l" else line.volume * line.strength / 100.0
        elif product == "cigarettes":
            line.sticks = max(200, round(mass / CIGARETTE_KG_PER_STICK / 200) * 200)
            line.mass = line.sticks * CIGARETTE_KG_PER_STICK
            line.units = line.sticks / 1000.0
        elif product in _FUEL:
            assert com.density is not None
            line.volume = max(1.0, float(round(mass / com.density)))
            line.mass = line.volume * com.density
        elif com.kg_per_unit:
            per_unit = com.kg_per_unit * rng.uniform(0.95, 1.05)
            line.units = float(max(1, round(mass / per_unit)))
            line.mass = line.units * per_unit
        else:
            line.mass = mass

    # --- consignment builders ----------------------------------------------------------------
    def _new_cid(self) -> str:
        self._n_consignments += 1
        return f"C{self._n_consignments:08d}"

    def _consignment(
        self,
        op: Operator,
        eta_h: float,
        first: Commodity | None = None,
        origin: str | None = None,
        mode: str | None = None,
        size: float = 1.0,
    ) -> _Consignment:
        """A clean consignment of ``op``'s usual goods (``first`` forces the first item's code)."""
        rng = self._rng
        com = first or op.codes[bisect_cum(op.code_cum, rng.random())]
        origin = origin or self._pick_origin(op, com)
        mode = mode or self._mode_for(op, origin, com)
        if not self._feasible(mode, origin):
            mode = "sea" if "sea" in LOADING_PLACES[origin] else "air"
        n_items = rng.randint(1, op.max_items) if mode != "postal" else rng.choice((1, 1, 1, 2))
        coms = [com]
        # Further items: other usual goods of the same supplier country (one supplier per consignment).
        others = [c for c in op.codes if c is not com and origin in c.origins]
        for _ in range(n_items - 1):
            if not others:
                break
            coms.append(rng.choice(others))
        lines = [self._line(op, c, origin, mode, size) for c in coms]
        cap = MODE_MAX_CONSIGNMENT_KG.get(mode)
        total = sum(line.mass for line in lines)
        if cap is not None and total > cap:
            # A truck or a plane takes what fits: scale every item down proportionally.
            factor = cap / total * rng.uniform(0.6, 1.0)
            for line in lines:
                unit_value = line.value / line.mass
                self._set_quantities(line, line.mass * factor)
                line.value = unit_value * line.mass
        return _Consignment(
            cid=self._new_cid(),
            op=op,
            mode=mode,
            eta_h=eta_h,
            dispatch=origin,
            lines=lines,
            declared=[line.copy() for line in lines],
        )

    def _arrival(self, eta_h: float, kind: str, op: Operator | None) -> None:
        rng = self._rng
        if kind == "behaviour":
            assert op is not None
            self._emit(self._behaviour_consignment(op, eta_h))
            return
        if kind == "new_importer":
            assert op is not None
            self._emit(self._new_importer_consignment(op, eta_h))
            return
        if rng.random() < self._p_excise:
            self._emit(self._excise_consignment(self.population.pick_excise(rng), eta_h))
            return
        op = self.population.pick_general(rng)
        plan = self._behaviour.get(op)
        if plan is not None and eta_h >= plan.switch_h:
            self._emit(self._behaviour_consignment(op, eta_h))
            return
        if rng.random() < self._p_general_fraud:
            pattern = choose_pairs(rng, self._general_patterns)
            if pattern == "splitting":
                for part in self._splitting(op, eta_h):
                    self._emit(part)
                return
            builder = {
                "undervaluation": self._undervaluation,
                "misclassification": self._misclassification,
                "origin_transshipment": self._transshipment,
                "cover_load_smuggling": self._cover_load,
            }[pattern]
            self._emit(builder(op, eta_h))
            return
        c = self._consignment(op, eta_h)
        x = rng.random()
        if x < 0.05:
            c.linked = False
        elif x < 0.12:
            c.has_decl = False
        elif x < 0.15:
            c.has_ens = False
        if op.special_procedure and rng.random() < 0.5:
            c.procedure = c.true_procedure = op.special_procedure
        self._emit(c)

    def _fraud_presence(self, c: _Consignment) -> None:
        x = self._rng.random()
        if x < 0.05:
            c.linked = False
        elif x < 0.10:
            c.has_ens = False

    def _undervaluation(self, op: Operator, eta_h: float) -> _Consignment:
        rng = self._rng
        c = self._consignment(op, eta_h)
        affected = [i for i in range(len(c.lines)) if rng.random() < 0.6] or [rng.randrange(len(c.lines))]
        true_total = declared_total = 0.0
        for i in affected:
            factor = rng.uniform(0.15, 0.5)
            c.declared[i].value = c.lines[i].value * factor
            true_total += c.lines[i].value
            declared_total += c.declared[i].value
        c.patterns.append("undervaluation")
        c.affected = affected
        c.details.update(
            true_customs_value_eur=_r2(true_total),
            declared_customs_value_eur=_r2(declared_total),
            value_factor=round(declared_total / true_total, 4),
        )
        self._fraud_presence(c)
        return c

    def _misclassification(self, op: Operator, eta_h: float) -> _Consignment:
        rng = self._rng
        own = {com.cn for com in op.codes}
        pairs = [p for p in MISCLASSIFICATION_PAIRS if p[0] in own or p[1] in own] or list(MISCLASSIFICATION_PAIRS)
        true_cn, declared_cn = rng.choice(pairs)
        true_com, declared_com = BY_CN[true_cn], BY_CN[declared_cn]
        # Garlic declared as onions only pays off against the duty on Chinese garlic.
        origin = "CN" if true_cn == "07032000" else self._pick_origin(op, true_com)
        mode = self._mode_for(op, origin, true_com)
        if mode == "postal":  # worth the trouble only above the 150 EUR duty relief: freight, not parcels
            mode = "air" if true_com.unit_value_eur_kg >= 20 else "sea"
        c = self._consignment(op, eta_h, first=true_com, origin=origin, mode=mode)
        line = c.declared[0]
        line.com = declared_com
        # No preference claimed: the gain is the conventional duty gap (plus any trade defence).
        line.preference = c.lines[0].preference = "100"
        if declared_com.supp_unit is None:
            line.units = None
        elif declared_com.supp_unit != true_com.supp_unit:
            assert declared_com.kg_per_unit is not None
            line.units = float(max(1, round(line.mass / declared_com.kg_per_unit)))
        c.patterns.append("misclassification")
        c.affected = [0]
        c.details.update(true_cn_code=true_cn, declared_cn_code=declared_cn,
                         true_customs_value_eur=_r2(c.lines[0].value))  # fmt: skip
        if rng.random() < 0.4:
            # The carrier's data reflect the real goods: the ENS betrays the declaration.
            c.ens_hs = [ln.com.hs6 for ln in c.lines]
            c.ens_desc = [ln.com.ens_description for ln in c.lines]
        self._fraud_presence(c)
        return c

    def _transshipment(self, op: Operator, eta_h: float) -> _Consignment:
        rng = self._rng
        dutiable = [com for com in op.codes if com.extra_duty("CN") > 0]
        if not dutiable:
            dutiable = [com for com in COMMODITIES if com.extra_duty("CN") > 0]
        com = rng.choice(dutiable)
        claimed = rng.choice(TRANSSHIPMENT_COUNTRIES)
        mode = "sea" if com.unit_value_eur_kg < 20 or rng.random() < 0.7 else "air"
        c = self._consignment(op, eta_h, first=com, origin="CN", mode=mode)
        # Re-derive the mode/loading from the claimed country: the goods leave from there.
        c.dispatch = claimed
        if not self._feasible(c.mode, claimed):
            c.mode = "sea"
        claim_pref = rng.random() < 0.5
        for line in c.declared:
            line.origin = claimed
            if claim_pref and line.com.duty_pct > 0 and PREFERENCE_CLAIM.get(claimed, 0) > 0:
                line.preference = "300"
        for line in c.lines:
            line.preference = "100"
        c.routing_prefix = ("CN",)
        c.patterns.append("origin_transshipment")
        c.affected = list(range(len(c.lines)))
        c.details.update(true_origin="CN", declared_origin=claimed, true_cn_code=com.cn)
        self._fraud_presence(c)
        return c

    def _splitting(self, op: Operator, eta_h: float) -> list[_Consignment]:
        rng = self._rng
        if op.sector not in ("ecommerce", "textiles", "footwear", "toys", "misc") and self._ecommerce_ops:
            op = rng.choice(self._ecommerce_ops)
        candidates = [c for c in op.codes if c.duty_pct > 0 and c.kg_per_unit is not None and not c.excise]
        if not candidates:
            candidates = [c for c in SECTORS["textiles"] + SECTORS["footwear"] if c.kg_per_unit]
        com = rng.choice(candidates)
        origin = self._pick_origin(op, com)
        mode = op.mode if op.mode in ("postal", "air") and self._feasible(op.mode, origin) else "postal"
        k = rng.randint(*SPLIT_PARTS)
        self._n_shipments += 1
        shipment = f"S{self._n_shipments:06d}"
        offsets = sorted(rng.uniform(0.0, 1.5) for _ in range(k))
        parts = []
        values = [rng.uniform(95.0, 148.0) for _ in range(k)]
        shipment_value = sum(values)
        day_end: float | None = None
        for offset, value in zip(offsets, values, strict=True):
            part_eta = eta_h + offset
            unit_value = com.unit_value_eur_kg * op.price_factor * rng.lognormvariate(0.0, com.sigma)
            line = _Line(com, origin, value / unit_value, value, None, "100")
            self._set_quantities(line, line.mass)
            line.value = min(value, 149.0)
            c = _Consignment(
                cid=self._new_cid(), op=op, mode=mode, eta_h=part_eta, dispatch=origin, lines=[line],
                declared=[line.copy()], true_total_value=shipment_value,
            )  # fmt: skip
            decl = part_eta + rng.uniform(0.2, 4.0)
            if day_end is None:  # the UTC day of the first parcel's clearance
                h0 = self._start_hour_offset()
                day_end = (math.floor((h0 + part_eta + 0.2) / 24) + 1) * 24 - h0
            # Same importer, same day: every part is declared before midnight of the first one's day.
            c.decl_h = min(decl, day_end - rng.uniform(0.02, 0.3))
            c.patterns.append("splitting")
            c.affected = [0]
            c.details.update(shipment_id=shipment, split_parts=float(k), shipment_value_eur=_r2(shipment_value),
                             true_customs_value_eur=_r2(line.value))  # fmt: skip
            parts.append(c)
        return parts

    def _start_hour_offset(self) -> float:
        start = self._start.astimezone(UTC)
        return start.hour + start.minute / 60 + start.second / 3600

    def _cover_load(self, op: Operator, eta_h: float) -> _Consignment:
        rng = self._rng
        op = rng.choice(self._small_ops)  # front companies are small, rarely seen importers
        cover = BY_CN[rng.choice(COVER_CODES)]
        if rng.random() < 0.4:
            origin, mode, sticks = "GB", "road", round(rng.uniform(0.3e6, 1.5e6), -4)
        else:
            origin = rng.choice((*cover.origins, "AE", "TR"))
            mode, sticks = "sea", round(rng.uniform(1.0e6, 6.0e6), -4)
        c = self._consignment(op, eta_h, first=cover, origin=origin, mode=mode)
        cigarettes = BY_CN["24022090"]
        hidden = _Line(cigarettes, rng.choice(cigarettes.origins), 0.0, 0.0, None, "100")
        self._set_quantities(hidden, sticks * CIGARETTE_KG_PER_STICK)
        hidden.value = hidden.mass * cigarettes.unit_value_eur_kg * rng.lognormvariate(0.0, cigarettes.sigma)
        # The cover is a front row of goods: it weighs 0.4-1.5 times the cigarettes behind it.
        line = c.lines[0]
        unit_value = line.value / line.mass
        self._set_quantities(line, hidden.mass * rng.uniform(0.4, 1.5))
        line.value = unit_value * line.mass
        c.lines = [line]
        c.declared = [line.copy()]
        c.lines.append(hidden)
        # Master cases and pallets: about 1.2 kg gross per 1,000 sticks on the scale.
        c.hidden_mass = hidden.mass * 1.2
        c.patterns.append("cover_load_smuggling")
        c.affected = [0]
        c.details.update(hidden_cn_code="24022090", hidden_sticks=float(hidden.sticks or 0),
                         hidden_gross_mass_kg=_r2(c.hidden_mass), cover_cn_code=cover.cn)  # fmt: skip
        self._fraud_presence(c)
        return c

    def _behaviour_consignment(self, op: Operator, eta_h: float) -> _Consignment:
        rng = self._rng
        plan = self._behaviour[op]
        origin = rng.choice(plan.origins)
        com = op.codes[bisect_cum(op.code_cum, rng.random())]
        c = self._consignment(op, eta_h, first=com, origin=origin, size=plan.mass_mult)
        true_total = declared_total = 0.0
        for true, declared in zip(c.lines, c.declared, strict=True):
            declared.value = true.value * plan.value_factor * rng.uniform(0.9, 1.1)
            true_total += true.value
            declared_total += declared.value
        c.patterns.append("behaviour_change")
        c.affected = list(range(len(c.lines)))
        c.details.update(
            switch_time=self._dt(round(plan.switch_h * 3600)).isoformat(),
            new_origin=origin,
            value_factor=round(declared_total / true_total, 4),
            true_customs_value_eur=_r2(true_total),
            declared_customs_value_eur=_r2(declared_total),
        )
        self._fraud_presence(c)
        return c

    def _new_importer_consignment(self, op: Operator, eta_h: float) -> _Consignment:
        c = self._consignment(op, eta_h)
        # Release with onward-supply VAT exemption; the onward supply is never taxed.
        c.procedure = "4200"
        c.true_procedure = "4000"
        c.patterns.append("new_importer_large_flows")
        c.affected = list(range(len(c.lines)))
        c.details.update(true_customs_value_eur=_r2(sum(line.value for line in c.lines)),
                         declared_procedure="4200")  # fmt: skip
        self._fraud_presence(c)
        return c

    def _excise_consignment(self, op: Operator, eta_h: float) -> _Consignment:
        rng = self._rng
        c = self._consignment(op, eta_h)
        c.lines = c.lines[:2]
        c.declared = c.declared[:2]
        product = c.lines[0].com.excise
        assert product is not None
        share_suspended = 0.85 if product in _FUEL else 0.7 if product in ("cigarettes", "fine_cut_tobacco") else 0.5
        flow = "suspension" if rng.random() < share_suspended else "release"
        if flow == "suspension" and rng.random() < 0.05:
            flow = "export"
        pattern = None
        if rng.random() < self._p_excise_fraud:
            pattern = rng.choice(EXCISE_PATTERNS)
            flow = "release" if pattern == "excise_physics" else "suspension"
            if pattern == "excise_diversion":
                c.excise_variant = choose_pairs(rng, (("no_receipt", 0.6), ("partial", 0.25), ("false_export", 0.15)))
                if c.excise_variant == "false_export":
                    flow = "export"
            elif pattern == "excise_shortage":
                c.excise_variant = "shortage"
            else:
                c.excise_variant = rng.choice(_PHYSICS_VARIANTS[product])
            c.patterns.append(pattern)
            c.affected = [0]
        c.excise_flow = flow
        c.excise_pattern = pattern
        c.procedure = c.true_procedure = "4000" if flow == "release" else "0700"
        x = rng.random()
        if x < 0.05:
            c.linked = False
        elif x < 0.10:
            c.has_ens = False
        c.excise_views = [self._excise_view(line) for line in c.lines]
        if pattern == "excise_physics":
            self._physics_fraud(c)
        return c

    @staticmethod
    def _excise_view(line: _Line) -> _ExciseView:
        product = line.com.excise
        assert product is not None
        volume = round(line.volume, 1) if line.volume is not None else None
        strength = line.strength
        sticks = line.sticks
        mass = density = None
        if product in _FUEL:
            density = line.com.density
            mass = round(line.mass, 1)
        elif product in ("cigarettes", "fine_cut_tobacco"):
            mass = round(line.mass, 1)
        duty = _r2(excise_duty(product, volume, strength, mass, sticks))
        return _ExciseView(product, volume, strength, mass, density, sticks, duty)

    def _physics_fraud(self, c: _Consignment) -> None:
        """Make item 1's excise data break physics or the rate x base identity (release flow)."""
        rng = self._rng
        assert c.excise_views is not None and c.excise_variant is not None
        view, declared = c.excise_views[0], c.declared[0]
        true_duty = view.duty
        variant = c.excise_variant
        if variant == "strength_understated":
            assert view.strength is not None
            view.strength = round(view.strength * rng.uniform(0.35, 0.65), 1)
            declared.strength = view.strength
            if declared.com.supp_unit == "l alc. 100 %" and declared.volume is not None:
                declared.units = declared.volume * view.strength / 100.0
        elif variant == "category_mismatch":
            view.product = "wine"  # spirits taxed at the still-wine rate
        elif variant == "sticks_understated":
            assert view.sticks is not None
            view.sticks = round(view.sticks * rng.uniform(0.4, 0.7) / 200) * 200
            declared.sticks = view.sticks
            declared.units = view.sticks / 1000.0
        elif variant == "mass_understated":
            assert view.mass is not None
            view.mass = round(view.mass * rng.uniform(0.4, 0.75), 1)
        elif variant == "volume_understated":
            assert view.volume is not None
            view.volume = float(round(view.volume * rng.uniform(0.6, 0.85)))
        if variant == "duty_understated":
            view.duty = _r2(true_duty * rng.uniform(0.4, 0.8))
        else:
            view.duty = _r2(excise_duty(view.product, view.volume, view.strength, view.mass, view.sticks))
        c.details.update(variant=variant, true_excise_eur=true_duty, declared_excise_eur=view.duty)

    # --- taxes ---------------------------------------------------------------------------------
    @staticmethod
    def _taxes(lines: list[_Line], procedure: str, excise: list[float] | None, total: float | None) -> list[_Taxes]:
        """Duty, excise and VAT per line; ``excise`` gives the excise paid at import per line."""
        intrinsic = sum(line.value for line in lines) if total is None else total
        relief = intrinsic <= LOW_VALUE_THRESHOLD_EUR and not any(line.com.excise for line in lines)
        out = []
        for i, line in enumerate(lines):
            if relief or procedure in DUTY_SUSPENDED:
                rate = 0.0
            else:
                rate = (0.0 if line.preference == "300" else line.com.duty_pct) + line.com.extra_duty(line.origin)
            duty = line.value * rate / 100.0
            exc = excise[i] if excise is not None and i < len(excise) else 0.0
            vat = 0.0 if procedure in VAT_SUSPENDED else VAT_RATE * (line.value + duty + exc)
            out.append(_Taxes(rate, duty, exc, vat))
        return out

    # --- events --------------------------------------------------------------------------------
    def _emit(self, c: _Consignment) -> None:
        """Turn a consignment into events, compute its revenue at risk and push them."""
        rng = self._rng
        op = c.op
        region = COUNTRY_REGION[c.dispatch]
        mode = c.mode
        # Persistent habits: the same importer uses the same office and carrier most of the time.
        offices = ENTRY_OFFICES.get((mode, region)) or ENTRY_OFFICES[(mode, "*")]
        entry_office = pick_by_bias(op.bias if rng.random() < 0.9 else rng.random(), offices)
        carriers = CARRIERS[mode]
        carrier = carriers[int(((op.bias * 5.0) % 1.0 if rng.random() < 0.85 else rng.random()) * len(carriers))]
        decl_office = op.inland_office if op.inland_office and mode in ("sea", "road", "rail") else entry_office

        # Timing (hours from start).
        eta_h = c.eta_h
        if mode == "sea":
            days = REGIONS[region].voyage_days
            lead = rng.uniform(*days) * 24 + rng.uniform(*SEA_BEFORE_LOADING_H)
        else:
            lead = rng.uniform(*ENS_LEAD_H[mode])
        ens_h = eta_h - lead
        if c.decl_h is not None:
            decl_h = c.decl_h
        elif rng.random() < PRELODGE_SHARE[mode]:
            decl_h = max(eta_h - rng.uniform(0.25, MAX_PRELODGE_H), ens_h + rng.uniform(0.1, 0.5))
        else:
            decl_h = eta_h + min(72.0, rng.lognormvariate(math.log(DECL_DELAY_MEDIAN_H[mode]), 0.8))
        if c.has_ens:
            decl_h = max(decl_h, ens_h + 0.1)
        ens_s, decl_s = round(ens_h * 3600), round(decl_h * 3600)

        # Taxes, true and declared, and the revenue at risk.
        excise_paid_true: list[float] | None = None
        excise_paid_decl: list[float] | None = None
        if c.excise_views is not None and c.excise_flow == "release":
            excise_paid_true = [excise_duty(ln.com.excise or "", ln.volume, ln.strength,
                                            ln.mass, ln.sticks) for ln in c.lines]  # fmt: skip
            excise_paid_decl = [view.duty for view in c.excise_views]
        hidden_excise = [0.0] * len(c.lines)
        for i, line in enumerate(c.lines):
            if line.com.excise and i >= len(c.declared):  # smuggled goods owe excise
                hidden_excise[i] = excise_duty(line.com.excise, line.volume, line.strength, line.mass, line.sticks)
        if excise_paid_true is None and any(hidden_excise):
            excise_paid_true = hidden_excise
        declared_taxes = self._taxes(c.declared, c.procedure, excise_paid_decl, None)
        true_taxes = self._taxes(c.lines, c.true_procedure, excise_paid_true, c.true_total_value)
        customs_patterns = [p for p in c.patterns if p not in EXCISE_PATTERNS]
        duty_ev = vat_ev = excise_ev = 0.0
        if customs_patterns or c.excise_pattern == "excise_physics":
            duty_ev = max(0.0, sum(t.duty for t in true_taxes) - sum(t.duty for t in declared_taxes))
            vat_ev = max(0.0, sum(t.vat for t in true_taxes) - sum(t.vat for t in declared_taxes))
            excise_ev = max(0.0, sum(t.excise for t in true_taxes) - sum(t.excise for t in declared_taxes))

        if customs_patterns and c.has_ens and rng.random() < VAGUE_ON_FRAUD:
            c.ens_desc = [rng.choice(VAGUE_DESCRIPTIONS)] * len(c.declared)
            c.patterns.append("vague_description")
            customs_patterns.append("vague_description")

        ens_ref = self._mrn() if c.has_ens else None
        mrn = self._mrn() if c.has_decl else None
        ens_id = self._event_id() if c.has_ens else None
        decl_id = self._event_id() if c.has_decl else None
        c.details["consignment_id"] = c.cid
        revenue = 0.0
        if customs_patterns or c.excise_pattern == "excise_physics":
            revenue = _r2(duty_ev + vat_ev + excise_ev)
            c.details.update(duty_evaded_eur=_r2(duty_ev), vat_evaded_eur=_r2(vat_ev), excise_evaded_eur=_r2(excise_ev))
        items = tuple(i + 1 for i in (c.affected or range(len(c.declared))))
        patterns = tuple(customs_patterns)

        supplier = self._supplier(op, c.dispatch)
        if c.has_ens:
            assert ens_ref is not None and ens_id is not None
            ens = self._ens(c, ens_id, ens_s, ens_ref, carrier, supplier, entry_office)
            truth = None
            if customs_patterns:
                truth = GroundTruth(ens_id, "ens", ens_ref, patterns, items, revenue, dict(c.details))
            self._push(ens_s, ens, truth)

        excise_revenue = 0.0
        if c.has_decl:
            assert mrn is not None and decl_id is not None
            decl = self._declaration(c, decl_id, decl_s, mrn, ens_ref if c.linked else None, supplier,
                                     decl_office, declared_taxes)  # fmt: skip
            truth = None
            decl_patterns = patterns + (("excise_physics",) if c.excise_pattern == "excise_physics" else ())
            if decl_patterns:
                truth = GroundTruth(decl_id, "declaration", mrn, decl_patterns, items, revenue, dict(c.details))
            self._push(decl_s, decl, truth)
            self._control("declaration", mrn, decl_id, decl_s, decl_office, truth)
            if c.excise_views is not None:
                excise_revenue = self._excise_records(c, mrn, decl_s, decl_office, declared_taxes, revenue)

        stats = self.stats
        stats.n_consignments += 1
        if c.patterns:
            stats.n_fraud_consignments += 1
            stats.revenue_at_risk_eur += revenue + excise_revenue
            for p in c.patterns:
                stats.fraud_consignments_per_pattern[p] = stats.fraud_consignments_per_pattern.get(p, 0) + 1

    def _transport_document(self, carrier: Carrier, dispatch: str) -> str:
        ids = self._ids
        if carrier.mode == "sea":
            return f"{carrier.doc_prefix}{ids.randrange(10**9, 10**10)}"
        if carrier.mode == "air":
            serial = ids.randrange(10**6, 10**7)
            return f"{carrier.doc_prefix}-{serial}{serial % 7}"  # air waybill: 7 digits + mod-7 check
        if carrier.mode == "postal":
            digits = f"{ids.randrange(10**7, 10**8)}"
            weights = (8, 6, 4, 2, 3, 5, 9, 7)
            check = 11 - sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
            check = 0 if check == 10 else 5 if check == 11 else check
            return f"{ids.choice(('LX', 'RR', 'UA', 'CP', 'EE'))}{digits}{check}{dispatch}"  # UPU S10
        return f"{carrier.doc_prefix}{ids.randrange(10**8, 10**9)}"

    def _ens(
        self,
        c: _Consignment,
        event_id: str,
        seconds: int,
        ens_ref: str,
        carrier: Carrier,
        supplier: str,
        office: str,
    ) -> EntrySummaryDeclaration:
        rng = self._rng
        op, mode = c.op, c.mode
        loading = rng.choice(LOADING_PLACES[c.dispatch]["air" if mode == "postal" else mode])
        region = REGIONS[COUNTRY_REGION[c.dispatch]]
        routing = [*c.routing_prefix, c.dispatch]
        if loading[:2] != c.dispatch:
            routing.append(loading[:2])
        if not c.routing_prefix and c.dispatch != "CN" and region.name == "far_east" and rng.random() < 0.03:
            routing.insert(1, "CN")  # clean ships call at Chinese ports too: routing via CN is no proof
        hubs = region.sea_hubs if mode == "sea" else region.air_hubs if mode in ("air", "postal") else ()
        for hub, p in hubs:
            if rng.random() < p and hub not in routing and len(routing) < 5:
                routing.append(hub)
        routing.append("FR")
        items = []
        for i, line in enumerate(c.declared):
            hs = c.ens_hs[i] if c.ens_hs is not None else line.com.hs6
            desc = c.ens_desc[i] if c.ens_desc is not None else line.com.ens_description
            if c.ens_hs is None and rng.random() < 0.02:
                hs = rng.choice(SECTORS[line.com.sector]).hs6  # carrier's coding error
            if not c.patterns and c.ens_desc is None and rng.random() < VAGUE_ON_CLEAN:
                desc = rng.choice(VAGUE_DESCRIPTIONS)
            gross = line.mass * line.com.packaging * rng.uniform(1.0, 1.04)
            if i == 0:
                gross += c.hidden_mass
            packages = 1 if mode == "postal" or line.com.package_kg == 0 else max(1, round(gross / line.com.package_kg))
            items.append(EnsGoodsItem(item_number=i + 1, hs_code=hs, description=desc,
                                      gross_mass_kg=round(gross, 3 if mode == "postal" else 1),
                                      packages=packages))  # fmt: skip
        notify = None
        if mode == "sea" and rng.random() < 0.6:
            notify = Party(name=op.declarant_name, country="FR", eori=op.declarant_eori)
        return EntrySummaryDeclaration(
            event_id=event_id,
            event_time=self._dt(seconds),
            source_system=SOURCE_ENS,
            ens_reference=ens_ref,
            transport_mode=mode,
            carrier_eori=carrier.eori,
            consignor=Party(name=supplier, country=c.dispatch),
            consignee=Party(name=op.name, country="FR", eori=op.eori),
            notify_party=notify,
            transport_document=self._transport_document(carrier, c.dispatch),
            countries_of_routing=routing,
            place_of_loading=loading,
            first_office_of_entry=office,
            eta=self._dt(round(c.eta_h * 3600)),
            goods_items=items,
        )

    def _declaration(
        self,
        c: _Consignment,
        event_id: str,
        seconds: int,
        mrn: str,
        ens_ref: str | None,
        supplier: str,
        office: str,
        taxes: list[_Taxes],
    ) -> ImportDeclaration:
        rng = self._rng
        op, mode = c.op, c.mode
        currencies = CURRENCIES.get(c.dispatch, DEFAULT_CURRENCIES)
        currency = (
            pick_by_bias((op.bias * 13.0) % 1.0, currencies) if rng.random() < 0.9 else choose_pairs(rng, currencies)
        )
        fx = EUR_PER_UNIT[currency]
        # FOB invoices: the customs value (CIF) adds freight and insurance to the border.
        freight = rng.uniform(0.02, 0.08) if mode in ("sea", "rail") and rng.random() < 0.5 else 0.0
        decimals = 0 if currency in ("JPY", "KRW") else 2
        items = []
        for i, (line, tax) in enumerate(zip(c.declared, taxes, strict=True)):
            value = max(0.01, _r2(line.value))
            invoice = max(1.0 if decimals == 0 else 0.01, round(value / (1 + freight) / fx, decimals))
            mass = round(line.mass, 3) if line.mass < 100 else round(line.mass, 1)
            extra = line.com.extra_duty(line.origin) > 0
            items.append(
                GoodsItem(
                    item_number=i + 1,
                    cn_code=line.com.cn,
                    taric_code=None if mode == "postal" else line.com.cn + ("10" if extra else "00"),
                    description=line.com.description,
                    origin_country=line.origin,
                    dispatch_country=c.dispatch,
                    preference=line.preference,
                    net_mass_kg=max(0.001, mass),
                    supplementary_units=round(line.units, 2) if line.units else None,
                    supplementary_unit_code=line.com.supp_unit if line.units else None,
                    invoice_amount=invoice,
                    invoice_currency=currency,
                    customs_value_eur=value,
                    statistical_value_eur=value,
                    valuation_method="1" if rng.random() < 0.98 else rng.choice(("2", "3", "6")),
                    duty_rate_pct=round(tax.rate, 2),
                    duty_eur=_r2(tax.duty),
                    vat_eur=_r2(tax.vat),
                    excise_eur=_r2(tax.excise) if line.com.excise and c.excise_flow == "release" else None,
                )
            )
        declarant = op.declarant_eori if rng.random() < 0.92 else rng.choice(self.population.declarants)[0]
        container = False
        if mode == "sea":
            # Bulk (no packages) and cars (ro-ro) do not travel in containers.
            container = all(0 < line.com.package_kg < 1400 for line in c.declared)
        elif mode == "rail":
            container = rng.random() < 0.5
        return ImportDeclaration(
            event_id=event_id,
            event_time=self._dt(seconds),
            source_system=SOURCE_DECLARATION,
            mrn=mrn,
            declarant_eori=declarant,
            importer_eori=op.eori,
            seller=Party(name=supplier, country=c.dispatch),
            customs_office=office,
            procedure_code=c.procedure,
            transport_mode_at_border=mode,
            container=container,
            ens_reference=ens_ref,
            goods_items=items,
        )

    # --- excise records ------------------------------------------------------------------------
    def _excise_event(
        self,
        record_type: str,
        seconds: int,
        view: _ExciseView,
        cn: str,
        operator_eori: str,
        consignor: str,
        consignee: str | None,
        mrn: str,
        arc: str | None,
        dispatched: float,
        received: float | None,
    ) -> tuple[str, ExciseMovement]:
        event_id = self._event_id()
        _, unit = view.quantity()
        event = ExciseMovement(
            event_id=event_id,
            event_time=self._dt(seconds),
            source_system=SOURCE_EXCISE,
            record_type=record_type,
            arc=arc,
            product_category=view.product,
            cn_code=cn,
            operator_eori=operator_eori,
            consignor_excise_number=consignor,
            consignee_excise_number=consignee,
            import_mrn=mrn,
            volume_litres=view.volume,
            alcohol_strength_pct=view.strength,
            mass_kg=view.mass,
            density_kg_per_l_at_15c=view.density,
            sticks=view.sticks,
            dispatched_quantity=round(dispatched, 1),
            received_quantity=None if received is None else round(received, 1),
            quantity_unit=unit,
            duty_declared_eur=view.duty,
        )
        return event_id, event

    def _scaled(self, view: _ExciseView, factor: float) -> _ExciseView:
        """The same goods in a quantity ``factor`` times smaller, duty recomputed."""
        scaled = replace(view)
        if view.sticks is not None:
            scaled.sticks = max(200, round(view.sticks * factor / 200) * 200)
        if view.volume is not None:
            scaled.volume = round(view.volume * factor, 1)
        if view.mass is not None:
            if view.density is not None and scaled.volume is not None:
                scaled.mass = round(scaled.volume * view.density, 1)
            elif view.sticks is not None and scaled.sticks is not None:
                scaled.mass = round(scaled.sticks * CIGARETTE_KG_PER_STICK, 1)
            else:
                scaled.mass = round(view.mass * factor, 1)
        scaled.duty = _r2(excise_duty(view.product, scaled.volume, scaled.strength, scaled.mass, scaled.sticks))
        return scaled

    def _excise_records(
        self,
        c: _Consignment,
        mrn: str,
        decl_s: int,
        office: str,
        taxes: list[_Taxes],
        physics_revenue: float,
    ) -> float:
        """Push the excise records of an excise consignment; return the excise fraud's revenue."""
        rng = self._rng
        op = c.op
        assert c.excise_views is not None and op.excise_number is not None
        revenue_total = 0.0
        warehouses = self.population.warehouses
        for idx, view in enumerate(c.excise_views):
            line = c.declared[idx]
            cn = line.com.cn
            fraud_here = c.excise_pattern is not None and idx in c.affected
            base_details: dict[str, float | str] = {"consignment_id": c.cid}
            if c.excise_flow == "release":
                seconds = decl_s + round(rng.uniform(0.1, 2.0) * 3600)
                qty, _ = view.quantity()
                event_id, event = self._excise_event("release_for_consumption", seconds, view, cn, op.eori,
                                                     op.excise_number, None, mrn, None, qty, None)  # fmt: skip
                truth = None
                if fraud_here:
                    truth = GroundTruth(event_id, "excise", mrn, ("excise_physics",), (idx + 1,), physics_revenue,
                                        dict(c.details))  # fmt: skip
                self._push(seconds, event, truth)
                self._control("excise", mrn, event_id, seconds, office, truth)
                continue

            # Under suspension: e-AD from the place of importation to a tax warehouse (or to export).
            arc = self._arc()
            draw = (op.bias * 11.0) % 1.0 if rng.random() < 0.8 else rng.random()  # usual warehouse, mostly
            warehouse = warehouses[int(draw * len(warehouses))]
            ead_s = decl_s + round(rng.uniform(0.5, 12.0) * 3600)
            sent = view
            variant = c.excise_variant if fraud_here else None
            if variant == "partial":
                sent = self._scaled(view, rng.uniform(0.5, 0.85))
            sent_qty, _ = sent.quantity()
            to_export = c.excise_flow == "export"
            ead_id, ead = self._excise_event("e_ad", ead_s, sent, cn, op.eori, op.excise_number,
                                             None if to_export else warehouse.excise_number, mrn, arc,
                                             sent_qty, None)  # fmt: skip
            true_excise = excise_duty(view.product, view.volume, view.strength, view.mass, view.sticks)
            value = line.value
            ead_truth = None
            if variant in ("no_receipt", "false_export", "partial"):
                # Diverted goods are sold on the home market: excise and VAT never paid.
                share = 1.0
                evaded_excise = true_excise
                if variant == "partial":
                    share = 1.0 - sent_qty / max(view.quantity()[0], 1e-9)
                    evaded_excise = true_excise - sent.duty
                vat = VAT_RATE * (share * (value + taxes[idx].duty) + evaded_excise)
                details = {
                    **base_details,
                    "variant": variant or "",
                    "product": view.product,
                    "imported_quantity": view.quantity()[0],
                    "dispatched_quantity": sent_qty,
                    "excise_evaded_eur": _r2(evaded_excise),
                    "vat_evaded_eur": _r2(vat),
                    "duty_evaded_eur": 0.0,
                }
                revenue = _r2(evaded_excise + vat)
                ead_truth = GroundTruth(ead_id, "excise", arc, ("excise_diversion",), (idx + 1,), revenue, details)
                revenue_total += revenue
            self._push(ead_s, ead, ead_truth)
            self._control("excise", arc, ead_id, ead_s, office, ead_truth)
            if variant == "no_receipt":
                continue
            if to_export:
                exp_s = ead_s + round(rng.uniform(24.0, 96.0) * 3600)
                exp_id, exp = self._excise_event("export", exp_s, sent, cn, op.eori, op.excise_number, None, mrn,
                                                 arc, sent_qty, sent_qty)  # fmt: skip
                exp_truth = None
                if ead_truth is not None:
                    exp_truth = replace(ead_truth, event_id=exp_id)
                self._push(exp_s, exp, exp_truth)
                self._control("excise", arc, exp_id, exp_s, office, exp_truth)
                continue
            transit_h = rng.uniform(6.0, 48.0) if warehouse.country == "FR" else rng.uniform(24.0, 120.0)
            rcp_s = ead_s + round(transit_h * 3600)
            got = sent
            if variant == "shortage":
                got = self._scaled(sent, 1.0 - rng.uniform(0.03, 0.2))
            got_qty, _ = got.quantity()
            rcp_id, rcp = self._excise_event("report_of_receipt", rcp_s, got, cn, warehouse.eori, op.excise_number,
                                             warehouse.excise_number, mrn, arc, sent_qty, got_qty)  # fmt: skip
            rcp_truth = None
            if variant == "shortage":
                short_excise = sent.duty - got.duty
                short_share = 1.0 - got_qty / max(sent_qty, 1e-9)
                vat = VAT_RATE * (short_share * (value + taxes[idx].duty) + short_excise)
                details = {
                    **base_details,
                    "variant": "shortage",
                    "product": view.product,
                    "dispatched_quantity": sent_qty,
                    "received_quantity": got_qty,
                    "excise_evaded_eur": _r2(short_excise),
                    "vat_evaded_eur": _r2(vat),
                    "duty_evaded_eur": 0.0,
                }
                revenue = _r2(short_excise + vat)
                rcp_truth = GroundTruth(rcp_id, "excise", arc, ("excise_shortage",), (idx + 1,), revenue, details)
                revenue_total += revenue
            self._push(rcp_s, rcp, rcp_truth)
            self._control("excise", arc, rcp_id, rcp_s, office, rcp_truth)
        return revenue_total

    # --- controls ------------------------------------------------------------------------------
    def _control(
        self, target_type: str, reference: str, target_id: str, seconds: int, office: str, truth: GroundTruth | None
    ) -> None:
        """Legacy selection: maybe control the event, and report the outcome some hours later."""
        rng = self._rng
        u = rng.random()
        if u < self._p_control_random:
            selection = "random"
        elif u < self._p_control_random + (self._p_control_fraud if truth is not None else self._p_control_clean):
            selection = "other"
        else:
            return
        at = seconds + round(min(72.0, max(0.5, rng.lognormvariate(math.log(4.0), 0.8))) * 3600)
        positive = truth is not None and rng.random() < DETECTION_PROB
        infringement = None
        duty = tax = 0.0
        item = None
        seizure = False
        if positive:
            assert truth is not None
            infringement = infringement_of(truth.patterns)
            duty_value = truth.details.get("duty_evaded_eur", 0.0)
            duty = float(duty_value) if isinstance(duty_value, float) else 0.0
            duty = min(duty, truth.revenue_at_risk_eur)
            tax = _r2(truth.revenue_at_risk_eur - duty)
            item = truth.item_numbers[0] if truth.item_numbers else None
            seizure = infringement in (InfringementType.SMUGGLING, InfringementType.EXCISE_DIVERSION)
        outcome = ControlOutcome(
            event_id=self._event_id(),
            event_time=self._dt(at),
            source_system=SOURCE_CONTROL,
            target_type=target_type,
            target_reference=reference,
            target_event_id=target_id,
            item_number=item,
            controlled=True,
            positive=positive,
            infringement_type=infringement,
            duty_recovered_eur=duty,
            tax_recovered_eur=tax,
            seizure=seizure,
            officer_id=f"{office}-{rng.randrange(1, 40):03d}",
            office=office,
            selection=selection,
        )
        self._push(at, outcome, None)


def bisect_cum(cum: tuple[float, ...], u: float) -> int:
    """Index drawn by cumulative weights ``cum`` for a uniform ``u`` in [0, 1)."""
    x = u * cum[-1]
    lo, hi = 0, len(cum) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


def hash_country(code: str) -> int:
    """A stable small integer for a country code (``hash()`` is salted per process)."""
    return (ord(code[0]) * 31 + ord(code[1])) % 97


def generate(config: GeneratorConfig) -> Iterator[tuple[InboundEvent, GroundTruth | None]]:
    """Yield ``(event, ground truth or None)`` pairs; events are validated pydantic Vigie models.

    Use :class:`EventStream` directly to read :class:`GenerationStats` afterwards.
    """
    return iter(EventStream(config))
