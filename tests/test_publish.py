"""`vigie publish` and VigiePublisher: validation before sending, clear rejections, keys, delivery."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest
import typer
from typer.testing import CliRunner

from tests.factories import declaration, declaration_dict, ens, ens_dict, excise_dict, outcome_dict
from vigie.schemas import EventRejected
from vigie.streams.publish import Rejection, VigiePublisher, prepare, publish_command
from vigie.streams.topics import TopicNames, create_topics, key_for

if TYPE_CHECKING:
    from vigie.streams.kafka_dev import KafkaBroker

pytest_plugins = ["tests.kafka_fixtures"]


# -- validation, without a broker -------------------------------------------------------------


def test_prepare_keys_valid_events_and_keeps_their_bytes() -> None:
    raw = orjson.dumps(declaration_dict())
    assert prepare("declarations", raw) == (b"26FR0002300000009Z", raw), "keyed by the ENS reference"
    no_ens = orjson.dumps(declaration_dict(ens_reference=None))
    assert prepare("declarations", no_ens)[0] == b"26FR0002300000001A", "else by the MRN"
    assert prepare("ens", orjson.dumps(ens_dict()))[0] == b"26FR0002300000009Z"
    assert prepare("excise", orjson.dumps(excise_dict()))[0] == b"26FRA1B2C3D4E5F6G7H81"
    assert prepare("excise", orjson.dumps(excise_dict(record_type="export", arc=None)))[0] == b"FR98765432100010"
    assert prepare("outcomes", orjson.dumps(outcome_dict()))[0] == b"26FR0002300000001A"
    key, value = prepare("declarations", declaration())
    assert key == key_for(declaration()) and orjson.loads(value)["event_id"] == "decl-0001"


def test_prepare_rejects_with_field_and_reason() -> None:
    bad_item = {**declaration_dict()["goods_items"][0], "net_mass_kg": -5}
    with pytest.raises(EventRejected) as rejected:
        prepare("declarations", orjson.dumps(declaration_dict(goods_items=[bad_item])))
    assert rejected.value.field == "goods_items.0.net_mass_kg"
    assert rejected.value.reason == "goods_items.0.net_mass_kg: Input should be greater than 0 (got -5)"
    with pytest.raises(EventRejected) as rejected:
        prepare("declarations", orjson.dumps(ens_dict()))
    assert rejected.value.field == "event_type"
    assert "event_type 'ens' does not belong on topic 'declarations'" in rejected.value.reason
    with pytest.raises(ValueError, match="unknown input topic"):
        VigiePublisher("127.0.0.1:1").publish("scores", b"{}")


def test_a_closed_publisher_refuses_to_publish() -> None:
    publisher = VigiePublisher("127.0.0.1:1")
    with publisher:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        publisher.publish("declarations", orjson.dumps(declaration_dict()))
    assert publisher.flush() == 0
    assert publisher.report.ok


def test_rejections_read_like_compiler_errors() -> None:
    assert str(Rejection("events.jsonl", 17, "goods_items.0.net_mass_kg", "too small")) == (
        "events.jsonl:17: rejected at goods_items.0.net_mass_kg: too small"
    )
    reason = "goods_items.0.net_mass_kg: Input should be greater than 0 (got -5)"
    assert str(Rejection("events.jsonl", 17, "goods_items.0.net_mass_kg", reason)) == (
        f"events.jsonl:17: rejected: {reason}"
    )
    assert str(Rejection("<python>", None, None, "Broker: timed out", delivery=True)) == (
        "<python>: not delivered: Broker: timed out"
    )


# -- against the session broker ---------------------------------------------------------------


@pytest.fixture
def deployment(kafka_broker: KafkaBroker) -> Iterator[TopicNames]:
    names = TopicNames(f"pub-{uuid.uuid4().hex[:8]}.")
    create_topics(kafka_broker.bootstrap_servers, names, partitions=3, include_internal=False)
    try:
        yield names
    finally:
        kafka_broker.delete_topics(
            [
                names.name(kind)
                for kind in ("ens", "declarations", "excise", "outcomes", "scores", "alerts", "dead-letter")
            ]
        )


def _read(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[tuple[bytes, bytes, int]]:
    """(key, value, partition) of the first ``expected`` messages of ``topic``, and any extra ones."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes, bytes, int]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for m in consumer.consume(100, 0.5):
                if m.error() is None:
                    got.append((m.key(), m.value(), m.partition()))
        for m in consumer.consume(100, 1.0):  # nothing more should come
            if m.error() is None:
                got.append((m.key(), m.value(), m.partition()))
    finally:
        consumer.close()
    return got


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """vigie (test shell)."""

    app.command("publish")(publish_command)
    return app


@pytest.mark.integration
def test_cli_publishes_valid_lines_and_reports_each_rejection(
    kafka_broker: KafkaBroker, deployment: TopicNames, tmp_path: Path
) -> None:
    bad_item = {**declaration_dict()["goods_items"][0], "net_mass_kg": -5}
    good_1 = orjson.dumps(declaration_dict())
    good_2 = orjson.dumps(declaration_dict(event_id="decl-0002", mrn="26FR0002300000002A", ens_reference=None))
    lines = [
        good_1,
        b"",
        orjson.dumps(declaration_dict(event_id="decl-bad", goods_items=[bad_item])),
        orjson.dumps(ens_dict()),
        good_1[:40],
        good_2,
    ]
    path = tmp_path / "declarations.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    bootstrap = kafka_broker.bootstrap_servers
    args = ["publish", str(path), "--topic", "declarations", "--bootstrap", bootstrap, "--prefix", deployment.prefix]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 1, result.output
    errors = result.stderr.splitlines()
    assert errors[0] == f"{path}:3: rejected: goods_items.0.net_mass_kg: Input should be greater than 0 (got -5)"
    assert errors[1].startswith(f"{path}:4: rejected: event_type 'ens' does not belong on topic 'declarations'")
    assert errors[2].startswith(f"{path}:5: rejected: (event): Invalid JSON")
    assert errors[3] == f"2 of 5 event(s) published to {deployment.declarations}; 3 rejected, 0 not delivered"

    received = _read(bootstrap, deployment.declarations, expected=2)
    assert sorted((key, value) for key, value, _ in received) == sorted(
        [(b"26FR0002300000009Z", good_1), (b"26FR0002300000002A", good_2)]
    )

    # All valid: exit code 0.
    path.write_bytes(orjson.dumps(ens_dict()) + b"\n")
    args[2:4] = ["--topic", "ens"]
    ok = CliRunner().invoke(_cli(), args)
    assert ok.exit_code == 0, ok.output
    assert "1 of 1 event(s) published" in ok.stderr


@pytest.mark.integration
def test_cli_says_at_once_when_the_broker_or_the_topic_is_missing(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    """Before, each record waited out librdkafka's delivery timeout (minutes) and the reason was lost in its log."""
    path = tmp_path / "ens.jsonl"
    path.write_bytes(orjson.dumps(ens_dict()) + b"\n")
    missing = CliRunner().invoke(
        _cli(),
        ["publish", str(path), "--topic", "ens", "--bootstrap", kafka_broker.bootstrap_servers, "--prefix", "nope."],
    )
    assert missing.exit_code == 1
    assert "topic nope.ens does not exist" in missing.stderr and "vigie faust topics" in missing.stderr
    from vigie.localserver import free_port

    nobody = f"127.0.0.1:{free_port()}"
    down = CliRunner().invoke(_cli(), ["publish", str(path), "--topic", "ens", "--bootstrap", nobody])
    assert down.exit_code == 1 and f"no Kafka broker answers at {nobody}" in down.stderr


@pytest.mark.integration
def test_publisher_api_co_partitions_an_ens_and_its_declarations(
    kafka_broker: KafkaBroker, deployment: TopicNames
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    seen: list[Rejection] = []
    references = [f"26FR00023000{i:05d}Z" for i in range(12)]
    with VigiePublisher(bootstrap, prefix=deployment.prefix, on_rejection=seen.append) as publisher:
        for i, reference in enumerate(references):
            assert publisher.publish("ens", ens(event_id=f"ens-{i}", ens_reference=reference))
            assert publisher.publish(
                "declaration", orjson.dumps(declaration_dict(event_id=f"decl-{i}", ens_reference=reference))
            )
        assert not publisher.publish("ens", b'{"event_type": "ens"}', line=99)
    assert publisher.report.delivered == 24 and publisher.report.rejected == 1
    assert [(r.line, r.field) for r in seen] == [(99, "event_id")]
    assert not publisher.report.ok

    ens_partitions = {k: p for k, _, p in _read(bootstrap, deployment.ens, expected=12)}
    declaration_partitions = {k: p for k, _, p in _read(bootstrap, deployment.declarations, expected=12)}
    assert ens_partitions == declaration_partitions, "an ENS and its declarations share a partition"
    assert len(set(ens_partitions.values())) > 1, "keys spread over the partitions"
