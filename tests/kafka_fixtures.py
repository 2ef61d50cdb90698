"""Pytest fixtures for tests against a real Kafka broker (see ``vigie.streams.kafka_dev``).

Register them once for a test module or for the whole suite, either way::

    pytest_plugins = ["tests.kafka_fixtures"]       # in a test module or tests/conftest.py

Fixtures:

* ``kafka_broker`` (session): one started :class:`KafkaBroker` per test session (per
  pytest-xdist worker), stopped at the end. Tests must not stop or kill it.
* ``kafka_topics`` (function): creates uniquely named topics on that broker, deleted after
  the test: ``topic, = kafka_topics("declarations", partitions=3)``.
* ``kafka_broker_factory`` (function): starts dedicated brokers that a test may stop, kill
  and restart (crash tests); each is closed after the test, its data dir under ``tmp_path``.

Set ``VIGIE_SKIP_KAFKA_TESTS=1`` to skip these tests on a machine without Java or Maven.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.server_fixtures import running, server_factory
from vigie.streams.kafka_dev import KafkaBroker

__all__ = ["KafkaTopics", "kafka_broker", "kafka_broker_factory", "kafka_topics"]


def _require_kafka_prerequisites() -> None:
    """Skip when asked to; otherwise fail early and clearly when Java is missing."""
    if os.environ.get("VIGIE_SKIP_KAFKA_TESTS") == "1":
        pytest.skip("VIGIE_SKIP_KAFKA_TESTS=1")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("Kafka tests need Java 17+ (apt-get install openjdk-17-jre-headless), or VIGIE_SKIP_KAFKA_TESTS=1")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One Kafka broker for the test session (its data dir under pytest's basetemp, kept for post-mortems)."""
    _require_kafka_prerequisites()
    with running(KafkaBroker(tmp_path_factory.mktemp("kafka-session"))) as broker:
        yield broker


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:limit] or "topic"


class KafkaTopics:
    """Creates topics with names unique to the test and the run; deletes them on :meth:`cleanup`."""

    def __init__(self, broker: KafkaBroker, test_name: str) -> None:
        self.broker = broker
        self.test_name = _slug(test_name)
        self.created: list[str] = []

    def unique_name(self, base: str | None = None) -> str:
        """A topic name such as ``declarations-test_roundtrip-1a2b3c4d``."""
        parts = [_slug(base, 60)] if base else []
        parts += [self.test_name, uuid.uuid4().hex[:8]]
        return "-".join(parts)

    def __call__(
        self,
        *bases: str,
        partitions: int = 1,
        config: Mapping[str, object] | None = None,
    ) -> list[str]:
        """Create one topic per base name (one named after the test when none is given)."""
        names = [self.unique_name(base) for base in (bases or (None,))]
        self.broker.create_topics(names, partitions=partitions, config=config)
        self.created.extend(names)
        return names

    def create(self, base: str | None = None, partitions: int = 1, config: Mapping[str, object] | None = None) -> str:
        """Create a single topic and return its name."""
        return self(*([base] if base else []), partitions=partitions, config=config)[0]

    def cleanup(self) -> None:
        """Delete the topics this helper created (best effort: the broker may be down)."""
        if not self.created or not self.broker.is_running():
            return
        with contextlib.suppress(Exception):  # cleanup must not mask the test's own outcome
            self.broker.delete_topics(self.created, timeout=10)
        self.created.clear()


@pytest.fixture
def kafka_topics(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> Iterator[KafkaTopics]:
    """Create uniquely named topics on the session broker; they are deleted after the test."""
    topics = KafkaTopics(kafka_broker, request.node.name)
    try:
        yield topics
    finally:
        topics.cleanup()


@pytest.fixture
def kafka_broker_factory(tmp_path: Path) -> Iterator[Callable[..., KafkaBroker]]:
    """Start dedicated brokers, e.g. ``broker = kafka_broker_factory()``; all are closed after the test.

    Keyword arguments go to :class:`KafkaBroker` (``heap``, ``config``, ...). The data dirs live
    under the test's ``tmp_path``, so logs remain there when a test fails.
    """
    _require_kafka_prerequisites()
    with server_factory(KafkaBroker, tmp_path, "kafka") as make:
        yield make
