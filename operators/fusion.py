"""From detector scores to an alert an officer can act on.

Two fusions share the alert format:

* :class:`LearnedFusion` (the pipeline's default): an online logistic regression on the
  detectors' scores and a few context features, learning from control outcomes, with an
  alert budget per office (a streaming quantile of the fused risk) of which a share is
  spent exploring uncertain items (its per-subject arithmetic in C, :mod:`._fusion`, the same
  floats as the Python and River code it stands for);
* :class:`NoisyOrAlerting`: a fixed noisy-OR of the scores, each detector read as an
  independent chance that the consignment is irregular, alerting above a threshold. It
  needs no labels and no state: the label-free baseline (and what the Kafka fuse stage uses).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import uuid
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from vigie.models.fusion import (
    FeatureScaler,
    dumps_model,
    loads_model,
    make_classifier,
    make_regressor,
    make_scaler,
)
from vigie.schemas import Alert, RiskScore

from ._fusion import FusionKernel, RiskWindow, clipped_logit
from ._fusion import Subject as Subject  # what fusion knows of a subject (part of this module's API)
from ._fusion import decide as fusion_decide
from ._fusion import detectors_stake as detectors_stake  # part of this module's API
from ._score import uuid5_text
from .base import OperatorState
from .ens_link import ArrivalInfo

_ALERT_NAMESPACE = uuid.UUID("0b3e8a52-1d7c-4a43-8f0e-5c2d9e6b7a14")
_ALERT_NAMESPACE_BYTES = _ALERT_NAMESPACE.bytes  # alert ids: str(uuid.uuid5(_ALERT_NAMESPACE, subject event id))
QUEUE_WINDOW_S = 24 * 3600.0


class OfficeQueueState(OperatorState):
    """Fused risks of the alerts an office received in the last 24 h of event time.

    Kept sorted by risk so an alert's rank in the queue is one bisection.
    """

    def __init__(self) -> None:
        self.raised: deque[tuple[float, float]] = deque()  # (event time, fused risk), in time order
        self.sorted_risks: list[float] = []

    def push(self, when: float, risk: float) -> int:
        """Add an alert and return its rank (1 = highest risk in the window)."""
        while self.raised and self.raised[0][0] < when - QUEUE_WINDOW_S:
            _, old = self.raised.popleft()
            del self.sorted_risks[bisect.bisect_left(self.sorted_risks, old)]
        self.raised.append((when, risk))
        bisect.insort(self.sorted_risks, risk)
        return len(self.sorted_risks) - bisect.bisect_right(self.sorted_risks, risk) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"raised": list(self.raised)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls()
        for when, risk in data["raised"]:
            state.raised.append((when, risk))
            bisect.insort(state.sorted_risks, risk)
        return state


class NoisyOrAlerting:
    """Fuses one subject's scores and decides whether to alert.

    ``fused = 1 - prod(1 - weight[d] * s[d])`` where ``s[d]`` is detector ``d``'s highest
    score over the subject's items. An alert is raised when ``fused >= threshold``.
    ``eur_at_stake`` adds up the items scored at least ``suspicion``.

    >>> from datetime import UTC, datetime
    >>> alerting = NoisyOrAlerting()
    >>> alerting.fuse({"undervaluation": 0.95, "atypical_flow": 0.5})
    0.975
    """

    def __init__(self, threshold: float = 0.5, suspicion: float = 0.5, weights: dict[str, float] | None = None) -> None:
        self.threshold = threshold
        self.suspicion = suspicion
        self.weights = weights or {}

    def fuse(self, per_detector: dict[str, float]) -> float:
        clean = 1.0
        for detector, score in per_detector.items():
            clean *= 1.0 - self.weights.get(detector, 1.0) * score
        return round(1.0 - clean, 6)

    def decide(self, scores: Sequence[RiskScore], arrival: ArrivalInfo | None, queue: OfficeQueueState) -> Alert | None:
        """An alert for the subject of ``scores`` (all about one event), or ``None``."""
        if not scores:
            return None
        per_detector: dict[str, float] = {}
        for s in scores:
            per_detector[s.detector] = max(per_detector.get(s.detector, 0.0), s.score)
        fused = self.fuse(per_detector)
        if fused < self.threshold:
            return None
        first = scores[0]
        suspicious = sorted((s for s in scores if s.score >= self.suspicion), key=lambda s: -s.score)
        total = sum(per_detector.values()) or 1.0
        when: datetime = first.event_time
        lead_hours = None
        if arrival is not None:
            lead_hours = round((arrival.eta - when).total_seconds() / 3600.0, 2)
        return Alert(
            alert_id=uuid5_text(_ALERT_NAMESPACE_BYTES, first.subject_event_id),  # str(uuid.uuid5(...)), in C
            subject_event_id=first.subject_event_id,
            subject_type=first.subject_type,
            subject_reference=first.subject_reference,
            event_time=when,
            office=first.office,
            operator_eori=first.operator_eori,
            transport_mode=arrival.transport_mode if arrival else None,
            fused_risk=fused,
            rank=queue.push(when.timestamp(), fused),
            contributions={d: round(fused * s / total, 6) for d, s in per_detector.items()},
            reasons=[s.reason for s in suspicious[:5]] or [first.reason],
            eur_at_stake=round(sum(s.eur_at_stake for s in suspicious), 2),
            eta=arrival.eta if arrival else None,
            lead_time_hours=lead_hours,
        )


# --- learned fusion --------------------------------------------------------------------------------
SUBJECT_TYPES: tuple[str, ...] = ("ens", "declaration", "excise")
CONTEXT_FEATURES: tuple[str, ...] = (
    "prior_logit",
    "operator_logit",
    "log_stake",
    "log_declared",
    "relief",
    "is_ens",
    "is_declaration",
    "is_excise",
    "ens_risk",
    "items_log",
)
"""Context features beside the detector scores (see :class:`LearnedFusion`)."""

RELIEF_REGIMES: frozenset[str] = frozenset({"4200", "0700", "5100", "7100", "e_ad", "export"})
"""Regimes under which taxes are suspended or exempted while the goods move: import VAT under
procedures 4200 (onward supply), 0700 (entry into an excise warehouse), 5100 (inward
processing), 7100 (customs warehousing); excise on an e-AD or an export under suspension.
Diverted goods take the whole relieved tax with them, so the revenue at stake is larger."""

_UNSCALED = ("prior_logit", "operator_logit")  # log-odds terms the model takes as they are, weight 1 to start
_MAX_LOG_EUR = 9.0  # severity is clipped to 1e9 EUR
_OPERATOR_KEYS_HELD = 100_000  # EORIs whose key is remembered (an EORI hashes to the same key every time)

_NO_OPERATOR = -1.0  # operator key of a subject without an EORI


def operator_key(eori: str | None) -> float:
    """A 52-bit hash of an EORI as a float (exact: floats hold integers up to 2**53); -1 for none."""
    if not eori:
        return _NO_OPERATOR
    digest = hashlib.blake2b(eori.encode(), digest_size=8).digest()
    return float(int.from_bytes(digest, "big") >> 12)


class OperatorRecord:
    """Control outcomes per operator (EORI): its compliance history, bounded.

    For each operator, decayed counts of controls and positive controls. :meth:`evidence` is
    the log-odds ratio of its posterior hit rate (Beta prior of strength ``prior_strength``
    centred on the hit rate of all controls) over that overall hit rate: 0 for an operator
    never controlled; with an overall hit rate of 0.4 and the default strength 1, +1.1 after
    one positive control out of one, +2.3 after three out of three, -1.0 after one negative.
    Counts are halved when an operator's controls exceed ``cap`` (old history fades); at most
    ``max_operators`` are kept, the least recently controlled forgotten first.
    """

    def __init__(self, prior_strength: float = 1.0, cap: float = 20.0, max_operators: int = 200_000) -> None:
        self.prior_strength = prior_strength
        self.cap = cap
        self.max_operators = max_operators
        self.counts: OrderedDict[int, list[float]] = OrderedDict()
        """Operator key -> [controls, positive controls] (decayed)."""
        self.controls = 0
        self.positives = 0

    def __len__(self) -> int:
        return len(self.counts)

    def hit_rate(self) -> float:
        """Hit rate of all controls seen, with one pseudo-control of each outcome."""
        return (self.positives + 1.0) / (self.controls + 2.0)

    def evidence(self, key: float) -> float:
        """Log-odds ratio of the operator's posterior hit rate over the overall one (0 if never controlled)."""
        seen = self.counts.get(int(key)) if key >= 0 else None
        if seen is None:
            return 0.0
        base = self.hit_rate()
        posterior = (seen[1] + self.prior_strength * base) / (seen[0] + self.prior_strength)
        return clipped_logit(posterior) - clipped_logit(base)

    def add(self, key: float, positive: bool) -> None:
        """Count one control of the operator ``key`` (and of the flow as a whole)."""
        self.controls += 1
        self.positives += int(positive)
        if key < 0:
            return
        k = int(key)
        seen = self.counts.pop(k, None) or [0.0, 0.0]
        seen[0] += 1.0
        seen[1] += float(positive)
        if seen[0] > self.cap:
            seen[0] /= 2.0
            seen[1] /= 2.0
        self.counts[k] = seen
        while len(self.counts) > self.max_operators:
            self.counts.popitem(last=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "controls": self.controls,
            "positives": self.positives,
            "counts": [[k, v[0], v[1]] for k, v in self.counts.items()],
        }

    def load(self, data: dict[str, Any]) -> None:
        """Restore a :meth:`to_dict` snapshot."""
        self.controls, self.positives = data["controls"], data["positives"]
        self.counts = OrderedDict((int(k), [n, p]) for k, n, p in data["counts"])


@dataclass(slots=True)
class FusionDecision:
    """One subject's fused probability, expected recoverable EUR, learning record and alert if any."""

    probability: float
    """Probability that a control of the subject is positive."""
    features: array[float]
    """What :meth:`LearnedFusion.learn` needs when the outcome comes: the model input (in
    :attr:`LearnedFusion.feature_names` order), then the subject's operator key (:func:`operator_key`)."""
    alert: Alert | None = None
    expected_eur: float = 0.0
    """``probability x eur_at_stake``: the revenue a control is expected to recover."""
    eur_at_stake: float = 0.0
    """Estimated revenue at stake if the subject is irregular (EUR)."""
    event_id: str = ""


class LearnedFusion:
    """Fuses a subject's detector scores into a probability and an expected recoverable revenue; spends the budget.

    **Features** (fixed order, :attr:`feature_names`): for each subject type and detector,
    the log-odds of the detector's highest score over the subject's items
    (``"declaration:undervaluation"``, clipped to +-6.9; -6.9 when it did not score), scaled
    by a running standard scaler fed with every subject (:class:`~vigie.models.fusion.FeatureScaler`,
    River's ``StandardScaler`` bit for bit, on arrays); then
    :data:`CONTEXT_FEATURES`, scaled alike but for the first two, left as they are:
    ``prior_logit``, the log-odds of the noisy-OR of the scores (the label-free prior);
    ``operator_logit``, the evidence of the operator's control record
    (:class:`OperatorRecord`, 0 for an operator never controlled); ``log10(1 + EUR at stake)``
    (:func:`detectors_stake`); ``log10(1 + declared EUR)`` and whether the regime relieves
    taxes (:data:`RELIEF_REGIMES`) when the runtime passes them in the :class:`Subject`;
    one-hot subject type; the log-odds of the fused risk of the linked ENS (0 when none);
    ``log(1 + items)``.

    **Probability** ``p``: a River logistic regression that *starts as the prior* (weight 1
    on ``prior_logit`` and ``operator_logit``, 0 elsewhere, intercept 0) and moves with each
    control outcome. Labels come mostly from the engine's own picks, so each is weighted by a
    capped inverse of how likely the item was to be controlled (``label_weights``:
    exploitation picks 1, exploration picks and random audits 5). Weights on the detectors'
    scores, the prior, the operator record and the EUR at stake are kept non-negative
    (monotone constraints): among the few items it controls, a detector's false alarms would
    otherwise teach the model to distrust its high scores everywhere.

    The learning rate is low (0.005) on purpose: the prior ranks the whole flow well, the
    labels describe its top, and a fast learner forgets the former for the latter.

    **Revenue**: ``eur_at_stake`` is what a positive control would recover, in log space
    ``log10(1 + detectors' stake) + delta``: ``delta`` starts at 0 and a River linear
    regression (:meth:`_severity_input`) learns it from the EUR that positive controls
    recovered, when they are passed to :meth:`learn` (the pipeline does with
    ``ScoringPipeline(learn_recoveries=True)``; off by default, where measured it ranked
    worse: only the engine's own picks report recoveries). ``expected_eur = p x
    eur_at_stake`` is what a control is expected to recover. Declarations and excise records
    are ranked as customs targeting ranks, by expected recoverable revenue, with the stake
    tempered by ``stake_elasticity``: priority ``p x (1 + eur_at_stake) ** 0.5``, since the
    detectors' EUR figures are rough (in the generated stream, the EUR controls recover
    grows like the detectors' figure to the power 0.6) and a large figure should not outrank
    much stronger evidence. Alerts, budget thresholds and queue ranks follow the priority
    (with ``rank_by="probability"``, ``p``). ENS are ranked by ``p``: before arrival the
    revenue at stake is a guess from the goods description, and pre-arrival targeting is
    also about safety.

    **Budget**: per office and subject type, a window of the last ``window`` priorities
    (:class:`RiskWindow`) gives the threshold that ``capacity x (1 - explore_share)`` of the
    flow exceeds: those are *exploitation* picks. The next ``capacity x (band - 1)`` of the
    flow, just below the threshold, is where the ranking is least sure: each is an
    *exploration* pick with probability ``explore_share / (band - 1 + explore_share)``, drawn
    from a hash of ``seed`` and the event id (deterministic in every runtime). About
    ``capacity`` of each office's flow is alerted. An office with fewer than ``min_fill``
    subjects borrows the window of all offices of its subject type; before that, ``p >= 0.5``
    alerts.

    **Contributions**: each detector's share of ``p``: its weight x scaled log-odds in the
    model plus its part of the prior term (weight on ``prior_logit`` x its share of the
    raw scores), positive parts only, normalised.
    """

    def __init__(
        self,
        capacity: float = 0.01,
        explore_share: float = 0.1,
        band: float = 10.0,
        window: int = 1000,
        min_fill: int = 200,
        learning_rate: float = 0.005,
        l2: float = 1e-4,
        label_weights: dict[str, float] | None = None,
        seed: int = 0,
        suspicion: float = 0.5,
        rank_by: str = "expected_eur",
        severity_rate: float = 0.05,
        stake_elasticity: float = 0.5,
    ) -> None:
        if not 0 < capacity < 1:
            raise ValueError("capacity must be in (0, 1)")
        if not 0 <= explore_share < 1:
            raise ValueError("explore_share must be in [0, 1)")
        if rank_by not in ("expected_eur", "probability"):
            raise ValueError("rank_by must be 'expected_eur' or 'probability'")
        self.capacity = capacity
        self.explore_share = explore_share
        self.band = band
        self.window = window
        self.min_fill = min_fill
        self.learning_rate = learning_rate
        self.l2 = l2
        self.label_weights = label_weights or {"exploitation": 1.0, "exploration": 5.0, "random": 5.0}
        self.seed = seed
        self.suspicion = suspicion
        self.rank_by = rank_by
        self.severity_rate = severity_rate
        self.stake_elasticity = stake_elasticity
        self.explore_probability = explore_share / (band - 1.0 + explore_share) if explore_share > 0 else 0.0
        self.detectors: tuple[str, ...] = ()
        self.feature_names: tuple[str, ...] = ()
        self._index: dict[str, int] = {}
        self._unscaled: tuple[int, ...] = ()
        self._kernel = self._make_kernel()
        self._operator_keys: dict[str, float] = {}
        """EORI -> :func:`operator_key`, for the last EORIs seen (at most :data:`_OPERATOR_KEYS_HELD`)."""
        self._fired: tuple[tuple[str, tuple[int, ...]], ...] = ()
        self._monotone: tuple[str, ...] = ()
        self.last_decision: FusionDecision | None = None
        """The latest :meth:`decide` result (evaluation reads its expected EUR)."""
        self.reset()

    def bind(self, detectors: Sequence[str]) -> None:
        """Fix the detectors whose scores are features (the pipeline calls this once)."""
        self.detectors = tuple(detectors)
        self.feature_names = tuple(f"{t}:{d}" for t in SUBJECT_TYPES for d in self.detectors) + CONTEXT_FEATURES
        self._index = {name: i for i, name in enumerate(self.feature_names)}
        self._unscaled = tuple(self._index[name] for name in _UNSCALED)
        self._kernel = self._make_kernel()
        # Per detector, the revenue model's "fired" input and the positions of its score in each subject type.
        self._fired = tuple(
            (f"fired:{d}", tuple(self._index[f"{t}:{d}"] for t in SUBJECT_TYPES)) for d in self.detectors
        )
        self._monotone = (*self.feature_names[: len(SUBJECT_TYPES) * len(self.detectors)], *_UNSCALED, "log_stake")
        self.reset()

    def reset(self) -> None:
        """Forget everything learned."""
        self.scaler = make_scaler(self.feature_names)
        self.classifier = make_classifier(self.learning_rate, self.l2, 0.0, dict.fromkeys(_UNSCALED, 1.0))
        self.severity = make_regressor(self.severity_rate, self.l2)
        self.operators = OperatorRecord()
        self.labels = 0
        self.positives = 0
        self.recoveries = 0
        """Positive outcomes that reported the EUR recovered (what the severity model learned from)."""
        self.windows: dict[str, RiskWindow] = {}
        self.type_windows: dict[str, RiskWindow] = {t: RiskWindow(self.window) for t in SUBJECT_TYPES}
        self.counts: dict[str, list[int]] = {}
        """``"office|type"`` -> [subjects fused, exploitation alerts, exploration alerts]."""

    def _make_kernel(self) -> FusionKernel:
        """The C hot path of :meth:`decide` for the bound detectors (see :meth:`_features`)."""
        slots = {t: {d: self._index[f"{t}:{d}"] for d in self.detectors} for t in SUBJECT_TYPES}
        types = {t: i for i, t in enumerate(SUBJECT_TYPES)}
        n_scores = len(SUBJECT_TYPES) * len(self.detectors)
        return FusionKernel(self.feature_names, n_scores, slots, types, RELIEF_REGIMES, self._unscaled)

    # --- model -------------------------------------------------------------------------------
    def _model_input(self, values: Sequence[float]) -> dict[str, float]:
        """The classifier's input for raw features ``values`` (:attr:`feature_names` order, more ignored):
        scaled, but for the :data:`_UNSCALED` terms left raw, keyed by feature name in that order."""
        if isinstance(values, array):
            return self._kernel.model_input(values, self.scaler)  # what follows, in C
        z = self.scaler.transform_one(values)
        for i in self._unscaled:
            z[i] = values[i]
        return dict(zip(self.feature_names, z, strict=True))

    def _severity_input(self, values: Sequence[float]) -> dict[str, float]:
        """What the revenue model reads: EUR figures (log10, over 6: about 0-1.5), regime, type, which detectors fired.

        Few, bounded inputs on purpose: it learns from positive controls only (hundreds a day).
        ``values``: the raw features, in :attr:`feature_names` order.
        """
        index = self._index
        stake, declared = values[index["log_stake"]] / 6.0, values[index["log_declared"]] / 6.0
        relief = values[index["relief"]]
        out = {"log_stake": stake, "log_declared": declared, "relief": relief, "relief_declared": relief * declared,
               "is_declaration": values[index["is_declaration"]], "is_excise": values[index["is_excise"]]}  # fmt: skip
        suspicious = clipped_logit(self.suspicion)
        for name, slots in self._fired:  # only the subject's own type has scores: the others sit at the floor
            out[name] = 1.0 if any(values[i] >= suspicious for i in slots) else 0.0
        return out

    def _log_stake(self, values: Sequence[float]) -> float:
        """log10(1 + EUR at stake if irregular): the detectors' stake plus the learned correction."""
        severity = self.severity
        if len(severity._weights):
            correction = severity.predict_one(self._severity_input(values))
        else:  # nothing learned yet: River would give its empty dot product (0) plus the intercept
            correction = 0.0 + severity.intercept
        log_stake = values[self._index["log_stake"]] + correction
        # min(max(log_stake, 0.0), _MAX_LOG_EUR), spelled out: the builtins cost more than the rest of this method
        if log_stake < 0.0:
            log_stake = 0.0
        if log_stake > _MAX_LOG_EUR:
            log_stake = _MAX_LOG_EUR
        return log_stake

    def learn(
        self, features: array[float], positive: bool, selection: str = "", recovered_eur: float | None = None
    ) -> None:
        """Learn one control outcome for a subject fused with ``features``, picked by ``selection``.

        ``features`` is :attr:`FusionDecision.features`. ``recovered_eur`` (duty and taxes a
        positive control recovered, when the runtime passes it) teaches the revenue model.
        """
        if len(features) != len(self.feature_names) + 1:
            return  # scored before this fusion was bound (or by another one): nothing to learn from
        self.operators.add(features[-1], positive)
        z = self._model_input(features)
        self.classifier.learn_one(z, positive, w=self.label_weights.get(selection, 1.0))
        weights = self.classifier._weights  # River's weight vector takes item assignment
        for name in self._monotone:
            if weights[name] < 0.0:
                weights[name] = 0.0
        self.labels += 1
        self.positives += int(positive)
        if positive and recovered_eur is not None and recovered_eur > 0:
            missed = math.log10(1.0 + recovered_eur) - features[self._index["log_stake"]]  # what the stake misses
            self.severity.learn_one(self._severity_input(features), missed)
            self.recoveries += 1

    def _draw(self, event_id: str) -> float:
        digest = hashlib.blake2b(f"{self.seed}:{event_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def _operator_key(self, eori: str | None) -> float:
        """:func:`operator_key`, remembered for the last EORIs seen (hashing costs more than a look-up)."""
        key = self._operator_keys.get(eori) if eori else None
        if key is None:
            key = operator_key(eori)
            if eori:
                if len(self._operator_keys) >= _OPERATOR_KEYS_HELD:
                    self._operator_keys.clear()
                self._operator_keys[eori] = key
        return key

    def _features(
        self,
        scores: Sequence[RiskScore],
        subject: Subject,
        per_detector: dict[str, float],
        best: dict[str, RiskScore],
    ) -> array[float]:
        """The learning record of ``subject``: its raw features then its operator key (:attr:`FusionDecision.features`).

        Fills ``per_detector`` (detector -> its highest score) and ``best`` (detector -> that
        score). Per subject type and detector, the clipped log-odds of that score (-6.9 when
        none); then ``prior_logit``, the clipped log-odds of ``1 - prod(1 - score)`` over
        detectors; the operator's evidence; ``log10(1 + detectors_stake)``; ``log10(1 +
        max(declared EUR, 0))``; the relief flag; the one-hot subject type; the clipped
        log-odds of the ENS risk (0 when none); ``log1p`` of the number of items (an item
        number of ``None`` counting as item 0). In C (:class:`~vigie.operators._fusion.FusionKernel`).
        """
        key = self._operator_key(subject.operator_eori)
        return self._kernel.features(scores, subject, key, self.operators.evidence(key), per_detector, best)

    # --- deciding ----------------------------------------------------------------------------
    def decide(self, scores: Sequence[RiskScore], subject: Subject, queue: OfficeQueueState) -> FusionDecision:
        """Fuse ``scores`` (all about ``subject``), update the budget, and alert if selected.

        The learning record (:meth:`_features`, the operator's evidence 0 unless it was controlled),
        ``p`` (River's ``predict_proba_one``, 6 decimals), ``eur_at_stake`` (10 ** :meth:`_log_stake` - 1,
        to the cent), the :meth:`priority`; then against the office's window of priorities (the
        subject type's while the office's holds fewer than ``min_fill``; ``p >= 0.5`` before): an
        exploitation pick above the ``capacity x (1 - explore_share)`` threshold, an exploration
        pick (``_draw``) above the ``capacity x band`` one; both windows learn the priority, the
        scaler learns the features, and a pick gets its :meth:`_alert`. Compiled
        (:func:`~vigie.operators._fusion.decide`): every subject comes here.
        """
        return fusion_decide(self, scores, subject, queue, FusionDecision)

    def _alert(
        self,
        scores: Sequence[RiskScore],
        subject: Subject,
        queue: OfficeQueueState,
        decision: FusionDecision,
        per_detector: dict[str, float],
        best: dict[str, RiskScore],
        z: dict[str, float],
        selection: str,
        threshold: float,
        priority: float,
    ) -> Alert:
        p = decision.probability
        shares = self._shares(per_detector, subject.subject_type, z)
        contributions = {d: round(p * shares.get(d, 0.0), 6) for d in per_detector}
        ordered = sorted(per_detector, key=lambda d: (-shares.get(d, 0.0), -per_detector[d], d))
        reasons = [best[d].reason for d in ordered if per_detector[d] > 0][:5] or [scores[0].reason]
        by_eur = self._by_eur(subject.subject_type)
        if selection == "exploration":
            reasons.insert(0, self._exploration_reason(decision, subject.office, threshold, by_eur))
        evidence = z.get("operator_logit", 0.0)
        if abs(evidence) >= 0.5:
            record = "more" if evidence > 0 else "less"
            reasons.append(f"Operator's control record: positive {record} often than usual (log-odds {evidence:+.1f})")
        reasons.append(
            f"Expected recoverable revenue: {p:.3f} x {decision.eur_at_stake:,.0f} EUR at stake = "
            f"{decision.expected_eur:,.0f} EUR."
        )
        lead = round((subject.eta - subject.event_time).total_seconds() / 3600.0, 2) if subject.eta else None
        return Alert.model_construct(
            event_type="alert",
            alert_id=uuid5_text(_ALERT_NAMESPACE_BYTES, subject.event_id),  # str(uuid.uuid5(...)), in C
            subject_event_id=subject.event_id,
            subject_type=subject.subject_type,
            subject_reference=subject.reference,
            event_time=subject.event_time,
            office=subject.office,
            operator_eori=subject.operator_eori,
            transport_mode=subject.transport_mode,
            fused_risk=p,
            rank=queue.push(subject.event_time.timestamp(), priority),
            selection=selection,
            contributions=contributions,
            reasons=reasons,
            eur_at_stake=decision.eur_at_stake,
            eta=subject.eta,
            lead_time_hours=lead,
        )

    @staticmethod
    def _exploration_reason(decision: FusionDecision, office: str, threshold: float, by_eur: bool) -> str:
        """Why an exploration pick was made, in an officer's words.

        Ranked by expected EUR, a likely fraud with little at stake can rank below the line:
        the sentence then says that the stake, not the risk, kept it there.
        """
        p = decision.probability
        if not by_eur:
            where = f"ranks just below the {office} threshold {threshold:.3f}"
            return (
                f"Exploration pick: fused risk {p:.3f} {where}, where the ranking is least sure; "
                "the control outcome keeps the model honest."
            )
        stake = f"{decision.eur_at_stake:,.0f} EUR"
        # A threshold on p x EUR ** elasticity would read as nothing to an officer: no number.
        if p >= 0.5:
            why = f"fused risk {p:.3f} is high but only {stake} is at stake, so it ranks just below the {office} line"
        else:
            why = f"fused risk {p:.3f} with {stake} at stake ranks just below the {office} line"
        return (
            f"Exploration pick: {why} (risk weighed by EUR at stake), where the ranking is least sure; "
            "the control outcome keeps the model honest."
        )

    def _by_eur(self, subject_type: str) -> bool:
        """Whether subjects of this type are ranked by expected EUR (ENS: always by probability)."""
        return self.rank_by == "expected_eur" and subject_type != "ens"

    def priority(self, decision: FusionDecision, subject_type: str) -> float:
        """What ranks a subject: ``p x (1 + EUR at stake) ** stake_elasticity``, or ``p`` (see ``rank_by``).

        The 1 EUR keeps subjects with nothing at stake in the order of their probability.
        """
        if self._by_eur(subject_type):
            return decision.probability * (1.0 + decision.eur_at_stake) ** self.stake_elasticity
        return decision.probability

    def _shares(self, per_detector: dict[str, float], subject_type: str, z: dict[str, float]) -> dict[str, float]:
        """Each detector's share of the fused probability (sums to 1 over detectors, or 0)."""
        weights = self.classifier.weights
        total = sum(per_detector.values())
        prior_push = max(0.0, weights.get("prior_logit", 0.0) * z["prior_logit"])
        pushes = {}
        for d, score in per_detector.items():
            name = f"{subject_type}:{d}"
            own = weights.get(name, 0.0) * z.get(name, 0.0)
            pushes[d] = max(0.0, own + (prior_push * score / total if total > 0 else 0.0))
        pushed = sum(pushes.values())
        if pushed <= 0:
            return {d: s / total for d, s in per_detector.items()} if total > 0 else {}
        return {d: v / pushed for d, v in pushes.items()}

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything learned, JSON-able; the River scaler and models as base64 pickles."""
        return {
            "features": list(self.feature_names),
            "scaler": dumps_model(self.scaler.to_river()),  # the River twin: checkpoints keep their format
            "classifier": dumps_model(self.classifier),
            "severity": dumps_model(self.severity),
            "labels": self.labels,
            "positives": self.positives,
            "recoveries": self.recoveries,
            "operators": self.operators.to_dict(),
            "windows": {k: w.to_list() for k, w in self.windows.items()},
            "type_windows": {k: w.to_list() for k, w in self.type_windows.items()},
            "counts": {k: list(v) for k, v in self.counts.items()},
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        if tuple(data["features"]) != self.feature_names:
            raise ValueError(
                f"checkpoint fusion features {data['features']} do not match this pipeline's {list(self.feature_names)}"
            )
        self.scaler = FeatureScaler.from_river(self.feature_names, loads_model(data["scaler"]))
        self.classifier = loads_model(data["classifier"])
        self.severity = loads_model(data["severity"])
        self.labels, self.positives, self.recoveries = data["labels"], data["positives"], data["recoveries"]
        self.operators.load(data["operators"])
        self.windows = {k: RiskWindow.from_list(self.window, v) for k, v in data["windows"].items()}
        self.type_windows = {k: RiskWindow.from_list(self.window, v) for k, v in data["type_windows"].items()}
        self.counts = {k: list(v) for k, v in data["counts"].items()}
