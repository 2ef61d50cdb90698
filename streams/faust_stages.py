"""The three stages of the Kafka topology, as plain Python (no Faust in here).

:mod:`vigie.streams.faust_app` wires these stages to Faust agents and tables; tests drive
them directly. Each stage takes a batch of :class:`InMessage`, reads and writes state
through a :class:`KeyValueStore` (a Faust table in the worker, a dict in tests) and returns
the messages to produce and the records for the sink. No scoring happens here: the stages
call the detectors (``units``, ``score_one``, ``learn_one``) and the pipeline itself
(:meth:`ScoringPipeline.process`), and only move inputs, outputs and states between
partitions.

The topology (``P`` = topic prefix)::

    P.ens, P.declarations,  --ingest-->  P.units        keyed "detector/state key"
    P.excise, P.outcomes        |        P.fusion       every event, keyed "fusion" (one partition)
                                |        P.dead-letter  bad input: original bytes, reason in headers
                                |        sink: the events, the dead letters
                                '-- table ens-links: ENS reference -> arrival and summary

    P.units                 --score--->  P.fusion       each unit's score, keyed "fusion"
                                '-- table state-<detector>: state key -> operator state

    P.fusion                --fuse---->  P.scores       keyed by subject event id
                                |        P.alerts       keyed by office
                                |        P.units        outcome feedback for the detectors
                                |        sink: the scores, the alerts
                                '-- table fusion: checkpoints of the fusion pipeline

*Ingest* decodes and validates each message with the shared codec, dead-letters what
fails, links a declaration to its ENS for the detectors that ask (``consumes =
{"linked_declaration"}``; the ENS and its declarations are co-partitioned by ENS reference),
and splits each event into the detectors' ``(state key, unit)`` pairs. The units of one
state key go out keyed by that key (one message per key and batch), so a key's units are
scored in one partition, in the order their input partition gave them. The event itself
goes on to fusion, with the number of units it gave.

*Score* runs ``score_one`` then ``learn_one`` on the key's state (as ``Operator.process``)
and sends each unit's score (or ``null``) to fusion. Operator states are per key, in one
changelog-backed table per detector: this is where the work and the state scale out.

*Fuse* gathers each event with all its unit scores and hands it, in the order ingest forwarded the events, to a real
:class:`~vigie.operators.ScoringPipeline` whose detectors are stand-ins returning those scores
(:class:`ScoresFromKafka`). Everything that is not a detector (ENS registry, fusion and its
alert budget, the join of control outcomes to what was scored, the outcome feedback to the
detectors) is therefore the pipeline's own code, with its own state: one global state, as
in process, in one partition, checkpointed whole. Feedback that the pipeline gives a
detector (a ``LabelledOutcome``) is split into units and sent back through ``units``.

With one input partition the scores and alerts are exactly the in-process runner's. With
several, each state key sees the units of each input partition in order, interleaved as they
come; fusion takes the events in the order ingest read them (each input partition in order).
Outcome feedback reaches a detector's state after the units already in flight, so detectors
that learn from outcomes score slightly differently from the in-process runner.

Replays (a worker restarted after a crash re-reads what it had not committed) are harmless:
score and alert ids are deterministic; *score* keeps, per state key, the highest input offset
learned from each input partition and only *scores* again what is at or below it; *fuse*
restores its checkpoint (which records the last fusion offset it holds, and is taken before
the offsets it covers are committed), skips what the checkpoint already holds, and ignores
upstream duplicates of the events it fused since its last two checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import types
import typing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

import orjson
from pydantic import BaseModel

from vigie.models.feedback import LabelledOutcome
from vigie.operators import EnsLinkState, Operator, ScoringPipeline
from vigie.operators.base import OperatorState
from vigie.operators.ens_link import LinkedDeclaration
from vigie.schemas import (
    EntrySummaryDeclaration,
    EventRejected,
    ImportDeclaration,
    RiskScore,
    dead_letter,
    decode_event,
    encode_event,
)

from .topics import LARGE_MESSAGE_BYTES, TopicNames, check_topic

__all__ = [
    "DEAD_LETTER_HEADERS",
    "FUSION_KEY",
    "DictStore",
    "FuseStage",
    "InMessage",
    "IngestStage",
    "KeyValueStore",
    "OutMessage",
    "ScoreStage",
    "ScoresFromKafka",
    "StageOutput",
    "UnitCodec",
]

log = logging.getLogger(__name__)

WIRE_VERSION = 1
"""Version of the internal messages (``units``, ``fusion``) and of the tables' values."""

FUSION_KEY = b"fusion"
"""Key of every ``fusion`` message: the fusion pipeline is one state, in one partition."""

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
        """The keys held locally (for periodic sweeps)."""
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
# Units on the wire
# --------------------------------------------------------------------------------------------

_SCALARS: tuple[type, ...] = (str, int, float, bool)


def _unit_classes(detector: Operator[Any, Any]) -> tuple[type, ...]:
    """The classes of ``UnitT`` a detector class declares (``Operator[A | B, ...]`` gives A, B)."""
    for klass in type(detector).__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Operator):
                args = typing.get_args(base)
                if not args:
                    continue
                unit = args[0]
                if isinstance(unit, types.UnionType) or typing.get_origin(unit) is typing.Union:
                    members = typing.get_args(unit)
                    return members if all(isinstance(m, type) for m in members) else ()
                return (unit,) if isinstance(unit, type) else ()
    return ()


def _field_kind(annotation: Any) -> str | None:
    """``scalar``, ``datetime`` or None (not carried by value) for one dataclass field type."""
    if annotation in _SCALARS:
        return "scalar"
    if annotation is datetime:
        return "datetime"
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _field_kind(args[0])
    return None


def _flat_fields(klass: type) -> tuple[list[str], tuple[str, ...]] | None:
    """(field names, datetime field names) of a dataclass of scalars and datetimes, else None."""
    if not dataclasses.is_dataclass(klass):
        return None
    try:
        hints = typing.get_type_hints(klass)
    except Exception:  # unresolvable annotations: not carried by value
        return None
    names = [f.name for f in dataclasses.fields(klass)]
    kinds = {name: _field_kind(hints.get(name)) for name in names}
    if not names or not all(kinds.values()):
        return None
    return names, tuple(name for name, kind in kinds.items() if kind == "datetime")


class UnitCodec:
    """Carries one detector's units through the internal ``units`` topic.

    Units that are dataclasses of scalars and datetimes (or a union of such dataclasses,
    as the ENS detector's are) travel *by value*: ``[class name, {field: value}]``, the
    class looked up among those the detector declares. Any other unit travels *by
    reference*: the message carries what the units came from (the event, with its linked
    ENS, or the labelled outcome) and each unit's position in ``detector.units(source)``,
    which the score stage recomputes. Either way nothing is unpickled from Kafka.
    """

    def __init__(self, detector: Operator[Any, Any]) -> None:
        self.detector = detector
        self._classes: dict[str, tuple[type, list[str], tuple[str, ...]]] = {}
        for klass in _unit_classes(detector):
            flat = _flat_fields(klass)
            if flat is None:
                self._classes.clear()
                break
            self._classes[klass.__name__] = (klass, *flat)
        self.by_value = bool(self._classes)

    def encode(self, unit: Any) -> list[Any]:
        """``[class name, {field: value}]`` (orjson writes datetimes as RFC 3339)."""
        name = type(unit).__name__
        _, names, _ = self._classes[name]
        return [name, {field: getattr(unit, field) for field in names}]

    def decode(self, data: list[Any]) -> Any:
        """Rebuild a unit from :meth:`encode`'s output."""
        name, values = data
        klass, _, datetimes = self._classes[name]
        for field_name in datetimes:
            if values.get(field_name) is not None:
                values[field_name] = datetime.fromisoformat(values[field_name])
        return klass(**values)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


PACK_BYTES = 1 << 20
"""An internal message carries items up to about this many bytes (one item may be larger)."""


class _Packer:
    """Packs a batch's items into one message per key: ``{"v": 1, ...head, "items": [...]}``.

    Fewer, larger messages: Faust's cost is per message, not per byte.
    """

    def __init__(self, topic: str, max_bytes: int = PACK_BYTES) -> None:
        self.topic = topic
        self.max_bytes = max_bytes
        self._groups: dict[bytes, tuple[bytes, list[bytes]]] = {}

    def add(self, key: bytes, head: dict[str, Any], item: bytes) -> None:
        group = self._groups.get(key)
        if group is None:
            prefix = _dumps({"v": WIRE_VERSION, **head})[:-1] + b',"items":['
            group = self._groups[key] = (prefix, [])
        group[1].append(item)

    def messages(self) -> Iterator[OutMessage]:
        for key, (prefix, items) in self._groups.items():
            chunk: list[bytes] = []
            size = 0
            for item in items:
                if chunk and size + len(item) > self.max_bytes:
                    yield OutMessage(self.topic, key, prefix + b",".join(chunk) + b"]}")
                    chunk, size = [], 0
                chunk.append(item)
                size += len(item) + 1
            if chunk:
                yield OutMessage(self.topic, key, prefix + b",".join(chunk) + b"]}")


def _read(message: InMessage) -> dict[str, Any] | None:
    """The body of an internal message, or None (logged) when it is not one of ours."""
    try:
        body = orjson.loads(message.value or b"null")
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or body.get("v") != WIRE_VERSION:
        log.error("skipping unreadable message at %s:%d:%d", message.topic, message.partition, message.offset)
        return None
    return body


def _consumes(detector: Operator[Any, Any], what: str) -> bool:
    return what in getattr(detector, "consumes", ())


def _split_units(
    detector: Operator[Any, Any], codec: UnitCodec, source: Any, first_index: int
) -> dict[str, list[list[Any]]]:
    """``detector.units(source)`` grouped by state key: ``key -> [[index, unit or position], ...]``."""
    groups: dict[str, list[list[Any]]] = {}
    index = first_index
    for position, (key, unit) in enumerate(detector.units(source)):
        groups.setdefault(key, []).append([index, codec.encode(unit) if codec.by_value else position])
        index += 1
    return groups


def _reference(source: Any, raw: bytes | None = None, ens_row: list[Any] | None = None) -> dict[str, Any]:
    """What a by-reference unit came from, for the score stage to rebuild it."""
    if isinstance(source, LabelledOutcome):
        return {"kind": "labelled", "ev": encode_event(source.outcome).decode(), "ctx": source.context}
    if isinstance(source, LinkedDeclaration):
        eta = source.eta.isoformat() if source.eta is not None else None
        return {"kind": "linked", "ev": (raw or encode_event(source.declaration)).decode(), "ens": ens_row, "eta": eta}
    return {"kind": "event", "ev": (raw or encode_event(source)).decode()}


def _rebuild(reference: dict[str, Any]) -> Any:
    event = decode_event(reference["ev"].encode())
    kind = reference["kind"]
    if kind == "labelled":
        return LabelledOutcome(event, reference["ctx"])
    if kind == "linked":
        eta = datetime.fromisoformat(reference["eta"]) if reference["eta"] else None
        summary = _ens_registry(reference["ens"], "x").lookup("x") if reference["ens"] else None
        return LinkedDeclaration(event, summary.ens if summary is not None else None, eta)
    return event


def _ens_registry(row: list[Any], reference: str, retention: timedelta = timedelta(days=14)) -> EnsLinkState:
    """An ENS registry holding one arrival (a row of :meth:`EnsLinkState.to_dict`)."""
    return EnsLinkState.from_dict({"retention_s": retention.total_seconds(), "arrivals": {reference: row}})


# --------------------------------------------------------------------------------------------
# Stage 1: ingest
# --------------------------------------------------------------------------------------------


class IngestStage:
    """Decode, validate, dead-letter, link to the ENS, split into keyed units, forward to fusion.

    Args:
        names: The deployment's topic names.
        detectors: The detectors, in the pipeline's order.
        ens_links: ENS reference -> ``{"p": partition, "row": EnsLinkState row}``, written in
            the ENS's partition (an ENS and its declarations share key and partition).
        ens_retention: Arrivals are forgotten this long after their ETA (as in the pipeline).
        owned: The input partitions this worker owns now (None: all), for sweeps.
    """

    def __init__(
        self,
        names: TopicNames,
        detectors: Sequence[Operator[Any, Any]],
        ens_links: KeyValueStore,
        *,
        ens_retention: timedelta = timedelta(days=14),
        sweep_every_s: float = 300.0,
        owned: Callable[[], set[int] | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = names
        self.detectors = list(detectors)
        self.codecs = {d.name: UnitCodec(d) for d in self.detectors}
        self.linked = {d.name: _consumes(d, "linked_declaration") for d in self.detectors}
        self.ens_links = ens_links
        self.ens_retention = ens_retention
        self.sweep_every_s = sweep_every_s
        self.owned = owned
        self.clock = clock
        self._next_sweep = clock() + sweep_every_s
        self.latest_event_time: datetime | None = None

    def process(self, batch: Sequence[InMessage]) -> StageOutput:
        out = StageOutput()
        units = _Packer(self.names.units)
        fusion = _Packer(self.names.fusion)
        for message in batch:
            self._one(message, out, units, fusion)
        out.messages.extend(fusion.messages())  # each event before its units: fusion sees it first
        out.messages.extend(units.messages())
        if self.clock() >= self._next_sweep:
            self._next_sweep = self.clock() + self.sweep_every_s
            self.sweep()
        return out

    def _one(self, message: InMessage, out: StageOutput, units: _Packer, fusion: _Packer) -> None:
        raw = message.value if message.value is not None else b""
        kind = self.names.kind_of(message.topic)
        try:
            event = decode_event(raw)
            check_topic(kind, event)
        except EventRejected as rejected:
            self._dead_letter(message, raw, rejected, out)
            return
        source = f"{message.topic}:{message.partition}"
        try:
            items, count = self._split(event, raw, message.partition, source, message.offset)
        except Exception as exc:  # a detector failed on this event: keep the event, say why
            log.exception("splitting %s %s into units failed", event.event_type, event.event_id)
            self._dead_letter(message, raw, EventRejected(f"internal error while splitting into units: {exc!r}"), out)
            return
        out.records.append(event)
        for key, head, item in items:
            units.add(key, head, _dumps(item))
        forward = {"k": "ev", "id": event.event_id, "n": count, "src": source, "off": message.offset}
        fusion.add(FUSION_KEY, {}, _dumps(forward)[:-1] + b',"raw":' + orjson.dumps(raw.decode()) + b"}")

    def _split(
        self, event: Any, raw: bytes, partition: int, source: str, offset: int
    ) -> tuple[list[tuple[bytes, dict[str, Any], dict[str, Any]]], int]:
        """Units messages' ``(key, head, item)`` for this event, and how many units it gave."""
        if self.latest_event_time is None or event.event_time > self.latest_event_time:
            self.latest_event_time = event.event_time
        ens_row: list[Any] | None = None
        if isinstance(event, EntrySummaryDeclaration):
            registry = EnsLinkState(self.ens_retention)
            registry.register(event)  # the pipeline's own reading of an ENS
            ens_row = registry.to_dict()["arrivals"][event.ens_reference]
            value = {"p": partition, "row": ens_row}
            self.ens_links.put(partition, event.ens_reference.encode(), _dumps(value))
        linked: LinkedDeclaration | None = None
        if isinstance(event, ImportDeclaration) and any(self.linked.values()):
            stored = self.ens_links.get(event.ens_reference.encode()) if event.ens_reference else None
            if stored is not None:
                ens_row = orjson.loads(stored)["row"]
                linked = _ens_registry(ens_row, event.ens_reference or "", self.ens_retention).link(event)
            else:
                linked = EnsLinkState(self.ens_retention).link(event)
        items: list[tuple[bytes, dict[str, Any], dict[str, Any]]] = []
        index = 0
        context = {"id": event.event_id}
        for detector in self.detectors:
            origin = linked if linked is not None and self.linked[detector.name] else event
            codec = self.codecs[detector.name]
            groups = _split_units(detector, codec, origin, index)
            for key, group in groups.items():
                item: dict[str, Any] = {"src": source, "off": offset, "e": context, "u": group}
                if not codec.by_value:
                    item["ref"] = _reference(origin, raw, ens_row if origin is linked else None)
                items.append((f"{detector.name}/{key}".encode(), {"d": detector.name, "k": key}, item))
                index += len(group)
        return items, index

    def _dead_letter(self, message: InMessage, raw: bytes, rejected: EventRejected, out: StageOutput) -> None:
        source = f"kafka:{message.topic}:{message.partition}:{message.offset}"
        letter = dead_letter(raw, source, rejected)
        out.records.append(letter)
        headers: Headers = [
            ("vigie.reason", letter.reason.encode()),
            ("vigie.field", (letter.field or "").encode()),
            ("vigie.source", source.encode()),
            ("vigie.topic", message.topic.encode()),
            ("vigie.partition", str(message.partition).encode()),
            ("vigie.offset", str(message.offset).encode()),
            ("vigie.dead-letter-id", letter.dead_letter_id.encode()),
            ("vigie.received-at", letter.received_at.isoformat().encode()),
            ("vigie.raw-size", str(len(raw)).encode()),
        ]
        value = raw
        if len(raw) > DEAD_LETTER_MAX_RAW:
            value = raw[:DEAD_LETTER_MAX_RAW]
            headers.append(("vigie.truncated", b"1"))
        out.messages.append(OutMessage(self.names.dead_letter, letter.dead_letter_id.encode(), value, headers))

    def sweep(self) -> int:
        """Forget ENS arrivals whose ETA is older than the retention (owned partitions only)."""
        if self.latest_event_time is None:
            return 0
        horizon = self.latest_event_time - self.ens_retention
        owned = self.owned()
        removed = 0
        for key in list(self.ens_links.keys()):
            stored = self.ens_links.get(key)
            if stored is None:
                continue
            value = orjson.loads(stored)
            if owned is not None and value["p"] not in owned:
                continue
            if datetime.fromisoformat(value["row"][0]) < horizon:
                self.ens_links.delete(value["p"], key)
                removed += 1
        return removed


# --------------------------------------------------------------------------------------------
# Stage 2: score
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _LoadedState:
    state: OperatorState
    watermarks: dict[str, int]
    partition: int
    dirty: bool = False


class ScoreStage:
    """Score then learn each unit on its key's state; send each unit's score to fusion.

    A table value is ``{"v": 1, "w": {source: highest offset learned}, "s": state.to_dict()}``
    (source: an input partition, or ``fb:`` and one for outcome feedback). Live states are
    kept between batches (:meth:`invalidate` forgets them: the runtime calls it on every
    rebalance); each state a batch touches is written back once, at its end.
    """

    def __init__(
        self, names: TopicNames, detectors: Sequence[Operator[Any, Any]], stores: Mapping[str, KeyValueStore]
    ) -> None:
        self.names = names
        self.detectors = {d.name: d for d in detectors}
        self.codecs = {d.name: UnitCodec(d) for d in detectors}
        missing = set(self.detectors) - set(stores)
        if missing:
            raise ValueError(f"no state store for detector(s) {sorted(missing)}")
        self.stores = stores
        self._live: dict[tuple[str, str], _LoadedState] = {}
        self.replayed_units = 0
        """Units scored again without learning (a replay after a restart)."""
        self.feedback_units = 0

    def invalidate(self) -> None:
        """Forget the live states: the next batch reads them from the stores."""
        self._live.clear()

    def process(self, batch: Sequence[InMessage]) -> StageOutput:
        out = StageOutput()
        fusion = _Packer(self.names.fusion)
        touched: dict[tuple[str, str], _LoadedState] = {}
        for message in batch:
            body = _read(message)
            if body is None:
                continue
            name, key = body["d"], body["k"]
            entry = touched.get((name, key)) or self._load(name, key, message.partition)
            touched[(name, key)] = entry
            for item in body["items"]:
                results = self._item(name, key, item, entry)
                if not item["e"].get("fb"):
                    fusion.add(FUSION_KEY, {}, _dumps({"k": "sc", "id": item["e"]["id"], "r": results}))
        out.messages.extend(fusion.messages())
        for (name, key), entry in touched.items():
            if entry.dirty:
                value = {"v": WIRE_VERSION, "w": entry.watermarks, "s": entry.state.to_dict()}
                self.stores[name].put(entry.partition, key.encode(), _dumps(value))
                entry.dirty = False
        return out

    def _load(self, name: str, key: str, partition: int) -> _LoadedState:
        entry = self._live.get((name, key))
        if entry is None:
            detector = self.detectors[name]
            stored = self.stores[name].get(key.encode())
            if stored is None:
                entry = _LoadedState(detector.new_state(), {}, partition)
            else:
                data = orjson.loads(stored)
                entry = _LoadedState(detector.state_type.from_dict(data["s"]), data["w"], partition)
            self._live[(name, key)] = entry
        entry.partition = partition
        return entry

    def _units(self, name: str, key: str, item: dict[str, Any]) -> Iterator[tuple[int, Any]]:
        codec = self.codecs[name]
        if codec.by_value:
            for index, payload in item["u"]:
                yield index, codec.decode(payload)
            return
        units = list(codec.detector.units(_rebuild(item["ref"])))
        for index, position in item["u"]:
            unit_key, unit = units[position]
            if unit_key != key:
                raise ValueError(f"unit {position} of {item['e']['id']} has key {unit_key!r}, not {key!r}")
            yield index, unit

    def _item(self, name: str, key: str, item: dict[str, Any], entry: _LoadedState) -> list[list[Any]]:
        """Score (and learn, unless replayed) one event's units of this key; ``[index, detector, score]``."""
        detector = self.detectors[name]
        source, offset = item["src"], item["off"]
        replay = offset <= entry.watermarks.get(source, -1)
        try:
            units = list(self._units(name, key, item))
        except Exception:
            log.exception("cannot read the units of %s for %s", item["e"]["id"], name)
            return [[index, name, None] for index, _ in item["u"]]
        results: list[list[Any]] = []
        for index, unit in units:
            score: RiskScore | None = None
            try:
                score = detector.score_one(unit, entry.state)
                if not replay:
                    detector.learn_one(unit, entry.state)
            except Exception:
                log.exception("%s failed on unit %d of %s", name, index, item["e"]["id"])
            results.append([index, name, orjson.Fragment(encode_event(score)) if score is not None else None])
        if item["e"].get("fb"):
            self.feedback_units += len(results)
        if replay:
            self.replayed_units += len(results)
        else:
            entry.watermarks[source] = offset
            entry.dirty = True
        return results


# --------------------------------------------------------------------------------------------
# Stage 3: fuse
# --------------------------------------------------------------------------------------------


class ScoresFromKafka(Operator[Any, OperatorState]):
    """Stands in the fusion pipeline for a detector whose units were scored by the score stage.

    :meth:`process` returns the scores gathered for the event being fused; given a
    ``LabelledOutcome`` (the pipeline's outcome feedback) it hands the detector's units for
    it to ``send_feedback`` instead, for the score stage to learn. ``feedback_context`` and
    ``consumes`` are the real detector's, so the pipeline treats the stand-in as the detector.
    """

    name: ClassVar[str] = "stand-in"

    def __init__(self, detector: Operator[Any, Any], send_feedback: Callable[[Operator[Any, Any], Any], None]) -> None:
        self.detector = detector
        self.name = detector.name  # type: ignore[misc]
        self.state_type = detector.state_type  # type: ignore[misc]
        self.consumes = getattr(detector, "consumes", frozenset())
        if hasattr(detector, "feedback_context"):
            self.feedback_context = detector.feedback_context
        self.send_feedback = send_feedback
        self.scores: list[RiskScore] = []

    def units(self, event: Any) -> Iterable[tuple[str, Any]]:
        return self.detector.units(event)

    def score_one(self, unit: Any, state: OperatorState) -> RiskScore | None:
        raise RuntimeError("units are scored by the score stage, never by a stand-in")

    def learn_one(self, unit: Any, state: OperatorState) -> None:
        raise RuntimeError("units are learned by the score stage, never by a stand-in")

    def process(self, event: Any, store: Any) -> list[RiskScore]:
        if isinstance(event, LabelledOutcome):
            self.send_feedback(self.detector, event)
            return []
        scores, self.scores = self.scores, []
        return scores


CHECKPOINT_CHUNK = 512 * 1024


class FuseStage:
    """Gather each event and its unit scores; run the pipeline on it; emit scores and alerts.

    ``template`` gives the detectors (their stand-ins are used here) and the pipeline's
    settings (alerting, ENS retention, label join). Its state (everything but the
    detectors' stores, which live in the score stage) and the events still being gathered
    are saved by :meth:`checkpoint` into ``store`` under ``manifest`` and ``chunk/SEQ/I``,
    with the offset of the last fusion message they include: restored, the stage skips what
    it re-reads up to that offset, so fusion learns each event once even when the crash came
    between a checkpoint and the commit of its offsets (the runtime commits only after one).
    """

    def __init__(
        self,
        names: TopicNames,
        template: ScoringPipeline,
        store: KeyValueStore,
        *,
        gather_timeout_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.names = names
        self.store = store
        self.gather_timeout_s = gather_timeout_s
        self.clock = clock
        self.codecs = {d.name: UnitCodec(d) for d in template.detectors}
        self.stand_ins = {d.name: ScoresFromKafka(d, self._feedback) for d in template.detectors}
        self.pipeline = ScoringPipeline(
            detectors=list(self.stand_ins.values()),  # type: ignore[arg-type]
            alerting=template.alerting,
            ens_retention=template.ens.retention,
            label_join=template.labels,
        )
        self.pending: dict[str, dict[str, Any]] = {}
        """Event id -> what has come of it (unit scores ``r``; the event ``raw`` and ``n`` units)."""
        self.order: deque[str] = deque()
        """Ids of the events forwarded by ingest and not fused yet, in the order they came."""
        self._done: list[set[str]] = [set(), set()]
        self._loaded = False
        self._fresh_state = self.pipeline.state_dict()
        self._feedback_out: _Packer | None = None
        self._fusing: dict[str, Any] = {}
        self.partition = 0
        """The fusion partition (where the checkpoint goes)."""
        self.upto = -1
        """Offset of the last fusion message taken into the state (saved with each checkpoint)."""
        self.skipped = 0
        """Messages already in the restored checkpoint, read again and skipped."""
        self.seq = 0
        self.completed = 0
        self.duplicates = 0
        """Upstream duplicates ignored (an event fused since the last two checkpoints, sent again)."""
        self.incomplete_dropped = 0

    # -- state -----------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget the in-memory pipeline: the next batch restores the last checkpoint."""
        self._loaded = False

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self.pending = {}
        self.order = deque()
        self._done = [set(), set()]
        manifest = self.store.get(b"manifest")
        if manifest is None:
            self.pipeline.load_state_dict(self._fresh_state)
            self.seq = 0
            self.upto = -1
        else:
            head = orjson.loads(manifest)
            blob = b"".join(self.store.get(f"chunk/{head['seq']}/{i}".encode()) or b"" for i in range(head["n"]))
            saved = orjson.loads(blob)
            self.pipeline.load_state_dict(saved["pipeline"])
            self.pending = saved["pending"]
            self.order = deque(saved["order"])
            self.upto = saved["upto"]
            self.seq = head["seq"]
            log.info("fusion restored from checkpoint %d (%d bytes, %d events gathering)", self.seq, len(blob),
                     len(self.pending))
        self._loaded = True

    def checkpoint(self) -> int:
        """Save the pipeline's state and the events being gathered; return the bytes written.

        Unit scores without their event for longer than ``gather_timeout_s`` (duplicates of
        an event fused before the last two checkpoints) are dropped first.
        """
        self._ensure_loaded()
        now = self.clock()
        for event_id in [e for e, v in self.pending.items() if "raw" not in v and now - v["t"] > self.gather_timeout_s]:
            del self.pending[event_id]
        state = {"v": WIRE_VERSION, "pipeline": self.pipeline.state_dict(), "pending": self.pending,
                 "order": list(self.order), "upto": self.upto}
        blob = _dumps(state)
        previous = self.seq
        self.seq += 1
        chunks = [blob[i : i + CHECKPOINT_CHUNK] for i in range(0, len(blob), CHECKPOINT_CHUNK)] or [b""]
        for i, chunk in enumerate(chunks):
            self.store.put(self.partition, f"chunk/{self.seq}/{i}".encode(), chunk)
        self.store.put(self.partition, b"manifest", _dumps({"seq": self.seq, "n": len(chunks)}))
        for key in list(self.store.keys()):
            if key.startswith(f"chunk/{previous}/".encode()):
                self.store.delete(self.partition, key)
        self._done = [set(), self._done[0]]
        return len(blob)

    # -- processing ------------------------------------------------------------------------

    def process(self, batch: Sequence[InMessage]) -> StageOutput:
        self._ensure_loaded()
        out = StageOutput()
        feedback = _Packer(self.names.units)
        now = self.clock()
        for message in batch:
            self.partition = message.partition
            if message.offset <= self.upto:
                self.skipped += 1  # the checkpoint restored already holds it
                continue
            self.upto = message.offset
            body = _read(message)
            if body is None:
                continue
            for item in body["items"]:
                self._gather(item, now)
        # Fuse in the order ingest forwarded the events, each once all its unit scores came.
        self._feedback_out = feedback
        try:
            while self.order:
                event_id = self.order[0]
                entry = self.pending[event_id]
                if len(entry["r"]) < entry["n"]:
                    if now - entry["t"] <= self.gather_timeout_s:
                        break  # the head waits for its stragglers; the events behind it wait too
                    self.incomplete_dropped += 1
                    log.warning("dropping %s: %d of %d unit score(s) after %.0f s", event_id, len(entry["r"]),
                                entry["n"], now - entry["t"])
                else:
                    self._fuse(event_id, entry, out)
                self.order.popleft()
                del self.pending[event_id]
                self._done[0].add(event_id)
        finally:
            self._feedback_out = None
        out.messages.extend(feedback.messages())
        return out

    def _gather(self, item: dict[str, Any], now: float) -> None:
        event_id: str = item["id"]
        if event_id in self._done[0] or event_id in self._done[1]:
            self.duplicates += 1
            return
        entry = self.pending.get(event_id)
        if entry is None:
            entry = self.pending[event_id] = {"t": now, "r": {}, "n": 1 << 30}
        if item["k"] == "ev":
            if "raw" not in entry:
                self.order.append(event_id)
                entry.update(t=now, n=item["n"], src=item["src"], off=item["off"], raw=item["raw"])
        else:
            for index, detector, score in item["r"]:
                entry["r"][str(index)] = [detector, score]

    def _fuse(self, event_id: str, entry: dict[str, Any], out: StageOutput) -> None:
        event = decode_event(entry["raw"].encode())
        for index in sorted(entry["r"], key=int):
            detector, score = entry["r"][index]
            if score is not None:
                self.stand_ins[detector].scores.append(RiskScore.model_validate(score))
        self._fusing = {"src": entry["src"], "off": entry["off"], "id": event_id}
        try:
            result = self.pipeline.process(event)
        finally:
            for stand_in in self.stand_ins.values():
                stand_in.scores = []
        self.completed += 1
        for score in result.scores:
            headers = [("vigie.id", score.score_id.encode())]
            out.messages.append(OutMessage(self.names.scores, event_id.encode(), encode_event(score), headers))
        out.records.extend(result.scores)
        if result.alert is not None:
            alert = result.alert
            headers = [("vigie.id", alert.alert_id.encode())]
            out.messages.append(OutMessage(self.names.alerts, alert.office.encode(), encode_event(alert), headers))
            out.records.append(alert)

    def _feedback(self, detector: Operator[Any, Any], labelled: LabelledOutcome) -> None:
        """Send a detector's units for a labelled outcome to the score stage (keyed by state key)."""
        assert self._feedback_out is not None, "feedback outside of process()"
        codec = self.codecs[detector.name]
        context = {"id": self._fusing["id"], "fb": 1}
        for key, group in _split_units(detector, codec, labelled, 0).items():
            item: dict[str, Any] = {"src": f"fb:{self._fusing['src']}", "off": self._fusing["off"], "e": context,
                                    "u": group}
            if not codec.by_value:
                item["ref"] = _reference(labelled)
            head = {"d": detector.name, "k": key}
            self._feedback_out.add(f"{detector.name}/{key}".encode(), head, _dumps(item))
