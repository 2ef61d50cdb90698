"""Servers started on loopback for tests and developers: the life cycle they share.

The Kafka broker (:mod:`vigie.streams.kafka_dev`) and the ClickHouse server
(:mod:`vigie.sinks.clickhouse_server`) are both a child process with its own data
directory and ports. Stopping, killing, restarting on the same ports and data, and the
clean-up at interpreter exit are the same for both, so they live here.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Self

LOOPBACK = "127.0.0.1"
log = logging.getLogger(__name__)


class LocalServerError(RuntimeError):
    """A local server could not be started or reached."""


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range of ports handed out to outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(exclude: Iterable[int] = ()) -> int:
    """A loopback TCP port free now, preferably below the kernel's ephemeral range.

    Ports below that range are never the local end of an outgoing connection, so a server
    restarted on its old ports does not find one taken by a client socket.
    """
    excluded = set(exclude)
    low, _high = ephemeral_port_range()
    if low > 20000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(20000, low)
            if port not in excluded and port_is_free(port):
                return port
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in excluded:
            return port
    raise LocalServerError("could not find a free loopback port")


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file (read from its last 64 KiB), or ``""``."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _stop_at_exit(ref: weakref.ReferenceType[LocalServer]) -> None:
    server = ref()
    if server is not None and server.is_running():
        server.stop(timeout=10)


class LocalServer(ABC):
    """A server run as a child process, with a data directory of its own.

    Subclasses implement :meth:`start` (spawn ``self._proc`` and wait until it answers).
    :meth:`stop`, :meth:`kill` and :meth:`restart` keep the ports and the data directory,
    so data written before a crash can be read after it. A data directory this object
    created is removed by :meth:`close` (and so by the context manager).
    """

    def __init__(self, data_dir: Path | str | None, *, prefix: str, stop_at_exit: bool = True) -> None:
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=prefix)).resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        if stop_at_exit:
            atexit.register(_stop_at_exit, weakref.ref(self))

    @abstractmethod
    def start(self) -> Self:
        """Spawn the process (``self._proc``) and return once it answers."""

    def is_running(self) -> bool:
        """True while the process is alive (it may not answer yet, or any more)."""
        return self._proc is not None and self._proc.poll() is None

    def _forget_clients(self) -> None:  # noqa: B027 - an optional hook: most servers cache no client
        """Drop cached clients of the process being stopped (a hook for subclasses)."""

    def stop(self, timeout: float = 20.0) -> None:
        """Stop cleanly (SIGTERM), killing the process if it has not exited after ``timeout``."""
        with self._lock:
            self._forget_clients()
            proc, self._proc = self._proc, None
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0fs; killing it", self, timeout)
                proc.kill()
                proc.wait(10)

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would: no flush, no controlled shutdown."""
        with self._lock:
            self._forget_clients()
            proc, self._proc = self._proc, None
            if proc is None or proc.poll() is not None:
                return
            proc.kill()
            proc.wait(10)

    def restart(self, *, kill: bool = False) -> Self:
        """Stop (or, with ``kill``, kill) if running, and start again on the same ports and data."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the data directory if this object created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
