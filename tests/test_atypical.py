"""Atypical-flow detector: features, reasons, bounded state (the shared contract: test_operator_contract.py)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from tests.factories import T0, declaration_dict, ens
from vigie.operators.atypical import FEATURES, AtypicalFlowDetector, AtypicalFlowState, ItemFlow
from vigie.schemas import ImportDeclaration


def _declaration(
    i: int,
    *,
    importer: str = "FR98765432100010",
    cn: str = "61091000",
    origin: str = "CN",
    dispatch: str | None = None,
    mass: float | None = None,
    value: float | None = None,
    procedure: str = "4000",
    mode: str = "sea",
    minutes: float = 10.0,
) -> ImportDeclaration:
    """The i-th of a steady flow of t-shirts from China, with small deterministic variations."""
    data = declaration_dict(
        event_id=f"d{i}",
        event_time=(T0 + timedelta(minutes=minutes * i)).isoformat(),
        importer_eori=importer,
        procedure_code=procedure,
        transport_mode_at_border=mode,
    )
    item = data["goods_items"][0]
    item.update(
        cn_code=cn,
        origin_country=origin,
        dispatch_country=dispatch or origin,
        net_mass_kg=mass if mass is not None else 100.0 * (1 + (i % 5) / 10),
        customs_value_eur=value if value is not None else 1000.0 * (1 + (i % 7) / 10),
    )
    return ImportDeclaration.model_validate(data)


def _steady(detector: AtypicalFlowDetector, n: int) -> dict[str, AtypicalFlowState]:
    """A chapter-61 store after ``n`` ordinary items from a few regular importers."""
    store: dict[str, AtypicalFlowState] = {}
    for i in range(n):
        detector.process(_declaration(i, importer=f"FR{i % 4:014d}"), store)
    return store


def test_units_are_goods_items_keyed_by_chapter() -> None:
    detector = AtypicalFlowDetector()
    data = declaration_dict()
    second = dict(data["goods_items"][0], item_number=2, cn_code="85171300")
    data["goods_items"].append(second)
    units = list(detector.units(ImportDeclaration.model_validate(data)))
    assert [key for key, _ in units] == ["61", "85"]
    assert all(isinstance(unit, ItemFlow) for _, unit in units)
    assert list(detector.units(ens())) == []


def test_warm_up_scores_zero_with_a_reason() -> None:
    detector = AtypicalFlowDetector(window_size=64, min_calibration=16)
    store: dict[str, AtypicalFlowState] = {}
    scores = [detector.process(_declaration(i), store)[0] for i in range(64 + 16)]
    assert all(s.score == 0.0 for s in scores)
    assert "No reference model yet for chapter 61" in scores[0].reason
    after = detector.process(_declaration(80), store)[0]
    assert after.reason_fields["hst_score"] is not None


def test_features_are_in_the_unit_cube_and_mean_what_they_say() -> None:
    detector = AtypicalFlowDetector()
    store = _steady(detector, 50)
    state = store["61"]
    [(_, usual)] = detector.units(_declaration(50, importer="FR00000000000001"))
    x = dict(zip(FEATURES, detector._features(usual, state), strict=True))
    assert x["new_declarant"] == 0.0 and x["route"] == 0.0 and x["procedure"] == 0.0 and x["transport_mode"] == 0.0
    assert abs(x["value_vs_group"] - 0.5) < 0.1  # about the (6109, CN) median
    assert x["hour"] == pytest.approx((8 * 60 + 500) / 1440)
    [(_, odd)] = detector.units(
        _declaration(51, importer="FR55555555555555", dispatch="SG", value=100_000.0, procedure="4200", mode="postal")
    )
    x = dict(zip(FEATURES, detector._features(odd, state), strict=True))
    assert x["new_declarant"] == 1.0 and x["route"] == 1.0 and x["procedure"] == 1.0 and x["transport_mode"] == 1.0
    assert x["value_vs_group"] == 1.0  # about 70 times the group median: clipped at 10x
    assert all(0.0 <= v <= 1.0 for v in x.values())


def test_value_reference_backs_off_from_origin_to_cn4() -> None:
    detector = AtypicalFlowDetector(min_group=5)
    store = _steady(detector, 20)
    [(_, from_vietnam)] = detector.units(_declaration(20, origin="VN"))
    reference = detector._reference(from_vietnam, store["61"])
    assert reference is not None and reference[0] == "6109"
    [(_, from_china)] = detector.units(_declaration(21))
    assert detector._reference(from_china, store["61"])[0] == "6109:CN"  # type: ignore[index]
    [(_, other_cn4)] = detector.units(_declaration(22, cn="61051000"))
    assert detector._reference(other_cn4, store["61"]) is None


def test_atypical_item_scores_high_and_the_reason_names_what_stands_out() -> None:
    detector = AtypicalFlowDetector()
    store = _steady(detector, 600)
    typical = detector.process(_declaration(600, importer="FR00000000000002"), store)[0]
    assert typical.score < 0.2
    odd = _declaration(601, importer="FR55555555555555", mass=30_000.0, value=40_000.0, procedure="4200", mode="air")
    score = detector.process(odd, store)[0]
    assert score.score > 0.9
    top = str(score.reason_fields["top_features"]).split(",")
    assert len(top) == 3 and set(top) <= {"new_declarant", "procedure", "transport_mode", "net_mass", "value_per_kg"}
    assert "atypical among chapter 61's recent flows" in score.reason
    assert score.eur_at_stake == 0.0
    assert score.reason_fields["net_mass"] > 0.6 and score.reason_fields["procedure"] == 1.0


def test_novelty_is_learned_and_forgotten_after_the_horizon() -> None:
    detector = AtypicalFlowDetector(novelty_horizon_days=30)
    state = detector.new_state()
    [(_, unit)] = detector.units(_declaration(0))
    novelty = FEATURES.index("new_declarant")
    assert detector._features(unit, state)[novelty] == 1.0
    detector.learn_one(unit, state)
    assert detector._features(unit, state)[novelty] == 0.0
    [(_, later)] = detector.units(_declaration(1, minutes=60 * 24 * 40))  # 40 days later
    detector.learn_one(later, state)  # the daily sweep drops pairs idle for more than 30 days...
    assert "FR98765432100010|6109" in state.pairs  # ...but this one was just seen again
    [(_, other)] = detector.units(_declaration(2, importer="FR11111111111111", minutes=60 * 24 * 80))
    detector.learn_one(other, state)
    assert list(state.pairs) == ["FR11111111111111|6109"]


def test_state_memory_is_bounded() -> None:
    detector = AtypicalFlowDetector(max_pairs=50, max_groups=20)
    state = detector.new_state()
    rng = np.random.default_rng(0)
    for i in range(400):
        origin = ["CN", "VN", "BD", "TR", "IN", "PK"][i % 6]
        cn = f"61{rng.integers(1, 17):02d}1000"
        [(_, unit)] = detector.units(_declaration(i, importer=f"FR{i:014d}", cn=cn, origin=origin))
        detector.learn_one(unit, state)
        assert len(state.pairs) <= 50 and len(state.groups) <= 20
    assert len(state.pairs) >= 45  # evictions drop a tenth at a time, not everything
    assert f"FR{399:014d}|{cn[:4]}" in state.pairs  # the newest is kept
    assert repr(state) == (
        f"<AtypicalFlowState: {state.seen} items learned, {len(state.groups)} unit-value windows, "
        f"{len(state.pairs)} (importer, CN4) pairs>"
    )
    assert state.seen == 400


def test_state_round_trips_exactly() -> None:
    detector = AtypicalFlowDetector(window_size=64, min_calibration=16)
    store = _steady(detector, 200)
    state = store["61"]
    restored = AtypicalFlowState.from_bytes(state.to_bytes())
    assert restored.to_dict() == state.to_dict()
    nxt = _declaration(200, importer="FR55555555555555", procedure="7100")
    assert detector.process(nxt, {"61": restored}) == detector.process(nxt, {"61": state})
