"""A reference risk pipeline built the plain way, from River and pydantic, for bench/pipeline.py.

What a team would write first with the same libraries and the same signals, without Vigie's
keyed-state operators and Cython hot paths: per event, pydantic decoding (the same strict
models), then per goods item River estimators held in dicts keyed like Vigie's state:

* undervaluation: ``stats.RollingQuantile`` (median) and ``stats.RollingIQR`` of the log unit
  value per CN8 and origin, z = (median - x) / (IQR / 1.349);
* atypical flow: ``anomaly.HalfSpaceTrees`` (10 trees, height 8, window 250) behind a
  ``preprocessing.MinMaxScaler`` per CN chapter, on a dict of 8 features;
* behaviour change: ``drift.PageHinkley`` per importer on the item z-scores, with
  ``stats.Mean`` of declared values;
* excise: pure alcohol = volume x strength and duty = rate x base checks, per record;
* ENS: ``stats.Mean`` of past positive controls per HS6 and a novelty count per consignor pair;
* fusion: ``preprocessing.StandardScaler | linear_model.LogisticRegression`` on the dict of
  detector scores, learning from control outcomes; an alert above 0.5.

Each score is a validated :class:`~vigie.schemas.RiskScore` (the plain way to build a pydantic
model), appended with the event to ``buffer``, standing for the sink's (a list by default). It is a yardstick
for speed, not a detector: its scores are not evaluated.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from river import anomaly, compose, drift, linear_model, preprocessing, stats

from vigie.schemas import (
    Alert,
    ControlOutcome,
    EntrySummaryDeclaration,
    ExciseMovement,
    ImportDeclaration,
    RiskScore,
)

_MODES = {"sea": 0.0, "air": 0.25, "road": 0.5, "rail": 0.75, "postal": 1.0}
_RATE_PER_HL_PURE_ALCOHOL = 1_800.0
T = TypeVar("T")
_SUBJECT_TYPES = {ImportDeclaration: "declaration", EntrySummaryDeclaration: "ens", ExciseMovement: "excise"}


def _get(table: dict[str, T], key: str, make: Callable[[], T]) -> T:
    found = table.get(key)
    if found is None:
        found = table[key] = make()
    return found


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, x))))


class ReferencePipeline:
    """Score then learn each event with River estimators in dicts; see the module docstring."""

    def __init__(self, buffer: Any = None) -> None:
        self.median: dict[str, stats.RollingQuantile] = {}
        self.iqr: dict[str, stats.RollingIQR] = {}
        self.hst: dict[str, compose.Pipeline] = {}
        self.drift: dict[str, drift.PageHinkley] = {}
        self.value_mean: dict[str, stats.Mean] = {}
        self.hit_rate: dict[str, stats.Mean] = {}
        self.pairs: dict[str, int] = {}
        self.fusion = preprocessing.StandardScaler() | linear_model.LogisticRegression()
        self.pending: dict[str, dict[str, float]] = {}
        self.buffer: Any = [] if buffer is None else buffer

    def _score(self, detector: str, event: Any, reference: str, office: str, score: float, item: int | None,
               reason: str) -> RiskScore:  # fmt: skip
        return RiskScore(
            score_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{detector}/{event.event_id}/{item or 0}")),
            detector=detector,
            subject_event_id=event.event_id,
            subject_type=_SUBJECT_TYPES[type(event)],
            subject_reference=reference,
            item_number=item,
            event_time=event.event_time,
            office=office,
            score=min(1.0, max(0.0, score)),
            eur_at_stake=0.0,
            reason=reason,
        )

    def process(self, event: Any) -> list[Any]:
        scores: list[RiskScore] = []
        if isinstance(event, ImportDeclaration):
            scores = self._declaration(event)
        elif isinstance(event, EntrySummaryDeclaration):
            scores = self._ens(event)
        elif isinstance(event, ExciseMovement):
            scores = self._excise(event)
        elif isinstance(event, ControlOutcome):
            self._outcome(event)
        records: list[Any] = [event, *scores]
        if scores:
            features = {s.detector: s.score for s in scores}
            probability = self.fusion.predict_proba_one(features).get(True, 0.0)
            self.fusion["StandardScaler"].learn_one(features)
            self.pending[getattr(event, "mrn", None) or getattr(event, "ens_reference", None) or event.event_id] = (
                features
            )
            if probability > 0.5:
                first = scores[0]
                records.append(
                    Alert(
                        alert_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"alert/{event.event_id}")),
                        subject_event_id=event.event_id,
                        subject_type=first.subject_type,
                        subject_reference=first.subject_reference,
                        event_time=event.event_time,
                        office=first.office,
                        fused_risk=probability,
                        rank=1,
                        contributions=features,
                        reasons=[s.reason for s in scores[:3]],
                        eur_at_stake=0.0,
                    )
                )
        self.buffer.extend(records)
        return records

    def _declaration(self, event: ImportDeclaration) -> list[RiskScore]:
        scores: list[RiskScore] = []
        hour = event.event_time.hour / 24.0
        for item in event.goods_items:
            key = f"{item.cn_code}:{item.origin_country}"
            log_uv = math.log(item.customs_value_eur / item.net_mass_kg)
            median = _get(self.median, key, lambda: stats.RollingQuantile(0.5, window_size=200))
            iqr = _get(self.iqr, key, lambda: stats.RollingIQR(200, 0.25, 0.75))
            reference, spread = median.get(), iqr.get()
            z = 0.0 if reference is None or not spread else (reference - log_uv) / (spread / 1.349)
            scores.append(self._score("undervaluation", event, event.mrn, event.customs_office, _sigmoid(z - 3.0),
                                      item.item_number, f"unit value z {z:.1f} below CN {item.cn_code}"))  # fmt: skip
            median.update(log_uv)
            iqr.update(log_uv)

            chapter = item.cn_code[:2]
            model = _get(
                self.hst,
                chapter,
                lambda: (
                    preprocessing.MinMaxScaler()
                    | anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=42)
                ),
            )
            features = {
                "value_per_kg": log_uv,
                "net_mass": math.log1p(item.net_mass_kg),
                "value_vs_group": z,
                "route": 1.0 if item.origin_country != item.dispatch_country else 0.0,
                "new_declarant": 1.0 if f"{event.importer_eori}:{chapter}" not in self.pairs else 0.0,
                "hour": hour,
                "procedure": float(event.procedure_code[:2]) / 100.0,
                "transport_mode": _MODES.get(str(event.transport_mode_at_border), 0.5),
            }
            scores.append(self._score("atypical_flow", event, event.mrn, event.customs_office,
                                      model.score_one(features), item.item_number, "atypical item"))  # fmt: skip
            model.learn_one(features)
            self.pairs[f"{event.importer_eori}:{chapter}"] = 1

            detector = _get(self.drift, event.importer_eori, drift.PageHinkley)
            detector.update(z)
            mean = _get(self.value_mean, event.importer_eori, stats.Mean)
            mean.update(item.customs_value_eur)
            if detector.drift_detected:
                scores.append(self._score("operator_behaviour", event, event.mrn, event.customs_office, 0.9,
                                          item.item_number, "importer behaviour changed"))  # fmt: skip
        return scores

    def _ens(self, event: EntrySummaryDeclaration) -> list[RiskScore]:
        scores: list[RiskScore] = []
        pair = f"{event.consignor.name}>{event.consignee.eori}"
        novelty = 0.0 if pair in self.pairs else 1.0
        self.pairs[pair] = 1
        for item in event.goods_items:
            rate = _get(self.hit_rate, item.hs_code[:6], stats.Mean)
            vague = 1.0 if len(item.description.split()) < 2 else 0.0
            score = 1.0 - (1.0 - 0.5 * novelty) * (1.0 - (rate.get() or 0.0)) * (1.0 - 0.5 * vague)
            scores.append(self._score("ens_pre_arrival", event, event.ens_reference, event.first_office_of_entry,
                                      score, item.item_number, "ENS risk"))  # fmt: skip
        return scores

    def _excise(self, event: ExciseMovement) -> list[RiskScore]:
        if event.volume_litres is None or event.alcohol_strength_pct is None:
            return []
        pure_alcohol_hl = event.volume_litres * event.alcohol_strength_pct / 100.0 / 100.0
        expected = pure_alcohol_hl * _RATE_PER_HL_PURE_ALCOHOL
        gap = max(0.0, expected - event.duty_declared_eur)
        score = 1.0 - math.exp(-gap / 1000.0)
        return [self._score("excise", event, event.arc or event.event_id, "unknown", score, None, "excise gap")]

    def _outcome(self, outcome: ControlOutcome) -> None:
        features = self.pending.pop(outcome.target_reference, None)
        if features is not None and outcome.controlled:
            self.fusion.learn_one(features, outcome.positive)
