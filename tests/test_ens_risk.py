"""ENS pre-arrival detector: each signal, learning from outcomes, the generator's patterns (the shared operator
contract: test_operator_contract.py)."""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from typing import Any

import pytest

from tests.factories import T0, declaration_dict, ens_dict
from vigie.models.feedback import LabelledOutcome
from vigie.operators.ens_link import EnsLinkState, EnsSummary, vague_description
from vigie.operators.ens_risk import EnsPreArrivalDetector, EnsRiskState
from vigie.operators.pipeline import ScoringPipeline
from vigie.operators.undervaluation import UndervaluationDetector
from vigie.schemas import ControlOutcome, EntrySummaryDeclaration, ImportDeclaration
from vigie.schemas.generator import GeneratorConfig, generate


def _pipeline(**kwargs: Any) -> ScoringPipeline:
    """The detectors under test: undervaluation and the ENS pre-arrival detector."""
    return ScoringPipeline([UndervaluationDetector(), EnsPreArrivalDetector()], **kwargs)


def _ens(**overrides: Any) -> EntrySummaryDeclaration:
    return EntrySummaryDeclaration.model_validate(ens_dict(**overrides))


def _item(description: str = "COTTON T-SHIRTS", hs: str = "610910", gross: float = 140.0) -> dict[str, Any]:
    return {"item_number": 1, "hs_code": hs, "description": description, "gross_mass_kg": gross, "packages": 10}


def _score(detector: EnsPreArrivalDetector, event: Any, state: EnsRiskState | None = None) -> Any:
    state = state or detector.new_state()
    scores = [detector.score_one(unit, state) for _, unit in detector.units(event)]
    return [s for s in scores if s is not None]


def test_vague_descriptions() -> None:
    assert all(vague_description(d) for d in ("PARTS", "gifts", "FAK", "Samples", "GENERAL CARGO", "said to contain"))
    assert not any(vague_description(d) for d in ("SHOE PARTS", "COTTON T-SHIRTS", "LAPTOPS", "CERAMIC TILES"))


def test_vague_description_raises_the_ens_score_and_says_so() -> None:
    detector = EnsPreArrivalDetector()
    clean = _score(detector, _ens(goods_items=[_item()]))[0]
    vague = _score(detector, _ens(goods_items=[_item("FAK")]))[0]
    assert clean.score < 0.1 < 0.15 < vague.score
    assert "too vague" in vague.reason and "too vague" not in clean.reason
    assert vague.subject_type == "ens" and vague.reason_fields["vague"] == 1.0


def test_routing_upstream_of_the_consignor_is_flagged() -> None:
    detector = EnsPreArrivalDetector()
    routed = _ens(consignor={"name": "Penang Bolts", "country": "MY"}, countries_of_routing=["CN", "MY", "FR"])
    score = _score(detector, routed)[0]
    assert score.score > 0.5
    assert "routing starts in CN although the consignor is in MY" in score.reason
    # Lead time before arrival is in the figures officers see.
    lead = (routed.eta - routed.event_time).total_seconds() / 3600
    assert lead > 24 and score.reason_fields["lead_time_hours"] == pytest.approx(lead, abs=0.01)


def _linked(ens: EntrySummaryDeclaration, **declaration: Any) -> Any:
    registry = EnsLinkState()
    registry.register(ens)
    return registry.link(ImportDeclaration.model_validate(declaration_dict(**declaration)))


def test_declaration_checked_against_its_ens() -> None:
    detector = EnsPreArrivalDetector()
    ens = _ens(consignor={"name": "Penang Bolts", "country": "MY"}, countries_of_routing=["CN", "MY", "FR"])
    item = declaration_dict()["goods_items"][0] | {"origin_country": "MY", "dispatch_country": "MY"}
    linked = _linked(ens, goods_items=[item], seller={"name": "Penang Bolts", "country": "MY"})
    assert linked.ens is not None and linked.ens.routing == ("CN", "MY", "FR")
    score = _score(detector, linked)[0]
    assert score.subject_type == "declaration" and score.subject_reference == linked.declaration.mrn
    assert "declared origin MY but the ENS routing starts in CN" in score.reason
    assert score.score > 0.5
    unlinked = _score(detector, linked.declaration)[0]
    assert "no linked ENS" in unlinked.reason and unlinked.score < 0.1


def test_hidden_mass_of_a_cover_load() -> None:
    """The carrier weighed 3x what the importer declares: goods hidden behind the cover."""
    detector = EnsPreArrivalDetector()
    normal = _score(detector, _linked(_ens(goods_items=[_item(gross=135.0)])))[0]
    cover = _score(detector, _linked(_ens(goods_items=[_item(gross=370.0)])))[0]
    assert normal.score < 0.1
    assert cover.score > 0.5 and "goods weighed but not declared" in cover.reason
    assert cover.reason_fields["gross_net_ratio"] == pytest.approx(370.0 / 120.0, rel=1e-3)


def test_hs6_mismatch_with_duty_gap_learned_from_declarations() -> None:
    detector = EnsPreArrivalDetector()
    state = detector.new_state()
    # Consistent declarations teach that HS 852872 (televisions) pays 14 %.
    for i in range(5):
        ens = _ens(ens_reference=f"26FR000230000000{i:02d}", goods_items=[_item("LED TELEVISIONS", "852872", 450.0)])
        tv = declaration_dict()["goods_items"][0] | {"cn_code": "85287219", "duty_rate_pct": 14.0, "net_mass_kg": 400.0}
        for _, unit in detector.units(_linked(ens, ens_reference=ens.ens_reference, goods_items=[tv])):
            detector.learn_one(unit, state)
    ens = _ens(goods_items=[_item("LED TELEVISIONS", "852872", 450.0)])
    monitors = declaration_dict()["goods_items"][0] | {"cn_code": "85285210", "duty_rate_pct": 0.0}
    monitors["net_mass_kg"] = 400.0
    score = _score(detector, _linked(ens, goods_items=[monitors]), state)[0]
    assert "the carrier filed HS 852872" in score.reason and "usually pays 14.0% duty" in score.reason
    assert score.score > 0.5 and score.eur_at_stake > 0


def _outcome(positive: bool, n: int) -> ControlOutcome:
    return ControlOutcome(
        event_id=f"out-{n}",
        event_time=T0 + timedelta(hours=n),
        source_system="test",
        target_type="ens",
        target_reference="26FR0002300000009Z",
        controlled=True,
        positive=positive,
        infringement_type="false_description" if positive else None,
        duty_recovered_eur=1000.0 if positive else 0.0,
        officer_id="o1",
        office="FR002300",
    )


def test_outcomes_teach_the_hit_rate_of_similar_consignments() -> None:
    detector = EnsPreArrivalDetector()
    state = detector.new_state()
    ens = _ens(goods_items=[_item()])
    before = _score(detector, ens, state)[0]
    context = detector.feedback_context([before])
    assert context == [[1, "61", "610910", "CN", 0]]
    for n in range(8):
        for _, unit in detector.units(LabelledOutcome(_outcome(True, n), context)):
            detector.learn_one(unit, state)
    after = _score(detector, ens, state)[0]
    assert after.score > 3 * before.score
    assert "positive in 8 of 8 control(s)" in after.reason
    other = _score(detector, _ens(goods_items=[_item(hs="640411")]), state)[0]
    assert other.score < after.score  # another HS6 of another chapter learned nothing
    # A negative control with no context teaches nothing and raises nothing.
    assert list(detector.units(LabelledOutcome(_outcome(False, 9), None))) == []


def test_summary_round_trip() -> None:
    ens = _ens(goods_items=[_item("PARTS")])
    summary = EnsSummary.of(ens)
    assert EnsSummary.from_list(summary.to_list()) == summary
    assert summary.items[0].vague


@cache
def _generated() -> tuple[tuple[Any, Any, Any], ...]:
    """(event, truth, pipeline result) of a small fraud-rich stream, scored once for the tests below."""
    pipeline = _pipeline()
    config = GeneratorConfig(seed=11, duration_hours=6, rate_per_hour=1000, fraud_share=0.1)
    return tuple((event, truth, pipeline.process(event)) for event, truth in generate(config))


def test_generator_patterns_are_visible() -> None:
    """vague_description and origin_transshipment show on the ENS; cover loads on the linked declaration."""
    by_pattern: dict[str, list[float]] = {}
    clean: dict[str, list[float]] = {"ens": [], "declaration": []}
    for event, truth, result in _generated():
        own = [s.score for s in result.scores if s.detector == "ens_pre_arrival"]
        if not own or event.event_type not in clean:
            continue
        if truth is None:
            clean[event.event_type].append(max(own))
            continue
        for pattern in truth.patterns:
            by_pattern.setdefault(f"{event.event_type}:{pattern}", []).append(max(own))

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    assert mean(clean["ens"]) < 0.1 and mean(clean["declaration"]) < 0.2
    assert mean(by_pattern["ens:vague_description"]) > 3 * mean(clean["ens"])
    assert mean(by_pattern["ens:origin_transshipment"]) > 0.5
    assert mean(by_pattern["declaration:origin_transshipment"]) > 0.5
    cover = by_pattern["declaration:cover_load_smuggling"]
    assert len(cover) >= 5 and sum(s > 0.5 for s in cover) >= 0.7 * len(cover)


def test_ens_alerts_carry_lead_time_before_arrival() -> None:
    ens_alerts = [r.alert for _, _, r in _generated() if r.alert is not None and r.alert.subject_type == "ens"]
    assert ens_alerts
    for alert in ens_alerts:
        assert alert.eta is not None and alert.lead_time_hours is not None
        assert alert.lead_time_hours == pytest.approx((alert.eta - alert.event_time).total_seconds() / 3600, abs=0.01)
        assert alert.lead_time_hours >= 1.0  # filed at least an hour before arrival (road)
