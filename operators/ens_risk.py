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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from vigie.models.feedback import LabelledOutcome

from . import _ens_risk
from ._ens_risk import FLAG_PRIORS, FLAGS, DeclaredItem, EnsItem
from .base import Operator, OperatorState
from .undervaluation import UnitValueWindow

__all__ = [
    "FLAGS",
    "FLAG_PRIORS",
    "ControlFeedback",
    "DeclaredItem",
    "EnsItem",
    "EnsPreArrivalDetector",
    "EnsRiskState",
    "HsReference",
]

_BIT = {name: 1 << i for i, name in enumerate(FLAGS)}
_DAY_S = 86_400.0


# --- units -------------------------------------------------------------------------------------
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

    def new_reference(self, hs6: str) -> HsReference:
        """An empty reference for ``hs6``, added to :attr:`refs`."""
        ref = self.refs[hs6] = HsReference(self.capacity)
        return ref


EnsUnit = EnsItem | DeclaredItem | ControlFeedback


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

    def new_state(self) -> EnsRiskState:
        return EnsRiskState(self.window)

    # --- units, scoring and learning: C functions (operators/_ens_risk.pyx), bound as methods --------
    units = _ens_risk.units
    process = _ens_risk.process  # Operator.process, its loop in C
    score_one = _ens_risk.score_one
    learn_one = _ens_risk.learn_one
    score_learn_one = _ens_risk.score_learn_one
    feedback_context = _ens_risk.feedback_context

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
