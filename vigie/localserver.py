"""Servers started on loopback for tests and developers: the life cycle they share.

The Kafka broker (:mod:`vigie.streams.kafka_dev`) and the ClickHouse server
(:mod:`vigie.sinks.clickhouse_server`) are each a child process with its own data directory,
config and ports. :class:`LocalServer` does what they have in common: spawning the process
with its output appended to a file, waiting with a deadline until it answers (or saying why
it did not, with the tail of its logs), stopping (SIGTERM, then SIGKILL), killing,
restarting on the same ports and data, the context manager, and stopping it when the
interpreter exits. A subclass writes its config, names its command and its files, and says
how to ask the process whether it is ready.

Ports come from :func:`free_port`:

>>> port = free_port()
>>> 1024 <= port <= 65535 and port_is_free(port)
True
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
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar, Self, TypeVar

__all__ = ["LOOPBACK", "LocalServer", "LocalServerError", "free_port", "port_is_free", "tail"]

LOOPBACK = "127.0.0.1"
log = logging.getLogger(__name__)

_Answer = TypeVar("_Answer")


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
    """A server run as a child process on 127.0.0.1, with a data directory of its own.

    Args:
        data_dir: Folder for the config, the data and the logs. A temporary folder (named
            ``prefix`` and a random suffix) when omitted, removed by :meth:`close` (and so by
            the context manager).
        prefix: Name prefix of that temporary folder.
        startup_timeout: Seconds :meth:`start` waits for the process to answer.
        detach: Start the process in its own session and do not stop it when Python exits
            (a server meant to outlive this interpreter).

    A subclass sets :attr:`kind` and :attr:`error_type`, the three file names, and implements
    :meth:`_prepare` (write the config, return the command) and :meth:`_wait_ready` (usually a
    call of :meth:`_poll_until_ready`). :meth:`stop`, :meth:`kill` and :meth:`restart` keep
    the ports and the data directory, so data written before a crash can be read after it.
    """

    #: What the server is, for messages: ``"the {kind} exited ..."``.
    kind: ClassVar[str] = "local server"
    #: The exception raised when the server does not start or answer.
    error_type: ClassVar[type[LocalServerError]] = LocalServerError
    #: The config file, the server's main log, and its captured stdout and stderr (start-up
    #: failures before its logging is set up land there), relative to the data directory.
    config_name: ClassVar[str]
    log_name: ClassVar[str]
    stdout_name: ClassVar[str]
    #: Seconds between two readiness probes.
    poll_interval: ClassVar[float] = 0.1

    host = LOOPBACK

    def __init__(
        self, data_dir: Path | str | None, *, prefix: str, startup_timeout: float, detach: bool = False
    ) -> None:
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=prefix)).resolve()
        self.startup_timeout = startup_timeout
        self.detach = detach
        self.last_start_seconds: float | None = None
        """Seconds the last :meth:`start` took, from writing the config to the first answer."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        if not detach:
            atexit.register(_stop_at_exit, weakref.ref(self))

    # -- what a subclass provides ----------------------------------------------------------

    @property
    @abstractmethod
    def client_port(self) -> int:
        """The port clients connect to; readiness is probed there."""

    @abstractmethod
    def _prepare(self) -> list[str]:
        """Write the config (and whatever the first start needs); return the command to spawn."""

    @abstractmethod
    def _wait_ready(self) -> None:
        """Return once the spawned process answers; raise :attr:`error_type` otherwise."""

    def _forget_clients(self) -> None:  # noqa: B027 - an optional hook: most servers cache no client
        """Drop cached clients of the process being stopped (a hook for subclasses)."""

    def _log_files(self) -> tuple[Path, ...]:
        """The files :meth:`log_tail` shows, most telling first."""
        return (self.log_file, self.stdout_file)

    # -- files and addresses ---------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        """The config file the server runs with."""
        return self.data_dir / self.config_name

    @property
    def log_file(self) -> Path:
        """The server's main log."""
        return self.data_dir / self.log_name

    @property
    def stdout_file(self) -> Path:
        """The process's stdout and stderr (start-up failures before its logging is set up)."""
        return self.data_dir / self.stdout_name

    @property
    def address(self) -> str:
        """``127.0.0.1:<client_port>``."""
        return f"{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of each log file, for error messages."""
        parts = []
        for path in self._log_files():
            text = tail(path, lines)
            if text.strip():
                parts.append(f"--- last lines of {path} ---\n{text}")
        return "\n".join(parts) or f"(no log in {self.data_dir})"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"{type(self).__name__}({self.address}, {state}, data_dir={str(self.data_dir)!r})"

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Write the config, spawn the process and return once it answers (at once if running).

        A process that exits or does not answer within ``startup_timeout`` is killed, and
        :attr:`error_type` is raised with the tail of its logs.
        """
        with self._lock:
            if self.is_running():
                return self
            began = time.monotonic()
            command = self._prepare()
            self.stdout_file.parent.mkdir(parents=True, exist_ok=True)
            with self.stdout_file.open("ab") as out:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    start_new_session=self.detach,
                )
            try:
                self._wait_ready()
            except BaseException:
                self.kill()
                raise
            self.last_start_seconds = time.monotonic() - began
            log.info("%s up at %s in %.1fs", self.kind, self.address, self.last_start_seconds)
            return self

    def _poll_until_ready(self, probe: Callable[[], _Answer]) -> _Answer:
        """Call ``probe`` until it returns, within ``startup_timeout``; return what it returned.

        A plain TCP connect to :attr:`client_port` comes first each time (clients' libraries
        log every refused connection they make); an exception from either counts as "not yet".
        Raises :attr:`error_type` when the process exits or the deadline passes.
        """
        deadline = time.monotonic() + self.startup_timeout
        last_error: object = "no answer"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise self.error_type(
                    f"the {self.kind} exited with code {code} while starting "
                    f"(config {self.config_file})\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise self.error_type(
                    f"the {self.kind} did not answer on {self.address} within {self.startup_timeout:.0f}s "
                    f"(last error: {last_error})\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.client_port), timeout=1):
                    pass
                return probe()
            except Exception as exc:  # refused, EOF, still loading: the server's own error says which
                last_error = exc
            time.sleep(self.poll_interval)

    def is_running(self) -> bool:
        """True while the process is alive (it may not answer yet, or any more)."""
        return self._proc is not None and self._proc.poll() is None

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
