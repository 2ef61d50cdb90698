"""Pytest fixtures for tests against a real ClickHouse server (see ``vigie.sinks.clickhouse_server``).

Register them for a test module (or for the suite in ``tests/conftest.py``)::

    pytest_plugins = ["tests.clickhouse_fixtures"]

Fixtures:

* ``clickhouse_server`` (session): one started :class:`ClickHouseServer` per test session
  (per pytest-xdist worker), stopped at the end. Tests must not stop or kill it. When no
  server binary is installed, ``deploy/clickhouse/install.sh`` installs Debian's package first
  (as root; CI runs as root). Without root and without the package the tests are skipped.
* ``clickhouse_server_factory`` (function): starts dedicated servers that a test may stop,
  kill and restart; all are stopped after the test, their data dirs under ``tmp_path``.
* ``clickhouse_database`` (function): a database name unique to the test, dropped afterwards.
* ``native_sink`` (function): a :class:`NativeSink` on the session server writing to
  ``clickhouse_database``; closed (flushed) after the test.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server_fixtures import running, server_factory
from vigie.sinks.clickhouse_server import INSTALL_SCRIPT, ClickHouseServer, server_installed
from vigie.sinks.native_sink import NativeSink

__all__ = [
    "clickhouse_database",
    "clickhouse_server",
    "clickhouse_server_factory",
    "ensure_clickhouse_installed",
    "native_sink",
]

_INSTALL_LOCK = Path(tempfile.gettempdir()) / "vigie-clickhouse-install.lock"


def ensure_clickhouse_installed() -> None:
    """Install Debian's clickhouse-server when missing; skip the test when that needs root we lack.

    pytest-xdist workers may get here together: a file lock lets one of them run apt-get.
    """
    if server_installed():
        return
    if os.geteuid() != 0:
        pytest.skip(
            f"clickhouse-server is not installed and installing it needs root: run sudo {INSTALL_SCRIPT} "
            "(Debian's clickhouse-server package)"
        )
    with _INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if server_installed():  # another worker installed it while we waited
            return
        result = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0 or not server_installed():
        pytest.fail(
            f"{INSTALL_SCRIPT} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False
        )


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """One ClickHouse server for the session; its data dir and logs stay under pytest's basetemp."""
    ensure_clickhouse_installed()
    with running(ClickHouseServer(tmp_path_factory.mktemp("clickhouse-session"))) as server:
        yield server


@pytest.fixture
def clickhouse_server_factory(tmp_path: Path) -> Iterator[Callable[..., ClickHouseServer]]:
    """Start dedicated servers, ``server = clickhouse_server_factory()``; all stopped after the test.

    Keyword arguments go to :class:`ClickHouseServer`.
    """
    ensure_clickhouse_installed()
    with server_factory(ClickHouseServer, tmp_path, "clickhouse") as make:
        yield make


@pytest.fixture
def clickhouse_database(clickhouse_server: ClickHouseServer) -> Iterator[str]:
    """A database name unique to this test (``vigie_t_<hex>``), dropped after it."""
    name = f"vigie_t_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        client = clickhouse_server.client(connect_timeout=2)
        with contextlib.suppress(Exception):  # cleanup must not mask the test's own outcome
            client.execute(f"DROP DATABASE IF EXISTS {name}")
        client.disconnect()


@pytest.fixture
def native_sink(clickhouse_server: ClickHouseServer, clickhouse_database: str) -> Iterator[NativeSink]:
    """A :class:`NativeSink` on the session server, in a fresh database; closed after the test."""
    sink = NativeSink(clickhouse_server.host, clickhouse_server.tcp_port, clickhouse_database, batch_size=1000)
    try:
        yield sink
    finally:
        with contextlib.suppress(Exception):
            sink.close()
