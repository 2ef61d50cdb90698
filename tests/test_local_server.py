"""The local-server life cycle shared by the Kafka and ClickHouse launchers, on a tiny Python server."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from vigie.localserver import LocalServer, LocalServerError, free_port

# A line-echo server: reads its port from the config file, says so on stdout, answers "pong".
_SERVER = """
import socket, sys, pathlib
port = int(pathlib.Path(sys.argv[1]).read_text())
if port == 0:
    print("bad config: port 0", flush=True)
    sys.exit(3)
sock = socket.create_server(("127.0.0.1", port))
print(f"listening on {port}", flush=True)
while True:
    conn, _ = sock.accept()
    with conn:
        if conn.recv(16):
            conn.sendall(b"pong")
"""


class EchoError(LocalServerError):
    """What the echo server raises."""


class EchoServer(LocalServer):
    kind: ClassVar[str] = "echo server"
    error_type: ClassVar[type[LocalServerError]] = EchoError
    config_name: ClassVar[str] = "port.txt"
    log_name: ClassVar[str] = "echo.log"
    stdout_name: ClassVar[str] = "stdout.log"

    def __init__(self, data_dir: Path | None = None, port: int | None = None, answers: bool = True) -> None:
        super().__init__(data_dir, prefix="vigie-echo-", startup_timeout=10.0)
        self.port = free_port() if port is None else port
        self.answers = answers

    @property
    def client_port(self) -> int:
        return self.port

    def _prepare(self) -> list[str]:
        self.config_file.write_text(str(self.port))
        script = self.data_dir / "server.py"
        script.write_text(_SERVER)
        return [sys.executable, str(script), str(self.config_file)]

    def ping(self) -> bytes:
        with socket.create_connection((self.host, self.port), timeout=2) as conn:
            conn.sendall(b"ping")
            return conn.recv(16)

    def _probe(self) -> bytes:
        if not self.answers:
            raise ConnectionError("still warming up")
        return self.ping()

    def _wait_ready(self) -> None:
        self._poll_until_ready(self._probe)


def test_start_stop_restart_and_clean_up() -> None:
    with EchoServer() as server:
        data_dir = server.data_dir
        first = server.pid
        assert first is not None and server.ping() == b"pong"
        assert server.last_start_seconds is not None and repr(server).startswith("EchoServer(127.0.0.1:")
        server.restart(kill=True)  # a crash, then the same port and data
        assert server.pid not in (None, first) and server.ping() == b"pong"
        assert f"listening on {server.port}" in server.log_tail()
        server.stop()
        assert server.pid is None and not server.is_running()
        server.start()
        assert server.ping() == b"pong"
    assert not server.is_running() and not data_dir.exists()  # the temporary folder it made is gone


def test_a_process_that_exits_while_starting_raises_its_error_with_the_logs(tmp_path: Path) -> None:
    server = EchoServer(tmp_path, port=0)
    with pytest.raises(EchoError, match="exited with code 3") as caught:
        server.start()
    assert "bad config: port 0" in str(caught.value) and str(server.config_file) in str(caught.value)
    assert not server.is_running()
    server.close()
    assert tmp_path.exists()  # given by the caller: left in place


def test_a_server_that_never_answers_is_killed_at_the_deadline(tmp_path: Path) -> None:
    server = EchoServer(tmp_path, answers=False)
    server.startup_timeout = 1.0
    with pytest.raises(EchoError, match="did not answer") as caught:
        server.start()
    assert "still warming up" in str(caught.value)  # the last probe's error
    assert server.pid is None and not server.is_running()
