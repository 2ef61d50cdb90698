"""From detector scores to an alert an officer can act on.

Two fusions share the alert format:

* :class:`LearnedFusion` (the pipeline's default): an online logistic regression on the
  detectors' scores and a few context features, learning from control outcomes, with an
  alert budget per office (a streaming quantile of the fused risk) of which a share is
  spent exploring uncertain items;
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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from vigie.models.fusion import dumps_model, loads_model, make_classifier, make_scaler
from vigie.schemas import Alert, RiskScore

from .base import OperatorState
from .ens_link import ArrivalInfo

_ALERT_NAMESPACE = uuid.UUID("0b3e8a52-1d7c-4a43-8f0e-5c2d9e6b7a14")
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
            alert_id=str(uuid.uuid5(_ALERT_NAMESPACE, first.subject_event_id)),
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
    "log_stake",
    "is_ens",
    "is_declaration",
    "is_excise",
    "ens_risk",
    "items_log",
)
"""Context features beside the detector scores (see :class:`LearnedFusion`)."""


_FLOOR_LOGIT = -6.9  # log-odds of 0.001: "this detector saw nothing" (and the clip of any score)


def _clipped_logit(p: float) -> float:
    """Log-odds of ``p``, clipped to +-6.9 (probabilities 0.001 to 0.999)."""
    p = min(max(p, 0.001), 0.999)
    return math.log(p / (1 - p))


@dataclass(frozen=True, slots=True)
class Subject:
    """What fusion needs to know about the event its scores are about."""

    event_id: str
    subject_type: str
    """``ens``, ``declaration`` or ``excise``."""
    reference: str
    office: str
    event_time: datetime
    operator_eori: str | None = None
    transport_mode: str | None = None
    eta: datetime | None = None
    ens_risk: float | None = None
    """Fused risk of the ENS linked to a declaration, as it was when the ENS was filed."""


@dataclass(slots=True)
class FusionDecision:
    """The fused probability of one subject, the features it came from, and the alert if any."""

    probability: float
    features: array[float]
    alert: Alert | None = None


class RiskWindow:
    """The last ``size`` fused risks of one flow, kept sorted: a streaming quantile.

    >>> window = RiskWindow(100)
    >>> for i in range(100):
    ...     window.add(i / 100)
    >>> window.threshold(0.05)  # 5 % of the window lies strictly above it
    0.94
    """

    __slots__ = ("recent", "size", "sorted")

    def __init__(self, size: int) -> None:
        self.size = size
        self.recent: deque[float] = deque()
        self.sorted: list[float] = []

    def __len__(self) -> int:
        return len(self.recent)

    def add(self, value: float) -> None:
        self.recent.append(value)
        bisect.insort(self.sorted, value)
        if len(self.recent) > self.size:
            old = self.recent.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]

    def threshold(self, share: float) -> float:
        """The value that about ``share`` of the window exceeds (at least one value exceeds it)."""
        n = len(self.sorted)
        k = min(n - 1, max(1, round(share * n)))
        return self.sorted[n - k - 1]

    def to_list(self) -> list[float]:
        return list(self.recent)

    @classmethod
    def from_list(cls, size: int, values: list[float]) -> RiskWindow:
        window = cls(size)
        window.recent.extend(values)
        window.sorted = sorted(values)
        return window


class LearnedFusion:
    """Fuses a subject's detector scores with an online logistic regression; spends the alert budget.

    **Features** (fixed order, :attr:`feature_names`): for each subject type and detector,
    the log-odds of the detector's highest score over the subject's items
    (``"declaration:undervaluation"``, clipped to +-6.9; -6.9 when it did not score), scaled
    by a running :class:`~river.preprocessing.StandardScaler` fed with every subject; then
    :data:`CONTEXT_FEATURES`, scaled alike but for the first: ``prior_logit``, the log-odds
    of the noisy-OR of the scores (the label-free prior), left unscaled; ``log10(1 + EUR at
    stake)``; one-hot subject type; the log-odds of the fused risk of the linked ENS (0 when
    none); ``log(1 + items)``.

    **Probability**: a River logistic regression that *starts as the prior* (weight 1 on
    ``prior_logit``, 0 elsewhere, intercept 0) and moves with each control outcome. Labels
    come mostly from the engine's own picks, so each is weighted by a capped inverse of how
    likely the item was to be controlled (``label_weights``: exploitation picks 1,
    exploration picks and random audits 5): the uncertain and random items, rare among
    labels, keep the model honest about the whole flow. Weights on the detectors' scores, the
    prior and the EUR at stake are kept non-negative (monotone constraints): among the few
    items it controls, a detector's false alarms would otherwise teach the model to distrust
    its high scores everywhere, and more evidence or more money at stake never lowers a risk.

    **Budget**: per office and subject type, a window of the last ``window`` fused risks
    (:class:`RiskWindow`) gives the threshold that ``capacity x (1 - explore_share)`` of the
    flow exceeds: those are *exploitation* picks. The next ``capacity x (band - 1)`` of the
    flow, just below the threshold, is where the model is least sure of its ranking: each is
    an *exploration* pick with probability ``explore_share / (band - 1 + explore_share)``,
    drawn from a hash of ``seed`` and the event id (deterministic in every runtime). About
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
        learning_rate: float = 0.02,
        l2: float = 1e-4,
        label_weights: dict[str, float] | None = None,
        seed: int = 0,
        suspicion: float = 0.5,
    ) -> None:
        if not 0 < capacity < 1:
            raise ValueError("capacity must be in (0, 1)")
        if not 0 <= explore_share < 1:
            raise ValueError("explore_share must be in [0, 1)")
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
        self.explore_probability = explore_share / (band - 1.0 + explore_share) if explore_share > 0 else 0.0
        self.detectors: tuple[str, ...] = ()
        self.feature_names: tuple[str, ...] = ()
        self._index: dict[str, int] = {}
        self._monotone: tuple[str, ...] = ()
        self.reset()

    def bind(self, detectors: Sequence[str]) -> None:
        """Fix the detectors whose scores are features (the pipeline calls this once)."""
        self.detectors = tuple(detectors)
        self.feature_names = tuple(f"{t}:{d}" for t in SUBJECT_TYPES for d in self.detectors) + CONTEXT_FEATURES
        self._index = {name: i for i, name in enumerate(self.feature_names)}
        self._monotone = (*self.feature_names[: len(SUBJECT_TYPES) * len(self.detectors)], "prior_logit", "log_stake")
        self.reset()

    def reset(self) -> None:
        """Forget everything learned."""
        self.scaler = make_scaler()
        self.classifier = make_classifier(self.learning_rate, self.l2, 0.0, {"prior_logit": 1.0})
        self.labels = 0
        self.positives = 0
        self.windows: dict[str, RiskWindow] = {}
        self.type_windows: dict[str, RiskWindow] = {t: RiskWindow(self.window) for t in SUBJECT_TYPES}
        self.counts: dict[str, list[int]] = {}
        """``"office|type"`` -> [subjects fused, exploitation alerts, exploration alerts]."""

    # --- model -------------------------------------------------------------------------------
    def _model_input(self, values: Sequence[float]) -> tuple[dict[str, float], dict[str, float]]:
        """(raw features for the scaler, model input: scaled, with ``prior_logit`` left raw)."""
        x = dict(zip(self.feature_names, values, strict=True))
        z = self.scaler.transform_one(x)
        z["prior_logit"] = x["prior_logit"]
        return x, z

    def learn(self, features: array[float], positive: bool, selection: str = "") -> None:
        """Learn one control outcome for a subject fused with ``features``, picked by ``selection``."""
        if len(features) != len(self.feature_names):
            return  # scored before this fusion was bound (or by another one): nothing to learn from
        _, z = self._model_input(features)
        self.classifier.learn_one(z, positive, w=self.label_weights.get(selection, 1.0))
        weights = self.classifier._weights  # River's weight vector takes item assignment
        for name in self._monotone:
            if weights[name] < 0.0:
                weights[name] = 0.0
        self.labels += 1
        self.positives += int(positive)

    def _draw(self, event_id: str) -> float:
        digest = hashlib.blake2b(f"{self.seed}:{event_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    # --- deciding ----------------------------------------------------------------------------
    def decide(self, scores: Sequence[RiskScore], subject: Subject, queue: OfficeQueueState) -> FusionDecision:
        """Fuse ``scores`` (all about ``subject``), update the budget, and alert if selected."""
        per_detector: dict[str, float] = {}
        best: dict[str, RiskScore] = {}
        stake_by_item: dict[int, float] = {}
        items: set[int] = set()
        for s in scores:
            if s.score >= per_detector.get(s.detector, -1.0):
                per_detector[s.detector] = s.score
                best[s.detector] = s
            item = s.item_number or 0
            items.add(item)
            if s.score >= self.suspicion:
                stake_by_item[item] = max(stake_by_item.get(item, 0.0), s.eur_at_stake)
        stake = sum(stake_by_item.values())
        if stake <= 0 and scores:
            stake = max(s.eur_at_stake * s.score for s in scores)
        clean = 1.0
        for score in per_detector.values():
            clean *= 1.0 - score
        prior = 1.0 - clean

        values = [_FLOOR_LOGIT] * (len(SUBJECT_TYPES) * len(self.detectors)) + [0.0] * len(CONTEXT_FEATURES)
        for detector, score in per_detector.items():
            i = self._index.get(f"{subject.subject_type}:{detector}")
            if i is not None:
                values[i] = _clipped_logit(score)
        base = len(SUBJECT_TYPES) * len(self.detectors)
        values[base] = _clipped_logit(prior)
        values[base + 1] = math.log10(1.0 + stake)
        if subject.subject_type in SUBJECT_TYPES:
            values[base + 2 + SUBJECT_TYPES.index(subject.subject_type)] = 1.0
        values[base + 5] = _clipped_logit(subject.ens_risk) if subject.ens_risk is not None else 0.0
        values[base + 6] = math.log1p(len(items))
        features = array("d", values)
        x, z = self._model_input(values)
        p = round(self.classifier.predict_proba_one(z)[True], 6)

        key = f"{subject.office}|{subject.subject_type}"
        local = self.windows.get(key)
        reference = local if local is not None and len(local) >= self.min_fill else None
        if reference is None:
            shared = self.type_windows.get(subject.subject_type)
            reference = shared if shared is not None and len(shared) >= self.min_fill else None
        selection: str | None = None
        threshold = 0.5
        if reference is None:
            selection = "exploitation" if p >= 0.5 else None
        else:
            threshold = reference.threshold(self.capacity * (1.0 - self.explore_share))
            floor = reference.threshold(self.capacity * self.band)
            if p > threshold:
                selection = "exploitation"
            elif p > floor and self._draw(subject.event_id) < self.explore_probability:
                selection = "exploration"
        if local is None:
            local = self.windows[key] = RiskWindow(self.window)
        local.add(p)
        if subject.subject_type in self.type_windows:
            self.type_windows[subject.subject_type].add(p)
        counts = self.counts.setdefault(key, [0, 0, 0])
        counts[0] += 1
        self.scaler.learn_one(x)
        if selection is None:
            return FusionDecision(p, features)
        counts[1 if selection == "exploitation" else 2] += 1

        shares = self._shares(per_detector, subject.subject_type, z)
        contributions = {d: round(p * shares.get(d, 0.0), 6) for d in per_detector}
        ordered = sorted(per_detector, key=lambda d: (-shares.get(d, 0.0), -per_detector[d], d))
        reasons = [best[d].reason for d in ordered if per_detector[d] > 0][:5] or [scores[0].reason]
        if selection == "exploration":
            reasons.insert(
                0,
                f"Exploration pick: fused risk {p:.3f} is just below the {subject.office} threshold {threshold:.3f}, "
                "where the model is least sure; the control outcome keeps the model honest.",
            )
        lead = round((subject.eta - subject.event_time).total_seconds() / 3600.0, 2) if subject.eta else None
        alert = Alert.model_construct(
            event_type="alert",
            alert_id=str(uuid.uuid5(_ALERT_NAMESPACE, subject.event_id)),
            subject_event_id=subject.event_id,
            subject_type=subject.subject_type,
            subject_reference=subject.reference,
            event_time=subject.event_time,
            office=subject.office,
            operator_eori=subject.operator_eori,
            transport_mode=subject.transport_mode,
            fused_risk=p,
            rank=queue.push(subject.event_time.timestamp(), p),
            selection=selection,
            contributions=contributions,
            reasons=reasons,
            eur_at_stake=round(stake, 2),
            eta=subject.eta,
            lead_time_hours=lead,
        )
        return FusionDecision(p, features, alert)

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
        """Everything learned, JSON-able; the River scaler and classifier as base64 pickles."""
        return {
            "features": list(self.feature_names),
            "scaler": dumps_model(self.scaler),
            "classifier": dumps_model(self.classifier),
            "labels": self.labels,
            "positives": self.positives,
            "windows": {k: w.to_list() for k, w in self.windows.items()},
            "type_windows": {k: w.to_list() for k, w in self.type_windows.items()},
            "counts": {k: list(v) for k, v in self.counts.items()},
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        if tuple(data["features"]) != self.feature_names:
            raise ValueError(
                f"checkpoint fusion features {data['features']} do not match this pipeline's {list(self.feature_names)}"
            )
        self.scaler = loads_model(data["scaler"])
        self.classifier = loads_model(data["classifier"])
        self.labels, self.positives = data["labels"], data["positives"]
        self.windows = {k: RiskWindow.from_list(self.window, v) for k, v in data["windows"].items()}
        self.type_windows = {k: RiskWindow.from_list(self.window, v) for k, v in data["type_windows"].items()}
        self.counts = {k: list(v) for k, v in data["counts"].items()}
