"""From detector scores to an alert an officer can act on.

Fusion here is a fixed noisy-OR of the detectors' scores: each detector is read as an
independent chance that the consignment is irregular. It needs no labels, so it works
from the first event; a learned fusion can replace it without changing the alert format.
"""

from __future__ import annotations

import bisect
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self

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
