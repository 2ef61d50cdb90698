"""A ClickHouse server over the native protocol (clickhouse-driver): the production sink.

:class:`NativeSink` has the interface of :class:`~vigie.sinks.chdb_sink.ChdbSink`: the same
tables, the same buffering and flush policy (:class:`~vigie.sinks.base.BufferedSink`). It reads
the server's version on connect and renders the DDL for it
(``render_ddl(ServerProfile.parse(version))``): ClickHouse 18.16 (Debian's package) gets the
legacy subset, ClickHouse >= 22 the modern tables.

Inserts
-------
One ``INSERT INTO db.table (columns) VALUES`` per table and flush. Each record written is
encoded at once into ClickHouse ``Native`` columns for the server's profile
(:func:`~vigie.sinks.ddl.native_blocks`, the chdb sink's Cython encoder: ``DateTime`` seconds or
``DateTime64(3)`` milliseconds in UTC, dicts as JSON text where the server has no ``Map``, bytes
unchanged), and a flush sends each table's block as the insert's data packet over
clickhouse-driver's connection: the driver opens the insert and reads the server's header as
usual, but does not convert a single value. The server's header must list the columns and
types the block carries (a table altered by hand is refused, naming the table). A value that
does not fit its column is refused when written (``TypeError`` naming table and column).

``LowCardinality`` columns travel as their plain type (``String``, ``Nullable(String)``): the
blocks carry no dictionaries. A modern server (>= 22) still names ``LowCardinality`` in the
insert header it sends a client of protocol revision 54405 or later
(``low_cardinality_allow_in_native_format``, on by default), and converts the plain column it
receives into the table's type, as it does for clients older than ``LowCardinality``. The
header is therefore compared with the wrappers removed (:func:`without_low_cardinality`,
nested ones too); 18.16 sends none.
Compression is not used: on loopback and local networks it costs more CPU than it saves.

Failures
--------
A connection error (refused, reset, EOF, timeout) or a transient server error (too many
parts, too many simultaneous queries, timeouts) is retried ``retries`` times with exponential
back-off from ``backoff`` seconds, reconnecting each time. If that still fails, the flush fails
and :class:`~vigie.sinks.base.BufferedSink` keeps the rows: they are re-sent at the next
attempt, so a server that restarts within the buffer's margin loses nothing, and re-sent rows
collapse under ``FINAL`` (``ReplacingMergeTree``). While the server is down, every automatic
flush attempt blocks the writer for the whole back-off (about 0.7 s with the defaults), then
waits ``max_delay_s`` before the next one.

Metrics
-------
:attr:`NativeSink.metrics` is a :class:`NativeSinkMetrics`: the shared counters (rows,
batches, ``lag_seconds``: the age of the oldest buffered row, 0 when the buffer is empty)
plus ``retries``.

Tested against ClickHouse 18.16.1 (``tests/test_native_sink.py``, a server started by
:class:`~vigie.sinks.clickhouse_server.ClickHouseServer`). The modern DDL is tested on chdb;
a native connection to a modern server is not covered by the test suite (only the header
comparison, with the types such a server sends, is unit-tested).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from clickhouse_driver import Client
from clickhouse_driver import defines as ch_defines
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.block import BlockInfo, ColumnOrientedBlock
from clickhouse_driver.protocol import ClientPacketTypes
from clickhouse_driver.varint import write_varint
from clickhouse_driver.writer import write_binary_str

from .base import DEFAULT_BATCH_ROWS, DEFAULT_MAX_BUFFER_ROWS, BufferPolicy, NativeBlockSink, SinkMetrics
from .ddl import (
    DEFAULT_DATABASE,
    DEFAULT_TTL_DAYS,
    TABLES,
    Kind,
    ServerProfile,
    Table,
    native_type,
    render_ddl,
    retention_statements,
    validate_identifier,
)
from .views import create_views

__all__ = ["NativeSink", "NativeSinkMetrics", "without_low_cardinality"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# From this protocol revision on, each column of a data packet says whether it uses a custom serialization.
_FLAGGED_REVISION = ch_defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION

# Server error codes worth retrying after a pause: the same statement may succeed later.
_RETRYABLE_SERVER_CODES = frozenset(
    {
        ch_errors.ErrorCodes.TIMEOUT_EXCEEDED,
        ch_errors.ErrorCodes.TOO_MANY_SIMULTANEOUS_QUERIES,
        ch_errors.ErrorCodes.SOCKET_TIMEOUT,
        ch_errors.ErrorCodes.NETWORK_ERROR,
        ch_errors.ErrorCodes.TOO_MANY_PARTS,
    }
)
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ch_errors.NetworkError,
    ch_errors.SocketTimeoutError,
    ch_errors.UnexpectedPacketFromServerError,
    EOFError,
    OSError,  # ConnectionRefusedError, ConnectionResetError, BrokenPipeError, socket.timeout
)

# Columns holding raw bytes: query() hands them back as bytes even when they decode as UTF-8.
_BYTES_COLUMNS = frozenset(c.name for t in TABLES.values() for c in t.columns if c.kind is Kind.BYTES)


_LOW_CARDINALITY = "LowCardinality("


def without_low_cardinality(type_name: str) -> str:
    """``type_name`` with every ``LowCardinality(...)`` wrapper removed, nested ones included.

    >>> without_low_cardinality("Map(LowCardinality(String), Array(LowCardinality(Nullable(String))))")
    'Map(String, Array(Nullable(String)))'
    """
    while (start := type_name.find(_LOW_CARDINALITY)) >= 0:
        inner = start + len(_LOW_CARDINALITY)
        depth = 1
        end = inner
        while depth:  # the wrapper's own closing parenthesis
            if end >= len(type_name):
                raise ValueError(f"unbalanced parentheses in type {type_name!r}")
            depth += {"(": 1, ")": -1}.get(type_name[end], 0)
            end += 1
        type_name = type_name[:start] + type_name[inner : end - 1] + type_name[end:]
    return type_name


def header_matches(server: list[tuple[str, str]], sent: list[tuple[str, str]]) -> bool:
    """True when the server's insert header ``server`` takes the block described by ``sent``:
    same names and types once ``LowCardinality`` is removed (the server converts plain columns)."""
    return [(name, without_low_cardinality(type_name)) for name, type_name in server] == sent


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    return isinstance(exc, ch_errors.ServerException) and exc.code in _RETRYABLE_SERVER_CODES


@dataclass(slots=True)
class NativeSinkMetrics(SinkMetrics):
    """:class:`~vigie.sinks.base.SinkMetrics` plus the retries."""

    retries: int = 0
    """Statements re-sent after a connection or transient server error."""


class NativeSink(NativeBlockSink):
    """:class:`~vigie.sinks.base.Sink` into a ClickHouse server, tables created on connect.

    >>> with NativeSink("127.0.0.1", 9000) as sink:  # doctest: +SKIP
    ...     sink.write([score])
    ...     sink.flush()
    ...     sink.query("SELECT count() AS n FROM vigie.scores FINAL")
    [{'n': 1}]

    Args:
        host: Server address.
        port: Native-protocol (TCP) port.
        database: Database of the tables, created if missing. Unqualified table names in
            :meth:`query` resolve there.
        batch_size: Buffered rows that trigger a flush.
        max_delay_s: Age of the first buffered row that triggers a flush; also the pause
            after a failed automatic flush.
        max_buffer_rows: Above this, :meth:`write` flushes synchronously and raises on failure.
        ttl_days: Retention of personal-data tables (modern servers only, see :mod:`~vigie.sinks.ddl`).
        enforce_ttl: Apply ``ttl_days`` to tables that exist already (a period set explicitly, e.g.
            by the sink URL): a modern server's tables take its TTL, on 18.16 the rows stored
            longer ago are deleted. Without it, ``ttl_days`` only applies to tables created now.
        retries: Times a statement is re-sent after a connection or transient server error.
        backoff: First pause before a retry, in seconds; doubled each time, capped at ``max_backoff``.
        max_backoff: Longest pause between two retries.
        user: ClickHouse user.
        password: Its password.
        connect_timeout: Seconds to establish a connection.
        send_receive_timeout: Seconds a socket read or write may block.
        settings: Extra clickhouse-driver client settings (``compression`` needs the lz4 extra).
        background: Send inserts (and their retries) on a sender thread while the writer goes
            on buffering; :meth:`flush` and :meth:`close` still wait for them.
        senders: Connections inserting one flush's tables side by side (a table with its
            item tables on one connection, see :class:`~vigie.sinks.base.BufferedSink`).
    """

    metrics: NativeSinkMetrics

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9000,
        database: str = DEFAULT_DATABASE,
        *,
        batch_size: int = DEFAULT_BATCH_ROWS,
        max_delay_s: float = 1.0,
        max_buffer_rows: int = DEFAULT_MAX_BUFFER_ROWS,
        ttl_days: int | None = DEFAULT_TTL_DAYS,
        enforce_ttl: bool = False,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        user: str = "default",
        password: str = "",
        connect_timeout: float = 5.0,
        send_receive_timeout: float = 300.0,
        settings: dict[str, Any] | None = None,
        background: bool = True,
        senders: int = 2,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        self.host = host
        self.port = int(port)
        self.database = validate_identifier(database)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        policy = BufferPolicy(batch_size=batch_size, max_delay_s=max_delay_s, max_buffer_rows=max_buffer_rows)
        self._client_kwargs: dict[str, Any] = {
            "port": self.port,
            "user": user,
            "password": password,
            "connect_timeout": connect_timeout,
            "send_receive_timeout": send_receive_timeout,
            "client_name": "vigie-native-sink",
            "settings": dict(settings or {}),
        }
        # Retries count before the metrics exist (set up by BufferedSink.__init__ below).
        self._early_retries = 0
        self._retries_lock = threading.Lock()
        # Connected to "default" until the database exists; the sink's own client then uses it.
        bootstrap = Client(host, database="default", **self._client_kwargs)
        try:
            version = self._with_retries(lambda: bootstrap.execute("SELECT version()"), "SELECT version()")[0][0]
            self._serialization_flags = bootstrap.connection.server_info.used_revision >= _FLAGGED_REVISION
            super().__init__(ServerProfile.parse(str(version)), policy, background=background, senders=senders)
            self.metrics = NativeSinkMetrics(retries=self._early_retries)
            self.server_version = str(version)
            for statement in render_ddl(self.profile, self.database, ttl_days):
                self._with_retries(lambda s=statement: bootstrap.execute(s), statement.split("\n", 1)[0])
        finally:
            bootstrap.disconnect()
        # One client per lane (lane 0 also runs queries): a connection carries one statement at a time.
        self._clients = [Client(host, database=self.database, **self._client_kwargs) for _ in range(senders)]
        self._client = self._clients[0]
        self._insert_sql: dict[str, str] = {
            name: f"INSERT INTO {self.database}.{name} ({', '.join(c.name for c in table.columns)}) VALUES"
            for name, table in TABLES.items()
        }
        # The columns and types each block carries: what the server's header must say.
        self._headers = {
            name: [(col.name, native_type(col, self.profile)) for col in table.columns]
            for name, table in TABLES.items()
        }
        if enforce_ttl:  # tables created with another period take this one; on 18.16 (no TTL) expired rows go now
            for statement in retention_statements(self.profile, self.database, ttl_days, self.query):
                self.query(statement)
        create_views(self.query, self.profile, self.database)

    # -- BufferedSink hooks -----------------------------------------------------------------

    def _send(self, table: Table, payload: bytes, rows: int, lane: int = 0) -> None:
        sql = self._insert_sql[table.name]
        header = self._headers[table.name]
        client = self._clients[lane]
        self._with_retries(
            lambda: self._insert_block(client, sql, header, payload),
            f"INSERT INTO {self.database}.{table.name} ({rows} rows)",
        )

    def _insert_block(self, client: Client, sql: str, header: list[tuple[str, str]], block: bytes) -> None:
        """Run ``sql`` (an ``INSERT ... VALUES``) with ``block`` as its one data packet.

        The steps of clickhouse-driver's own insert (``Client.process_insert_query``), with the
        block sent as encoded instead of built from Python values; on any error the driver
        drops the connection (``disconnect_on_error``), so a retry starts afresh.
        """
        with client.disconnect_on_error(sql, None):
            connection = client.connection
            if (connection.server_info.used_revision >= _FLAGGED_REVISION) != self._serialization_flags:
                raise RuntimeError(f"{self!r}: the server's protocol revision changed since the sink opened: reopen it")
            connection.send_query(sql)
            connection.send_external_tables(None)
            sample = client.receive_sample_block()
            if sample is None or not header_matches(list(sample.columns_with_types), header):
                raise RuntimeError(
                    f"{sql.split('(', 1)[0].strip()}: the server's columns {sample and sample.columns_with_types} "
                    f"are not the ones the sink encodes {header}"
                )
            out = connection.fout
            write_varint(ClientPacketTypes.DATA, out)
            write_binary_str("", out)  # no external table
            BlockInfo().write(out)
            out.write(block)
            out.flush()
            connection.send_data(ColumnOrientedBlock())  # an empty block ends the data
            client.receive_end_of_insert_query()

    def _disconnect(self) -> None:
        for client in self._clients:
            client.disconnect()

    # -- queries ----------------------------------------------------------------------------

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run ``sql`` (retried like inserts on connection errors); rows as dicts.

        Values are Python objects as clickhouse-driver reads them: ints, floats, lists for
        arrays, dicts for ``Map``, timezone-aware UTC ``datetime`` for ``DateTime('UTC')``
        columns. Strings are ``str``, or ``bytes`` when not valid UTF-8; a column named like
        a bytes column of the schema (dead letters' ``raw``) is always ``bytes``.
        """
        with self._lock:
            self._check_open()
            self.settle()
            rows, columns = self._with_retries(lambda: self._client.execute(sql, with_column_types=True), sql[:80])
        names = [name for name, _ in columns]
        fixes = [(i, fix) for i, (name, ch_type) in enumerate(columns) if (fix := _reader_fix(name, ch_type))]
        if fixes:
            rows = [list(row) for row in rows]
            for row in rows:
                for i, fix in fixes:
                    if row[i] is not None:
                        row[i] = fix(row[i])
        return [dict(zip(names, row, strict=True)) for row in rows]

    # -- retries ----------------------------------------------------------------------------

    def _with_retries(self, action: Callable[[], T], what: str) -> T:
        """Run ``action``, retrying connection and transient server errors with back-off.

        clickhouse-driver drops the connection on any error and reconnects on the next
        statement, so a retry is a reconnect.
        """
        delay = self.backoff
        attempt = 0
        while True:
            try:
                return action()
            except Exception as exc:
                if attempt >= self.retries or not _retryable(exc):
                    raise
                attempt += 1
                if hasattr(self, "metrics"):
                    with self._retries_lock:  # lanes retry side by side
                        self.metrics.retries += 1
                else:
                    self._early_retries += 1
                log.info(
                    "%s failed (%s: %s); retry %d/%d in %.2fs",
                    what,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                    attempt,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"NativeSink({self.host}:{self.port}, database={self.database!r}, {self.profile}, {state})"


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo is not None else value


def _reader_fix(name: str, ch_type: str) -> Callable[[Any], Any] | None:
    """Post-processing of a result column, or None."""
    base = ch_type.removeprefix("Nullable(").removeprefix("LowCardinality(").removeprefix("Nullable(")
    if name in _BYTES_COLUMNS and base.startswith("String"):
        return _as_bytes
    if base.startswith("DateTime"):
        return _as_utc  # pytz's UTC -> datetime.UTC, like the models'
    return None
