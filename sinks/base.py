"""The sink interface every runtime writes to, and the buffering all sinks share.

A sink turns records (inbound events, :class:`~vigie.schemas.RiskScore`,
:class:`~vigie.schemas.Alert`, :class:`~vigie.schemas.DeadLetter`) into table rows with
:mod:`vigie.sinks.ddl`, buffers them per table and inserts them in batches. Inserting the
same record twice is harmless (the tables are ``ReplacingMergeTree`` on the record's id),
so a flush that fails halfway can simply be retried.

Columnar path
-------------
:meth:`BufferedSink.write` appends each record's rows as tuples of model values
(:func:`~vigie.sinks.ddl.row_tuple_builders`: generated code, no per-row dict, no per-row
encoding). A flush transposes each table's tuples into columns (``zip(*rows)``, in C) and
hands them to :meth:`BufferedSink._insert`, which converts whole columns for its transport
(Arrow arrays for chdb, epoch integers for the native protocol). ``write()`` is
all-or-nothing: a record that cannot be stored (a type no table holds, a model missing a
field) raises ``TypeError`` and none of that call's records stay buffered.

Flush policy (:class:`BufferPolicy`), checked on every :meth:`Sink.write`:

* ``batch_size`` buffered rows, or ``max_delay_s`` since the first buffered row: flush. If
  that flush fails the rows stay buffered, the error is counted in
  :attr:`SinkMetrics.failed_flushes`, and the next automatic attempt waits ``max_delay_s``,
  so a short outage does not stop the stream.
* more than ``max_buffer_rows`` buffered: ``write()`` flushes synchronously and raises if
  that fails. The buffer is bounded; the caller gets the back-pressure.

There is no background timer: a runtime with idle periods calls :meth:`BufferedSink.flush_if_due`
(or :meth:`Sink.flush`) on its own tick so a quiet stream still reaches the store.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, Self, runtime_checkable

from pydantic import BaseModel

from .ddl import MODERN, TABLES, ColumnBatch, ServerProfile, Table, columns_of, row_tuple_builders

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_MAX_BUFFER_ROWS",
    "BufferPolicy",
    "BufferedSink",
    "RowBuffer",
    "Sink",
    "SinkMetrics",
]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SinkMetrics:
    """Counters a console or a health check reads."""

    rows_written: dict[str, int] = field(default_factory=dict)
    """Rows inserted per table since the sink opened (re-sent records count again)."""
    batches: int = 0
    """Insert statements executed (one per table per flush)."""
    last_flush_at: datetime | None = None
    """UTC time the last successful flush ended."""
    last_flush_seconds: float | None = None
    buffered_rows: int = 0
    failed_flushes: int = 0
    last_error: str | None = None
    oldest_buffered_at: float | None = None
    """``time.monotonic()`` when the oldest row still buffered was written; None when empty."""

    @property
    def total_rows_written(self) -> int:
        """Rows inserted into all tables."""
        return sum(self.rows_written.values())

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest buffered row in seconds (0.0 when nothing is buffered): how far
        the store is behind the stream."""
        oldest = self.oldest_buffered_at
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)


@runtime_checkable
class Sink(Protocol):
    """Where records end up. Implementations: :class:`vigie.sinks.chdb_sink.ChdbSink`."""

    metrics: SinkMetrics

    def write(self, records: Iterable[BaseModel]) -> None:
        """Buffer the rows of ``records``; may flush (see the module's flush policy)."""
        ...

    def flush(self) -> None:
        """Insert every buffered row. Idempotent on record ids; raises if the store fails."""
        ...

    def close(self) -> None:
        """Flush, then release the connection. Calling it again does nothing."""
        ...

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run ``sql`` and return its rows as dicts (tests, console, dashboards)."""
        ...


DEFAULT_BATCH_ROWS = 50_000
"""Rows that trigger a flush. Every flush writes one part per table (and per materialised view)
in ClickHouse, a fixed cost of tens of milliseconds of CPU: bench/sink.py measured 5,000-row
batches at three to four times the CPU per event of 100,000-row ones. At low rates the
``max_delay_s`` clock flushes first, so this only matters when the stream is fast."""
DEFAULT_MAX_BUFFER_ROWS = 200_000
"""Rows held while the store is unreachable before ``write()`` pushes back (four batches)."""


@dataclass(frozen=True, slots=True)
class BufferPolicy:
    """When buffered rows are flushed."""

    batch_size: int = DEFAULT_BATCH_ROWS
    max_delay_s: float = 1.0
    max_buffer_rows: int = DEFAULT_MAX_BUFFER_ROWS

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {self.max_delay_s}")
        if self.max_buffer_rows < self.batch_size:
            raise ValueError(f"max_buffer_rows ({self.max_buffer_rows}) must be >= batch_size ({self.batch_size})")


class RowBuffer:
    """Row tuples per table awaiting insertion, with the timing the flush policy needs. Not thread-safe.

    :attr:`rows` holds one list per table of :data:`~vigie.sinks.ddl.TABLES`, appended to in
    place by the tuple builders; call :meth:`recount` after appending.
    """

    def __init__(self, policy: BufferPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.rows: dict[str, list[Any]] = {name: [] for name in TABLES}
        self.size = 0
        self._since: dict[str, float] = {}  # table -> clock() when its oldest buffered row arrived
        self._retry_at = 0.0

    def add(self, table: str, rows: list[Any]) -> None:
        """Append ``table``'s rows; the first row of an empty table starts its delay clock."""
        self.rows[table].extend(rows)
        self.recount()

    def recount(self) -> None:
        """Update :attr:`size` and the tables' delay clocks after appending to :attr:`rows`."""
        size = 0
        now: float | None = None
        for name, rows in self.rows.items():
            if rows:
                size += len(rows)
                if name not in self._since:
                    now = self._clock() if now is None else now
                    self._since[name] = now
        self.size = size

    def truncate(self, lengths: dict[str, int]) -> None:
        """Drop rows appended after ``lengths`` (a :meth:`lengths` snapshot): undo a failed write."""
        for name, length in lengths.items():
            del self.rows[name][length:]
            if not self.rows[name]:
                self._since.pop(name, None)
        self.recount()

    def lengths(self) -> dict[str, int]:
        """Rows buffered per table, for :meth:`truncate`."""
        return {name: len(rows) for name, rows in self.rows.items()}

    @property
    def oldest_at(self) -> float | None:
        """``clock()`` when the oldest buffered row arrived; None when empty."""
        return min(self._since.values(), default=None)

    def due(self) -> bool:
        """True when the policy asks for a flush (and no failed flush is backing off)."""
        oldest = self.oldest_at
        if oldest is None:
            return False
        now = self._clock()
        if now < self._retry_at:
            return False
        return self.size >= self.policy.batch_size or now - oldest >= self.policy.max_delay_s

    def over_limit(self) -> bool:
        """True above ``max_buffer_rows``: the writer must flush before going on."""
        return self.size > self.policy.max_buffer_rows

    def tables(self) -> list[str]:
        """Tables with buffered rows, parents before their item tables (a reader never sees
        items whose header is missing)."""
        return [name for name, rows in self.rows.items() if rows]

    def peek(self, table: str) -> list[Any]:
        """The rows buffered for ``table`` (left in place until :meth:`discard`)."""
        return self.rows[table]

    def discard(self, table: str) -> None:
        """Forget ``table``'s rows once they are stored."""
        self.size -= len(self.rows[table])
        self.rows[table] = []
        self._since.pop(table, None)

    def backoff(self) -> None:
        """After a failed flush: no automatic retry before ``max_delay_s``."""
        self._retry_at = self._clock() + self.policy.max_delay_s


class BufferedSink(ABC):
    """A :class:`Sink` built on a connection that can insert a batch of columns into one table.

    Subclasses implement :meth:`_insert`, :meth:`query` and :meth:`_disconnect`. Writes and
    flushes hold one lock, so threads may share a sink (they take turns).
    """

    def __init__(self, profile: ServerProfile = MODERN, policy: BufferPolicy | None = None) -> None:
        self.profile = profile
        self.policy = policy or BufferPolicy()
        self.metrics = SinkMetrics()
        self._builders = row_tuple_builders()
        self._buffer = RowBuffer(self.policy)
        self._lock = threading.RLock()
        self._closed = False

    @abstractmethod
    def _insert(self, table: Table, columns: ColumnBatch, rows: int) -> None:
        """Insert ``rows`` rows of ``table`` in one statement.

        ``columns`` holds one sequence per column of ``table.columns``, with the values as the
        models hold them (see :func:`~vigie.sinks.ddl.row_tuple_builders`); the sink converts
        them for its transport. Called again with the same columns when a flush is retried.
        """

    @abstractmethod
    def _disconnect(self) -> None:
        """Release the connection."""

    @abstractmethod
    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run ``sql`` and return its rows as dicts."""

    def write(self, records: Iterable[BaseModel]) -> None:
        """Buffer the rows of ``records`` and apply the flush policy.

        Raises ``TypeError`` when a record cannot be stored; the call then buffers nothing.
        """
        with self._lock:
            self._check_open()
            buffer = self._buffer
            out = buffer.rows
            builders = self._builders
            before = buffer.lengths()
            try:
                for record in records:
                    try:
                        build = builders[type(record)]
                    except KeyError:
                        raise TypeError(f"no table stores {type(record).__name__}") from None
                    try:
                        build(record, out)
                    except Exception as exc:
                        raise TypeError(f"cannot store this {type(record).__name__}: {exc!r}") from exc
            except BaseException:
                buffer.truncate(before)  # all-or-nothing: no half-written record stays
                raise
            buffer.recount()
            self._sync_buffer_metrics()
            if buffer.over_limit():
                self._flush_locked()  # back-pressure: let a failure reach the caller
            elif buffer.due():
                try:
                    self._flush_locked()
                except Exception:
                    # Rows stay buffered and are retried later; over_limit() ends the grace.
                    log.warning("flush failed, %d rows kept for retry", buffer.size, exc_info=True)

    def flush_if_due(self) -> None:
        """Flush if the policy says so; for runtimes' idle ticks. Raises like :meth:`flush`."""
        with self._lock:
            if not self._closed and self._buffer.due():
                self._flush_locked()

    def flush(self) -> None:
        """Insert every buffered row, one statement per table.

        Tables already inserted are dropped from the buffer even if a later table fails,
        so a retry re-sends only what is missing (and re-sending is harmless anyway).
        """
        with self._lock:
            self._check_open()
            self._flush_locked()

    def _flush_locked(self) -> None:
        buffer = self._buffer
        if buffer.size == 0:
            return
        started = time.perf_counter()
        try:
            for name in buffer.tables():
                rows = buffer.peek(name)
                table = TABLES[name]
                self._insert(table, columns_of(rows, table), len(rows))
                self.metrics.rows_written[name] = self.metrics.rows_written.get(name, 0) + len(rows)
                self.metrics.batches += 1
                buffer.discard(name)
        except Exception as exc:
            buffer.backoff()
            self.metrics.failed_flushes += 1
            self.metrics.last_error = f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            self._sync_buffer_metrics()
        self.metrics.last_flush_seconds = time.perf_counter() - started
        self.metrics.last_flush_at = datetime.now(UTC)

    def _sync_buffer_metrics(self) -> None:
        self.metrics.buffered_rows = self._buffer.size
        self.metrics.oldest_buffered_at = self._buffer.oldest_at

    def close(self) -> None:
        """Flush and disconnect. If the flush fails the connection is still released and
        the error re-raised: the buffered rows are lost (they are logged)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._flush_locked()
            except Exception:
                log.error("closing with %d unflushed rows dropped", self._buffer.size)
                raise
            finally:
                self._disconnect()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
