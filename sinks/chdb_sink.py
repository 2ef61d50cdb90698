"""The embedded analytical store: ClickHouse in-process through chdb, data in a directory.

Inserts are columnar and binary: each record written is encoded at once into ClickHouse
``Native`` columns, per table (:func:`~vigie.sinks.ddl.native_blocks`, a Cython encoder:
aware datetimes to UTC milliseconds, dicts to ``Map``, bytes unchanged), and a flush streams
each table's block into ``INSERT INTO db.table (columns)`` with ``FORMAT Native`` (chdb's
``send_insert``), ClickHouse's own layout, read without conversion. A value that does not fit
its column is refused when written, naming the table and column. No JSON is produced on the
way in; :meth:`ChdbSink.query` reads back with the ``JSONEachRow`` output format.

One directory per process
-------------------------
chdb runs a single embedded server per process, bound to the first path opened: a session
on another path fails while any session is open. :class:`ChdbSink` therefore tracks open
sinks per path: opening a second sink on the *same* path is fine (they share the server),
opening one on a *different* path raises :class:`ChdbPathBusy` until every sink on the
first path is closed. Closing and reopening on the same path (a restart) keeps the data:
tables are created with ``IF NOT EXISTS``. A sink that is garbage-collected without
``close()`` still releases its session, but loses its unflushed rows: call ``close()``.

Dead-letter bytes travel as a Native ``String`` straight into ``raw`` (unchanged, non-UTF-8
included); the ephemeral ``raw_base64`` column of :mod:`vigie.sinks.ddl` is left to text
transports.
"""

from __future__ import annotations

import json
import os
import re
import threading
import weakref
from pathlib import Path
from typing import Any

import chdb.session
import orjson

from .base import DEFAULT_BATCH_ROWS, DEFAULT_MAX_BUFFER_ROWS, BufferPolicy, NativeBlockSink
from .ddl import (
    COMPACT_PART_BYTES,
    DEFAULT_DATABASE,
    DEFAULT_TTL_DAYS,
    TABLES,
    ServerProfile,
    Table,
    render_ddl,
    retention_statements,
    table_engines,
    validate_identifier,
)
from .views import create_views

__all__ = ["DEFAULT_SENDERS", "ChdbPathBusy", "ChdbSink", "ChdbStoreInUse"]

# Session-level output settings for query(): plain JSON numbers for 64-bit integers, and
# ISO-8601 UTC datetimes ("2026-01-02T03:04:05.678Z") that datetime.fromisoformat reads.
_SESSION_SETTINGS = (
    "SET output_format_json_quote_64bit_integers = 0",
    "SET date_time_output_format = 'iso'",
)
# chdb defaults to async inserts; synchronous ones mean flush() returns with rows in parts.
# optimize_on_insert = 0: no ReplacingMergeTree merge pass over each inserted block; copies of
# a record inside one batch collapse at the next merge or under FINAL, like copies across batches.
_INSERT_SETTINGS = "SETTINGS async_insert = 0, optimize_on_insert = 0"
_INSERT_FORMAT = "Native"

DEFAULT_SENDERS = 2 if (os.cpu_count() or 1) >= 3 else 1
"""Sessions inserting side by side (see :class:`~vigie.sinks.base.BufferedSink`): two from 3
cores, one below. chdb runs in the writer's process, whose scoring needs a core, and one insert
keeps another busy; a second lane pays only with a third core. Measured on 2 cores: with the
sink alone (bench/sink.py, 72 h stream) two lanes did 38,800 against 33,900 scored events/s
with 50,000-row batches and halved the flush time (p50 432 against 863 ms), 45,500 against
43,400/s with 200,000-row ones; but ``vigie run``, scoring in the same process, did 6,100
lines/s with two against 6,770 with one (five runs each, interleaved, 2026-11-24)."""

_registry_lock = threading.Lock()
_open_sinks: dict[str, int] = {}


class ChdbPathBusy(RuntimeError):
    """Raised when opening a sink on a path while chdb is bound to another one."""


class ChdbStoreInUse(RuntimeError):
    """Raised when another process holds the data directory (embedded ClickHouse allows one)."""


def _acquire(path: str) -> None:
    with _registry_lock:
        busy = [p for p, count in _open_sinks.items() if count and p != path]
        if busy:
            raise ChdbPathBusy(
                f"chdb is already open on {busy[0]} in this process (one data directory per process): "
                f"close that sink before opening {path}"
            )
        _open_sinks[path] = _open_sinks.get(path, 0) + 1


def _unregister(path: str) -> None:
    with _registry_lock:
        remaining = _open_sinks.get(path, 0) - 1
        if remaining > 0:
            _open_sinks[path] = remaining
        else:
            _open_sinks.pop(path, None)


def _release(path: str, sessions: list[chdb.session.Session]) -> None:
    # Runs once per sink, from close() or from garbage collection (weakref.finalize).
    try:
        for session in reversed(sessions):
            session.close()
    finally:
        _unregister(path)


def _parse_rows(data: bytes) -> list[dict[str, Any]]:
    if not data:
        return []
    # JSONEachRow escapes newlines inside strings: raw newlines only separate rows.
    try:
        return orjson.loads(b"[" + data.rstrip(b"\n").replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        # A String column holding non-UTF-8 bytes (dead-letter raw): keep them recoverable
        # as surrogate escapes, value.encode("utf-8", "surrogateescape") gives the bytes.
        return [json.loads(line.decode("utf-8", "surrogateescape")) for line in data.splitlines() if line]


class ChdbSink(NativeBlockSink):
    """:class:`~vigie.sinks.base.Sink` into a chdb data directory, tables created on open.

    >>> with ChdbSink(Path("vigie-data/store")) as sink:  # doctest: +SKIP
    ...     sink.write([score])
    ...     sink.flush()
    ...     sink.query("SELECT count() AS n FROM vigie.scores FINAL")
    [{'n': 1}]

    With ``background=True`` (the default) inserts run on a sender thread while the writer
    goes on (see :class:`~vigie.sinks.base.BufferedSink`): chdb does its share of each
    flush, reading the Native blocks and writing parts, on another core. ``senders``
    sessions on the same directory insert a flush's tables side by side: the scores in one,
    the ENS and declarations with their items in the other (chdb releases the GIL while it
    works, so the two inserts run on two cores); :data:`DEFAULT_SENDERS` by default.
    Tables are created with parts below ``compact_part_bytes`` written compact
    (:data:`~vigie.sinks.ddl.COMPACT_PART_BYTES`; ``None``: ClickHouse's own threshold); the
    tables of a store created before, or with another value, take it on when opened.
    """

    def __init__(
        self,
        path: Path | str,
        database: str = DEFAULT_DATABASE,
        batch_size: int = DEFAULT_BATCH_ROWS,
        ttl_days: int | None = DEFAULT_TTL_DAYS,
        enforce_ttl: bool = False,
        max_delay_s: float = 1.0,
        max_buffer_rows: int = DEFAULT_MAX_BUFFER_ROWS,
        background: bool = True,
        senders: int = DEFAULT_SENDERS,
        compact_part_bytes: int | None = COMPACT_PART_BYTES,
    ) -> None:
        if senders < 1:
            raise ValueError(f"senders must be >= 1, got {senders}")
        self.path = Path(path).resolve()
        self.database = validate_identifier(database)
        policy = BufferPolicy(batch_size=batch_size, max_delay_s=max_delay_s, max_buffer_rows=max_buffer_rows)
        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path)
        _acquire(key)
        sessions: list[chdb.session.Session] = []
        try:
            # One session per lane: a session is one connection, not for two threads at once.
            for _ in range(senders):
                sessions.append(chdb.session.Session(key))
        except BaseException as exc:
            _release(key, sessions)
            if "EmbeddedServer" in str(exc):  # chdb's only word for "another process holds this directory"
                raise ChdbStoreInUse(
                    f"the store {self.path} is in use by another process (a running `vigie console serve`, "
                    "`vigie run` or worker on this data directory?): stop it, or read a copy"
                ) from exc
            raise
        session = sessions[0]
        self._session = session
        self._sessions = sessions
        self._finalizer = weakref.finalize(self, _release, key, sessions)
        try:
            for statement in _SESSION_SETTINGS:
                session.query(statement)
            version = _parse_rows(session.query("SELECT version() AS v", "JSONEachRow").bytes())[0]["v"]
            super().__init__(ServerProfile.parse(version), policy, background=background, senders=senders)
            for statement in render_ddl(self.profile, self.database, ttl_days, compact_part_bytes):
                session.query(statement)
            if enforce_ttl:  # a store created with another period takes this one
                for statement in retention_statements(self.profile, self.database, ttl_days, self.query):
                    session.query(statement)
            if compact_part_bytes is not None:
                self._adopt_part_threshold(compact_part_bytes)
            create_views(self.query, self.profile, self.database)
        except BaseException:
            self._finalizer()
            raise
        self._insert_sql: dict[str, str] = {
            name: f"INSERT INTO {self.database}.{name} ({', '.join(c.name for c in table.columns)}) {_INSERT_SETTINGS}"
            for name, table in TABLES.items()
        }

    def _adopt_part_threshold(self, compact_part_bytes: int) -> None:
        """Give tables of an older store (created before :data:`COMPACT_PART_BYTES`, or with
        another value) the threshold: a metadata change, new parts follow it, parts already
        written stay as they are until merged."""
        wanted = f"min_bytes_for_wide_part = {int(compact_part_bytes)}"
        for name, engine in table_engines(self.query, self.database, TABLES).items():
            if not re.search(rf"\b{wanted}\b", engine):
                self.query(f"ALTER TABLE {self.database}.{name} MODIFY SETTING {wanted}")

    def _send(self, table: Table, payload: bytes, rows: int, lane: int = 0) -> None:
        # chdb releases the GIL while ClickHouse parses and writes the parts.
        with self._sessions[lane].send_insert(self._insert_sql[table.name], _INSERT_FORMAT) as inserter:
            inserter.append(payload)
            written = inserter.finish().rows_written
        if written < rows:  # the views' rows count too, so only fewer than sent is wrong
            raise RuntimeError(f"chdb stored {written} of {rows} rows in {self.database}.{table.name}")

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run ``sql``; rows as dicts in the JSONEachRow shape.

        64-bit integers come back as numbers, datetimes as ISO-8601 UTC strings, ``Map``
        as dicts. A String holding non-UTF-8 bytes comes back with surrogate escapes;
        prefer ``base64Encode(col)`` in the SQL for binary data.
        """
        if not self._finalizer.alive:
            raise RuntimeError("ChdbSink is closed")
        self.settle()
        return _parse_rows(self._session.query(sql, "JSONEachRow").bytes())

    def _disconnect(self) -> None:
        self._finalizer()
