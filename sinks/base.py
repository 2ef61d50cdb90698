"""The sink interface every runtime writes to, and the buffering all sinks share.

A sink turns records (inbound events, :class:`~vigie.schemas.RiskScore`,
:class:`~vigie.schemas.Alert`, :class:`~vigie.schemas.DeadLetter`) into table rows with
:mod:`vigie.sinks.ddl`, buffers them per table and inserts them in batches. Inserting the
same record twice is harmless (the tables are ``ReplacingMergeTree`` on the record's id),
so a flush that fails halfway can simply be retried.

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

from .ddl import MODERN, TABLES, RowPlans, ServerProfile, Table

__all__ = ["BufferPolicy", "BufferedSink", "RowBuffer", "Sink", "SinkMetrics"]

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

    @property
    def total_rows_written(self) -> int:
        """Rows inserted into all tables."""
        return sum(self.rows_written.values())


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


@dataclass(frozen=True, slots=True)
class BufferPolicy:
    """When buffered rows are flushed."""

    batch_size: int = 5_000
    max_delay_s: float = 1.0
    max_buffer_rows: int = 100_000

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {self.max_delay_s}")
        if self.max_buffer_rows < self.batch_size:
            raise ValueError(f"max_buffer_rows ({self.max_buffer_rows}) must be >= batch_size ({self.batch_size})")


class RowBuffer:
    """Rows per table awaiting insertion, with the timing the flush policy needs. Not thread-safe."""

    def __init__(self, policy: BufferPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._rows: dict[str, list[Any]] = {}
        self.size = 0
        self._first_at: float | None = None
        self._retry_at = 0.0

    def add(self, table: str, rows: list[Any]) -> None:
        """Append ``table``'s rows; the first row of an empty buffer starts the delay clock."""
        if self._first_at is None:
            self._first_at = self._clock()
        bucket = self._rows.get(table)
        if bucket is None:
            self._rows[table] = rows
        else:
            bucket.extend(rows)
        self.size += len(rows)

    def due(self) -> bool:
        """True when the policy asks for a flush (and no failed flush is backing off)."""
        if self._first_at is None:
            return False
        now = self._clock()
        if now < self._retry_at:
            return False
        return self.size >= self.policy.batch_size or now - self._first_at >= self.policy.max_delay_s

    def over_limit(self) -> bool:
        """True above ``max_buffer_rows``: the writer must flush before going on."""
        return self.size > self.policy.max_buffer_rows

    def tables(self) -> list[str]:
        """Tables with buffered rows, in insertion order."""
        return list(self._rows)

    def peek(self, table: str) -> list[Any]:
        """The rows buffered for ``table`` (left in place until :meth:`discard`)."""
        return self._rows.get(table, [])

    def discard(self, table: str) -> None:
        """Forget ``table``'s rows once they are stored."""
        rows = self._rows.pop(table, None)
        if rows:
            self.size -= len(rows)
        if not self._rows:
            self._first_at = None

    def backoff(self) -> None:
        """After a failed flush: no automatic retry before ``max_delay_s``."""
        self._retry_at = self._clock() + self.policy.max_delay_s


class BufferedSink(ABC):
    """A :class:`Sink` built on a connection that can insert a batch of rows into one table.

    Subclasses implement :meth:`_insert`, :meth:`query` and :meth:`_disconnect`. Writes and
    flushes hold one lock, so threads may share a sink (they take turns).
    """

    def __init__(self, profile: ServerProfile = MODERN, policy: BufferPolicy | None = None) -> None:
        self.profile = profile
        self.policy = policy or BufferPolicy()
        self.metrics = SinkMetrics()
        self._plans = RowPlans(profile)
        self._buffer = RowBuffer(self.policy)
        self._lock = threading.RLock()
        self._closed = False

    def _encode(self, table: str, rows: list[dict[str, Any]]) -> list[Any]:
        """Turn rows into what the buffer keeps and :meth:`_insert` receives.

        Runs at write time, while the rows are hot in the CPU cache: serialising them there
        is several times faster than walking a large buffer of dicts at flush time.
        The default keeps the dicts (a native-protocol client inserts them as they are).
        """
        return rows

    @abstractmethod
    def _insert(self, table: Table, rows: list[Any]) -> None:
        """Insert buffered ``rows`` (as returned by :meth:`_encode`) into ``table`` in one statement."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Release the connection."""

    @abstractmethod
    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run ``sql`` and return its rows as dicts."""

    def write(self, records: Iterable[BaseModel]) -> None:
        """Buffer the rows of ``records`` and apply the flush policy."""
        with self._lock:
            self._check_open()
            rows_for = self._plans.rows_for
            encode = self._encode
            add = self._buffer.add
            for record in records:
                for table, rows in rows_for(record).items():
                    add(table, encode(table, rows))
            self.metrics.buffered_rows = self._buffer.size
            if self._buffer.over_limit():
                self._flush_locked()  # back-pressure: let a failure reach the caller
            elif self._buffer.due():
                try:
                    self._flush_locked()
                except Exception:
                    # Rows stay buffered and are retried later; over_limit() ends the grace.
                    log.warning("flush failed, %d rows kept for retry", self._buffer.size, exc_info=True)

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
        # Parents before items: a reader never sees items whose header is missing.
        pending = set(buffer.tables())
        order = [name for name in TABLES if name in pending]
        try:
            for name in order:
                rows = buffer.peek(name)
                self._insert(TABLES[name], rows)
                self.metrics.rows_written[name] = self.metrics.rows_written.get(name, 0) + len(rows)
                self.metrics.batches += 1
                buffer.discard(name)
        except Exception as exc:
            buffer.backoff()
            self.metrics.failed_flushes += 1
            self.metrics.last_error = f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            self.metrics.buffered_rows = buffer.size
        self.metrics.last_flush_seconds = time.perf_counter() - started
        self.metrics.last_flush_at = datetime.now(UTC)

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
