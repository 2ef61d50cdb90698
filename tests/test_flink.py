"""The PyFlink job (:mod:`vigie.streams.flink_job`): same scores as in process, exactly once, deadline timers.

The integration tests run the job on a local MiniCluster (Java 17, the Flink Kafka connector
jar from ``deploy/jars/flink``) against the session's real Kafka broker. Flink takes tens of
seconds to start, so each integration test is one job run (or one run and one restore)
with many assertions. Equivalence with the in-process runner is checked on one input
partition with parallelism 1: that is the setting where both see the events in one order.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.factories import MemorySink, excise, receipt_behind_events, timer_events
from vigie.operators.deadlines import deadline_rule, wake_up_ms
from vigie.operators.excise import ExciseDetector, ExciseRecord, ExciseState
from vigie.schemas import Alert, DeadLetter, EventRejected, RiskScore, dead_letter, decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.sinks.chdb_sink import ChdbSink
from vigie.streams.flink_cli import SinkLoader, flink_app
from vigie.streams.flink_job import (
    EventCore,
    FlinkJobSettings,
    PipelineCore,
    build_job,
    dead_letter_row,
    flink_configuration,
    latest_checkpoint,
    make_detectors,
    make_pipeline,
    runtime_fed,
)
from vigie.streams.kafka_dev import KafkaBroker
from vigie.streams.runner import InProcessRunner

DETECTORS = ("undervaluation", "ens_pre_arrival", "excise")
"""Keyed detectors (undervaluation, excise) and a runtime-fed one (ENS pre-arrival: ENS link, feedback)."""


# --------------------------------------------------------------------------------------------
# Without a cluster
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["noisy-or", "learned"])
def test_stand_in_pipeline_gives_the_in_process_results_whatever_order_unit_scores_arrive(fusion: str) -> None:
    """The pipeline stage's logic: keyed units scored on their own (state through to_bytes/from_bytes),
    gathered back in any order, then fused by the pipeline with stand-ins: identical results."""
    import random

    settings = FlinkJobSettings(detectors=DETECTORS, fusion=fusion)  # type: ignore[arg-type]
    events = [e for e, _ in generate(GeneratorConfig(seed=2, duration_hours=0.4))]
    reference = make_pipeline(settings)
    reference.timers = None  # the split layout's deadlines are its score stage's Flink timers (tested below)
    expected = [reference.process(e) for e in events]

    keyed = [d for d in make_detectors(DETECTORS) if not runtime_fed(d)]
    assert {d.name for d in keyed} == {"undervaluation", "excise"}
    states: dict[str, bytes] = {}
    gathered: list[list[tuple[str, int, RiskScore | None]]] = []
    for event in events:
        results = []
        for detector in keyed:
            for index, (key, unit) in enumerate(detector.units(event)):
                route = f"{detector.name}/{key}"
                raw = states.get(route)
                state = detector.new_state() if raw is None else detector.state_type.from_bytes(raw)
                score = detector.score_one(unit, state)
                detector.learn_one(unit, state)
                states[route] = state.to_bytes()
                results.append((detector.name, index, score))
        random.Random(len(gathered)).shuffle(results)  # as if scored by several subtasks
        gathered.append(results)

    core = PipelineCore(settings)
    for event, results, want in zip(events, gathered, expected, strict=True):
        by_detector: dict[str, dict[int, RiskScore | None]] = {}
        for name, index, score in results:
            by_detector.setdefault(name, {})[index] = score
        scores = {n: [s for _, s in sorted(b.items()) if s is not None] for n, b in by_detector.items()}
        got = core.process(event, scores)
        assert [encode_event(s) for s in got.scores] == [encode_event(s) for s in want.scores]
        assert (encode_event(got.alert) if got.alert else None) == (encode_event(want.alert) if want.alert else None)
    assert sum(len(r.scores) for r in expected) > len(events)  # the comparison covered real scores
    assert sum(r.alert is not None for r in expected) > 0
    # A deadline score (no event of its own) is fused with its office's queue by the same fusion.
    gap = RiskScore.model_construct(**{**expected[-1].scores[0].__dict__, "subject_type": "excise",
                                       "score": 0.99, "office": "unknown"})  # fmt: skip
    alert = core.expired([gap])
    assert alert is None or (alert.subject_type == "excise" and alert.office == "unknown")
    if fusion == "noisy-or":
        assert alert is not None and alert.fused_risk >= 0.99


def _outputs(core: EventCore, events: list[Any]) -> list[bytes]:
    """Everything a fused core emits for ``events``, encoded, in its order."""
    out: list[bytes] = []
    for event in events:
        result = core.process(event)
        out += [encode_event(r) for r in [*result.scores, *result.alerts]]
    return out


@pytest.mark.parametrize("fusion", ["noisy-or", "learned"])
def test_fused_core_scores_as_in_process_fires_deadlines_and_restores_identically(fusion: str) -> None:
    settings = FlinkJobSettings(detectors=DETECTORS, fusion=fusion, out_of_orderness_s=600.0)  # type: ignore[arg-type]
    events = [e for e, _ in generate(GeneratorConfig(seed=17, duration_hours=1.5))]
    events += timer_events(max(events, key=lambda e: e.event_time))
    reference = make_pipeline(settings)
    assert reference.timers is not None and reference.timers.lag_ms == 600_000  # the job's lag
    expected = [reference.process(e) for e in events]

    core = EventCore(settings)
    overdue: dict[str, list[RiskScore]] = {}
    for event, want in zip(events, expected, strict=True):
        result = core.process(event)
        assert [encode_event(s) for s in result.scores] == [encode_event(s) for s in want.scores]
        assert [encode_event(a) for a in result.alerts] == [encode_event(a) for a in want.alerts]
        for score in result.scores:
            if score.reason_fields.get("findings") == "no_receipt":
                overdue.setdefault(score.subject_event_id, []).append(score)
    # The clock record 8 days on makes e-AD A overdue (nothing came from its consignor); B was received.
    assert "timer-ead-a" in overdue and "timer-ead-b" not in overdue
    (gap,) = overdue["timer-ead-a"]  # reported once
    assert gap.detector == "excise" and gap.score > 0.9 and "no report of receipt" in gap.reason
    assert core.pipeline.timers is not None
    assert not any(key == "ledger:FRTIMERA00001" for _, _, key in core.pipeline.timers.due)

    # Restored mid-stream from its bytes (pending deadlines included), a core continues identically.
    middle = len(events) // 2
    first, second = EventCore(settings), EventCore(settings)
    _outputs(first, events[:middle])
    assert first.pipeline.timers is not None and second.pipeline.timers is not None
    pending = first.pipeline.timers.pending
    second.load_state_bytes(first.state_bytes())
    assert second.pipeline.timers.pending == pending > 0
    assert second.pipeline.timers.stream_time_ms == first.pipeline.timers.stream_time_ms
    rest = _outputs(first, events[middle:])
    assert _outputs(second, events[middle:]) == rest
    assert any(b"timer-ead-a" in line for line in rest)


def test_fused_core_clock_waits_for_a_partition_read_behind_and_is_restored() -> None:
    """As the Faust workers: given each event's source, the fused core's deadline clock follows the
    slowest partition, so e-AD X's on-time receipt, read last from its partition, is not preceded by a
    finding that X is overdue; without sources (one stream) the latest event time would flag it."""
    settings = FlinkJobSettings(detectors=DETECTORS)
    events = receipt_behind_events("26FRK0000000000000001", "26FRK0000000000000002", "26FRK0000000000000003")
    sources = ["t.excise:0", "t.excise:1", "t.excise:1", "t.excise:0"]

    def overdue(core: EventCore, with_sources: bool) -> set[str]:
        found = set()
        for event, source in zip(events, sources, strict=True):
            for score in core.process(event, source if with_sources else None).scores:
                if score.reason_fields.get("findings") == "no_receipt":
                    found.add(score.subject_event_id)
        return found

    core = EventCore(settings)
    assert overdue(core, with_sources=True) == set()
    assert overdue(EventCore(settings), with_sources=False) == {"ead-x", "ead-w"}
    restored = EventCore(settings)
    restored.load_state_bytes(core.state_bytes())
    assert restored.clock.to_dict() == core.clock.to_dict() and restored.state_bytes() == core.state_bytes()
    legacy = EventCore(settings)  # a snapshot from before the clock: the pipeline's state alone
    legacy.load_state_bytes(orjson.dumps(core.pipeline.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
    assert legacy.pipeline.state_dict() == core.pipeline.state_dict() and legacy.clock.latest == {}


def test_excise_deadline_rule_reports_an_open_e_ad_at_its_deadline_once() -> None:
    detector = ExciseDetector()
    rule = deadline_rule(detector)
    assert rule is detector  # the detector's own public deadlines/expire
    open_ead = excise(event_id="ead-open", arc="26FRA1B2C3D4E5F6G7H81")
    received = excise(event_id="ead-received", arc="26FRA1B2C3D4E5F6G7H82")
    receipt = excise(
        event_id="receipt", record_type="report_of_receipt", arc="26FRA1B2C3D4E5F6G7H82",
        event_time=(received.event_time + timedelta(days=2)).isoformat(), received_quantity=1000.0,
    )  # fmt: skip
    state = ExciseState()
    key = f"ledger:{open_ead.consignor_excise_number}"
    deadlines: list[float] = []
    for event in (open_ead, received, receipt):
        for unit_key, unit in detector.units(event):
            if unit_key == key:
                detector.score_one(unit, state)
                detector.learn_one(unit, state)
                deadlines += rule.deadlines(key, unit, state)
    due = open_ead.event_time.timestamp() + detector.receipt_deadline_s
    assert deadlines == [due, due]  # one per e-AD; the receipt asks for nothing
    just_before = open_ead.event_time + timedelta(seconds=detector.receipt_deadline_s - 1)
    assert rule.expire(key, state, just_before) == []
    at_deadline = open_ead.event_time + timedelta(seconds=detector.receipt_deadline_s + 0.001)
    (score,) = rule.expire(key, state, at_deadline)
    assert score.subject_event_id == "ead-open" and score.subject_type == "excise" and score.score > 0.9
    assert "no report of receipt or export" in score.reason
    # The id is the one the detector gives when a later record of the consignor reveals the gap.
    later = excise(event_id="later", arc="26FRA1B2C3D4E5F6G7H83",
                   event_time=(at_deadline + timedelta(hours=1)).isoformat())  # fmt: skip
    fresh = ExciseState()
    for event in (open_ead, received, receipt):
        for unit_key, unit in detector.units(event):
            if unit_key == key:
                detector.learn_one(unit, fresh)
    revealed = detector.score_one(ExciseRecord("ledger", later), fresh)
    assert revealed is not None and revealed.score_id == score.score_id
    assert rule.expire(key, state, at_deadline + timedelta(days=30)) == []  # reported once


def test_dead_letter_record_keeps_the_original_bytes_and_says_why() -> None:
    raw = b'{"event_type": "declaration", "event_id": "x"'
    try:
        decode_event(raw)
    except EventRejected as rejected:
        row = dead_letter_row(raw, "vigie.declarations", 2, 41, rejected)
    expected = dead_letter(raw, "kafka:vigie.declarations:2:41", EventRejected("x"))
    assert row[0] == expected.dead_letter_id.encode()  # same id as the Faust workers and the file runner
    assert row[1] == raw
    headers = row[2]
    assert headers["vigie.source"] == b"kafka:vigie.declarations:2:41"
    assert b"EOF" in headers["vigie.reason"] and headers["vigie.raw-size"] == str(len(raw)).encode()


def test_latest_checkpoint_picks_the_newest_complete_one(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for job, n, complete in (("a" * 32, 3, True), ("a" * 32, 4, False), ("b" * 32, 2, True)):
        chk = tmp_path / job / f"chk-{n}"
        chk.mkdir(parents=True)
        if complete:
            (chk / "_metadata").write_bytes(b"x")
        time.sleep(0.01)
    assert latest_checkpoint(tmp_path) == tmp_path / ("b" * 32) / "chk-2"  # newest complete, across jobs
    assert latest_checkpoint(tmp_path / ("a" * 32)) == tmp_path / ("a" * 32) / "chk-3"
    assert latest_checkpoint(tmp_path / ("a" * 32) / "chk-4") is None


def test_flink_configuration_binds_loopback_and_retains_checkpoints(tmp_path: Path) -> None:
    conf = flink_configuration(FlinkJobSettings(checkpoint_dir=tmp_path / "chk", from_checkpoint=tmp_path / "chk-7"))
    assert conf["jobmanager.bind-host"] == conf["taskmanager.bind-host"] == conf["rest.bind-address"] == "127.0.0.1"
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert conf["execution.checkpointing.dir"] == (tmp_path / "chk").resolve().as_uri()
    assert conf["execution.state-recovery.path"].endswith("/chk-7")
    assert conf["python.execution-mode"] == "thread"
    assert "flink-sql-connector-kafka" in conf["pipeline.jars"]
    off = flink_configuration(FlinkJobSettings(checkpoint_interval_ms=0))
    assert "execution.checkpointing.interval" not in off


# --------------------------------------------------------------------------------------------
# On the MiniCluster, against real Kafka
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def flink_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Flink's log directory and the JVM heap for this test process, set before the gateway JVM starts
    (it starts once per process and keeps them)."""
    if os.environ.get("VIGIE_SKIP_FLINK_TESTS") == "1":
        pytest.skip("VIGIE_SKIP_FLINK_TESTS=1")
    log_dir = tmp_path_factory.mktemp("flink-log")
    saved = {name: os.environ.get(name) for name in ("FLINK_LOG_DIR", "JVM_ARGS")}
    os.environ["FLINK_LOG_DIR"] = str(log_dir)
    os.environ.setdefault("JVM_ARGS", "-Xmx1g")
    try:
        yield Path(os.environ["FLINK_LOG_DIR"])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _topics(broker: KafkaBroker, prefix: str, inputs: list[str]) -> list[str]:
    names = [*inputs, *(prefix + kind for kind in ("scores", "alerts", "dead-letter"))]
    broker.create_topics(names, partitions=1, config={"max.message.bytes": 8 * 1024 * 1024})
    return names


def _read(bootstrap: str, topics: list[str], *, until: Any = None, idle_s: float = 3.0, timeout_s: float = 120.0,
          isolation: str = "read_committed") -> dict[str, list[Any]]:  # fmt: skip
    """Messages per topic, read from the start until ``until(found)`` holds (or ``idle_s`` without news)."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "isolation.level": isolation})  # fmt: skip
    found: dict[str, list[Any]] = {t: [] for t in topics}
    consumer.subscribe(topics)
    deadline = time.monotonic() + timeout_s
    last_news = time.monotonic()
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                if until is None and time.monotonic() - last_news > idle_s:
                    break
                if until is not None and until(found):
                    break
                continue
            found[message.topic()].append(message)
            last_news = time.monotonic()
    finally:
        consumer.close()
    return found


def _overdue(score: bytes) -> bool:
    """An encoded score is an e-AD's missed receipt deadline (found by a timer or a later record)."""
    return json.loads(score)["reason_fields"].get("findings") == "no_receipt"


def _publish(bootstrap: str, records: list[tuple[str, bytes | None, bytes]], pause_every: int = 0,
             pause_s: float = 0.0) -> None:  # fmt: skip
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for n, (topic, key, value) in enumerate(records, start=1):
        producer.produce(topic, key=key, value=value)
        if pause_every and n % pause_every == 0:
            producer.flush()
            time.sleep(pause_s)
    assert producer.flush(30) == 0


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["fused", "split"])
def test_flink_job_scores_like_the_in_process_runner(
    kafka_broker: KafkaBroker, flink_log_dir: Path, tmp_path: Path, layout: str
) -> None:
    """One bounded run on one input partition: scores and alerts event by event as the in-process
    runner, dead letters with reason and bytes, injected frauds alerted, a deadline gap alerted."""
    pairs = list(generate(GeneratorConfig(seed=11, duration_hours=1.5)))
    events = [e for e, _ in pairs]
    truth = {t.event_id: t for _, t in pairs if t is not None}
    timed = timer_events(max(events, key=lambda e: e.event_time))
    lines = [encode_event(e) for e in [*events, *timed]]
    bad = {
        7: b'{"event_type": "declaration", "event_id": "cut',
        40: b"\x89PNG\r\n\x1a\n\xff binary",
        300: lines[2].replace(b'"schema_version":"1.0"', b'"schema_version":"9.0"'),
    }
    for position in sorted(bad):
        lines.insert(position, bad[position])
    prefix = f"f{uuid.uuid4().hex[:8]}."
    topic = prefix + "events"
    created = _topics(kafka_broker, prefix, [topic])
    try:
        _publish(kafka_broker.bootstrap_servers, [(topic, None, line) for line in lines])
        settings = FlinkJobSettings(
            bootstrap=kafka_broker.bootstrap_servers, prefix=prefix, input_topic=topic, bounded=True,
            checkpoint_interval_ms=2000, checkpoint_dir=tmp_path / "chk", detectors=DETECTORS, snapshot_every=700,
            group_id=f"vigie-flink-{prefix}", transactional_id_prefix=f"vigie-flink-{prefix}", layout=layout,
        )  # fmt: skip
        assert settings.fused == (layout == "fused")
        build_job(settings).execute()
        out = _read(kafka_broker.bootstrap_servers, [prefix + "scores", prefix + "alerts", prefix + "dead-letter"])
        # `--sink chdb:PATH`: the committed outputs and the valid input events, into embedded ClickHouse.
        store = ChdbSink(tmp_path / "clickhouse")
        loader = SinkLoader(settings, store, drain_quiet_s=2.0)
        loader.stop()  # the job has ended: load everything there is, then return
        loader.run()
        stored = store.query(
            "SELECT (SELECT count() FROM vigie.scores FINAL) AS scores, (SELECT count() FROM vigie.alerts FINAL) AS"
            " alerts, (SELECT count() FROM vigie.dead_letters FINAL) AS letters, (SELECT count() FROM"
            " vigie.declarations FINAL) AS declarations"
        )[0]
        # The loader's health samples (the boards' "Runtimes" row): what it loaded, in total.
        health = store.query(
            "SELECT sum(events) AS events, sum(scores) AS scores, sum(alerts) AS alerts, sum(dead_letters) AS letters"
            " FROM vigie.pipeline_metrics FINAL WHERE component = 'flink'"
        )[0]
        store.close()
    finally:
        kafka_broker.delete_topics(created)
    assert loader.error is None
    assert stored == {
        "scores": len(out[prefix + "scores"]),
        "alerts": len(out[prefix + "alerts"]),
        "letters": len(bad),
        "declarations": sum(1 for e in events if e.event_type == "declaration"),
    }
    assert health == {
        "events": len(lines) - len(bad), "scores": stored["scores"], "alerts": stored["alerts"], "letters": len(bad)
    }  # fmt: skip

    # The in-process runner on the same lines, in the same order.
    sink = MemorySink()
    pipeline = make_pipeline(settings)
    InProcessRunner(pipeline, sink).run("file", lines)
    want_scores = [encode_event(r) for r in sink.records if isinstance(r, RiskScore)]
    want_alerts = [encode_event(r) for r in sink.records if isinstance(r, Alert)]
    want_letters = [r for r in sink.records if isinstance(r, DeadLetter)]

    score_messages = out[prefix + "scores"]
    got_scores = [m.value() for m in score_messages]
    got_alerts = [m.value() for m in out[prefix + "alerts"]]
    if layout == "fused":  # the runner's own pipeline, deadline timers included: the same records, in order
        assert got_scores == want_scores and got_alerts == want_alerts
    # Event by event, every score the in-process runner gave, in its order; the deadlines' (the split
    # layout's Flink timers fire where its watermark passes them) the same, in some order.
    assert [s for s in got_scores if not _overdue(s)] == [s for s in want_scores if not _overdue(s)]
    assert sorted(s for s in got_scores if _overdue(s)) == sorted(s for s in want_scores if _overdue(s))
    assert len(want_scores) > 2 * len(events)  # three detectors, several items: real scores were compared
    for message in score_messages:  # keyed by subject, id in a header
        body = json.loads(message.value())
        assert message.key() == body["subject_event_id"].encode()
        assert message.headers() == [("vigie.id", body["score_id"].encode())]
    scored = Counter(json.loads(s)["subject_event_id"] for s in want_scores)
    assert len(scored) > 0.9 * sum(1 for e in events if e.event_type in ("ens", "declaration"))

    # Deadlines: every e-AD of the input with no receipt or export whose deadline the stream's time
    # passed, and only those, once each; e-AD A among them, B (received) not.
    detector = next(d for d in pipeline.detectors if d.name == "excise")
    clock_ms = int(timed[-1].event_time.timestamp() * 1000)
    watermark_ms = clock_ms - int(settings.out_of_orderness_s * 1000) - 1
    records = [e for e in [*events, *timed] if e.event_type == "excise"]
    closed = {e.arc for e in records if e.record_type in ("report_of_receipt", "export")}
    overdue = {
        e.event_id
        for e in records
        if e.record_type == "e_ad" and e.arc is not None and e.arc not in closed
        and wake_up_ms(e.event_time.timestamp() + detector.receipt_deadline_s) <= watermark_ms
    }  # fmt: skip
    deadline_scores = [json.loads(s) for s in got_scores if _overdue(s)]
    assert sorted(s["subject_event_id"] for s in deadline_scores) == sorted(overdue)
    assert "timer-ead-a" in overdue and "timer-ead-b" not in overdue
    (gap,) = [s for s in deadline_scores if s["subject_event_id"] == "timer-ead-a"]
    due = timed[0].event_time + timedelta(seconds=detector.receipt_deadline_s)
    assert gap["detector"] == "excise" and gap["score"] > 0.9 and "no report of receipt" in gap["reason"]
    assert abs(RiskScore.model_validate(gap).event_time - due) < timedelta(seconds=1)  # at the deadline itself

    for message in out[prefix + "alerts"]:  # keyed by office, id in a header (as the scores)
        body = json.loads(message.value())
        assert message.key() == body["office"].encode()
        assert message.headers() == [("vigie.id", body["alert_id"].encode())]
    deadline_subjects = {s["subject_event_id"] for s in deadline_scores}
    assert [a for a in got_alerts if json.loads(a)["subject_event_id"] not in deadline_subjects] == [
        a for a in want_alerts if json.loads(a)["subject_event_id"] not in deadline_subjects
    ]
    gap_alerts = [json.loads(a) for a in got_alerts if json.loads(a)["subject_event_id"] == "timer-ead-a"]
    assert len(gap_alerts) == 1 and gap_alerts[0]["subject_type"] == "excise"

    # Injected frauds are alerted well above their base rate.
    declarations = [e for e in events if e.event_type == "declaration"]
    base_rate = sum(e.event_id in truth for e in declarations) / len(declarations)
    alerted = [json.loads(a)["subject_event_id"] for a in want_alerts]
    hits = sum(a in truth for a in alerted)
    assert hits >= 3 and hits / len(alerted) >= 3 * base_rate, (hits, len(alerted), base_rate)

    letters = out[prefix + "dead-letter"]
    assert len(letters) == len(bad) == len(want_letters)
    by_offset = {int(dict(m.headers())["vigie.offset"]): m for m in letters}
    assert sorted(by_offset) == sorted(bad)  # the input offsets of the bad lines
    for position, raw in bad.items():
        message = by_offset[position]
        headers = dict(message.headers())
        assert message.value() == raw
        letter_id = dead_letter(raw, f"kafka:{topic}:0:{position}", EventRejected("")).dead_letter_id
        assert message.key() == letter_id.encode()
        assert headers["vigie.reason"]
    assert b"EOF" in dict(by_offset[7].headers())["vigie.reason"]
    assert b"UTF-8" in dict(by_offset[40].headers())["vigie.reason"]
    assert dict(by_offset[300].headers())["vigie.field"] == b"schema_version"


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["fused", "split"])
def test_flink_job_resumes_from_its_last_checkpoint_exactly_once(
    kafka_broker: KafkaBroker, flink_log_dir: Path, tmp_path: Path, layout: str
) -> None:
    """The job is cancelled while events are still coming in, then restored from its last retained
    checkpoint: the committed outputs hold every score and alert once, in the in-process runner's
    order and with its values (keyed states, the pipeline stage's snapshot + log and the events in
    flight were all restored)."""
    from confluent_kafka import Consumer, TopicPartition

    events = [e for e, _ in generate(GeneratorConfig(seed=5, duration_hours=1.5))]
    lines = [encode_event(e) for e in events]
    lines.insert(len(lines) // 2, b'{"truncated": ')
    lines.insert(len(lines) // 2 + 7, b"")  # an empty message
    prefix = f"r{uuid.uuid4().hex[:8]}."
    topic = prefix + "events"
    created = _topics(kafka_broker, prefix, [topic])
    bootstrap = kafka_broker.bootstrap_servers
    settings = FlinkJobSettings(
        bootstrap=bootstrap, prefix=prefix, input_topic=topic, checkpoint_interval_ms=1000,
        checkpoint_dir=tmp_path / "chk", detectors=DETECTORS, snapshot_every=300, group_id=f"vigie-flink-{prefix}",
        transactional_id_prefix=f"vigie-flink-{prefix}", layout=layout,
    )  # fmt: skip
    outputs = [prefix + "scores", prefix + "alerts", prefix + "dead-letter"]

    sink = MemorySink()
    InProcessRunner(make_pipeline(settings), sink).run("file", lines)
    want_scores = [encode_event(r) for r in sink.records if isinstance(r, RiskScore)]
    want_alerts = [encode_event(r) for r in sink.records if isinstance(r, Alert)]

    def complete(found: dict[str, list[Any]]) -> bool:
        return len(found[prefix + "scores"]) >= len(want_scores) and len(found[prefix + "alerts"]) >= len(want_alerts)

    try:
        first = len(lines) // 3
        _publish(bootstrap, [(topic, None, line) for line in lines[:first]])
        client = build_job(settings).submit()
        publisher = threading.Thread(
            target=_publish, args=(bootstrap, [(topic, None, line) for line in lines[first:]], 100, 1.0)
        )
        publisher.start()
        committed = 0
        group = Consumer({"bootstrap.servers": bootstrap, "group.id": settings.group_id})
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # mid-stream: checkpoints done, part of the input committed
            chk = latest_checkpoint(settings.checkpoint_dir)
            (position,) = group.committed([TopicPartition(topic, 0)], timeout=10)
            committed = max(position.offset, 0)
            if chk is not None and int(chk.name.split("-")[1]) >= 3 and committed >= first // 2:
                break
            time.sleep(0.5)
        client.cancel().result()
        group.close()
        publisher.join()
        assert 0 < committed < len(lines), committed  # cancelled with input left to score

        restore = latest_checkpoint(settings.checkpoint_dir)
        assert restore is not None
        client = build_job(dataclasses.replace(settings, from_checkpoint=restore)).submit()
        _read(bootstrap, outputs, until=complete, timeout_s=240)
        time.sleep(3)  # a few more checkpoints: a duplicate would be committed by now
        out = _read(bootstrap, outputs, idle_s=3)
        client.cancel().result()
    finally:
        kafka_broker.delete_topics(created)

    got_scores = [m.value() for m in out[prefix + "scores"]]
    ids = Counter(json.loads(s)["score_id"] for s in got_scores)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]  # none twice
    assert got_scores == want_scores  # none missing, same values, same order
    assert [m.value() for m in out[prefix + "alerts"]] == want_alerts
    assert len(want_alerts) >= 5
    letters = out[prefix + "dead-letter"]
    assert sorted(m.value() for m in letters) == [b"", b'{"truncated": ']
    # The pipeline stage came back from its snapshot plus the log of what it processed after it.
    python_log = (flink_log_dir / "vigie-flink-python.log").read_text()
    pattern = rf"\(group {re.escape(settings.group_id)}\) restored: snapshot loaded, (\d+) event"
    restored = re.search(pattern, python_log)
    assert restored is not None and int(restored.group(1)) > 0, python_log[-2000:]


# --------------------------------------------------------------------------------------------
# The compose file's flink-job command, on a standalone session cluster
# --------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "deploy" / "docker-compose.yml"
IMAGE_VIGIE_HOME = "/opt/vigie"
"""Where deploy/Dockerfile installs this repository: paths under it are this checkout here."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _entrypoint_properties(text: str) -> dict[str, str]:
    """FLINK_PROPERTIES as the Flink image's entrypoint applies them: ``key: value`` lines, blanks removed."""
    properties: dict[str, str] = {}
    for line in text.splitlines():
        compact = "".join(line.split())
        if compact:
            key, _, value = compact.partition(":")
            properties[key] = value
    return properties


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flink's nested config.yaml as flat ``a.b.c`` keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclasses.dataclass
class SessionCluster:
    """A running standalone session cluster: its REST port, checkpoint storage and the environment of its tools."""

    dist: Path
    rest_port: int
    checkpoints: Path
    env: dict[str, str]

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}", timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionCluster]:
    """The compose file's Flink session cluster on this machine: a job manager and a task manager, each
    its own JVM, from PyFlink's bundled distribution (the same Flink release as the image), configured
    with the compose file's FLINK_PROPERTIES. Only addresses (loopback, free ports) and the checkpoint
    volume are mapped; it is ready when the compose job manager's own healthcheck passes."""
    if os.environ.get("VIGIE_SKIP_FLINK_TESTS") == "1":
        pytest.skip("VIGIE_SKIP_FLINK_TESTS=1")
    import pyflink

    dist = Path(pyflink.__file__).resolve().parent
    work = tmp_path_factory.mktemp("flink-session")
    conf_dir, log_dir, checkpoints = work / "conf", work / "log", work / "checkpoints"
    for folder in (conf_dir, log_dir, checkpoints, work / "tmp"):
        folder.mkdir()
    for log_config in (dist / "conf").glob("log4j*.properties"):
        (conf_dir / log_config.name).write_bytes(log_config.read_bytes())
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    compose = _entrypoint_properties(services["jobmanager"]["environment"]["FLINK_PROPERTIES"])
    assert compose["execution.checkpointing.dir"] == "file:///flink-checkpoints"
    rest_port = _free_port()
    local = {
        "jobmanager.rpc.address": "127.0.0.1", "rest.address": "127.0.0.1", "jobmanager.bind-host": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1", "taskmanager.host": "127.0.0.1", "rest.bind-address": "127.0.0.1",
        "rest.port": str(rest_port), "jobmanager.rpc.port": str(_free_port()), "blob.server.port": str(_free_port()),
        "execution.checkpointing.dir": checkpoints.as_uri(), "io.tmp.dirs": str(work / "tmp"),
        "web.upload.dir": str(work / "tmp"),
    }  # fmt: skip
    defaults = _flat(yaml.safe_load((dist / "conf" / "config.yaml").read_text()))  # JVM options for Java 17
    config = {**defaults, **compose, **local}
    (conf_dir / "config.yaml").write_text(yaml.safe_dump({k: str(v) for k, v in config.items()}))
    env = {k: v for k, v in os.environ.items() if k not in ("JVM_ARGS", "PYFLINK_GATEWAY_PORT")}
    # As in the image: the virtual environment first on PATH (python3, and libpython for thread mode).
    env.update(FLINK_CONF_DIR=str(conf_dir), FLINK_LOG_DIR=str(log_dir),
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for role in ("jobmanager", "taskmanager"):  # the scripts exec the JVM: each Popen is its JVM
            with (log_dir / f"{role}.out").open("wb") as out:
                processes.append(subprocess.Popen([str(dist / "bin" / f"{role}.sh"), "start-foreground"], env=env,
                                                  stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
        healthcheck = services["jobmanager"]["healthcheck"]["test"]
        assert healthcheck[0] == "CMD"
        probe = [word.replace(":8081/", f":{rest_port}/") for word in healthcheck[1:]]
        deadline = time.monotonic() + 180
        while subprocess.run(probe, env=env, capture_output=True, check=False).returncode != 0:
            dead = [p.args for p in processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f.read_text()[-3000:] for f in sorted(log_dir.glob("*.out")))
                pytest.fail(f"the session cluster did not become healthy ({dead or 'timeout'}):\n{logs}")
            time.sleep(2)
        yield SessionCluster(dist, rest_port, checkpoints, env)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _compose_command_here(argv: list[str], cluster: SessionCluster, values: dict[str, str]) -> list[str]:
    """The compose command with the image's Flink CLI and paths, and the values of ``values``' options, mapped here."""
    assert argv[0] == "flink", argv
    mapped = [str(cluster.dist / "bin" / "flink")]
    for previous, word in itertools.pairwise(argv):
        if previous in values:
            word = values[previous]
        elif word.startswith(IMAGE_VIGIE_HOME + "/"):
            word = str(REPO / word.removeprefix(IMAGE_VIGIE_HOME + "/"))
        mapped.append(word)
    return mapped


@pytest.mark.integration
def test_compose_flink_job_runs_the_job_on_the_session_cluster(
    kafka_broker: KafkaBroker, session_cluster: SessionCluster, tmp_path: Path
) -> None:
    """The compose file's `flink-job` command as written, its addresses mapped to this machine, with
    --bounded, a topic prefix and a consumer group appended (so that it ends and stays apart): Flink's
    CLI submits the PyFlink job to the job manager's REST endpoint, the task manager runs it at the
    command's parallelism, its scores are the in-process pipeline's, and the attached client loads
    the committed outputs into the sink before it exits."""
    from vigie.streams.flink_job import kafka_connector_jars
    from vigie.streams.topics import INPUT_KINDS, TopicNames, key_for

    kafka_connector_jars()  # deploy/jars/flink, as the image's build fetches it
    events = [e for e, _ in generate(GeneratorConfig(seed=3, duration_hours=0.5))]
    names = TopicNames(f"c{uuid.uuid4().hex[:8]}.")
    kind_of = {event_type: kind for kind, event_type in INPUT_KINDS.items()}
    bad = b'{"event_type": "declaration", "event_id": "cut'
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["flink-job"]["command"]
    bootstrap = kafka_broker.bootstrap_servers
    argv = _compose_command_here(command, session_cluster, {
        "-m": f"127.0.0.1:{session_cluster.rest_port}", "--bootstrap": bootstrap,
        "--sink": f"chdb:{tmp_path / 'clickhouse'}", "--checkpoint-dir": str(session_cluster.checkpoints),
    })  # fmt: skip
    jar = Path(argv[argv.index("-j") + 1])
    assert jar.is_file(), f"the compose file ships {jar.name}, not what deploy/pom.xml fetches"
    argv += ["--bounded", "--prefix", names.prefix, "--group-id", f"vigie-{names.prefix}"]
    created = _topics(kafka_broker, names.prefix, names.inputs)
    try:
        records = [(names.name(kind_of[e.event_type]), key_for(e), encode_event(e)) for e in events]
        _publish(bootstrap, [*records, (names.declarations, None, bad)])
        run = subprocess.run(argv, env=session_cluster.env, cwd=tmp_path, capture_output=True, timeout=600)
        output = (run.stdout + run.stderr).decode(errors="replace")
        assert run.returncode == 0, output[-6000:]
        out = _read(bootstrap, [names.scores, names.alerts, names.dead_letter])
    finally:
        kafka_broker.delete_topics(created)

    # The job ran on the session cluster (a MiniCluster inside the client would leave no trace there).
    (job,) = session_cluster.rest("/jobs/overview")["jobs"]
    assert (job["name"], job["state"]) == ("vigie-scoring", "FINISHED")
    parallelism = int(command[command.index("--parallelism") + 1])
    vertices = session_cluster.rest(f"/jobs/{job['jid']}")["vertices"]
    assert max(v["parallelism"] for v in vertices) == parallelism
    assert f"job {job['jid']} submitted" in output and "job finished" in output

    # Scores: the in-process pipeline's, each once. The four topics are read interleaved, so what depends on
    # the order across topics (ENS links, outcome feedback) may differ; undervaluation, keyed on declarations
    # alone (one partition, in order at any parallelism), gives the same values.
    reference = make_pipeline(FlinkJobSettings())
    want = {s.score_id: encode_event(s) for e in events for s in reference.process(e).scores}
    got = {json.loads(m.value())["score_id"]: m.value() for m in out[names.scores]}
    assert len(got) == len(out[names.scores]) and got.keys() == want.keys()
    undervaluation = [i for i, v in want.items() if json.loads(v)["detector"] == "undervaluation"]
    assert len(undervaluation) > len(events) / 2  # real scores are compared
    assert [got[i] for i in undervaluation] == [want[i] for i in undervaluation]
    assert out[names.alerts]
    (letter,) = out[names.dead_letter]
    assert letter.value() == bad and b"EOF" in dict(letter.headers())["vigie.reason"]

    # The attached client loaded the committed outputs into the sink, then exited with the job.
    store = ChdbSink(tmp_path / "clickhouse")
    try:
        stored = store.query(
            "SELECT (SELECT count() FROM vigie.scores FINAL) AS scores, (SELECT count() FROM vigie.alerts FINAL)"
            " AS alerts, (SELECT count() FROM vigie.dead_letters FINAL) AS letters"
        )[0]
    finally:
        store.close()
    assert stored == {"scores": len(got), "alerts": len(out[names.alerts]), "letters": 1}


def test_parse_stage_checks_the_topic_and_splits_keyed_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse function on the four-topic layout (called directly, no cluster)."""
    from pyflink.common import Row

    from tests.factories import declaration, ens, outcome
    from vigie.streams import flink_job
    from vigie.streams.flink_job import ParseAndSplit

    monkeypatch.setattr(flink_job, "worker_logging", lambda: None)  # this process's logging is not a worker's

    parse = ParseAndSplit(FlinkJobSettings(prefix="p.", detectors=DETECTORS))
    parse.open(None)  # type: ignore[arg-type]
    decl = declaration()
    out = list(parse.process_element(Row(encode_event(decl), "p.declarations", 0, 12), None))  # type: ignore[arg-type]
    # Each record leaves as Row(the score stage's key, the record), keyed on that first field by Flink.
    assert all(isinstance(o, Row) and o[0] == o[1][1] for o in out)
    units = [o[1] for o in out if o[1][0] == "u"]
    # Keyed detectors only (the ENS pre-arrival detector runs in the pipeline stage), each unit on its state key.
    assert [(u[1], u[4], u[5]) for u in units] == [
        ("undervaluation/CN:61", "undervaluation", 0),
        (f"excise/ens:{decl.ens_reference}", "excise", 0),
    ]
    assert units[0][2] == int(decl.event_time.timestamp() * 1000) and units[0][3] == "p.declarations:0:12"
    # The envelope (the event's bytes, its unit count) rides on the last unit; an event without units sends it alone.
    assert [u[7] for u in units] == [None, (encode_event(decl), 2)]
    result = outcome()
    (alone,) = parse.process_element(Row(encode_event(result), "p.outcomes", 0, 3), None)  # type: ignore[arg-type]
    assert alone[0] == "event/p.outcomes:0:3"
    assert alone[1] == ("e", "event/p.outcomes:0:3", int(result.event_time.timestamp() * 1000), "p.outcomes:0:3",
                     encode_event(result), 0)  # fmt: skip
    wrong = list(parse.process_element(Row(encode_event(ens()), "p.declarations", 0, 13), None))  # type: ignore[arg-type]
    (letter,) = [o[1] for o in wrong]
    assert b"does not belong on topic" in letter[2]["vigie.reason"] and letter[1] == encode_event(ens())


class _KeyedStore:
    """Flink keyed state for the functions called directly: one value or list per (state name, current key)."""

    def __init__(self) -> None:
        self.key = ""
        self.values: dict[tuple[str, str], Any] = {}
        self.lists: dict[tuple[str, str], list[Any]] = {}

    def copy(self) -> _KeyedStore:
        """What a checkpoint holds (the pickles Flink would keep: copies, not the live objects)."""
        import pickle

        other = _KeyedStore()
        other.values = pickle.loads(pickle.dumps(self.values))
        other.lists = pickle.loads(pickle.dumps(self.lists))
        return other


class _Value:
    def __init__(self, store: _KeyedStore, name: str) -> None:
        self.store, self.name = store, name

    def value(self) -> Any:
        return self.store.values.get((self.name, self.store.key))

    def update(self, value: Any) -> None:
        self.store.values[(self.name, self.store.key)] = value


class _List(_Value):
    def get(self) -> list[Any]:
        return list(self.store.lists.get((self.name, self.store.key), []))

    def add(self, value: Any) -> None:
        self.store.lists.setdefault((self.name, self.store.key), []).append(value)

    def clear(self) -> None:
        self.store.lists.pop((self.name, self.store.key), None)


class _Context:
    """Runtime context and process-function context at once (what the functions call)."""

    def __init__(self, store: _KeyedStore) -> None:
        self.store = store
        self.timers: set[tuple[str, int]] = set()
        self.watermark = -(2**63)

    def get_state(self, descriptor: Any) -> _Value:
        return _Value(self.store, descriptor.name)

    def get_list_state(self, descriptor: Any) -> _List:
        return _List(self.store, descriptor.name)

    def timer_service(self) -> _Context:
        return self

    def register_event_time_timer(self, timestamp: int) -> None:
        self.timers.add((self.store.key, timestamp))

    def current_watermark(self) -> int:
        return self.watermark

    def get_current_key(self) -> str:
        return self.store.key


def test_score_stage_keeps_snapshot_and_log_and_a_restored_subtask_continues_identically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The score stage's keyed state (snapshot + log of units) called directly: its scores are the
    detectors' own in process; a subtask restored from a copy of the state mid-stream (empty cache)
    gives the same scores and deadline findings as the uninterrupted one; logs stay bounded."""
    from pyflink.common import Row

    from vigie.streams import flink_job
    from vigie.streams.flink_job import ParseAndSplit, ScoreUnits

    monkeypatch.setattr(flink_job, "worker_logging", lambda: None)  # this process's logging is not a worker's
    monkeypatch.setattr(ScoreUnits, "SNAPSHOT_EVERY", 5)  # snapshots and replays happen often
    keyed_names = ("undervaluation", "atypical_flow", "operator_behaviour", "excise")
    settings = FlinkJobSettings(input_topic="all", detectors=keyed_names)
    events = [e for e, _ in generate(GeneratorConfig(seed=3, duration_hours=0.5))]
    events += timer_events(max(events, key=lambda e: e.event_time))
    parse = ParseAndSplit(settings)
    parse.open(None)  # type: ignore[arg-type]
    units = [
        record
        for offset, event in enumerate(events)
        for _, record in parse.process_element(Row(encode_event(event), "all", 0, offset), None)  # type: ignore[arg-type]
        if record[0] == "u"
    ]
    reference = {d.name: d for d in make_detectors(keyed_names)}
    stores: dict[str, dict[str, Any]] = {name: {} for name in reference}
    want = []
    for record in units:
        _, route, _, _, name, _, _, _ = record
        detector, key = reference[name], route.split("/", 1)[1]
        state = stores[name].setdefault(key, detector.new_state())
        score = detector.score_one(pickle.loads(record[6]), state)
        detector.learn_one(pickle.loads(record[6]), state)
        want.append(None if score is None else encode_event(score))
    assert sum(w is not None for w in want) > len(units) // 3  # real scores are compared

    def run(stage: ScoreUnits, context: _Context, records: list[Any]) -> list[bytes | None]:
        got = []
        for record in records:
            context.store.key = record[1]
            ((key, (_, _, _, _, fields, envelope)),) = stage.process_element(record, context)  # type: ignore[arg-type]
            assert key == "pipeline"  # the pipeline stage's one key
            assert envelope == record[7]  # passed on to the pipeline stage
            got.append(None if fields is None else encode_event(RiskScore.model_construct(**fields)))
        return got

    def fire(stage: ScoreUnits, context: _Context, until_ms: int) -> list[str]:
        """Deadline timers due by ``until_ms``, fired in time order; the subjects found overdue."""
        context.watermark = until_ms
        found = []
        for key, timestamp in sorted(context.timers, key=lambda t: t[1]):
            if timestamp <= until_ms:
                context.store.key = key
                for _, (_, scores) in stage.on_timer(timestamp, context):  # type: ignore[arg-type]
                    found += [fields["subject_event_id"] for fields in scores]
        return found

    whole_context = _Context(_KeyedStore())
    whole = ScoreUnits(settings)
    whole.open(whole_context)  # type: ignore[arg-type]
    assert run(whole, whole_context, units) == want

    cut = len(units) // 2
    first_context = _Context(_KeyedStore())
    first = ScoreUnits(settings)
    first.open(first_context)  # type: ignore[arg-type]
    got = run(first, first_context, units[:cut])
    restored_context = _Context(first_context.store.copy())
    restored_context.timers = set(first_context.timers)
    restored = ScoreUnits(settings)
    restored.open(restored_context)  # type: ignore[arg-type]
    got += run(restored, restored_context, units[cut:])
    assert got == want

    logs = restored_context.store.lists
    assert logs and max(len(entries) for entries in logs.values()) < ScoreUnits.SNAPSHOT_EVERY
    assert any(name == "operator-state" for name, _ in restored_context.store.values)  # snapshots were taken

    # Deadlines: the same overdue e-ADs, once, whether the state was restored or not, and again after a
    # restore that follows the timers (the expiry is in the log: nothing is reported twice).
    clock = int(events[-1].event_time.timestamp() * 1000)
    overdue = fire(whole, whole_context, clock - 1)
    assert "timer-ead-a" in overdue and "timer-ead-b" not in overdue
    assert fire(restored, restored_context, clock - 1) == overdue
    after = _Context(restored_context.store.copy())
    after.timers = set(restored_context.timers)
    again = ScoreUnits(settings)
    again.open(after)  # type: ignore[arg-type]
    assert fire(again, after, clock - 1) == []


def test_cli_rejects_bad_options_and_finds_checkpoints(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    cli = CliRunner()
    result = cli.invoke(flink_app, ["run", "--fusion", "bayes"])
    assert result.exit_code == 2 and "noisy-or" in result.output
    result = cli.invoke(flink_app, ["run", "--layout", "merged"])
    assert result.exit_code == 2 and "'fused' or 'split'" in result.output
    result = cli.invoke(flink_app, ["run", "--from-checkpoint", "latest", "--checkpoint-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no complete checkpoint" in result.output
    assert cli.invoke(flink_app, ["checkpoints", str(tmp_path)]).exit_code == 1
    chk = tmp_path / ("c" * 32) / "chk-12"
    chk.mkdir(parents=True)
    (chk / "_metadata").write_bytes(b"x")
    result = cli.invoke(flink_app, ["checkpoints", str(tmp_path)])
    assert result.exit_code == 0 and result.output.strip() == str(chk)


def test_layout_follows_the_parallelism_unless_named() -> None:
    assert FlinkJobSettings().fused and not FlinkJobSettings(parallelism=2).fused
    assert FlinkJobSettings(parallelism=2, layout="fused").fused
    assert not FlinkJobSettings(layout="split").fused


def test_kafka_sinks_batch_and_linger_for_their_delivery_guarantee() -> None:
    from vigie.streams.flink_job import SINK_BATCH_BYTES, _sink_ddl

    def options(settings: FlinkJobSettings) -> dict[str, str]:
        ddl = _sink_ddl(settings, "t", "vigie.scores", "scores", 1)
        return dict(re.findall(r"'([^']+)' = '([^']*)'", ddl.split("WITH", 1)[1]))

    exactly_once = options(FlinkJobSettings(checkpoint_interval_ms=5_000))
    assert exactly_once["sink.delivery-guarantee"] == "exactly-once"
    assert exactly_once["properties.linger.ms"] == "100"  # read at the commit, seconds later, anyway
    assert exactly_once["properties.batch.size"] == str(SINK_BATCH_BYTES)
    at_least_once = options(FlinkJobSettings(checkpoint_interval_ms=0))
    assert at_least_once["sink.delivery-guarantee"] == "at-least-once"
    assert at_least_once["properties.linger.ms"] == "20"  # every alert waits for it
    assert options(FlinkJobSettings(sink_linger_ms=0))["properties.linger.ms"] == "0"
    assert int(exactly_once["properties.batch.size"]) <= int(exactly_once["properties.max.request.size"])


def test_auto_resumes_from_the_newest_checkpoint_or_starts_fresh(tmp_path: Path) -> None:
    from vigie.streams.flink_cli import resolve_checkpoint

    assert resolve_checkpoint(None, tmp_path) is None
    assert resolve_checkpoint("auto", tmp_path) is None  # first start of a deployment: nothing to resume
    older = tmp_path / ("a" * 32) / "chk-40"
    newer = tmp_path / ("b" * 32) / "chk-3"  # a later job: its numbering starts again
    incomplete = tmp_path / ("b" * 32) / "chk-4"  # being written: no _metadata yet
    for chk in (older, newer, incomplete):
        chk.mkdir(parents=True)
    (older / "_metadata").write_bytes(b"x")
    assert resolve_checkpoint("auto", tmp_path) == older
    (newer / "_metadata").write_bytes(b"x")
    os.utime(older / "_metadata", (1_000_000_000, 1_000_000_000))
    assert resolve_checkpoint("auto", tmp_path) == resolve_checkpoint("latest", tmp_path) == newer


def test_cluster_mode_leaves_the_cluster_its_own_configuration(tmp_path: Path) -> None:
    local = flink_configuration(FlinkJobSettings(checkpoint_dir=tmp_path / "chk"))
    cluster = flink_configuration(FlinkJobSettings(checkpoint_dir=tmp_path / "chk", cluster=True))
    assert any("127.0.0.1" in value for value in local.values())  # a MiniCluster on loopback
    assert not any("127.0.0.1" in value for value in cluster.values())
    for owned in ("execution.checkpointing.dir", "taskmanager.numberOfTaskSlots", "python.executable",
                  "state.backend.type"):  # fmt: skip
        assert owned in local and owned not in cluster, owned
    # Job-level options stay: exactly-once checkpoints, parallelism, the Python execution mode.
    for kept in ("execution.checkpointing.mode", "execution.checkpointing.interval", "parallelism.default",
                 "python.execution-mode"):  # fmt: skip
        assert cluster[kept] == local[kept], kept
    # The submitter's jars (Flink's Python runtime, `flink run -j`) are not replaced: build_job appends to them.
    assert "pipeline.jars" in local and "pipeline.jars" not in cluster


def test_cluster_mode_appends_the_connector_to_the_submitters_jars(monkeypatch: pytest.MonkeyPatch) -> None:
    """add_missing_jars keeps what `flink run` put in pipeline.jars and adds a jar only if no entry names its file."""
    import pyflink.util.java_utils

    from vigie.streams.flink_job import add_missing_jars

    class JavaConfiguration:
        def __init__(self, jars: str) -> None:
            self.jars = jars

        def getString(self, key: str, default: str) -> str:  # the Java method's name
            assert key == "pipeline.jars"
            return self.jars or default

    class Environment:
        _j_stream_execution_environment = "j-env"

        def __init__(self) -> None:
            self.added: list[str] = []

        def add_jars(self, *jars: str) -> None:
            self.added.extend(jars)

    connector = Path("/opt/vigie/deploy/jars/flink/flink-sql-connector-kafka-5.0.0-2.2.jar")
    python_jar = "file:/opt/flink/opt/flink-python-2.2.1.jar"
    for submitted, wanted in (
        (f"{python_jar};file:{connector}", []),  # `flink run -j` gave it (java.io.File URL form)
        (f"['{python_jar}', 'file://{connector}']", []),  # list form, file:// URL
        (f"{python_jar};local://{connector}", []),  # the operator's local:// scheme
        (python_jar, [connector.as_uri()]),  # PythonDriver under the operator: only its own jar
        ("", [connector.as_uri()]),
    ):
        configuration = JavaConfiguration(submitted)
        monkeypatch.setattr(pyflink.util.java_utils, "get_j_env_configuration", lambda _, c=configuration: c)
        env = Environment()
        added = add_missing_jars(env, [connector])  # type: ignore[arg-type]
        assert env.added == wanted, submitted
        assert [p.as_uri() for p in added] == wanted


def test_cluster_mode_refuses_to_run_outside_flink_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--cluster` started on its own would silently run in a local MiniCluster: a clear error instead."""
    monkeypatch.delenv("PYFLINK_GATEWAY_PORT", raising=False)
    with pytest.raises(RuntimeError, match=re.escape("flink run -m HOST:PORT -pym vigie.streams.flink_cli")):
        build_job(FlinkJobSettings(cluster=True))


def test_vigie_flink_run_cluster_outside_flink_run_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.delenv("PYFLINK_GATEWAY_PORT", raising=False)
    result = CliRunner().invoke(flink_app, ["run", "--cluster", "--bootstrap", "127.0.0.1:9"])
    assert result.exit_code == 2, result.output  # a usage error, not a traceback
    text = " ".join(re.sub("[\u2500-\u257f]", " ", result.output).split())  # rich's box, wrapped lines joined
    assert "--cluster" in text and "flink run -m HOST:PORT" in text, text
