"""`vigie evaluate`: prequential protocol, metrics at the top of the ranking, command output."""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from tests.factories import T0, excise
from vigie.operators import ScoringPipeline, UndervaluationDetector
from vigie.operators.ens_risk import EnsPreArrivalDetector
from vigie.operators.fusion import LearnedFusion
from vigie.operators.pipeline import PipelineResult
from vigie.schemas import Alert, ControlOutcome, RiskScore
from vigie.schemas.generator import GeneratorConfig
from vigie.streams.evaluate import (
    TOP_SHARES,
    AlertRecord,
    PrequentialEvaluator,
    Record,
    Truth,
    _at_top,
    build_detectors,
    evaluate_command,
    run_generated,
)


def _pipeline(**kwargs: Any) -> ScoringPipeline:
    """The detectors under test: undervaluation and the ENS pre-arrival detector."""
    return ScoringPipeline([UndervaluationDetector(), EnsPreArrivalDetector()], **kwargs)


CONFIG = GeneratorConfig(seed=17, duration_hours=4, rate_per_hour=800, fraud_share=0.08)


@cache
def _evaluated() -> PrequentialEvaluator:
    return run_generated(CONFIG, _pipeline(alerting=LearnedFusion(capacity=0.02)), legacy="random")


def _record(event_id: str, score: float, truth: Truth | None) -> Record:
    return Record(event_id, "declaration", 0, 0.0, score, {"d": score}, truth, "FR000690")


def test_top_share_metrics_count_each_consignment_once() -> None:
    shared = Truth(revenue_eur=900.0, consignment="C1")
    records = [_record(f"e{i}", 0.0, None) for i in range(96)]
    records += [_record("a", 0.9, shared), _record("b", 0.8, shared), _record("c", 0.7, Truth(100.0, "C2"))]
    records.append(_record("d", 0.6, None))
    at = _at_top(records, lambda r: r.fused)
    assert at[0.02].n == 2 and at[0.02].precision == 1.0
    assert at[0.02].recall == 0.5 and at[0.02].revenue == pytest.approx(0.9)  # C1 once, C2 missed
    assert at[0.05].precision == pytest.approx(3 / 5) and at[0.05].recall == 1.0 and at[0.05].revenue == 1.0


def test_labels_come_only_from_controls() -> None:
    evaluator = _evaluated()
    alerted = {a.alert.subject_event_id for a in evaluator.alerts}
    assert evaluator.outcomes_fed["engine"] == len(evaluator.alerts) > 0
    # Legacy rule-based controls are withheld, the random audit sample is kept.
    assert evaluator.legacy_dropped > 0 and evaluator.outcomes_fed["legacy"] > 0
    fusion = evaluator.pipeline.alerting
    assert isinstance(fusion, LearnedFusion)
    assert 0 < fusion.labels <= evaluator.outcomes_fed["engine"] + evaluator.outcomes_fed["legacy"]
    assert alerted <= {r.event_id for r in evaluator.records}
    audit = ControlOutcome(event_id="x", event_time=T0, source_system="t", target_type="declaration",
                           target_reference="26FR0002300000001A", controlled=True, officer_id="o", office="FR002300",
                           selection="random")  # fmt: skip
    assert evaluator._keep_legacy(audit)
    assert not PrequentialEvaluator(_pipeline(), legacy="none")._keep_legacy(audit)


def test_report_ranks_fused_and_each_detector() -> None:
    evaluator = _evaluated()
    report = evaluator.report()
    assert set(report.ranking) == {
        "fused", "fused probability", "noisy-OR (no labels)", "undervaluation", "ens_pre_arrival"
    }  # fmt: skip
    assert all(set(r) == set(TOP_SHARES) for r in report.ranking.values())
    # Every declaration and excise record is ranked, scored or not.
    assert report.n_records == sum(r.subject_type in ("declaration", "excise") for r in evaluator.records)
    # A smoke test on a small stream (the 5x goal is measured on 24 h by `vigie evaluate`, bench/RESULTS.md):
    # 29 of 113 here since the budget spends the capacity (fewer controls, fewer labels), 30 before.
    assert report.ranking["fused"][0.05].precision > 2.5 * report.base_rate
    assert report.ens_ranking["ens_pre_arrival"][0.05].precision > 3 * report.n_fraud_ens / report.n_ens
    assert report.lead_times_h and report.median_lead_h is not None
    data = report.to_dict()
    assert data["ranking"]["fused"]["5%"]["precision"] == report.ranking["fused"][0.05].precision


def test_lead_time_counts_each_fraud_once_from_its_first_alert() -> None:
    """A fraud alerted on its ENS before arrival, then on its declaration after, has the ENS alert's lead,
    reported in the part of the run where that first alert came: not a negative lead in the later part."""
    evaluator = PrequentialEvaluator(_pipeline())
    eta = T0 + timedelta(hours=30)
    evaluator.ens_eta = {"c1": eta, "c2": eta}

    def alert(event_id: str, hours: float, order: int, consignment: str) -> AlertRecord:
        raised = Alert.model_construct(
            alert_id=event_id, subject_event_id=event_id, event_time=T0 + timedelta(hours=hours)
        )
        return AlertRecord(raised, order, Truth(1000.0, consignment))

    # c1: its ENS alerted 24 h ahead (order 1), its declaration 2 h after arrival (order 8); c2 first alerted at 9.
    evaluator.alerts = [alert("ens-1", 6, 1, "c1"), alert("decl-1", 32, 8, "c1"), alert("ens-2", 27, 9, "c2")]
    assert sorted(evaluator._lead_times()) == [3.0, 24.0]
    assert evaluator._lead_times(since_order=5) == [3.0]  # c2 only; c1 belongs to the earlier part
    assert evaluator._lead_times(since_order=10) == []


def test_fused_ranking_is_the_engines_priority() -> None:
    """Declarations and excise records rank by expected recoverable EUR, as the engine's alerts; ENS by probability."""
    evaluator = _evaluated()
    fusion = evaluator.pipeline.alerting
    assert isinstance(fusion, LearnedFusion)
    fused = [r for r in evaluator.records if r.priority >= 0]
    assert {r.subject_type for r in fused} == {"ens", "declaration"}
    for r in fused:
        if r.subject_type == "ens":
            assert r.rank_key == r.fused
        else:
            assert r.rank_key >= r.fused  # p x (1 + EUR at stake)
    assert any(r.rank_key > 100 * r.fused for r in fused)  # EUR at stake moves the ranking
    report = evaluator.report()
    assert report.ranking["fused"][0.10].revenue != report.ranking["fused probability"][0.10].revenue


class _LateScores:
    """A pipeline stand-in whose second event reveals something about the first (an overdue e-AD)."""

    def __init__(self) -> None:
        self.detectors: list[Any] = []
        self.alerting = None

    def process(self, event: Any) -> PipelineResult:
        first = event.event_id == "exc-0001"
        score = RiskScore(
            score_id=f"s-{event.event_id}", detector="excise", subject_event_id="exc-0001", subject_type="excise",
            subject_reference="26FRA1B2C3D4E5F6G7H81", event_time=T0, office="FR002300",
            score=0.0 if first else 0.9, eur_at_stake=0.0, reason="overdue",
        )  # fmt: skip
        return PipelineResult(event, [score])


def test_a_later_score_is_a_later_finding_of_its_subject() -> None:
    """Not the revealing event's score, and not in the prequential rankings: reported apart."""
    evaluator = PrequentialEvaluator(_LateScores())  # type: ignore[arg-type]
    evaluator.feed(excise(), Truth(5000.0, "C1"))
    evaluator.feed(excise(event_id="exc-0002", arc="26FRA1B2C3D4E5F6G7H82"), None)
    first, second = evaluator.records
    assert first.detectors == {"excise": 0.0} and second.detectors == {}
    assert evaluator.later == {"exc-0001": {"excise": 0.9}}
    later = evaluator.report().later
    assert later["flagged"] == 1 and later["flagged_fraudulent"] == 1 and later["revenue_share"] == 1.0


def test_build_detectors() -> None:
    assert [d.name for d in build_detectors("undervaluation,ens_pre_arrival")] == ["undervaluation", "ens_pre_arrival"]
    assert {"undervaluation", "ens_pre_arrival"} <= {d.name for d in build_detectors("all")}
    with pytest.raises(typer.BadParameter):
        build_detectors("crystal_ball")


def test_evaluate_command_prints_figures_and_saves_curves(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(evaluate_command)
    png, out = tmp_path / "curves.png", tmp_path / "figures.json"
    args = ["--duration-hours", "2", "--rate", "500", "--fraud-share", "0.1", "--png", str(png), "--json", str(out),
            "--detectors", "undervaluation,ens_pre_arrival"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "P@5%" in result.output and "Rev@10%" in result.output and "lead time" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    figures = orjson.loads(out.read_bytes())
    assert 0.0 <= figures["whole"]["ranking"]["fused"]["10%"]["revenue"] <= 1.0
