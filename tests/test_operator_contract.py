"""The contract every operator passes, like River's shared estimator checks.

For each detector: scores are deterministic; score_one never mutates state; state survives a
serialisation round-trip mid-stream (the restored operator gives the same scores as the one
that never stopped); scores are valid RiskScores in [0, 1] with deterministic ids; and a
runtime that partitions state by key (as Faust tables and Flink keyed state do) gets the
same scores as the in-process dict; idle keys are forgotten only past the detector's
retention.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import MutableMapping
from datetime import timedelta
from functools import cache
from typing import Any

import pytest

from vigie.operators import Operator, OperatorState, all_detectors, score_id
from vigie.operators._score import SCORE_NAMESPACE
from vigie.schemas import RiskScore
from vigie.schemas.generator import GeneratorConfig, generate


@cache
def _events() -> tuple[Any, ...]:
    config = GeneratorConfig(seed=21, duration_hours=3, rate_per_hour=1500, fraud_share=0.05)
    return tuple(event for event, _ in generate(config))


def _detectors() -> list[Operator[Any, Any]]:
    return all_detectors()


def _run(detector: Operator[Any, Any], events: Any, store: MutableMapping[str, Any]) -> list[dict[str, Any]]:
    return [s.model_dump() for e in events for s in detector.process(e, store)]


class PartitionedStore(MutableMapping[str, OperatorState]):
    """Keyed state split over partitions, each holding serialised bytes, like a changelog table."""

    def __init__(self, partitions: int, state_type: type[OperatorState]) -> None:
        self.partitions: list[dict[str, bytes]] = [{} for _ in range(partitions)]
        self.state_type = state_type

    def _part(self, key: str) -> dict[str, bytes]:
        return self.partitions[hash(key) % len(self.partitions)]

    def __getitem__(self, key: str) -> OperatorState:
        return self.state_type.from_bytes(self._part(key)[key])

    def __setitem__(self, key: str, value: OperatorState) -> None:
        self._part(key)[key] = value.to_bytes()

    def __delitem__(self, key: str) -> None:
        del self._part(key)[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (k for p in self.partitions for k in p)

    def __len__(self) -> int:
        return sum(len(p) for p in self.partitions)


@pytest.fixture(params=[d.name for d in _detectors()])
def detector(request: pytest.FixtureRequest) -> Operator[Any, Any]:
    return next(d for d in _detectors() if d.name == request.param)


def test_scores_something(detector: Operator[Any, Any]) -> None:
    scores = _run(detector, _events(), {})
    assert scores, f"{detector.name} scored nothing on a generated stream"
    assert any(s["score"] > 0.5 for s in scores), f"{detector.name} never scored above 0.5"


def test_deterministic(detector: Operator[Any, Any]) -> None:
    assert _run(detector, _events(), {}) == _run(type(detector)(), _events(), {})


def test_scores_are_valid(detector: Operator[Any, Any]) -> None:
    scores = _run(detector, _events(), {})
    ids = [s["score_id"] for s in scores]
    assert len(ids) == len(set(ids))
    for s in scores:
        assert RiskScore.model_validate(s).model_dump() == s  # built unvalidated, but exactly what validation gives
        assert s["detector"] == detector.name
        assert 0.0 <= s["score"] <= 1.0 and s["reason"]


def test_built_scores_serialise_like_validated_ones(detector: Operator[Any, Any]) -> None:
    store: dict[str, Any] = {}
    built = [s for e in _events() for s in detector.process(e, store)]
    assert built
    for score in built[:500]:
        validated = RiskScore.model_validate(score.model_dump())
        assert validated == score and validated.model_dump_json() == score.model_dump_json()
        assert validated.model_fields_set == score.model_fields_set


def test_score_one_does_not_mutate(detector: Operator[Any, Any]) -> None:
    """Scoring a unit leaves its key's state as it was, byte for byte, at every point of the stream."""
    store: dict[str, Any] = {}
    checked = 0
    for event in _events():
        for key, unit in detector.units(event):
            if key in store:
                # Bytes, not to_dict(): a to_dict() may return live containers that change with the state.
                before = store[key].to_bytes()
                detector.score_one(unit, store[key])
                assert store[key].to_bytes() == before
                checked += 1
        detector.process(event, store)
    assert checked > 500


def test_state_survives_round_trip(detector: Operator[Any, Any]) -> None:
    events = _events()
    half = len(events) // 2
    store: dict[str, Any] = {}
    _run(detector, events[:half], store)
    restored = {k: detector.state_type.from_bytes(v.to_bytes()) for k, v in store.items()}
    uninterrupted = _run(detector, events[half:], copy.deepcopy(store))
    assert _run(type(detector)(), events[half:], restored) == uninterrupted


def test_partitioned_state_gives_same_scores(detector: Operator[Any, Any]) -> None:
    events = _events()
    assert _run(detector, events, PartitionedStore(4, detector.state_type)) == _run(detector, events, {})


def test_only_keys_idle_past_the_retention_are_evicted(detector: Operator[Any, Any]) -> None:
    events = _events()
    store: dict[str, Any] = {}
    _run(detector, events, store)
    keys = len(store)
    end = max(e.event_time for e in events)
    assert detector.evict_idle(store, end) == 0 and len(store) == keys  # every key is fresh at the stream's end
    later = end + (detector.idle_retention or timedelta(days=3650)) + timedelta(days=1)
    idling = sum(1 for s in store.values() if s.last_activity() is not None)
    assert detector.evict_idle(store, later) == idling
    assert len(store) == keys - idling
    if detector.idle_retention is not None:
        # Keys per importer or consignor would grow with the population: they must idle out.
        assert idling > 0 and len(store) < keys


@pytest.mark.parametrize(
    "detector_name, subject, item",
    [
        ("undervaluation", "3f2a1c9e-5d7b-4e11-9a0c-6b2d8e4f1a37", 2),
        ("atypical_flow", "e1", None),
        ("excise", "ead:26FR000000000000001", 0),
        ("ens_pre_arrival", "événement-" + "x" * 700, 1234),  # non-ASCII, and longer than one SHA-1 block
        ("", "", None),
    ],
)
def test_score_ids_are_uuid5_of_detector_subject_and_item(detector_name: str, subject: str, item: int | None) -> None:
    """Sinks are keyed on score ids: they stay ``uuid5(namespace, "detector/subject/item")``, whatever computes them."""
    expected = uuid.uuid5(SCORE_NAMESPACE, f"{detector_name}/{subject}/{item or 0}")
    assert score_id(detector_name, subject, item) == str(expected)
    assert uuid.UUID(score_id(detector_name, subject, item)).version == 5
