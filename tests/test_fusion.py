"""Learned fusion, alert budget, label join and whole-pipeline checkpoints."""

from __future__ import annotations

import random
from array import array
from collections import Counter
from datetime import timedelta
from functools import cache
from typing import Any

import orjson
import pytest
from river import preprocessing

from tests.factories import T0
from vigie.models.feedback import LabelJoin
from vigie.models.fusion import FeatureScaler, dumps_model, loads_model
from vigie.operators import NoisyOrAlerting, OfficeQueueState, ScoringPipeline, UndervaluationDetector
from vigie.operators.ens_risk import EnsPreArrivalDetector
from vigie.operators.fusion import (
    LearnedFusion,
    OperatorRecord,
    RiskWindow,
    Subject,
    detectors_stake,
    operator_key,
)
from vigie.schemas import ControlOutcome, RiskScore
from vigie.schemas.generator import GeneratorConfig, generate


def _pipeline(**kwargs: Any) -> ScoringPipeline:
    """The detectors under test: undervaluation and the ENS pre-arrival detector."""
    return ScoringPipeline([UndervaluationDetector(), EnsPreArrivalDetector()], **kwargs)


DETECTORS = ("undervaluation", "ens_pre_arrival")


def _score(detector: str, score: float, event_id: str = "d1", item: int = 1, stake: float = 100.0) -> RiskScore:
    return RiskScore(
        score_id=f"{detector}-{event_id}-{item}",
        detector=detector,
        subject_event_id=event_id,
        subject_type="declaration",
        subject_reference="26FR0002300000001A",
        item_number=item,
        event_time=T0,
        office="FR002300",
        score=score,
        eur_at_stake=stake,
        reason=f"{detector} says {score}",
    )


def _subject(event_id: str = "d1", eori: str | None = None, **context: Any) -> Subject:
    return Subject(event_id, "declaration", "26FR0002300000001A", "FR002300", T0, eori, eta=T0 + timedelta(hours=5),
                   **context)  # fmt: skip


def _fusion(**kwargs: Any) -> LearnedFusion:
    fusion = LearnedFusion(**kwargs)
    fusion.bind(DETECTORS)
    return fusion


def test_risk_window_is_a_streaming_quantile() -> None:
    window = RiskWindow(200)
    for i in range(1000):
        window.add((i % 200) / 200)
    assert len(window) == 200
    assert window.threshold(0.05) == pytest.approx(0.95)  # the 10th largest of 200: 10 / 201 exceed it
    assert RiskWindow.from_list(200, window.to_list()).sorted == window.sorted


@pytest.mark.parametrize("size", [200, 1000])
def test_a_window_threshold_lets_through_the_share_asked_of_new_values(size: int) -> None:
    """Compared before it joins the window (as the budget compares each subject), a new value exceeds the
    threshold at the rate asked: the budget spends the office's capacity, not half as much again."""
    rng = random.Random(5)
    window = RiskWindow(size)
    for _ in range(size):
        window.add(rng.random())
    through = 0
    for _ in range(100_000):
        value = rng.random()
        through += value > window.threshold(0.009)
        window.add(value)
    assert 0.0080 < through / 100_000 < 0.0102


def test_the_budget_alerts_the_capacity_of_an_offices_flow() -> None:
    fusion = _fusion(window=200, min_fill=200, capacity=0.01, explore_share=0.0)
    queue = OfficeQueueState()
    rng = random.Random(9)
    alerted = 0
    for i in range(12_200):
        scores = [_score("undervaluation", rng.random(), f"e{i}")]
        decision = fusion.decide(scores, _subject(f"e{i}"), queue)
        alerted += i >= 200 and decision.alert is not None
    assert 0.008 < alerted / 12_000 < 0.0115  # 1 %; 1.5 % before the window's threshold was the k-th largest


def test_fusion_starts_as_the_noisy_or_prior() -> None:
    fusion = _fusion()
    scores = [_score("undervaluation", 0.9), _score("ens_pre_arrival", 0.3)]
    decision = fusion.decide(scores, _subject(), OfficeQueueState())
    assert decision.probability == pytest.approx(1 - 0.1 * 0.7, abs=1e-4)
    # Before any office window fills, p >= 0.5 alerts, and the alert says why and how much.
    alert = decision.alert
    assert alert is not None and alert.selection == "exploitation"
    assert alert.reasons[0] == "undervaluation says 0.9"
    assert sum(alert.contributions.values()) == pytest.approx(alert.fused_risk, abs=1e-5)
    assert alert.contributions["undervaluation"] > alert.contributions["ens_pre_arrival"]
    assert alert.eur_at_stake == 100.0 and alert.lead_time_hours == 5.0
    assert decision.expected_eur == pytest.approx(decision.probability * 100.0, abs=0.01)
    assert alert.reasons[-1].startswith(f"Expected recoverable revenue: {decision.probability:.3f} x 100 EUR")


def test_stake_is_each_items_largest_figure_summed() -> None:
    scores = [_score("undervaluation", 0.1, item=1, stake=300.0), _score("ens_pre_arrival", 0.9, item=1, stake=50.0),
              _score("undervaluation", 0.2, item=2, stake=20.0)]  # fmt: skip
    assert detectors_stake(scores) == 320.0


def test_priority_is_the_expected_recoverable_revenue() -> None:
    fusion = _fusion()
    queue = OfficeQueueState()
    small = fusion.decide([_score("undervaluation", 0.9, "s", stake=100.0)], _subject("s"), queue)
    big = fusion.decide([_score("undervaluation", 0.6, "b", stake=50_000.0)], _subject("b"), queue)
    assert small.probability > big.probability
    assert big.eur_at_stake == 50_000.0 and big.expected_eur == pytest.approx(big.probability * 50_000.0, abs=0.01)
    assert fusion.priority(big, "declaration") > fusion.priority(small, "declaration")
    assert fusion.priority(big, "ens") == big.probability  # ENS are ranked by probability
    by_probability = _fusion(rank_by="probability")
    assert by_probability.priority(big, "declaration") == big.probability
    assert big.alert is not None and big.alert.fused_risk == big.probability and big.alert.eur_at_stake == 50_000.0
    with pytest.raises(ValueError, match="rank_by"):
        LearnedFusion(rank_by="luck")


def test_budget_spends_on_expected_revenue() -> None:
    """Same probability, different stakes: the exploitation picks are the ones with more EUR at stake."""
    fusion = _fusion(window=200, min_fill=100, capacity=0.05, explore_share=0.0)
    queue = OfficeQueueState()
    picked = []
    for i in range(600):
        stake = 100_000.0 + i if i % 10 == 0 else 100.0 + i
        decision = fusion.decide([_score("undervaluation", 0.3, f"e{i}", stake=stake)], _subject(f"e{i}"), queue)
        if i >= 100 and decision.alert is not None:
            picked.append(decision.eur_at_stake)
    assert len(picked) > 10 and min(picked) >= 100_000.0


def test_recovered_revenue_teaches_the_stake() -> None:
    fusion = _fusion()
    queue = OfficeQueueState()
    scores = [_score("undervaluation", 0.7, stake=1_000.0)]
    assert fusion.decide(scores, _subject("a"), queue).eur_at_stake == 1_000.0
    for i in range(200):
        fusion.learn(fusion.decide(scores, _subject(f"n{i}"), queue).features, True, "exploitation")
    assert fusion.decide(scores, _subject("b"), queue).eur_at_stake == 1_000.0  # no EUR reported: nothing learned
    for i in range(300):
        decision = fusion.decide(scores, _subject(f"r{i}"), queue)
        fusion.learn(decision.features, True, "exploitation", recovered_eur=100_000.0)
    assert fusion.recoveries == 300
    assert fusion.decide(scores, _subject("c"), queue).eur_at_stake > 20_000.0  # controls recover ~100x the estimate


def test_subject_context_is_a_feature() -> None:
    fusion = _fusion()
    queue = OfficeQueueState()
    scores = [_score("undervaluation", 0.2)]
    relieved = fusion.decide(scores, _subject("r", declared_eur=99_999.0, regime="4200"), queue)
    plain = fusion.decide(scores, _subject("p", regime="4000"), queue)
    x = dict(zip(fusion.feature_names, relieved.features, strict=False))
    assert x["log_declared"] == pytest.approx(5.0) and x["relief"] == 1.0
    y = dict(zip(fusion.feature_names, plain.features, strict=False))
    assert y["log_declared"] == 0.0 and y["relief"] == 0.0
    assert len(relieved.features) == len(fusion.feature_names) + 1  # then the operator key


def test_feature_scaler_is_rivers_standard_scaler_bit_for_bit() -> None:
    """Same z-scores and the same pickle as River's StandardScaler fed the same values as dicts."""
    names = ("a", "b", "c", "d")
    rng = random.Random(5)
    river, own = preprocessing.StandardScaler(), FeatureScaler(names)
    assert dumps_model(own.to_river()) == dumps_model(river)  # untouched: empty, as River's
    for i in range(3000):
        values = [rng.choice([rng.gauss(2.0, 7.0), -6.9, 0.0, 1.0, rng.uniform(0.0, 9.0)]) for _ in names]
        x = array("d", [*values, 12345.0])  # a trailing operator key, as fusion features carry, is ignored
        assert own.transform_one(x) == list(river.transform_one(dict(zip(names, values, strict=True))).values())
        if i == 0:
            assert dumps_model(own.to_river()) == dumps_model(river)  # transformed, not learned: keys at 0
        river.learn_one(dict(zip(names, values, strict=True)))
        own.learn_one(x)
    assert dumps_model(own.to_river()) == dumps_model(river)
    back = FeatureScaler.from_river(names, loads_model(dumps_model(river)))
    assert (back.counts, back.means, back.variances, back.stds) == (own.counts, own.means, own.variances, own.stds)
    with pytest.raises(ValueError, match="features"):
        FeatureScaler.from_river(("a", "b"), river)
    with pytest.raises(ValueError, match="StandardScaler"):
        FeatureScaler.from_river(names, preprocessing.MinMaxScaler())
    with pytest.raises(ValueError, match="3 values for 4 features"):
        own.learn_one([1.0, 2.0, 3.0])


def test_checkpoint_scaler_is_a_river_standard_scaler() -> None:
    """Checkpoints hold the scaler as River's StandardScaler: one written before the list-based scaler loads."""
    fusion = _fusion()
    queue = OfficeQueueState()
    river = preprocessing.StandardScaler()  # what the scaler was before: River's, fed dicts
    for i in range(50):
        decision = fusion.decide(
            [_score("undervaluation", (i % 10) / 10, f"s{i}", stake=10.0 * i)], _subject(f"s{i}"), queue
        )
        river.learn_one(dict(zip(fusion.feature_names, decision.features, strict=False)))
    state = fusion.state_dict()
    assert state["scaler"] == dumps_model(river)  # the same bytes as the River scaler's
    restored = _fusion()
    restored.load_state_dict(orjson.loads(orjson.dumps({**state, "scaler": dumps_model(river)})))
    scores = [_score("undervaluation", 0.8, "next", stake=5_000.0), _score("ens_pre_arrival", 0.4, "next")]
    ahead, again = fusion.decide(scores, _subject("next"), queue), restored.decide(scores, _subject("next"), queue)
    assert (again.probability, list(again.features)) == (ahead.probability, list(ahead.features))
    assert restored.state_dict() == fusion.state_dict()


def test_operator_record_weighs_an_operators_controls() -> None:
    record = OperatorRecord(prior_strength=1.0, cap=4.0, max_operators=2)
    a, b, c = operator_key("FR1"), operator_key("FR2"), operator_key("FR3")
    assert operator_key(None) == -1.0 and a == operator_key("FR1") and a != b and a == int(a)
    for _ in range(3):
        record.add(b, False)
    record.add(a, True)
    assert record.evidence(c) == 0.0  # never controlled
    assert record.evidence(a) > 0.5 > -0.5 > record.evidence(b)
    once = record.evidence(a)
    record.add(a, True)
    assert record.evidence(a) > once  # more positives, more evidence
    for _ in range(4):
        record.add(a, True)
    assert record.counts[int(a)][0] <= 4.0  # counts past the cap are halved: old history fades
    record.add(c, True)  # a third operator: the least recently controlled one is forgotten
    assert len(record) == 2 and record.evidence(b) == 0.0
    restored = OperatorRecord()
    restored.load(orjson.loads(orjson.dumps(record.to_dict())))
    assert restored.evidence(a) == record.evidence(a) and restored.controls == record.controls == 10


def test_an_operators_positive_controls_raise_its_next_subjects() -> None:
    fusion = _fusion()
    queue = OfficeQueueState()
    quiet = [_score("undervaluation", 0.1), _score("ens_pre_arrival", 0.1)]
    for i in range(3):
        fusion.learn(fusion.decide(quiet, _subject(f"f{i}", "FR1"), queue).features, True, "exploitation")
    for i in range(6):
        fusion.learn(fusion.decide(quiet, _subject(f"o{i}", f"FRX{i}"), queue).features, False, "exploitation")
    flagged = fusion.decide(quiet, _subject("next", "FR1"), queue)
    other = fusion.decide(quiet, _subject("other", "FR2"), queue)
    assert flagged.probability > 2 * other.probability


def test_outcomes_move_the_model() -> None:
    fusion = _fusion(learning_rate=0.05)
    queue = OfficeQueueState()
    ens_heavy = [_score("undervaluation", 0.05), _score("ens_pre_arrival", 0.4)]
    before = fusion.decide(ens_heavy, _subject("a"), queue)
    for i in range(300):
        # Items that only the ENS detector finds suspicious keep turning out positive.
        decision = fusion.decide(ens_heavy, _subject(f"e{i}"), queue)
        fusion.learn(decision.features, True, "exploitation")
        quiet = fusion.decide(
            [_score("undervaluation", 0.05), _score("ens_pre_arrival", 0.05)], _subject(f"q{i}"), queue
        )
        fusion.learn(quiet.features, False, "random")
    after = fusion.decide(ens_heavy, _subject("b"), queue)
    assert fusion.labels == 600 and fusion.positives == 300
    assert after.probability > before.probability + 0.2


@cache
def _stream() -> tuple[tuple[Any, Any], ...]:
    return tuple(generate(GeneratorConfig(seed=13, duration_hours=4, rate_per_hour=1000, fraud_share=0.06)))


def _run(pipeline: ScoringPipeline, pairs: Any) -> list[tuple[Any, ...]]:
    out = []
    for event, _ in pairs:
        r = pipeline.process(event)
        alert = r.alert.model_dump() if r.alert is not None else None
        out.append((event.event_id, [s.model_dump() for s in r.scores], r.fused_risk, alert))
    return out


def _budgeted() -> ScoringPipeline:
    return _pipeline(alerting=LearnedFusion(capacity=0.03, explore_share=0.3, window=300, min_fill=60))


def test_alert_budget_per_office_and_exploration_share() -> None:
    pipeline = _budgeted()
    results = _run(pipeline, _stream())
    fusion = pipeline.alerting
    assert isinstance(fusion, LearnedFusion)
    big = {k: v for k, v in fusion.counts.items() if v[0] >= 600}
    assert len(big) >= 3
    for key, (flow, exploit, explore) in big.items():
        assert 0.015 < (exploit + explore) / flow < 0.06, key  # capacity: 3 % of the office's flow
    alerts = [a for *_, a in results if a is not None]
    selections = Counter(a["selection"] for a in alerts)
    assert 0.1 < selections["exploration"] / len(alerts) < 0.5
    explored = [a for a in alerts if a["selection"] == "exploration"]
    assert all(a["reasons"][0].startswith("Exploration pick") for a in explored)
    for a in explored:  # a likely fraud picked only to explore: its sentence says the small stake is why
        assert ("is high but only" in a["reasons"][0]) == (a["subject_type"] != "ens" and a["fused_risk"] >= 0.5)
    # Seeded, not random: a second engine makes exactly the same picks.
    part = _stream()[:4000]
    again = _run(_budgeted(), part)
    assert [a for *_, a in again if a is not None] == [a for *_, a in results[: len(part)] if a is not None]


def test_restart_continues_learning_where_it_stopped() -> None:
    """Half the stream, checkpoint through JSON, restore into a fresh pipeline, the rest == never stopped."""
    pairs = _stream()
    half = len(pairs) // 2
    uninterrupted = _pipeline()
    reference = _run(uninterrupted, pairs)

    first = _pipeline()
    _run(first, pairs[:half])
    checkpoint = orjson.loads(orjson.dumps(first.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
    assert isinstance(checkpoint["fusion"]["classifier"], str)  # River model as base64 pickle text
    restored = _pipeline()
    restored.load_state_dict(checkpoint)
    assert _run(restored, pairs[half:]) == reference[half:]
    assert isinstance(restored.alerting, LearnedFusion) and isinstance(uninterrupted.alerting, LearnedFusion)
    assert restored.alerting.labels == uninterrupted.alerting.labels > 0  # it kept learning from outcomes
    assert restored.alerting.classifier.weights == uninterrupted.alerting.classifier.weights
    assert orjson.dumps(restored.state_dict()) == orjson.dumps(uninterrupted.state_dict())


def test_checkpoint_refuses_another_fusion() -> None:
    state = _pipeline().state_dict()
    with pytest.raises(ValueError, match="fusion"):
        _pipeline(alerting=NoisyOrAlerting()).load_state_dict(state)


def test_noisy_or_baseline_still_alerts_on_declarations_only() -> None:
    pipeline = _pipeline(alerting=NoisyOrAlerting(threshold=0.5))
    alerts = [a for *_, a in _run(pipeline, _stream()[:5000]) if a is not None]
    assert alerts and {a["subject_type"] for a in alerts} == {"declaration"}


def _outcome(target: str, reference: str, n: int = 0) -> ControlOutcome:
    return ControlOutcome(
        event_id=f"o{n}", event_time=T0, source_system="t", target_type="declaration", target_reference=reference,
        target_event_id=target, controlled=True, positive=False, officer_id="x", office="FR002300",
    )  # fmt: skip


def test_label_join_is_bounded_and_joins_once() -> None:
    join = LabelJoin(horizon_days=1, max_pending=3)
    for i in range(5):
        join.remember(f"e{i}", "declaration", f"26FR000000000000{i:02d}", 1000.0 + i, array("d", [i, 2.0]), {"d": [i]})
    assert sorted(join.by_id) == ["e2", "e3", "e4"]  # at most 3 wait; the earliest to expire went first
    restored = LabelJoin.from_dict(orjson.loads(orjson.dumps(join.to_dict())))
    entry = restored.take(_outcome("e3", "26FR00000000000003"))
    assert entry is not None and list(entry.features) == [3.0, 2.0] and entry.contexts == {"d": [3]}
    assert restored.take(_outcome("e3", "26FR00000000000003")) is None  # a second outcome teaches nothing
    by_reference = restored.take(_outcome("unknown", "26FR00000000000004"))
    assert by_reference is not None and by_reference.event_id == "e4"
    assert restored.evict(1002.5) == 1 and len(restored) == 0


def test_pipeline_memory_is_bounded_by_time() -> None:
    pipeline = _pipeline()
    pairs = _stream()
    _run(pipeline, pairs[: len(pairs) // 2])
    assert len(pipeline.labels) > 1000
    # Nothing waits beyond its expiry: 3 days after scoring, or 2 days after an ENS's arrival.
    now = pipeline.watermark.timestamp()
    assert all(e.expires >= now for e in pipeline.labels.by_id.values())
    pipeline.labels.evict(now + 40 * 86_400)
    assert len(pipeline.labels) == 0
    pipeline.ens.evict_before(pipeline.watermark + timedelta(days=60))
    assert not pipeline.ens.arrivals


def test_the_fusion_kernel_names_its_features() -> None:
    fusion = LearnedFusion()
    fusion.bind(["undervaluation", "atypical_flow"])
    kernel = fusion._kernel
    assert kernel.names[:2] == ("ens:undervaluation", "ens:atypical_flow")
    assert repr(kernel) == f"FusionKernel({len(kernel.names)} features: {', '.join(kernel.names)})"


def test_the_revenue_model_learns_recoveries_only_when_asked() -> None:
    """The EUR a positive control reports (duty and taxes recovered) reaches LearnedFusion.learn with
    ``learn_recoveries``; by default (measured to lower revenue at the top) nothing is handed on."""
    events = [event for event, _ in _stream()]
    recovering = sum(
        1 for e in events if e.event_type == "outcome" and e.positive and e.duty_recovered_eur + e.tax_recovered_eur > 0
    )
    asked, default = _pipeline(learn_recoveries=True), _pipeline()
    _run(asked, _stream())
    _run(default, _stream())
    assert isinstance(asked.alerting, LearnedFusion) and isinstance(default.alerting, LearnedFusion)
    assert recovering > 0 and 0 < asked.alerting.recoveries <= min(recovering, asked.alerting.positives)
    assert default.alerting.recoveries == 0 and default.alerting.positives > 0
