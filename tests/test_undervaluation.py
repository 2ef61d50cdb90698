"""Undervaluation detector: robust reference, back-off, reason, state round-trip."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from tests.factories import T0, declaration_dict
from vigie.operators import ScoringPipeline, UndervaluationDetector
from vigie.operators._robust import median_mad
from vigie.schemas import ImportDeclaration, RiskScore


def _declaration(i: int, cn: str, value: float, mass: float = 100.0, origin: str = "CN") -> ImportDeclaration:
    data = declaration_dict(event_id=f"d{i}", event_time=(T0 + timedelta(minutes=i)).isoformat())
    item = data["goods_items"][0]
    item.update(cn_code=cn, customs_value_eur=value, net_mass_kg=mass, origin_country=origin)
    item.pop("supplementary_units")
    item.pop("supplementary_unit_code")
    return ImportDeclaration.model_validate(data)


def _feed(detector: UndervaluationDetector, store: dict, values: list[float], cn: str = "61091000") -> None:
    for i, value in enumerate(values):
        detector.process(_declaration(i, cn, value), store)


def test_median_mad_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 10, 127, 128, 500):
        values = rng.lognormal(size=n)
        med, mad = median_mad(values, n)
        assert med == pytest.approx(np.median(values))
        assert mad == pytest.approx(np.median(np.abs(values - np.median(values))))
    assert all(math.isnan(x) for x in median_mad(np.zeros(4), 0))
    with pytest.raises(ValueError):
        median_mad(np.zeros(4), 5)


def test_reference_is_robust_to_contamination() -> None:
    rng = np.random.default_rng(11)
    detector = UndervaluationDetector(min_observations=20)
    store: dict = {}
    clean = list(1000 * rng.lognormal(0, 0.3, 100))
    # 20 % of the window undervalued at a fifth of the price must not move the reference much.
    mixed = [v * 0.2 if i % 5 == 0 else v for i, v in enumerate(clean)]
    _feed(detector, store, mixed)
    score = detector.process(_declaration(999, "61091000", 1000.0), store)[0]
    assert score.reason_fields["level"] == "CN8"
    assert 8.0 < score.reason_fields["reference_unit_value_eur"] < 12.5
    assert score.score < 0.2


def test_undervalued_item_scores_high_with_a_reason_an_officer_can_use() -> None:
    rng = np.random.default_rng(5)
    detector = UndervaluationDetector(min_observations=20)
    store: dict = {}
    _feed(detector, store, list(1000 * rng.lognormal(0, 0.3, 60)))
    score = detector.process(_declaration(999, "61091000", 200.0), store)[0]
    RiskScore.model_validate(score.model_dump())  # constructed without validation: must still be valid
    fields = score.reason_fields
    # A fifth of the price with a log-spread of 0.3 is about 5 robust SD below: score ~0.88.
    assert fields["robust_z"] > 4
    assert score.score == pytest.approx(1 / (1 + math.exp(-(fields["robust_z"] - 3))), rel=1e-3)
    assert fields["declared_unit_value_eur"] == pytest.approx(2.0)
    reference = fields["reference_unit_value_eur"]
    assert 8 < reference < 12
    shortfall = reference * 100 - 200
    assert fields["value_shortfall_eur"] == pytest.approx(shortfall, rel=1e-3)
    assert fields["duty_at_stake_eur"] == pytest.approx(shortfall * 0.12, rel=1e-3)
    assert score.eur_at_stake == pytest.approx(shortfall * 0.12 + shortfall * 1.12 * 0.2, rel=1e-3)
    assert f"{reference:,.2f} EUR/kg" in score.reason and "below the reference" in score.reason


def test_backs_off_to_coarser_levels() -> None:
    rng = np.random.default_rng(9)
    detector = UndervaluationDetector(min_observations=20)
    store: dict = {}
    # Plenty of history for a sibling code in the same CN6, none for the one scored.
    _feed(detector, store, list(1000 * rng.lognormal(0, 0.3, 40)), cn="61091000")
    score = detector.process(_declaration(999, "61099020", 1000.0), store)[0]
    assert score.reason_fields["level"] == "CN4"  # 610990 and 610910 share CN4 6109
    _feed(detector, store, list(1000 * rng.lognormal(0, 0.3, 40)), cn="61099090")
    score = detector.process(_declaration(1000, "61099020", 1000.0), store)[0]
    assert score.reason_fields["level"] == "CN6"


def test_no_reference_gives_zero_and_says_why() -> None:
    detector = UndervaluationDetector(min_observations=20)
    store: dict = {}
    _feed(detector, store, [1000.0] * 3)
    score = detector.process(_declaration(9, "61091000", 10.0), store)[0]
    assert score.score == 0.0 and score.eur_at_stake == 0.0
    assert "3 declaration(s) seen, 20 needed" in score.reason


def test_origins_are_kept_apart() -> None:
    detector = UndervaluationDetector(min_observations=5)
    store: dict = {}
    for i in range(10):
        detector.process(_declaration(i, "61091000", 1000.0, origin="CN"), store)
    score = detector.process(_declaration(99, "61091000", 100.0, origin="TR"), store)[0]
    assert score.reason_fields["level"] is None


def test_score_does_not_mutate_state() -> None:
    detector = UndervaluationDetector(min_observations=5)
    store: dict = {}
    _feed(detector, store, [1000.0, 1100.0, 900.0, 950.0, 1050.0, 1000.0])
    ((key, unit),) = detector.units(_declaration(50, "61091000", 10.0))
    before = store[key].to_dict()
    detector.score_one(unit, store[key])
    assert store[key].to_dict() == before


def test_window_is_bounded_and_round_trips() -> None:
    detector = UndervaluationDetector(min_observations=5, window=16)
    store: dict = {}
    _feed(detector, store, [1000.0 + i for i in range(50)])
    state = next(iter(store.values()))
    window = state.windows["CN8:61091000:kg"]
    assert window.size == 16 and window.seen == 50
    restored = type(state).from_bytes(state.to_bytes())
    assert restored.to_dict() == state.to_dict()


def test_multi_item_declaration_scores_each_item() -> None:
    data = declaration_dict()
    base = data["goods_items"][0]
    data["goods_items"] = [dict(base, item_number=n, cn_code=cn) for n, cn in ((1, "61091000"), (2, "64029100"))]
    pipeline = ScoringPipeline([UndervaluationDetector()])
    scores = pipeline.process(ImportDeclaration.model_validate(data)).scores
    assert [s.item_number for s in scores] == [1, 2]
    assert len({s.score_id for s in scores}) == 2
