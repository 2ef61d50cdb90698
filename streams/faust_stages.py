"""The two stages of the Kafka topology, as plain Python (no Faust in here).

:mod:`vigie.streams.faust_app` wires these stages to Faust agents and a table; tests drive
them directly. Each stage takes a batch of :class:`InMessage`, reads and writes state
through a :class:`KeyValueStore` (a Faust table in the worker, a dict in tests) and returns
the messages to produce and the records for the sink. No scoring happens here: the fuse
stage hands each event to a real :class:`~vigie.operators.ScoringPipeline`.

The topology (``P`` = topic prefix)::

    P.ens, P.declarations,  --ingest-->  P.fusion       accepted events, original bytes, packed per batch,
    P.excise, P.outcomes        |                       keyed "fusion" (one partition)
                                |        P.dead-letter  bad input: original bytes, reason in headers
                                '        sink: the events, the dead letters

    P.fusion                --fuse---->  P.scores       keyed by subject event id
                                |        P.alerts       keyed by office
                                |        sink: the scores, the alerts
                                '-- table fusion: checkpoints of the whole pipeline, detectors' keyed state included

*Ingest* (as many partitions as the input topics, shared by the workers of a group)
decodes and validates each message with the shared codec, dead-letters what fails, and
forwards each accepted event's original bytes, with where it came from (input topic,
partition, offset), to the ``fusion`` topic: one message per batch (:class:`FusionPacker`).

*Fuse* runs the pipeline on each forwarded event, in the order of the ``fusion`` partition.
The pipeline holds state that every event reads and writes (the learned fusion, each
office's alert budget, the ENS registry, the join of control outcomes to what was scored),
so it runs in one place and one order; the detectors' keyed states are part of it
(``ScoringPipeline.stores``) and are checkpointed with it. With one input partition the
scores and alerts are exactly the in-process runner's; with several, they are the in-process
runner's on the events in the order ingest forwarded them (each input partition in order).

Why not repartition the detectors' units by state key on an internal topic (the earlier
topology: ingest -> units -> score -> fusion -> fuse): the global part of the pipeline is
about half of the work per event and cannot be split, so that hop bought no scale while it
tripled the messages and the serialisation per event, and it made outcome feedback reach the
detectors late; measured in ``bench/RESULTS.md`` ("kafka-faust").

Replays (a worker restarted after a crash, or a partition moved to another worker, re-reads
what was not committed) are exact: the checkpoint records, per input partition, the highest
input offset fused (:attr:`FuseStage.watermarks`); an event at or below it is a duplicate
(ingest forwarded it again) and is skipped. Fusion messages are acknowledged only once a
checkpoint covers them, so a restarted fuse stage re-reads from its checkpoint and computes
again exactly what it computed before: the same scores and alerts, with the same ids. A
checkpoint is :meth:`FuseStage.snapshot` (the state and watermarks, serialised: the only step
that reads the pipeline) then :meth:`FuseStage.save` (the table writes); the worker takes the
snapshot in a forked copy of itself and saves it later, acknowledging only the messages fused
before the fork, so the checkpoint and what it covers still match exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from vigie.operators import PipelineResult, ScoringPipeline
from vigie.operators.deadlines import SourceClock
from vigie.operators.pipeline import event_ms
from vigie.schemas import EventRejected, dead_letter, decode_event, encode_event

from .topics import LARGE_MESSAGE_BYTES, TopicNames, check_topic

__all__ = [
    "DEAD_LETTER_HEADERS",
    "FUSION_KEY",
    "DecodedCache",
    "DictStore",
    "FuseStage",
    "FusionPacker",
    "InMessage",
    "IngestStage",
    "KeyValueStore",
    "OutMessage",
    "StageOutput",
    "read_fusion_message",
]

log = logging.getLogger(__name__)

WIRE_VERSION = 2
"""Version of the ``fusion`` messages and of the checkpoints (2: whole pipeline, per-source watermarks)."""

FUSION_KEY = b"fusion"
"""Key of every ``fusion`` message: the pipeline is one state, in one partition."""

FUSION_MAGIC = b"vigie-fusion/2\n"
"""First bytes of a ``fusion`` message."""

DEAD_LETTER_HEADERS = (
    "vigie.reason",
    "vigie.field",
    "vigie.source",
    "vigie.topic",
    "vigie.partition",
    "vigie.offset",
    "vigie.dead-letter-id",
    "vigie.received-at",
    "vigie.raw-size",
)
"""Headers of a dead-letter message. Its key is the dead-letter id, its value the original
bytes unchanged (cut to :data:`DEAD_LETTER_MAX_RAW` bytes, with header ``vigie.truncated: 1``,
only for a message too large to be forwarded whole)."""

DEAD_LETTER_MAX_RAW = LARGE_MESSAGE_BYTES - 64 * 1024

PACK_BYTES = 1 << 20
"""A ``fusion`` message carries events up to about this many bytes (one event may be larger)."""

CHECKPOINT_CHUNK = 512 * 1024
"""Bytes per table value of a checkpoint (a checkpoint is split in chunks of this size)."""

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class InMessage:
    """A consumed Kafka message, whatever client read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A message to produce. ``topic`` is the full topic name."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class StageOutput:
    """What a batch gave: messages to produce (in order) and records for the sink."""

    messages: list[OutMessage] = field(default_factory=list)
    records: list[BaseModel] = field(default_factory=list)


class KeyValueStore(Protocol):
    """Keyed bytes with a changelog partition per write (a Faust table in the worker).

    A key must always be written with the partition of the messages that own it, so that
    the worker which owns that partition after a rebalance restores it.
    """

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None."""
        ...

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Set ``key`` (its changelog record goes to ``partition``)."""
        ...

    def delete(self, partition: int, key: bytes) -> None:
        """Remove ``key`` (a tombstone goes to ``partition``)."""
        ...

    def keys(self) -> Iterable[bytes]:
        """The keys held locally."""
        ...


class DictStore:
    """A :class:`KeyValueStore` in a dict, remembering each key's partition (tests, benches)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.partitions: dict[bytes, int] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data[key] = value
        self.partitions[key] = partition

    def delete(self, partition: int, key: bytes) -> None:
        self.data.pop(key, None)
        self.partitions.pop(key, None)

    def keys(self) -> Iterable[bytes]:
        return list(self.data)


# --------------------------------------------------------------------------------------------
# The fusion topic's messages
# --------------------------------------------------------------------------------------------


class FusionPacker:
    """Packs forwarded events into few ``fusion`` messages: Faust's cost is per message, not per byte.

    A message is :data:`FUSION_MAGIC` then, per event, a header line
    ``SOURCE <tab> OFFSET <tab> LENGTH <newline>`` followed by the event's original bytes
    (``LENGTH`` of them), where ``SOURCE`` is ``topic:partition`` of the input message.
    The bytes travel unchanged: no escaping, no second JSON parse to unpack them.
    """

    def __init__(self, topic: str, max_bytes: int = PACK_BYTES) -> None:
        self.topic = topic
        self.max_bytes = max_bytes
        self._parts: list[bytes] = [FUSION_MAGIC]
        self._size = 0
        self._done: list[OutMessage] = []

    def add(self, source: str, offset: int, raw: bytes) -> None:
        if self._size and self._size + len(raw) > self.max_bytes:
            self._cut()
        head = f"{source}\t{offset}\t{len(raw)}\n".encode()
        self._parts += (head, raw)
        self._size += len(head) + len(raw)

    def _cut(self) -> None:
        self._done.append(OutMessage(self.topic, FUSION_KEY, b"".join(self._parts)))
        self._parts = [FUSION_MAGIC]
        self._size = 0

    def messages(self) -> list[OutMessage]:
        """The packed messages (none when nothing was added)."""
        if self._size:
            self._cut()
        done, self._done = self._done, []
        return done


def read_fusion_message(value: bytes | None) -> Iterator[tuple[str, int, bytes]]:
    """``(source, offset, raw)`` of each event in a ``fusion`` message; ``ValueError`` if it is not one."""
    if not value or not value.startswith(FUSION_MAGIC):
        raise ValueError("not a fusion message (wrong magic or version)")
    position = len(FUSION_MAGIC)
    end = len(value)
    while position < end:
        newline = value.find(b"\n", position)
        if newline < 0:
            raise ValueError(f"truncated header at byte {position}")
        source, offset, length = value[position:newline].decode().split("\t")
        start = newline + 1
        stop = start + int(length)
        if stop > end:
            raise ValueError(f"truncated event at byte {start}: {length} bytes announced, {end - start} left")
        yield source, int(offset), value[start:stop]
        position = stop


class DecodedCache:
    """Events ingest has decoded, for fuse in the same worker to take instead of decoding them again.

    Keyed by input ``(source, offset)``; an entry is used only for the very same bytes, so a
    miss (another worker ingested the event, or the entry was evicted) only costs a decode.
    Holds at most ``capacity`` events (the oldest go first).
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._events: dict[tuple[str, int], tuple[bytes, Any]] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._events)

    def put(self, source: str, offset: int, raw: bytes, event: Any) -> None:
        self._events[(source, offset)] = (raw, event)
        while len(self._events) > self.capacity:
            del self._events[next(iter(self._events))]

    def take(self, source: str, offset: int, raw: bytes) -> Any | None:
        """The event decoded from these bytes at this position, removed from the cache; None if absent."""
        entry = self._events.pop((source, offset), None)
        if entry is None or entry[0] != raw:
            return None
        self.hits += 1
        return entry[1]


# --------------------------------------------------------------------------------------------
# Dead letters
# --------------------------------------------------------------------------------------------


def _dead_letter(
    names: TopicNames, topic: str, partition: int, offset: int, raw: bytes, rejected: EventRejected, out: StageOutput
) -> None:
    """Add the dead letter of one input message to ``out``: a sink record and a message."""
    source = f"kafka:{topic}:{partition}:{offset}"
    letter = dead_letter(raw, source, rejected)
    out.records.append(letter)
    headers: Headers = [
        ("vigie.reason", letter.reason.encode()),
        ("vigie.field", (letter.field or "").encode()),
        ("vigie.source", source.encode()),
        ("vigie.topic", topic.encode()),
        ("vigie.partition", str(partition).encode()),
        ("vigie.offset", str(offset).encode()),
        ("vigie.dead-letter-id", letter.dead_letter_id.encode()),
        ("vigie.received-at", letter.received_at.isoformat().encode()),
        ("vigie.raw-size", str(len(raw)).encode()),
    ]
    value = raw
    if len(raw) > DEAD_LETTER_MAX_RAW:
        value = raw[:DEAD_LETTER_MAX_RAW]
        headers.append(("vigie.truncated", b"1"))
    out.messages.append(OutMessage(names.dead_letter, letter.dead_letter_id.encode(), value, headers))


# --------------------------------------------------------------------------------------------
# Stage 1: ingest
# --------------------------------------------------------------------------------------------


class IngestStage:
    """Decode and validate; dead-letter what fails; forward the rest to fusion, bytes unchanged.

    Args:
        names: The deployment's topic names.
        cache: Where to leave the decoded events for a fuse stage in the same process (optional).
    """

    def __init__(self, names: TopicNames, *, cache: DecodedCache | None = None) -> None:
        self.names = names
        self.cache = cache
        self.accepted = 0
        self.rejected = 0

    def process(self, batch: Sequence[InMessage]) -> StageOutput:
        out = StageOutput()
        fusion = FusionPacker(self.names.fusion)
        kind_of = self.names.kind_of
        for message in batch:
            raw = message.value if message.value is not None else b""
            try:
                event = decode_event(raw)
                check_topic(kind_of(message.topic), event)
            except EventRejected as rejected:
                self.rejected += 1
                _dead_letter(self.names, message.topic, message.partition, message.offset, raw, rejected, out)
                continue
            self.accepted += 1
            out.records.append(event)
            source = f"{message.topic}:{message.partition}"
            fusion.add(source, message.offset, raw)
            if self.cache is not None:
                self.cache.put(source, message.offset, raw, event)
        out.messages.extend(fusion.messages())
        return out


# --------------------------------------------------------------------------------------------
# Stage 2: fuse
# --------------------------------------------------------------------------------------------


class FuseStage:
    """Run the pipeline on each forwarded event in order; emit its scores and alert; checkpoint.

    Deadlines follow a clock over the input partitions (:class:`SourceClock`: the slowest one's
    time, at most a day behind the latest), not the latest event. The pipeline's whole state,
    the per-source watermarks and that clock are saved by :meth:`checkpoint`
    into ``store`` under ``manifest`` and ``chunk/SEQ/I`` (all in the fusion partition). A
    stage that starts, or takes the fusion partition over, restores the last checkpoint
    before its first batch (:meth:`invalidate` makes it do so again).

    Counters: :attr:`fused` events, :attr:`duplicates` skipped (at or below their source's
    watermark), :attr:`failed` events the pipeline raised on (dead-lettered), :attr:`unreadable`
    fusion messages (logged and skipped).
    """

    def __init__(
        self,
        names: TopicNames,
        pipeline: ScoringPipeline,
        store: KeyValueStore,
        *,
        cache: DecodedCache | None = None,
    ) -> None:
        self.names = names
        self.pipeline = pipeline
        self.store = store
        self.cache = cache
        self.watermarks: dict[str, int] = {}
        """Input ``topic:partition`` -> highest offset fused from it."""
        self.clock = SourceClock()
        """The deadline clock: the input partitions are read at their own paces (see :class:`SourceClock`)."""
        self._fresh_state = pipeline.state_dict()
        self._loaded = False
        self._chunks = 0
        self.partition = 0
        """The fusion partition (where the checkpoints go)."""
        self.seq = 0
        """Sequence number of the last checkpoint written or restored (0: none)."""
        self.fused = 0
        self.scores = 0
        self.alerts = 0
        self.duplicates = 0
        self.resent = 0
        self.failed = 0
        self.unreadable = 0
        self.restored_bytes = 0

    # -- state -----------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget the in-memory pipeline: the next batch restores the last checkpoint."""
        self._loaded = False

    @property
    def loaded(self) -> bool:
        """Whether the in-memory pipeline is the live one (False: the next batch or snapshot restores it)."""
        return self._loaded

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        manifest = self.store.get(b"manifest")
        if manifest is None:
            self.pipeline.load_state_dict(self._fresh_state)
            self.watermarks = {}
            self.clock = SourceClock()
            self.seq = self._chunks = 0
        else:
            head = orjson.loads(manifest)
            parts = [self.store.get(f"chunk/{head['seq']}/{i}".encode()) for i in range(head["n"])]
            if any(part is None for part in parts):
                raise RuntimeError(f"checkpoint {head['seq']} is incomplete: {parts.count(None)} chunk(s) missing")
            blob = b"".join(part for part in parts if part is not None)
            saved = orjson.loads(blob)
            if saved.get("v") != WIRE_VERSION:
                raise RuntimeError(f"checkpoint version {saved.get('v')} is not {WIRE_VERSION}: reset the app id")
            self.pipeline.load_state_dict(saved["pipeline"])
            self.watermarks = saved["w"]
            self.clock = SourceClock()
            if "c" in saved:  # a checkpoint from before the clock: it starts afresh
                self.clock.load_dict(saved["c"])
            self.seq, self._chunks = head["seq"], head["n"]
            self.restored_bytes = len(blob)
            log.info(
                "fusion restored from checkpoint %d (%d bytes, %d input partition(s))",
                self.seq,
                len(blob),
                len(self.watermarks),
            )
        self._loaded = True

    def checkpoint(self) -> int:
        """Save the pipeline's state and the watermarks; return the bytes written (:meth:`save` of :meth:`snapshot`)."""
        return self.save(self.snapshot())

    def snapshot(self) -> bytes:
        """The pipeline's state and the watermarks now, serialised (what :meth:`save` writes).

        The only step of a checkpoint that reads the pipeline: it can run in a forked copy of the
        process (the worker does), while the pipeline goes on; the snapshot is the state at the fork.
        """
        self._ensure_loaded()
        pipeline = self.pipeline.state_dict()
        state = {"v": WIRE_VERSION, "pipeline": pipeline, "w": self.watermarks, "c": self.clock.to_dict()}
        return orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY)

    def save(self, blob: bytes) -> int:
        """Write ``blob`` (from :meth:`snapshot`) as the next checkpoint; return its bytes.

        The new checkpoint's chunks go first, then the manifest naming it, then the previous
        checkpoint's chunks are deleted: a crash at any point leaves one whole checkpoint.
        """
        previous, previous_chunks = self.seq, self._chunks
        self.seq += 1
        chunks = [blob[i : i + CHECKPOINT_CHUNK] for i in range(0, len(blob), CHECKPOINT_CHUNK)]
        for i, chunk in enumerate(chunks):
            self.store.put(self.partition, f"chunk/{self.seq}/{i}".encode(), chunk)
        self.store.put(self.partition, b"manifest", orjson.dumps({"seq": self.seq, "n": len(chunks)}))
        for i in range(previous_chunks):
            self.store.delete(self.partition, f"chunk/{previous}/{i}".encode())
        self._chunks = len(chunks)
        return len(blob)

    # -- processing ------------------------------------------------------------------------

    def process(self, batch: Sequence[InMessage]) -> StageOutput:
        """Fuse the batch's forwarded events in order (the pipeline takes them together:
        :meth:`~vigie.operators.ScoringPipeline.process_all`, the same results as one by one)."""
        self._ensure_loaded()
        out = StageOutput()
        forwarded: list[tuple[str, int, bytes, Any]] = []  # (source, offset, bytes, event or its rejection)
        for message in batch:
            self.partition = message.partition
            try:
                events = list(read_fusion_message(message.value))
            except ValueError as exc:
                self.unreadable += 1
                log.error(
                    "skipping unreadable message at %s:%d:%d: %s", message.topic, message.partition, message.offset, exc
                )
                continue
            for source, offset, raw in events:
                if offset <= self.watermarks.get(source, -1):
                    self.duplicates += 1  # forwarded again by an ingest that replayed: fused already
                    continue
                self.watermarks[source] = offset
                forwarded.append((source, offset, raw, self._decoded(source, offset, raw)))
        accepted = [(source, e) for source, _, _, e in forwarded if not isinstance(e, EventRejected)]
        # The deadline clock of each event: the earliest of the partitions' latest times, not the event's own.
        clock = [self.clock.tick(source, event_ms(e)) for source, e in accepted] if self.pipeline.timers else None
        results = iter(self.pipeline.process_all([e for _, e in accepted], clock_ms=clock))
        for source, offset, raw, event in forwarded:
            self._fuse(source, offset, raw, event, None if isinstance(event, EventRejected) else next(results), out)
        return out

    def _decoded(self, source: str, offset: int, raw: bytes) -> Any:
        """The event ingest decoded (from the cache, else decoded again), or its rejection."""
        event = self.cache.take(source, offset, raw) if self.cache is not None else None
        if event is not None:
            return event
        try:
            return decode_event(raw)
        except EventRejected as rejected:  # ingest accepted it: a worker of another schema version did
            return rejected

    def _fuse(
        self,
        source: str,
        offset: int,
        raw: bytes,
        event: Any,
        result: PipelineResult | Exception | None,
        out: StageOutput,
    ) -> None:
        topic, _, partition = source.rpartition(":")
        if isinstance(event, EventRejected):
            self.failed += 1
            _dead_letter(self.names, topic, int(partition), offset, raw, event, out)
            return
        if not isinstance(result, PipelineResult):  # a detector failed on this event: keep the event, say why
            self.failed += 1
            log.error("the pipeline failed on %s:%d", source, offset, exc_info=result)
            rejected = EventRejected(f"internal error while scoring: {result!r}")
            _dead_letter(self.names, topic, int(partition), offset, raw, rejected, out)
            return
        self.fused += 1
        if result.duplicate:  # its event_id was fused already (an integrator's re-send): nothing new to emit
            self.resent += 1
            return
        subject = event.event_id.encode()
        for score in result.scores:
            headers = [("vigie.id", score.score_id.encode())]
            out.messages.append(OutMessage(self.names.scores, subject, encode_event(score), headers))
        out.records.extend(result.scores)
        self.scores += len(result.scores)
        alerts = result.alerts
        self.alerts += len(alerts)
        for alert in alerts:
            headers = [("vigie.id", alert.alert_id.encode())]
            out.messages.append(OutMessage(self.names.alerts, alert.office.encode(), encode_event(alert), headers))
            out.records.append(alert)
