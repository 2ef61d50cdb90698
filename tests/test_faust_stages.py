"""The Kafka topology's stages, driven in memory: same scores as the in-process pipeline,
replays absorbed, dead letters complete. No broker here (see test_faust_worker.py)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, ClassVar, Self

import orjson
import pytest
from aiokafka.partitioner import murmur2

from tests.factories import T0, declaration_dict, ens_dict
from vigie.operators import Operator, OperatorState, ScoringPipeline, UndervaluationDetector
from vigie.operators.base import score_id
from vigie.operators.ens_risk import EnsPreArrivalDetector
from vigie.schemas import ImportDeclaration, RiskScore, decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.streams import faust_stages
from vigie.streams.faust_stages import (
    DictStore,
    FuseStage,
    IngestStage,
    InMessage,
    OutMessage,
    ScoreStage,
    StageOutput,
    UnitCodec,
)
from vigie.streams.topics import INPUT_KINDS, TopicNames, key_for

NAMES = TopicNames("t.")
KIND_OF = {event_type: kind for kind, event_type in INPUT_KINDS.items()}


class Topology:
    """The three stages with dict stores, routed through in-memory partitioned topics."""

    def __init__(self, pipeline: ScoringPipeline, partitions: int = 1, batch: int = 64) -> None:
        self.partitions = partitions
        self.batch = batch
        self.ens_links = DictStore()
        self.states = {d.name: DictStore() for d in pipeline.detectors}
        self.checkpoints = DictStore()
        self.ingest = IngestStage(NAMES, pipeline.detectors, self.ens_links)
        self.score = ScoreStage(NAMES, pipeline.detectors, self.states)
        self.fuse = FuseStage(NAMES, pipeline, self.checkpoints)
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)
        self.outputs: list[OutMessage] = []
        self.records: list[Any] = []
        self.fusion_log: list[InMessage] = []

    def route(self, messages: Iterable[OutMessage]) -> dict[int, list[InMessage]]:
        """Append messages to their topic's partitions (murmur2 of the key, as the producers do)."""
        by_partition: dict[int, list[InMessage]] = defaultdict(list)
        for m in messages:
            partition = (murmur2(m.key) & 0x7FFFFFFF) % self.partitions
            offset = self.offsets[(m.topic, partition)]
            self.offsets[(m.topic, partition)] += 1
            by_partition[partition].append(InMessage(m.topic, partition, offset, m.key, m.value))
        return by_partition

    def run(self, stage: Any, by_partition: dict[int, list[InMessage]]) -> list[OutMessage]:
        produced: list[OutMessage] = []
        for partition in sorted(by_partition):
            messages = by_partition[partition]
            for start in range(0, len(messages), self.batch):
                out: StageOutput = stage.process(messages[start : start + self.batch])
                produced.extend(out.messages)
                self.records.extend(out.records)
        return produced

    def feed(self, raw: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Send ``(kind, key, value)`` inputs through ingest, score and fuse, until nothing moves."""
        inputs = self.route(OutMessage(NAMES.name(kind), key, value) for kind, key, value in raw)
        pending = self.run(self.ingest, inputs)
        while pending:
            self.outputs += [m for m in pending if m.topic not in (NAMES.units, NAMES.fusion)]
            units = [m for m in pending if m.topic == NAMES.units]
            fusion = [m for m in pending if m.topic == NAMES.fusion]
            fusion += self.run(self.score, self.route(units))
            routed = self.route(fusion)
            self.fusion_log += [m for messages in routed.values() for m in messages]
            pending = self.run(self.fuse, routed)

    def topic(self, name: str) -> list[OutMessage]:
        return [m for m in self.outputs if m.topic == name]


def _inputs(events: Iterable[Any]) -> list[tuple[str, bytes, bytes]]:
    return [(KIND_OF[e.event_type], key_for(e), encode_event(e)) for e in events]


@pytest.fixture(scope="module")
def stream() -> list[Any]:
    return [event for event, _ in generate(GeneratorConfig(seed=5, duration_hours=3, rate_per_hour=500))]


def _reference(
    events: Iterable[Any], pipeline: ScoringPipeline | None = None
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Scores and alerts of the in-process pipeline, encoded, by id."""
    pipeline = pipeline or ScoringPipeline()
    scores: dict[str, bytes] = {}
    alerts: dict[str, bytes] = {}
    for event in events:
        result = pipeline.process(event)
        scores.update((s.score_id, encode_event(s)) for s in result.scores)
        if result.alert is not None:
            alerts[result.alert.alert_id] = encode_event(result.alert)
    return scores, alerts


def _by_id(messages: Iterable[OutMessage]) -> dict[str, bytes]:
    return {dict(m.headers)["vigie.id"].decode(): m.value for m in messages}


def test_one_partition_gives_the_in_process_scores_and_alerts_exactly(stream: list[Any]) -> None:
    # Without outcomes: feedback to detectors is the one thing that lags behind in the topology.
    events = [e for e in stream if e.event_type != "outcome"]
    scores, alerts = _reference(events)
    topology = Topology(ScoringPipeline(), partitions=1, batch=97)
    topology.feed(_inputs(events))
    assert alerts, "the stream should raise some alerts"
    assert _by_id(topology.topic(NAMES.scores)) == scores
    assert _by_id(topology.topic(NAMES.alerts)) == alerts
    assert not topology.topic(NAMES.dead_letter)
    # Sink records: every event, then every score and alert, once.
    inbound = [r for r in topology.records if getattr(r, "event_type", None) in INPUT_KINDS.values()]
    assert len(inbound) == len(events)
    assert sum(isinstance(r, RiskScore) for r in topology.records) == len(scores)
    assert not topology.fuse.pending and not topology.fuse.order


def _learning_pipeline() -> ScoringPipeline:
    """A pipeline whose detectors learn from outcomes (the ENS detector does)."""
    return ScoringPipeline(detectors=[UndervaluationDetector(), EnsPreArrivalDetector()])


def test_outcomes_teach_the_fusion_and_the_detectors(stream: list[Any]) -> None:
    reference = _learning_pipeline()
    scores, _ = _reference(stream, reference)
    topology = Topology(_learning_pipeline(), partitions=1, batch=97)
    topology.feed(_inputs(stream))
    assert set(_by_id(topology.topic(NAMES.scores))) == set(scores)
    fused = topology.fuse.pipeline
    assert fused.alerting.labels == reference.alerting.labels > 0, "the fusion learned every joined outcome"
    assert topology.score.feedback_units > 0

    def controls(store: dict[str, Any]) -> float:
        return sum(state["groups"].get("*|*", [0])[0] for state in store.values())

    learned = {k.decode(): orjson.loads(v)["s"] for k, v in topology.states["ens_pre_arrival"].data.items()}
    in_process = {k: s.to_dict() for k, s in reference.stores["ens_pre_arrival"].items()}
    assert controls(learned) == controls(in_process) > 0, "each control reached the ENS detector once"


def test_several_partitions_give_every_event_its_score_set(stream: list[Any]) -> None:
    scores, _ = _reference(stream)
    topology = Topology(ScoringPipeline(), partitions=3, batch=50)
    topology.feed(_inputs(stream))
    out = topology.topic(NAMES.scores)
    assert set(_by_id(out)) == set(scores), "the same score ids: one score per declaration item"
    assert len(out) == len(scores), "no duplicates"
    by_event = defaultdict(list)
    for m in out:
        by_event[m.key].append(m)
    declarations = {e.event_id for e in stream if e.event_type == "declaration"}
    assert {k.decode() for k in by_event} == {s["subject_event_id"] for s in map(orjson.loads, scores.values())}
    assert declarations <= {k.decode() for k in by_event}
    assert topology.fuse.completed == len(stream) and not topology.fuse.pending
    # Every state key lives in one units partition: the changelog partition of each state.
    for key, partition in topology.states["undervaluation"].partitions.items():
        units_key = b"undervaluation/" + key
        assert partition == (murmur2(units_key) & 0x7FFFFFFF) % 3


def test_a_replay_scores_again_but_learns_nothing_twice(stream: list[Any]) -> None:
    topology = Topology(ScoringPipeline(), partitions=2, batch=40)
    declarations = [e for e in stream if e.event_type == "declaration"][:300]
    inputs = topology.route(OutMessage(NAMES.declarations, key_for(e), encode_event(e)) for e in declarations)
    first = topology.run(topology.ingest, inputs)
    routed = topology.route(m for m in first if m.topic == NAMES.units)
    results = topology.run(topology.score, routed)
    states_before = {name: dict(store.data) for name, store in topology.states.items()}
    fusion = [m for m in first if m.topic == NAMES.fusion] + results
    out = topology.run(topology.fuse, topology.route(fusion))
    items = sum(len(e.goods_items) for e in declarations)
    assert topology.fuse.completed == len(declarations)
    assert len({m.key for m in out if m.topic == NAMES.scores}) == len(declarations)

    # A worker restarted after a crash reads the same units again (same input offsets).
    topology.score.invalidate()
    again = topology.run(topology.score, routed)
    assert {n: dict(s.data) for n, s in topology.states.items()} == states_before, "no second learning"
    assert topology.score.replayed_units == items * len(topology.states)
    assert topology.run(topology.fuse, topology.route(again)) == [], "fused events ignore late duplicates"
    assert topology.fuse.duplicates == sum(len(orjson.loads(m.value)["items"]) for m in again)


def test_fusion_resumes_from_its_checkpoint(stream: list[Any]) -> None:
    events = [e for e in stream if e.event_type != "outcome"]
    whole = Topology(ScoringPipeline(), partitions=1, batch=50)
    whole.feed(_inputs(events))

    half, three_quarters = len(events) // 2, len(events) * 3 // 4
    split = Topology(ScoringPipeline(), partitions=1, batch=50)
    split.feed(_inputs(events[:half]))
    written = split.fuse.checkpoint()
    covered = split.fuse.upto
    assert written > 0 and split.checkpoints.get(b"manifest") is not None
    split.feed(_inputs(events[half:three_quarters]))  # fused, but no checkpoint covers them
    # Crash. A new worker: fresh pipeline objects, the same tables, the fusion topic read again
    # from its last commit (here: from the start, as if nothing had been committed).
    restarted = FuseStage(NAMES, ScoringPipeline(), split.checkpoints)
    split.fuse = restarted
    replayed = split.run(restarted, {0: split.fusion_log})
    assert restarted.skipped == sum(1 for m in split.fusion_log if m.offset <= covered) > 0
    split.outputs += [m for m in replayed if m.topic != NAMES.units]
    split.feed(_inputs(events[three_quarters:]))
    assert restarted.seq == 1
    assert _by_id(split.topic(NAMES.scores)) == _by_id(whole.topic(NAMES.scores)), "same ids, same scores"
    assert _by_id(split.topic(NAMES.alerts)) == _by_id(whole.topic(NAMES.alerts))
    assert restarted.pipeline.alerting.state_dict() == whole.fuse.pipeline.alerting.state_dict(), "learned once"
    restarted.checkpoint()
    chunks = [k for k in split.checkpoints.data if k.startswith(b"chunk/")]
    assert chunks and all(k.startswith(b"chunk/2/") for k in chunks), "the previous checkpoint is deleted"


def test_bad_messages_are_dead_lettered_with_their_bytes_and_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    topology = Topology(ScoringPipeline())
    good = declaration_dict()
    wrong_version = orjson.dumps({**good, "event_id": "decl-v2", "schema_version": "2.0"})
    ens_on_declarations = orjson.dumps(ens_dict())
    huge = b'{"event_type": "declaration", "pad": "' + b"x" * (2 << 20) + b'"}'
    bad = [
        ("declarations", b"k1", orjson.dumps(good)[:-20]),
        ("declarations", b"k2", wrong_version),
        ("declarations", b"k3", b"\x00\xff\xfe binary \x80"),
        ("declarations", b"k4", huge),
        ("declarations", b"k5", ens_on_declarations),
    ]
    monkeypatch.setattr(faust_stages, "DEAD_LETTER_MAX_RAW", 1 << 20)
    topology.feed([*bad, ("declarations", b"ok", orjson.dumps(good))])
    letters = topology.topic(NAMES.dead_letter)
    assert len(letters) == 5
    reasons = []
    for (_, _, raw), letter in zip(bad, letters, strict=True):
        headers = dict(letter.headers)
        assert headers["vigie.topic"] == NAMES.declarations.encode()
        assert headers["vigie.partition"] == b"0"
        assert int(headers["vigie.raw-size"]) == len(raw)
        assert headers["vigie.source"] == f"kafka:{NAMES.declarations}:0:{headers['vigie.offset'].decode()}".encode()
        assert letter.key == headers["vigie.dead-letter-id"]
        if len(raw) > 1 << 20:
            assert headers["vigie.truncated"] == b"1" and letter.value == raw[: 1 << 20]
        else:
            assert letter.value == raw, "the original bytes, unchanged"
        reasons.append((headers["vigie.field"].decode(), headers["vigie.reason"].decode()))
    assert "Invalid JSON" in reasons[0][1]
    assert reasons[1][0] == "schema_version" and "not supported" in reasons[1][1]
    assert "not valid UTF-8" in reasons[2][1]
    assert "exceeds" in reasons[3][1]
    assert reasons[4] == ("event_type", reasons[4][1]) and "does not belong on topic 'declarations'" in reasons[4][1]
    # The sink gets the same dead letters, whole, and the one good event with its score.
    dead = [r for r in topology.records if r.event_type == "dead_letter"]
    assert [d.raw for d in dead] == [raw for _, _, raw in bad]
    assert {m.key for m in topology.topic(NAMES.scores)} == {b"decl-0001"}


def test_ens_arrival_gives_the_alert_its_lead_time() -> None:
    eta = T0 + timedelta(hours=30)
    events = [decode_event(orjson.dumps(ens_dict(eta=eta.isoformat())))]
    for i in range(25):  # a reference for CN 61091000 from CN, around 2 EUR/piece
        value = 1200.0 * (1 + 0.02 * math.sin(i))
        item = {**declaration_dict()["goods_items"][0], "customs_value_eur": value}
        events.append(
            decode_event(
                orjson.dumps(
                    declaration_dict(
                        event_id=f"decl-{i:03d}",
                        mrn=f"26FR00023000{i:05d}A",
                        ens_reference=None,
                        goods_items=[item],
                        event_time=(T0 + timedelta(minutes=i)).isoformat(),
                    )
                )
            )
        )
    fraud_item = {**declaration_dict()["goods_items"][0], "customs_value_eur": 200.0}
    events.append(
        decode_event(
            orjson.dumps(
                declaration_dict(
                    event_id="decl-fraud", goods_items=[fraud_item], event_time=(T0 + timedelta(hours=1)).isoformat()
                )
            )
        )
    )
    _, alerts = _reference(events)
    topology = Topology(ScoringPipeline(), partitions=3)
    topology.feed(_inputs(events))
    [alert_message] = [m for m in topology.topic(NAMES.alerts) if b'"decl-fraud"' in m.value]
    alert = orjson.loads(alert_message.value)
    assert alert["lead_time_hours"] == 29.0 and alert["transport_mode"] == "sea"
    assert alert_message.key == b"FR002300", "alerts are keyed by office"
    assert _by_id(topology.topic(NAMES.alerts)) == alerts


# -- a second detector whose units are not dataclasses: carried by reference ----------------


class CountState(OperatorState):
    def __init__(self) -> None:
        self.seen = 0

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls()
        state.seen = data["seen"]
        return state


class NewImporterDetector(Operator[tuple[str, int, Any], CountState]):
    """Scores 1 for an importer's first declaration item, less after: a toy with tuple units."""

    name: ClassVar[str] = "operator_behaviour"  # type: ignore[assignment]
    state_type: ClassVar[type[OperatorState]] = CountState

    def units(self, event: Any) -> Iterable[tuple[str, tuple[str, int, Any]]]:
        if isinstance(event, ImportDeclaration):
            for item in event.goods_items:
                yield event.importer_eori, (event.event_id, item.item_number, event)

    def score_one(self, unit: tuple[str, int, Any], state: CountState) -> RiskScore | None:
        event_id, item_number, event = unit
        if item_number % 3 == 0:
            return None  # a detector may have nothing to say about a unit
        return RiskScore(
            score_id=score_id(self.name, event_id, item_number),
            detector="operator_behaviour",
            subject_event_id=event_id,
            subject_type="declaration",
            subject_reference=event.mrn,
            item_number=item_number,
            event_time=event.event_time,
            office=event.customs_office,
            operator_eori=event.importer_eori,
            score=1.0 / (1 + state.seen),
            eur_at_stake=0.0,
            reason=f"{state.seen} earlier item(s) from this importer",
        )

    def learn_one(self, unit: tuple[str, int, Any], state: CountState) -> None:
        state.seen += 1


def test_units_that_are_not_dataclasses_travel_by_reference(stream: list[Any]) -> None:
    assert UnitCodec(UndervaluationDetector()).by_value
    assert not UnitCodec(NewImporterDetector()).by_value

    def pipeline() -> ScoringPipeline:
        return ScoringPipeline(detectors=[UndervaluationDetector(), NewImporterDetector()])

    events = stream[:1500]
    scores, alerts = _reference(events, pipeline())
    topology = Topology(pipeline(), partitions=1, batch=100)
    topology.feed(_inputs(events))
    assert any(s.startswith(b'{"event_type":"risk_score","score_id":"') for s in scores.values())
    assert _by_id(topology.topic(NAMES.scores)) == scores
    assert _by_id(topology.topic(NAMES.alerts)) == alerts


def test_stragglers_are_dropped_after_the_gather_timeout() -> None:
    now = [1000.0]
    fuse = FuseStage(NAMES, ScoringPipeline(), DictStore(), gather_timeout_s=60, clock=lambda: now[0])
    event = decode_event(orjson.dumps(declaration_dict()))
    ingest = IngestStage(NAMES, ScoringPipeline().detectors, DictStore())
    out = ingest.process([InMessage(NAMES.declarations, 0, 0, key_for(event), encode_event(event))])
    forwarded = [
        InMessage(m.topic, 0, i, m.key, m.value) for i, m in enumerate(out.messages) if m.topic == NAMES.fusion
    ]
    assert fuse.process(forwarded).messages == [] and fuse.order, "waiting for its unit scores"
    now[0] += 61
    assert fuse.process([]).messages == [] and not fuse.order and fuse.incomplete_dropped == 1


def test_ens_links_are_swept_after_the_retention() -> None:
    links = DictStore()
    ingest = IngestStage(NAMES, [], links)
    old = decode_event(orjson.dumps(ens_dict(ens_reference="26FR0002300000001Z", event_id="e1")))
    new_eta = (T0 + timedelta(days=40)).isoformat()
    new = decode_event(
        orjson.dumps(
            ens_dict(
                ens_reference="26FR0002300000002Z",
                event_id="e2",
                eta=new_eta,
                event_time=(T0 + timedelta(days=39)).isoformat(),
            )
        )
    )
    ingest.process([InMessage(NAMES.ens, 0, i, key_for(e), encode_event(e)) for i, e in enumerate([old, new])])
    assert ingest.sweep() == 1
    assert list(links.data) == [b"26FR0002300000002Z"]


def test_unit_codec_round_trip() -> None:
    codec = UnitCodec(UndervaluationDetector())
    event = decode_event(orjson.dumps(declaration_dict()))
    [(_, unit)] = list(UndervaluationDetector().units(event))
    assert codec.decode(orjson.loads(orjson.dumps(codec.encode(unit)))) == unit
    ens_detector = EnsPreArrivalDetector()
    ens_codec = UnitCodec(ens_detector)
    assert ens_codec.by_value, "a union of flat dataclasses travels by value"
    for _, ens_unit in ens_detector.units(decode_event(orjson.dumps(ens_dict()))):
        assert ens_codec.decode(orjson.loads(orjson.dumps(ens_codec.encode(ens_unit)))) == ens_unit
