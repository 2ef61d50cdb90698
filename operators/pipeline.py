"""The whole scoring path for one event, with no runtime in it.

The in-process runner calls :meth:`ScoringPipeline.process` directly; the Faust and Flink
shells call the same detectors with state held in their own keyed stores. Either way the
scores for an event depend only on the events before it, so every runtime agrees.

For one event, in order:

0. an event whose ``event_id`` was processed already (within ``duplicate_window`` of event time,
   :mod:`.dedup`) is skipped: a re-sent event is neither scored nor learned twice
   (``PipelineResult.duplicate``);
1. an ENS is registered (arrival time and a summary, :mod:`.ens_link`);
2. every detector scores then learns it; detectors that declare
   ``consumes = {"linked_declaration"}`` get a declaration together with its ENS
   (:class:`~vigie.operators.ens_link.LinkedDeclaration`) instead of the bare declaration;
3. a control outcome is joined to the subject it controls (:class:`~vigie.models.feedback.LabelJoin`):
   the learned fusion learns the label from the features it fused the subject with, and
   detectors that declare ``consumes = {"labelled_outcome"}`` learn from a
   :class:`~vigie.models.feedback.LabelledOutcome` carrying what they remembered;
4. the scores of an ENS, a declaration or an excise record are fused, the alert budget
   decides, and the subject is remembered until its outcome comes;
5. deadlines the event's time passed are checked (:mod:`.deadlines`: an e-AD with no report
   of receipt by its deadline, even if its consignor sends nothing more): each overdue
   subject's scores are fused on their own, and they and their alert join the event's result
   as later findings do (their ``subject_event_id`` names the overdue subject).

:meth:`ScoringPipeline.process_all` does the same for a batch, detector by detector (each
detector's state still sees its events in order), with the same results and state: the
runners that read batches (``vigie run``, the Faust fuse stage) use it.

Everything learned is in :meth:`ScoringPipeline.state_dict` (JSON-able; the River models of
the learned fusion as base64 pickles), so a restored pipeline continues exactly where the
checkpointed one stopped, learning included. Memory stays bounded: ENS summaries are
forgotten ``ens_retention`` after their arrival (4 days: a declaration lodged later is not
linked to its ENS); subjects stop awaiting their outcome after 3 days, an ENS 2 days after its
arrival (at most 500,000 wait, see :class:`~vigie.models.feedback.LabelJoin`); detectors
sweep their own idle keys (a detector may also expose ``evict_idle(store, now) -> int``,
called every ``_EVICT_EVERY`` events).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from vigie.models.feedback import LabelJoin, LabelledOutcome
from vigie.schemas import Alert, ControlOutcome, RiskScore

from . import _pipeline
from .base import Operator, OperatorState, epoch_seconds
from .deadlines import DeadlineTimers, WakeUp, deadline_rule
from .dedup import DEFAULT_DUPLICATE_WINDOW, RecentEventIds
from .ens_link import EnsLinkState
from .fusion import LearnedFusion, NoisyOrAlerting, OfficeQueueState, Subject
from .undervaluation import UndervaluationDetector

_EVICT_EVERY = _pipeline.EVICT_EVERY  # events between sweeps of the ENS registry and idle detector keys
STATE_VERSION = 4  # 4: the ids of recent events (3: the deadline timers; older checkpoints load without them)
DEFAULT_DEADLINE_LAG = timedelta(hours=1)
"""How late (event time) a record may come and still count before a deadline: the Flink job's
``out_of_orderness_s`` default, so every runtime finds a deadline due at the same point of a stream."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class PipelineResult:
    """What one event produced. ``fused_risk``: the learned fusion's probability for its subject."""

    event: Any
    scores: list[RiskScore] = field(default_factory=list)
    alert: Alert | None = None
    """The alert on this event (its own subject), if any."""
    fused_risk: float | None = None
    later_alerts: list[Alert] = field(default_factory=list)
    """Alerts on *earlier* subjects this event revealed something about (a later finding, e.g. an
    e-AD found short when its receipt arrives): each names its own subject, not this event."""
    duplicate: bool = False
    """The event's id was processed already (a re-send): skipped, nothing scored or learned."""

    @property
    def alerts(self) -> list[Alert]:
        """Every alert this event raised: its own first, then the later findings' (runtimes emit them all)."""
        if not self.later_alerts:
            return [self.alert] if self.alert is not None else []
        return [self.alert, *self.later_alerts] if self.alert is not None else list(self.later_alerts)


def default_detectors() -> list[Operator[Any, Any]]:
    """What the engine runs when not told otherwise (``vigie run``, the Faust worker, the Flink job):
    every detector, with its default settings (:func:`all_detectors`)."""
    return all_detectors()


def all_detectors() -> list[Operator[Any, Any]]:
    """One of every detector the engine has, with its default settings."""
    from .atypical import AtypicalFlowDetector
    from .behaviour import OperatorBehaviourDetector
    from .ens_risk import EnsPreArrivalDetector
    from .excise import ExciseDetector

    return [
        UndervaluationDetector(), AtypicalFlowDetector(), OperatorBehaviourDetector(), ExciseDetector(),
        EnsPreArrivalDetector(),
    ]  # fmt: skip


def _consumes(detector: Operator[Any, Any], what: str) -> bool:
    return what in getattr(detector, "consumes", ())


class ScoringPipeline:
    """Detectors, fusion and the state they learn, for events processed in order.

    ``alerting`` is a :class:`LearnedFusion` (default) or the label-free
    :class:`NoisyOrAlerting` baseline, which alerts on declarations only, as it always did.

    >>> from vigie.schemas.generator import GeneratorConfig, generate
    >>> pipeline = ScoringPipeline()
    >>> results = [pipeline.process(event) for event, _ in generate(GeneratorConfig(duration_hours=1))]
    >>> sum(len(r.scores) for r in results) > 0
    True
    """

    def __init__(
        self,
        detectors: list[Operator[Any, Any]] | None = None,
        alerting: NoisyOrAlerting | LearnedFusion | None = None,
        ens_retention: timedelta = timedelta(days=4),
        label_join: LabelJoin | None = None,
        deadline_lag: timedelta | None = DEFAULT_DEADLINE_LAG,
        duplicate_window: timedelta | None = DEFAULT_DUPLICATE_WINDOW,
        learn_recoveries: bool = False,
    ) -> None:
        self.detectors = detectors if detectors is not None else default_detectors()
        self.alerting: NoisyOrAlerting | LearnedFusion = alerting if alerting is not None else LearnedFusion()
        if isinstance(self.alerting, LearnedFusion):
            self.alerting.bind([d.name for d in self.detectors])
        self.stores: dict[str, dict[str, OperatorState]] = {d.name: {} for d in self.detectors}
        self.ens = EnsLinkState(ens_retention)
        self.labels = label_join or LabelJoin()
        self.ens_risk: dict[str, float] = {}
        """ENS reference -> fused risk at filing, while the ENS is in the registry."""
        self.queues: dict[str, OfficeQueueState] = {}
        self.events_seen = 0
        self.watermark = _EPOCH
        self._link = [_consumes(d, "linked_declaration") for d in self.detectors]
        self._feedback = [d for d in self.detectors if _consumes(d, "labelled_outcome")]
        self._contexts = [d for d in self.detectors if hasattr(d, "feedback_context")]
        self._context_names = [(d, d.name) for d in self._contexts]
        # The detectors process_all runs over a whole batch at once: those that need nothing from
        # the pipeline (no ``consumes``), ahead of any that does (the others go a segment at a time).
        self._ahead = next((i for i, d in enumerate(self.detectors) if getattr(d, "consumes", ())), len(self.detectors))
        rules = [(d.name, rule) for d in self.detectors if (rule := deadline_rule(d)) is not None]
        self._rules = dict(rules)
        off = not rules or deadline_lag is None  # a zero lag is a lag: deadlines at the stream's time itself
        self.timers = None if off else DeadlineTimers(rules, deadline_lag.total_seconds())  # type: ignore[union-attr]
        """Pending deadline checks (None: no detector has deadlines, or ``deadline_lag`` None turned them off)."""
        self.seen: RecentEventIds | None = None if duplicate_window is None else RecentEventIds()
        """Ids of the events processed within ``duplicate_window`` (None: re-sent events are processed again)."""
        self._window_s = 0.0 if duplicate_window is None else duplicate_window.total_seconds()
        self.duplicates = 0
        """Events skipped as re-sends since this pipeline was created."""
        self.learn_recoveries = learn_recoveries
        """Hand the EUR positive controls recovered to the learned fusion's revenue model. Off by default:
        only the engine's own picks report a recovery, and on the generated stream the model learned from
        them lowered revenue at the top 10 % from 0.913 to 0.854 (`vigie evaluate`, recorded command,
        2026-11-25): the controls it picked say little about the stakes it did not."""

    @property
    def watermark(self) -> datetime:
        """Latest event time seen (ENS filed weeks before their arrival come late: out of order)."""
        return self._watermark

    @watermark.setter
    def watermark(self, value: datetime) -> None:
        self._watermark = value
        self._watermark_s = epoch_seconds(value)  # the same in epoch seconds, compared on every event

    # --- processing ------------------------------------------------------------------------------
    def process(self, event: Any, clock_ms: int | None = None) -> PipelineResult:
        """Score ``event``, fuse the scores about its subject, and remember the subject for its outcome.

        The steps are the module's list; they run compiled (:mod:`._pipeline`: every event goes
        through this glue, and the interpreter's work per line cost more than the steps).
        ``clock_ms``: where the event moves the deadline clock (default: its own time); a runtime
        reading several partitions passes its :class:`~vigie.operators.deadlines.SourceClock`'s.
        """
        if self.seen is not None and not self._first_times([event])[0]:
            return PipelineResult(event, duplicate=True)
        return self._process(event, clock_ms)

    def _process(self, event: Any, clock_ms: int | None) -> PipelineResult:
        result: PipelineResult = _pipeline.process(self, event, PipelineResult)
        if self.timers is not None:
            when = _pipeline.event_ms(event) if clock_ms is None else clock_ms
            self._check_deadlines(result, self.timers.advance(self.timers.wake_ups(event), when))
        return result

    def process_all(self, events: Iterable[Any], clock_ms: list[int] | None = None) -> list[PipelineResult | Exception]:
        """:meth:`process` of each event in order; where it would raise, the exception instead of a result.

        The same results and the same state as ``process`` called event after event (and an
        exception caught and passed over), faster on batches: the detectors take the events one
        detector at a time, each on its own state in event order (those that need nothing from
        the pipeline the whole batch, the others a segment between two controlled outcomes), and
        the fusion, label join and outcomes follow, event after event (compiled, with the rules
        that keep it exact: :func:`._pipeline.process_all`). Batches of a few hundred events gain
        most (``bench/pipeline.py``). Exact for events the ENS registry accepts (any validated
        event): one it fails on is failed after the detectors ahead of the others saw it.
        ``clock_ms``: each event's deadline clock, as :meth:`process` takes it.

        >>> from vigie.schemas.generator import GeneratorConfig, generate
        >>> events = [event for event, _ in generate(GeneratorConfig(duration_hours=1))]
        >>> one_by_one, batched = ScoringPipeline(), ScoringPipeline()
        >>> expected = [one_by_one.process(event) for event in events]
        >>> batched.process_all(events) == expected, batched.state_dict() == one_by_one.state_dict()
        (True, True)
        """
        if self.seen is None:
            return self._process_all(events, clock_ms)
        events = events if isinstance(events, list) else list(events)
        fresh = self._first_times(events)
        if all(fresh):
            return self._process_all(events, clock_ms)
        kept = [event for event, new in zip(events, fresh, strict=True) if new]
        kept_clock = None if clock_ms is None else [c for c, new in zip(clock_ms, fresh, strict=True) if new]
        done = iter(self._process_all(kept, kept_clock))
        pairs = zip(events, fresh, strict=True)
        return [next(done) if new else PipelineResult(event, duplicate=True) for event, new in pairs]

    def _first_times(self, events: list[Any]) -> list[bool]:
        """For each event, False if it is a re-send (skipped), remembering the others; the ids are swept
        every ``_EVICT_EVERY`` events, as the pipeline sweeps its other keyed state (the count and the
        watermark the pipeline will have reached there), so batches and single events sweep alike."""
        seen = self.seen
        assert seen is not None
        count, mark_s, window_s = self.events_seen, self._watermark_s, self._window_s
        fresh: list[bool] = []
        for event in events:
            when_s = _event_seconds(event)
            if when_s is None:  # fails in the pipeline, where process would fail it
                fresh.append(True)
                continue
            new = seen.first_time(event.event_id, when_s)
            fresh.append(new)
            if not new:
                self.duplicates += 1
                continue
            count += 1
            if when_s > mark_s:
                mark_s = when_s
            if count % _EVICT_EVERY == 0:
                seen.evict_before(mark_s - window_s)
        return fresh

    def _process_all(self, events: Iterable[Any], clock_ms: list[int] | None) -> list[PipelineResult | Exception]:
        timers = self.timers
        if timers is None:
            return _pipeline.process_all(self, events, PipelineResult)
        # In segments that end where a deadline may fall due: what its check finds depends on
        # the state at that event, and the detectors take a whole segment before the fusion.
        events = events if isinstance(events, list) else list(events)
        wake_ups, times = _pipeline.plan_deadlines(events, timers.typed, clock_ms)  # timers.wake_ups of each
        results: list[PipelineResult | Exception] = []
        start = 0
        while start < len(events):
            end = _pipeline.segment_end(
                wake_ups, times, start, timers.first_due_ms, timers.stream_time_ms, timers.lag_ms
            )
            part = _pipeline.process_all(self, events[start:end], PipelineResult)
            # Nothing falls due before the segment's last event (segment_end): its events' wake-ups and
            # times go in at once, and what is due joins the last one's result. A failed event adds
            # neither (as in process); if it is the last, nothing falls due before the next segment.
            done = [i for i, result in enumerate(part, start) if isinstance(result, PipelineResult)]
            if done:
                due = timers.advance([w for i in done if wake_ups[i] for w in wake_ups[i]], max(times[i] for i in done))
                last = part[done[-1] - start]
                if due and isinstance(last, PipelineResult):  # due only if the segment's last event is done
                    self._check_deadlines(last, due)
            results += part
            start = end
        return results

    def _check_deadlines(self, result: PipelineResult, due: list[WakeUp]) -> None:
        """Check the state keys whose deadline ``due`` says has come; the scores of what is overdue join
        ``result``, and each overdue subject's are decided on their own, as later findings."""
        found: list[RiskScore] = []
        for at_ms, name, key in due:
            state = self.stores[name].get(key)
            if state is not None:  # None: swept as idle, nothing left to report
                found += self._rules[name].expire(key, state, datetime.fromtimestamp(at_ms / 1000.0, UTC))
        if found:
            result.scores = [*result.scores, *found]
            self._decide_findings(found, result)

    def _decide_later(self, event_id: str, scores: list[RiskScore], result: PipelineResult) -> None:
        """Fuse each earlier subject's later findings on their own (:meth:`decide_finding`)."""
        self._decide_findings([s for s in scores if s.subject_event_id != event_id], result)

    def _decide_findings(self, scores: list[RiskScore], result: PipelineResult) -> None:
        """Decide ``scores``, each subject's on their own (:meth:`decide_finding`); the alerts join ``result``."""
        by_subject: dict[str, list[RiskScore]] = {}
        for score in scores:
            by_subject.setdefault(score.subject_event_id, []).append(score)
        for group in by_subject.values():
            alert = self.decide_finding(group)
            if alert is not None:
                result.later_alerts.append(alert)

    def decide_finding(self, scores: list[RiskScore]) -> Alert | None:
        """Fuse ``scores``, all about one earlier subject (a later finding, a deadline's), on their own,
        against the office's queue: the alert, if any, names that subject with its office, operator and
        time, not the event that revealed it."""
        first = scores[0]
        queue = self._queue(first.office)
        if isinstance(self.alerting, NoisyOrAlerting):
            return self.alerting.decide(scores, None, queue)
        subject = Subject(first.subject_event_id, first.subject_type, first.subject_reference, first.office,
                          first.event_time, first.operator_eori)  # fmt: skip
        return self.alerting.decide(scores, subject, queue).alert

    def _queue(self, office: str) -> OfficeQueueState:
        queue = self.queues.get(office)
        if queue is None:
            queue = self.queues[office] = OfficeQueueState()
        return queue

    def _subject(self, event: Any, scores: list[RiskScore], kind: int) -> Subject:
        """The subject of ``event``, an ENS, a declaration or an excise record (``kind``, see
        :func:`._pipeline.kind_of`), with ``scores`` about it: its reference, office, time and operator; for a
        declaration, the arrival its ENS announced and the ENS's fused risk (compiled, :mod:`._pipeline`)."""
        return _pipeline.subject_of(self, event, scores, kind)

    def _remember(
        self,
        event: Any,
        result: PipelineResult,
        when: float,
        features: Any,
        subject: Subject | None = None,
        scores: list[RiskScore] | None = None,
    ) -> None:
        """Keep what the outcome of this subject will need to teach the fusion and the detectors.

        ``when``: the event time in epoch seconds (the caller has it already); ``scores``: the
        scores about this event's own subject (default: all of the result's). Per detector with a
        ``feedback_context``, what it asks to keep about its scores; the subject waits
        ``LabelJoin.expiry`` of its time and arrival (compiled, :mod:`._pipeline`).
        """
        _pipeline.remember(self, event, result, when, features, subject, scores)

    def _learn_outcome(self, outcome: ControlOutcome) -> None:
        if not outcome.controlled:
            return
        pending = self.labels.take(outcome)
        if pending is None:
            return  # not scored, or its wait expired: nothing to join
        if isinstance(self.alerting, LearnedFusion):
            # A random audit is as informative as an exploration pick, whoever made it.
            selection = "random" if outcome.selection == "random" else pending.selection
            recovered = None
            if self.learn_recoveries and outcome.positive:
                recovered = outcome.duty_recovered_eur + outcome.tax_recovered_eur
            self.alerting.learn(pending.features, outcome.positive, selection, recovered)
        for detector in self._feedback:
            context = pending.contexts.get(detector.name)
            if context is not None:
                detector.process(LabelledOutcome(outcome, context), self.stores[detector.name])

    def _evict(self) -> None:
        self._evict_registry(self.watermark)
        for detector in self.detectors:
            evict = getattr(detector, "evict_idle", None)
            if evict is not None:
                evict(self.stores[detector.name], self.watermark)

    def _evict_registry(self, now: datetime) -> None:
        """Forget the ENS whose arrival is ``ens_retention`` before ``now``, and their fused risks."""
        self.ens.evict_before(now)
        if len(self.ens_risk) > len(self.ens.arrivals):
            self.ens_risk = {r: p for r, p in self.ens_risk.items() if r in self.ens.arrivals}

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything learned, as JSON-able data (see :mod:`vigie.models.persistence`).

        ``fusion`` holds the learned fusion's River scaler and classifier as base64 text of
        their pickles (:func:`vigie.models.fusion.dumps_model`).
        """
        return {
            "version": STATE_VERSION,
            "events_seen": self.events_seen,
            "watermark": self.watermark.isoformat(),
            "stores": {name: {k: s.to_dict() for k, s in store.items()} for name, store in self.stores.items()},
            "ens": self.ens.to_dict(),
            "ens_risk": dict(self.ens_risk),
            "labels": self.labels.to_dict(),
            "queues": {office: q.to_dict() for office, q in self.queues.items()},
            "fusion": self.alerting.state_dict() if isinstance(self.alerting, LearnedFusion) else None,
            "deadlines": self.timers.to_dict() if self.timers is not None else None,
            "seen": self.seen.to_dict() if self.seen is not None else None,
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; detectors must match by name, and the fusion by kind."""
        by_name = {d.name: d for d in self.detectors}
        missing = set(data["stores"]) ^ set(by_name)
        if missing:
            raise ValueError(f"checkpoint detectors do not match this pipeline: {sorted(missing)}")
        fusion = data.get("fusion")
        if (fusion is not None) != isinstance(self.alerting, LearnedFusion):
            raise ValueError("checkpoint and pipeline disagree on the fusion (learned vs noisy-OR)")
        self.events_seen = data["events_seen"]
        self.watermark = datetime.fromisoformat(data["watermark"]) if "watermark" in data else _EPOCH
        self.stores = {
            name: {k: by_name[name].state_type.from_dict(s) for k, s in store.items()}
            for name, store in data["stores"].items()
        }
        self.ens = EnsLinkState.from_dict(data["ens"])
        self.ens_risk = dict(data.get("ens_risk", {}))
        self.labels = LabelJoin.from_dict(data["labels"]) if "labels" in data else LabelJoin()
        self.queues = {office: OfficeQueueState.from_dict(q) for office, q in data["queues"].items()}
        if fusion is not None and isinstance(self.alerting, LearnedFusion):
            self.alerting.load_state_dict(fusion)
        if self.timers is not None:  # a version 2 checkpoint has none: none pending, no stream time yet
            self.timers.load_dict(data.get("deadlines") or {"due": [], "stream_time_ms": -(2**63)})
        if self.seen is not None:  # a version 3 checkpoint has none: only later events are recognised
            kept = data.get("seen")
            self.seen = RecentEventIds.from_dict(kept) if kept else RecentEventIds()


def _event_seconds(event: Any) -> float | None:
    """The event's time in epoch seconds; None when it has none readable (the pipeline then fails it)."""
    try:
        return epoch_seconds(event.event_time)
    except Exception:
        return None


event_ms = _pipeline.event_ms
"""An event's time in epoch milliseconds, as the deadline clock counts it (compiled)."""
