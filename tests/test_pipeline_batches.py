"""``ScoringPipeline.process_all`` gives what ``process`` gives event after event: results, state, failures.

Its first pass runs the detectors that need nothing from the pipeline over the whole batch,
one detector at a time; these tests hold it to the one-event-at-a-time order where that could
differ: idle-key sweeps falling inside a batch, a detector failing on some events (the
detectors after it must not see them), detectors that need the pipeline placed first, and
batch sizes from 1 to more than the stream.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import datetime, timedelta
from functools import cache
from typing import Any, ClassVar, Self

import pytest

from tests.factories import excise, timer_events
from vigie.operators import ScoringPipeline, _pipeline, all_detectors
from vigie.operators._pipeline import EVICT_EVERY
from vigie.operators.base import OperatorState, epoch_seconds
from vigie.operators.ens_risk import EnsPreArrivalDetector
from vigie.operators.fusion import NoisyOrAlerting
from vigie.schemas import EntrySummaryDeclaration, ImportDeclaration, RiskScore
from vigie.schemas.generator import GeneratorConfig, generate


@cache
def _stream() -> tuple[Any, ...]:
    """Past one idle-key sweep (EVICT_EVERY events), with ENS, declarations, excise and outcomes."""
    events = tuple(event for event, _ in generate(GeneratorConfig(seed=11, duration_hours=8, rate_per_hour=1500)))
    assert len(events) > EVICT_EVERY + 1_000
    assert len({type(e) for e in events}) == 4
    return events


class Seen(OperatorState):
    """When a key last showed up (epoch s)."""

    def __init__(self, last: float = 0.0) -> None:
        self.last = last

    def to_dict(self) -> dict[str, Any]:
        return {"last": self.last}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(data["last"])

    def last_activity(self) -> float | None:
        return self.last


class Recorder:
    """A detector needing nothing from the pipeline: keeps one key per importer, logs every event it
    is shown and every sweep (with how many events it had seen, the watermark, the keys it dropped),
    and fails, when told to, on every ``fail_every``-th declaration it is shown."""

    state_type: ClassVar[type[OperatorState]] = Seen

    def __init__(self, name: str, fail_every: int = 0, retention_s: float = 1_800.0) -> None:
        self.name = name
        self.fail_every = fail_every
        self.retention_s = retention_s
        self.shown: list[str] = []
        self.sweeps: list[tuple[int, datetime, int]] = []
        self._declarations = 0

    def process(self, event: Any, store: MutableMapping[str, Seen]) -> list[RiskScore]:
        self.shown.append(event.event_id)
        if isinstance(event, ImportDeclaration):
            self._declarations += 1
            if self.fail_every and self._declarations % self.fail_every == 0:
                raise RuntimeError(f"{self.name} refuses {event.event_id}")
            store[event.importer_eori] = Seen(epoch_seconds(event.event_time))
        return []

    def evict_idle(self, store: MutableMapping[str, Seen], now: datetime) -> int:
        horizon = epoch_seconds(now) - self.retention_s
        idle = [key for key, state in store.items() if state.last < horizon]
        for key in idle:
            del store[key]
        self.sweeps.append((len(self.shown), now, len(idle)))
        return len(idle)


def _one_by_one(pipeline: ScoringPipeline, events: Any) -> list[Any]:
    out: list[Any] = []
    for event in events:
        try:
            out.append(pipeline.process(event))
        except Exception as exc:
            out.append(exc)
    return out


def _in_batches(pipeline: ScoringPipeline, events: Any, size: int) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(events), size):
        out.extend(pipeline.process_all(events[start : start + size]))
    return out


def _same(expected: list[Any], got: list[Any]) -> None:
    assert len(got) == len(expected)
    for position, (want, have) in enumerate(zip(expected, got, strict=True)):
        if isinstance(want, Exception):
            assert type(have) is type(want) and str(have) == str(want), position
        else:
            assert have == want, position


@pytest.mark.parametrize("size", [256, 333])
def test_batches_give_the_results_and_state_of_one_event_at_a_time(size: int) -> None:
    events = _stream()
    one, batched = ScoringPipeline(), ScoringPipeline()
    expected = _one_by_one(one, events)
    got = _in_batches(batched, events, size)
    _same(expected, got)
    assert sum(len(r.scores) for r in got) > 2 * len(events)
    assert sum(len(r.alerts) for r in got) > 0
    assert one.labels.by_id and batched.state_dict() == one.state_dict()
    assert batched._ahead == 4  # every detector but the ENS pre-arrival one took the batch first


def test_the_ens_registry_is_swept_where_it_would_be_one_event_at_a_time() -> None:
    """No ENS retention after arrival: the sweep inside a batch forgets ENS (and their fused risks) that later
    declarations of the same batch would otherwise be linked to."""
    events = _stream()
    one, batched = ScoringPipeline(ens_retention=timedelta(0)), ScoringPipeline(ens_retention=timedelta(0))
    expected = _one_by_one(one, events[: EVICT_EVERY - 1])
    held, at_risk = len(one.ens.arrivals), len(one.ens_risk)
    expected += _one_by_one(one, events[EVICT_EVERY - 1 : EVICT_EVERY])  # the sweep's event
    assert len(one.ens.arrivals) < held and len(one.ens_risk) < at_risk  # it forgot ENS and their risks
    expected += _one_by_one(one, events[EVICT_EVERY:])
    _same(expected, _in_batches(batched, events, 333))
    assert batched.state_dict() == one.state_dict()


@pytest.mark.parametrize("size", [1, 2, 333, 20_000])
def test_sweeps_and_failures_land_where_they_would_one_event_at_a_time(size: int) -> None:
    events = _stream()

    def pipeline() -> ScoringPipeline:
        detectors: list[Any] = [Recorder("first"), Recorder("failing", fail_every=97), Recorder("after")]
        return ScoringPipeline([*detectors, *all_detectors()])

    one, batched = pipeline(), pipeline()
    expected = _one_by_one(one, events)
    got = _in_batches(batched, events, size)
    _same(expected, got)
    failures = [r for r in expected if isinstance(r, Exception)]
    assert len(failures) == sum(isinstance(e, ImportDeclaration) for e in events) // 97 > 0
    for want, have in zip(one.detectors[:3], batched.detectors[:3], strict=True):
        assert have.shown == want.shown  # "after" never saw what "failing" refused
        assert have.sweeps == want.sweeps
    recorder = one.detectors[0]
    assert len(recorder.sweeps) == len(events) // EVICT_EVERY and recorder.sweeps[0][2] > 0  # keys did idle out
    assert len(one.detectors[2].shown) == len(events) - len(failures)
    assert batched.state_dict() == one.state_dict()


def test_a_detector_needing_the_pipeline_keeps_the_ones_after_it_in_event_order() -> None:
    events = _stream()[:3_000]

    def pipeline() -> ScoringPipeline:
        return ScoringPipeline([EnsPreArrivalDetector(), Recorder("after", fail_every=50)])

    one, batched = pipeline(), pipeline()
    assert batched._ahead == 0
    _same(_one_by_one(one, events), _in_batches(batched, events, 256))
    assert batched.detectors[1].shown == one.detectors[1].shown
    assert batched.state_dict() == one.state_dict()


def _ens_filed_late(alerting: Any) -> list[Any]:
    """The first events of the stream, the ENS of each declaration alerted on them moved to just after
    the declaration: a batch holds both, and the declaration (its alert's arrival and lead time) must
    not see the ENS that the registry holds by the end of the batch."""
    events = list(_stream()[:6_000])
    alerted = {r.event.event_id for r in ScoringPipeline(alerting=alerting).process_all(events) if r.alert}
    position = {e.ens_reference: i for i, e in enumerate(events) if isinstance(e, EntrySummaryDeclaration)}
    moved = 0
    for i, event in enumerate(list(events)):
        if event.event_id in alerted and position.get(getattr(event, "ens_reference", None), i) < i:
            ens = events[position[event.ens_reference]]
            events.remove(ens)
            events.insert(events.index(event) + 1, ens)
            moved += 1
    assert moved >= 1
    return events


@pytest.mark.parametrize("alerting", ["learned", "noisy-or"])
def test_a_declaration_sees_the_registry_as_it_was_at_its_turn(alerting: str) -> None:
    def pipeline() -> ScoringPipeline:
        return ScoringPipeline(alerting=NoisyOrAlerting() if alerting == "noisy-or" else None)

    events = _ens_filed_late(pipeline().alerting)
    one, batched = pipeline(), pipeline()
    expected = _one_by_one(one, events)
    _same(expected, _in_batches(batched, events, 256))
    assert any(r.alert is not None and r.alert.eta is None for r in expected)  # alerted, its ENS not yet filed
    assert batched.state_dict() == one.state_dict()


def test_what_is_not_an_event_fails_in_its_place() -> None:
    events = list(_stream()[:600])
    events[300] = None
    one, batched = ScoringPipeline(), ScoringPipeline()
    expected = _one_by_one(one, events)
    got = batched.process_all(events)
    _same(expected, got)
    assert isinstance(got[300], AttributeError)
    assert batched.state_dict() == one.state_dict()
    assert batched.process_all([]) == []


def _late_from_a(clock: Any) -> Any:
    """A second e-AD from e-AD A's consignor an hour after the clock record (see ``timer_events``)."""
    return excise(event_id="timer-ead-a2", arc="26FRT0000000000000A12", consignor_excise_number="FRTIMERA00001",
                  event_time=(clock.event_time + timedelta(hours=1)).isoformat())  # fmt: skip


@pytest.mark.parametrize("size", [7, 5_000])
def test_a_deadline_due_inside_a_batch_is_checked_where_it_would_be_one_event_at_a_time(size: int) -> None:
    """The clock record makes e-AD A overdue; a record from A's consignor comes after it in the same
    batch. One event at a time, the deadline check after the clock finds the gap and the later record
    finds nothing; a batch whose detectors took the later record before the check would let it reveal
    the gap instead. The batch stops at the clock record, so the gap is the clock record's finding."""
    events = [e for e, _ in generate(GeneratorConfig(seed=5, duration_hours=1))]
    events += timer_events(events[-1])
    events += [_late_from_a(events[-1]), *[e for e, _ in generate(GeneratorConfig(seed=6, duration_hours=0.2))]]
    one, batched = ScoringPipeline(), ScoringPipeline()
    expected = _one_by_one(one, events)
    _same(expected, _in_batches(batched, events, size))
    assert batched.state_dict() == one.state_dict()
    clock = next(i for i, e in enumerate(events) if e.event_id == "timer-clock")
    found = [(i, s) for i, r in enumerate(expected) for s in r.scores
             if s.subject_event_id == "timer-ead-a" and s.reason_fields.get("findings") == "no_receipt"]  # fmt: skip
    assert [i for i, _ in found] == [clock]  # after the clock record, once; not by the later record
    assert found[0][1].score > 0.9 and found[0][1].detector == "excise"
    assert any(a.subject_event_id == "timer-ead-a" for a in expected[clock].alerts)
    assert not any(s.subject_event_id == "timer-ead-b" for r in expected for s in r.scores if s.detector == "excise"
                   and s.reason_fields.get("findings") == "no_receipt")  # fmt: skip


def test_without_deadline_timers_only_a_later_record_of_the_consignor_reveals_the_gap() -> None:
    events = [e for e, _ in generate(GeneratorConfig(seed=5, duration_hours=1))]
    events += timer_events(events[-1])
    late = _late_from_a(events[-1])
    pipeline = ScoringPipeline(deadline_lag=None)
    assert pipeline.timers is None
    results = pipeline.process_all([*events, late])
    gaps = [(r.event.event_id, s) for r in results for s in r.scores if s.subject_event_id == "timer-ead-a"
            and s.reason_fields.get("findings") == "no_receipt"]  # fmt: skip
    assert [event_id for event_id, _ in gaps] == ["timer-ead-a2"]  # not at the clock: by the later record
    with_timers = ScoringPipeline()
    timed = [s for r in with_timers.process_all([*events, late]) for s in r.scores
             if s.subject_event_id == "timer-ead-a" and s.reason_fields.get("findings") == "no_receipt"]  # fmt: skip
    assert [s.score_id for s in timed] == [gaps[0][1].score_id]  # the same finding, one id whichever found it


def test_deadline_timers_survive_a_checkpoint_and_an_old_checkpoint_loads_with_none() -> None:
    events = [e for e, _ in generate(GeneratorConfig(seed=5, duration_hours=1))]
    events += timer_events(events[-1])
    cut = len(events) - 2  # e-ADs A and B opened, B's receipt and the clock to come
    first = ScoringPipeline()
    first.process_all(events[:cut])
    assert first.timers is not None and first.timers.pending > 0
    state = first.state_dict()
    restored = ScoringPipeline()
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    assert _one_by_one(restored, events[cut:]) == _one_by_one(first, events[cut:])
    old = {k: v for k, v in state.items() if k != "deadlines"}  # a version 2 checkpoint
    legacy = ScoringPipeline()
    legacy.load_state_dict(old)
    assert legacy.timers is not None and legacy.timers.pending == 0


def test_the_compiled_deadline_planner_gives_the_timers_own_answers() -> None:
    """``_pipeline.plan_deadlines`` and ``_pipeline.segment_end`` (what process_all runs) against
    :class:`DeadlineTimers`' own ``wake_ups`` and ``segment_end``, with wake-ups pending and not."""
    events: list[Any] = [*_stream(), None]
    events += timer_events(max(events[:-1], key=lambda e: e.event_time))
    timers = ScoringPipeline(deadline_lag=timedelta(0)).timers
    assert timers is not None
    wakes, times = _pipeline.plan_deadlines(events, timers.typed)
    reference = [timers.wake_ups(e) for e in events]
    assert [w or [] for w in wakes] == reference and sum(map(bool, reference)) > 10
    assert times[len(_stream())] == -(2**63) and times[0] == int(epoch_seconds(events[0].event_time) * 1000)
    for pending in ([], [(times[10] + 3_600_000, "excise", "ledger:X")]):
        timers.load_dict({"due": pending, "stream_time_ms": times[0]})
        for start in (0, 1, len(events) // 2, len(events) - 3):
            first_due = timers.due[0][0] if timers.due else 2**63
            got = _pipeline.segment_end(wakes, times, start, first_due, timers.stream_time_ms, timers.lag_ms)
            assert got == timers.segment_end(reference, times, start)
        assert timers.segment_end(reference, times, 0) < len(events)  # a wake-up falls due inside
