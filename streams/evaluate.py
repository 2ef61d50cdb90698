"""`vigie evaluate`: prequential evaluation of the engine on a generated stream.

**Protocol.** Events are processed in stream order; each subject (ENS, declaration, excise
record) is scored *before* anything is learned from it (score first, learn after). Labels
are revealed the way real controls reveal them:

* every alert the engine raises becomes a control: a :class:`ControlOutcome` for its subject
  is fed back into the stream some hours later (an ENS is controlled at arrival, after its
  ETA), positive with probability ``detection_probability`` (0.85, as the generator's
  officers) when the ground truth says the subject is fraudulent, recovering the revenue at
  risk;
* the generator's own outcomes are the *legacy* targeting's: by default only its random
  controls (``selection="random"``, 0.75 % of declarations and excise records) are kept, as
  the administration's unbiased audit sample; its rule-based ones are dropped, since the
  engine replaces those rules (``--legacy-outcomes none|random|all``).

**Metrics.** Each subject keeps the scores it got when it was processed. A score a
detector emits later about an earlier subject (an e-AD found short when its import is
reconciled, or overdue) is not the revealing event's: it is kept apart as a *later finding*
of that subject and reported on its own (how many, and the share of revenue at risk they
point at), outside the prequential rankings. Rankings are judged at a fixed share of the
flow, as a control budget is: at the top 1, 2, 5 and 10 % of the declarations and excise
records (the controllable records that carry revenue), ranked by

* ``fused``: the engine's own priority, what its alerts and queues follow: with the
  learned fusion, the expected recoverable revenue (fused probability x EUR at stake,
  :meth:`~vigie.operators.fusion.LearnedFusion.priority`);
* ``fused probability``: the fused probability alone;
* each detector's highest item score, and the label-free noisy-OR of the detectors:

* **precision**: share of the ranked records that are fraudulent;
* **recall**: share of the fraudulent consignments with at least one record in the top;
* **revenue**: share of the revenue at risk (counted once per consignment) so covered.

ENS are ranked apart (pre-arrival, same metrics). The **lead time** of an ENS-borne fraud
(a fraudulent consignment whose ENS was filed: the ENS carries the fraud, or the consignment's
declaration quotes it in ``ens_reference``, its excise records the declaration's MRN) is its
ETA minus the time of the first alert on any of its records; its median is over the ENS-borne
frauds that got an alert. An alert counts from the later of its subject's time and the
pipeline's watermark when it was raised: the stream emits some sea ENS days after their
filing, and the engine cannot alert on a record before it has it.
Alerts are also judged as raised, from the outcomes of the controls they triggered: hit rate
(positive controls / controls) per selection (exploitation, exploration) and subject type,
alert rate per office, revenue recovered; the share of frauds among alerts and the revenue
of the frauds alerted, read from the ground truth, are shown apart and labelled so.

``report(since_order=...)`` restricts everything to the subjects processed at or after a
position (per subject type if a mapping): records, alerts (by their subject), the revenue at
risk, and the ENS-borne frauds (by their first declaration or excise record).

:class:`PrequentialEvaluator` is the engine-agnostic core; ``vigie replay`` uses it too.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib
import importlib.util
import math
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from vigie.operators import ScoringPipeline
from vigie.operators.base import Operator
from vigie.operators.fusion import LearnedFusion
from vigie.operators.pipeline import default_detectors
from vigie.schemas import Alert, ControlOutcome, EntrySummaryDeclaration, ExciseMovement, ImportDeclaration
from vigie.schemas.generator import GeneratorConfig, GroundTruth, generate, infringement_of

TOP_SHARES: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)
"""Shares of the flow at which rankings are judged."""
RANKED_TYPES = ("declaration", "excise")
"""Record types in the main ranking (the ones a control recovers revenue on)."""

DETECTOR_CLASSES: dict[str, tuple[str, str]] = {
    "undervaluation": ("vigie.operators.undervaluation", "UndervaluationDetector"),
    "atypical_flow": ("vigie.operators.atypical", "AtypicalFlowDetector"),
    "operator_behaviour": ("vigie.operators.behaviour", "OperatorBehaviourDetector"),
    "excise": ("vigie.operators.excise", "ExciseDetector"),
    "ens_pre_arrival": ("vigie.operators.ens_risk", "EnsPreArrivalDetector"),
}
"""Every detector the engine knows, by name: (module, class)."""


def build_detectors(names: str) -> list[Operator[Any, Any]]:
    """Detectors from a comma list of names, ``default`` (what the engine runs) or ``all`` (every importable one)."""
    if names == "default":
        return default_detectors()
    wanted = list(DETECTOR_CLASSES) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    detectors: list[Operator[Any, Any]] = []
    for name in wanted:
        if name not in DETECTOR_CLASSES:
            raise typer.BadParameter(f"unknown detector {name!r}: choose among {', '.join(DETECTOR_CLASSES)}")
        module_name, class_name = DETECTOR_CLASSES[name]
        try:
            module = importlib.import_module(module_name)
        except Exception:
            if names == "all":
                continue  # not there (yet): 'all' means every detector that loads
            raise
        detectors.append(getattr(module, class_name)())
    return detectors


# --- ground truth, engine-agnostic -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Truth:
    """What is wrong with one record, for evaluation only (never shown to the engine)."""

    revenue_eur: float
    consignment: str
    """Records of the same consignment share the revenue; totals count it once."""
    patterns: tuple[str, ...] = ()
    item_number: int | None = None
    duty_eur: float = 0.0

    @classmethod
    def of(cls, truth: GroundTruth) -> Truth:
        duty = truth.details.get("duty_evaded_eur", 0.0)
        return cls(
            revenue_eur=truth.revenue_at_risk_eur,
            consignment=str(truth.details.get("consignment_id", truth.event_id)),
            patterns=truth.patterns,
            item_number=truth.item_numbers[0] if truth.item_numbers else None,
            duty_eur=min(float(duty), truth.revenue_at_risk_eur) if isinstance(duty, int | float) else 0.0,
        )


@dataclass(slots=True)
class Record:
    """One scored subject, as it was scored (prequential)."""

    event_id: str
    subject_type: str
    order: int
    """Processing position (ENS filed weeks ahead come late: time is not monotone)."""
    when: float
    """Watermark (latest event time seen, epoch s) when it was scored."""
    fused: float
    """Fused probability (the noisy-OR of the detectors without a learned fusion)."""
    detectors: dict[str, float]
    truth: Truth | None
    office: str
    priority: float = -1.0
    """What the engine ranks it by (expected recoverable EUR with the learned fusion); -1: ``fused``."""

    @property
    def rank_key(self) -> float:
        return self.fused if self.priority < 0 else self.priority


LATE_PROCESSING = timedelta(hours=1)
"""An alert raised more than this after its subject's time was processed late (reported apart)."""


@dataclass(slots=True)
class AlertRecord:
    """An alert as raised, and what the control it triggered found."""

    alert: Alert
    order: int
    truth: Truth | None
    """Ground truth of the alert's subject (evaluation only)."""
    positive: bool = False
    """The simulated control's outcome: a fraud is found with probability ``detection_probability``."""
    recovered_eur: float = 0.0
    """Duty and taxes the control recovered (0 unless positive)."""
    raised: datetime | None = None
    """The pipeline's watermark when the alert was raised (None: unknown, the subject's time)."""

    @property
    def raised_at(self) -> datetime:
        """When the engine could act on it: the later of its subject's time and the watermark at raising."""
        if self.raised is None or self.raised <= self.alert.event_time:
            return self.alert.event_time
        return self.raised

    @property
    def processed_late(self) -> bool:
        return self.raised_at - self.alert.event_time > LATE_PROCESSING


def _unit_draw(*parts: str) -> float:
    digest = hashlib.blake2b(":".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class PrequentialEvaluator:
    """Feeds a stream through a pipeline, turns its alerts into controls, and keeps what was scored.

    ``legacy``: which outcomes already in the stream to keep: ``none``, ``random`` (their
    ``selection`` is ``random``) or ``all``. Outcomes of the engine's own alerts are
    generated from the truth: positive with probability ``detection_probability`` (a
    seeded draw per alert), ``delay_hours`` (uniform, seeded) after the later of the alert
    and the ETA.
    """

    def __init__(
        self,
        pipeline: ScoringPipeline,
        legacy: str = "random",
        detection_probability: float = 0.85,
        delay_hours: tuple[float, float] = (1.0, 8.0),
        seed: int = 0,
    ) -> None:
        if legacy not in ("none", "random", "all"):
            raise ValueError("legacy must be none, random or all")
        self.pipeline = pipeline
        self.legacy = legacy
        self.detection_probability = detection_probability
        self.delay_hours = delay_hours
        self.seed = seed
        self.records: list[Record] = []
        self.alerts: list[AlertRecord] = []
        self.truths: dict[str, Truth] = {}
        self.ens_eta: dict[str, datetime] = {}
        """Consignment id -> ETA of its ENS, for ENS-borne frauds (see :meth:`_link`)."""
        self._eta_of_ens: dict[str, datetime] = {}
        """ENS reference -> its ETA, for every ENS fed (a fraud may surface only on its declaration)."""
        self._ens_of_mrn: dict[str, str] = {}
        """Declaration MRN -> the ENS reference it quotes (its excise records name the MRN)."""
        self._ens_of_event: dict[str, str] = {}
        """Event id -> the ENS reference of its consignment, for ENS and the records linked to one."""
        self._consignment_of_ens: dict[str, str] = {}
        """ENS reference -> fraudulent consignment, so an alert on a record without truth (a clean-looking
        ENS of an excise fraud) still counts as an alert on that consignment."""
        self.outcomes_fed = Counter[str]()
        self.legacy_dropped = 0
        self.events = 0
        self.later: dict[str, dict[str, float]] = {}
        """Subject event id -> detector -> highest score it gave the subject after processing it (later findings)."""
        self._pending: list[tuple[float, int, ControlOutcome]] = []
        self._seq = 0
        self._watermark = 0.0
        self.detector_names = [d.name for d in pipeline.detectors]
        self._decided: dict[str, Any] = {}
        """Subject event id -> the first fusion decision about it while the current event is processed."""
        self._tap_decisions()

    def _tap_decisions(self) -> None:
        """Keep each subject's own fusion decision, whatever the pipeline decides after it.

        ``LearnedFusion.last_decision`` is the latest decision only: the deadline check that
        follows a record's own decision (an overdue e-AD found at that record's time) decides
        on an earlier subject and overwrites it. Wrapping this fusion instance's ``decide``
        (the pipeline calls it through the instance) keeps the first decision per subject
        during each event, the subject's own, without changing the pipeline.
        """
        fusion = self.pipeline.alerting
        if not isinstance(fusion, LearnedFusion):
            return
        decide = fusion.decide
        decided = self._decided

        def tapped(scores: Any, subject: Any, queue: Any) -> Any:
            decision = decide(scores, subject, queue)
            decided.setdefault(decision.event_id, decision)
            return decision

        fusion.decide = tapped  # type: ignore[method-assign]

    def feed(self, event: Any, truth: Truth | None) -> None:
        """Process one stream event (and the engine's controls that are due before it)."""
        when = event.event_time.timestamp()
        self._watermark = max(self._watermark, when)
        self._release(self._watermark)
        if isinstance(event, ControlOutcome) and not self._keep_legacy(event):
            self.legacy_dropped += 1
            return
        if truth is not None:
            self.truths[event.event_id] = truth
        self._link(event, truth)
        self._process(event, truth)
        if isinstance(event, ControlOutcome):
            self.outcomes_fed["legacy"] += 1

    def _link(self, event: Any, truth: Truth | None) -> None:
        """Tie the record to its consignment's ENS; a fraudulent record so tied makes its consignment ENS-borne.

        Every ENS is kept by reference (not only those carrying a fraud: an excise or undervaluation
        fraud can show only on the declaration that quotes a clean-looking ENS). The generated
        stream emits an ENS before the declaration quoting it, and a declaration before its excise
        records; a record whose ENS comes later is not tied.
        """
        ref: str | None = None
        if isinstance(event, EntrySummaryDeclaration):
            ref = event.ens_reference
            self._eta_of_ens[ref] = event.eta
        elif isinstance(event, ImportDeclaration):
            if event.ens_reference and event.ens_reference in self._eta_of_ens:
                ref = event.ens_reference
                self._ens_of_mrn[event.mrn] = ref
        elif isinstance(event, ExciseMovement) and event.import_mrn:
            ref = self._ens_of_mrn.get(event.import_mrn)
        if ref is None:
            return
        self._ens_of_event[event.event_id] = ref
        if truth is not None:
            self._consignment_of_ens[ref] = truth.consignment
            self.ens_eta[truth.consignment] = self._eta_of_ens[ref]

    def finish(self) -> None:
        """Feed the controls still pending (they can only teach, nothing is scored after them)."""
        self._release(math.inf)

    def _keep_legacy(self, outcome: ControlOutcome) -> bool:
        return self.legacy == "all" or (self.legacy == "random" and outcome.selection == "random")

    def _release(self, until: float) -> None:
        while self._pending and self._pending[0][0] <= until:
            _, _, outcome = heapq.heappop(self._pending)
            self.outcomes_fed["engine"] += 1
            self._process(outcome, None)

    def _process(self, event: Any, truth: Truth | None) -> None:
        self.events += 1
        self._decided.clear()
        result = self.pipeline.process(event)
        # The engine acts on what it has processed: an alert can be no earlier than the watermark now.
        raised: datetime | None = getattr(self.pipeline, "watermark", None)
        per: dict[str, float] = {}
        for s in result.scores:
            if s.subject_event_id != event.event_id:
                self._late_score(s.subject_event_id, s.detector, s.score)
            elif s.score > per.get(s.detector, -1.0):
                per[s.detector] = s.score
        if not isinstance(event, ControlOutcome):
            # Every controllable record is ranked, scored or not (unscored ones rank last).
            fused = result.fused_risk if result.fused_risk is not None else _noisy_or(per)
            office = result.scores[0].office if result.scores else _office(event)
            record = Record(event.event_id, event.event_type, self.events, self._watermark, fused, per, truth, office,
                            self._priority(event, result.fused_risk))  # fmt: skip
            self.records.append(record)
        if result.alert is not None:
            self._raise(result.alert, truth, raised)
        for alert in result.later_alerts:  # about an earlier subject: its own truth
            self._raise(alert, self.truths.get(alert.subject_event_id), raised)

    def _raise(self, alert: Alert, truth: Truth | None, raised: datetime | None) -> None:
        """Record an alert and schedule the control it triggers."""
        record = AlertRecord(alert, self.events, truth, raised=raised)
        record.positive, record.recovered_eur = self._control(alert, truth, record.raised_at)
        self.alerts.append(record)

    def _priority(self, event: Any, fused_risk: float | None) -> float:
        """The engine's priority for the subject it just fused (-1: none, rank by the fused probability).

        From the subject's own decision (:meth:`_tap_decisions`), not ``last_decision``, which a
        deadline check decided after it may have overwritten.
        """
        fusion = self.pipeline.alerting
        if fused_risk is None or not isinstance(fusion, LearnedFusion):
            return -1.0
        decision = self._decided.get(event.event_id)
        if decision is None:
            return -1.0
        return fusion.priority(decision, event.event_type)

    def _late_score(self, subject_id: str, detector: str, score: float) -> None:
        """A detector's later word on an earlier subject (e.g. an e-AD found short): a later finding of that subject."""
        found = self.later.setdefault(subject_id, {})
        found[detector] = max(found.get(detector, 0.0), score)

    def _control(self, alert: Alert, truth: Truth | None, raised_at: datetime) -> tuple[bool, float]:
        """The control an alert triggers, reported some hours after the later of the alert and the goods'
        arrival; returns whether it is positive and the EUR it recovers."""
        start = raised_at  # not the subject's time: a late-processed record is controlled after its alert
        if alert.eta is not None and alert.eta > start:
            start = alert.eta
        low, high = self.delay_hours
        delay = low + (high - low) * _unit_draw(str(self.seed), "delay", alert.alert_id)
        at = start + timedelta(hours=delay)
        positive = (
            truth is not None and _unit_draw(str(self.seed), "found", alert.alert_id) < self.detection_probability
        )
        infringement = None
        duty = tax = 0.0
        item = None
        if positive:
            assert truth is not None
            infringement = infringement_of(truth.patterns)
            duty = truth.duty_eur
            tax = max(0.0, truth.revenue_eur - duty)
            item = truth.item_number
        digest = hashlib.blake2b(f"eval:{alert.alert_id}".encode(), digest_size=12).hexdigest()
        outcome = ControlOutcome.model_construct(
            event_type="outcome",
            event_id=f"eval-{digest}",
            schema_version="1.0",
            event_time=at,
            source_system="VIGIE-EVALUATE",
            target_type=alert.subject_type,
            target_reference=alert.subject_reference,
            target_event_id=alert.subject_event_id,
            item_number=item,
            controlled=True,
            positive=positive,
            infringement_type=infringement,
            duty_recovered_eur=round(duty, 2),
            tax_recovered_eur=round(tax, 2),
            seizure=False,
            officer_id="VIGIE-EVALUATE",
            office=alert.office,
            selection="engine_alert",
            alert_id=alert.alert_id,
        )
        self._seq += 1
        heapq.heappush(self._pending, (at.timestamp(), self._seq, outcome))
        return positive, outcome.duty_recovered_eur + outcome.tax_recovered_eur

    # --- metrics ---------------------------------------------------------------------------------
    def report(self, since_order: int | Mapping[str, int] = 0) -> EvaluationReport:
        """Metrics over the subjects processed at or after position ``since_order``; a mapping gives it per
        subject type (:func:`second_half`), types it does not name from the start.

        Everything counted is restricted to those subjects: the records ranked, the alerts (on those
        subjects), the revenue at risk, and the ENS-borne frauds (by their first declaration or excise
        record), so a part's shares and counts have its own denominators.
        """
        included = self._part(since_order)
        records = [r for r in self.records if included(r)]
        main = [r for r in records if r.subject_type in RANKED_TYPES]
        ens = [r for r in records if r.subject_type == "ens"]
        rankers: dict[str, Callable[[Record], float]] = {"fused": lambda r: r.rank_key}
        if any(r.priority >= 0 for r in records):
            rankers["fused probability"] = lambda r: r.fused
        rankers["noisy-OR (no labels)"] = lambda r: _noisy_or(r.detectors)
        for name in self.detector_names:
            rankers[name] = lambda r, name=name: r.detectors.get(name, 0.0)
        report = EvaluationReport(
            n_records=len(main),
            n_fraud_records=sum(r.truth is not None for r in main),
            n_ens=len(ens),
            n_fraud_ens=sum(r.truth is not None for r in ens),
        )
        scoring_ens = {name for r in ens for name in r.detectors}
        for name, key in rankers.items():
            report.ranking[name] = _at_top(main, key)
            # A detector that scored no ENS would rank them all at 0: its row would only repeat the tie-break.
            if ens and (name not in self.detector_names or name in scoring_ens):
                report.ens_ranking[name] = _at_top(ens, key)
        subjects = {r.event_id for r in records}
        alerts = [a for a in self.alerts if a.alert.subject_event_id in subjects]
        report.alerts = _alert_stats(alerts, records, [r.truth for r in records if r.truth is not None])
        report.lead_times_h = self._lead_times(since_order)
        report.n_ens_borne_frauds = len(self._ens_borne(since_order))
        report.later = self._later_findings(main)
        return report

    def _later_findings(self, main: Sequence[Record], suspicion: float = 0.5) -> dict[str, float]:
        """Records a detector flagged (score >= ``suspicion``) only after they were processed; revenue concerned."""
        flagged = [r for r in main if max(self.later.get(r.event_id, {}).values(), default=0.0) >= suspicion]
        revenue_of: dict[str, float] = {}
        for r in main:
            if r.truth is not None:
                revenue_of[r.truth.consignment] = max(revenue_of.get(r.truth.consignment, 0.0), r.truth.revenue_eur)
        hit = {r.truth.consignment for r in flagged if r.truth is not None}
        total = sum(revenue_of.values())
        return {
            "subjects": float(len([r for r in main if r.event_id in self.later])),
            "flagged": float(len(flagged)),
            "flagged_fraudulent": float(sum(r.truth is not None for r in flagged)),
            "revenue_share": sum(revenue_of[c] for c in hit) / total if total > 0 else 0.0,
        }

    @staticmethod
    def _part(since_order: int | Mapping[str, int]) -> Callable[[Record], bool]:
        """Whether a record is processed at or after ``since_order`` (its subject type's, for a mapping)."""
        if isinstance(since_order, int):
            return lambda r: r.order >= since_order
        return lambda r: r.order >= since_order.get(r.subject_type, 0)

    def _ens_borne(self, since_order: int | Mapping[str, int] = 0) -> list[str]:
        """The ENS-borne frauds of the part of the run from ``since_order`` (see :meth:`report`): those whose
        first declaration or excise record (their first record if they have none) is in it."""
        if not since_order:
            return list(self.ens_eta)
        first: dict[str, Record] = {}
        fallback: dict[str, Record] = {}
        for r in self.records:  # in processing order: the first one kept is the first processed
            if r.truth is not None and r.truth.consignment in self.ens_eta:
                (first if r.subject_type in RANKED_TYPES else fallback).setdefault(r.truth.consignment, r)
        included = self._part(since_order)
        return [c for c in self.ens_eta if (r := first.get(c, fallback.get(c))) is not None and included(r)]

    def _lead_times(self, since_order: int | Mapping[str, int] = 0) -> list[float]:
        """Hours from the first alert on each ENS-borne fraud of the part of the run from ``since_order``
        (:meth:`_ens_borne`) to its ETA.

        The first alert is sought among all the run's alerts: a consignment alerted on its ENS early in
        the run and again on its declaration after arrival has the ENS alert's lead, whichever part of
        the run is reported (counting only the later alert would make a good catch look late)."""
        firsts = self.first_alerts()
        return [self.lead_h(c, firsts[c]) for c in self._ens_borne(since_order) if c in firsts]

    def consignment_of(self, alert: AlertRecord) -> str | None:
        """The fraudulent consignment an alert is about: its subject's truth, or else the fraud its subject's
        ENS is tied to (None: a clean consignment)."""
        if alert.truth is not None:
            return alert.truth.consignment
        ref = self._ens_of_event.get(alert.alert.subject_event_id)
        return self._consignment_of_ens.get(ref) if ref is not None else None

    def first_alerts(self) -> dict[str, AlertRecord]:
        """ENS-borne fraudulent consignment -> the earliest alert on any of its records (by when it was raised)."""
        first: dict[str, AlertRecord] = {}
        for a in self.alerts:
            c = self.consignment_of(a)
            if c is None or c not in self.ens_eta:
                continue
            seen = first.get(c)
            if seen is None or a.raised_at < seen.raised_at:
                first[c] = a
        return first

    def lead_h(self, consignment: str, alert: AlertRecord) -> float:
        """Hours from ``alert`` (as raised, :attr:`AlertRecord.raised_at`) to the ETA the consignment's ENS
        announced (negative: after arrival)."""
        return (self.ens_eta[consignment] - alert.raised_at).total_seconds() / 3600.0

    def curves(self, points: int = 24) -> dict[str, list[float]]:
        """Cumulative fused precision at 5 % and revenue at 10 %, and the alerts' hit rate (positive controls),
        after each ``1 / points`` of the declarations and excise records processed.

        The x axis is the count of those records, not time: the watermark runs days past the arrivals
        (reports of receipt, outcomes), which would leave most of a time axis a flat tail.
        """
        main_all = [r for r in self.records if r.subject_type in RANKED_TYPES]
        if not main_all:
            return {}
        out: dict[str, list[float]] = defaultdict(list)
        best = self._best_detector(main_all)
        alerts = sorted(self.alerts, key=lambda a: a.order)
        a_idx = hits = total = 0
        done = 0
        for step in range(1, points + 1):
            n = math.ceil(step * len(main_all) / points)
            if n <= done:
                continue  # fewer records than points
            done = n
            main = main_all[:n]  # records are kept in processing order
            out["records"].append(float(n))
            fused = _at_top(main, lambda r: r.rank_key)
            out["precision_5"].append(fused[0.05].precision)
            out["revenue_10"].append(fused[0.10].revenue)
            noisy = _at_top(main, lambda r: _noisy_or(r.detectors))
            out["noisy_revenue_10"].append(noisy[0.10].revenue)
            if best is not None:
                out["best_revenue_10"].append(_at_top(main, lambda r: r.detectors.get(best, 0.0))[0.10].revenue)
            limit = main[-1].order
            while a_idx < len(alerts) and alerts[a_idx].order <= limit:
                hits += alerts[a_idx].positive
                total += 1
                a_idx += 1
            out["alert_hit_rate"].append(hits / total if total else 0.0)
        if best is not None:
            out["best_detector"] = [float(self.detector_names.index(best))]
        return dict(out)

    def _best_detector(self, main: list[Record]) -> str | None:
        best, value = None, -1.0
        for name in self.detector_names:
            revenue = _at_top(main, lambda r, name=name: r.detectors.get(name, 0.0))[0.10].revenue
            if revenue > value:
                best, value = name, revenue
        return best


def _office(event: Any) -> str:
    for name in ("customs_office", "first_office_of_entry", "office"):
        value = getattr(event, name, None)
        if value:
            return str(value)
    return "unknown"


def _noisy_or(scores: dict[str, float]) -> float:
    clean = 1.0
    for s in scores.values():
        clean *= 1.0 - s
    return 1.0 - clean


@dataclass(slots=True)
class AtTop:
    """Quality of the top ``share`` of a ranking."""

    share: float
    n: int
    precision: float
    recall: float
    revenue: float


def _at_top(records: Sequence[Record], key: Callable[[Record], float]) -> dict[float, AtTop]:
    """Precision, recall and revenue at each of :data:`TOP_SHARES` (ties broken by a hash of the id)."""
    n = len(records)
    out: dict[float, AtTop] = {}
    if n == 0:
        return {s: AtTop(s, 0, 0.0, 0.0, 0.0) for s in TOP_SHARES}
    scores = np.fromiter((key(r) for r in records), dtype=np.float64, count=n)
    tie = np.fromiter((_unit_draw("tie", r.event_id) for r in records), dtype=np.float64, count=n)
    order = np.lexsort((tie, -scores))
    revenue_of: dict[str, float] = {}
    for r in records:
        if r.truth is not None:
            revenue_of[r.truth.consignment] = max(revenue_of.get(r.truth.consignment, 0.0), r.truth.revenue_eur)
    total_revenue = sum(revenue_of.values())
    for share in TOP_SHARES:
        k = max(1, math.ceil(share * n))
        top = [records[i] for i in order[:k]]
        frauds = [r for r in top if r.truth is not None]
        hit = {r.truth.consignment for r in frauds if r.truth is not None}
        out[share] = AtTop(
            share=share,
            n=k,
            precision=len(frauds) / k,
            recall=len(hit) / len(revenue_of) if revenue_of else 0.0,
            revenue=sum(revenue_of[c] for c in hit) / total_revenue if total_revenue > 0 else 0.0,
        )
    return out


def _alert_stats(alerts: Sequence[AlertRecord], records: Sequence[Record], truths: Sequence[Truth]) -> dict[str, Any]:
    """Alerts as raised, judged by the outcomes of their controls; ``truths``: the frauds of the subjects reported.

    ``by_selection`` and ``by_type`` hold ``(controls, positive controls, frauds among them)``: the hit rate
    is positive / controls, as an administration measures it; the frauds (ground truth) include those the
    control missed. ``revenue_share`` is what positive controls recovered (each consignment once) over the
    revenue at risk; ``fraud_revenue_share`` the ground truth's revenue of the frauds alerted.
    """
    by_selection: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    late: Counter[str] = Counter()
    recovered: dict[str, float] = {}
    alerted: dict[str, float] = {}
    for a in alerts:
        for tally in (by_selection[a.alert.selection], by_type[a.alert.subject_type]):
            tally[0] += 1
            tally[1] += a.positive
            tally[2] += a.truth is not None
        if a.processed_late:
            late[a.alert.subject_type] += 1
        if a.truth is not None:
            c = a.truth.consignment
            alerted[c] = max(alerted.get(c, 0.0), a.truth.revenue_eur)
            if a.positive:  # several records of one consignment recover its revenue once
                recovered[c] = max(recovered.get(c, 0.0), a.recovered_eur)
    total: dict[str, float] = {}
    for t in truths:
        total[t.consignment] = max(total.get(t.consignment, 0.0), t.revenue_eur)
    flow = Counter(f"{r.office}|{r.subject_type}" for r in records)
    raised = Counter(f"{a.alert.office}|{a.alert.subject_type}" for a in alerts)
    rates = [raised[k] / n for k, n in flow.items() if n >= 500]
    # Zero when frauds are labelled without revenue (a replayed CSV with no revenue column, or
    # empty cells): the share is then 0.0 and print_report says "n/a" rather than a figure.
    at_risk = sum(total.values())

    def share(found: dict[str, float]) -> float:
        # Only the consignments at risk among the subjects reported (an alert on a part's ENS may be
        # about a consignment declared in the other part).
        return sum(v for c, v in found.items() if c in total) / at_risk if at_risk > 0 else 0.0

    return {
        "n": len(alerts),
        "positive": sum(a.positive for a in alerts),
        "frauds": sum(a.truth is not None for a in alerts),
        "by_selection": {k: tuple(v) for k, v in by_selection.items()},
        "by_type": {k: tuple(v) for k, v in by_type.items()},
        "processed_late": sum(late.values()),
        "processed_late_by_type": dict(late),
        "revenue_share": share(recovered),
        "fraud_revenue_share": share(alerted),
        "revenue_recovered_eur": sum(v for c, v in recovered.items() if c in total),
        "revenue_at_risk_eur": at_risk,
        "office_rate_median": statistics.median(rates) if rates else 0.0,
        "office_rate_range": (min(rates), max(rates)) if rates else (0.0, 0.0),
        "offices_judged": len(rates),
        "alert_share": len(alerts) / len(records) if records else 0.0,
    }


@dataclass
class EvaluationReport:
    """Everything `vigie evaluate` prints."""

    n_records: int
    n_fraud_records: int
    n_ens: int
    n_fraud_ens: int
    ranking: dict[str, dict[float, AtTop]] = field(default_factory=dict)
    ens_ranking: dict[str, dict[float, AtTop]] = field(default_factory=dict)
    alerts: dict[str, Any] = field(default_factory=dict)
    lead_times_h: list[float] = field(default_factory=list)
    n_ens_borne_frauds: int = 0
    later: dict[str, float] = field(default_factory=dict)
    """Later findings (see :meth:`PrequentialEvaluator._later_findings`)."""

    @property
    def base_rate(self) -> float:
        return self.n_fraud_records / self.n_records if self.n_records else 0.0

    @property
    def median_lead_h(self) -> float | None:
        return statistics.median(self.lead_times_h) if self.lead_times_h else None

    @property
    def hit_rate(self) -> float:
        """Positive controls / controls of the alerts raised (what the simulated controls found)."""
        n = self.alerts.get("n", 0)
        return self.alerts.get("positive", 0) / n if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        def table(r: dict[str, dict[float, AtTop]]) -> dict[str, Any]:
            return {n: {f"{int(s * 100)}%": vars_of(a) for s, a in v.items()} for n, v in r.items()}

        return {
            "records": self.n_records,
            "fraud_records": self.n_fraud_records,
            "base_rate": self.base_rate,
            "ens": self.n_ens,
            "fraud_ens": self.n_fraud_ens,
            "ranking": table(self.ranking),
            "ens_ranking": table(self.ens_ranking),
            "alerts": self.alerts,
            "hit_rate": self.hit_rate,
            "median_lead_time_h": self.median_lead_h,
            "ens_borne_frauds": self.n_ens_borne_frauds,
            "ens_borne_frauds_alerted": len(self.lead_times_h),
            "ens_borne_alerted_2h_before": sum(h >= 2.0 for h in self.lead_times_h),
            "later_findings": self.later,
        }


def vars_of(a: AtTop) -> dict[str, float]:
    return {"n": a.n, "precision": a.precision, "recall": a.recall, "revenue": a.revenue}


# --- printing and plotting -------------------------------------------------------------------------
def ranking_table(title: str, ranking: dict[str, dict[float, AtTop]]) -> Table:
    table = Table(title=title)
    table.add_column("ranked by")
    for share in TOP_SHARES:
        label = f"{share * 100:g}%"
        table.add_column(f"P@{label}", justify="right")
        table.add_column(f"R@{label}", justify="right")
        table.add_column(f"Rev@{label}", justify="right")
    for name, at in ranking.items():
        row = [name]
        for share in TOP_SHARES:
            a = at[share]
            row += [f"{a.precision:.3f}", f"{a.recall:.3f}", f"{a.revenue:.3f}"]
        table.add_row(*row)
    return table


def print_report(console: Console, report: EvaluationReport, title: str = "") -> None:
    console.print(
        f"{title}{report.n_records:,} declarations and excise records, {report.n_fraud_records:,} fraudulent "
        f"(base rate {report.base_rate:.3%}); {report.n_ens:,} ENS, {report.n_fraud_ens:,} fraudulent"
    )
    console.print(
        ranking_table("Declarations and excise records: precision, recall, revenue at the top", report.ranking)
    )
    if report.ens_ranking:
        console.print(ranking_table("ENS at filing (pre-arrival)", report.ens_ranking))
    a = report.alerts
    n_alerts = a.get("n", 0)
    table = Table(title="Alerts as raised (each one became a control)", show_header=False)
    table.add_row(
        "alerts",
        f"{n_alerts:,} ({a.get('alert_share', 0):.2%} of scored subjects), hit rate {report.hit_rate:.1%} "
        f"(positive controls / controls); frauds among alerts (ground truth) "
        f"{a.get('frauds', 0) / n_alerts if n_alerts else 0:.1%}",
    )

    def rates(tally: tuple[int, ...]) -> str:
        n, positive, frauds = tally
        return f"{n:,}, hit rate {positive / n if n else 0:.1%}, frauds (ground truth) {frauds / n if n else 0:.1%}"

    for selection, tally in sorted(a.get("by_selection", {}).items()):
        table.add_row(f"  {selection}", rates(tally))
    for subject_type, tally in sorted(a.get("by_type", {}).items()):
        table.add_row(f"  on {subject_type}", rates(tally))
    late = a.get("processed_late", 0)
    by_type = ", ".join(f"{n:,} on {t}" for t, n in sorted(a.get("processed_late_by_type", {}).items()))
    table.add_row(
        "  processed late",
        f"{late:,} raised over {LATE_PROCESSING.total_seconds() / 3600:g} h after their subject's time"
        + (f" ({by_type})" if by_type else ""),
    )
    low, high = a.get("office_rate_range", (0.0, 0.0))
    table.add_row(
        "alert rate per office",
        f"median {a.get('office_rate_median', 0):.2%} (range {low:.2%}-{high:.2%} over {a.get('offices_judged', 0)} "
        "office flows of 500+ subjects)",
    )
    if a.get("revenue_at_risk_eur", 1.0) > 0:
        table.add_row("revenue recovered by the controls", f"{a.get('revenue_share', 0):.1%} of all revenue at risk")
        table.add_row(
            "revenue of frauds alerted (ground truth)", f"{a.get('fraud_revenue_share', 0):.1%} of all revenue at risk"
        )
    else:
        table.add_row(
            "revenue recovered by the controls",
            "n/a: the labelled frauds carry no revenue (none mapped, or empty or 0), so Rev@ columns read 0",
        )
    median = report.median_lead_h
    table.add_row(
        "lead time, ENS-borne frauds",
        (f"median {median:.1f} h before arrival" if median is not None else "no ENS-borne fraud alerted")
        + f" ({len(report.lead_times_h):,} of {report.n_ens_borne_frauds:,} alerted, "
        f"{sum(h >= 2 for h in report.lead_times_h):,} at least 2 h ahead; from the later of the record's time and "
        "the alert's processing)",
    )
    later = report.later
    if later:
        table.add_row(
            "later findings (not ranked)",
            f"{later['flagged']:.0f} records flagged only after they were processed, {later['flagged_fraudulent']:.0f} "
            f"fraudulent, {later['revenue_share']:.1%} of revenue at risk",
        )
    console.print(table)


def save_png(path: Path, curves: dict[str, list[float]], detector_names: Sequence[str], title: str) -> None:
    """Precision and revenue curves over the stream, as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    processed = curves.get("records", [])
    top.plot(processed, curves.get("precision_5", []), label="fused: precision at top 5 %")
    top.plot(
        processed, curves.get("alert_hit_rate", []), label="alerts raised: hit rate, positive controls (cumulative)"
    )
    top.set_ylabel("precision")
    top.set_ylim(0, 1)
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    bottom.plot(processed, curves.get("revenue_10", []), label="fused")
    bottom.plot(processed, curves.get("noisy_revenue_10", []), label="noisy-OR, no labels", linestyle="--")
    if "best_revenue_10" in curves and "best_detector" in curves:
        name = detector_names[int(curves["best_detector"][0])]
        bottom.plot(processed, curves["best_revenue_10"], label=f"best single detector ({name})", linestyle=":")
    bottom.set_ylabel("revenue share at top 10 %")
    bottom.set_xlabel("declarations and excise records processed (cumulative, prequential)")
    bottom.set_ylim(0, 1)
    bottom.legend(loc="lower right")
    bottom.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _median_text(hours: list[float]) -> str:
    """The median of ``hours`` as results text ("22.4 h"), "-" when there are none."""
    return f"{statistics.median(hours):.1f} h" if hours else "-"


def record_results(command: str, report: EvaluationReport, late: EvaluationReport | None, notes: list[str]) -> None:
    """Write the "evaluate" section of bench/RESULTS.md (via bench/results.py)."""
    results_py = Path(__file__).resolve().parents[1] / "bench" / "results.py"
    spec = importlib.util.spec_from_file_location("vigie_bench_results", results_py)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(results_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows: list[tuple[str, ...]] = [("goal", "target", "whole run", "second half")]
    both = [r for r in (report, late) if r is not None]

    def each(cell: Callable[[EvaluationReport], str]) -> tuple[str, str]:
        cells = [cell(r) for r in both]
        return cells[0], cells[1] if len(cells) > 1 else "-"

    def ratio(r: EvaluationReport) -> str:
        precision = r.ranking["fused"][0.05].precision
        return f"{precision:.3f} / {r.base_rate:.3f} = {precision / max(r.base_rate, 1e-9):.1f}x"

    rows.append(("revenue at top 10 %", ">= 0.90", *each(lambda r: f"{r.ranking['fused'][0.10].revenue:.3f}")))
    rows.append(("precision at top 5 % / base rate", ">= 5x", *each(ratio)))
    rows.append(("median lead time, ENS-borne frauds", ">= 2 h", *each(lambda r: _median_text(r.lead_times_h))))
    rows.append(("alerts' hit rate (positive controls / controls)", "", *each(lambda r: f"{r.hit_rate:.1%}")))
    for name in report.ranking:

        def figures(r: EvaluationReport, name: str = name) -> str:
            at = r.ranking[name]
            precision = " ".join(f"{at[s].precision:.2f}" for s in TOP_SHARES)
            return precision + " / " + " ".join(f"{at[s].revenue:.2f}" for s in TOP_SHARES)

        rows.append((f"{name}: P@1,2,5,10 % / Rev@1,2,5,10 %", "", *each(figures)))
    module.record("evaluate", command, rows, notes)


# --- the command -----------------------------------------------------------------------------------
def second_half(evaluator: PrequentialEvaluator) -> dict[str, int]:
    """Where the second half starts, per subject type: the median processing position of the declarations
    and excise records (ranked together) and, apart, of the ENS.

    Not one position for all records: ENS are filed before their arrival and declarations after it,
    so the median record's position put 89 % of the declarations and 8 % of the ENS after it (recorded command).
    """
    cut: dict[str, int] = {}
    for kinds in (RANKED_TYPES, ("ens",)):
        orders = [r.order for r in evaluator.records if r.subject_type in kinds]
        if orders:
            cut.update(dict.fromkeys(kinds, orders[len(orders) // 2]))
    return cut


def run_generated(
    config: GeneratorConfig,
    pipeline: ScoringPipeline,
    legacy: str = "random",
    seed: int = 0,
    on_event: Callable[[int], None] | None = None,
) -> PrequentialEvaluator:
    """Evaluate ``pipeline`` on the stream ``config`` generates (see the module docstring)."""
    evaluator = PrequentialEvaluator(pipeline, legacy=legacy, seed=seed)
    for i, (event, truth) in enumerate(generate(config)):
        evaluator.feed(event, Truth.of(truth) if truth is not None else None)
        if on_event is not None and i % 5000 == 0:
            on_event(i)
    evaluator.finish()
    return evaluator


def evaluate_command(
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 7,
    duration_hours: Annotated[float, typer.Option(help="Hours of arrivals to generate.")] = 24.0,
    rate: Annotated[float, typer.Option(help="Consignments arriving per hour.")] = 1500.0,
    fraud_share: Annotated[float, typer.Option(min=0.0, max=0.5, help="Share of fraudulent consignments.")] = 0.04,
    capacity: Annotated[
        float, typer.Option(min=0.0001, max=0.5, help="Control capacity: share of each office's flow alerted.")
    ] = 0.01,
    explore_share: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of the alert budget spent exploring.")
    ] = 0.1,
    legacy_outcomes: Annotated[
        str, typer.Option(help="Generator outcomes to keep: none, random (audit sample) or all.")
    ] = "random",
    detectors: Annotated[
        str, typer.Option(help="'all' (every detector available), 'default' (the engine's) or a comma list.")
    ] = "all",
    png: Annotated[Path, typer.Option(help="Where to save the precision/revenue curves.")] = Path("evaluate.png"),
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON.")] = None,
    record: Annotated[bool, typer.Option(help="Record the figures in bench/RESULTS.md (section 'evaluate').")] = False,
) -> None:
    """Replay a generated stream prequentially and report precision, recall and revenue at the top 1-10 %."""
    import orjson

    console = Console() if sys.stdout.isatty() else Console(width=170)
    if legacy_outcomes not in ("none", "random", "all"):
        raise typer.BadParameter("--legacy-outcomes must be none, random or all")
    config = GeneratorConfig(seed=seed, duration_hours=duration_hours, rate_per_hour=rate, fraud_share=fraud_share)
    pipeline = ScoringPipeline(
        build_detectors(detectors), LearnedFusion(capacity=capacity, explore_share=explore_share)
    )
    names = ", ".join(d.name for d in pipeline.detectors)
    console.print(f"evaluating ({names}) on {duration_hours:g} h at {rate:g} consignments/h (seed {seed}) ...")
    started = time.perf_counter()
    with console.status("scoring") as status:
        evaluator = run_generated(config, pipeline, legacy_outcomes, seed,
                                  lambda i: status.update(f"scoring: {i:,} events"))  # fmt: skip
    elapsed = time.perf_counter() - started
    report = evaluator.report()
    half = second_half(evaluator)
    late = evaluator.report(since_order=half)
    print_report(console, report)
    console.print()
    print_report(console, late, title="Second half of the stream only: ")
    fed = evaluator.outcomes_fed
    console.print(
        f"{evaluator.events:,} events in {elapsed:.0f} s; outcomes learned from: {fed['engine']:,} engine controls, "
        f"{fed['legacy']:,} legacy ({legacy_outcomes}), {evaluator.legacy_dropped:,} legacy outcomes withheld"
    )
    save_png(png, evaluator.curves(), [d.name for d in pipeline.detectors],
             f"Vigie prequential evaluation, seed {seed}, {duration_hours:g} h, capacity {capacity:.1%}")  # fmt: skip
    console.print(f"curves saved to {png}")
    if json_out is not None:
        json_out.write_bytes(orjson.dumps({"whole": report.to_dict(), "second_half": late.to_dict()},
                                          option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))  # fmt: skip
    if record:
        command = (
            f"vigie evaluate --seed {seed} --duration-hours {duration_hours:g} --rate {rate:g} "
            f"--fraud-share {fraud_share:g} --capacity {capacity:g} --explore-share {explore_share:g} "
            f"--legacy-outcomes {legacy_outcomes} --detectors {detectors}"
        )
        firsts = evaluator.first_alerts()
        leads = {kind: [evaluator.lead_h(c, a) for c, a in firsts.items() if a.alert.subject_type == kind]
                 for kind in ("ens", "declaration")}  # fmt: skip
        alerts = report.alerts
        notes = [
            f"Detectors: {names}; learned fusion (River StandardScaler + LogisticRegression starting as the noisy-OR "
            f"prior, with each operator's control record), capacity {capacity:.1%} of each office's flow, "
            f"{explore_share:.0%} of it exploring.",
            "'fused' ranks declarations and excise records as the engine's alerts do, by expected recoverable revenue "
            "(fused probability x (1 + EUR at stake) ** 0.5); 'fused probability' by the probability alone.",
            f"{evaluator.events:,} events, {report.n_records:,} declarations and excise records (base rate "
            f"{report.base_rate:.2%}), {report.n_ens:,} ENS; labels: {fed['engine']:,} controls of the engine's alerts "
            f"+ {fed['legacy']:,} legacy ({legacy_outcomes}).",
            "Top-k metrics rank every declaration and excise record by the score it got when processed "
            "(prequential); recall and revenue count each fraudulent consignment once.",
            f"Later findings (a detector's score on a record after it was processed, e.g. an e-AD found short, kept "
            f"out of the rankings): {report.later.get('flagged', 0):.0f} records, "
            f"{report.later.get('revenue_share', 0):.1%} of revenue at risk.",
            f"Hit rate: positive controls / controls of the alerts raised ({report.hit_rate:.1%}; a control finds "
            "a fraud with probability 0.85, as the generator's officers); revenue recovered by those controls: "
            f"{alerts.get('revenue_share', 0):.1%} of revenue at risk (frauds among the alerts, ground truth: "
            f"{alerts.get('frauds', 0) / max(alerts.get('n', 0), 1):.1%}; their revenue: "
            f"{alerts.get('fraud_revenue_share', 0):.1%}). Until 2026-11-25 the hit rate and the revenue were read "
            "from the ground truth.",
            "Lead time: ETA minus the first alert on any record of an ENS-borne fraud (a fraudulent consignment whose "
            "ENS was filed: its ENS carries the fraud, or its declaration quotes the ENS, or its excise records that "
            "declaration's MRN), each fraud once, counted from the later of the record's time and the watermark when "
            "the alert was raised: the generated stream emits some sea ENS days after their filing "
            f"({alerts.get('processed_late', 0):,} alerts raised over 1 h after their subject's time). Whole run: "
            f"{len(leads['ens']):,} first alerted on their ENS (median lead {_median_text(leads['ens'])}), "
            f"{len(leads['declaration']):,} on their declaration ({_median_text(leads['declaration'])}). Until "
            "2026-11-25 the frauds showing only on their declaration or excise records (excise patterns) were left "
            "out, and an alert on a late-processed ENS counted from its filing (21.7 h on the recorded command).",
            "Second half: the declarations and excise records processed after the median one "
            f"({late.n_records:,} of {report.n_records:,}) and the ENS processed after the median ENS "
            f"({late.n_ens:,} of {report.n_ens:,}), with the alerts on them, their revenue at risk and their "
            "ENS-borne frauds (those whose first declaration or excise record is in it). Until 2026-11-25 it split "
            "all records at one position (on the recorded command 89 % of the declarations and 8 % of the ENS fell "
            "after it) and divided by whole-run totals.",
            f"{datetime.now(UTC):%Y-%m-%d}, {elapsed:.0f} s, Python {platform.python_version()}, one process.",
        ]
        record_results(command, report, late, notes)
        console.print("recorded in bench/RESULTS.md (section 'evaluate')")
