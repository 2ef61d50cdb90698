"""Runtime-free scoring logic: detectors, fusion, the pipeline that chains them."""

from .base import Operator, OperatorState, score_id
from .ens_link import ArrivalInfo, EnsLinkState
from .fusion import NoisyOrAlerting, OfficeQueueState
from .pipeline import PipelineResult, ScoringPipeline, all_detectors, default_detectors
from .undervaluation import ItemUnitValue, UndervaluationDetector, UnitValueState

__all__ = [
    "ArrivalInfo",
    "EnsLinkState",
    "ItemUnitValue",
    "NoisyOrAlerting",
    "OfficeQueueState",
    "Operator",
    "OperatorState",
    "PipelineResult",
    "ScoringPipeline",
    "UndervaluationDetector",
    "UnitValueState",
    "all_detectors",
    "default_detectors",
    "score_id",
]
