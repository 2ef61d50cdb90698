"""Faust workers on a real broker: scores, alerts, dead letters; a worker killed mid-stream;
two workers sharing a group; the broker stopped and restarted under a running worker.

Workers run as subprocesses (``python -m vigie.streams.faust_app worker``) so that a test
can SIGKILL one as a crash would. Tests share the session broker, each with its own topic
prefix and Faust app id, except the one that stops its broker (a dedicated one).
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.factories import T0, declaration_dict, ens_dict, excise_dict, outcome_dict, priced_declaration, timer_events
from vigie.operators import ScoringPipeline
from vigie.schemas import decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.streams.faust_stages import FUSION_KEY
from vigie.streams.publish import VigiePublisher
from vigie.streams.topics import INPUT_KINDS, TopicNames, create_topics

if TYPE_CHECKING:
    from vigie.streams.kafka_dev import KafkaBroker

pytest_plugins = ["tests.kafka_fixtures"]
pytestmark = pytest.mark.integration

KIND_OF = {event_type: kind for kind, event_type in INPUT_KINDS.items()}

# librdkafka reports "connection refused" while a broker is down; keep it out of the output.
_CLIENT_LOG = logging.getLogger("tests.faust.rdkafka")
_CLIENT_LOG.addHandler(logging.NullHandler())
_CLIENT_LOG.propagate = False


class Worker:
    """One ``vigie faust worker`` subprocess; its output goes to ``log``."""

    def __init__(self, args: list[str], log: Path, client_id: str) -> None:
        self.args = args
        self.log = log
        self.client_id = client_id
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with open(self.log, "ab") as out:
            command = [sys.executable, "-m", "vigie.streams.faust_app", "worker", *self.args]
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.log.parent)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: no commit, no flush."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.log.name}\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def counters(self) -> dict[str, int]:
        """The counters of the worker's last ``stopped:`` log line, by name."""
        stopped = [line for line in self.log.read_text().splitlines() if "stopped: " in line]
        assert stopped, self.tail()
        return {name: int(n) for n, name in re.findall(r"(\d+) ([a-z][a-z ()-]+)", stopped[-1].split("stopped: ")[1])}


class Deployment:
    """A topic prefix and app id of our own on one broker; the workers started through it are stopped at the end."""

    def __init__(self, broker: KafkaBroker, tmp_path: Path) -> None:
        self.broker = broker
        self.tmp_path = tmp_path
        self.tag = uuid.uuid4().hex[:8]
        self.names = TopicNames(f"fw-{self.tag}.")
        self.app_id = f"fw-{self.tag}"
        self.workers: list[Worker] = []

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    def worker(self, *extra: str, sink: Path | None = None, name: str = "worker") -> Worker:
        client_id = f"{self.app_id}-{name}"
        args = [
            *("--bootstrap", self.bootstrap, "--prefix", self.names.prefix, "--app-id", self.app_id),
            *("--client-id", client_id, "--data-dir", str(self.tmp_path / f"faust-{name}")),
            *("--session-timeout", "6", "--sink", f"chdb:{sink}" if sink else "none", "--no-create-topics"),
            *extra,
        ]
        new = Worker(args, self.tmp_path / f"{name}.log", client_id)
        self.workers.append(new)
        return new

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if not self.broker.is_running():
            return
        created = [self.names.name(kind) for kind in self.names.all_kinds()]
        existing = self.broker.admin().list_topics(timeout=10).topics
        created += [t for t in existing if t.startswith(f"{self.app_id}-")]  # changelog, assignor topic
        self.broker.delete_topics(created)

    def consumer(self, group: str | None = None) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": group or f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "logger": _CLIENT_LOG,
            }
        )

    def fusion_partition(self, partitions: int) -> int:
        return (murmur2(FUSION_KEY) & 0x7FFFFFFF) % partitions

    def checkpointed(self) -> bool:
        """Whether some fuse agent has completed a checkpoint: its manifest (written after the chunks
        it names) is in the fusion table's changelog. A changelog holding chunks only is not enough:
        a worker killed before the manifest leaves nothing to restore."""
        consumer = self.consumer()
        try:
            topic = f"{self.app_id}-fusion-changelog"
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
            if not any(ends.values()):
                return False
            consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
            remaining = sum(ends.values())
            while remaining > 0:
                messages = consumer.consume(500, timeout=5)
                if not messages:
                    return False
                for message in messages:
                    remaining -= 1
                    if message.error() is None and b"manifest" in (message.key() or b""):
                        return True
            return False
        finally:
            consumer.close()

    def members(self) -> dict[str, set[tuple[str, int]]]:
        """Client id -> the topic partitions assigned to it, for each member of the group now."""
        [future] = self.broker.admin().describe_consumer_groups([self.app_id]).values()
        group = future.result(timeout=10)
        return {m.client_id: {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions} for m in group.members}


@pytest.fixture
def deployment(kafka_broker: KafkaBroker, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of our own on the session broker."""
    deployment = Deployment(kafka_broker, tmp_path)
    try:
        yield deployment
    finally:
        deployment.close()


class Reader:
    """Reads the output topics from the start, keeping every message."""

    def __init__(self, deployment: Deployment) -> None:
        names = self.names = deployment.names
        self.consumer = deployment.consumer()
        self.consumer.subscribe([names.scores, names.alerts, names.dead_letter])
        self.messages: dict[str, list[Any]] = {names.scores: [], names.alerts: [], names.dead_letter: []}

    def until(self, done: Callable[[Reader], bool], timeout: float, workers: list[Worker]) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            if time.monotonic() > deadline:
                logs = "\n".join(w.tail() for w in workers)
                raise AssertionError(f"timed out; {self.summary()}\n{logs}")
            for w in workers:
                assert w.alive(), f"worker exited with {w.proc and w.proc.returncode}:\n{w.tail()}"
            self._read(0.3)

    def _read(self, timeout: float) -> None:
        for m in self.consumer.consume(500, timeout):
            if m.error() is None:
                self.messages[m.topic()].append(m)

    def drain(self, seconds: float) -> None:
        """Keep reading for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read(0.2)

    def score_sets(self) -> set[str]:
        return {m.key().decode() for m in self.messages[self.names.scores]}

    def scores_by_id(self) -> dict[str, list[bytes]]:
        """Score id -> the value of each copy of it on the topic (more than one after a replay)."""
        copies: dict[str, list[bytes]] = defaultdict(list)
        for m in self.messages[self.names.scores]:
            copies[dict(m.headers())["vigie.id"].decode()].append(m.value())
        return copies

    def summary(self) -> str:
        return ", ".join(f"{topic}: {len(ms)}" for topic, ms in self.messages.items())

    def close(self) -> None:
        self.consumer.close()


def _until(condition: Callable[[], bool], what: str, timeout: float, workers: list[Worker]) -> None:
    """Poll ``condition`` until it holds; fail with the workers' logs after ``timeout`` or if one exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        for w in workers:
            assert w.alive(), f"worker exited with {w.proc and w.proc.returncode}:\n{w.tail()}"
        if time.monotonic() > deadline:
            detail = getattr(condition, "behind", "")  # what _AllInputsCommitted saw last
            logs = "\n".join(w.tail() for w in workers)
            raise AssertionError(f"timed out waiting for {what} {detail}\n{logs}")
        time.sleep(0.3)


def _committed(deployment: Deployment, wanted: dict[str, int]) -> Callable[[], bool]:
    """Whether the workers' group committed at least ``wanted[topic]`` offsets on partition 0 of each topic."""

    def check() -> bool:
        consumer = deployment.consumer(deployment.app_id)
        try:
            committed = consumer.committed([TopicPartition(t, 0) for t in wanted], timeout=10)
        finally:
            consumer.close()
        return all(tp.offset >= wanted[tp.topic] for tp in committed)

    return check


class _AllInputsCommitted:
    """Whether the workers' group committed every input partition up to its end (every input read);
    ``topics`` widens the check (e.g. to the internal fusion topic)."""

    def __init__(self, deployment: Deployment, partitions: int, topics: list[str] | None = None) -> None:
        self.deployment = deployment
        topics = deployment.names.inputs if topics is None else topics
        self.tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        self.behind: dict[tuple[str, int], tuple[int, int]] = {}
        """Topic partitions not committed to their end at the last check: ``(committed, end offset)``."""

    def __call__(self) -> bool:
        consumer = self.deployment.consumer(self.deployment.app_id)
        try:
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(self.tps, timeout=10)}
            ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps}
        finally:
            consumer.close()
        self.behind = {tp: (committed[tp], end) for tp, end in ends.items() if end > 0 and committed[tp] < end}
        return not self.behind


def _publish(bootstrap: str, names: TopicNames, events: list[Any]) -> None:
    with VigiePublisher(bootstrap, prefix=names.prefix) as publisher:
        for event in events:
            publisher.publish(KIND_OF[event.event_type], event)
    assert publisher.report.ok, publisher.report.rejections[:3]


FAR_LAG_H = 1000.0
"""A deadline allowance (hours) beyond the generated streams' span, for the tests that compare a worker
reading several partitions with the in-process runner. The worker's deadline clock follows its slowest
partition (within a day of the latest, vigie.operators.deadlines.SourceClock), the runner's the latest
event of its one stream: on a generated stream, whose last days hold only sparse records (receipts,
outcomes), they check deadlines at different points. Deadlines in a worker: tests/test_faust_stages.py
and test_worker_scores_alerts_and_dead_letters."""
FAR_LAG = ("--deadline-lag", str(FAR_LAG_H))


def _reference(events: list[Any], lag_h: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    pipeline = ScoringPipeline() if lag_h is None else ScoringPipeline(deadline_lag=timedelta(hours=lag_h))
    scores: dict[str, Any] = {}
    alerts: dict[str, Any] = {}
    for event in events:
        result = pipeline.process(event)
        scores.update((s.score_id, orjson.loads(encode_event(s))) for s in result.scores)
        alerts.update((a.alert_id, orjson.loads(encode_event(a))) for a in result.alerts)  # later findings' too
    return scores, alerts


def _generated(seed: int, hours: float, rate: float) -> tuple[list[Any], set[str]]:
    """A generated stream and the ids of the scores the in-process pipeline gives it."""
    events = [event for event, _ in generate(GeneratorConfig(seed=seed, duration_hours=hours, rate_per_hour=rate))]
    scores, _ = _reference(events, FAR_LAG_H)
    return events, set(scores)


def _assert_replays_identical(reader: Reader, expected: set[str]) -> int:
    """Every expected score on the topic, none other; copies sent again by a replay are byte-identical.

    Returns how many copies were extra.
    """
    copies = reader.scores_by_id()
    assert set(copies) == expected, f"{len(expected - set(copies))} missing, {len(set(copies) - expected)} unexpected"
    differing = [score_id for score_id, values in copies.items() if len(set(values)) > 1]
    assert not differing, f"{len(differing)} score(s) computed differently when replayed, e.g. {differing[:3]}"
    return sum(len(values) - 1 for values in copies.values())


def test_worker_scores_alerts_and_dead_letters(deployment: Deployment, tmp_path: Path) -> None:
    names, bootstrap = deployment.names, deployment.bootstrap
    create_topics(bootstrap, names, partitions=1)
    # Three ENS; 30 ordinary T-shirt declarations (about 2 EUR a piece); 3 at a sixth of that,
    # covered by the ENS. Published in phases so that the worker sees them in this order.
    ens_refs = [f"26FR0002300000{i:03d}Z" for i in range(3)]
    etas = [T0 + timedelta(hours=40 + i) for i in range(3)]
    ens_events = [
        decode_event(orjson.dumps(ens_dict(event_id=f"ens-{i}", ens_reference=ref, eta=eta.isoformat())))
        for i, (ref, eta) in enumerate(zip(ens_refs, etas, strict=True))
    ]
    normal = [priced_declaration(i, 1200.0 * (1 + 0.03 * math.sin(i))) for i in range(30)]
    others = [decode_event(orjson.dumps(excise_dict())), decode_event(orjson.dumps(outcome_dict()))]
    frauds = [priced_declaration(100 + i, 200.0, ens_reference=ref) for i, ref in enumerate(ens_refs)]
    # Last, on the excise topic: e-AD A never received, B received, and a record 8 days on that takes
    # the stream's time past A's deadline (and the first e-AD's): overdue findings with nothing more
    # from their consignors.
    timed = timer_events(max([*normal, *frauds], key=lambda e: e.event_time))
    scores, alerts = _reference([*ens_events, *normal, *others, *frauds, *timed])
    overdue = {s["subject_event_id"] for s in scores.values() if s["reason_fields"].get("findings") == "no_receipt"}
    assert overdue == {"timer-ead-a", others[0].event_id}
    subjects = {s["subject_event_id"] for s in scores.values()}

    store = tmp_path / "clickhouse"
    worker = deployment.worker("--fusion-checkpoint", "1", sink=store).start()
    reader = Reader(deployment)
    bad = {
        "truncated": orjson.dumps(declaration_dict(event_id="decl-dl"))[:-25],
        "wrong version": orjson.dumps({**declaration_dict(event_id="decl-v2"), "schema_version": "2.0"}),
        "5 MB": b'{"event_type": "declaration", "pad": "' + b"x" * (5 << 20) + b'"}',
        "binary": bytes(range(256)) * 4,
        "ENS on declarations": orjson.dumps(ens_dict(event_id="ens-misrouted")),
    }
    try:
        # ENS first: the worker shows it read them by committing their offsets.
        _publish(bootstrap, names, ens_events)
        _until(_committed(deployment, {names.ens: len(ens_events)}), "the ENS", 90, [worker])
        _publish(bootstrap, names, [*normal, *others])
        reader.until(lambda r: len(r.score_sets()) >= len(normal), 60, [worker])
        _until(_committed(deployment, {names.excise: 1, names.outcomes: 1}), "excise, outcome", 30, [worker])
        _publish(bootstrap, names, frauds)
        raw = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8 << 20})
        for value in bad.values():
            raw.produce(names.declarations, key=b"raw", value=value)
        assert raw.flush(30) == 0
        reader.until(
            lambda r: (
                r.score_sets() >= subjects - {e.event_id for e in timed}
                and len(r.messages[names.alerts]) >= 3
                and len(r.messages[names.dead_letter]) >= 5
            ),
            60,
            [worker],
        )
        _publish(bootstrap, names, timed)
        reader.until(
            lambda r: r.score_sets() >= subjects and len(r.messages[names.alerts]) >= len(alerts), 60, [worker]
        )
        reader.drain(1.0)
        # Once the stream goes quiet, the last fusion messages are checkpointed and committed too
        # (no later batch comes to trigger it): a restart would not replay them, monitoring sees no lag.
        quiet = _AllInputsCommitted(deployment, 1, topics=[*names.inputs, names.fusion])
        _until(quiet, "every input and fusion message committed on a quiet stream", 60, [worker])
    finally:
        reader.close()
        code = worker.stop()
    assert code == 0, worker.tail()

    # Kafka: one score set per scored event, the in-process runner's scores, exactly, once.
    got_scores = {m.headers()[0][1].decode(): orjson.loads(m.value()) for m in reader.messages[names.scores]}
    assert len(reader.messages[names.scores]) == len(scores), "no duplicates"
    assert got_scores == scores
    assert reader.score_sets() == subjects
    scoreable = [*ens_events, *normal, others[0], *frauds, *timed]
    assert {e.event_id for e in scoreable} == subjects, "declarations, ENS and excise are scored; outcomes not"
    # Alerts for the three frauds, with the ENS's arrival time: the in-process runner's alerts.
    got_alerts = {
        orjson.loads(m.value())["subject_event_id"]: orjson.loads(m.value()) for m in reader.messages[names.alerts]
    }
    assert set(got_alerts) == {e.event_id for e in frauds} | overdue
    assert {got_alerts[o]["subject_type"] for o in overdue} == {"excise"}
    for fraud, eta in zip(frauds, etas, strict=True):
        alert = got_alerts[fraud.event_id]
        assert alert["lead_time_hours"] == round((eta - fraud.event_time).total_seconds() / 3600, 2)
        assert any("below the reference" in reason for reason in alert["reasons"])
    assert {a["alert_id"]: a for a in got_alerts.values()} == alerts
    # Dead letters: the original bytes, the reason, where they came from.
    letters = reader.messages[names.dead_letter]
    assert [m.value() for m in letters] == list(bad.values())
    headers = [dict(m.headers()) for m in letters]
    assert all(h["vigie.topic"] == names.declarations.encode() and h["vigie.reason"] for h in headers)
    fields = [h["vigie.field"].decode() for h in headers]
    assert fields == ["(event)", "schema_version", "", "", "event_type"]
    assert int(headers[2]["vigie.raw-size"]) == len(bad["5 MB"])
    assert b"exceeds the 1048576-byte limit" in headers[2]["vigie.reason"]
    assert b"not valid UTF-8" in headers[3]["vigie.reason"]
    counters = worker.counters()
    assert counters["events ingested"] == len(ens_events) + len(normal) + len(others) + len(frauds) + len(timed)
    assert counters["dead-lettered"] == len(bad) and counters["duplicate(s) skipped"] == 0

    # The sink holds the same, once each.
    from vigie.sinks.chdb_sink import ChdbSink

    with ChdbSink(store) as sink:

        def one(sql: str) -> Any:
            return next(iter(sink.query(sql)[0].values()))

        assert one("SELECT count() FROM vigie.scores FINAL") == len(scores)
        assert one("SELECT uniqExact(subject_event_id) FROM vigie.scores FINAL") == len(subjects)
        assert one("SELECT count() FROM vigie.alerts FINAL") == len(alerts) == 5
        assert one("SELECT count() FROM vigie.declarations FINAL") == 33
        assert one("SELECT count() FROM vigie.ens FINAL") == 3
        assert one("SELECT count() FROM vigie.excise FINAL") == 1 + len(timed)
        assert one("SELECT count() FROM vigie.dead_letters FINAL") == 5
        assert one("SELECT max(raw_size) FROM vigie.dead_letters FINAL") == len(bad["5 MB"])
        # The worker's health samples (the boards' "Runtimes" row) add up to what it did; its last one at stop.
        health = sink.query(
            "SELECT sum(events) AS events, sum(scores) AS scores, sum(alerts) AS alerts, sum(dead_letters) AS dead,"
            " uniqExact(instance) AS instances FROM vigie.pipeline_metrics FINAL WHERE component = 'faust'"
        )[0]
        assert health["instances"] == 1
        assert (health["events"], health["scores"], health["alerts"]) == (len(subjects) + 1, len(scores), len(alerts))
        assert health["dead"] == len(bad)


def test_worker_killed_mid_stream_is_restarted_without_loss(deployment: Deployment, tmp_path: Path) -> None:
    names, bootstrap = deployment.names, deployment.bootstrap
    create_topics(bootstrap, names, partitions=2)
    events, expected = _generated(seed=23, hours=2, rate=250)
    half = len(events) * 6 // 10
    _publish(bootstrap, names, events[:half])

    store = tmp_path / "clickhouse"
    reader = Reader(deployment)
    try:
        # No commit before the kill: the restarted worker replays all the first one did.
        first = deployment.worker(
            "--commit-interval", "600", "--fusion-checkpoint", "0.5", *FAR_LAG, sink=store, name="first"
        )  # fmt: skip
        first.start()
        reader.until(lambda r: len(r.score_sets()) >= 20, 90, [first])
        _until(deployment.checkpointed, "a checkpoint", 30, [first])
        first.kill()  # mid-stream: batches in flight, offsets not committed, the fusion state checkpointed
        killed_at = len(reader.score_sets())
        _publish(bootstrap, names, events[half:])
        second = deployment.worker(*FAR_LAG, sink=store, name="second").start()
        reader.until(lambda r: set(r.scores_by_id()) >= expected, 120, [second])
        committed = _AllInputsCommitted(deployment, 2)
        _until(committed, "every input committed", 30, [second])
        reader.drain(1.0)  # a replay, if any, lands too
    finally:
        reader.close()
    assert second.stop() == 0, second.tail()
    subjects = {s["subject_event_id"] for s in _reference(events, FAR_LAG_H)[0].values()}
    assert killed_at < len(subjects), "the kill happened before the end of the stream"

    # Every score, with its deterministic id; what the second worker computed again (from the
    # restored checkpoint) is byte for byte what the first had sent.
    extra = _assert_replays_identical(reader, expected)
    assert reader.score_sets() == subjects, "every event scored"
    counters = second.counters()
    assert counters["events ingested"] == len(events), "the second worker read every input again"
    assert counters["duplicate(s) skipped"] > 0, "events the restored checkpoint held were not fused twice"
    assert 0 < counters["events fused"] < len(events), "it fused only what the restored checkpoint did not hold"
    assert "fusion restored from checkpoint" in second.log.read_text()
    print(f"killed after {killed_at} of {len(subjects)} score sets; {extra} score message(s) sent again; {counters}")

    from vigie.sinks.chdb_sink import ChdbSink

    with ChdbSink(store) as sink:
        rows = sink.query("SELECT score_id, count() AS n FROM vigie.scores FINAL GROUP BY score_id")
        assert {r["score_id"] for r in rows} == expected, "none missing in the sink"
        assert all(r["n"] == 1 for r in rows), "each score once (FINAL)"
        declarations = sink.query("SELECT count() AS n FROM vigie.declarations FINAL")[0]["n"]
        assert declarations == sum(e.event_type == "declaration" for e in events)


def test_two_workers_split_the_partitions_and_one_takes_over_from_the_other(deployment: Deployment) -> None:
    names, bootstrap = deployment.names, deployment.bootstrap
    partitions = 2
    create_topics(bootstrap, names, partitions=partitions)
    events, expected = _generated(seed=29, hours=1, rate=250)
    half = len(events) * 6 // 10
    fusion = (names.fusion, deployment.fusion_partition(partitions))

    reader = Reader(deployment)
    workers = {
        name: deployment.worker("--fusion-checkpoint", "0.5", *FAR_LAG, name=name).start() for name in ("left", "right")
    }
    both = list(workers.values())
    try:

        def split() -> bool:
            members = deployment.members()
            inputs = [{tp for tp in tps if tp[0] in names.inputs} for tps in members.values()]
            return len(members) == 2 and all(inputs)

        _until(split, "two members sharing the input partitions", 180, both)
        members = deployment.members()
        assert set(members) == {w.client_id for w in both}
        for topic in names.inputs:
            held = [sorted(p for t, p in tps if t == topic) for tps in members.values()]
            assert sorted(held) == [[0], [1]], f"{topic}: one partition each, {held}"
        [fuser] = [w for w in both if fusion in members[w.client_id]]
        [survivor] = [w for w in both if w is not fuser]

        _publish(bootstrap, names, events[:half])  # once they share the partitions: each ingests its own
        reader.until(lambda r: len(r.score_sets()) >= 20, 180, both)
        _until(deployment.checkpointed, "a checkpoint", 120, both)
        assert fuser.stop() == 0, fuser.tail()  # SIGTERM: it commits, leaves the group, its partitions move

        def taken_over() -> bool:
            members = deployment.members()
            return set(members) == {survivor.client_id} and fusion in members[survivor.client_id]

        _until(taken_over, "the survivor to hold every partition", 180, [survivor])
        held = deployment.members()[survivor.client_id]
        assert {(t, p) for t in names.inputs for p in range(partitions)} <= held
        _publish(bootstrap, names, events[half:])
        reader.until(lambda r: set(r.scores_by_id()) >= expected, 300, [survivor])
        committed = _AllInputsCommitted(deployment, partitions)
        _until(committed, "every input committed", 120, [survivor])
        reader.drain(1.0)
    finally:
        reader.close()
    assert survivor.stop() == 0, survivor.tail()

    extra = _assert_replays_identical(reader, expected)
    assert "fusion restored from checkpoint" in survivor.log.read_text(), "the fusion state moved with its partition"
    left, right = (w.counters() for w in both)
    ingested = left["events ingested"] + right["events ingested"]
    assert left["events ingested"] > 0 and right["events ingested"] > 0, "both ingested"
    assert len(events) <= ingested, "every event ingested (some twice: what was not committed at the move)"
    print(f"{extra} score message(s) sent again after the move; {ingested - len(events)} event(s) ingested twice")


def test_broker_stopped_and_restarted_mid_stream_loses_nothing(
    kafka_broker_factory: Callable[..., KafkaBroker], tmp_path: Path
) -> None:
    broker = kafka_broker_factory()
    deployment = Deployment(broker, tmp_path)
    names, bootstrap = deployment.names, deployment.bootstrap
    create_topics(bootstrap, names, partitions=1)
    events, expected = _generated(seed=31, hours=2, rate=250)
    # Early in a generated stream come ENS (filed before arrival), scored by no default detector.
    first, second = len(events) * 6 // 10, len(events) * 8 // 10
    _publish(bootstrap, names, events[:first])

    worker = deployment.worker("--fusion-checkpoint", "0.5", *FAR_LAG).start()
    reader = Reader(deployment)
    # A publisher that outlives the outage: what it sends while the broker is down waits in its queue.
    publisher = VigiePublisher(bootstrap, prefix=names.prefix, config={"logger": _CLIENT_LOG})
    try:
        reader.until(lambda r: len(r.score_sets()) >= 20, 90, [worker])
        for event in events[first:second]:
            publisher.publish(KIND_OF[event.event_type], event)
        publisher.flush(30)
        broker.stop()  # while the worker is still on that backlog
        before = len(reader.score_sets())
        for event in events[second:]:
            publisher.publish(KIND_OF[event.event_type], event)
        time.sleep(3)  # the worker runs on, without a broker, for a while
        assert worker.alive(), worker.tail()
        broker.start()
        assert broker.bootstrap_servers == bootstrap, "same ports after a restart"
        publisher.close(60)
        assert publisher.report.ok, publisher.report.rejections[:3]
        reader.until(lambda r: set(r.scores_by_id()) >= expected, 180, [worker])
        committed = _AllInputsCommitted(deployment, 1)
        _until(committed, "every input committed", 30, [worker])
        reader.drain(1.0)
    finally:
        reader.close()
        code = worker.stop()
        deployment.close()
    assert code == 0, worker.tail()
    subjects = {s["subject_event_id"] for s in _reference(events, FAR_LAG_H)[0].values()}
    assert before < len(subjects), "stopped mid-stream"
    extra = _assert_replays_identical(reader, expected)
    counters = worker.counters()
    assert counters["events ingested"] >= len(events) and counters["events fused"] >= len(events)
    print(f"broker stopped after {before} score sets; {extra} score message(s) sent again; {counters}")
