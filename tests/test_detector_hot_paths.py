"""The C paths of the undervaluation, atypical-flow and operator-behaviour detectors against the
Python they stand in for: the sorted windows' medians against ``statistics.median``, and each
detector's ``process`` (its loop and score building in C) against ``Operator.process`` running the
detector's Python steps (forced by a subclass that overrides one step), score for score and state
for state."""

from __future__ import annotations

import random
import statistics
from datetime import timedelta
from functools import cache
from typing import Any

import pytest

from vigie.operators._robust import RankedWindow, UnitValueWindow, first_holding, first_median_mad
from vigie.operators.atypical import AtypicalFlowDetector, AtypicalFlowState
from vigie.operators.base import Operator
from vigie.operators.behaviour import OperatorBehaviourDetector
from vigie.operators.undervaluation import UndervaluationDetector
from vigie.schemas.generator import GeneratorConfig, generate

CONFIG = GeneratorConfig(seed=5, duration_hours=6.0)


@cache
def _events() -> tuple[Any, ...]:
    return tuple(event for event, _ in generate(CONFIG))


def _random_values(rng: random.Random, n: int) -> list[float]:
    """Log-like values with ties (rounded draws) and repeated zeros, which the order statistics must keep."""
    return [rng.choice([round(rng.gauss(0.0, 2.0), 1), rng.gauss(3.0, 1.0), 0.0]) for _ in range(n)]


def test_sorted_window_median_is_statistics_median() -> None:
    rng = random.Random(17)
    for capacity in (1, 2, 3, 7, 32, 128):
        ranked, plain = RankedWindow(capacity), UnitValueWindow(capacity)
        held: list[float] = []
        for value in _random_values(rng, 3 * capacity + 5):
            ranked.add(value, 0.0)
            plain.add(value, 0.0)
            held = [*held, value][-capacity:]
            median = statistics.median(held)
            assert ranked.median() == median and plain.median() == median
            assert ranked.median_mad() == plain.median_mad()
            assert ranked.median_mad()[1] == statistics.median([abs(v - median) for v in held])
            assert ranked.median() == ranked.median_mad()[0]  # read again once cached
            assert ranked.sorted_values() == sorted(held)


def test_first_median_mad_is_first_holding_then_median_mad() -> None:
    rng = random.Random(4)
    for _ in range(200):
        windows: list[RankedWindow | None] = []
        for _ in range(4):
            if rng.random() < 0.2:
                windows.append(None)
                continue
            window = RankedWindow(16)
            for value in _random_values(rng, rng.randrange(0, 30)):
                window.add(value, 0.0)
            windows.append(window)
        at_least = rng.randrange(0, 20)
        index, median, mad, size = first_median_mad(windows, at_least)
        assert index == first_holding(windows, at_least)
        if index >= 0:
            window = windows[index]
            assert window is not None
            assert (median, mad, size) == (*window.median_mad(), window.size)
        else:
            assert size == (windows[0].seen if windows[0] is not None else 0)


class _PythonUndervaluation(UndervaluationDetector):
    """The same detector through ``Operator.process`` and its Python steps."""

    def score_learn_one(self, unit: Any, state: Any) -> Any:
        return super().score_learn_one(unit, state)


class _PythonAtypical(AtypicalFlowDetector):
    def score_learn_one(self, unit: Any, state: Any) -> Any:
        return super().score_learn_one(unit, state)


class _PythonBehaviour(OperatorBehaviourDetector):
    def score_learn_one(self, unit: Any, state: Any) -> Any:
        return super().score_learn_one(unit, state)


def _run(detector: Operator[Any, Any]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    store: dict[str, Any] = {}
    scores = [score.model_dump(mode="json") for event in _events() for score in detector.process(event, store)]
    return scores, {key: state.to_bytes() for key, state in store.items()}


PAIRS = {
    "undervaluation": (UndervaluationDetector, _PythonUndervaluation, {}),
    "atypical": (AtypicalFlowDetector, _PythonAtypical, {"window_size": 64, "min_calibration": 32}),
    "behaviour": (OperatorBehaviourDetector, _PythonBehaviour, {}),
    # A history that starts before the stream: every importer is new, so the new-importer sentences and
    # the VAT of procedure 4200 are in the reasons too.
    "behaviour_new_importers": (
        OperatorBehaviourDetector,
        _PythonBehaviour,
        {"history_start": CONFIG.start - timedelta(days=30), "novelty_grace_days": 0.0},
    ),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_process_in_c_equals_the_python_steps(name: str) -> None:
    fast_type, python_type, settings = PAIRS[name]
    fast, python = _run(fast_type(**settings)), _run(python_type(**settings))
    assert fast[0], "the stream gives scores"
    assert fast == python


def test_behaviour_reasons_in_c_cover_changes_and_new_importers() -> None:
    scores = (
        _run(OperatorBehaviourDetector())[0] + _run(OperatorBehaviourDetector(**PAIRS["behaviour_new_importers"][2]))[0]
    )
    reasons = " ".join(score["reason"] for score in scores)
    parts = (
        "behaviour change since",
        "possible behaviour change building up",
        "This declaration:",
        "is new",
        "under procedure 4200",
        "large flows",
        "declarations/day",
    )
    for part in parts:
        assert part in reasons


def test_a_subclass_that_overrides_a_step_is_honoured() -> None:
    class NoItems(UndervaluationDetector):
        def units(self, event: Any) -> list[Any]:
            return []

    class Quiet(AtypicalFlowDetector):
        def units(self, event: Any) -> list[Any]:
            return []

    class Silent(OperatorBehaviourDetector):
        def units(self, event: Any) -> list[Any]:
            return []

    events = _events()[:300]
    for detector in (NoItems(), Quiet(), Silent()):
        store: dict[str, Any] = {}
        assert [s for e in events for s in detector.process(e, store)] == [] and store == {}


def test_atypical_groups_restore_as_sorted_windows() -> None:
    detector = AtypicalFlowDetector()
    store: dict[str, Any] = {}
    for event in _events()[:2000]:
        detector.process(event, store)
    for state in store.values():
        restored = AtypicalFlowState.from_dict(state.to_dict())
        assert restored.to_dict() == state.to_dict()
        assert all(isinstance(window, RankedWindow) for window in restored.groups.values())
        assert all(restored.groups[k].median() == w.median() for k, w in state.groups.items())
