"""What the Kafka and ClickHouse test fixtures share: start a local server or fail the test, clean up.

Both servers are :class:`~vigie.localserver.LocalServer` subclasses. A fixture module
builds its session fixture on :func:`running` and its factory fixture on :func:`server_factory`::

    @pytest.fixture(scope="session")
    def kafka_broker(tmp_path_factory):
        with running(KafkaBroker(tmp_path_factory.mktemp("kafka-session"))) as broker:
            yield broker
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vigie.localserver import LocalServer, LocalServerError

__all__ = ["running", "server_factory", "start_or_fail"]

Server = TypeVar("Server", bound=LocalServer)


def start_or_fail(server: Server) -> Server:
    """Start ``server``; a start-up failure fails the test with the server's reason (and log tail)."""
    try:
        return server.start()
    except LocalServerError as exc:
        pytest.fail(f"could not start a {server.kind}: {exc}", pytrace=False)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """``server`` started for the block, closed after it (its data dir stays when it was given)."""
    start_or_fail(server)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def server_factory(make_server: Callable[..., Server], data_root: Path, name: str) -> Iterator[Callable[..., Server]]:
    """A function starting dedicated servers, ``make(**kwargs)``; every one is closed after the block.

    Keyword arguments go to ``make_server``. The n-th server's data dir defaults to
    ``data_root / f"{name}-{n}"``, so a failed test's logs stay under its ``tmp_path``.
    """
    servers: list[Server] = []

    def make(**kwargs: Any) -> Server:
        kwargs.setdefault("data_dir", data_root / f"{name}-{len(servers)}")
        server = make_server(**kwargs)
        servers.append(server)
        return start_or_fail(server)

    try:
        yield make
    finally:
        for server in servers:
            server.close()
