"""The Faust worker's acknowledgement bookkeeping, without a broker: deliveries counted per batch,
batches released (and their input acknowledged) in the order they were produced whatever the
order their deliveries complete in, a failure never released, a revocation forgetting the rest;
checkpoints serialised in a forked child, exactly the state at the fork, written and acknowledged
only after the output they cover is delivered; and the consumer's shorter fetch wait."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from mode import Service
from mode.utils.locks import Event as ModeEvent

from vigie.operators import ScoringPipeline
from vigie.schemas import encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.streams.faust_app import (
    FETCH_MAX_WAIT_S,
    Delivery,
    EagerWaitFirst,
    InFlight,
    ProduceFailed,
    ReadOffsets,
    VigieFaustApp,
    WorkerSettings,
)
from vigie.streams.faust_stages import FUSION_KEY, DictStore, FuseStage, IngestStage, InMessage
from vigie.streams.topics import INPUT_KINDS, TopicNames, key_for


class _Message:
    """What a delivery report names: the topic."""

    def __init__(self, topic: str = "t.scores") -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


def _delivery(errors: list[str], messages: int) -> Delivery:
    delivery = Delivery(errors)
    delivery.pending = messages  # as OutputProducer.produce counts them
    return delivery


def test_a_delivery_is_done_once_every_message_is_reported_and_keeps_the_first_failure() -> None:
    errors: list[str] = []
    delivery = _delivery(errors, 3)
    delivery.report(None, _Message())
    assert not delivery.done and delivery.pending == 2
    delivery.report("broker down", _Message("t.alerts"))  # type: ignore[arg-type]
    delivery.report("still down", _Message("t.scores"))  # type: ignore[arg-type]
    assert delivery.done
    assert delivery.error == "t.alerts: broker down", "the first failure"
    assert errors == ["t.alerts: broker down", "t.scores: still down"], "the producer sees every failure at once"


def test_batches_are_released_in_production_order_whatever_order_they_are_delivered_in() -> None:
    errors: list[str] = []
    in_flight: InFlight[str] = InFlight(limit=4)
    first, second, third = (_delivery(errors, n) for n in (2, 1, 1))
    for delivery, payload in ((first, "a"), (second, "b"), (third, "c")):
        in_flight.add(delivery, payload)
    assert len(in_flight) == 3 and in_flight.most == 3

    third.report(None, _Message())
    second.report(None, _Message())
    assert in_flight.release() == [], "the oldest batch is not delivered: nothing after it goes"
    first.report(None, _Message())
    assert in_flight.release() == [], "one of its two messages is still pending"
    first.report(None, _Message())
    assert in_flight.release() == ["a", "b", "c"], "then all three, oldest first"
    assert len(in_flight) == 0 and in_flight.release() == []


def test_a_failed_batch_is_never_released_nor_anything_after_it() -> None:
    errors: list[str] = []
    in_flight: InFlight[str] = InFlight(limit=4)
    good, bad, later = (_delivery(errors, 1) for _ in range(3))
    for delivery, payload in ((good, "a"), (bad, "b"), (later, "c")):
        in_flight.add(delivery, payload)
    later.report(None, _Message())
    bad.report("message timed out", _Message())  # type: ignore[arg-type]
    good.report(None, _Message())
    with pytest.raises(ProduceFailed, match="message timed out"):
        in_flight.release()
    with pytest.raises(ProduceFailed):
        in_flight.release()  # still there: released neither now nor later
    assert len(in_flight) == 2, "the delivered batch before the failure was released by the first call"


def test_reset_forgets_every_batch_and_the_limit_must_be_positive() -> None:
    in_flight: InFlight[int] = InFlight(limit=2)
    for n in range(3):
        in_flight.add(_delivery([], 0), n)
    assert in_flight.reset() == 3 and len(in_flight) == 0 and in_flight.release() == []
    assert in_flight.most == 3
    with pytest.raises(ValueError, match="at least 1"):
        InFlight(limit=0)


# -- the worker's wiring (a real Faust app, never started: no broker) ---------------------------


class _FakeProducer:
    """Stands for :class:`OutputProducer`: ``poll`` serves the reports queued by the test."""

    def __init__(self) -> None:
        self.reports: list[tuple[Delivery, Any]] = []
        self.errors: list[str] = []

    def poll(self) -> None:
        for delivery, err in self.reports:
            delivery.report(err, _Message())
        self.reports.clear()
        if self.errors:
            raise ProduceFailed("; ".join(self.errors))


class _Event:
    """A stream event: acknowledging it records its offset (in the order acknowledged)."""

    def __init__(self, acked: list[int], offset: int) -> None:
        self.acked = acked
        self.message = SimpleNamespace(tp=TP("t.declarations", 0), offset=offset)

    def ack(self) -> bool:
        self.acked.append(self.message.offset)
        return True


@pytest.fixture
def worker_app(tmp_path: Path) -> VigieFaustApp:
    settings = WorkerSettings(bootstrap="127.0.0.1:9", prefix="t.", data_dir=tmp_path / "faust", batches_in_flight=3)
    return VigieFaustApp(settings, partitions=1)


def test_the_worker_acknowledges_ingest_batches_in_order_and_not_after_a_revocation(
    worker_app: VigieFaustApp,
) -> None:
    producer = _FakeProducer()
    worker_app.producer = producer  # type: ignore[assignment]
    worker_app._ingest_stream = object()
    acked: list[int] = []
    deliveries = [_delivery(producer.errors, 1) for _ in range(3)]
    for n, delivery in enumerate(deliveries):
        worker_app._ingest_in_flight.add(delivery, [_Event(acked, 10 * n + i) for i in range(2)])

    producer.reports = [(deliveries[2], None), (deliveries[1], None)]
    assert worker_app._serve_deliveries() == 0 and acked == [], "the oldest batch is still on its way"
    producer.reports = [(deliveries[0], None)]
    assert worker_app._serve_deliveries() == 3
    assert acked == [0, 1, 10, 11, 20, 21], "every offset in order"

    # A revocation forgets the batches in flight: delivered later, they are not acknowledged (read again).
    late = _delivery(producer.errors, 1)
    worker_app._ingest_in_flight.add(late, [_Event(acked, 30)])
    asyncio.run(worker_app._on_revoked(None, revoked=set()))
    producer.reports = [(late, None)]
    assert worker_app._serve_deliveries() == 0 and acked[-1] == 21


def test_commits_follow_the_acknowledged_batches_not_fausts_own_acknowledgements(worker_app: VigieFaustApp) -> None:
    consumer = worker_app.app.consumer
    tp = TP("t.declarations", 0)
    consumer._committed_offset[tp] = 7  # as Faust sets it from the group's committed offsets on assignment
    assert all(not agent.channel.acks for agent in worker_app.app.agents.values()), "Faust tracks none of them"
    assert consumer._filter_committable_offsets([]) == {}, "nothing acknowledged yet"

    # Faust's stream acknowledges a message it skips (fetched before a rebalance): with acks off
    # for the topic, that commits nothing past the offsets the worker processed.
    skipped = SimpleNamespace(acked=False, tp=tp, offset=40, topic=tp.topic)
    assert consumer.ack(skipped) is False
    worker_app._ack(object(), [_Event([], offset) for offset in range(7, 12)])
    assert consumer._filter_committable_offsets([]) == {tp: 12}
    consumer._committed_offset[tp] = 12
    assert consumer._filter_committable_offsets([]) == {}, "committed already"
    worker_app._ack(object(), [_Event([], 12)])
    assert consumer._filter_committable_offsets([]) == {tp: 13}

    # After a revocation the partition is read again from its committed offset: nothing is due.
    asyncio.run(worker_app._on_revoked(None, revoked=set()))
    assert consumer._filter_committable_offsets([]) == {}


def test_waiting_for_room_serves_deliveries_until_a_batch_is_released(worker_app: VigieFaustApp) -> None:
    producer = _FakeProducer()
    worker_app.producer = producer  # type: ignore[assignment]
    worker_app._ingest_stream = object()
    acked: list[int] = []
    in_flight = worker_app._ingest_in_flight
    deliveries = [_delivery(producer.errors, 1) for _ in range(in_flight.limit)]
    for n, delivery in enumerate(deliveries):
        in_flight.add(delivery, [_Event(acked, n)])

    async def scenario() -> None:
        waiting = asyncio.create_task(worker_app._wait_for_room(in_flight))
        await asyncio.sleep(0.01)
        assert not waiting.done(), "full: the agent waits"
        producer.reports = [(deliveries[0], None)]
        await asyncio.wait_for(waiting, 1.0)

    asyncio.run(scenario())
    assert acked == [0] and len(in_flight) == in_flight.limit - 1
    assert worker_app.waits_for_delivery == 1


def test_the_consumer_waits_at_most_the_short_fetch_wait(worker_app: VigieFaustApp) -> None:
    thread = worker_app.app.consumer._thread

    async def create() -> Any:
        return thread._create_worker_consumer(worker_app.app.transport)

    consumer = asyncio.run(create())
    assert consumer._fetch_max_wait_ms == round(1000 * FETCH_MAX_WAIT_S) < 1500


class _FakeAiokafkaConsumer:
    """What Faust's seek asks of aiokafka's consumer."""

    def __init__(self) -> None:
        self.sought: list[tuple[TP, int]] = []

    def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))

    async def position(self, tp: TP) -> int:
        return dict(self.sought)[tp]


def test_a_seek_holds_the_read_offset_until_the_sought_message_is_read(worker_app: VigieFaustApp) -> None:
    """Faust's drain loop drops a fetched message below its partition's read offset, and records
    the offsets of a batch fetched before a seek after it: the seek's offset must win."""
    faust_consumer = worker_app.app.consumer
    read_offsets = faust_consumer._read_offset
    assert isinstance(read_offsets, ReadOffsets)
    tp, other = TP("t.declarations", 0), TP("t.ens", 0)
    read_offsets[tp] = 20  # the drain loop read up to 20; offsets 12-19 never reached the agent
    read_offsets[other] = 5
    aiokafka_consumer = _FakeAiokafkaConsumer()
    asyncio.run(faust_consumer._thread._seek_wait(aiokafka_consumer, {tp: 12}))
    assert aiokafka_consumer.sought == [(tp, 12)] and read_offsets[tp] == 12

    for offset in (21, 22):  # the rest of the batch fetched before the seek
        read_offsets[tp] = offset
    assert read_offsets[tp] == 12, "offsets 12-20 read again are not dropped"
    read_offsets[other] = 6
    assert read_offsets[other] == 6, "other partitions move on"
    read_offsets[tp] = 12  # the sought message
    read_offsets[tp] = 13
    assert read_offsets[tp] == 13 and read_offsets.pinned == {}

    # Faust's own seeks and revocations replace a pin.
    read_offsets.pin(tp, 30)
    read_offsets.update({tp: 40})
    assert read_offsets[tp] == 40 and read_offsets.pinned == {}
    read_offsets.pin(tp, 30)
    read_offsets[tp] = None  # Faust's seek to offset 0
    assert read_offsets[tp] is None and read_offsets.pinned == {}
    read_offsets.pin(tp, 30)
    read_offsets.pop(tp, None)  # revoked
    assert tp not in read_offsets and read_offsets.pinned == {}
    assert read_offsets[tp] is None, "a partition never read has no read offset, as in Faust"


# -- handing fetched messages on without mode's tasks ------------------------------------------


class _EagerService(EagerWaitFirst, Service):
    """A mode service with the worker consumer's ``wait_first`` and a flow flag, as Faust's consumer has."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = ModeEvent()


def test_the_workers_consumer_hands_messages_on_with_the_eager_wait_first(worker_app: VigieFaustApp) -> None:
    assert isinstance(worker_app.app.consumer, EagerWaitFirst)


def test_a_callback_that_finishes_at_once_needs_no_task_and_the_flag_wait_is_closed() -> None:
    async def scenario() -> None:
        service = _EagerService()
        tasks = len(asyncio.all_tasks())

        async def callback(value: int) -> int:
            assert len(asyncio.all_tasks()) == tasks, "ran in the caller's task, none created"
            return value * 2

        flag_wait = service.suspend_flow.wait()
        results = await service.wait_first(callback(21), flag_wait)
        assert results.results == [42] and not results.stopped and len(results.done) == 1
        assert flag_wait.cr_frame is None, "the flag's wait was closed unstarted (no 'never awaited' warning)"

        async def broken() -> None:
            raise ValueError("bad message")

        flag_wait = service.suspend_flow.wait()
        with pytest.raises(ValueError, match="bad message"):
            await service.wait_first(broken(), flag_wait)
        assert flag_wait.cr_frame is None

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        asyncio.run(scenario())


def test_a_callback_that_waits_still_races_the_flow_flag_as_in_mode() -> None:
    """A callback held up (flow control, a full queue) finishes normally when let go, and gives way,
    cancelled where it waits, when a rebalance suspends the flow: mode's race, for the rest of it."""

    async def scenario() -> None:
        service = _EagerService()
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        steps: list[str] = []

        async def held(value: int) -> int:
            steps.append("started")
            try:
                steps.append(await gate)
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise
            await asyncio.sleep(0)
            return value + 1

        waiting = asyncio.ensure_future(service.wait_first(held(1), service.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        assert steps == ["started"] and not waiting.done()
        gate.set_result("let go")
        results = await waiting
        assert results.results == [2] and steps == ["started", "let go"]

        gate = asyncio.get_running_loop().create_future()
        steps.clear()
        waiting = asyncio.ensure_future(service.wait_first(held(1), service.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        service.suspend_flow.set()  # a rebalance
        results = await waiting
        assert 2 not in results.results and not results.stopped
        await asyncio.sleep(0.01)
        assert steps == ["started", "cancelled"], "the held callback was cancelled where it waited"

        # With the flag already set, mode's own race decides (nothing stepped before it).
        gate = asyncio.get_running_loop().create_future()
        steps.clear()
        results = await service.wait_first(held(5), service.suspend_flow.wait())
        assert 6 not in results.results
        await asyncio.sleep(0.01)

        async def fails_later() -> None:
            await asyncio.sleep(0)
            raise KeyError("after waiting")

        service.suspend_flow.clear()
        with pytest.raises(KeyError, match="after waiting"):
            await service.wait_first(fails_later(), service.suspend_flow.wait())

    asyncio.run(scenario())


# -- checkpoints serialised in a forked child ---------------------------------------------------

KIND_OF = {event_type: kind for kind, event_type in INPUT_KINDS.items()}


def _fusion_messages(names: TopicNames, events: list[Any], per_message: int) -> list[InMessage]:
    """The ``fusion`` messages ingest forwards for ``events``, ``per_message`` events each."""
    ingest = IngestStage(names)
    forwarded: list[InMessage] = []
    for start in range(0, len(events), per_message):
        batch = [
            InMessage(names.name(KIND_OF[e.event_type]), 0, start + i, key_for(e), encode_event(e))
            for i, e in enumerate(events[start : start + per_message])
        ]
        for m in ingest.process(batch).messages:
            if m.topic == names.fusion:
                forwarded.append(InMessage(m.topic, 0, len(forwarded), FUSION_KEY, m.value))
    return forwarded


def test_a_checkpoint_in_a_child_is_the_state_at_the_fork_and_waits_for_the_output_it_covers(
    worker_app: VigieFaustApp,
) -> None:
    names = worker_app.names
    events = [e for e, _ in generate(GeneratorConfig(seed=3, duration_hours=2, rate_per_hour=300))]
    fusion = _fusion_messages(names, events, per_message=50)
    half = len(fusion) // 2
    store = DictStore()
    fuse = worker_app.fuse = FuseStage(names, ScoringPipeline(), store)
    producer = worker_app.producer = _FakeProducer()  # type: ignore[assignment]
    acked: list[int] = []

    fuse.process(fusion[:half])
    at_fork = fuse.snapshot()  # what the child must write, whatever the pipeline does meanwhile
    covered = [_Event(acked, m.offset) for m in fusion[:half]]
    worker_app._fusion_unacked.extend(covered)
    pending = _delivery(producer.errors, 1)  # the covered batches' output, not yet delivered
    worker_app._fuse_in_flight.add(pending, None)

    async def scenario() -> None:
        async with worker_app._fuse_lock:
            await worker_app._checkpoint(object())
        assert worker_app._child is not None, "serialised in a child process"
        assert worker_app._fusion_unacked == [], "the next checkpoint covers only what comes next"
        fuse.process(fusion[half:])  # the pipeline goes on while the child serialises
        worker_app._fusion_unacked.append(_Event(acked, fusion[half].offset))
        await asyncio.sleep(0.3)
        assert b"manifest" not in store.data and acked == [], "not written before the output is delivered"
        producer.reports = [(pending, None)]
        assert worker_app._checkpointing is not None
        await asyncio.wait_for(worker_app._checkpointing, 30)

    asyncio.run(scenario())
    assert acked == [m.offset for m in fusion[:half]], "exactly the messages processed before the fork"
    assert worker_app.checkpoints_taken == 1 and worker_app._child is None
    restored = FuseStage(names, ScoringPipeline(), store)
    assert restored.snapshot() == at_fork, "the checkpoint is the state at the fork"
    assert at_fork != fuse.snapshot(), "the live pipeline went on past it"
