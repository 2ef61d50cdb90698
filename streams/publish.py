"""Publishing events to Vigie's Kafka topics, for integrators: ``vigie publish`` and :class:`VigiePublisher`.

Every record is validated with the same codec the workers use
(:func:`vigie.schemas.decode_event`) *before* it is sent, and must match its topic (an ENS
sent to ``declarations`` is rejected). A rejected record is never sent; its rejection names
the line, the field and the reason::

    events.jsonl:17: rejected: goods_items.0.net_mass_kg: Input should be greater than 0 (got -5)

Accepted records are sent unchanged (the bytes the integrator wrote), keyed as
:mod:`vigie.streams.topics` documents, by an idempotent producer (``enable.idempotence``:
acks from all in-sync replicas, no duplicates from retries) with the Java client's murmur2
partitioner. Delivery reports are collected: a record the broker did not acknowledge is
reported with its line, like a rejection.

Python API::

    from vigie.streams.publish import VigiePublisher

    with VigiePublisher("127.0.0.1:9092") as publisher:       # topics "vigie.<kind>"
        publisher.publish("declarations", raw_json_bytes)       # or a pydantic event
        report = publisher.publish_lines("ens", open("ens.jsonl", "rb"), source="ens.jsonl")
    # leaving the block flushes: publisher.report then holds every delivery's outcome
    for rejection in publisher.report.rejections:
        print(rejection)

Command line (``vigie publish``)::

    vigie publish --topic declarations declarations.jsonl --bootstrap 127.0.0.1:9092

exits with code 0 when every record was accepted and delivered, 1 otherwise.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from pydantic import BaseModel

from vigie.schemas import MAX_EVENT_BYTES, EventRejected, decode_event, encode_event

from .topics import (
    DEFAULT_PREFIX,
    INPUT_KINDS,
    TopicNames,
    check_topic,
    describe_partitions,
    key_for,
    resolve_input_kind,
)

__all__ = ["PublishReport", "Rejection", "VigiePublisher", "prepare", "publish_command"]

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,  # implies acks=all, retries, at most 5 requests in flight, in order
    "acks": "all",
    "partitioner": "murmur2_random",  # the Java client's and aiokafka's partitioner
    "linger.ms": 10,
    "message.max.bytes": MAX_EVENT_BYTES + 64 * 1024,
}
"""librdkafka settings of the publisher; ``config`` passed to :class:`VigiePublisher` overrides them."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that was not published: invalid, on the wrong topic, or not acknowledged by Kafka."""

    source: str
    """Where the record came from, e.g. the file name, or ``<python>``."""
    line: int | None
    field: str | None
    reason: str
    delivery: bool = False
    """True when the record was valid but Kafka did not acknowledge it."""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        if self.delivery:
            return f"{where}: not delivered: {self.reason}"
        if self.field and not self.reason.startswith(self.field):
            return f"{where}: rejected at {self.field}: {self.reason}"
        return f"{where}: rejected: {self.reason}"  # the codec's reasons start with the field


@dataclass
class PublishReport:
    """What happened to the records given to a :class:`VigiePublisher`."""

    read: int = 0
    """Records offered (blank lines are not counted)."""
    sent: int = 0
    """Records that passed validation and were handed to the producer."""
    delivered: int = 0
    """Records the broker acknowledged (known after a flush)."""
    rejections: list[Rejection] = field(default_factory=list)
    """Invalid records and records Kafka did not acknowledge, in the order they were found."""

    @property
    def rejected(self) -> int:
        return sum(1 for r in self.rejections if not r.delivery)

    @property
    def undelivered(self) -> int:
        return sum(1 for r in self.rejections if r.delivery)

    @property
    def ok(self) -> bool:
        """True when every record offered was valid and delivered."""
        return not self.rejections and self.delivered == self.sent


def prepare(kind: str, record: bytes | BaseModel) -> tuple[bytes, bytes]:
    """Validate ``record`` for input topic ``kind``; return ``(key, value)`` or raise :class:`EventRejected`.

    Raw bytes are validated and sent unchanged; a pydantic event is encoded with
    :func:`vigie.schemas.encode_event` first and validated like any bytes.
    """
    raw = encode_event(record) if isinstance(record, BaseModel) else bytes(record)
    event = decode_event(raw)
    check_topic(kind, event)
    return key_for(event), raw


class VigiePublisher:
    """Validates and publishes events to a Vigie deployment's input topics.

    Args:
        bootstrap_servers: Kafka bootstrap address, ``HOST:PORT[,HOST:PORT...]``.
        prefix: Topic name prefix of the deployment (``vigie.`` gives ``vigie.declarations``).
        config: librdkafka settings overriding :data:`PRODUCER_DEFAULTS`.
        on_rejection: Called with each :class:`Rejection` as soon as it is known (the CLI
            prints them); every rejection is also kept in :attr:`report`.

    Not thread-safe. Call :meth:`flush` (or leave the ``with`` block) to wait for the
    delivery reports; :attr:`report` is complete after that.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        config: Mapping[str, Any] | None = None,
        on_rejection: Callable[[Rejection], None] | None = None,
    ) -> None:
        from confluent_kafka import KafkaError, Producer

        # The delivery errors of the records close() purges after its timeout.
        self._purged_codes = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)

        self.topics = TopicNames(prefix)
        self.report = PublishReport()
        self.on_rejection = on_rejection
        settings = {"bootstrap.servers": bootstrap_servers, **PRODUCER_DEFAULTS, **dict(config or {})}
        self._producer = Producer(settings)
        self._closed = False
        self._pending = 0
        """Records handed to the producer whose delivery callback has not fired yet."""

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self, topic: str, record: bytes | BaseModel, *, source: str = "<python>", line: int | None = None
    ) -> bool:
        """Validate one record and send it to input topic ``topic`` (``declarations``, ``ens``, ...).

        Returns False (and records a :class:`Rejection`) when the record is invalid or
        belongs to another topic; True when it was handed to the producer. Whether it was
        *delivered* is known after :meth:`flush`.
        """
        from confluent_kafka import KafkaException

        if self._closed:
            raise RuntimeError("this VigiePublisher is closed: open a new one to publish more")
        kind = resolve_input_kind(topic)
        self.report.read += 1
        try:
            key, value = prepare(kind, record)
        except EventRejected as rejected:
            self._reject(Rejection(source, line, rejected.field, rejected.reason))
            return False
        callback = self._delivery_callback(source, line)
        while True:
            try:
                self._producer.produce(self.topics.name(kind), value=value, key=key, on_delivery=callback)
                break
            except BufferError:
                self._producer.poll(0.5)  # local queue full: serve delivery reports, then retry
            except KafkaException as exc:
                self._reject(Rejection(source, line, None, str(exc), delivery=True))
                return False
        self.report.sent += 1
        self._pending += 1
        self._producer.poll(0)
        return True

    def publish_lines(self, topic: str, lines: Iterable[bytes], *, source: str = "<lines>") -> PublishReport:
        """Publish JSON lines (one event per line; blank lines are skipped), then flush.

        Line numbers in rejections count from 1, blank lines included, so they match an editor's.
        """
        kind = resolve_input_kind(topic)
        for number, line in enumerate(lines, start=1):
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            self.publish(kind, raw, source=source, line=number)
        self.flush()
        return self.report

    def flush(self, timeout: float = 60.0) -> int:
        """Wait for delivery reports; returns how many messages are still undelivered (0 is good)."""
        if self._closed:
            return 0  # close() flushed and reported what was left
        remaining: int = self._producer.flush(timeout)
        return remaining

    def close(self, timeout: float = 60.0) -> None:
        """Flush, then release the producer and its connections, within about ``timeout`` seconds.

        Records still undelivered after ``timeout`` are purged and each is reported once, with its
        line, as not delivered. Publishing afterwards raises ``RuntimeError``."""
        if self._closed:
            return
        began = time.monotonic()
        remaining = self.flush(timeout)
        self._closed = True
        if remaining:
            # librdkafka's close waits for every queued record until message.timeout.ms (5 minutes
            # by default), whatever ``timeout`` said: purge them, so that each one's delivery
            # callback fires now (as purged) and reports it once, with its line.
            self._producer.purge(in_queue=True, in_flight=True, blocking=True)
            self._producer.flush(max(0.1, min(1.0, timeout - (time.monotonic() - began))))  # serve the callbacks
        # Without this the librdkafka handle lived until garbage collection, reconnecting (and
        # logging each refusal) to a broker that had gone.
        self._producer.close()
        if self._pending:
            # Only records whose callback never fired (it always should after a purge).
            self._reject(
                Rejection(
                    "<producer>",
                    None,
                    None,
                    f"{self._pending} message(s) still unacknowledged after {timeout:g}s",
                    delivery=True,
                )
            )

    def __enter__(self) -> VigiePublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _reject(self, rejection: Rejection) -> None:
        self.report.rejections.append(rejection)
        if self.on_rejection is not None:
            self.on_rejection(rejection)

    def _delivery_callback(self, source: str, line: int | None) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, _msg: Any) -> None:
            self._pending -= 1
            if err is None:
                self.report.delivered += 1
            elif err.code() in self._purged_codes:
                reason = "not acknowledged before close() timed out; purged from the producer's queue"
                self._reject(Rejection(source, line, None, reason, delivery=True))
            else:
                self._reject(Rejection(source, line, None, str(err), delivery=True))

        return on_delivery


# --------------------------------------------------------------------------------------------
# vigie publish
# --------------------------------------------------------------------------------------------


def reachable_topic(bootstrap: str, topic: str, timeout: float = 10.0) -> str | None:
    """Why ``topic`` cannot take events on ``bootstrap`` (no broker answers, or it has no such topic); None
    when it can. Asked before publishing: otherwise each record waits out librdkafka's delivery timeout."""
    from confluent_kafka import KafkaException

    try:
        found = describe_partitions(bootstrap, [topic], timeout, logger=log)
    except KafkaException:
        return (
            f"no Kafka broker answers at {bootstrap} within {timeout:g} s: start one (`vigie dev kafka up` prints "
            "its address) or pass --bootstrap HOST:PORT"
        )
    if topic not in found:
        return (
            f"topic {topic} does not exist on {bootstrap}: create the deployment's topics (`vigie faust topics "
            f"--bootstrap {bootstrap}`; `vigie dev kafka up` creates them on a development broker)"
        )
    return None


def _open(path: Path) -> BinaryIO:
    return sys.stdin.buffer if str(path) == "-" else open(path, "rb")


def publish_command(
    file: Annotated[Path, typer.Argument(help="JSON-lines file of events, one per line ('-' reads stdin).")],
    topic: Annotated[
        str, typer.Option("--topic", "-t", help=f"Input topic kind: {', '.join(INPUT_KINDS)}.")
    ] = "declarations",
    bootstrap: Annotated[
        str, typer.Option("--bootstrap", "-b", help="Kafka bootstrap servers, HOST:PORT.")
    ] = "127.0.0.1:9092",
    prefix: Annotated[str, typer.Option(help="Topic name prefix of the deployment.")] = DEFAULT_PREFIX,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only rejections, no summary.")] = False,
) -> None:
    """Validate each line of FILE and publish the valid events to a Vigie input topic.

    Each invalid line is reported on stderr with its line number, field and reason, and is
    not sent. Exit code 0 when every line was valid and delivered, 1 otherwise.
    """
    try:
        kind = resolve_input_kind(topic)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--topic") from exc
    if str(file) != "-" and not file.is_file():
        raise typer.BadParameter(f"no such file: {file}", param_hint="FILE")

    def show(rejection: Rejection) -> None:
        typer.echo(str(rejection), err=True)

    problem = reachable_topic(bootstrap, TopicNames(prefix).name(kind))
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1)
    publisher = VigiePublisher(bootstrap, prefix=prefix, on_rejection=show)
    stream = _open(file)
    try:
        publisher.publish_lines(kind, stream, source=str(file))
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        publisher.close()
    report = publisher.report
    if not quiet:
        typer.echo(
            f"{report.delivered:,} of {report.read:,} event(s) published to {publisher.topics.name(kind)}; "
            f"{report.rejected:,} rejected, {report.undelivered:,} not delivered",
            err=True,
        )
    if not report.ok:
        raise typer.Exit(1)
