"""Analytical store: ClickHouse tables derived from the event models, and the sinks writing them.

* :mod:`vigie.sinks.ddl`: tables, DDL per server version, record -> rows.
* :mod:`vigie.sinks.base`: the :class:`Sink` protocol and the shared buffering.
* :mod:`vigie.sinks.chdb_sink`: :class:`~vigie.sinks.chdb_sink.ChdbSink`, embedded ClickHouse
  (imported from its module so that importing this package does not load chdb).
"""

from .base import BufferedSink, BufferPolicy, Sink, SinkMetrics
from .ddl import DEFAULT_DATABASE, DEFAULT_TTL_DAYS, LEGACY, MODERN, TABLES, ServerProfile, render_ddl, rows_for

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_TTL_DAYS",
    "LEGACY",
    "MODERN",
    "TABLES",
    "BufferPolicy",
    "BufferedSink",
    "ServerProfile",
    "Sink",
    "SinkMetrics",
    "render_ddl",
    "rows_for",
]
