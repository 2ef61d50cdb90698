"""The embedded analytical store: ClickHouse in-process through chdb, data in a directory.

Rows are inserted as ``INSERT INTO db.table (columns) FORMAT JSONEachRow`` with orjson
encoding; :meth:`ChdbSink.query` reads back with the ``JSONEachRow`` output format.

One directory per process
-------------------------
chdb runs a single embedded server per process, bound to the first path opened: a session
on another path fails while any session is open. :class:`ChdbSink` therefore tracks open
sinks per path: opening a second sink on the *same* path is fine (they share the server),
opening one on a *different* path raises :class:`ChdbPathBusy` until every sink on the
first path is closed. Closing and reopening on the same path (a restart) keeps the data:
tables are created with ``IF NOT EXISTS``. A sink that is garbage-collected without
``close()`` still releases its session, but loses its unflushed rows: call ``close()``.

Dead-letter bytes travel base64-encoded in the ephemeral ``raw_base64`` column and are
stored decoded in ``raw``; see :mod:`vigie.sinks.ddl`.
"""

from __future__ import annotations

import base64
import json
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chdb.session
import orjson

from .base import BufferedSink, BufferPolicy
from .ddl import DEFAULT_DATABASE, DEFAULT_TTL_DAYS, TABLES, Kind, ServerProfile, Table, render_ddl, validate_identifier
from .views import create_views

__all__ = ["ChdbPathBusy", "ChdbSink"]

# Session-level output settings for query(): plain JSON numbers for 64-bit integers, and
# ISO-8601 UTC datetimes ("2026-01-02T03:04:05.678Z") that datetime.fromisoformat reads.
_SESSION_SETTINGS = (
    "SET output_format_json_quote_64bit_integers = 0",
    "SET date_time_output_format = 'iso'",
)
# orjson writes datetimes as RFC 3339 with an offset, which best_effort parses exactly.
# chdb defaults to async inserts; synchronous ones mean flush() returns with rows in parts.
_INSERT_SETTINGS = (
    "SETTINGS date_time_input_format = 'best_effort', input_format_skip_unknown_fields = 0, async_insert = 0"
)

_registry_lock = threading.Lock()
_open_sinks: dict[str, int] = {}


class ChdbPathBusy(RuntimeError):
    """Raised when opening a sink on a path while chdb is bound to another one."""


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


def _release(path: str, session: chdb.session.Session) -> None:
    # Runs once per sink, from close() or from garbage collection (weakref.finalize).
    try:
        session.close()
    finally:
        _unregister(path)


def _row_encoder(table: Table, profile: ServerProfile) -> Callable[[dict[str, Any]], bytes]:
    """orjson for plain tables; bytes columns are renamed to their base64 transport column."""
    dumps = orjson.dumps
    renames = [(c.name, c.transport_name(profile)) for c in table.columns if c.kind is Kind.BYTES]
    if not renames:
        return dumps
    b64 = base64.b64encode

    def encode(row: dict[str, Any]) -> bytes:
        for name, transport in renames:
            row[transport] = b64(row.pop(name)).decode("ascii")
        return dumps(row)

    return encode


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


class ChdbSink(BufferedSink):
    """:class:`~vigie.sinks.base.Sink` into a chdb data directory, tables created on open.

    >>> with ChdbSink(Path("vigie-data/store")) as sink:  # doctest: +SKIP
    ...     sink.write([score])
    ...     sink.flush()
    ...     sink.query("SELECT count() AS n FROM vigie.scores FINAL")
    [{'n': 1}]
    """

    def __init__(
        self,
        path: Path | str,
        database: str = DEFAULT_DATABASE,
        batch_size: int = 5_000,
        ttl_days: int | None = DEFAULT_TTL_DAYS,
        max_delay_s: float = 1.0,
        max_buffer_rows: int = 100_000,
    ) -> None:
        self.path = Path(path).resolve()
        self.database = validate_identifier(database)
        policy = BufferPolicy(batch_size=batch_size, max_delay_s=max_delay_s, max_buffer_rows=max_buffer_rows)
        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path)
        _acquire(key)
        try:
            session = chdb.session.Session(key)
        except BaseException:
            _unregister(key)
            raise
        self._session = session
        self._finalizer = weakref.finalize(self, _release, key, session)
        try:
            for statement in _SESSION_SETTINGS:
                session.query(statement)
            version = self.query("SELECT version() AS v")[0]["v"]
            super().__init__(ServerProfile.parse(version), policy)
            for statement in render_ddl(self.profile, self.database, ttl_days):
                session.query(statement)
            create_views(self.query, self.profile, self.database)
        except BaseException:
            self._finalizer()
            raise
        self._insert_sql: dict[str, bytes] = {
            name: (
                f"INSERT INTO {self.database}.{name} ({', '.join(table.insert_columns(self.profile))}) "
                f"{_INSERT_SETTINGS} FORMAT JSONEachRow\n"
            ).encode()
            for name, table in TABLES.items()
        }
        self._encoders = {name: _row_encoder(table, self.profile) for name, table in TABLES.items()}

    def _encode(self, table: str, rows: list[dict[str, Any]]) -> list[bytes]:
        return list(map(self._encoders[table], rows))

    def _insert(self, table: Table, rows: list[bytes]) -> None:
        body = b"\n".join(rows)
        # chdb takes the statement as bytes: no decode/encode round trip of the batch.
        self._session.query(self._insert_sql[table.name] + body, "JSONEachRow")

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run ``sql``; rows as dicts in the JSONEachRow shape.

        64-bit integers come back as numbers, datetimes as ISO-8601 UTC strings, ``Map``
        as dicts. A String holding non-UTF-8 bytes comes back with surrogate escapes;
        prefer ``base64Encode(col)`` in the SQL for binary data.
        """
        if not self._finalizer.alive:
            raise RuntimeError("ChdbSink is closed")
        return _parse_rows(self._session.query(sql, "JSONEachRow").bytes())

    def _disconnect(self) -> None:
        self._finalizer()
