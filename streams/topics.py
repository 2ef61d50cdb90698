"""The Kafka topics of Vigie's streaming runtime: names, message keys, creation.

Every topic name is ``PREFIX + kind`` (prefix ``vigie.`` by default, configurable so that
several deployments or tests share one cluster). All topics of one deployment have the
**same number of partitions**: Faust co-partitions topics of equal size, so partition ``p``
of every topic (and of every table changelog) lives in the same worker.

=================  ==========================  ===================================================
kind               message key                 why this key
=================  ==========================  ===================================================
``ens``            ``ens_reference``           the ENS and the declarations it covers share a key,
                                               so the ENS link (arrival time for alerts' lead
                                               time) is read where it was written
``declarations``   ``ens_reference``, else     as above; a declaration without an ENS reference
                   ``mrn``                     is spread by its MRN
``excise``         ``arc``, else               an e-AD and its report of receipt share the ARC:
                   ``operator_eori``           they stay in order in one partition
``outcomes``       ``target_reference``        all outcomes of one controlled MRN/ENS/ARC in order
``scores``         ``subject_event_id``        all the scores of one event, consecutive
``alerts``         ``office``                  an office's queue in order (ranks are per office)
``dead-letter``    ``dead_letter_id``          value = the original bytes, reason in headers
``units``          ``detector/state key``      internal: each detector state key is scored in
                                               one partition (where its state lives)
``fusion``         ``fusion`` (constant)       internal: every event and its unit scores meet
                                               the pipeline's global state (fusion, outcome
                                               join) in one partition
=================  ==========================  ===================================================

Input keys are hashed with murmur2, as the Java client and aiokafka do
(``partitioner=murmur2_random`` for librdkafka), so any producer that sets these keys lands
an ENS and its declarations in the same partition number. The detectors' own state keys
(e.g. origin and CN chapter for undervaluation) cannot be chosen at the input, since one
declaration's items touch several of them: the workers repartition by state key through
the internal ``units`` topic (see :mod:`vigie.streams.faust_app`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vigie.schemas import EventRejected

__all__ = [
    "DEFAULT_PREFIX",
    "INPUT_KINDS",
    "INTERNAL_KINDS",
    "LARGE_MESSAGE_BYTES",
    "OUTPUT_KINDS",
    "TopicNames",
    "check_topic",
    "create_topics",
    "describe_partitions",
    "key_for",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "vigie."

INPUT_KINDS: dict[str, str] = {"ens": "ens", "declarations": "declaration", "excise": "excise", "outcomes": "outcome"}
"""Input topic kind -> the ``event_type`` it carries."""
OUTPUT_KINDS: tuple[str, ...] = ("scores", "alerts", "dead-letter")
INTERNAL_KINDS: tuple[str, ...] = ("units", "fusion")

LARGE_MESSAGE_BYTES = 8 * 1024 * 1024
"""``max.message.bytes`` of the input, dead-letter and internal topics.

Valid events are at most 1 MiB (:data:`vigie.schemas.MAX_EVENT_BYTES`), but inputs accept
more so that an oversized message reaches the workers and is dead-lettered with a reason,
instead of failing silently in some producer.
"""

_TOPIC_CONFIG: dict[str, dict[str, str]] = {
    **{kind: {"max.message.bytes": str(LARGE_MESSAGE_BYTES)} for kind in INPUT_KINDS},
    "dead-letter": {"max.message.bytes": str(LARGE_MESSAGE_BYTES)},
    "units": {"max.message.bytes": str(LARGE_MESSAGE_BYTES)},
    "fusion": {"max.message.bytes": str(LARGE_MESSAGE_BYTES)},
}


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Topic names of one deployment: ``prefix + kind``.

    >>> names = TopicNames("vigie.")
    >>> names.declarations, names.kind_of("vigie.dead-letter")
    ('vigie.declarations', 'dead-letter')
    """

    prefix: str = DEFAULT_PREFIX

    def name(self, kind: str) -> str:
        """The topic name of ``kind`` (one of the input, output or internal kinds)."""
        if kind not in INPUT_KINDS and kind not in OUTPUT_KINDS and kind not in INTERNAL_KINDS:
            raise ValueError(f"unknown topic kind {kind!r}: expected one of {', '.join(self.all_kinds())}")
        return self.prefix + kind

    def kind_of(self, topic: str) -> str:
        """The kind of a topic name of this deployment; ``ValueError`` for a foreign name."""
        if topic.startswith(self.prefix):
            kind = topic[len(self.prefix) :]
            if kind in INPUT_KINDS or kind in OUTPUT_KINDS or kind in INTERNAL_KINDS:
                return kind
        raise ValueError(f"topic {topic!r} is not one of this deployment's (prefix {self.prefix!r})")

    @staticmethod
    def all_kinds() -> list[str]:
        return [*INPUT_KINDS, *OUTPUT_KINDS, *INTERNAL_KINDS]

    @property
    def inputs(self) -> list[str]:
        return [self.name(kind) for kind in INPUT_KINDS]

    @property
    def ens(self) -> str:
        return self.name("ens")

    @property
    def declarations(self) -> str:
        return self.name("declarations")

    @property
    def excise(self) -> str:
        return self.name("excise")

    @property
    def outcomes(self) -> str:
        return self.name("outcomes")

    @property
    def scores(self) -> str:
        return self.name("scores")

    @property
    def alerts(self) -> str:
        return self.name("alerts")

    @property
    def dead_letter(self) -> str:
        return self.name("dead-letter")

    @property
    def units(self) -> str:
        return self.name("units")

    @property
    def fusion(self) -> str:
        return self.name("fusion")


def resolve_input_kind(topic: str) -> str:
    """Accept an input kind (``declarations``) or its singular event type (``declaration``)."""
    if topic in INPUT_KINDS:
        return topic
    for kind, event_type in INPUT_KINDS.items():
        if topic == event_type:
            return kind
    raise ValueError(f"unknown input topic {topic!r}: expected one of {', '.join(INPUT_KINDS)}")


def key_for(event: Any) -> bytes:
    """The message key of an inbound event (see the table in this module's docstring)."""
    event_type = event.event_type
    if event_type == "ens":
        key = event.ens_reference
    elif event_type == "declaration":
        key = event.ens_reference or event.mrn
    elif event_type == "excise":
        key = event.arc or event.operator_eori
    elif event_type == "outcome":
        key = event.target_reference
    else:
        raise ValueError(f"no input topic carries event_type {event_type!r}")
    return str(key).encode()


def check_topic(kind: str, event: Any) -> None:
    """Raise :class:`EventRejected` (field ``event_type``) when ``event`` does not belong on ``kind``."""
    expected = INPUT_KINDS.get(kind)
    if expected is None:
        raise ValueError(f"{kind!r} is not an input topic kind")
    if event.event_type != expected:
        raise EventRejected(
            f"event_type {event.event_type!r} does not belong on topic '{kind}', which carries '{expected}' events",
            "event_type",
        )


def describe_partitions(
    bootstrap_servers: str, topics: Iterable[str], timeout: float = 10.0, logger: logging.Logger | None = None
) -> dict[str, int]:
    """Partition count of each existing topic among ``topics`` (missing ones are left out); raises
    ``KafkaException`` when no broker answers. ``logger`` takes librdkafka's log (default: stderr)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **({"logger": logger} if logger else {})})
    metadata = admin.list_topics(timeout=timeout)
    found: dict[str, int] = {}
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is not None and topic.error is None and topic.partitions:
            found[name] = len(topic.partitions)
    return found


def create_topics(
    bootstrap_servers: str,
    names: TopicNames | None = None,
    partitions: int = 3,
    *,
    replication_factor: int = 1,
    include_internal: bool = True,
    extra_config: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Create the deployment's topics that are missing; return every topic's partition count.

    Existing topics are kept as they are. ``ValueError`` when existing topics disagree on
    the partition count (the workers need them all equal). ``extra_config`` maps a kind to
    topic settings added to the defaults (e.g. ``{"scores": {"retention.ms": "86400000"}}``).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    names = names or TopicNames()
    kinds = [*INPUT_KINDS, *OUTPUT_KINDS, *(INTERNAL_KINDS if include_internal else ())]
    wanted = {names.name(kind): kind for kind in kinds}
    existing = describe_partitions(bootstrap_servers, wanted, timeout)
    counts = set(existing.values())
    if len(counts) > 1:
        raise ValueError(f"existing topics have different partition counts: {existing}")
    if counts and partitions not in counts:
        (have,) = counts
        log.warning("topics exist with %d partitions; creating the missing ones with %d too", have, have)
        partitions = have
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    new = []
    for name, kind in wanted.items():
        if name in existing:
            continue
        config = dict(_TOPIC_CONFIG.get(kind, {}))
        config.update((extra_config or {}).get(kind, {}))
        new.append(NewTopic(name, partitions, replication_factor, config=config))
    if new:
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for future in futures.values():
            try:
                future.result(timeout)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if getattr(error, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        _wait_for_leaders(admin, [topic.topic for topic in new], timeout)
    return {name: partitions for name in wanted}


def _wait_for_leaders(admin: Any, topics: list[str], timeout: float) -> None:
    """Wait until every partition of ``topics`` has a leader (producers fail fast before that)."""
    deadline = time.monotonic() + timeout
    pending = set(topics)
    while pending:
        metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
        for name in list(pending):
            topic = metadata.topics.get(name)
            ready = topic is not None and topic.error is None and bool(topic.partitions)
            if ready and all(p.leader >= 0 for p in topic.partitions.values()):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout:.0f}s: {sorted(pending)}")
        if pending:
            time.sleep(0.05)
