"""Faust workers: the scoring pipeline on Kafka, its state in a changelog-backed table.

Run one or more workers of one deployment (they share the partitions of a consumer group)::

    vigie faust topics --bootstrap 127.0.0.1:9092 --partitions 3     # optional: the worker creates them too
    vigie faust worker --bootstrap 127.0.0.1:9092 --sink chdb:vigie-data/clickhouse

(``python -m vigie.streams.faust_app worker ...`` is the same command.)

Topology
--------
Two agents per worker, each consuming in batches (up to ``batch_size`` messages, cut as soon
as no more are waiting, so a stream that keeps up adds no wait; while Kafka holds more of the
partition, a batch waits up to ``BATCH_LINGER_S`` for it, so batches grow with the load) and
calling the runtime-free stages of :mod:`vigie.streams.faust_stages` (read its docstring for
the topology and why). Each batch first goes through an :class:`InOrderGate`, which makes
sure no offset is skipped (Faust can drop a fetched message around a rebalance):

1. ``ingest`` reads the four input topics (all their partitions are shared by the workers
   of the group), validates each message with the shared codec, sends what fails to the
   dead-letter topic, writes accepted events to the sink and forwards them, bytes
   unchanged, packed one message per batch, to the internal ``fusion`` topic;
2. ``fuse`` reads ``fusion`` (one partition: the pipeline's global state, so one worker of
   the group fuses at a time), runs the real :class:`~vigie.operators.ScoringPipeline` on
   each event and emits its scores and alert to Kafka and the sink. The pipeline's whole
   state, detectors' keyed states included, is checkpointed into the ``fusion`` table every
   ``fusion_checkpoint_s`` (or less often when a checkpoint is large: at most about a tenth
   of the time goes to them); the fusion offsets are committed only then. A timer takes that
   checkpoint when the stream has gone quiet, so the last messages do not stay uncommitted.

When a worker stops or dies, the group gives its partitions to the others: its ingest
partitions resume from their committed offsets, and the fusion partition from its last
checkpoint (restored from the changelog), which makes the replay exact (see
:mod:`~vigie.streams.faust_stages`).

Producing: the stages' output (fusion, scores, alerts, dead letters) goes through one
librdkafka producer (confluent-kafka; idempotent; murmur2 partitioner, as Faust and the Java
client) rather than Faust's: Faust's per-message cost was about half of the worker's time.
Faust's own producer writes the table's changelog.

Consuming: Faust's aiokafka consumer, with the broker's wait for a fetch that finds no new data
cut from Faust's 1.5 s to ``FETCH_MAX_WAIT_S`` (50 ms): aiokafka has one fetch in flight per
broker, and a long fetch of the quiet partitions held back the busy ones (the worker idled over
half of a backlog drain). A seek back holds the partition's read offset until the sought message
is read (:class:`ReadOffsets`): Faust's drain loop would drop it otherwise.

State: the ``fusion`` table (``store='memory://'``, compacted changelog topic
``<app id>-fusion-changelog``), restored when a worker starts or takes the fusion partition
over. Writes name their changelog partition (the fusion partition). Topics and changelog
all have the same number of partitions, so Faust co-assigns partition ``p`` of everything to
one worker.

Delivery: at least once, replays absorbed. An agent does not wait for its output to be
delivered: it goes on with the next batches (at most ``batches_in_flight`` per agent await
their delivery; beyond, it waits) while the producer's delivery reports are served from the
event loop (after each batch, and by a task polling every 0.5 to 10 ms). An input batch is
acknowledged once every message it produced is reported delivered, and every earlier batch of
that agent was acknowledged first (:class:`InFlight`). Offsets are committed (every
``commit_interval_s`` and at stop) up to the last acknowledged one of each partition
(:class:`CommitLedger`), not from Faust's own acknowledgement tracking, which can commit past a
message never processed around a rebalance or a seek. When a sink is configured,
it has stored a batch's records before the batch is tracked (one sink flush per batch). Fusion
messages are acknowledged only once a checkpoint covers them, and a checkpoint is taken only
once every fuse batch before it is delivered. If a message fails (after librdkafka's retries)
or the sink fails, the worker exits at once (code 70) *without* committing, and is restarted by
its supervisor: every batch not acknowledged is read again. A replay may send the same score
or alert (same id, same content) to Kafka twice; the sink keeps one (``ReplacingMergeTree``,
read with ``FINAL``).

Dead letters: the message value is the original bytes, unchanged; the key is the dead-letter
id; headers ``vigie.reason``, ``vigie.field``, ``vigie.source`` (``kafka:TOPIC:PARTITION:OFFSET``),
``vigie.topic``, ``vigie.partition``, ``vigie.offset``, ``vigie.dead-letter-id``,
``vigie.received-at``, ``vigie.raw-size``. The sink's ``dead_letters`` table gets the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Generic, NoReturn, TypeVar

import faust
import typer
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults
from pydantic import BaseModel

from vigie.operators import NoisyOrAlerting, ScoringPipeline
from vigie.sinks.base import Sink
from vigie.sinks.open import SinkSpecError, open_sink, resolve_sink_spec

from .faust_stages import (
    FUSION_KEY,
    DecodedCache,
    FuseStage,
    IngestStage,
    InMessage,
    KeyValueStore,
    OutMessage,
    StageOutput,
)
from .health import Counts, HealthReporter, health_reporter
from .options import DEFAULT_DEADLINE_LAG_H, DeadlineLagHours
from .topics import DEFAULT_PREFIX, LARGE_MESSAGE_BYTES, TopicNames, create_topics, describe_partitions

__all__ = [
    "FAIL_STOP_EXIT_CODE",
    "Delivery",
    "InFlight",
    "InOrderGate",
    "OutputProducer",
    "PartitionedTable",
    "ProduceFailed",
    "TableStore",
    "VigieFaustApp",
    "WorkerSettings",
    "faust_app_cli",
]

log = logging.getLogger("vigie.streams.faust")

T = TypeVar("T")

FAIL_STOP_EXIT_CODE = 70
"""Exit code of a worker that stopped because Kafka or the sink failed mid-batch."""

GATE_WATCH_INTERVAL_S = 2.0
"""Seconds between checks that every assigned partition delivers what it holds (see :class:`InOrderGate`)."""

CHECKPOINT_TIME_SHARE = 0.1
"""At most about this share of the fuse agent's time goes to checkpoints (large states checkpoint less often)."""

IDLE_CHECKPOINT_POLL_S = 1.0
"""Seconds between checks for fusion messages left unacknowledged on a quiet stream (they get a checkpoint
once one is due, as after a batch)."""

FETCH_MAX_WAIT_S = 0.05
"""Seconds the broker may hold a fetch that finds no new data (Faust fixes 1.5 s). aiokafka keeps one fetch
in flight per broker and, once a partition's records have been buffered for 0.1 s, fetches the *other*
partitions: a fetch of quiet ones (outcomes, excise, the assignor's) then blocked the next fetch of the busy
ones for 1.5 s, and the worker idled more than half of a backlog drain. The price: a quiet worker sends
about 1 / this many fetches per second."""

BATCH_LINGER_S = 0.02
"""At most this many seconds a batch waits for more messages, and only while Kafka holds more of its partition
than was read (a backlog): Faust hands messages over one by one, so an agent that no longer waits for deliveries
would otherwise take them one at a time. A stream that keeps up is cut at once, as before."""

BATCH_LINGER_STEP_S = 0.001
"""Seconds between looks at the agent's queue while a batch lingers."""

BATCHES_IN_FLIGHT = 8
"""Batches per agent whose output may be on its way to Kafka at once; an agent reading past that waits
(back-pressure: bounds the input held unacknowledged and librdkafka's queue)."""

DELIVERY_POLL_MIN_S = 0.0005
DELIVERY_POLL_MAX_S = 0.01
"""Seconds between polls of the producer's delivery reports: from the min, doubling while none comes, up to
the max (a delivery takes a few milliseconds; an outage must not spin the loop)."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker connects and batches. ``partitions`` None: take the topics' count."""

    bootstrap: str = "127.0.0.1:9092"
    prefix: str = DEFAULT_PREFIX
    app_id: str = "vigie-scoring"
    partitions: int | None = None
    replication_factor: int = 1
    create_topics: bool = True
    batch_size: int = 2000
    """Messages per batch at most (input messages for ingest; packed fusion messages for fuse). A batch is
    cut as soon as no more messages are waiting: batches grow with the load, an idle stream adds no wait."""
    batches_in_flight: int = BATCHES_IN_FLIGHT
    """Batches per agent whose output may be on its way to Kafka at once (back-pressure beyond)."""
    sink: str = "none"
    """``none``, ``chdb:PATH`` (embedded ClickHouse; one worker process per path) or ``clickhouse://...``."""
    threshold: float | None = None
    """None: the pipeline's default (learned) fusion; a number: noisy-OR alerting at that threshold."""
    deadline_lag_h: float = DEFAULT_DEADLINE_LAG_H
    """Hours (event time) a record may come late and still count before a deadline (an e-AD's receipt): the
    fuse stage checks a deadline once its clock, less this, passes it. The clock is the earliest of the input
    partitions' latest event times, at most a day behind the latest (a backlog read at uneven paces does not
    make a deadline fall due early; :class:`~vigie.operators.deadlines.SourceClock`)."""
    fusion_checkpoint_s: float = 5.0
    """Seconds between checkpoints of the pipeline at least; the fusion offsets are committed at that pace."""
    checkpoint_in_child: bool = True
    """Serialise checkpoints in a forked child process while the pipeline goes on (where ``os.fork`` exists);
    False: on the event loop, the fuse agent waiting meanwhile (about 0.5 s per 40 MB of state)."""
    data_dir: Path = Path("vigie-data/faust")
    commit_interval_s: float = 1.0
    session_timeout_s: float = 30.0
    """A crashed worker's partitions move to the others after this long (Kafka's minimum is 6 s)."""
    client_id: str | None = None
    """Kafka client id of the worker (default ``<app id>-<host>-<pid>``: tells the group's members apart)."""
    log_level: str = "info"
    extra_faust: dict[str, Any] = field(default_factory=dict)

    def resolved_client_id(self) -> str:
        return self.client_id or f"{self.app_id}-{socket.gethostname()}-{os.getpid()}"


class PartitionedTable(faust.Table):  # type: ignore[misc]
    """A Faust table whose writes say which changelog partition they go to.

    Faust sends a write to the partition of the event being processed, which inside a
    batch is not necessarily the partition that owns the key. :class:`TableStore` sets
    :attr:`write_partition` around each write instead.
    """

    write_partition: int | None = None

    def partition_for_key(self, key: Any) -> int | None:
        if self.write_partition is not None:
            return self.write_partition
        partition: int | None = super().partition_for_key(key)
        return partition


class TableStore(KeyValueStore):
    """:class:`~vigie.streams.faust_stages.KeyValueStore` over a :class:`PartitionedTable` of bytes."""

    def __init__(self, table: PartitionedTable) -> None:
        self.table = table

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.table.get(key)
        return value

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.table.write_partition = partition
        try:
            self.table[key] = value
        finally:
            self.table.write_partition = None

    def delete(self, partition: int, key: bytes) -> None:
        self.table.write_partition = partition
        try:
            if key in self.table:
                del self.table[key]
        finally:
            self.table.write_partition = None

    def keys(self) -> list[bytes]:
        return list(self.table.keys())


class ProduceFailed(RuntimeError):
    """The broker did not acknowledge some message (after librdkafka's own retries)."""


class Delivery:
    """The delivery reports still awaited for what one batch produced.

    :attr:`pending` counts the batch's messages not reported yet (0: all delivered, or failed);
    :attr:`error` is the first failure reported (None: none). A failure is also appended to the
    producer-wide ``errors`` list, so that the worker stops at once, whichever batch it hit.
    """

    __slots__ = ("error", "errors", "pending")

    def __init__(self, errors: list[str]) -> None:
        self.pending = 0
        self.error: str | None = None
        self.errors = errors

    @property
    def done(self) -> bool:
        """Whether every message of the batch was reported (delivered, or failed: see :attr:`error`)."""
        return self.pending == 0

    def report(self, err: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery report of one message (called from the producer's ``poll``)."""
        self.pending -= 1
        if err is not None:
            failure = f"{message.topic()}: {err}"
            self.errors.append(failure)
            if self.error is None:
                self.error = failure


class OutputProducer:
    """One librdkafka producer for everything the stages emit.

    Idempotent (retries write no duplicates), murmur2 partitioner (as Faust, aiokafka and the
    Java client: the fusion key lands in the partition the fuse agent reads). :meth:`produce`
    returns the batch's :class:`Delivery`, which the delivery reports count down when
    :meth:`poll` serves them; :meth:`poll` raises :class:`ProduceFailed` once any message failed.
    """

    def __init__(self, bootstrap: str, client_id: str) -> None:
        self.errors: list[str] = []
        self.produced = 0
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": client_id,
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                "linger.ms": 2,
                "message.max.bytes": LARGE_MESSAGE_BYTES,
                "logger": logging.getLogger("vigie.streams.faust.rdkafka"),
            }
        )

    def produce(self, messages: list[OutMessage]) -> Delivery:
        """Queue ``messages`` (librdkafka sends them in the background); their delivery, still pending."""
        delivery = Delivery(self.errors)
        report = delivery.report
        produce = self._producer.produce
        for m in messages:
            while True:
                try:
                    produce(m.topic, m.value, m.key, headers=m.headers or None, on_delivery=report)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    self._producer.poll(0.05)
            delivery.pending += 1
        self.produced += len(messages)
        return delivery

    def poll(self) -> None:
        """Serve the delivery reports that have arrived, without waiting; :class:`ProduceFailed` if any failed."""
        self._producer.poll(0)
        if self.errors:
            raise ProduceFailed("; ".join(self.errors[:5]))

    def close(self, timeout: float = 30.0) -> int:
        """Flush (blocking) for at most ``timeout`` seconds; the messages still undelivered."""
        remaining: int = self._producer.flush(timeout)
        return remaining


class InFlight(Generic[T]):
    """Batches whose output is on its way to Kafka, released in the order they were produced.

    Each entry is a batch's :class:`Delivery` and a payload (the ingest agent's: the batch's input
    events, to acknowledge once released). :meth:`release` hands back the payloads of the oldest
    batches whose messages are all delivered and stops at the first one still pending, even when
    later batches are delivered already: a partition's offsets must be acknowledged in order, since
    the :class:`CommitLedger` commits a partition up to its last acknowledged offset.

    ``limit`` is the back-pressure: an agent waits while that many batches are in flight.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._entries: deque[tuple[Delivery, T]] = deque()
        self.most = 0
        """The most batches that were in flight at once."""

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, delivery: Delivery, payload: T) -> None:
        """Track one more batch, produced after every batch tracked so far."""
        self._entries.append((delivery, payload))
        self.most = max(self.most, len(self._entries))

    def release(self) -> list[T]:
        """The payloads of the oldest batches now delivered, oldest first (forgotten here).

        Raises :class:`ProduceFailed` when the oldest batch had a message fail: it is never
        released, and nothing after it is.
        """
        released: list[T] = []
        entries = self._entries
        while entries and entries[0][0].done:
            delivery, payload = entries[0]
            if delivery.error is not None:
                raise ProduceFailed(delivery.error)
            entries.popleft()
            released.append(payload)
        return released

    def pending(self) -> list[Delivery]:
        """The deliveries of the batches tracked now, oldest first."""
        return [delivery for delivery, _ in self._entries]

    def reset(self) -> int:
        """Forget every batch (their payloads will never be released); how many there were."""
        dropped = len(self._entries)
        self._entries.clear()
        return dropped


class InOrderGate:
    """Lets each partition's messages through in offset order, none skipped, each once.

    Faust can drop a fetched message without handing it to the agent around a rebalance (a
    message fetched before the worker's new generation, or while its flow was suspended, is
    skipped) and read on past it: nothing reads it again, since aiokafka's
    ``seek_to_committed`` does not move a partition without a committed offset above 0. Seen on
    the real broker after a restart: one input offset never ingested, the ones after it were.

    The gate keeps the next offset expected per partition (from the group's committed offset,
    else the partition's first). An offset below it was admitted already (a re-delivery): dropped.
    An offset above it is a hole: the rest of that partition in the batch is held back (not
    admitted, not acknowledged) and the consumer is sought back to the hole. :meth:`watch`
    does the same for a partition whose consumer has not delivered the next expected offset for
    ``stall_s`` since the partition was seen holding it (a hole at the end shows no later offset).
    """

    def __init__(
        self,
        name: str,
        app: faust.App,
        topics: set[str],
        committed: Callable[[list[Any]], Awaitable[dict[Any, int | None]]],
        *,
        stall_s: float = 5.0,
    ) -> None:
        self.name = name
        self.app = app
        self.topics = topics
        self.committed = committed
        self.stall_s = stall_s
        self._next: dict[Any, int] = {}
        self._since: dict[Any, float] = {}
        """Partition -> ``time.monotonic()`` of its last admitted message (or of its first expectation)."""
        self._sought: dict[Any, float] = {}
        self._behind: dict[Any, float] = {}
        """Partition -> ``time.monotonic()`` when :meth:`watch` first saw it hold more than was admitted."""
        self.redelivered = 0
        """Messages dropped because they were admitted before (read again after a seek or a rebalance)."""
        self.seeks = 0
        """Times the consumer was sought back to an offset it had skipped."""

    def reset(self) -> None:
        """Forget every partition (after a rebalance the group's committed offsets say where to start)."""
        self._next.clear()
        self._since.clear()
        self._sought.clear()
        self._behind.clear()

    async def _expect(self, tps: Iterable[Any]) -> None:
        missing = [tp for tp in tps if tp not in self._next]
        if not missing:
            return
        committed = await self.committed(missing)
        fresh = [tp for tp in missing if committed.get(tp) is None]
        earliest = dict(await self.app.consumer.earliest_offsets(*fresh)) if fresh else {}
        now = time.monotonic()
        for tp in missing:
            if tp in self._next:
                # Expected meanwhile by the other caller (the agent's admit or the timer's watch), which
                # may have admitted messages since: going back to the committed offset would read them twice.
                continue
            start = committed.get(tp)
            self._next[tp] = start if start is not None else earliest.get(tp, 0)
            self._since[tp] = now

    async def admit(self, events: list[Any]) -> list[Any]:
        """The events to process, in order; seeks back where the consumer skipped an offset."""
        await self._expect({e.message.tp for e in events})
        admitted: list[Any] = []
        holes: dict[Any, int] = {}
        now = time.monotonic()
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            expected = self._next[tp]
            if offset < expected:
                self.redelivered += 1
            elif offset > expected or tp in holes:
                holes.setdefault(tp, expected)
            else:
                admitted.append(event)
                self._next[tp] = offset + 1
                self._since[tp] = now
                self._sought.pop(tp, None)
        for tp, offset in holes.items():
            await self._seek(tp, offset, f"offset {offset} was skipped (got a later one)")
        return admitted

    async def watch(self) -> None:
        """Seek back the assigned partitions that hold their next expected offset but deliver nothing."""
        assigned = [tp for tp in self.app.consumer.assignment() if tp.topic in self.topics]
        if not assigned:
            return
        await self._expect(assigned)
        ends = await self.app.consumer.highwaters(*assigned)
        now = time.monotonic()
        for tp in assigned:
            end = ends.get(tp)
            if end is None or end <= self._next[tp]:
                self._behind.pop(tp, None)
                continue
            waiting = now - max(self._since[tp], self._behind.setdefault(tp, now))
            log.debug("%s: %s:%d at %d of %d, nothing admitted for %.1f s", self.name, tp.topic, tp.partition,
                      self._next[tp], end, waiting)  # fmt: skip
            if waiting >= self.stall_s:
                await self._seek(tp, self._next[tp], f"nothing delivered for {waiting:.0f} s")

    async def _seek(self, tp: Any, offset: int, why: str) -> None:
        sought = self._sought.get(tp)
        if sought is not None and time.monotonic() - sought < self.stall_s:
            return  # a seek is under way: what arrives meanwhile is held back
        self._sought[tp] = self._since[tp] = time.monotonic()
        self.seeks += 1
        log.warning("%s: %s:%d %s; reading again from offset %d", self.name, tp.topic, tp.partition, why, offset)
        # seek_wait, not seek: Faust's seek() runs aiokafka's in this thread, racing the consumer thread's
        # fetch (seen: KeyError in aiokafka's fetched_records, and the worker stopped); seek_wait runs it there.
        await self.app.consumer.seek_wait({tp: offset})


class CommitLedger:
    """Per gated partition, the offset below which every message is done: what the group may commit.

    Faust's own acknowledgement bookkeeping is off for the gated topics (their ``acks`` are off):
    it acknowledges the messages its stream skips around a rebalance (never processed), and after
    a seek back it "fills the gap" it sees between offsets with offsets not processed yet. Both can
    commit past a message never processed; and the duplicates the gap filling leaves in its list
    made a restarted worker commit one offset per commit (seen on the real broker: a partition
    still 120 offsets behind 30 s after every event was scored).

    Here a message is done once its batch is acknowledged: an ingest batch once its output is
    delivered, a fusion message once a checkpoint covers it. The :class:`InOrderGate` admits each
    partition's offsets in order, none skipped, and batches are acknowledged in that order, so
    the last acknowledged offset + 1 is exact.

    >>> from faust.types import TP
    >>> ledger = CommitLedger()
    >>> for offset in (7, 8, 9):
    ...     ledger.advance(TP("vigie.ens", 0), offset)
    >>> ledger.due({TP("vigie.ens", 0): 7})
    {TP(topic='vigie.ens', partition=0): 10}
    >>> ledger.due({TP("vigie.ens", 0): 10})
    {}
    """

    def __init__(self) -> None:
        self._done: dict[Any, int] = {}

    def advance(self, tp: Any, offset: int) -> None:
        """``offset`` of ``tp`` is done (and every offset before it, by the gate's order)."""
        if offset >= self._done.get(tp, 0):
            self._done[tp] = offset + 1

    def due(self, committed: Mapping[Any, int | None]) -> dict[Any, int]:
        """The offsets to commit: each partition's done offset above its ``committed`` one (None: none)."""
        due: dict[Any, int] = {}
        for tp, done in self._done.items():
            last = committed.get(tp)
            if last is None or done > last:
                due[tp] = done
        return due

    def reset(self) -> None:
        """Forget every partition: after a revocation each is read again from its committed offset."""
        self._done.clear()


class ReadOffsets(defaultdict[Any, int | None]):
    """Faust's read offset per partition (its drain loop drops a fetched message below it), holding
    the offset of a seek until the message there is read.

    Faust's drain loop records each message's offset as it hands the message on, from a batch it
    may have fetched before a seek back: an offset recorded after the seek overwrites the sought
    one, and the drain loop then drops the messages the seek was for (seen: a hole sought back
    to, and refilled only when :class:`InOrderGate`'s watch sought again 6 s later). A pinned
    partition's read offset ignores later offsets until the sought one itself is recorded.
    Written from two threads (the drain loop on the event loop, the seek on the consumer
    thread), hence the lock.

    >>> offsets = ReadOffsets()
    >>> offsets["p"] = 20
    >>> offsets.pin("p", 12)
    >>> offsets["p"] = 21  # fetched before the seek: the seek's offset stays
    >>> offsets["p"]
    12
    >>> offsets["p"] = 12  # the sought message: unpinned
    >>> offsets["p"] = 13
    >>> offsets["p"], offsets.pinned
    (13, {})
    """

    def __init__(self) -> None:
        super().__init__(lambda: None)  # as Faust's: no offset read yet
        self.pinned: dict[Any, int] = {}
        """Partition -> the offset it was sought to, until the message there is read."""
        self._lock = threading.Lock()

    def pin(self, tp: Any, offset: int) -> None:
        """``tp`` was sought to ``offset``: hold it there until the message at ``offset`` is read."""
        with self._lock:
            self.pinned[tp] = offset
            super().__setitem__(tp, offset)

    def __setitem__(self, tp: Any, offset: int | None) -> None:
        with self._lock:
            pinned = self.pinned.get(tp)
            if pinned is not None:
                if offset is not None and offset > pinned:
                    return  # read from a batch fetched before the seek
                del self.pinned[tp]
            super().__setitem__(tp, offset)

    def __delitem__(self, tp: Any) -> None:
        with self._lock:
            self.pinned.pop(tp, None)
            super().__delitem__(tp)

    def pop(self, tp: Any, *default: Any) -> Any:
        with self._lock:
            self.pinned.pop(tp, None)
            return super().pop(tp, *default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        # Faust's seek to the committed offsets after a rebalance: those replace any seek of ours.
        with self._lock:
            new = dict(*args, **kwargs)
            for tp in new:
                self.pinned.pop(tp, None)
            super().update(new)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    """Faust's aiokafka consumer thread, with the fetch wait of :data:`FETCH_MAX_WAIT_S`, and seeks
    that pin the read offset (:class:`ReadOffsets`)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Not a Faust setting; aiokafka reads it when the consumer starts (its fetcher is created then).
        consumer._fetch_max_wait_ms = round(1000 * FETCH_MAX_WAIT_S)
        return consumer

    async def _seek_wait(self, consumer: Any, partitions: Mapping[Any, int]) -> None:
        # Faust's, with the read offset pinned instead of set: see ReadOffsets.
        read_offsets: ReadOffsets = self.consumer._read_offset
        for tp, offset in partitions.items():
            consumer.seek(tp, offset)
            read_offsets.pin(tp, offset)
        await asyncio.wait_for(
            asyncio.gather(*[consumer.position(tp) for tp in partitions]),
            timeout=self.app.conf.broker_request_timeout,
        )


class _Continued:
    """Awaitable going on with ``coro``, a coroutine already stepped once, from where it waited on
    ``awaited`` (what that step yielded): the task awaiting this waits for ``awaited`` first, then
    resumes the coroutine; anything thrown in meanwhile (a cancellation) goes into the coroutine."""

    __slots__ = ("_awaited", "_coro")

    def __init__(self, coro: Any, awaited: Any) -> None:
        self._coro = coro
        self._awaited = awaited

    def __await__(self) -> Any:
        coro, awaited = self._coro, self._awaited
        while True:
            try:
                yield awaited
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # e.g. the awaiting task cancelled: the coroutine handles it
                try:
                    awaited = coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            return (yield from coro.__await__())


class EagerWaitFirst:
    """mode's ``Service.wait_first`` for a mode service, without its tasks when the first coroutine
    finishes at once.

    Faust's fetcher awaits ``wait_first(callback(message), self.suspend_flow.wait())`` for every
    message, so that a callback held up (flow control, a full stream queue) gives way when a
    rebalance suspends the flow. mode runs each argument, and its own stopped and crashed flags, in
    a task of its own under an ``asyncio.wait``: about 45 us per message here (bench/faust_wait_first.py),
    an eighth of a worker's CPU per event, for callbacks that nearly always finish without waiting.
    So the first coroutine is stepped here, after checking that no flag is set: finished, its result
    comes back as mode would give it, the other coroutine closed unstarted; waiting, the rest of it
    (:class:`_Continued`) and the other coroutine go through mode's race as before. Any other call
    (a timeout, other arguments, a flag already set) is mode's own.
    """

    suspend_flow: Any
    _stopped: Any
    _crashed: Any

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        race = super().wait_first  # type: ignore[misc]
        if (
            len(coros) != 2
            or timeout is not None
            or not asyncio.iscoroutine(coros[0])
            or self.suspend_flow.is_set()
            or self._stopped.is_set()
            or self._crashed.is_set()
        ):
            return await race(*coros, timeout=timeout)
        first, other = coros
        try:
            awaited = first.send(None)
        except StopIteration as done:
            _close_unstarted(other)
            return WaitResults([first], [done.value], False)
        except BaseException:
            _close_unstarted(other)
            raise
        return await race(_Continued(first, awaited), other)


def _close_unstarted(awaitable: Any) -> None:
    if asyncio.iscoroutine(awaitable):
        awaitable.close()  # never awaited, by design: no warning


class _Consumer(EagerWaitFirst, faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's consumer, committing the gated partitions' offsets from the transport's :class:`CommitLedger`,
    its read offsets a :class:`ReadOffsets`, each fetched message handed on without mode's tasks when
    nothing holds it up (:class:`EagerWaitFirst`).

    Each of Faust's commits (every ``commit_interval_s``, and when the consumer stops) takes
    what Faust's acknowledgements allow (its other topics) plus the ledger's due offsets.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = ReadOffsets()

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _filter_committable_offsets(self, tps: Iterable[Any]) -> dict[Any, int]:
        offsets: dict[Any, int] = super()._filter_committable_offsets(tps)
        offsets.update(self.transport.ledger.due(self._committed_offset))
        return offsets


class _Transport(faust_aiokafka.Transport):  # type: ignore[misc]
    """Faust's Kafka transport (``kafka://``) with :class:`_Consumer` and its :class:`CommitLedger`."""

    Consumer = _Consumer

    def __init__(self, url: Any, app: faust.App, ledger: CommitLedger) -> None:
        super().__init__(url, app)
        self.ledger = ledger


class _Worker(faust.Worker):  # type: ignore[misc]
    """A Faust worker whose libraries log at INFO at most: their DEBUG records format every message."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        for name in ("faust", "aiokafka", "mode"):
            logging.getLogger(name).setLevel(max(level, logging.INFO))


def _serialise_in_child(fuse: FuseStage, read_fd: int, write_fd: int) -> NoReturn:
    """The whole life of a forked child: write ``fuse.snapshot()`` to the pipe and exit.

    The child has only the forking thread (librdkafka's, aiokafka's and the executor's threads stay
    in the parent), so it touches none of the parent's clients, runs none of its clean-up
    (``os._exit``) and leaves signals to their defaults (a signal must not reach the parent's loop
    through the inherited wakeup descriptor).
    """
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        os.close(read_fd)
        view = memoryview(fuse.snapshot())
        while view:
            view = view[os.write(write_fd, view) :]
        code = 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _receive_snapshot(pid: int, read_fd: int) -> bytes:
    """Read a child's snapshot to the end of its pipe and reap the child (in a thread: both block)."""
    with open(read_fd, "rb") as pipe:
        blob = pipe.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"the child process serialising the checkpoint exited with {code}")
    return blob


def _fail_stop(what: str, exc: BaseException) -> NoReturn:
    """Exit now, without committing: the unacknowledged batch will be read again."""
    log.critical("%s failed (%r): exiting without committing offsets; restart the worker", what, exc, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(FAIL_STOP_EXIT_CODE)


class VigieFaustApp:
    """The Faust app of one worker: topics, the fusion table, the two agents, the producer, the sink.

    ``partitions`` must be the partition count of the deployment's topics (see
    :func:`prepare_topics`). ``sink`` receives events, dead letters, scores and alerts
    (None: Kafka only).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        partitions: int,
        *,
        pipeline: ScoringPipeline | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.settings = settings
        self.partitions = partitions
        self.names = TopicNames(settings.prefix)
        if pipeline is None:
            alerting = NoisyOrAlerting(threshold=settings.threshold) if settings.threshold is not None else None
            pipeline = ScoringPipeline(alerting=alerting, deadline_lag=timedelta(hours=settings.deadline_lag_h))
        self.pipeline = pipeline
        self.sink = sink
        self.health: HealthReporter | None = health_reporter(sink, "faust")
        """Samples this worker's counts into the sink's ``pipeline_metrics`` (the boards' "Runtimes" row)."""
        client_id = settings.resolved_client_id()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.app_id,
            broker=[f"kafka://{host}" for host in settings.bootstrap.split(",")],
            broker_client_id=client_id,
            store="memory://",
            datadir=str(settings.data_dir),
            topic_replication_factor=settings.replication_factor,
            topic_partitions=partitions,
            topic_allow_declare=True,
            web_enabled=False,
            producer_max_request_size=LARGE_MESSAGE_BYTES,
            producer_max_batch_size=1024 * 1024,
            producer_linger=0.005,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=settings.commit_interval_s,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
            stream_recovery_delay=0.1,
            stream_ack_exceptions=False,
            stream_wait_empty=False,  # unacknowledged fusion messages are replayed from the checkpoint
            processing_guarantee="at_least_once",
            **settings.extra_faust,
        )
        # Before anything (topics, tables) makes the app create its default transport.
        assert self.app._transport is None, "the app's transport was created before it could be replaced"
        self.ledger = CommitLedger()
        self.app.transport = _Transport(self.app.conf.broker_consumer, self.app, self.ledger)
        self.producer = OutputProducer(settings.bootstrap, client_id)
        self._offsets_reader: Consumer | None = None
        self._offsets_lock = asyncio.Lock()
        self.gates = [
            InOrderGate("ingest", self.app, set(self.names.inputs), self._committed),
            InOrderGate("fuse", self.app, {self.names.fusion}, self._committed),
        ]
        self.checkpoints = self._table("fusion")
        cache = DecodedCache()
        self.ingest = IngestStage(self.names, cache=cache)
        self.fuse = FuseStage(self.names, self.pipeline, TableStore(self.checkpoints), cache=cache)
        self.fusion_partition = (murmur2(FUSION_KEY) & 0x7FFFFFFF) % partitions
        self.batches = 0
        self.checkpoints_taken = 0
        self.checkpoint_seconds = 0.0
        self.last_checkpoint_seconds = 0.0
        self.waits_for_delivery = 0
        """Times an agent waited for deliveries: back-pressure, or a checkpoint waiting for the output it covers."""
        self._fusion_unacked: list[Any] = []
        self._fuse_stream: Any = None
        self._ingest_stream: Any = None
        self._ingest_in_flight: InFlight[list[Any]] = InFlight(settings.batches_in_flight)
        """Ingest batches produced, not yet delivered; their input events are acknowledged once released."""
        self._fuse_in_flight: InFlight[None] = InFlight(settings.batches_in_flight)
        """Fuse batches produced, not yet delivered; a checkpoint waits until none is left."""
        self._generation = 0
        """Bumped when partitions are revoked: a batch or checkpoint that waited across a revocation stops there."""
        self._fork = settings.checkpoint_in_child and hasattr(os, "fork")
        self._child: int | None = None
        """Process id of the child serialising a checkpoint, while one does."""
        self._checkpointing: asyncio.Future[None] | None = None
        """A checkpoint under way (its snapshot taken, not yet written)."""
        self._fuse_lock = asyncio.Lock()  # a batch and its checkpoint, or an idle checkpoint: one at a time
        self._last_checkpoint = time.monotonic()
        self._stopping = False
        """Set when the worker shuts down: no checkpoint is written from then on."""
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.on_before_shutdown.connect(self._on_shutdown)
        self.app.timer(GATE_WATCH_INTERVAL_S)(self._watch_gates)
        self.app.timer(IDLE_CHECKPOINT_POLL_S)(self._checkpoint_if_idle)
        self.app.task(self._pump_deliveries)
        self._agents()

    def stats(self) -> str:
        """Counters worth a log line: batches, events, replays absorbed, checkpoints."""
        return (
            f"{self.batches} batches; {self.ingest.accepted} events ingested; {self.ingest.rejected} dead-lettered; "
            f"{self.fuse.fused} events fused; {self.fuse.duplicates} duplicate(s) skipped; "
            f"{self.fuse.resent} re-sent event(s) skipped; "
            f"{self.fuse.failed} failed in the pipeline; {self.checkpoints_taken} checkpoint(s), "
            f"{self.checkpoint_seconds:.1f} s of them on the event loop; {self.producer.produced} messages produced; "
            f"{max(self._ingest_in_flight.most, self._fuse_in_flight.most)} batch(es) in flight at most; "
            f"{self.waits_for_delivery} wait(s) for deliveries; "
            f"{self.fuse.cache.hits if self.fuse.cache is not None else 0} decodes saved; "
            f"{sum(g.seeks for g in self.gates)} seek(s) back to a skipped offset; "
            f"{sum(g.redelivered for g in self.gates)} re-delivered message(s) dropped"
        )

    def health_counts(self) -> Counts:
        """What this worker did since it started: events fused, their scores and alerts, inputs dead-lettered."""
        fuse = self.fuse
        return Counts(fuse.fused, fuse.scores, fuse.alerts, self.ingest.rejected + fuse.failed)

    def close(self) -> None:
        """Deliver what is still queued (bounded wait) and release the Kafka clients of the app's own."""
        if self.health is not None:
            self.health.final(self.health_counts())
        undelivered = self.producer.close()
        if undelivered:
            log.warning("%d message(s) not delivered at stop: their batches were not acknowledged", undelivered)
        if self._child is not None:  # a checkpoint still being serialised: not written, its messages replayed
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._child, signal.SIGKILL)
        if self._offsets_reader is not None:
            self._offsets_reader.close()
            self._offsets_reader = None

    async def _committed(self, tps: list[Any]) -> dict[Any, int | None]:
        """The group's committed offset of each partition (None: nothing committed), read from the broker."""
        async with self._offsets_lock:
            if self._offsets_reader is None:
                self._offsets_reader = Consumer(
                    {
                        "bootstrap.servers": self.settings.bootstrap,
                        "group.id": self.settings.app_id,  # only read, never joined
                        "enable.auto.commit": False,
                        "logger": logging.getLogger("vigie.streams.faust.rdkafka"),
                    }
                )
            reader = self._offsets_reader
            wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps]
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(None, lambda: reader.committed(wanted, timeout=30))
        offsets = {(f.topic, f.partition): f.offset for f in found}
        return {tp: offsets[(tp.topic, tp.partition)] if offsets[(tp.topic, tp.partition)] >= 0 else None for tp in tps}

    async def _watch_gates(self) -> None:
        if self.app.rebalancing:
            return
        # Together: each gate's offset look-up waits for the consumer thread's current fetch (~1 s),
        # one after the other they overran the timer's interval.
        outcomes = await asyncio.gather(*(gate.watch() for gate in self.gates), return_exceptions=True)
        for gate, outcome in zip(self.gates, outcomes, strict=True):
            if isinstance(outcome, Exception):  # the consumer may be between generations: try again next time
                log.info("%s: could not check the partitions (%r)", gate.name, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def _on_revoked(self, sender: Any, revoked: Any = (), **kwargs: Any) -> None:
        """Messages not acknowledged yet will be read again: forget them, and the fusion state built on them.

        Ingest batches still in flight are forgotten too (never acknowledged here: read again). Fuse
        batches in flight stay tracked: a later checkpoint still waits for their delivery.
        """
        self._generation += 1
        self._fusion_unacked.clear()
        self._ingest_in_flight.reset()
        self.ledger.reset()
        self.fuse.invalidate()
        for gate in self.gates:
            gate.reset()

    async def _on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        """No checkpoint from now on, and one under way is dropped (what it covers is read again after a
        restart, as after a revocation). Faust stops its producer after this: a checkpoint written later
        would reach the table's changelog after it closed, and the worker would crash on its way out."""
        self._stopping = True
        self._generation += 1

    async def _on_assigned(self, sender: Any, assigned: Any = (), **kwargs: Any) -> None:
        """Whoever owns the fusion partition now starts from its last checkpoint (restored by Faust)."""
        self.fuse.invalidate()
        for gate in self.gates:
            gate.reset()
        if any(tp.topic == self.names.fusion and tp.partition == self.fusion_partition for tp in assigned):
            log.info("this worker fuses (fusion partition %d)", self.fusion_partition)

    def _raw_topic(self, *names: str) -> Any:
        return self.app.topic(
            *names,
            acks=False,  # committed from the ledger, not from Faust's acknowledgements (see CommitLedger)
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.partitions,
        )

    def _table(self, name: str) -> PartitionedTable:
        table = PartitionedTable(
            self.app,
            name=name,
            beacon=self.app.tables.beacon,
            key_type=bytes,
            value_type=bytes,
            partitions=self.partitions,
            extra_topic_configs={"max.message.bytes": str(LARGE_MESSAGE_BYTES)},
        )
        self.app.tables.add(table)
        return table

    def _checkpoint_due(self) -> bool:
        if self._stopping or self._checkpointing is not None:  # one at a time: the next once this one is written
            return False
        spacing = max(self.settings.fusion_checkpoint_s, self.last_checkpoint_seconds / CHECKPOINT_TIME_SHARE)
        return time.monotonic() - self._last_checkpoint >= spacing

    async def _checkpoint(self, stream: Any) -> None:
        """Checkpoint the pipeline, then acknowledge the fusion messages it covers. Hold ``_fuse_lock``.

        A checkpoint is written only once every fuse batch it covers is delivered: a restart skips
        the events it covers (their watermarks), so their scores and alerts must be in Kafka by
        then. A revocation meanwhile cancels the checkpoint (the state is stale).

        In a child process (``checkpoint_in_child``, where ``os.fork`` exists): the fork is the
        snapshot, a copy-on-write copy of the pipeline between two batches; the child serialises it
        while this process goes on scoring, and :meth:`_finish_checkpoint` writes it and
        acknowledges what it covers. Else on the event loop, the agent waiting meanwhile.
        """
        if self._fork and self.fuse.loaded:
            self._start_checkpoint(stream)
            return
        generation = self._generation
        await self._serve_until(lambda: len(self._fuse_in_flight) == 0)
        if generation != self._generation:
            return
        began = time.perf_counter()
        written = self.fuse.checkpoint()
        elapsed = time.perf_counter() - began
        self._checkpointed(stream, self._fusion_unacked, written, elapsed, elapsed)
        self._fusion_unacked.clear()

    def _checkpointed(self, stream: Any, covered: list[Any], written: int, seconds: float, on_loop: float) -> None:
        """Acknowledge the fusion messages a checkpoint just written covers; count it (``seconds`` from its
        snapshot to now, ``on_loop`` of them spent on the event loop)."""
        self.checkpoints_taken += 1
        self.checkpoint_seconds += on_loop
        self.last_checkpoint_seconds = seconds
        self._ack(stream, covered)
        self._last_checkpoint = time.monotonic()
        log.debug(
            "checkpoint %d: %d bytes in %.0f ms (%.0f ms on the event loop), %d fusion messages acknowledged",
            self.fuse.seq,
            written,
            1000 * seconds,
            1000 * on_loop,
            len(covered),
        )

    def _start_checkpoint(self, stream: Any) -> None:
        """Fork a child serialising the pipeline as it is now; :meth:`_finish_checkpoint` takes it from there."""
        covered, self._fusion_unacked = self._fusion_unacked, []
        deliveries = self._fuse_in_flight.pending()  # the output of every batch the snapshot covers
        began = time.perf_counter()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            _serialise_in_child(self.fuse, read_fd, write_fd)
        os.close(write_fd)
        self._child = pid
        forking = time.perf_counter() - began
        finish = self._finish_checkpoint(stream, covered, deliveries, pid, read_fd, began, forking, self._generation)
        self._checkpointing = asyncio.ensure_future(finish)

    async def _finish_checkpoint(
        self,
        stream: Any,
        covered: list[Any],
        deliveries: list[Delivery],
        pid: int,
        read_fd: int,
        began: float,
        forking: float,
        generation: int,
    ) -> None:
        """Receive the child's snapshot; once the output it covers is delivered, write it and acknowledge."""
        try:
            try:
                blob = await asyncio.to_thread(_receive_snapshot, pid, read_fd)
            except Exception as exc:  # the child failed: next time on the event loop, covering these too
                log.warning("checkpoint in a child process failed (%r): checkpoints stay on the event loop", exc)
                self._fork = False
                self.checkpoint_seconds += forking
                if generation == self._generation:
                    self._fusion_unacked[:0] = covered
                return
            finally:
                self._child = None
            await self._serve_until(lambda: all(d.done for d in deliveries))
            async with self._fuse_lock:
                if generation != self._generation:
                    return  # revoked meanwhile: what it covers will be read again
                writing = time.perf_counter()
                written = self.fuse.save(blob)
                on_loop = forking + time.perf_counter() - writing
                self._checkpointed(stream, covered, written, time.perf_counter() - began, on_loop)
        except Exception as exc:
            _fail_stop("writing a checkpoint", exc)
        finally:
            self._checkpointing = None

    async def _checkpoint_if_idle(self) -> None:
        """Checkpoint fusion messages still unacknowledged when no batch came to do it.

        The fuse agent checkpoints after a batch once one is due; on a stream gone quiet no
        batch comes, and without this the last messages would stay uncommitted: replayed
        after a restart, and shown as consumer lag for as long as the stream stays quiet.
        """
        stream = self._fuse_stream
        if stream is None or not self._fusion_unacked or self.app.rebalancing or self._fuse_lock.locked():
            return
        async with self._fuse_lock:
            if self._fusion_unacked and self._checkpoint_due():
                await self._checkpoint(stream)

    # -- deliveries and acknowledgements -------------------------------------------------------

    def _ack(self, stream: Any, events: list[Any]) -> None:
        """Acknowledge ``events`` on ``stream``, in order, without yielding to the loop.

        What Faust's ``Stream.ack`` does (the event's ack, then the sensors), without a coroutine
        per message, and the ledger's advance (what is committed): an ingest batch is acknowledged
        in one step, which no commit can split.
        """
        sensors = self.app.sensors
        advance = self.ledger.advance
        for event in events:
            message = event.message
            last = event.ack()
            advance(message.tp, message.offset)
            sensors.on_stream_event_out(message.tp, message.offset, stream, event)
            if last:
                sensors.on_message_out(message.tp, message.offset, message)

    def _serve_deliveries(self) -> int:
        """Serve the delivery reports that arrived; acknowledge the ingest batches now delivered, oldest
        first. Returns the batches released. Exits the worker (without committing) if a message failed."""
        try:
            self.producer.poll()
            released = len(self._fuse_in_flight.release())
            for events in self._ingest_in_flight.release():
                self._ack(self._ingest_stream, events)
                released += 1
        except Exception as exc:
            _fail_stop("producing (a delivery report)", exc)
        return released

    async def _serve_until(self, done: Callable[[], bool]) -> None:
        """Serve delivery reports, without blocking the loop, until ``done()`` (checked after each serving)."""
        self._serve_deliveries()
        if done():
            return
        self.waits_for_delivery += 1
        pause = DELIVERY_POLL_MIN_S
        while not done():
            await asyncio.sleep(pause)
            pause = min(pause * 2, DELIVERY_POLL_MAX_S)
            self._serve_deliveries()

    async def _wait_for_room(self, in_flight: InFlight[Any]) -> None:
        """Back-pressure: wait until ``in_flight`` can take one more batch."""
        await self._serve_until(lambda: len(in_flight) < in_flight.limit)

    async def _pump_deliveries(self) -> None:
        """Serve delivery reports for the worker's whole life: an ingest batch is acknowledged soon after
        its delivery, while the agents go on reading (they also serve them after each batch)."""
        pause = DELIVERY_POLL_MIN_S
        while True:
            released = self._serve_deliveries()
            # Fast while deliveries come; backs off to the max while none does (a quiet stream, a slow broker).
            pause = DELIVERY_POLL_MIN_S if released else min(pause * 2, DELIVERY_POLL_MAX_S)
            await asyncio.sleep(pause)

    # -- the agents ----------------------------------------------------------------------------

    def _agents(self) -> None:
        size = self.settings.batch_size
        ingest_gate, fuse_gate = self.gates

        async def batches(stream: Any) -> AsyncIterator[list[Any]]:
            """The stream's events in batches of up to ``size``, cut as soon as nothing more is waiting.

            Nothing waiting means: none in the agent's queue, and Kafka holds nothing past the last
            message's offset (its partition's high-water mark, as of the last fetch). While Kafka holds
            more, the batch waits for it up to :data:`BATCH_LINGER_S` (a backlog: batches grow to
            ``size``); a stream that keeps up adds no wait. Acknowledgements are left to the caller.
            Faust's ``take_events``/``noack_take`` are not used: their buffer hung a worker under load here.
            """
            waiting = stream.channel.queue
            consumer = self.app.consumer
            batch: list[Any] = []
            started = 0.0
            async for event in stream.noack().events():
                if not batch:
                    started = time.monotonic()
                batch.append(event)
                if len(batch) < size and waiting.empty():
                    message = event.message
                    try:
                        end = consumer.highwater(message.tp)
                    except Exception:  # e.g. the partition revoked meanwhile: cut the batch as it is
                        end = None
                    deadline = started + BATCH_LINGER_S
                    while (
                        waiting.qsize() < size - len(batch)
                        and end is not None
                        and end > message.offset + 1 + waiting.qsize()
                        and time.monotonic() < deadline
                    ):
                        await asyncio.sleep(BATCH_LINGER_STEP_S)
                if len(batch) >= size or waiting.empty():
                    yield batch
                    batch = []

        async def ingest(stream: Any) -> None:
            # Acknowledged once processed, sunk and delivered, in order (see InFlight); held-back messages never are.
            self._ingest_stream = stream
            in_flight = self._ingest_in_flight
            async for events in batches(stream):
                admitted = await ingest_gate.admit(events)
                if admitted:
                    generation = self._generation
                    delivery = await self._run("ingest", self.ingest.process, admitted)
                    if generation == self._generation:  # else revoked meanwhile: read again, never acknowledged
                        in_flight.add(delivery, admitted)
                await self._wait_for_room(in_flight)

        async def fuse(stream: Any) -> None:
            # Acknowledged only once a checkpoint covers them, after their output was delivered.
            self._fuse_stream = stream
            in_flight = self._fuse_in_flight
            async for events in batches(stream):
                async with self._fuse_lock:
                    generation = self._generation
                    admitted = await fuse_gate.admit(events)
                    if admitted:
                        in_flight.add(await self._run("fuse", self.fuse.process, admitted), None)
                    if generation == self._generation:  # else revoked meanwhile: the state is restored again
                        self._fusion_unacked.extend(admitted)
                        if self._checkpoint_due():
                            await self._checkpoint(stream)
                await self._wait_for_room(in_flight)

        self.app.agent(self._raw_topic(*self.names.inputs), name="vigie-ingest")(ingest)
        self.app.agent(self._raw_topic(self.names.fusion), name="vigie-fuse")(fuse)

    @staticmethod
    def _store(sink: Sink, records: list[BaseModel], health: HealthReporter | None, counts: Counts) -> None:
        """Write ``records`` and wait until they are stored (before their messages are acknowledged); then,
        when one is due, a health sample with ``counts``."""
        sink.write(records)
        sink.flush()
        if health is not None:
            health.maybe(counts)

    async def _run(self, stage: str, process: Callable[[list[InMessage]], StageOutput], events: list[Any]) -> Delivery:
        """Process a batch, queue its output for Kafka and store its records (when a sink is configured).

        Returns the output's delivery, still pending: the caller acknowledges the batch once it is
        done. The sink, being synchronous, is waited for here (in a thread).
        """
        batch = [
            InMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
            for e in events
        ]
        began = time.perf_counter()
        output = process(batch)
        computed = time.perf_counter()
        try:
            delivery = self.producer.produce(output.messages)
            if self.sink is not None and output.records:
                # In a thread: the event loop keeps fetching and heart-beating while the store
                # works (both agents' batches take turns on the sink's lock there, not here).
                await asyncio.to_thread(self._store, self.sink, output.records, self.health, self.health_counts())
        except Exception as exc:
            _fail_stop(f"{stage}: producing or writing to the sink", exc)
        self.batches += 1
        log.debug(
            "%s: %d in, %d out, %d records; %.1f ms computing, %.1f ms producing and sinking",
            stage,
            len(batch),
            len(output.messages),
            len(output.records),
            1000 * (computed - began),
            1000 * (time.perf_counter() - computed),
        )
        return delivery


# --------------------------------------------------------------------------------------------
# Running a worker
# --------------------------------------------------------------------------------------------


def prepare_topics(settings: WorkerSettings) -> int:
    """Create missing topics (when asked) and return the deployment's partition count."""
    names = TopicNames(settings.prefix)
    if settings.create_topics:
        counts = create_topics(
            settings.bootstrap,
            names,
            settings.partitions or 3,
            replication_factor=settings.replication_factor,
        )
    else:
        wanted = [names.name(kind) for kind in names.all_kinds()]
        counts = describe_partitions(settings.bootstrap, wanted)
        missing = sorted(set(wanted) - set(counts))
        if missing:
            raise RuntimeError(f"missing topics {missing}: run `vigie faust topics` or pass --create-topics")
    found = set(counts.values())
    if len(found) != 1:
        raise RuntimeError(f"the deployment's topics must all have the same partition count: {counts}")
    (partitions,) = found
    if settings.partitions and settings.partitions != partitions:
        log.warning("topics have %d partitions (not %d): using %d", partitions, settings.partitions, partitions)
    return partitions


def run_worker(settings: WorkerSettings) -> None:
    """Prepare the topics, open the sink, and run a worker until SIGTERM/SIGINT."""
    partitions = prepare_topics(settings)
    sink = open_sink(settings.sink)
    try:
        vigie_app = VigieFaustApp(settings, partitions, sink=sink)
        worker = _Worker(vigie_app.app, loglevel=settings.log_level, quiet=True)
        try:
            worker.execute_from_commandline()
        except SystemExit as done:
            if done.code not in (0, None):
                raise
        finally:
            vigie_app.close()
            log.info("stopped: %s", vigie_app.stats())
    finally:
        if sink is not None:
            sink.close()


# --------------------------------------------------------------------------------------------
# vigie faust ...
# --------------------------------------------------------------------------------------------

faust_app_cli = typer.Typer(help="Kafka runtime: Faust workers scoring the input topics.", no_args_is_help=True)

Bootstrap = Annotated[
    str, typer.Option("--bootstrap", "-b", envvar="VIGIE_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers, HOST:PORT.")
]
Prefix = Annotated[str, typer.Option(help="Topic name prefix of the deployment.")]


@faust_app_cli.command("worker")
def worker_command(
    bootstrap: Bootstrap = "127.0.0.1:9092",
    prefix: Prefix = DEFAULT_PREFIX,
    app_id: Annotated[str, typer.Option(help="Faust app id: consumer group and changelog names.")] = "vigie-scoring",
    sink: Annotated[
        str,
        typer.Option(
            envvar="VIGIE_CLICKHOUSE_URL",  # keeps a password off the command line (and out of `ps`)
            help="'none', 'chdb:PATH' (embedded ClickHouse) or 'clickhouse://USER:PASSWORD@HOST:PORT/DB'.",
        ),
    ] = "none",
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Partitions of topics created now (default: existing count, or 3).")
    ] = None,
    replication_factor: Annotated[int, typer.Option(min=1)] = 1,
    create: Annotated[bool, typer.Option("--create-topics/--no-create-topics", help="Create missing topics.")] = True,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Messages per batch at most (a batch is cut when none are waiting).")
    ] = 2000,
    batches_in_flight: Annotated[
        int,
        typer.Option(min=1, help="Batches per agent whose output may await its delivery at once (back-pressure)."),
    ] = BATCHES_IN_FLIGHT,
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Use noisy-OR alerting at this fused risk (default: the learned fusion)."),
    ] = None,
    deadline_lag: DeadlineLagHours = DEFAULT_DEADLINE_LAG_H,
    fusion_checkpoint: Annotated[
        float, typer.Option(min=0.1, help="Seconds between checkpoints of the pipeline at least (and its commits).")
    ] = 5.0,
    checkpoint_in_child: Annotated[
        bool,
        typer.Option(
            "--checkpoint-in-child/--checkpoint-in-loop",
            help="Serialise checkpoints in a forked child while scoring goes on, or on the event loop.",
        ),
    ] = True,
    data_dir: Annotated[Path, typer.Option(help="Faust's local data directory.")] = Path("vigie-data/faust"),
    session_timeout: Annotated[
        float, typer.Option(min=6.0, help="Seconds before a silent worker's partitions are reassigned.")
    ] = 30.0,
    commit_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between offset commits.")] = 1.0,
    client_id: Annotated[
        str | None, typer.Option(help="Kafka client id (default: APP_ID-HOST-PID, to tell the members apart).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run a Faust worker: input topics in, scores, alerts and dead letters out."""
    settings = WorkerSettings(
        bootstrap=bootstrap,
        prefix=prefix,
        app_id=app_id,
        partitions=partitions,
        replication_factor=replication_factor,
        create_topics=create,
        batch_size=batch_size,
        batches_in_flight=batches_in_flight,
        sink=sink,
        threshold=threshold,
        deadline_lag_h=deadline_lag,
        fusion_checkpoint_s=fusion_checkpoint,
        checkpoint_in_child=checkpoint_in_child,
        data_dir=data_dir,
        session_timeout_s=session_timeout,
        commit_interval_s=commit_interval,
        client_id=client_id,
        log_level=log_level,
    )
    from .runner import tune_garbage_collector

    tune_garbage_collector()
    try:
        resolve_sink_spec(settings.sink)  # before Kafka: a bad --sink is said first, not after the topics
    except SinkSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--sink") from None
    run_worker(settings)


@faust_app_cli.command("topics")
def topics_command(
    bootstrap: Bootstrap = "127.0.0.1:9092",
    prefix: Prefix = DEFAULT_PREFIX,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of every topic created.")] = 3,
    replication_factor: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Create the deployment's topics (inputs, outputs, internal) that are missing."""
    counts = create_topics(bootstrap, TopicNames(prefix), partitions, replication_factor=replication_factor)
    for name, count in counts.items():
        typer.echo(f"{name}\t{count} partition(s)")


if __name__ == "__main__":
    faust_app_cli()
