"""Sink throughput: rows/s into embedded ClickHouse (chdb) and a ClickHouse 18.16 server, per batch size.

Scores a seeded stream once, keeps the records in memory (events, scores, alerts), then
writes them to each sink in ``write`` calls of 100 events' records, the sink flushing when its
buffer reaches the batch size, with the indicator views and materialised views in place
(``create_views``), as in production. For each (sink, batch size):

* rows/s: table rows inserted per second of wall time (a declaration with three items is four
  rows), and the same as scored events per second (each event with its scores and alert);
* flush latency: the time one flush (one INSERT per table) takes, median and maximum, and the
  rows it carries on average (a row waits in the buffer at most the time to fill a batch plus
  one flush);
* whether the sink keeps up with 50,000 scored events/s.

The native server is Debian's clickhouse-server 18.16, started on loopback ports for the run
(skipped when it is not installed). Records in bench/RESULTS.md under "sink".

Run: .venv/bin/python bench/sink.py [--hours 8] [--batches 1000,5000,20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import record

from vigie.operators import ScoringPipeline
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.sinks.base import BufferedSink, BufferPolicy
from vigie.sinks.chdb_sink import ChdbSink
from vigie.sinks.clickhouse_server import ClickHouseServer, server_installed
from vigie.sinks.ddl import MODERN, TABLES, Table
from vigie.sinks.native_sink import NativeSink, _row_encoder
from vigie.sinks.views import create_views

TARGET_EVENTS_PER_S = 50_000
WRITE_EVENTS = 100
"""Events per write() call: small, so that the sink's batch size decides when it flushes."""
MAX_DELAY_S = 30.0  # flush by size only: the figures are per batch size


def scored_stream(hours: float) -> tuple[list[list[Any]], int]:
    """Per event, the records it sends to the sink; and the event count."""
    pipeline = ScoringPipeline()
    per_event: list[list[Any]] = []
    for event, _ in generate(GeneratorConfig(seed=7, duration_hours=hours)):
        result = pipeline.process(event)
        records: list[Any] = [event, *result.scores]
        if result.alert is not None:
            records.append(result.alert)
        per_event.append(records)
    return per_event, len(per_event)


class NullSink(BufferedSink):
    """Rows extracted and encoded as for the native protocol, then dropped: the Python-side ceiling."""

    def __init__(self, batch_size: int) -> None:
        super().__init__(MODERN, BufferPolicy(batch_size=batch_size, max_delay_s=MAX_DELAY_S, max_buffer_rows=10**7))
        self._encoders = {name: _row_encoder(table, MODERN) for name, table in TABLES.items()}

    def _encode(self, table: str, rows: list[dict[str, Any]]) -> list[Any]:
        return list(map(self._encoders[table], rows))

    def _insert(self, table: Table, rows: list[Any]) -> None:
        pass

    def _disconnect(self) -> None:
        pass

    def query(self, sql: str) -> list[dict[str, Any]]:
        return []


def measure(sink: BufferedSink, per_event: list[list[Any]]) -> dict[str, float]:
    """Write everything, flush; wall time, rows and the duration of every flush."""
    if not isinstance(sink, NullSink):
        create_views(sink.query, sink.profile, getattr(sink, "database", "vigie"))
    flushes: list[float] = []
    started = time.perf_counter()
    for i in range(0, len(per_event), WRITE_EVENTS):
        batches = sink.metrics.batches
        chunk = [r for records in per_event[i : i + WRITE_EVENTS] for r in records]
        sink.write(chunk)
        if sink.metrics.batches != batches and sink.metrics.last_flush_seconds is not None:
            flushes.append(sink.metrics.last_flush_seconds)
    batches = sink.metrics.batches
    sink.flush()
    if sink.metrics.batches != batches and sink.metrics.last_flush_seconds is not None:
        flushes.append(sink.metrics.last_flush_seconds)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": float(sink.metrics.total_rows_written),
        "flush_p50": statistics.median(flushes) if flushes else 0.0,
        "flush_max": max(flushes, default=0.0),
        "flushes": float(len(flushes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0, help="hours of generated traffic (1,500 arrivals/h)")
    parser.add_argument("--batches", default="1000,5000,20000", help="sink batch sizes (rows), comma-separated")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batches.split(",")]
    load_before = os.getloadavg()[0]

    t = time.perf_counter()
    per_event, n_events = scored_stream(args.hours)
    n_records = sum(len(r) for r in per_event)
    print(f"{n_events:,} events, {n_records:,} records scored in {time.perf_counter() - t:.1f} s")

    results: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        openers: list[tuple[str, Callable[[str, int], BufferedSink]]] = [
            ("no server (rows + encoding only)", lambda name, batch: NullSink(batch)),
            (
                "chdb (embedded 26.9)",
                lambda name, batch: ChdbSink(
                    Path(tmp) / "chdb",
                    database=name,
                    batch_size=batch,
                    max_delay_s=MAX_DELAY_S,
                    max_buffer_rows=max(100_000, 4 * batch),
                ),
            ),
        ]
        server: ClickHouseServer | None = None
        if server_installed():
            server = ClickHouseServer(Path(tmp) / "server").start()
            host, port = server.host, server.tcp_port
            openers.append(
                (
                    "native, clickhouse-server 18.16",
                    lambda name, batch: NativeSink(
                        host,
                        port,
                        name,
                        batch_size=batch,
                        max_delay_s=MAX_DELAY_S,
                        max_buffer_rows=max(100_000, 4 * batch),
                    ),
                )
            )
        else:
            print("clickhouse-server not installed: native sink skipped (deploy/clickhouse/install.sh)")
        try:
            for label, opener in openers:
                for batch in batch_sizes:
                    sink = opener(f"bench_{batch}", batch)
                    try:
                        figures = measure(sink, per_event)
                    finally:
                        sink.close()
                    results.append((label, batch, figures))
                    rate = n_events / figures["seconds"]
                    print(
                        f"{label:32s} batch {batch:>6,}: {figures['rows'] / figures['seconds']:>9,.0f} rows/s "
                        f"{rate:>9,.0f} scored events/s, flush p50 {figures['flush_p50'] * 1000:,.0f} ms "
                        f"max {figures['flush_max'] * 1000:,.0f} ms"
                    )
        finally:
            if server is not None:
                server.close()

    table: list[tuple[str, ...]] = [
        (
            "sink",
            "batch (rows)",
            "rows/s",
            "scored events/s",
            "rows per flush",
            "flush p50",
            "flush max",
            f"keeps up with {TARGET_EVENTS_PER_S:,}/s",
        )
    ]
    for label, batch, f in results:
        rate = n_events / f["seconds"]
        table.append(
            (
                label,
                f"{batch:,}",
                f"{f['rows'] / f['seconds']:,.0f}",
                f"{rate:,.0f}",
                f"{f['rows'] / max(f['flushes'], 1):,.0f}",
                f"{f['flush_p50'] * 1000:,.0f} ms",
                f"{f['flush_max'] * 1000:,.0f} ms",
                "yes" if rate >= TARGET_EVENTS_PER_S else f"no ({TARGET_EVENTS_PER_S / rate:.1f} sinks needed)",
            )
        )
    rows_per_event = results[0][2]["rows"] / n_events if results else 0.0
    record(
        "sink",
        command=f".venv/bin/python bench/sink.py --hours {args.hours:g} --batches {args.batches}",
        table=table,
        notes=[
            f"{n_events:,} scored events = {n_records:,} records = {rows_per_event:.2f} table rows per event "
            f"(items, scores and alerts included); {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, "
            f"{platform.processor() or platform.machine()}.",
            "100 events' records per write, flushes by size only; indicator and materialised views in place; "
            "time includes encoding rows in Python (orjson for chdb, tuples for the native protocol).",
            "A scored event is an inbound event with its scores and alert; rows/s counts every table row. "
            "'no server': the same writes into a sink whose inserts do nothing, i.e. the cost of turning "
            "records into rows in one Python process, an upper bound for any sink in that process.",
            f"One Python process on a {os.cpu_count()}-core machine shared with other jobs (1-minute load "
            f"average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end): figures are lower bounds. "
            "'sinks needed': parallel writer processes (e.g. one per Kafka partition) to reach the target, "
            "assuming the server keeps up, which one 2-core host does not show.",
        ],
    )


if __name__ == "__main__":
    main()
