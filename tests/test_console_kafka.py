"""With Kafka, an outcome recorded in the console is published to the deployment's outcomes topic."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from tests import factories
from tests.test_console_world import OFFICE_A, TestClient, open_console, seed_world
from vigie.schemas import ControlOutcome, decode_event
from vigie.streams.console_app import KafkaOutcomes, create_app
from vigie.streams.kafka_dev import KafkaBroker

pytestmark = pytest.mark.integration


def _consume(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[tuple[bytes, bytes]]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"console-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while not got and time.monotonic() < deadline:
            got += [(m.key(), m.value()) for m in consumer.consume(10, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return got


def test_an_officers_outcome_is_published_to_the_outcomes_topic(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    prefix = f"console-{uuid.uuid4().hex[:8]}."
    topic = f"{prefix}outcomes"
    kafka_broker.create_topics([topic], partitions=1)
    try:
        with open_console(tmp_path, kafka_bootstrap=kafka_broker.bootstrap_servers, kafka_prefix=prefix) as (
            services,
            key,
        ):
            assert isinstance(services.outcomes, KafkaOutcomes)
            world = seed_world(services.store)
            outcome = factories.outcome_dict(
                event_id=f"out-{uuid.uuid4().hex[:12]}",
                office=OFFICE_A,
                alert_id=world.alert_a,
                target_reference=world.mrn_a,
                event_time=datetime.now(UTC).isoformat(),
            )
            client = TestClient(create_app(services, manage_lifecycle=False))
            response = client.post("/api/outcomes", content=orjson.dumps(outcome), headers={"X-API-Key": key})
            assert response.status_code == 201, response.text
            # Shown at once from the store; the workers' own copy will replace it (same event_id).
            assert services.queries.outcome_exists(outcome["event_id"])
        messages = _consume(kafka_broker.bootstrap_servers, topic)
        assert len(messages) == 1
        message_key, value = messages[0]
        event = decode_event(value)
        assert isinstance(event, ControlOutcome) and event.event_id == outcome["event_id"]
        assert message_key == world.mrn_a.encode()  # keyed by target_reference, like integrators' outcomes
    finally:
        kafka_broker.delete_topics([topic])
