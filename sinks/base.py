"""The sink interface every runtime writes to, and the buffering all sinks share.

A sink turns records (inbound events, :class:`~vigie.schemas.RiskScore`,
:class:`~vigie.schemas.Alert`, :class:`~vigie.schemas.DeadLetter`) into table rows with
:mod:`vigie.sinks.ddl`, buffers them per table and inserts them in batches. Inserting the
same record twice is harmless (the tables are ``ReplacingMergeTree`` on the record's id),
so a flush that fails halfway can simply be retried.

Columnar path
-------------
:meth:`BufferedSink.write` hands the records to the buffer's :class:`ColumnStore`, which
keeps the rows in the form the transport wants, per table and column: no per-row dict or
tuple. Both ClickHouse sinks (chdb and the native protocol) encode each value into ClickHouse
``Native`` columns as it is written (:func:`~vigie.sinks.ddl.native_blocks`, Cython), so a
flush only joins buffers into one block per table. The default, :class:`ColumnListStore`,
appends each value to one Python list per column (:func:`~vigie.sinks.ddl.column_writers`)
for a sink that converts whole columns itself. A flush hands each table's rows to
:meth:`BufferedSink._encode`, then :meth:`BufferedSink._send` stores the payload, on a
sender thread when the sink was opened with ``background=True``. ``write()`` is
all-or-nothing: a record that cannot be stored (a type no table holds, a model missing a
field; with the Native store also a value that does not fit its column) raises ``TypeError``
and none of that call's records stay buffered.

Flush policy (:class:`BufferPolicy`), checked on every :meth:`Sink.write`:

* ``batch_size`` buffered rows: flush the tables that hold a fair share of them (at least
  :data:`SIZE_FLUSH_SHARE` of a batch, and always the largest). A table's item table goes
  with it (``ens`` with ``ens_items``, ``declarations`` with ``declaration_items``), so a
  reader never sees items without their header. Small tables (alerts, outcomes, excise,
  dead letters) wait for their own clock: every insert costs ClickHouse milliseconds
  whatever its size (about 6 ms in chdb for 36 alert rows). Sent with every 100,000-row
  batch, alerts, outcomes and excise took about 14% of chdb's insert time (bench/sink.py).
* ``max_delay_s`` since a table's first buffered row: flush that table (and its items), so
  no row waits longer than that at any rate.
* If a flush fails the rows stay buffered, the error is counted in
  :attr:`SinkMetrics.failed_flushes`, and the next automatic attempt waits ``max_delay_s``,
  so a short outage does not stop the stream.
* more than ``max_buffer_rows`` buffered or waiting for their send: ``write()`` waits for
  the oldest sends until back under the bound (the sender keeps the newer ones to work on),
  or, with none in flight, flushes and waits; it raises if a send failed. The buffer is
  bounded; the caller gets the back-pressure. A caller that goes on writing after that
  failure finds the buffer still over the bound: each ``write()`` first tries to store it
  again and, while that fails, raises :class:`SinkBufferFull` without buffering that call's
  records, so the buffer never holds more than ``max_buffer_rows`` plus one call's rows.

There is no background timer: a runtime with idle periods calls :meth:`BufferedSink.flush_if_due`
(or :meth:`Sink.flush`) on its own tick so a quiet stream still reaches the store.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, Self, runtime_checkable

from pydantic import BaseModel

from ._native_block import NativeBlocks
from .ddl import MODERN, TABLES, ColumnLists, ServerProfile, Table, column_writers, empty_columns, native_blocks

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_MAX_BUFFER_ROWS",
    "SIZE_FLUSH_SHARE",
    "BufferPolicy",
    "BufferedSink",
    "ColumnListStore",
    "ColumnStore",
    "NativeBlockSink",
    "RowBuffer",
    "Sink",
    "SinkBufferFull",
    "SinkMetrics",
]

log = logging.getLogger(__name__)


class SinkBufferFull(RuntimeError):
    """``write()`` refused its records: the buffer is over ``max_buffer_rows`` and storing it
    failed again (the store's error is the ``__cause__``). Nothing of that call was buffered."""


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
    """Wall time of the last flush, from encoding its first table to storing its last."""
    recent_flush_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    """Wall times of the latest flushes (at most 1,024), oldest first: the flush-latency distribution."""
    recent_flush_rows: deque[int] = field(default_factory=lambda: deque(maxlen=1024))
    """Rows each of those flushes stored, in the same order: a size flush carries a batch, a
    flush by a small table's clock a few rows, so latency per row weighs them by this."""
    recent_flush_ended: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    """``time.perf_counter()`` when each of those flushes' last send finished, in the same
    order: with the rows, the rate the store kept up over a stretch of time."""
    buffered_rows: int = 0
    """Rows written and not stored yet: in the buffer, or encoded and waiting for their send."""
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
SIZE_FLUSH_SHARE = 1 / 8
"""A flush triggered by ``batch_size`` sends the table groups holding at least this share of
a batch (6,250 rows at the default 50,000) and the largest; smaller ones wait for ``max_delay_s``."""
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


class ColumnStore(Protocol):
    """Where a :class:`RowBuffer` keeps the rows it buffers, per table, in a transport's form."""

    def write_all(self, records: Iterable[BaseModel]) -> None:
        """Add each record's rows (its table's and its items'). Raises ``TypeError``: "no table
        stores X" for a model no table holds, "cannot store this X: ..." for a record that
        lacks a field or holds a value its column cannot take. An error may leave partial
        rows: :meth:`rollback` removes them."""
        ...

    def mark(self) -> None:
        """Remember where every table ends."""
        ...

    def rollback(self) -> None:
        """Drop the rows added since :meth:`mark`."""
        ...

    def rows(self, table: str) -> int:
        """Rows buffered for ``table``."""
        ...

    def batch(self, table: str) -> Any:
        """``table``'s rows as :meth:`BufferedSink._encode` receives them."""
        ...

    def clear(self, table: str) -> None:
        """Forget ``table``'s rows."""
        ...


class ColumnListStore:
    """Rows as one Python list per column (:func:`~vigie.sinks.ddl.column_writers`), values as
    the models hold them: for a sink that converts whole columns itself at flush (the default;
    the ClickHouse sinks use :func:`~vigie.sinks.ddl.native_blocks`)."""

    def __init__(self) -> None:
        self.columns: ColumnLists = empty_columns()
        self._writers = column_writers(self.columns)
        self._marks: dict[str, int] = {}

    def write_all(self, records: Iterable[BaseModel]) -> None:
        writers = self._writers
        for record in records:
            write = writers.get(type(record))
            if write is None:
                raise TypeError(f"no table stores {type(record).__name__}")
            try:
                write(record)
            except Exception as exc:
                raise TypeError(f"cannot store this {type(record).__name__}: {exc!r}") from exc

    def mark(self) -> None:
        self._marks = {name: len(columns[0]) for name, columns in self.columns.items()}

    def rollback(self) -> None:
        for name, length in self._marks.items():
            for values in self.columns[name]:
                del values[length:]

    def rows(self, table: str) -> int:
        return len(self.columns[table][0])

    def batch(self, table: str) -> list[list[Any]]:
        return self.columns[table]

    def clear(self, table: str) -> None:
        for values in self.columns[table]:
            values.clear()  # in place: the writers hold the lists' append


class RowBuffer:
    """Rows per table awaiting insertion, with the timing the flush policy needs. Not thread-safe.

    ``store`` holds the rows in the transport's form: by default a :class:`ColumnListStore`;
    the ClickHouse sinks use :func:`~vigie.sinks.ddl.native_blocks` (rows encoded as written).
    """

    def __init__(
        self, policy: BufferPolicy, clock: Callable[[], float] = time.monotonic, store: ColumnStore | None = None
    ) -> None:
        self.policy = policy
        self._clock = clock
        self.store: ColumnStore = store if store is not None else ColumnListStore()
        self.size = 0
        self._since: dict[str, float] = {}  # table -> clock() when its oldest buffered row arrived
        self._retry_at = 0.0

    def write(self, records: Iterable[BaseModel]) -> None:
        """Append the rows of ``records``, all or nothing.

        Raises ``TypeError`` when a record cannot be stored (a type no table holds, a model
        missing a field, a value that does not fit its column); the call then leaves nothing
        buffered.
        """
        store = self.store
        store.mark()
        try:
            store.write_all(records)
        except BaseException:
            store.rollback()  # no half-written record stays
            self.recount()
            raise
        self.recount()

    def recount(self) -> None:
        """Update :attr:`size` and the tables' delay clocks after rows were added."""
        size = 0
        now: float | None = None
        rows = self.store.rows
        for name in TABLES:
            count = rows(name)
            if count:
                size += count
                if name not in self._since:
                    now = self._clock() if now is None else now
                    self._since[name] = now
            else:
                self._since.pop(name, None)
        self.size = size

    @property
    def oldest_at(self) -> float | None:
        """``clock()`` when the oldest buffered row arrived; None when empty."""
        return min(self._since.values(), default=None)

    def since(self, table: str) -> float:
        """``clock()`` when the oldest buffered row of ``table`` (one that has rows) arrived."""
        return self._since[table]

    def due(self) -> bool:
        """True when the policy asks for a flush (and no failed flush is backing off)."""
        oldest = self.oldest_at
        if oldest is None:
            return False
        now = self._clock()
        if now < self._retry_at:
            return False
        return self.size >= self.policy.batch_size or now - oldest >= self.policy.max_delay_s

    def may_retry(self) -> bool:
        """True once the pause after a failed flush is over."""
        return self._clock() >= self._retry_at

    def over_limit(self, unsent: int = 0) -> bool:
        """True above ``max_buffer_rows`` (counting ``unsent`` rows already taken out of the
        buffer but not stored yet): the writer must flush before going on."""
        return self.size + unsent > self.policy.max_buffer_rows

    def tables(self) -> list[str]:
        """Tables with buffered rows, parents before their item tables (a reader never sees
        items whose header is missing)."""
        rows = self.store.rows
        return [name for name in TABLES if rows(name)]

    def due_tables(self) -> list[str]:
        """The tables a policy-driven flush sends now, parents before their item tables.

        A table and its item tables form a group, sent together. When the buffer holds
        ``batch_size`` rows: every group with at least :data:`SIZE_FLUSH_SHARE` of a batch,
        and the largest. At any time: every group whose oldest row waited ``max_delay_s``.
        Empty while a failed flush is backing off.
        """
        now = self._clock()
        if now < self._retry_at:
            return []
        rows = self.store.rows
        chosen = {
            group
            for group, members in _GROUPS.items()
            if any(name in self._since and now - self._since[name] >= self.policy.max_delay_s for name in members)
        }
        if self.size >= self.policy.batch_size:
            sizes = {group: sum(rows(name) for name in members) for group, members in _GROUPS.items()}
            floor = self.policy.batch_size * SIZE_FLUSH_SHARE
            chosen.update(group for group, size in sizes.items() if size >= floor)
            chosen.add(max(sizes, key=sizes.__getitem__))
        return [name for group in _GROUPS if group in chosen for name in _GROUPS[group] if rows(name)]

    def peek(self, table: str) -> Any:
        """``table``'s rows in the store's form (left in place until :meth:`discard`)."""
        return self.store.batch(table)

    def discard(self, table: str) -> None:
        """Forget ``table``'s rows once they are encoded."""
        self.size -= self.store.rows(table)
        self.store.clear(table)
        self._since.pop(table, None)

    def backoff(self) -> None:
        """After a failed flush: no automatic retry before ``max_delay_s``."""
        self._retry_at = self._clock() + self.policy.max_delay_s


def _table_groups() -> dict[str, tuple[str, ...]]:
    """Each top-level table with its item tables, in :data:`TABLES` order (parents first)."""
    groups: dict[str, list[str]] = {}
    for name, table in TABLES.items():
        groups.setdefault(table.parent or name, []).append(name)
    return {group: tuple(members) for group, members in groups.items()}


_GROUPS = _table_groups()
_GROUP_OF = {name: group for group, members in _GROUPS.items() for name in members}
"""Table name -> the group (top-level table) it is sent with."""


@dataclass(slots=True)
class _Unsent:
    """One table's rows, encoded for the transport and not yet stored."""

    table: Table
    payload: Any
    rows: int
    since: float
    """The buffer's clock (``time.monotonic()``) when the oldest of these rows was written."""


@dataclass(slots=True)
class _Sent:
    """What became of one flush's payloads."""

    stored: list[_Unsent]
    failed: list[_Unsent]
    """Not stored, in the flush's order: each failed payload and the ones after it in its lane."""
    error: BaseException | None
    """The first failure, if any."""
    ended: float
    """``time.perf_counter()`` when the last lane finished."""


@dataclass(slots=True)
class _Job:
    """Payloads handed to the sender thread in one flush."""

    payloads: list[_Unsent]
    started: float
    """``time.perf_counter()`` when the flush began encoding."""
    future: Future[_Sent]


def assign_lanes(payloads: list[_Unsent], lanes: int) -> list[list[_Unsent]]:
    """Split one flush's payloads into at most ``lanes`` lists sent side by side.

    A table and its item tables (a group, see :data:`_GROUPS`) stay in one lane, in the
    flush's order, so a reader still never sees items before their header. Groups go
    largest first to the lane with the least so far (payload bytes, or rows for payloads
    without a length): the slowest lane, which the flush waits for, is as short as the
    groups allow. Empty lanes are left out.
    """
    groups: dict[str, list[_Unsent]] = {}
    weights: dict[str, int] = {}
    for unsent in payloads:
        group = _GROUP_OF[unsent.table.name]
        groups.setdefault(group, []).append(unsent)
        size = len(unsent.payload) if hasattr(unsent.payload, "__len__") else unsent.rows
        weights[group] = weights.get(group, 0) + size
    if lanes <= 1 or len(groups) <= 1:
        return [list(payloads)] if payloads else []
    split: list[list[_Unsent]] = [[] for _ in range(lanes)]
    loads = [0] * lanes
    for group in sorted(groups, key=weights.__getitem__, reverse=True):
        lane = loads.index(min(loads))
        split[lane].extend(groups[group])
        loads[lane] += weights[group]
    return [lane for lane in split if lane]


class BufferedSink(ABC):
    """A :class:`Sink` built on a connection that can insert a batch of columns into one table.

    A flush has two halves: :meth:`_encode` turns a table's buffered columns into what the
    transport sends (in the writer's thread: the values are Python objects, it needs the
    GIL), :meth:`_send` stores that payload. With ``background=True`` the sends run on one
    sender thread, flush after flush, while the writer goes on buffering: the database's own
    work (in chdb's threads, or in the server process while the driver waits) overlaps with
    the stream instead of stalling it. With ``senders=N`` a flush's payloads are split into
    up to N lanes (:func:`assign_lanes`: a table with its item tables in one lane) sent side
    by side, each lane on its own connection: one insert keeps one core of the database busy,
    so the scores' insert no longer waits behind the declarations'. Until a payload is stored
    it counts as buffered (the ``max_buffer_rows`` bound and :attr:`SinkMetrics.buffered_rows`
    include it); a payload whose send failed is sent again at the next flush (with the rest of
    its lane). :meth:`flush` and :meth:`close` wait for every send; a flush that :meth:`write`
    starts does not.

    Subclasses implement :meth:`_encode`, :meth:`_send` (on the connection of the lane it is
    given: lane 0 is the one :meth:`query` uses), :meth:`query` (calling :meth:`settle` first:
    the connection is not shared with the sender thread) and :meth:`_disconnect`. Writes and
    flushes hold one lock, so threads may share a sink (they take turns).
    """

    def __init__(
        self,
        profile: ServerProfile = MODERN,
        policy: BufferPolicy | None = None,
        *,
        background: bool = False,
        senders: int = 1,
    ) -> None:
        if senders < 1:
            raise ValueError(f"senders must be >= 1, got {senders}")
        self.profile = profile
        self.policy = policy or BufferPolicy()
        self.metrics = SinkMetrics()
        self.background = background
        self.senders = senders
        self._buffer = RowBuffer(self.policy, store=self._column_store())
        self._unsent: list[_Unsent] = []  # encoded, not handed to the sender (or handed back after a failure)
        self._jobs: deque[_Job] = deque()  # handed to the sender, not harvested
        self._sender: ThreadPoolExecutor | None = None
        self._lanes: ThreadPoolExecutor | None = None  # lanes 1.. of a flush (lane 0 runs on the sender)
        self._lock = threading.RLock()
        self._closed = False

    def _column_store(self) -> ColumnStore:
        """How the buffer holds rows: column lists unless the transport wants its own form."""
        return ColumnListStore()

    @abstractmethod
    def _encode(self, table: Table, columns: Any, rows: int) -> Any:
        """The payload that stores ``rows`` rows of ``table``; runs in the writer's thread.

        ``columns`` is the table's rows as the :meth:`_column_store` holds them: by default one
        list per column of ``table.columns``, with the values as the models hold them (see
        :func:`~vigie.sinks.ddl.column_writers`). The store is emptied after this returns, so
        the payload must not keep them. Raises ``ValueError`` naming the table and column when
        a value does not fit.
        """

    @abstractmethod
    def _send(self, table: Table, payload: Any, rows: int, lane: int = 0) -> None:
        """Store one :meth:`_encode` payload in one statement, on lane ``lane``'s connection
        (``0 <= lane < senders``; lanes run side by side); may run on a sender thread.

        Called again with the same payload when a failed flush is retried (re-sending is
        harmless: the tables are idempotent on record ids).
        """

    @abstractmethod
    def _disconnect(self) -> None:
        """Release the connection."""

    @abstractmethod
    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run ``sql`` and return its rows as dicts."""

    def write(self, records: Iterable[BaseModel]) -> None:
        """Buffer the rows of ``records`` and apply the flush policy.

        Raises ``TypeError`` when a record cannot be stored, and :class:`SinkBufferFull` when the
        buffer is still over ``max_buffer_rows`` after an earlier failure and storing it fails
        again; either way the call buffers nothing.
        """
        with self._lock:
            self._check_open()
            if self._jobs:
                self._harvest(block=False, raise_errors=False)
            if self._buffer.over_limit(self._unsent_rows()):
                # Left over the bound by an earlier failed flush: checked before buffering, or
                # a caller that goes on after the error would grow the buffer without limit.
                try:
                    self._push_back()
                except Exception as exc:
                    self._sync_buffer_metrics()
                    raise SinkBufferFull(
                        f"{type(self).__name__}: {self.metrics.buffered_rows} rows unstored, over "
                        f"max_buffer_rows={self.policy.max_buffer_rows}, and the store still fails "
                        f"({type(exc).__name__}: {exc}); these records were not buffered"
                    ) from exc
            self._buffer.write(records)
            try:
                if self._buffer.over_limit(self._unsent_rows()):
                    self._push_back()
                elif self._due():
                    try:
                        self._flush_locked(wait=False, tables=self._buffer.due_tables())
                    except Exception:
                        # Rows stay buffered and are retried later; over_limit() ends the grace.
                        log.warning("flush failed, %d rows kept for retry", self.metrics.buffered_rows, exc_info=True)
            finally:
                self._sync_buffer_metrics()

    def _push_back(self) -> None:
        """Back-pressure, above ``max_buffer_rows``: wait for the oldest sends, one at a time,
        until back under it, so the sender keeps the newer ones to work on while the writer
        resumes (waiting for every send left it idle for a whole batch's encoding after each
        push-back). With nothing in flight (or still over), flush everything and wait. A
        failed send reaches the caller either way."""
        while self._jobs and self._buffer.over_limit(self._unsent_rows()):
            self._harvest(block=True, raise_errors=True, jobs=1)
        if self._buffer.over_limit(self._unsent_rows()):
            self._flush_locked(wait=True)

    def flush_if_due(self) -> None:
        """Flush if the policy says so, and wait for it; for runtimes' idle ticks. Raises like :meth:`flush`."""
        with self._lock:
            if self._closed:
                return
            if self._jobs:
                self._harvest(block=False, raise_errors=False)
            if self._due():
                try:
                    self._flush_locked(wait=True, tables=self._buffer.due_tables())
                finally:
                    self._sync_buffer_metrics()

    def flush(self) -> None:
        """Store every buffered row, one statement per table, and wait until they are stored.

        Tables already stored are dropped from the buffer even if a later table fails,
        so a retry re-sends only what is missing (and re-sending is harmless anyway).
        """
        with self._lock:
            self._check_open()
            try:
                self._flush_locked(wait=True)
            finally:
                self._sync_buffer_metrics()

    def _due(self) -> bool:
        if self._buffer.due():
            return True
        return bool(self._unsent) and self._buffer.may_retry()

    def _pending(self) -> list[_Unsent]:
        """Payloads encoded and not stored yet: waiting for a flush, or handed to the sender."""
        return self._unsent + [u for job in self._jobs for u in job.payloads]

    def _unsent_rows(self) -> int:
        return sum(u.rows for u in self._pending())

    def _flush_locked(self, wait: bool, tables: list[str] | None = None) -> None:
        """Encode ``tables`` (all buffered ones when None), hand every unsent payload to the
        sender (or send here), and wait for all sends when ``wait``."""
        started = time.perf_counter()
        try:
            self._encode_buffer(self._buffer.tables() if tables is None else tables)
        except Exception as exc:
            self._failed(exc)
            raise
        if self._unsent:
            payloads, self._unsent = self._unsent, []
            future: Future[_Sent]
            if self.background:
                if self._sender is None:
                    self._sender = ThreadPoolExecutor(1, thread_name_prefix=f"{type(self).__name__}-sender")
                future = self._sender.submit(self._send_all, payloads)
            else:  # sent here and now, then accounted for like the sender thread's sends
                future = Future()
                future.set_result(self._send_all(payloads))
            self._jobs.append(_Job(payloads, started, future))
        if wait or not self.background:
            self._harvest(block=True, raise_errors=True)

    def _encode_buffer(self, tables: list[str]) -> None:
        """Encode ``tables`` (parents first) into :attr:`_unsent` and drop them from the buffer."""
        buffer = self._buffer
        for name in tables:
            columns = buffer.peek(name)
            rows = buffer.store.rows(name)
            payload = self._encode(TABLES[name], columns, rows)
            self._unsent.append(_Unsent(TABLES[name], payload, rows, buffer.since(name)))
            buffer.discard(name)

    def _send_all(self, payloads: list[_Unsent]) -> _Sent:
        """Send one flush's ``payloads`` (on the sender thread, or in the writer's without one),
        in lanes side by side when ``senders`` > 1; a lane stops at its first failure."""
        lanes = assign_lanes(payloads, self.senders)
        if len(lanes) > 1:
            if self._lanes is None:
                self._lanes = ThreadPoolExecutor(self.senders - 1, thread_name_prefix=f"{type(self).__name__}-lane")
            others = [self._lanes.submit(self._send_lane, lane, index) for index, lane in enumerate(lanes[1:], 1)]
            outcomes = [self._send_lane(lanes[0], 0)] + [other.result() for other in others]
        else:
            outcomes = [self._send_lane(lanes[0] if lanes else [], 0)]
        unstored = {id(u) for _, failed in outcomes for u in failed}
        error = next((exc for exc, _ in outcomes if exc is not None), None)
        return _Sent(
            stored=[u for u in payloads if id(u) not in unstored],
            failed=[u for u in payloads if id(u) in unstored],
            error=error,
            ended=time.perf_counter(),
        )

    def _send_lane(self, lane: list[_Unsent], index: int) -> tuple[BaseException | None, list[_Unsent]]:
        """Send ``lane`` in order on connection ``index``: the error that stopped it (if any)
        and the payloads not stored."""
        for sent, unsent in enumerate(lane):
            try:
                self._send(unsent.table, unsent.payload, unsent.rows, index)
            except Exception as exc:
                return exc, lane[sent:]
        return None, []

    def _harvest(self, block: bool, raise_errors: bool, jobs: int | None = None) -> None:
        """Account for finished sends (all of them when ``block``; the oldest ``jobs`` at
        most when given); payloads whose send failed go back to :attr:`_unsent`, ahead of
        newer ones. The first failure is counted, then raised (``raise_errors``) or logged."""
        failed: list[_Unsent] = []
        error: BaseException | None = None
        left = len(self._jobs) if jobs is None else jobs
        while self._jobs and left > 0 and (block or self._jobs[0].future.done()):
            left -= 1
            job = self._jobs.popleft()
            sent = job.future.result()
            for unsent in sent.stored:
                self._stored(unsent)
            if sent.error is None:
                self._flushed(job.started, sent.ended, sum(unsent.rows for unsent in job.payloads))
            else:
                failed.extend(sent.failed)
                error = error or sent.error
        if failed:
            self._unsent[:0] = failed
        if error is not None:
            self._failed(error)
            if raise_errors:
                raise error
            log.warning("background flush failed, %d rows kept for retry", self._unsent_rows(), exc_info=error)

    def settle(self) -> None:
        """Wait until the sender thread has finished every send handed to it, and account for
        them: stored rows leave :attr:`SinkMetrics.buffered_rows`, failed sends are counted,
        logged and kept for the next flush. Raises nothing. A subclass's :meth:`query` calls
        it before using the connection (not shared with the sender thread)."""
        with self._lock:
            if self._jobs:
                self._harvest(block=True, raise_errors=False)
                self._sync_buffer_metrics()

    def _stored(self, unsent: _Unsent) -> None:
        name = unsent.table.name
        self.metrics.rows_written[name] = self.metrics.rows_written.get(name, 0) + unsent.rows
        self.metrics.batches += 1

    def _flushed(self, started: float, ended: float, rows: int) -> None:
        seconds = ended - started
        self.metrics.last_flush_seconds = seconds
        self.metrics.recent_flush_seconds.append(seconds)
        self.metrics.recent_flush_rows.append(rows)
        self.metrics.recent_flush_ended.append(ended)
        self.metrics.last_flush_at = datetime.now(UTC)

    def _failed(self, exc: BaseException) -> None:
        self._buffer.backoff()
        self.metrics.failed_flushes += 1
        self.metrics.last_error = f"{type(exc).__name__}: {exc}"[:500]

    def _sync_buffer_metrics(self) -> None:
        unsent = self._pending()
        self.metrics.buffered_rows = self._buffer.size + sum(u.rows for u in unsent)
        times = [u.since for u in unsent]
        if self._buffer.oldest_at is not None:
            times.append(self._buffer.oldest_at)
        self.metrics.oldest_buffered_at = min(times, default=None)

    def close(self) -> None:
        """Flush, wait for the sends and disconnect. If the flush fails the connection is still
        released and the error re-raised: the unstored rows are lost (they are logged)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._flush_locked(wait=True)
            except Exception:
                log.error("closing with %d unstored rows dropped", self._buffer.size + self._unsent_rows())
                raise
            finally:
                self._sync_buffer_metrics()
                for pool in (self._sender, self._lanes):
                    if pool is not None:
                        pool.shutdown(wait=True)
                self._disconnect()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NativeBlockSink(BufferedSink):
    """A :class:`BufferedSink` whose rows are ClickHouse ``Native`` blocks
    (:func:`~vigie.sinks.ddl.native_blocks` for the sink's profile): a flush's payload for a
    table is its block, complete. The chdb and native-protocol sinks are these."""

    _serialization_flags = False
    """Whether each column header carries the serialization byte (native protocol, revision 54454+)."""

    def _column_store(self) -> NativeBlocks:
        return native_blocks(self.profile, serialization_flags=self._serialization_flags)

    def _encode(self, table: Table, columns: bytes, rows: int) -> bytes:
        return columns
