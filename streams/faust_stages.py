"""The three stages of the Kafka topology, as plain Python (no Faust in here).

:mod:`vigie.streams.faust_app` wires these stages to Faust agents and tables; tests drive
them directly. Each stage takes a batch of :class:`InMessage`, reads and writes keyed state
through a :class:`KeyValueStore` (a Faust table in the worker, a dict in tests) and returns
the messages to produce and the records for the sink. No scoring happens here: the stages
call the operators (``units``, ``score_one``, ``learn_one``, ``NoisyOrAlerting.decide``) and
only move their inputs, outputs and states between partitions.

The topology (``P`` = topic prefix)::

    P.ens, P.declarations,  --ingest-->  P.units          keyed "detector/state key"
    P.excise, P.outcomes        |        P.dead-letter    bad input, original bytes, reason in headers
                                |        sink: the events, the dead letters
                                '-- table ens-links: ENS reference -> arrival (co-partitioned input)

    P.units                 --score--->  P.unit-scores    keyed by fusion key (the office)
                                '-- one table per detector: state key -> operator state

    P.unit-scores           --fuse---->  P.scores         keyed by subject event id
                                |        P.alerts         keyed by office
                                |        sink: the scores, the alerts
                                '-- tables pending (event id -> scores so far), queues (office -> queue)

*Ingest* decodes and validates every message with the shared codec, dead-letters what
fails, and splits each event into the detectors' ``(state key, unit)`` pairs. Units with the
same state key go out as one message keyed by that state key, so every unit of a key is
scored in one partition, in the order its input partition gave them: with one input
partition the scores are those of the in-process runner, exactly.

*Score* runs ``score_one`` then ``learn_one`` on the state of the key (prequential, as
:meth:`Operator.process`) and sends each unit's score (or ``null``) on, keyed by the event's
fusion key, together with how many units the event has.

*Fuse* gathers an event's unit scores until all have arrived, puts them back in the
in-process order (detector, then unit), emits them as the event's score set, and, for a
declaration, asks the alerting for an alert with the ENS arrival and the office's queue.

Replays (a worker restarted after a crash re-reads what it had not committed) are harmless:
score ids and alert ids are deterministic; *score* keeps, per state key, the highest input
offset it has learned from each input partition and only *scores* units at or below it (no
second learning); *fuse* marks finished events and ignores their late duplicates.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from vigie.operators import ArrivalInfo, EnsLinkState, NoisyOrAlerting, OfficeQueueState, Operator
from vigie.operators.base import OperatorState
from vigie.schemas import EntrySummaryDeclaration, EventRejected, RiskScore, dead_letter, decode_event, encode_event

from .topics import LARGE_MESSAGE_BYTES, TopicNames, check_topic

__all__ = [
    "DEAD_LETTER_HEADERS",
    "DictStore",
    "FuseStage",
    "InMessage",
    "IngestStage",
    "KeyValueStore",
    "OutMessage",
    "ScoreStage",
    "StageOutput",
    "UnitCodec",
]

log = logging.getLogger(__name__)

WIRE_VERSION = 1
"""Version of the internal messages (``units``, ``unit-scores``) and of the tables' values."""

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


def _unit_type(detector: Operator[Any, Any]) -> type | None:
    """The ``UnitT`` a detector class declares (``Operator[ItemUnitValue, ...]``), if any."""
    for klass in type(detector).__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Operator):
                args = typing.get_args(base)
                if args and isinstance(args[0], type):
                    return args[0]
    return None


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


class UnitCodec:
    """Carries one detector's units through the internal ``units`` topic.

    A unit that is a dataclass of scalars and datetimes (as :class:`ItemUnitValue` is)
    travels *by value*, as a JSON object. Any other unit travels *by reference*: the message
    carries the whole event and the unit's position in ``detector.units(event)``, which the
    score stage recomputes. Either way no unit is ever unpickled from Kafka.
    """

    def __init__(self, detector: Operator[Any, Any]) -> None:
        self.detector = detector
        self.unit_type = _unit_type(detector)
        self._datetimes: tuple[str, ...] = ()
        self.by_value = False
        if self.unit_type is not None and dataclasses.is_dataclass(self.unit_type):
            try:
                hints = typing.get_type_hints(self.unit_type)
            except Exception:  # unresolvable annotations: carry by reference
                hints = {}
            fields = [f.name for f in dataclasses.fields(self.unit_type)]
            kinds = {name: _field_kind(hints.get(name)) for name in fields}
            if fields and all(kinds.values()):
                self.by_value = True
                self._datetimes = tuple(name for name, kind in kinds.items() if kind == "datetime")
        self._fields = [f.name for f in dataclasses.fields(self.unit_type)] if self.by_value else []

    def encode(self, unit: Any) -> dict[str, Any]:
        """A JSON-able dict of the unit's fields (orjson writes datetimes as RFC 3339)."""
        return {name: getattr(unit, name) for name in self._fields}

    def decode(self, data: dict[str, Any]) -> Any:
        """Rebuild a unit from :meth:`encode`'s dict."""
        values = dict(data)
        for name in self._datetimes:
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        assert self.unit_type is not None
        return self.unit_type(**values)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


# --------------------------------------------------------------------------------------------
# Stage 1: ingest
# --------------------------------------------------------------------------------------------


def fusion_key(event: Any) -> str:
    """Where an event's scores are fused: its office (its alert queue is per office)."""
    for name in ("customs_office", "first_office_of_entry", "office"):
        value = getattr(event, name, None)
        if value:
            return str(value)
    return str(event.event_id)


def _encode_arrival(info: ArrivalInfo) -> list[str]:
    return [info.eta.isoformat(), info.transport_mode, info.first_office_of_entry]


def _decode_arrival(data: list[str] | None) -> ArrivalInfo | None:
    if not data:
        return None
    eta, mode, office = data
    return ArrivalInfo(datetime.fromisoformat(eta), mode, office)


class IngestStage:
    """Decode, validate, dead-letter, remember ENS arrivals, split events into keyed units.

    Args:
        names: The deployment's topic names.
        detectors: The detectors, in the pipeline's order.
        ens_links: ENS reference -> arrival, written in the ENS's partition (inputs are
            co-partitioned: an ENS and its declarations share the key and partition).
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
        self.ens_links = ens_links
        self.ens_retention = ens_retention
        self.sweep_every_s = sweep_every_s
        self.owned = owned
        self.clock = clock
        self._next_sweep = clock() + sweep_every_s
        self.latest_event_time: datetime | None = None

    def process(self, batch: Sequence[InMessage]) -> StageOutput:
        out = StageOutput()
        for message in batch:
            self._one(message, out)
        if self.clock() >= self._next_sweep:
            self._next_sweep = self.clock() + self.sweep_every_s
            self.sweep()
        return out

    def _one(self, message: InMessage, out: StageOutput) -> None:
        raw = message.value if message.value is not None else b""
        kind = self.names.kind_of(message.topic)
        try:
            event = decode_event(raw)
            check_topic(kind, event)
        except EventRejected as rejected:
            self._dead_letter(message, raw, rejected, out)
            return
        try:
            groups, count, arrival = self._split(event, message)
        except Exception as exc:  # a detector failed on this event: keep the event, say why
            log.exception("splitting %s %s into units failed", event.event_type, event.event_id)
            self._dead_letter(message, raw, EventRejected(f"internal error while splitting into units: {exc!r}"), out)
            return
        out.records.append(event)
        if count == 0:
            return
        context = {
            "id": event.event_id,
            "type": event.event_type,
            "fk": fusion_key(event),
            "n": count,
            "arr": _encode_arrival(arrival) if arrival is not None else None,
        }
        source = f"{message.topic}:{message.partition}"
        for (detector, key), units in groups.items():
            body: dict[str, Any] = {
                "v": WIRE_VERSION,
                "d": detector,
                "k": key,
                "src": source,
                "off": message.offset,
                "e": context,
                "u": units,
            }
            if not self.codecs[detector].by_value:
                body["ev"] = raw.decode()
            out.messages.append(OutMessage(self.names.units, f"{detector}/{key}".encode(), _dumps(body)))

    def _split(
        self, event: Any, message: InMessage
    ) -> tuple[dict[tuple[str, str], list[Any]], int, ArrivalInfo | None]:
        if self.latest_event_time is None or event.event_time > self.latest_event_time:
            self.latest_event_time = event.event_time
        arrival: ArrivalInfo | None = None
        if isinstance(event, EntrySummaryDeclaration):
            registry = EnsLinkState(self.ens_retention)
            registry.register(event)  # the pipeline's own reading of an ENS
            info = registry.lookup(event.ens_reference)
            assert info is not None
            value = {"p": message.partition, "a": _encode_arrival(info)}
            self.ens_links.put(message.partition, event.ens_reference.encode(), _dumps(value))
        else:
            reference = getattr(event, "ens_reference", None)
            if reference:
                stored = self.ens_links.get(str(reference).encode())
                if stored is not None:
                    arrival = _decode_arrival(orjson.loads(stored)["a"])
        groups: dict[tuple[str, str], list[Any]] = {}
        index = 0
        for detector in self.detectors:
            codec = self.codecs[detector.name]
            for local, (key, unit) in enumerate(detector.units(event)):
                payload = codec.encode(unit) if codec.by_value else local
                groups.setdefault((detector.name, key), []).append([index, payload])
                index += 1
        return groups, index, arrival

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
            if datetime.fromisoformat(value["a"][0]) < horizon:
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

    A table value is ``{"v": 1, "w": {input topic:partition: highest offset learned}, "s":
    state.to_dict()}``. A batch reads each key's state once and writes it back once.
    """

    def __init__(self, names: TopicNames, detectors: Sequence[Operator[Any, Any]], stores: Mapping[str, KeyValueStore]):
        self.names = names
        self.detectors = {d.name: d for d in detectors}
        self.codecs = {d.name: UnitCodec(d) for d in detectors}
        missing = set(self.detectors) - set(stores)
        if missing:
            raise ValueError(f"no state store for detector(s) {sorted(missing)}")
        self.stores = stores
        self.replayed_units = 0
        """Units scored again without learning (a replay after a restart)."""

    def process(self, batch: Sequence[InMessage]) -> StageOutput:
        out = StageOutput()
        loaded: dict[tuple[str, str], _LoadedState] = {}
        for message in batch:
            body = orjson.loads(message.value or b"null")
            if not isinstance(body, dict) or body.get("v") != WIRE_VERSION:
                log.error("skipping unreadable message at %s:%d:%d", message.topic, message.partition, message.offset)
                continue
            out.messages.append(self._one(body, message.partition, loaded))
        for (name, key), entry in loaded.items():
            if entry.dirty:
                value = {"v": WIRE_VERSION, "w": entry.watermarks, "s": entry.state.to_dict()}
                self.stores[name].put(entry.partition, key.encode(), _dumps(value))
        return out

    def _load(self, name: str, key: str, partition: int, loaded: dict[tuple[str, str], _LoadedState]) -> _LoadedState:
        entry = loaded.get((name, key))
        if entry is None:
            detector = self.detectors[name]
            stored = self.stores[name].get(key.encode())
            if stored is None:
                entry = _LoadedState(detector.new_state(), {}, partition)
            else:
                data = orjson.loads(stored)
                entry = _LoadedState(detector.state_type.from_dict(data["s"]), data["w"], partition)
            loaded[(name, key)] = entry
        return entry

    def _units(self, body: dict[str, Any]) -> Iterator[tuple[int, Any]]:
        codec = self.codecs[body["d"]]
        if codec.by_value:
            for index, payload in body["u"]:
                yield index, codec.decode(payload)
            return
        event = decode_event(body["ev"].encode())
        units = list(codec.detector.units(event))
        for index, local in body["u"]:
            key, unit = units[local]
            if key != body["k"]:
                raise ValueError(f"unit {local} of {body['e']['id']} has key {key!r}, not {body['k']!r}")
            yield index, unit

    def _one(self, body: dict[str, Any], partition: int, loaded: dict[tuple[str, str], _LoadedState]) -> OutMessage:
        name, key, source, offset = body["d"], body["k"], body["src"], body["off"]
        detector = self.detectors[name]
        entry = self._load(name, key, partition, loaded)
        replay = offset <= entry.watermarks.get(source, -1)
        results: list[list[Any]] = []
        try:
            units = list(self._units(body))
        except Exception:
            log.exception("cannot read the units of %s for %s", body["e"]["id"], name)
            units = []
            results = [[index, None] for index, _ in body["u"]]
        for index, unit in units:
            score: RiskScore | None = None
            try:
                score = detector.score_one(unit, entry.state)
                if not replay:
                    detector.learn_one(unit, entry.state)
            except Exception:
                log.exception("%s failed on unit %d of %s", name, index, body["e"]["id"])
            results.append([index, orjson.Fragment(encode_event(score)) if score is not None else None])
        if replay:
            self.replayed_units += len(results)
        else:
            entry.watermarks[source] = offset
            entry.dirty = True
        value = _dumps({"v": WIRE_VERSION, "e": body["e"], "r": results})
        return OutMessage(self.names.unit_scores, str(body["e"]["fk"]).encode(), value)


# --------------------------------------------------------------------------------------------
# Stage 3: fuse
# --------------------------------------------------------------------------------------------


class FuseStage:
    """Gather each event's unit scores; emit the score set and, for a declaration, the alert.

    ``pending`` holds, per event id, ``{"p": partition, "t": first seen (epoch s), "r":
    {unit index: score or null}}`` until complete, then ``{"p", "t", "done": 1}`` for
    ``retention_s`` so that late duplicates are ignored; a sweep drops both kinds of entry
    after ``retention_s`` (an incomplete one is logged: some unit score never arrived).
    ``queues`` holds each office's :class:`OfficeQueueState`.
    """

    def __init__(
        self,
        names: TopicNames,
        alerting: NoisyOrAlerting,
        pending: KeyValueStore,
        queues: KeyValueStore,
        *,
        retention_s: float = 900.0,
        sweep_every_s: float = 60.0,
        owned: Callable[[], set[int] | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.names = names
        self.alerting = alerting
        self.pending = pending
        self.queues = queues
        self.retention_s = retention_s
        self.sweep_every_s = sweep_every_s
        self.owned = owned
        self.clock = clock
        self._next_sweep = clock() + sweep_every_s
        self.duplicates = 0
        """Unit-score messages ignored because their event was already complete."""
        self.completed = 0
        self.incomplete_dropped = 0

    def process(self, batch: Sequence[InMessage]) -> StageOutput:
        out = StageOutput()
        entries: dict[str, dict[str, Any]] = {}
        queues: dict[str, tuple[OfficeQueueState, int]] = {}
        now = self.clock()
        for message in batch:
            body = orjson.loads(message.value or b"null")
            if not isinstance(body, dict) or body.get("v") != WIRE_VERSION:
                log.error("skipping unreadable message at %s:%d:%d", message.topic, message.partition, message.offset)
                continue
            self._one(body, message.partition, now, entries, queues, out)
        for event_id, entry in entries.items():
            self.pending.put(entry["p"], event_id.encode(), _dumps(entry))
        for office, (queue, partition) in queues.items():
            self.queues.put(partition, office.encode(), _dumps(queue.to_dict()))
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_every_s
            self.sweep(now)
        return out

    def _one(
        self,
        body: dict[str, Any],
        partition: int,
        now: float,
        entries: dict[str, dict[str, Any]],
        queues: dict[str, tuple[OfficeQueueState, int]],
        out: StageOutput,
    ) -> None:
        context = body["e"]
        event_id: str = context["id"]
        entry = entries.get(event_id)
        if entry is None:
            stored = self.pending.get(event_id.encode())
            entry = orjson.loads(stored) if stored is not None else {"p": partition, "t": now, "r": {}}
        if entry.get("done"):
            self.duplicates += 1
            return
        for index, score in body["r"]:
            entry["r"][str(index)] = score
        if len(entry["r"]) >= context["n"]:
            self._complete(context, entry["r"], partition, queues, out)
            entry = {"p": partition, "t": now, "done": 1}
        entries[event_id] = entry

    def _complete(
        self,
        context: dict[str, Any],
        gathered: dict[str, Any],
        partition: int,
        queues: dict[str, tuple[OfficeQueueState, int]],
        out: StageOutput,
    ) -> None:
        self.completed += 1
        ordered = sorted(gathered.items(), key=lambda item: int(item[0]))
        scores = [RiskScore.model_validate(score) for _, score in ordered if score is not None]
        event_id = context["id"]
        for score in scores:
            headers = [("vigie.id", score.score_id.encode())]
            out.messages.append(OutMessage(self.names.scores, event_id.encode(), encode_event(score), headers))
        out.records.extend(scores)
        if not scores or context["type"] != "declaration":
            return
        office = context["fk"]
        held = queues.get(office)
        if held is None:
            stored = self.queues.get(office.encode())
            queue = OfficeQueueState.from_dict(orjson.loads(stored)) if stored is not None else OfficeQueueState()
            held = queues[office] = (queue, partition)
        alert = self.alerting.decide(scores, _decode_arrival(context["arr"]), held[0])
        if alert is not None:
            headers = [("vigie.id", alert.alert_id.encode())]
            out.messages.append(OutMessage(self.names.alerts, alert.office.encode(), encode_event(alert), headers))
            out.records.append(alert)

    def sweep(self, now: float | None = None) -> int:
        """Drop pending entries older than ``retention_s`` in owned partitions; return how many."""
        now = self.clock() if now is None else now
        owned = self.owned()
        removed = 0
        for key in list(self.pending.keys()):
            stored = self.pending.get(key)
            if stored is None:
                continue
            entry = orjson.loads(stored)
            if (owned is not None and entry["p"] not in owned) or now - entry["t"] < self.retention_s:
                continue
            if not entry.get("done"):
                self.incomplete_dropped += 1
                log.warning("dropping the incomplete score set of %s (%d unit score(s) arrived)", key.decode(),
                            len(entry["r"]))
            self.pending.delete(entry["p"], key)
            removed += 1
        return removed


