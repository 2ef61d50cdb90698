"""A private ClickHouse server for tests and developers: own config, own data dir, loopback only.

Debian bookworm packages ClickHouse 18.16 (``deploy/clickhouse/install.sh`` installs it without
starting the system service). :class:`ClickHouseServer` runs that binary (or a newer
``clickhouse server``) as a child process with a config written into its data dir from the
templates in ``deploy/clickhouse/``: native and HTTP ports picked free on 127.0.0.1, data,
temporary files and logs under the data dir, a ``default`` user without a password that only
loopback clients may use, no interserver port.

In tests::

    with ClickHouseServer() as server:            # temporary data dir, removed on exit
        sink = NativeSink(server.host, server.tcp_port)
        server.stop()      # SIGTERM (server.kill(): SIGKILL, as a crash would)
        server.restart()   # same ports, same data dir

For developers::

    python -m vigie.sinks.clickhouse_server --data-dir vigie-data/clickhouse --tcp-port 9000

An 18.16 server answers about 0.1-0.3 s after it is spawned (fresh or restarted) and exits
about 1 s after SIGTERM with a client connected (``shutdown_wait_unfinished`` and
``poll_interval`` are lowered to 1 s in the templates; the package defaults make it 10 s).
:attr:`ClickHouseServer.last_start_seconds` holds the measured start time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import string
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from vigie.localserver import LocalServer, LocalServerError, free_port

__all__ = [
    "INSTALL_SCRIPT",
    "ClickHouseServer",
    "ClickHouseServerError",
    "find_server_command",
    "free_port",
    "server_installed",
]

#: sinks/ sits at the top of the repository (the package is installed editable).
REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy" / "clickhouse"
#: Installs Debian's clickhouse-server and clickhouse-client when missing (root, no prompts).
INSTALL_SCRIPT = DEPLOY_DIR / "install.sh"

#: Where binaries are looked for besides ``PATH``: Debian installs the server in /usr/sbin,
#: which is not on an unprivileged user's ``PATH``.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin")
_BINARY_ENV = "VIGIE_CLICKHOUSE_SERVER"


class ClickHouseServerError(LocalServerError):
    """The server binary is missing, or the server did not start or answer."""


# --------------------------------------------------------------------------------------------
# Binary and ports
# --------------------------------------------------------------------------------------------


def _which(name: str) -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_BIN_DIRS])
    return shutil.which(name, path=search)


def find_server_command(binary: str | os.PathLike[str] | None = None) -> list[str]:
    """The command that runs a ClickHouse server, without its arguments.

    Looks at ``binary``, then ``$VIGIE_CLICKHOUSE_SERVER``, then ``clickhouse-server`` (Debian's
    package, in /usr/sbin), then the single ``clickhouse`` binary of newer releases
    (``clickhouse server``). Raises :class:`ClickHouseServerError` when none is found.
    """
    explicit = binary or os.environ.get(_BINARY_ENV)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            found = _which(str(explicit))
            if found is None:
                raise ClickHouseServerError(f"ClickHouse server binary {explicit!s} not found or not executable")
            path = Path(found)
        return [str(path), "server"] if path.name == "clickhouse" else [str(path)]
    found = _which("clickhouse-server")
    if found:
        return [found]
    found = _which("clickhouse")
    if found:
        return [found, "server"]
    raise ClickHouseServerError(
        f"no ClickHouse server binary found (clickhouse-server or clickhouse): run {INSTALL_SCRIPT} as root "
        f"(Debian's clickhouse-server), or set {_BINARY_ENV} to a server binary"
    )


def server_installed() -> bool:
    """True when :func:`find_server_command` finds a binary."""
    try:
        find_server_command()
    except ClickHouseServerError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class ClickHouseServer(LocalServer):
    """One ClickHouse server as a child process, listening on 127.0.0.1 only.

    Args:
        data_dir: Folder for the config, the data and the logs. A temporary folder when
            omitted, removed by :meth:`close` (and so by the context manager).
        tcp_port: Native-protocol port; a free one when 0.
        http_port: HTTP port; a free one when 0.
        binary: Server binary (see :func:`find_server_command`).
        startup_timeout: Seconds to wait for ``SELECT version()`` to answer.
        log_level: The server's log level (``trace`` ... ``error``).
        max_memory_usage: Per-query memory limit of the ``default`` profile, in bytes.
        template_dir: Folder holding ``config.xml.in`` and ``users.xml.in``.
        shutdown_wait: Seconds a SIGTERM waits for open client connections before closing them.

    :meth:`stop`, :meth:`kill` and :meth:`restart` keep the ports and the data dir, so a
    client reconnecting to the same address finds the same tables (tests of a server going
    away mid-stream). A server still running when the interpreter exits is stopped.
    """

    kind = "ClickHouse server"
    error_type = ClickHouseServerError
    config_name = "config.xml"
    log_name = "log/clickhouse-server.log"
    stdout_name = "log/stdout.log"
    poll_interval = 0.05  # it answers 0.1-0.3 s after the spawn: finer steps measure that better

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        tcp_port: int = 0,
        http_port: int = 0,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        log_level: str = "information",
        max_memory_usage: int = 4_000_000_000,
        template_dir: Path | str | None = None,
        shutdown_wait: int = 1,
    ) -> None:
        super().__init__(data_dir, prefix="vigie-clickhouse-", startup_timeout=startup_timeout)
        self._auto_ports = not tcp_port and not http_port
        self.tcp_port = tcp_port or free_port()
        self.http_port = http_port or free_port(exclude=[self.tcp_port])
        self.command = find_server_command(binary)
        self.log_level = log_level
        self.max_memory_usage = int(max_memory_usage)
        self.template_dir = Path(template_dir) if template_dir is not None else DEPLOY_DIR
        self.shutdown_wait = int(shutdown_wait)
        self.version: str | None = None
        """``SELECT version()`` of the running server, set once it answers."""

    # -- files ------------------------------------------------------------------------------

    @property
    def client_port(self) -> int:
        """The native-protocol port (:attr:`tcp_port`)."""
        return self.tcp_port

    @property
    def users_file(self) -> Path:
        """The ``users.xml`` the config points to."""
        return self.data_dir / "users.xml"

    @property
    def log_dir(self) -> Path:
        """Folder of the server's logs."""
        return self.data_dir / "log"

    @property
    def error_log_file(self) -> Path:
        """Warnings and errors only."""
        return self.log_dir / "clickhouse-server.err.log"

    @property
    def dsn(self) -> str:
        """``clickhouse://127.0.0.1:<tcp_port>/default`` for clickhouse-driver's ``Client.from_url``."""
        return f"clickhouse://{self.host}:{self.tcp_port}/default"

    def _render(self, name: str, values: dict[str, object]) -> str:
        path = self.template_dir / name
        try:
            template = string.Template(path.read_text())
        except OSError as exc:
            raise ClickHouseServerError(f"cannot read the config template {path}: {exc}") from exc
        return template.substitute({key: escape(str(value)) for key, value in values.items()})

    def _write_config(self) -> None:
        folders = {
            "data_path": self.data_dir / "data",
            "tmp_path": self.data_dir / "tmp",
            "user_files_path": self.data_dir / "user_files",
            "format_schema_path": self.data_dir / "format_schemas",
        }
        for folder in (*folders.values(), self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        values: dict[str, object] = {name: f"{folder}/" for name, folder in folders.items()}
        values |= {
            "host": self.host,
            "tcp_port": self.tcp_port,
            "http_port": self.http_port,
            "log_level": self.log_level,
            "log_file": self.log_file,
            "error_log_file": self.error_log_file,
            "users_config": self.users_file,
            "shutdown_wait_unfinished": self.shutdown_wait,
        }
        self.users_file.write_text(self._render("users.xml.in", {"max_memory_usage": self.max_memory_usage}))
        self.config_file.write_text(self._render("config.xml.in", values))

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> ClickHouseServer:
        """Write the config, start the server and wait until it answers ``SELECT version()``.

        On the first start with ports picked automatically, a port taken between picking
        and binding is retried with new ports; a restart keeps its ports.
        """
        with self._lock:
            attempts = 3 if self._auto_ports and self.last_start_seconds is None else 1
            for attempt in range(attempts):
                try:
                    return super().start()
                except ClickHouseServerError as exc:
                    if attempt + 1 < attempts and "Address already in use" in str(exc):
                        self.tcp_port = free_port()
                        self.http_port = free_port(exclude=[self.tcp_port])
                        continue
                    raise
            raise AssertionError("unreachable")

    def _prepare(self) -> list[str]:
        self._write_config()
        return [*self.command, f"--config-file={self.config_file}"]

    def _wait_ready(self) -> None:
        from clickhouse_driver import Client

        client = Client(self.host, port=self.tcp_port, connect_timeout=1, send_receive_timeout=5)
        try:
            ((version,),) = self._poll_until_ready(lambda: client.execute("SELECT version()"))
        finally:
            client.disconnect()
        self.version = version.decode() if isinstance(version, bytes) else str(version)

    def _log_files(self) -> tuple[Path, ...]:
        # The error log says why in a few lines; the main log is long and mostly start-up chatter.
        return (self.error_log_file, self.stdout_file, self.log_file)

    def client(self, **kwargs: Any) -> Any:
        """A clickhouse-driver ``Client`` for this server (keyword arguments go to it)."""
        from clickhouse_driver import Client

        return Client(self.host, port=self.tcp_port, **kwargs)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a server in the foreground until Ctrl-C (``python -m vigie.sinks.clickhouse_server``)."""
    parser = argparse.ArgumentParser(
        prog="python -m vigie.sinks.clickhouse_server", description="Run a private ClickHouse server on 127.0.0.1."
    )
    parser.add_argument("--data-dir", type=Path, help="kept between runs (default: a temporary folder, removed)")
    parser.add_argument("--tcp-port", type=int, default=0, help="native port (default: a free one)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (default: a free one)")
    parser.add_argument("--binary", help="server binary (default: clickhouse-server, then clickhouse)")
    parser.add_argument("--install", action="store_true", help=f"run {INSTALL_SCRIPT.name} first when missing")
    args = parser.parse_args(argv)
    if args.install and not server_installed():
        subprocess.run([str(INSTALL_SCRIPT)], check=True)
    server = ClickHouseServer(args.data_dir, tcp_port=args.tcp_port, http_port=args.http_port, binary=args.binary)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(
            f"ClickHouse {server.version} up in {server.last_start_seconds:.2f}s: "
            f"native {server.host}:{server.tcp_port}, "
            f"http {server.host}:{server.http_port}, data {server.data_dir} (Ctrl-C stops it)",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                if not server.is_running():
                    print(f"the server exited\n{server.log_tail()}", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
