"""The whole scoring path for one event, with no runtime in it.

The in-process runner calls :meth:`ScoringPipeline.process` directly; the Faust and Flink
shells call the same detectors with state held in their own keyed stores. Either way the
scores for an event depend only on the events before it, so every runtime agrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vigie.schemas import Alert, EntrySummaryDeclaration, ImportDeclaration, RiskScore

from .base import Operator, OperatorState
from .ens_link import EnsLinkState
from .fusion import NoisyOrAlerting, OfficeQueueState
from .undervaluation import UndervaluationDetector

_EVICT_EVERY = 10_000  # events between sweeps of the ENS registry


@dataclass(slots=True)
class PipelineResult:
    """What one event produced."""

    event: Any
    scores: list[RiskScore] = field(default_factory=list)
    alert: Alert | None = None


def default_detectors() -> list[Operator[Any, Any]]:
    return [UndervaluationDetector()]


class ScoringPipeline:
    """Detectors, fusion and the state they learn, for events processed in order.

    >>> from vigie.schemas.generator import GeneratorConfig, generate
    >>> pipeline = ScoringPipeline()
    >>> results = [pipeline.process(event) for event, _ in generate(GeneratorConfig(duration_hours=1))]
    >>> sum(len(r.scores) for r in results) > 0
    True
    """

    def __init__(
        self, detectors: list[Operator[Any, Any]] | None = None, alerting: NoisyOrAlerting | None = None
    ) -> None:
        self.detectors = detectors if detectors is not None else default_detectors()
        self.alerting = alerting or NoisyOrAlerting()
        self.stores: dict[str, dict[str, OperatorState]] = {d.name: {} for d in self.detectors}
        self.ens = EnsLinkState()
        self.queues: dict[str, OfficeQueueState] = {}
        self.events_seen = 0

    def process(self, event: Any) -> PipelineResult:
        self.events_seen += 1
        if isinstance(event, EntrySummaryDeclaration):
            self.ens.register(event)
        if self.events_seen % _EVICT_EVERY == 0:
            self.ens.evict_before(event.event_time)
        result = PipelineResult(event)
        for detector in self.detectors:
            result.scores.extend(detector.process(event, self.stores[detector.name]))
        if result.scores and isinstance(event, ImportDeclaration):
            queue = self.queues.get(event.customs_office)
            if queue is None:
                queue = self.queues[event.customs_office] = OfficeQueueState()
            result.alert = self.alerting.decide(result.scores, self.ens.lookup(event.ens_reference), queue)
        return result

    def state_dict(self) -> dict[str, Any]:
        """Everything learned, as JSON-able data (see :mod:`vigie.models.persistence`)."""
        return {
            "events_seen": self.events_seen,
            "stores": {name: {k: s.to_dict() for k, s in store.items()} for name, store in self.stores.items()},
            "ens": self.ens.to_dict(),
            "queues": {office: q.to_dict() for office, q in self.queues.items()},
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; detectors must match by name."""
        by_name = {d.name: d for d in self.detectors}
        missing = set(data["stores"]) ^ set(by_name)
        if missing:
            raise ValueError(f"checkpoint detectors do not match this pipeline: {sorted(missing)}")
        self.events_seen = data["events_seen"]
        self.stores = {
            name: {k: by_name[name].state_type.from_dict(s) for k, s in store.items()}
            for name, store in data["stores"].items()
        }
        self.ens = EnsLinkState.from_dict(data["ens"])
        self.queues = {office: OfficeQueueState.from_dict(q) for office, q in data["queues"].items()}
