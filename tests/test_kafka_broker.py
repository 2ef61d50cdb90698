"""The development/test Kafka broker: round trip, crash and restart, and ``vigie dev kafka``."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource
from typer.testing import CliRunner

from vigie.streams.kafka_dev import (
    KAFKA_VERSION,
    KafkaBroker,
    dev_app,
    dev_kafka_down,
    dev_kafka_status,
    dev_kafka_up,
    ensure_kafka_jars,
    port_is_free,
)

if TYPE_CHECKING:  # imported for real by pytest_plugins, so that pytest can rewrite its asserts
    from tests.kafka_fixtures import KafkaTopics

pytest_plugins = ["tests.kafka_fixtures"]

pytestmark = pytest.mark.integration

# librdkafka reports "connection refused" while a broker is down; keep it out of the output.
_CLIENT_LOG = logging.getLogger("tests.kafka.rdkafka")
_CLIENT_LOG.addHandler(logging.NullHandler())
_CLIENT_LOG.propagate = False


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,  # implies acks=all, bounded in-flight, retries
            "linger.ms": 5,
            "logger": _CLIENT_LOG,
        }
    )


def _produce(producer: Producer, topic: str, values: Iterable[str]) -> list[Message]:
    """Produce keyed messages, flush, and return the delivery reports (failing on any error)."""
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    for value in values:
        producer.produce(topic, key=value.encode(), value=value.encode(), on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not errors, errors[:5]
    return delivered


def _consume_all(bootstrap: str, topic: str, expected: int, group: str | None = None, timeout: float = 60) -> list[str]:
    """Read ``expected`` messages from the start of ``topic`` in a consumer group, committing them."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "logger": _CLIENT_LOG,
        }
    )
    values: list[str] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None:
                    raise AssertionError(f"consumer error: {msg.error()}")
                values.append(msg.value().decode())
        if values:
            consumer.commit(asynchronous=False)
        # Nothing beyond what was expected (a short extra poll).
        for msg in consumer.consume(num_messages=10, timeout=0.5):
            if msg.error() is None:
                values.append(msg.value().decode())
    finally:
        consumer.close()
    return values


def _committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "logger": _CLIENT_LOG})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return sum(tp.offset for tp in offsets if tp.offset >= 0)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_fetched_jars_match_the_module_version() -> None:
    jars = ensure_kafka_jars()
    assert (jars / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file(), "KAFKA_VERSION and deploy/pom.xml disagree"
    assert len(list(jars.glob("kafka_2.13-*.jar"))) == 1, "jars of two Kafka versions are mixed"


def test_idempotent_round_trip_in_a_consumer_group(kafka_broker: KafkaBroker, kafka_topics: KafkaTopics) -> None:
    topic = kafka_topics.create("declarations", partitions=3)
    metadata = kafka_broker.admin().list_topics(topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == 3

    sent = [f"decl-{i:04d}" for i in range(1000)]
    delivered = _produce(_producer(kafka_broker.bootstrap_servers), topic, sent)
    assert len(delivered) == 1000
    assert {msg.partition() for msg in delivered} == {0, 1, 2}, "keys should spread over the 3 partitions"

    group = f"vigie-test-{uuid.uuid4().hex[:8]}"
    received = _consume_all(kafka_broker.bootstrap_servers, topic, expected=1000, group=group)
    assert len(received) == 1000, "exactly the produced messages, no duplicates"
    assert sorted(received) == sent
    assert _committed_total(kafka_broker.bootstrap_servers, group, topic, 3) == 1000

    # The helper names topics uniquely and passes topic configs (one test: one session broker
    # per xdist worker, so keeping the session-broker tests together keeps to one broker).
    first, second = kafka_topics("risk-scores", "risk-scores", config={"cleanup.policy": "compact"})
    assert first != second
    assert {first, second} <= set(kafka_broker.admin().list_topics(timeout=10).topics)
    resource = ConfigResource(ConfigResource.Type.TOPIC, first)
    configs = kafka_broker.admin().describe_configs([resource])[resource].result(10)
    assert configs["cleanup.policy"].value == "compact"


def test_killed_broker_restarts_with_its_data(kafka_broker_factory: Callable[..., KafkaBroker]) -> None:
    broker = kafka_broker_factory()
    bootstrap = broker.bootstrap_servers
    topic = "crash-test"
    broker.create_topics([topic], partitions=3)
    producer = _producer(bootstrap)
    before = [f"before-{i:04d}" for i in range(500)]
    _produce(producer, topic, before)

    broker.kill()  # SIGKILL: no controlled shutdown, no final flush
    assert not broker.is_running()
    assert not _port_open(broker.port)

    # A producer that outlives the crash queues while the broker is down ...
    during = [f"during-{i:04d}" for i in range(50)]
    for value in during:
        producer.produce(topic, key=value.encode(), value=value.encode())
    producer.poll(0.5)

    began = time.monotonic()
    broker.restart()
    restart_seconds = time.monotonic() - began
    assert broker.bootstrap_servers == bootstrap, "same ports after a restart"
    # ... and delivers once it is back, without duplicates (idempotence).
    assert producer.flush(60) == 0

    after = [f"after-{i:04d}" for i in range(100)]
    _produce(_producer(bootstrap), topic, after)

    received = _consume_all(bootstrap, topic, expected=650)
    assert sorted(received) == sorted(before + during + after)
    after_kill = broker.last_start_seconds

    # A clean stop and start keeps everything too.
    broker.stop()
    assert not broker.is_running()
    broker.start()
    assert topic in broker.admin().list_topics(timeout=10).topics
    assert len(_consume_all(bootstrap, topic, expected=650)) == 650
    print(
        f"Kafka {KAFKA_VERSION}: up in {after_kill:.1f}s after SIGKILL (restart() {restart_seconds:.1f}s), "
        f"in {broker.last_start_seconds:.1f}s after a clean stop"
    )


@pytest.mark.parametrize("detach", [False, True])
def test_start_waits_until_the_broker_answers_metadata_detached_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detach: bool
) -> None:
    """``vigie dev kafka up`` (a detached broker) returned before its broker served: a client
    right after it met a closed port while the JVM was still starting (seen on a loaded machine)."""
    broker = KafkaBroker(tmp_path / "kafka", detach=detach)
    probes: list[Any] = []
    answer = SimpleNamespace(brokers={1: object()}, topics={"__consumer_offsets": object()})
    monkeypatch.setattr(broker, "_poll_until_ready", lambda probe: probes.append(probe) or answer)
    broker._wait_ready()
    assert len(probes) == 1, "readiness is awaited"


def test_dev_kafka_up_status_down(tmp_path: Path) -> None:
    state_dir = tmp_path / ".vigie-dev"
    runner = CliRunner()
    try:
        default_free = port_is_free(9092)
        began = time.monotonic()
        up = runner.invoke(dev_app, ["kafka", "up", "--state-dir", str(state_dir)])
        up_seconds = time.monotonic() - began
        assert up.exit_code == 0, up.output
        state = dev_kafka_status(state_dir)
        assert state is not None
        assert state.bootstrap_servers in up.stdout.splitlines()
        recorded: dict[str, Any] = json.loads((state_dir / "kafka.json").read_text())
        assert recorded["pid"] == state.pid
        assert recorded["bootstrap_servers"] == f"127.0.0.1:{recorded['port']}"
        assert Path(recorded["data_dir"]).is_dir()

        admin = AdminClient({"bootstrap.servers": state.bootstrap_servers, "logger": _CLIENT_LOG})
        assert admin.list_topics(timeout=10).brokers
        # Where the clients look by default when that port was free; the input topics exist for `vigie publish`.
        assert (state.port == 9092) == default_free
        assert {"vigie.ens", "vigie.declarations", "vigie.excise", "vigie.outcomes"} <= set(
            admin.list_topics(timeout=10).topics
        )

        assert dev_kafka_up(state_dir).pid == state.pid, "up is idempotent while the broker runs"
        status = runner.invoke(dev_app, ["kafka", "status", "--state-dir", str(state_dir)])
        assert status.exit_code == 0 and state.bootstrap_servers in status.stdout

        down = runner.invoke(dev_app, ["kafka", "down", "--state-dir", str(state_dir)])
        assert down.exit_code == 0 and "stopped" in down.stdout
        assert dev_kafka_status(state_dir) is None
        assert not _port_open(state.port)
        status = runner.invoke(dev_app, ["kafka", "status", "--state-dir", str(state_dir)])
        assert status.exit_code == 1
        assert dev_kafka_down(state_dir) is False
        print(f"vigie dev kafka up: {up_seconds:.1f}s")
    finally:
        dev_kafka_down(state_dir)
