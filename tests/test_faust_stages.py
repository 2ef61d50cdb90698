"""The Kafka topology's stages, driven in memory: same scores as the in-process pipeline,
replays absorbed exactly, dead letters complete. No broker here (see test_faust_worker.py)."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from faust.types import TP

from tests.factories import T0, declaration_dict, ens_dict, priced_declaration, receipt_behind_events, timer_events
from vigie.operators import ScoringPipeline, UndervaluationDetector
from vigie.operators.ens_risk import EnsPreArrivalDetector
from vigie.schemas import RiskScore, decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.streams import faust_stages
from vigie.streams.faust_app import InOrderGate
from vigie.streams.faust_stages import (
    FUSION_KEY,
    DecodedCache,
    DictStore,
    FuseStage,
    FusionPacker,
    IngestStage,
    InMessage,
    OutMessage,
    StageOutput,
    read_fusion_message,
)
from vigie.streams.topics import INPUT_KINDS, TopicNames, key_for

NAMES = TopicNames("t.")
KIND_OF = {event_type: kind for kind, event_type in INPUT_KINDS.items()}


class Topology:
    """Ingest and fuse with a dict store, routed through in-memory partitioned topics."""

    def __init__(self, pipeline: ScoringPipeline, partitions: int = 1, batch: int = 64, cache: bool = True) -> None:
        self.partitions = partitions
        self.batch = batch
        self.cache = DecodedCache() if cache else None
        self.checkpoints = DictStore()
        self.ingest = IngestStage(NAMES, cache=self.cache)
        self.fuse = FuseStage(NAMES, pipeline, self.checkpoints, cache=self.cache)
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
        """Batches of each partition in turn; when ``by_partition`` has several, they interleave batch by batch."""
        produced: list[OutMessage] = []
        starts = dict.fromkeys(by_partition, 0)
        while starts:
            for partition in sorted(starts):
                messages = by_partition[partition]
                start = starts[partition]
                out: StageOutput = stage.process(messages[start : start + self.batch])
                produced.extend(out.messages)
                self.records.extend(out.records)
                starts[partition] = start + self.batch
                if starts[partition] >= len(messages):
                    del starts[partition]
        return produced

    def feed(self, raw: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Send ``(kind, key, value)`` inputs through ingest, then fuse."""
        inputs = self.route(OutMessage(NAMES.name(kind), key, value) for kind, key, value in raw)
        forwarded = self.run(self.ingest, inputs)
        self.outputs += [m for m in forwarded if m.topic != NAMES.fusion]
        routed = self.route(m for m in forwarded if m.topic == NAMES.fusion)
        self.fusion_log += [m for messages in routed.values() for m in messages]
        self.outputs += self.run(self.fuse, routed)

    def topic(self, name: str) -> list[OutMessage]:
        return [m for m in self.outputs if m.topic == name]

    def fused_order(self) -> list[Any]:
        """The events in the order the fusion topic holds them (duplicates included)."""
        return [decode_event(raw) for m in self.fusion_log for _, _, raw in read_fusion_message(m.value)]


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
        alerts.update((a.alert_id, encode_event(a)) for a in result.alerts)  # later findings' included
    return scores, alerts


def _by_id(messages: Iterable[OutMessage]) -> dict[str, bytes]:
    return {dict(m.headers)["vigie.id"].decode(): m.value for m in messages}


def test_one_partition_gives_the_in_process_scores_and_alerts_exactly(stream: list[Any]) -> None:
    scores, alerts = _reference(stream)
    topology = Topology(ScoringPipeline(), partitions=1, batch=97)
    topology.feed(_inputs(stream))
    assert alerts, "the stream should raise some alerts"
    assert _by_id(topology.topic(NAMES.scores)) == scores
    assert len(topology.topic(NAMES.scores)) == len(scores), "each score once"
    assert _by_id(topology.topic(NAMES.alerts)) == alerts
    assert not topology.topic(NAMES.dead_letter)
    assert len(topology.fusion_log) == math.ceil(len(stream) / 97), "one fusion message per ingest batch"
    # Sink records: every event, then every score and alert, once.
    inbound = [r for r in topology.records if getattr(r, "event_type", None) in INPUT_KINDS.values()]
    assert len(inbound) == len(stream)
    assert sum(isinstance(r, RiskScore) for r in topology.records) == len(scores)
    assert topology.fuse.fused == len(stream) and topology.fuse.duplicates == 0
    assert topology.cache is not None and topology.cache.hits == len(stream) and len(topology.cache) == 0


def test_a_deadline_the_stream_passes_is_found_as_in_process(stream: list[Any]) -> None:
    """e-AD A gets no receipt and its consignor sends nothing more: the worker's pipeline finds it
    overdue once the stream's time passes its deadline, as the in-process runner does."""
    events = [*stream, *timer_events(max(stream, key=lambda e: e.event_time))]
    scores, alerts = _reference(events)
    topology = Topology(ScoringPipeline(), partitions=1, batch=97)
    topology.feed(_inputs(events))
    assert _by_id(topology.topic(NAMES.scores)) == scores
    assert _by_id(topology.topic(NAMES.alerts)) == alerts
    decoded = [orjson.loads(s) for s in scores.values()]
    gaps = [s for s in decoded if s["reason_fields"].get("findings") == "no_receipt"]
    assert "timer-ead-a" in {g["subject_event_id"] for g in gaps}
    assert "timer-ead-b" not in {g["subject_event_id"] for g in gaps}  # received in time
    assert any(orjson.loads(a)["subject_event_id"] == "timer-ead-a" for a in alerts.values())


def _learning_pipeline() -> ScoringPipeline:
    """A pipeline whose detectors learn from outcomes (the ENS detector does)."""
    return ScoringPipeline(detectors=[UndervaluationDetector(), EnsPreArrivalDetector()])


def test_outcomes_teach_the_fusion_and_the_detectors_as_in_process(stream: list[Any]) -> None:
    reference = _learning_pipeline()
    scores, alerts = _reference(stream, reference)
    topology = Topology(_learning_pipeline(), partitions=1, batch=97, cache=False)
    topology.feed(_inputs(stream))
    assert _by_id(topology.topic(NAMES.scores)) == scores
    assert _by_id(topology.topic(NAMES.alerts)) == alerts
    fused = topology.fuse.pipeline
    assert fused.alerting.labels == reference.alerting.labels > 0, "the fusion learned every joined outcome"
    assert fused.state_dict() == reference.state_dict(), "detectors' keyed states included"


def test_several_partitions_score_every_event_in_the_fusion_order(stream: list[Any]) -> None:
    topology = Topology(ScoringPipeline(), partitions=3, batch=50)
    topology.feed(_inputs(stream))
    order = topology.fused_order()
    assert sorted(e.event_id for e in order) == sorted(e.event_id for e in stream), "each event forwarded once"
    assert [e.event_id for e in order] != [e.event_id for e in stream], "three partitions interleave"
    # What the topology computed is the in-process pipeline's output on that order, exactly.
    scores, alerts = _reference(order)
    out = topology.topic(NAMES.scores)
    assert _by_id(out) == scores and len(out) == len(scores)
    assert _by_id(topology.topic(NAMES.alerts)) == alerts
    assert {m.key.decode() for m in out} >= {e.event_id for e in stream if e.event_type == "declaration"}
    assert all(m.key == FUSION_KEY for m in topology.fusion_log)
    # Per input partition, events reach fusion in their offsets' order.
    positions: dict[str, list[int]] = defaultdict(list)
    for m in topology.fusion_log:
        for source, offset, _ in read_fusion_message(m.value):
            positions[source].append(offset)
    assert len(positions) > 3 and all(offsets == sorted(offsets) for offsets in positions.values())


def test_events_forwarded_again_are_skipped(stream: list[Any]) -> None:
    declarations = [e for e in stream if e.event_type == "declaration"][:300]
    topology = Topology(ScoringPipeline(), partitions=2, batch=40)
    inputs = topology.route(OutMessage(NAMES.declarations, key_for(e), encode_event(e)) for e in declarations)
    forwarded = topology.run(topology.ingest, inputs)
    first = topology.run(topology.fuse, topology.route(forwarded))
    state = topology.fuse.pipeline.state_dict()
    assert len({m.key for m in first if m.topic == NAMES.scores}) == len(declarations)

    # An ingest worker restarted after a crash forwards the same input offsets again.
    again = IngestStage(NAMES).process([m for messages in inputs.values() for m in messages])
    assert topology.run(topology.fuse, topology.route(again.messages)) == [], "nothing fused twice"
    assert topology.fuse.duplicates == len(declarations)
    assert topology.fuse.pipeline.state_dict() == state, "nothing learned twice"


def test_events_an_integrator_sends_again_are_scored_once(stream: list[Any]) -> None:
    """Not a replay of the same offsets: the same events published again (new offsets, same event_id)."""
    topology = Topology(ScoringPipeline(), partitions=2, batch=61)
    resent = [e for e in stream if e.event_type == "declaration"][:150]
    topology.feed(_inputs(stream))
    state = topology.fuse.pipeline.state_dict()
    outputs = len(topology.outputs)
    topology.feed(_inputs(resent))
    assert topology.fuse.resent == len(resent) and len(topology.outputs) == outputs, "no score sent again"
    assert topology.fuse.pipeline.state_dict() == state, "nothing learned twice"


def test_fusion_resumes_from_its_checkpoint_exactly(stream: list[Any]) -> None:
    whole = Topology(ScoringPipeline(), partitions=1, batch=50)
    whole.feed(_inputs(stream))

    half, three_quarters = len(stream) // 2, len(stream) * 3 // 4
    split = Topology(ScoringPipeline(), partitions=1, batch=50)
    split.feed(_inputs(stream[:half]))
    written = split.fuse.checkpoint()
    assert written > 0 and split.checkpoints.get(b"manifest") is not None
    split.feed(_inputs(stream[half:three_quarters]))  # fused and emitted, but no checkpoint covers them
    emitted_before_crash = _by_id(split.topic(NAMES.scores))
    # Crash. A new worker: a fresh pipeline, the same table, the fusion topic read again from
    # its last commit (here: from the start, as if nothing had been committed).
    restarted = FuseStage(NAMES, ScoringPipeline(), split.checkpoints)
    split.fuse = restarted
    replayed = split.run(restarted, {0: split.fusion_log})
    assert restarted.seq == 1 and restarted.restored_bytes == written
    assert restarted.duplicates == half, "what the checkpoint holds is skipped"
    assert restarted.fused == three_quarters - half, "what it does not is fused again"
    again = _by_id(m for m in replayed if m.topic == NAMES.scores)
    assert again and all(emitted_before_crash[i] == v for i, v in again.items()), "the same scores again"
    split.outputs += replayed
    split.feed(_inputs(stream[three_quarters:]))
    assert _by_id(split.topic(NAMES.scores)) == _by_id(whole.topic(NAMES.scores)), "same ids, same scores"
    assert _by_id(split.topic(NAMES.alerts)) == _by_id(whole.topic(NAMES.alerts))
    assert restarted.pipeline.state_dict() == whole.fuse.pipeline.state_dict(), "learned once"
    restarted.checkpoint()
    chunks = [k for k in split.checkpoints.data if k.startswith(b"chunk/")]
    assert chunks and all(k.startswith(b"chunk/2/") for k in chunks), "the previous checkpoint is deleted"
    assert set(split.checkpoints.partitions.values()) == {0}, "all in the fusion partition"


def test_a_checkpoint_is_split_into_chunks_and_a_missing_one_is_an_error(
    stream: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faust_stages, "CHECKPOINT_CHUNK", 4096)
    topology = Topology(ScoringPipeline(), partitions=1)
    topology.feed(_inputs(stream[:500]))
    written = topology.fuse.checkpoint()
    manifest = orjson.loads(topology.checkpoints.data[b"manifest"])
    assert manifest["n"] == math.ceil(written / 4096) > 1
    restored = FuseStage(NAMES, ScoringPipeline(), topology.checkpoints)
    restored.process([])
    assert restored.pipeline.state_dict() == topology.fuse.pipeline.state_dict()
    del topology.checkpoints.data[b"chunk/1/1"]
    with pytest.raises(RuntimeError, match=r"checkpoint 1 is incomplete: 1 chunk\(s\) missing"):
        FuseStage(NAMES, ScoringPipeline(), topology.checkpoints).process([])


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
    assert (topology.ingest.accepted, topology.ingest.rejected) == (1, 5)


class _Failing(UndervaluationDetector):
    """Undervaluation that fails on one event id."""

    def units(self, event: Any) -> Any:
        if event.event_id == "decl-boom":
            raise ZeroDivisionError("boom")
        return super().units(event)


def test_an_event_the_pipeline_fails_on_is_dead_lettered_and_the_stream_goes_on() -> None:
    topology = Topology(ScoringPipeline(detectors=[_Failing()]))
    events = [
        decode_event(orjson.dumps(declaration_dict(event_id=event_id, mrn=f"26FR00023000{i:05d}A")))
        for i, event_id in enumerate(["decl-a", "decl-boom", "decl-b"])
    ]
    topology.feed(_inputs(events))
    [letter] = topology.topic(NAMES.dead_letter)
    headers = dict(letter.headers)
    assert headers["vigie.reason"] == b"internal error while scoring: ZeroDivisionError('boom')"
    assert headers["vigie.source"] == f"kafka:{NAMES.declarations}:0:1".encode()
    assert letter.value == encode_event(events[1]), "the original bytes"
    assert {m.key for m in topology.topic(NAMES.scores)} == {b"decl-a", b"decl-b"}
    assert topology.fuse.failed == 1 and topology.fuse.fused == 2


def test_ens_arrival_gives_the_alert_its_lead_time() -> None:
    eta = T0 + timedelta(hours=30)
    events = [decode_event(orjson.dumps(ens_dict(eta=eta.isoformat())))]
    # A reference for CN 61091000 from CN, around 2 EUR/piece.
    events += [priced_declaration(i, 1200.0 * (1 + 0.02 * math.sin(i))) for i in range(25)]
    fraud_item = {**declaration_dict()["goods_items"][0], "customs_value_eur": 200.0}
    fraud = {"event_id": "decl-fraud", "goods_items": [fraud_item], "event_time": (T0 + timedelta(hours=1)).isoformat()}
    events.append(decode_event(orjson.dumps(declaration_dict(**fraud))))
    _, alerts = _reference(events)
    topology = Topology(ScoringPipeline(), partitions=1)
    topology.feed(_inputs(events))
    [alert_message] = [m for m in topology.topic(NAMES.alerts) if b'"decl-fraud"' in m.value]
    alert = orjson.loads(alert_message.value)
    assert alert["lead_time_hours"] == 29.0 and alert["transport_mode"] == "sea"
    assert alert_message.key == b"FR002300", "alerts are keyed by office"
    assert _by_id(topology.topic(NAMES.alerts)) == alerts


def test_fusion_messages_round_trip_and_are_cut_at_the_size_limit() -> None:
    packer = FusionPacker(NAMES.fusion, max_bytes=100)
    items = [("t.declarations:0", i, b'{"x": "' + b"\n\t" * i + b'"}') for i in range(40)]
    for source, offset, raw in items:
        packer.add(source, offset, raw)
    messages = packer.messages()
    assert len(messages) > 1 and all(m.key == FUSION_KEY and m.topic == NAMES.fusion for m in messages)
    assert [e for m in messages for e in read_fusion_message(m.value)] == items
    assert packer.messages() == [], "nothing twice"
    whole = messages[0].value
    for broken in (b"", b"not fusion", whole[:-3], whole.replace(b"\t", b" ", 1)):
        with pytest.raises(ValueError):
            list(read_fusion_message(broken))


def test_an_unreadable_fusion_message_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    fuse = FuseStage(NAMES, ScoringPipeline(), DictStore())
    event = decode_event(orjson.dumps(declaration_dict()))
    packer = FusionPacker(NAMES.fusion)
    packer.add(f"{NAMES.declarations}:0", 0, encode_event(event))
    batch = [
        InMessage(NAMES.fusion, 0, 0, FUSION_KEY, b"garbage"),
        *(InMessage(NAMES.fusion, 0, 1, m.key, m.value) for m in packer.messages()),
    ]
    out = fuse.process(batch)
    assert fuse.unreadable == 1 and fuse.fused == 1
    assert out.messages and {m.key for m in out.messages} == {b"decl-0001"}  # its scores, keyed on the event
    assert "skipping unreadable message at t.fusion:0:0" in caplog.text


def test_decoded_cache_gives_only_the_same_bytes_back_and_stays_bounded() -> None:
    cache = DecodedCache(capacity=2)
    event = decode_event(orjson.dumps(declaration_dict()))
    raw = encode_event(event)
    cache.put("t.declarations:0", 7, raw, event)
    assert cache.take("t.declarations:0", 7, raw + b" ") is None, "other bytes: decode them"
    cache.put("t.declarations:0", 7, raw, event)
    assert cache.take("t.declarations:0", 7, raw) is event and cache.hits == 1
    assert cache.take("t.declarations:0", 7, raw) is None, "taken once"
    for offset in range(5):
        cache.put("t.declarations:0", offset, raw, event)
    assert len(cache) == 2 and cache.take("t.declarations:0", 4, raw) is event


# -- the in-order gate of the Faust layer (no broker: a fake consumer) ------------------------


class _FakeConsumer:
    """What :class:`InOrderGate` asks of Faust's consumer."""

    def __init__(self, assigned: set[TP], ends: dict[TP, int]) -> None:
        self.assigned = assigned
        self.ends = ends
        self.seeks: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self.assigned

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in tps}

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.extend(partitions.items())


@dataclass
class _FakeEvent:
    message: Any


def _events(tp: TP, offsets: Iterable[int]) -> list[_FakeEvent]:
    return [_FakeEvent(SimpleNamespace(tp=tp, offset=o)) for o in offsets]


def test_the_gate_admits_in_order_and_seeks_back_to_a_skipped_offset() -> None:
    ens, decl = TP("t.ens", 0), TP("t.declarations", 1)
    consumer = _FakeConsumer({ens, decl}, {ens: 10, decl: 4})
    app = SimpleNamespace(consumer=consumer)

    async def committed(tps: list[TP]) -> dict[TP, int | None]:
        return {tp: (5 if tp == ens else None) for tp in tps}

    gate = InOrderGate("ingest", app, {"t.ens", "t.declarations"}, committed, stall_s=0.0)  # type: ignore[arg-type]

    async def scenario() -> None:
        # From the committed offset (5) for the ENS, from the first offset (0) for declarations.
        first = await gate.admit([*_events(ens, [5, 6]), *_events(decl, [0, 2, 3])])
        assert [(e.message.tp, e.message.offset) for e in first] == [(ens, 5), (ens, 6), (decl, 0)]
        assert consumer.seeks == [(decl, 1)], "offset 1 was skipped: read again from it"
        again = await gate.admit(_events(decl, [1, 2]) + _events(ens, [6, 7]))
        assert [(e.message.tp, e.message.offset) for e in again] == [(decl, 1), (decl, 2), (ens, 7)]
        assert gate.redelivered == 1, "ENS offset 6 came twice"
        # Nothing comes from a partition that holds more (a hole at its end): seek back to it.
        await gate.watch()
        assert sorted(consumer.seeks[1:]) == sorted([(ens, 8), (decl, 3)]), "each holds more than was delivered"
        gate.reset()
        assert await gate.admit(_events(ens, [5])) != [], "after a rebalance: from the committed offset again"

    asyncio.run(scenario())
    assert gate.seeks == 3


def test_a_watch_racing_the_first_admit_does_not_rewind_the_partition() -> None:
    """The timer's watch and the agent's first batch both look up where a partition starts; the
    slower look-up must not reset what the batch admitted meanwhile (that replayed the batch)."""
    ens = TP("t.ens", 0)
    consumer = _FakeConsumer({ens}, {ens: 3})
    app = SimpleNamespace(consumer=consumer)
    release = asyncio.Event()
    calls = 0

    async def committed(tps: list[TP]) -> dict[TP, int | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()  # the watch's look-up answers last
        return dict.fromkeys(tps, 0)

    gate = InOrderGate("ingest", app, {"t.ens"}, committed, stall_s=60.0)  # type: ignore[arg-type]

    async def scenario() -> None:
        watch = asyncio.create_task(gate.watch())
        await asyncio.sleep(0)  # the watch is waiting for its look-up
        first = await gate.admit(_events(ens, [0, 1, 2]))
        assert [e.message.offset for e in first] == [0, 1, 2]
        release.set()
        await watch
        later = await gate.admit(_events(ens, [3]))
        assert [e.message.offset for e in later] == [3], "offset 3 is next: 0-2 are not expected again"
        assert consumer.seeks == [] and gate.redelivered == 0

    asyncio.run(scenario())


def test_a_partition_read_ahead_does_not_make_a_deadline_fall_due_early() -> None:
    """A backlog read at uneven paces: partition Y is read 6 days ahead of partition X, which still
    holds e-AD X's report of receipt, on time. By the latest event time X's deadline would have
    passed; the worker's clock (the earliest partition's time, within a day of the latest) waits,
    and X is not flagged. The in-process pipeline, fed the same order as one stream, flags it."""
    arcs = [f"26FRK{i:016d}" for i in range(40)]
    side = {arc: (murmur2(arc.encode()) & 0x7FFFFFFF) % 2 for arc in arcs}
    on_x = [arc for arc in arcs if side[arc] == 0]
    on_y = [arc for arc in arcs if side[arc] == 1]
    x, w, ahead, receipt = receipt_behind_events(on_x[0], on_y[0], on_y[1])
    topology = Topology(ScoringPipeline(), partitions=2, batch=64)
    for phase in ([x, w], [ahead], [receipt]):
        topology.feed(_inputs(phase))
    assert [e.event_id for e in topology.fused_order()] == ["ead-x", "ead-w", "ahead", "receipt-x"]
    gaps = {orjson.loads(m.value)["subject_event_id"] for m in topology.topic(NAMES.scores)
            if orjson.loads(m.value)["reason_fields"].get("findings") == "no_receipt"}  # fmt: skip
    assert "ead-x" not in gaps
    one_stream = ScoringPipeline()
    flagged = [s for e in topology.fused_order() for s in one_stream.process(e).scores
               if s.reason_fields.get("findings") == "no_receipt"]  # fmt: skip
    assert {s.subject_event_id for s in flagged} == {"ead-x", "ead-w"}  # the latest time passed both deadlines
