"""A real Apache Kafka broker (KRaft mode, one node) for tests and developers, without Docker.

The broker runs from the jars that ``deploy/kafka/fetch-jars.sh`` copies out of Maven Central
(``deploy/pom.xml``, profile ``kafka``) into ``deploy/jars/kafka``, on the machine's Java 17+.
It listens on loopback only: a client port (PLAINTEXT) and a controller port, both picked free.

In tests::

    with KafkaBroker() as broker:
        broker.create_topics(["declarations"], partitions=3)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
        broker.kill()      # SIGKILL, as a crash would
        broker.restart()   # same ports, same data

For developers, ``dev_app`` (mounted as ``vigie dev``) runs one in the background::

    vigie dev kafka up      # prints the bootstrap address; state in ./.vigie-dev/kafka.json
    vigie dev kafka status
    vigie dev kafka down

This module does not import faust: the stream code's own tests and tools use it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from vigie.localserver import LOOPBACK, LocalServer, LocalServerError, free_port, port_is_free, tail

__all__ = [
    "KAFKA_VERSION",
    "DevKafkaState",
    "KafkaBroker",
    "KafkaBrokerError",
    "dev_app",
    "dev_kafka_down",
    "dev_kafka_status",
    "dev_kafka_up",
    "ensure_kafka_jars",
    "free_port",
    "new_cluster_id",
]

#: The Kafka version that deploy/pom.xml fetches (property ``kafka.version`` there).
KAFKA_VERSION = "4.1.2"

#: streams/ sits at the top of the repository (the package is installed editable).
REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy"
FETCH_SCRIPT = DEPLOY_DIR / "kafka" / "fetch-jars.sh"

#: Where the dev CLI keeps its state, relative to the current directory.
DEV_STATE_DIR = Path(".vigie-dev")

DEFAULT_CLIENT_PORT = 9092
"""Where `vigie publish`, the Faust worker and the Flink job look for Kafka unless told otherwise."""

_DEFAULT_HEAP = "512m"
_MESSAGE_MAX_BYTES = 8 * 1024 * 1024

#: JVM options besides the heap size; a broker's ``jvm_options`` list can be changed before start.
DEFAULT_JVM_OPTIONS = ("-Xms64m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")


class KafkaBrokerError(LocalServerError):
    """The broker could not be fetched, formatted, started or reached."""


# --------------------------------------------------------------------------------------------
# Jars, ports, cluster ids
# --------------------------------------------------------------------------------------------


def jars_root() -> Path:
    """Folder holding one sub-folder of jars per set (``kafka``, ``flink``); ``$VIGIE_JARS_DIR`` wins."""
    env = os.environ.get("VIGIE_JARS_DIR")
    return Path(env).resolve() if env else DEPLOY_DIR / "jars"


def _has_kafka_jars(folder: Path) -> bool:
    return any(folder.glob("kafka_2.13-*.jar")) and any(folder.glob("log4j-core-*.jar"))


def ensure_kafka_jars(jars_dir: Path | str | None = None) -> Path:
    """Return a folder of Kafka broker jars, fetching them with Maven first if needed.

    With ``jars_dir`` given, that folder is used as it is and must already hold the jars.
    Otherwise ``deploy/kafka/fetch-jars.sh`` runs: it returns at once when the jars are there
    (no Maven, no network) and fetches them otherwise, under a lock shared by concurrent callers.
    """
    if jars_dir is not None:
        jars_dir = Path(jars_dir).resolve()
        if not _has_kafka_jars(jars_dir):
            raise KafkaBrokerError(f"no Kafka broker jars (kafka_2.13-*.jar, log4j-core-*.jar) in {jars_dir}")
        return jars_dir
    target = jars_root() / "kafka"
    if not FETCH_SCRIPT.is_file():
        raise KafkaBrokerError(f"{FETCH_SCRIPT} is missing; cannot fetch the Kafka jars")
    cmd = ["bash", str(FETCH_SCRIPT), "kafka"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise KafkaBrokerError(
            f"fetching the Kafka jars failed ({' '.join(cmd)}, exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )
    if not _has_kafka_jars(target):
        raise KafkaBrokerError(f"{FETCH_SCRIPT} succeeded but {target} holds no Kafka broker jars")
    return target


def new_cluster_id() -> str:
    """A KRaft cluster id as ``kafka-storage random-uuid`` makes it: a UUID, URL-safe base64, no padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):  # Kafka rejects ids that look like command-line flags
            return cid


def _java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaBrokerError("no java found (install a JDK/JRE 17+ or set JAVA_HOME)")
    return found


# --------------------------------------------------------------------------------------------
# Process helpers (pids that may not be our children: the dev CLI's detached brokers)
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it when it is our own exited child, and treats zombies as dead."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def _pid_runs_broker(pid: int, config_file: Path) -> bool:
    """True when ``pid`` is alive and is a Kafka broker started with ``config_file`` (guards pid reuse)."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid
    args = [a.decode(errors="replace") for a in cmdline]
    return "kafka.Kafka" in args and str(config_file) in args


def _terminate_pid(pid: int, timeout: float) -> bool:
    """SIGTERM ``pid``, then SIGKILL it after ``timeout`` seconds; True if it had to be killed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)
    return True


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------

_LOG4J2 = """\
status = warn
name = vigie-kafka
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
"""


# Command-line tools (storage format): warnings and errors only, to stderr, which is captured.
_LOG4J2_TOOLS = """\
status = warn
name = vigie-kafka-tools
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
"""


def _quiet_client_logger() -> logging.Logger:
    """A logger for librdkafka that keeps "connection refused" chatter off stderr while polling."""
    logger = logging.getLogger(f"{__name__}.rdkafka")
    if not logger.handlers:
        logger.propagate = False
        logger.addHandler(logging.NullHandler())
    return logger


class KafkaBroker(LocalServer):
    """One Kafka node in KRaft combined mode (broker and controller), as a child process.

    Args:
        data_dir: Folder for the config, the log dirs and the logs. A temporary folder when
            omitted, removed by :meth:`close` (and so by the context manager).
        port: Client (PLAINTEXT) port; a free one when 0.
        controller_port: Controller port; a free one when 0.
        heap: JVM heap, as ``-Xmx`` takes it.
        jars_dir: Folder of broker jars; fetched into ``deploy/jars/kafka`` when omitted.
        startup_timeout: Seconds to wait for the broker to answer a metadata request.
        config: Extra or overriding ``server.properties`` entries.
        detach: Start the JVM in its own session and do not stop it when Python exits (for
            ``vigie dev kafka up``).

    The ports and the data dir stay the same across :meth:`stop`/:meth:`kill` and
    :meth:`start`/:meth:`restart`, so data written before a crash can be read after it.
    """

    kind = "Kafka broker"
    error_type = KafkaBrokerError
    config_name = "server.properties"
    log_name = "server.log"  # log4j2's file appender (_LOG4J2)
    stdout_name = "jvm.out"

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int = 0,
        controller_port: int = 0,
        heap: str = _DEFAULT_HEAP,
        jars_dir: Path | str | None = None,
        startup_timeout: float = 60.0,
        config: Mapping[str, object] | None = None,
        detach: bool = False,
    ) -> None:
        super().__init__(data_dir, prefix="vigie-kafka-", startup_timeout=startup_timeout, detach=detach)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port(exclude={self.port})
        self.heap = heap
        self._jars_dir = Path(jars_dir) if jars_dir is not None else None
        self.extra_config = dict(config or {})
        self.jvm_options: list[str] = list(DEFAULT_JVM_OPTIONS)
        self._admin: Any = None

    # -- paths and addresses ---------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """The address clients connect to, ``127.0.0.1:PORT``."""
        return self.address

    @property
    def client_port(self) -> int:
        """The PLAINTEXT port (:attr:`port`)."""
        return self.port

    @property
    def log_dir(self) -> Path:
        """Kafka's ``log.dirs``: the partitions' data and the KRaft metadata log."""
        return self.data_dir / "kraft-logs"

    def server_properties(self) -> dict[str, str]:
        """The broker configuration written to ``server.properties``."""
        props: dict[str, object] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": 1,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "offsets.topic.replication.factor": 1,
            # Fewer internal partitions: the first consumer group and transaction start faster.
            "offsets.topic.num.partitions": 3,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 3,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            # After a crash (SIGKILL) the restarted broker cannot register until the controller
            # has expired the dead one's session: keep that short (defaults: 9000 and 2000 ms).
            "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 500,
            "auto.create.topics.enable": "false",
            "message.max.bytes": _MESSAGE_MAX_BYTES,
            "replica.fetch.max.bytes": _MESSAGE_MAX_BYTES,
            # Sized for a small heap and a 2-core machine.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 2,
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
            "log.retention.hours": 168,
        }
        props.update(self.extra_config)
        return {key: str(value) for key, value in props.items()}

    # -- lifecycle -------------------------------------------------------------------------

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"# Written by vigie.streams.kafka_dev at {dt.datetime.now(dt.UTC).isoformat()}"]
        lines += [f"{key}={value}" for key, value in self.server_properties().items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log_file=self.log_file))
        (self.data_dir / "log4j2-tools.properties").write_text(_LOG4J2_TOOLS)

    def _jvm_base(self, jars: Path, log_config: str = "log4j2.properties") -> list[str]:
        return [
            _java_binary(),
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / log_config}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{jars}/*",
        ]

    def _format_storage(self, jars: Path) -> None:
        if (self.log_dir / "meta.properties").is_file():
            return
        cluster_id = new_cluster_id()
        cmd = [
            *self._jvm_base(jars, "log4j2-tools.properties"),
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config_file),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise KafkaBrokerError(
                f"kafka-storage format failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}".rstrip()
            )

    def _prepare(self) -> list[str]:
        """Find (or fetch) the jars, write the config, format the storage the first time; the JVM command."""
        jars = ensure_kafka_jars(self._jars_dir)
        self._write_config()
        self._format_storage(jars)
        return [*self._jvm_base(jars), f"-Xmx{self.heap}", *self.jvm_options, "kafka.Kafka", str(self.config_file)]

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        @functools.cache  # one client for the whole wait, made once the port accepts connections
        def admin() -> Any:
            return AdminClient({"bootstrap.servers": self.bootstrap_servers, "logger": _quiet_client_logger()})

        def metadata() -> Any:
            answer = admin().list_topics(timeout=2)
            if not answer.brokers:
                raise KafkaBrokerError("metadata lists no broker")
            return answer

        topics = self._poll_until_ready(metadata).topics  # detached too: `vigie dev kafka up` returns once it serves
        if not self.detach and "__consumer_offsets" not in topics:
            self._warm_up_group_coordinator()

    def _warm_up_group_coordinator(self) -> None:
        """Have the broker create ``__consumer_offsets`` now, in the background.

        A fresh broker creates that topic on the first group-coordinator lookup, and clients
        then retry after a second or more: the first consumer group of a test would join late.
        """
        from confluent_kafka import Consumer, TopicPartition

        def run() -> None:
            with contextlib.suppress(Exception):
                consumer = Consumer(
                    {
                        "bootstrap.servers": self.bootstrap_servers,
                        "group.id": "vigie-kafka-dev-warm-up",
                        "logger": _quiet_client_logger(),
                    }
                )
                try:
                    consumer.committed([TopicPartition("__vigie_warm_up", 0)], timeout=10)
                finally:
                    consumer.close()

        threading.Thread(target=run, name="kafka-dev-warm-up", daemon=True).start()

    def _forget_clients(self) -> None:
        self._admin = None  # its connections die with the broker

    def log_tail(self, lines: int = 40) -> str:
        """The last five ERROR lines of the broker's log, then the last lines of it and of the JVM's output."""
        errors = [line for line in tail(self.log_file, 2000).splitlines() if " ERROR " in line]
        if not errors:
            return super().log_tail(lines)
        return "--- errors logged ---\n" + "\n".join(errors[-5:]) + "\n" + super().log_tail(lines)

    # -- admin -----------------------------------------------------------------------------

    def admin(self) -> Any:
        """A confluent-kafka ``AdminClient`` for this broker (cached until the broker stops)."""
        from confluent_kafka.admin import AdminClient

        with self._lock:
            if self._admin is None:
                self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
            return self._admin

    def create_topics(
        self,
        names: Iterable[str],
        partitions: int = 1,
        config: Mapping[str, object] | None = None,
        *,
        replication_factor: int = 1,
        exist_ok: bool = False,
        timeout: float = 30.0,
    ) -> list[str]:
        """Create topics and wait until every partition has a leader; returns the names.

        ``config`` holds topic-level settings such as ``{"cleanup.policy": "compact"}``.
        """
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        names = list(names)
        if not names:
            return names
        topic_config = {key: str(value) for key, value in (config or {}).items()}
        new = [NewTopic(name, partitions, replication_factor, config=topic_config) for name in names]
        futures = self.admin().create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if exist_ok and getattr(error, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise KafkaBrokerError(f"could not create topic {name!r}: {exc}") from exc
        self._wait_for_leaders(names, timeout)
        return names

    def _wait_for_leaders(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            metadata = self.admin().list_topics(timeout=max(1.0, deadline - time.monotonic()))
            for name in list(pending):
                topic = metadata.topics.get(name)
                ready = topic is not None and topic.error is None and bool(topic.partitions)
                if ready and all(p.leader >= 0 for p in topic.partitions.values()):
                    pending.discard(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise KafkaBrokerError(f"topics without leaders after {timeout:.0f}s: {sorted(pending)}")
            time.sleep(0.05)

    def delete_topics(self, names: Iterable[str], timeout: float = 30.0) -> None:
        """Delete topics (missing ones are ignored)."""
        from confluent_kafka import KafkaError, KafkaException

        names = list(names)
        if not names:
            return
        futures = self.admin().delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if getattr(error, "code", lambda: None)() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise KafkaBrokerError(f"could not delete topic {name!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# vigie dev kafka up | down | status
# --------------------------------------------------------------------------------------------


@dataclass
class DevKafkaState:
    """What ``vigie dev kafka up`` records about the background broker (``.vigie-dev/kafka.json``)."""

    pid: int
    bootstrap_servers: str
    port: int
    controller_port: int
    data_dir: str
    log_file: str
    config_file: str
    kafka_version: str
    started_at: str

    def is_running(self) -> bool:
        """True when the recorded pid is still this broker."""
        return _pid_runs_broker(self.pid, Path(self.config_file))


def _state_file(state_dir: Path) -> Path:
    return Path(state_dir) / "kafka.json"


def _read_state(state_dir: Path) -> DevKafkaState | None:
    path = _state_file(state_dir)
    try:
        return DevKafkaState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise KafkaBrokerError(f"unreadable state file {path}: {exc}") from exc


def dev_kafka_status(state_dir: Path | str = DEV_STATE_DIR) -> DevKafkaState | None:
    """The running background broker's state, or None when none runs."""
    state = _read_state(Path(state_dir))
    return state if state is not None and state.is_running() else None


def dev_kafka_up(
    state_dir: Path | str = DEV_STATE_DIR,
    *,
    port: int = 0,
    heap: str = _DEFAULT_HEAP,
    timeout: float = 90.0,
) -> DevKafkaState:
    """Start a background broker (or return the one already running) and record it.

    Its data lives in ``<state_dir>/kafka`` and outlives ``down``, so topics survive; the
    ports of the previous run are reused when still free, so clients' configs keep working.
    """
    state_dir = Path(state_dir).resolve()
    previous = _read_state(state_dir)
    if previous is not None and previous.is_running():
        return previous
    last = (previous.port, previous.controller_port) if previous is not None else _read_last_ports(state_dir)
    controller_port = 0
    if last is not None:
        if not port and port_is_free(last[0]):
            port = last[0]
        if last[1] != port and port_is_free(last[1]):
            controller_port = last[1]
    if not port and port_is_free(DEFAULT_CLIENT_PORT) and controller_port != DEFAULT_CLIENT_PORT:
        port = DEFAULT_CLIENT_PORT  # where `vigie publish` and the workers look by default
    if port and not port_is_free(port):
        raise KafkaBrokerError(f"port {port} on {LOOPBACK} is already in use")
    if not controller_port:
        controller_port = free_port(exclude={port} if port else ())
    broker = KafkaBroker(
        state_dir / "kafka",
        port=port,
        controller_port=controller_port,
        heap=heap,
        startup_timeout=timeout,
        detach=True,
    )
    broker.start()
    assert broker.pid is not None
    state = DevKafkaState(
        pid=broker.pid,
        bootstrap_servers=broker.bootstrap_servers,
        port=broker.port,
        controller_port=broker.controller_port,
        data_dir=str(broker.data_dir),
        log_file=str(broker.log_file),
        config_file=str(broker.config_file),
        kafka_version=KAFKA_VERSION,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    path = _state_file(state_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.replace(path)
    return state


def dev_kafka_down(state_dir: Path | str = DEV_STATE_DIR, *, timeout: float = 20.0, purge: bool = False) -> bool:
    """Stop the background broker; True if one was running. ``purge`` also deletes its data."""
    state_dir = Path(state_dir).resolve()
    state = _read_state(state_dir)
    running = state is not None and state.is_running()
    if state is not None and running:
        _terminate_pid(state.pid, timeout)
    if state is not None:
        # Keep the ports for the next `up`; only the pid is gone.
        with contextlib.suppress(FileNotFoundError):
            _state_file(state_dir).unlink()
        stopped = {**asdict(state), "pid": -1}
        (state_dir / "kafka.last.json").write_text(json.dumps(stopped, indent=2) + "\n")
    if purge:
        shutil.rmtree(state_dir / "kafka", ignore_errors=True)
    return running


def _read_last_ports(state_dir: Path) -> tuple[int, int] | None:
    try:
        data = json.loads((state_dir / "kafka.last.json").read_text())
        return int(data["port"]), int(data["controller_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


dev_app = typer.Typer(help="Development helpers: local services for trying Vigie out.", no_args_is_help=True)
kafka_app = typer.Typer(help="A local Apache Kafka broker (KRaft, loopback only), run from Maven jars.")
dev_app.add_typer(kafka_app, name="kafka")

_STATE_DIR_OPTION = typer.Option(DEV_STATE_DIR, "--state-dir", help="Where the state file and the data live.")


@kafka_app.command("up")
def kafka_up(
    state_dir: Path = _STATE_DIR_OPTION,
    port: int = typer.Option(
        0,
        help=f"Client port; 0 reuses the last one, else {DEFAULT_CLIENT_PORT} (the clients' default) if free, "
        "else a free one.",
    ),
    heap: str = typer.Option(_DEFAULT_HEAP, help="JVM heap (-Xmx)."),
    timeout: float = typer.Option(90.0, help="Seconds to wait for the broker to answer."),
    topics: bool = typer.Option(True, "--topics/--no-topics", help="Create the deployment's topics (prefix 'vigie.')."),
    partitions: int = typer.Option(3, min=1, help="Partitions of the topics created."),
) -> None:
    """Start a Kafka broker in the background, create Vigie's topics, and print the bootstrap address."""
    try:
        already = dev_kafka_status(state_dir)
        state = already or dev_kafka_up(state_dir, port=port, heap=heap, timeout=timeout)
    except KafkaBrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if already:
        typer.echo(f"already running (pid {state.pid})", err=True)
    else:
        typer.echo(f"Kafka {state.kafka_version} started (pid {state.pid}); log: {state.log_file}", err=True)
    if topics:  # so that `vigie publish` works before any worker has run
        from .topics import DEFAULT_PREFIX, TopicNames, create_topics

        created = create_topics(state.bootstrap_servers, TopicNames(DEFAULT_PREFIX), partitions)
        typer.echo(f"topics: {', '.join(sorted(created))}", err=True)
    typer.echo(state.bootstrap_servers)


@kafka_app.command("down")
def kafka_down(
    state_dir: Path = _STATE_DIR_OPTION,
    purge: bool = typer.Option(False, "--purge", help="Also delete the broker's data."),
) -> None:
    """Stop the background Kafka broker."""
    try:
        was_running = dev_kafka_down(state_dir, purge=purge)
    except KafkaBrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo("stopped" if was_running else "not running")


@kafka_app.command("status")
def kafka_status(state_dir: Path = _STATE_DIR_OPTION) -> None:
    """Show whether the background broker runs; exit code 1 when it does not."""
    state = dev_kafka_status(state_dir)
    if state is None:
        typer.echo("not running")
        raise typer.Exit(1)
    typer.echo(f"running: pid {state.pid}, bootstrap {state.bootstrap_servers}, data {state.data_dir}")
