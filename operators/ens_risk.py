"""ENS pre-arrival risk: score each entry summary declaration when it is filed, before arrival.

What an ENS shows, and how each signal enters the score (a sum of log-odds):

* **Similar consignments**: the hit rate of past controls of consignments with the same HS6
  from the same consignor country, learned from ``ControlOutcome`` events (the runtime joins
  each outcome to what this detector said about its subject, see
  :class:`ControlFeedback`). Rates back off from (HS6, country) to the HS6 and the country
  within the chapter, to the chapter, to ``prior_rate``, with ``prior_weight`` pseudo-controls
  at each level. The score starts from the logit of that rate.
* **Vague description** ("PARTS", "GIFTS", "FAK", "SAMPLES", "GENERAL CARGO"...): goods that
  cannot be risk-assessed; see :func:`~vigie.operators.ens_link.vague_description`.
* **Routing upstream of the consignor**: ``countries_of_routing`` starts in a country other
  than the consignor's: the goods began their journey elsewhere (transshipment to claim
  another origin).
* **Novel parties**: a consignee not seen in this HS chapter for ``novelty_days``, a
  consignor new to that consignee. Damped while the chapter has little history.

When the declaration of the same goods arrives, the runtime hands it over with its ENS
(:class:`~vigie.operators.ens_link.LinkedDeclaration`) and each declared item is scored
against what the carrier filed:

* **Origin vs routing**: the declared origin differs from where the ENS routing starts.
* **HS6 mismatch and duty gap**: the ENS HS6 differs from the declared CN code; the gap
  between the duty usually paid on the ENS HS6 (learned from consistent declarations) and
  the declared rate measures what misclassification would gain.
* **Mass gap**: the ENS gross mass against the declared net mass, compared with the usual
  gross/net ratio of the HS6 (robust median and MAD of recent linked declarations): a cover
  load hides goods that the carrier weighed but the importer did not declare.

Each signal has a prior weight (:data:`FLAG_PRIORS`) that outcomes adjust per chapter
(``flag_weight``). State key: the HS chapter (2 digits) of the ENS item, so about 97 keys,
each bounded (idle consignees, consignor pairs and groups are forgotten after
``novelty_days``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

from vigie.models.feedback import LabelledOutcome
from vigie.schemas import EntrySummaryDeclaration, ImportDeclaration, RiskScore

from .base import Operator, OperatorState, epoch_seconds
from .ens_link import EnsSummary, LinkedDeclaration, vague_description
from .undervaluation import UnitValueWindow

FLAG_PRIORS: dict[str, float] = {
    "vague": 1.7,
    "route_upstream": 3.0,
    "new_consignee": 1.0,
    "new_pair": 0.4,
    "origin_route": 3.0,
    "hs6_mismatch": 0.8,
    "duty_gap": 2.5,
    "mass_gap": 4.0,
}
"""Prior log-odds added by each signal at full severity (before outcomes adjust them)."""
FLAGS: tuple[str, ...] = tuple(FLAG_PRIORS)
_BIT = {name: 1 << i for i, name in enumerate(FLAGS)}

_DAY_S = 86_400.0
_MAD_TO_SIGMA = 1.4826
_DEFAULT_LOG_RATIO = math.log(1.15)  # usual gross/net of packed goods, until the HS6 has a reference
_DEFAULT_RATIO_SPREAD = 0.15
_SWEEP_EVERY = 2_000  # learn_one calls between sweeps of idle entries in a chapter


def _logit(p: float) -> float:
    """log(p / (1 - p)) of ``p`` clipped to [1e-6, 1 - 1e-6]."""
    if p < 1e-6:
        p = 1e-6
    elif p > 1 - 1e-6:
        p = 1 - 1e-6
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# --- units -------------------------------------------------------------------------------------
@dataclass(slots=True)
class EnsItem:
    """One ENS goods item at filing (not frozen: frozen dataclasses build slower)."""

    event_id: str
    ens_reference: str
    item_number: int
    filed: datetime
    eta: datetime
    office: str
    transport_mode: str
    consignee_eori: str | None
    consignor_country: str
    consignor_name: str
    hs6: str
    gross_mass_kg: float
    packages: int
    vague: bool
    route_start: str


@dataclass(slots=True)
class DeclaredItem:
    """One declared goods item, with the ENS item filed for it when the runtime linked one (not frozen: faster)."""

    event_id: str
    mrn: str
    item_number: int
    event_time: datetime
    office: str
    importer_eori: str
    cn_code: str
    origin_country: str
    dispatch_country: str
    net_mass_kg: float
    customs_value_eur: float
    duty_rate_pct: float
    taxes_eur: float
    """Duty + VAT + excise declared for the item."""
    ens_reference: str | None = None
    ens_hs6: str | None = None
    ens_gross_mass_kg: float | None = None
    ens_vague: bool = False
    route_start: str | None = None
    consignor_country: str | None = None

    @property
    def linked(self) -> bool:
        return self.ens_hs6 is not None


@dataclass(frozen=True, slots=True)
class ControlFeedback:
    """A control's result for one item this detector scored (learn only)."""

    chapter: str
    hs6: str
    country: str
    flags: int
    """Bit mask of the signals active when the item was scored (bit i = ``FLAGS[i]``)."""
    positive: bool
    recovered_eur: float
    when: float
    """Event time of the outcome, epoch seconds."""


# --- state -------------------------------------------------------------------------------------
class HsReference:
    """What linked declarations taught about one HS6 (as filed on ENS).

    ``ratio``: recent log(ENS gross mass / declared net mass); ``duty``: [count, mean duty rate %]
    of declarations whose CN code agrees with the ENS HS6; ``tax``: [count, mean log(taxes EUR
    per ENS gross kg)]. Means are running means that turn into exponential averages after 200.
    """

    __slots__ = ("duty", "ratio", "tax")

    def __init__(self, capacity: int) -> None:
        self.ratio = UnitValueWindow(capacity)
        self.duty = [0.0, 0.0]
        self.tax = [0.0, 0.0]

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio.to_dict(), "duty": list(self.duty), "tax": list(self.tax)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], capacity: int) -> HsReference:
        ref = cls(capacity)
        ref.ratio = UnitValueWindow.from_dict(data["ratio"], capacity)
        ref.duty, ref.tax = list(data["duty"]), list(data["tax"])
        return ref


def _running_mean(acc: list[float], value: float, horizon: float = 200.0) -> None:
    acc[0] += 1.0
    acc[1] += (value - acc[1]) / min(acc[0], horizon)


class EnsRiskState(OperatorState):
    """One HS chapter's memory.

    ``groups``: ``"hs6|country"``, ``"hs6|*"``, ``"*|country"``, ``"*|*"`` -> [controls,
    positives, EUR recovered, last outcome time]; ``flags``: signal -> [controls, positives]
    of items scored with it; ``consignees``: EORI -> [first seen, last seen, ENS count];
    ``pairs``: ``"eori|consignor"`` -> last seen; ``refs``: HS6 -> :class:`HsReference`;
    ``span``: [first, last] ENS filing time seen; ``n_ens``: ENS items seen; ``ticks``:
    learn_one calls (drives the idle sweep).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.groups: dict[str, list[float]] = {}
        self.flags: dict[str, list[float]] = {}
        self.consignees: dict[str, list[float]] = {}
        self.pairs: dict[str, float] = {}
        self.refs: dict[str, HsReference] = {}
        self.span = [0.0, 0.0]
        self.n_ens = 0
        self.ticks = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "groups": {k: list(v) for k, v in self.groups.items()},
            "flags": {k: list(v) for k, v in self.flags.items()},
            "consignees": {k: list(v) for k, v in self.consignees.items()},
            "pairs": dict(self.pairs),
            "refs": {k: r.to_dict() for k, r in self.refs.items()},
            "span": list(self.span),
            "n_ens": self.n_ens,
            "ticks": self.ticks,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls(data["capacity"])
        state.groups = {k: list(v) for k, v in data["groups"].items()}
        state.flags = {k: list(v) for k, v in data["flags"].items()}
        state.consignees = {k: list(v) for k, v in data["consignees"].items()}
        state.pairs = dict(data["pairs"])
        state.refs = {k: HsReference.from_dict(r, state.capacity) for k, r in data["refs"].items()}
        state.span = list(data["span"])
        state.n_ens = data["n_ens"]
        state.ticks = data["ticks"]
        return state


EnsUnit = EnsItem | DeclaredItem | ControlFeedback


@dataclass(slots=True)
class _Signal:
    name: str
    severity: float
    text: str


class EnsPreArrivalDetector(Operator[EnsUnit, EnsRiskState]):
    """Scores ENS items at filing, and declared items against their ENS.

    ``score = sigmoid(logit(hit rate of similar consignments) + sum of w[s] x severity[s])``
    over the active signals ``s`` (see the module docstring). With no outcome yet the hit
    rate is ``prior_rate`` (5 %): a clean ENS scores about 0.05, a vague one 0.21, one whose
    routing starts upstream of the consignor 0.51, both 0.85.

    ``eur_at_stake`` on an ENS item: the duty and taxes such goods usually pay (learned per
    HS6 per gross kg from linked declarations) times the item's gross mass; on a declared
    item: the duty gap on its value when the ENS HS6 pays more, else the score times the mean
    amount recovered by positive controls of similar consignments, at least the score times
    the taxes declared.

    >>> from datetime import UTC, datetime, timedelta
    >>> det = EnsPreArrivalDetector()
    >>> t = datetime(2026, 3, 2, tzinfo=UTC)
    >>> def item(desc_vague: bool, start: str) -> EnsItem:
    ...     return EnsItem("e1", "26FR00000000000001", 1, t, t + timedelta(hours=30), "FR002300", "sea",
    ...                    "FR12345678900010", "MY", "Penang Steel", "731815", 900.0, 1, desc_vague, start)
    >>> state = det.new_state()
    >>> round(det.score_one(item(False, "MY"), state).score, 2), round(det.score_one(item(True, "CN"), state).score, 2)
    (0.05, 0.85)
    >>> "routing starts in CN" in det.score_one(item(True, "CN"), state).reason
    True
    """

    name: ClassVar[str] = "ens_pre_arrival"
    state_type: ClassVar[type[OperatorState]] = EnsRiskState
    consumes: ClassVar[frozenset[str]] = frozenset({"linked_declaration", "labelled_outcome"})
    """Enriched inputs this detector wants from the runtime (see :mod:`vigie.operators.pipeline`)."""

    def __init__(
        self,
        prior_rate: float = 0.05,
        prior_weight: float = 10.0,
        flag_weight: float = 30.0,
        novelty_days: float = 60.0,
        warmup_items: int = 3000,
        window: int = 64,
        min_ratio_observations: int = 8,
        vat_rate: float = 0.20,
    ) -> None:
        self.prior_rate = prior_rate
        self.prior_weight = prior_weight
        self.flag_weight = flag_weight
        self.novelty_s = novelty_days * _DAY_S
        self.warmup_items = warmup_items
        self.window = window
        self.min_ratio_observations = min_ratio_observations
        self.vat_rate = vat_rate
        self._prior_cache: tuple[float, float] | None = None

    def new_state(self) -> EnsRiskState:
        return EnsRiskState(self.window)

    # --- units -------------------------------------------------------------------------------
    def units(self, event: Any) -> Iterable[tuple[str, EnsUnit]]:
        if isinstance(event, EntrySummaryDeclaration):
            yield from self._ens_units(event)
        elif isinstance(event, LinkedDeclaration):
            yield from self._declared_units(event.declaration, event.ens)
        elif isinstance(event, ImportDeclaration):
            yield from self._declared_units(event, None)
        elif isinstance(event, LabelledOutcome):
            yield from self._feedback_units(event)

    def _ens_units(self, ens: EntrySummaryDeclaration) -> Iterable[tuple[str, EnsItem]]:
        # What EnsSummary.of(ens) keeps, read straight from the event.
        event_id, reference, filed, eta = ens.event_id, ens.ens_reference, ens.event_time, ens.eta
        office, mode = ens.first_office_of_entry, str(ens.transport_mode)
        consignee, consignor = ens.consignee.eori, ens.consignor
        route_start = ens.countries_of_routing[0]
        for it in ens.goods_items:
            hs6 = it.hs_code
            unit = EnsItem(
                event_id, reference, it.item_number, filed, eta, office, mode, consignee, consignor.country,
                consignor.name, hs6, it.gross_mass_kg, it.packages, vague_description(it.description), route_start,
            )  # fmt: skip
            yield hs6[:2], unit

    def _declared_units(self, decl: ImportDeclaration, ens: EnsSummary | None) -> Iterable[tuple[str, DeclaredItem]]:
        event_id, mrn, when, office, importer = (
            decl.event_id, decl.mrn, decl.event_time, decl.customs_office, decl.importer_eori
        )  # fmt: skip
        for item in decl.goods_items:
            cn_code = item.cn_code
            taxes = item.duty_eur + item.vat_eur + (item.excise_eur or 0.0)
            ens_item = ens.item(item.item_number) if ens is not None else None
            if ens is None or ens_item is None:
                unit = DeclaredItem(
                    event_id, mrn, item.item_number, when, office, importer, cn_code, item.origin_country,
                    item.dispatch_country, item.net_mass_kg, item.customs_value_eur, item.duty_rate_pct, taxes,
                )  # fmt: skip
                yield cn_code[:2], unit
                continue
            hs6 = ens_item.hs6
            unit = DeclaredItem(
                event_id, mrn, item.item_number, when, office, importer, cn_code, item.origin_country,
                item.dispatch_country, item.net_mass_kg, item.customs_value_eur, item.duty_rate_pct, taxes,
                ens.ens_reference, hs6, ens_item.gross_mass_kg, ens_item.vague, ens.routing[0], ens.consignor_country,
            )  # fmt: skip
            yield hs6[:2] if hs6 else cn_code[:2], unit

    @staticmethod
    def _feedback_units(labelled: LabelledOutcome) -> Iterable[tuple[str, ControlFeedback]]:
        outcome = labelled.outcome
        if not outcome.controlled or not labelled.context:
            return
        recovered = outcome.duty_recovered_eur + outcome.tax_recovered_eur
        when = outcome.event_time.timestamp()
        items = labelled.context
        if outcome.positive and outcome.item_number is not None:
            # The control names the item it found the fraud on: the others taught nothing sure.
            named = [row for row in items if row[0] == outcome.item_number]
            items = named or items[:1]
        for _, chapter, hs6, country, flags in items:
            yield chapter, ControlFeedback(chapter, hs6, country, flags, outcome.positive, recovered, when)

    def feedback_context(self, scores: list[RiskScore]) -> list[list[Any]] | None:
        """What to remember about a scored subject so that its control can teach this detector.

        One row per scored item: ``[item_number, chapter key, hs6, country, flag mask]``.
        """
        rows = []
        for s in scores:
            f = s.reason_fields
            if f.get("chapter") is None:
                continue
            rows.append([s.item_number, f["chapter"], f["hs6"], f["country"], int(f["flag_mask"] or 0)])
        return rows or None

    # --- learned quantities ------------------------------------------------------------------
    def _rate(self, state: EnsRiskState, key: str, prior: float) -> tuple[float, float, float]:
        """(shrunk hit rate, controls, positives) of group ``key``."""
        g = state.groups.get(key)
        if g is None:
            return prior, 0.0, 0.0
        return (g[1] + self.prior_weight * prior) / (g[0] + self.prior_weight), g[0], g[1]

    def _group_rate(self, state: EnsRiskState, hs6: str, country: str) -> tuple[float, float, float]:
        """(shrunk hit rate, controls, positives) of (``hs6``, ``country``), backing off as the module says."""
        groups = state.groups
        if not groups:  # no control learned in this chapter yet: every level is the prior
            return self._blended_prior(), 0.0, 0.0
        r0, _, _ = self._rate(state, "*|*", self.prior_rate)
        rc, _, _ = self._rate(state, f"*|{country}", r0)
        rh, _, _ = self._rate(state, f"{hs6}|*", r0)
        l0 = _logit(r0)
        blended = _sigmoid((l0 if rc == r0 else _logit(rc)) + (l0 if rh == r0 else _logit(rh)) - l0)
        return self._rate(state, f"{hs6}|{country}", blended)

    def _blended_prior(self) -> float:
        """What :meth:`_group_rate` gives with no group: the prior blended with itself (a pure
        function of ``prior_rate``, cached)."""
        cached = self._prior_cache
        if cached is None or cached[0] != self.prior_rate:
            p = self.prior_rate
            cached = self._prior_cache = (p, _sigmoid(_logit(p) + _logit(p) - _logit(p)))
        return cached[1]

    def _flag_weight(self, state: EnsRiskState, flag: str, base_rate: float) -> float:
        prior_w = FLAG_PRIORS[flag]
        counts = state.flags.get(flag)
        if counts is None or counts[0] == 0:
            return prior_w
        observed = _logit((counts[1] + 0.5) / (counts[0] + 1.0)) - _logit(base_rate)
        return (self.flag_weight * prior_w + counts[0] * observed) / (self.flag_weight + counts[0])

    def _maturity(self, state: EnsRiskState) -> float:
        """0 to 1: how much the chapter's history supports novelty signals (ENS items seen / warm-up)."""
        return min(1.0, state.n_ens / max(self.warmup_items, 1))

    def _mean_recovered(self, state: EnsRiskState, hs6: str, country: str) -> float:
        groups = state.groups
        if not groups:
            return 0.0
        for key in (f"{hs6}|{country}", f"{hs6}|*", f"*|{country}", "*|*"):
            g = groups.get(key)
            if g is not None and g[1] > 0:
                return g[2] / g[1]
        return 0.0

    # --- scoring -----------------------------------------------------------------------------
    def score_one(self, unit: EnsUnit, state: EnsRiskState) -> RiskScore | None:
        if isinstance(unit, EnsItem):
            return self._score_ens(unit, state)
        if isinstance(unit, DeclaredItem):
            return self._score_declared(unit, state)
        return None

    def _combine(
        self, state: EnsRiskState, hs6: str, country: str, signals: list[_Signal]
    ) -> tuple[float, float, float, float, int, list[tuple[float, _Signal]]]:
        rate, controls, positives = self._group_rate(state, hs6, country)
        logit = _logit(rate)
        weighted: list[tuple[float, _Signal]] = []
        mask = 0
        if not signals:  # the common case: a clean filing or declaration
            return _sigmoid(logit), rate, controls, positives, mask, weighted
        for s in signals:
            if s.severity <= 0:
                continue
            w = self._flag_weight(state, s.name, rate) * s.severity
            logit += w
            mask |= _BIT[s.name]
            weighted.append((w, s))
        weighted.sort(key=lambda ws: -ws[0])
        return _sigmoid(logit), rate, controls, positives, mask, weighted

    def _similar_text(self, hs6: str, country: str, rate: float, controls: float, positives: float) -> str:
        if controls <= 0:
            return f"no control yet of HS {hs6} from {country} (prior hit rate {100 * rate:.0f}%)"
        return (
            f"similar consignments (HS {hs6} from {country}) were positive in {positives:.0f} of "
            f"{controls:.0f} control(s) (hit rate {100 * rate:.0f}% after shrinkage)"
        )

    def _score_ens(self, unit: EnsItem, state: EnsRiskState) -> RiskScore:
        signals: list[_Signal] = []
        if unit.vague:
            signals.append(_Signal("vague", 1.0, "goods description too vague to risk-assess"))
        if unit.route_start != unit.consignor_country:
            signals.append(
                _Signal(
                    "route_upstream",
                    1.0,
                    f"routing starts in {unit.route_start} although the consignor is in {unit.consignor_country}",
                )
            )
        maturity = self._maturity(state)
        when = epoch_seconds(unit.filed)
        new_consignee = new_pair = False
        if unit.consignee_eori and maturity > 0:
            seen = state.consignees.get(unit.consignee_eori)
            new_consignee = seen is None or when - seen[1] > self.novelty_s
            if new_consignee:
                text = f"consignee {unit.consignee_eori} new to HS chapter {unit.hs6[:2]}"
                signals.append(_Signal("new_consignee", maturity, text))
            else:
                last = state.pairs.get(f"{unit.consignee_eori}|{unit.consignor_name}")
                new_pair = last is None or when - last > self.novelty_s
                if new_pair:
                    signals.append(
                        _Signal("new_pair", maturity, f"consignor {unit.consignor_name!r} new for this consignee")
                    )
        score, rate, controls, positives, mask, weighted = self._combine(
            state, unit.hs6, unit.consignor_country, signals
        )
        ref = state.refs.get(unit.hs6)
        taxes = math.exp(ref.tax[1]) * unit.gross_mass_kg if ref is not None and ref.tax[0] > 0 else 0.0
        lead_h = (unit.eta - unit.filed).total_seconds() / 3600.0
        found = "; ".join(s.text for _, s in weighted) or "no warning sign on the filing"
        reason = (
            f"ENS {unit.ens_reference} item {unit.item_number} (HS {unit.hs6}, {unit.gross_mass_kg:,.0f} kg, "
            f"{unit.consignor_country} to consignee {unit.consignee_eori or 'unknown'}): {found}; "
            f"{self._similar_text(unit.hs6, unit.consignor_country, rate, controls, positives)}. "
            f"Arrival expected at {unit.office} in {lead_h:,.1f} h"
            + (f"; such goods usually pay about {taxes:,.0f} EUR of duty and taxes." if taxes > 0 else ".")
        )
        fields: dict[str, float | str | None] = {
            "chapter": unit.hs6[:2],
            "hs6": unit.hs6,
            "country": unit.consignor_country,
            "flag_mask": float(mask),
            "route_start": unit.route_start,
            "vague": float(unit.vague),
            "new_consignee": float(new_consignee),
            "new_pair": float(new_pair),
            "similar_controls": controls,
            "similar_positives": positives,
            "similar_hit_rate": round(rate, 4),
            "lead_time_hours": round(lead_h, 2),
            "estimated_taxes_eur": round(taxes, 2),
        }
        return self._risk(
            unit.event_id, "ens", unit.ens_reference, unit.item_number, unit.filed, unit.office,
            unit.consignee_eori, None, unit.consignor_country, score, taxes, reason, fields,
        )  # fmt: skip

    def _score_declared(self, unit: DeclaredItem, state: EnsRiskState) -> RiskScore:
        signals: list[_Signal] = []
        hs6 = unit.ens_hs6 or unit.cn_code[:6]
        country = unit.consignor_country or unit.dispatch_country
        duty_gap = 0.0
        ratio = expected_ratio = None
        if unit.linked:
            assert unit.ens_hs6 is not None and unit.route_start is not None
            if unit.ens_vague:
                signals.append(_Signal("vague", 1.0, "the ENS described the goods too vaguely to risk-assess"))
            if unit.route_start != unit.origin_country and unit.route_start != unit.consignor_country:
                signals.append(
                    _Signal(
                        "origin_route",
                        1.0,
                        f"declared origin {unit.origin_country} but the ENS routing starts in {unit.route_start}",
                    )
                )
            ref = state.refs.get(unit.ens_hs6)
            if unit.ens_hs6 != unit.cn_code[:6]:
                usual = ref.duty[1] if ref is not None and ref.duty[0] >= 3 else None
                text = f"the carrier filed HS {unit.ens_hs6}, the importer declares CN {unit.cn_code}"
                if usual is not None and usual > unit.duty_rate_pct:
                    duty_gap = usual - unit.duty_rate_pct
                    text += f" (HS {unit.ens_hs6} usually pays {usual:.1f}% duty, {unit.duty_rate_pct:.1f}% declared)"
                signals.append(_Signal("hs6_mismatch", 1.0, text))
                if duty_gap > 0:
                    signals.append(_Signal("duty_gap", min(1.0, duty_gap / 10.0), f"duty gap {duty_gap:.1f} points"))
            if unit.ens_gross_mass_kg is not None:
                ratio = unit.ens_gross_mass_kg / unit.net_mass_kg
                centre, spread = _DEFAULT_LOG_RATIO, _DEFAULT_RATIO_SPREAD
                if ref is not None and ref.ratio.size >= self.min_ratio_observations:
                    median, mad = ref.ratio.median_mad()
                    centre, spread = median, max(_MAD_TO_SIGMA * mad, 0.03)
                expected_ratio = math.exp(centre)
                z = (math.log(ratio) - centre) / spread
                if z > 3.0:
                    signals.append(
                        _Signal(
                            "mass_gap",
                            min(1.0, (z - 3.0) / 3.0),
                            f"ENS gross mass {unit.ens_gross_mass_kg:,.0f} kg is {ratio:.2f}x the declared net "
                            f"{unit.net_mass_kg:,.0f} kg where {expected_ratio:.2f}x is usual for HS {unit.ens_hs6}: "
                            "goods weighed but not declared?",
                        )
                    )
        score, rate, controls, positives, mask, weighted = self._combine(state, hs6, country, signals)
        stake = max(score * self._mean_recovered(state, hs6, country), score * unit.taxes_eur)
        if duty_gap > 0:
            stake = max(stake, unit.customs_value_eur * duty_gap / 100.0 * (1.0 + self.vat_rate))
        if unit.linked:
            found = "; ".join(s.text for _, s in weighted) or "consistent with its ENS"
            head = (
                f"Declaration {unit.mrn} item {unit.item_number} (CN {unit.cn_code} from {unit.origin_country}) "
                f"against ENS {unit.ens_reference}: {found}; "
            )
        else:
            head = f"Declaration {unit.mrn} item {unit.item_number} (CN {unit.cn_code}, no linked ENS): "
        reason = head + self._similar_text(hs6, country, rate, controls, positives) + "."
        fields: dict[str, float | str | None] = {
            "chapter": hs6[:2],
            "hs6": hs6,
            "country": country,
            "flag_mask": float(mask),
            "linked_ens": unit.ens_reference,
            "ens_hs6": unit.ens_hs6,
            "route_start": unit.route_start,
            "gross_net_ratio": round(ratio, 4) if ratio is not None else None,
            "usual_gross_net_ratio": round(expected_ratio, 4) if expected_ratio is not None else None,
            "duty_gap_pct": round(duty_gap, 2),
            "similar_controls": controls,
            "similar_positives": positives,
            "similar_hit_rate": round(rate, 4),
        }
        return self._risk(
            unit.event_id, "declaration", unit.mrn, unit.item_number, unit.event_time, unit.office,
            unit.importer_eori, unit.cn_code, unit.origin_country, score, stake, reason, fields,
        )  # fmt: skip

    def _risk(
        self,
        event_id: str,
        subject_type: str,
        reference: str,
        item_number: int,
        when: datetime,
        office: str,
        operator: str | None,
        cn_code: str | None,
        origin: str | None,
        score: float,
        stake: float,
        reason: str,
        fields: dict[str, float | str | None],
    ) -> RiskScore:
        return self.risk_score(
            subject_event_id=event_id,
            subject_type=subject_type,
            subject_reference=reference,
            item_number=item_number,
            event_time=when,
            office=office,
            operator_eori=operator,
            cn_code=cn_code,
            origin_country=origin,
            score=score,
            eur_at_stake=stake,
            reason=reason,
            reason_fields=fields,
        )

    # --- learning ----------------------------------------------------------------------------
    def learn_one(self, unit: EnsUnit, state: EnsRiskState) -> None:
        state.ticks += 1
        if isinstance(unit, EnsItem):
            self._learn_ens(unit, state)
            when = epoch_seconds(unit.filed)
        elif isinstance(unit, DeclaredItem):
            self._learn_declared(unit, state)
            when = epoch_seconds(unit.event_time)
        else:
            self._learn_feedback(unit, state)
            when = unit.when
        if state.ticks % _SWEEP_EVERY == 0:
            self._sweep(state, when)

    def _learn_ens(self, unit: EnsItem, state: EnsRiskState) -> None:
        when = epoch_seconds(unit.filed)
        state.n_ens += 1
        span = state.span
        if state.n_ens == 1:
            span[0] = span[1] = when
        else:
            if when < span[0]:
                span[0] = when
            if when > span[1]:
                span[1] = when
        consignee = unit.consignee_eori
        if consignee:
            seen = state.consignees.get(consignee)
            if seen is None:
                state.consignees[consignee] = [when, when, 1.0]
            else:
                if when < seen[0]:
                    seen[0] = when
                if when > seen[1]:
                    seen[1] = when
                seen[2] += 1.0
            pair = f"{consignee}|{unit.consignor_name}"
            last = state.pairs.get(pair)
            if last is None or when > last:
                state.pairs[pair] = when

    def _learn_declared(self, unit: DeclaredItem, state: EnsRiskState) -> None:
        if not unit.linked or unit.ens_gross_mass_kg is None:
            return
        assert unit.ens_hs6 is not None
        ref = state.refs.get(unit.ens_hs6)
        if ref is None:
            ref = state.refs[unit.ens_hs6] = HsReference(state.capacity)
        when = epoch_seconds(unit.event_time)
        ref.ratio.add(math.log(unit.ens_gross_mass_kg / unit.net_mass_kg), when)
        if unit.ens_hs6 == unit.cn_code[:6]:
            _running_mean(ref.duty, unit.duty_rate_pct)
        if unit.taxes_eur > 0:
            _running_mean(ref.tax, math.log(unit.taxes_eur / unit.ens_gross_mass_kg))

    def _learn_feedback(self, unit: ControlFeedback, state: EnsRiskState) -> None:
        positive = 1.0 if unit.positive else 0.0
        recovered = unit.recovered_eur if unit.positive else 0.0
        for key in (f"{unit.hs6}|{unit.country}", f"{unit.hs6}|*", f"*|{unit.country}", "*|*"):
            g = state.groups.get(key)
            if g is None:
                g = state.groups[key] = [0.0, 0.0, 0.0, unit.when]
            g[0] += 1.0
            g[1] += positive
            g[2] += recovered
            g[3] = max(g[3], unit.when)
        for flag, bit in _BIT.items():
            if unit.flags & bit:
                counts = state.flags.setdefault(flag, [0.0, 0.0])
                counts[0] += 1.0
                counts[1] += positive

    def _sweep(self, state: EnsRiskState, now: float) -> None:
        """Forget consignees, pairs and groups idle for longer than ``novelty_days``."""
        horizon = now - self.novelty_s
        state.consignees = {k: v for k, v in state.consignees.items() if v[1] >= horizon}
        state.pairs = {k: v for k, v in state.pairs.items() if v >= horizon}
        state.groups = {k: v for k, v in state.groups.items() if v[3] >= horizon or k == "*|*"}
