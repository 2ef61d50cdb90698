"""Sink throughput: scored events/s into embedded ClickHouse (chdb) and a ClickHouse 18.16 server.

Scores a seeded stream once (all five detectors by default, as ``vigie evaluate --detectors
all``), keeps each event's records in memory (the event, its scores, its alert), then writes
them to each sink in ``write`` calls of 100 events' records, the sink flushing when its buffer
reaches the batch size, with the indicator views and materialised views in place
(``create_views``), as in production. The sinks are columnar (see ``vigie.sinks.base``): both
encode each value into ClickHouse Native columns as it is written, in the writer's thread (for
the native protocol, in the connected server's types); payloads are sent on the sink's sender
thread while the writer goes on (the sinks' default); the final flush waits for all.

For each (sink, writer processes, batch size):

* rows/s: table rows inserted per second of wall time (a declaration with three items is four
  rows), and scored events per second (each event with its items, scores and alert);
* sustained scored events/s: the rate the store kept up with between two stored batches while
  the writer was still writing, without the run's start and end (:func:`sustained_rows_per_s`);
* CPU per event: the writers' CPU (threads included: chdb runs in-process) and, for the native
  sink, the server's, in microseconds; the host's load makes wall time noisy, CPU is steadier;
* flush latency: the time a flush (one INSERT per table it sends) takes: the median over rows
  (half the rows were stored by flushes at most this long; the small tables' one-second clock
  sends flushes of a few rows that a plain median would count like batches) and the maximum;
* whether it keeps up with 50,000 scored events/s: sustained at that rate, with the CPU per
  event (writers, server and merges) fitting the machine's cores at that rate.

Writer processes: ``--processes 1,2`` also runs P processes side by side, each with its own
sink and its own shard of the events (event i goes to writer i mod P, as Kafka partitions share
a topic): how the native sink scales with runtime workers (one sink per worker, as the Faust and
Flink runtimes do). chdb allows one process per data directory, so it runs with one writer only.
The workers are forked before any chdb session opens.

The native server is Debian's clickhouse-server 18.16, started on loopback ports for the run
(skipped when it is not installed). Records in bench/RESULTS.md under "sink".

Senders: ``--senders 1,2`` runs the chdb and native sinks with one connection, then with two
inserting each flush's tables side by side (lanes: the scores on one, the ENS and declarations
with their items on the other).

Repeats: ``--repeat 3`` runs each configuration three times, a sink's configurations in turn,
and gives the median run: the machine's speed drifts by a fifth from one spell to the next.

Run: .venv/bin/python bench/sink.py [--hours 8] [--batches 5000,20000,100000] [--processes 1,2] [--senders 1,2]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import pickle
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import cpu_seconds, stat_fields
from results import record

from vigie.operators import ScoringPipeline
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.sinks.base import BufferedSink, BufferPolicy, NativeBlockSink
from vigie.sinks.chdb_sink import ChdbSink
from vigie.sinks.clickhouse_server import ClickHouseServer, server_installed
from vigie.sinks.ddl import COMPACT_PART_BYTES, MODERN, Table
from vigie.sinks.native_sink import NativeSink
from vigie.sinks.views import create_views
from vigie.streams.evaluate import build_detectors

TARGET_EVENTS_PER_S = 50_000
WRITE_EVENTS = 100
"""Events per write() call: small, so that the sink's batch size decides when it flushes."""
MAX_DELAY_S = BufferPolicy().max_delay_s
"""The production clock: the big tables flush by size (a batch fills in well under a second
here), the small ones (alerts, outcomes, excise) by this clock, as in a runtime."""

SINKS = ("null", "native", "chdb")
"""What --sinks names: the encoding alone, the ClickHouse 18.16 server, embedded chdb."""

CHDB_PARTS: dict[str, int | None] = {"compact": COMPACT_PART_BYTES, "clickhouse": None}
"""chdb's part formats (--chdb-parts): the threshold below which a part is written compact."""
CHDB_PART_LABELS = {"clickhouse": "ClickHouse's 10 MiB wide-part threshold"}

Opener = Callable[[str, int, int], BufferedSink]
"""(database name, batch size, senders) -> sink."""


def scored_stream(hours: float, detectors: str) -> list[list[Any]]:
    """Per event, the records it sends to the sink."""
    pipeline = ScoringPipeline(build_detectors(detectors))
    per_event: list[list[Any]] = []
    for event, _ in generate(GeneratorConfig(seed=7, duration_hours=hours)):
        result = pipeline.process(event)
        records: list[Any] = [event, *result.scores, *result.alerts]
        per_event.append(records)
    return per_event


class NullSink(NativeBlockSink):
    """Rows encoded as chdb's sink encodes them (Native blocks), each flush's blocks then
    dropped: the cost of the Python side of the chdb sink, an upper bound for that sink."""

    def __init__(self, batch_size: int) -> None:
        super().__init__(MODERN, _policy(batch_size))

    def _send(self, table: Table, payload: bytes, rows: int, lane: int = 0) -> None:
        pass

    def _disconnect(self) -> None:
        pass

    def query(self, sql: str) -> list[dict[str, Any]]:
        return []


def null_sink(name: str, batch: int, senders: int) -> BufferedSink:
    """A :class:`NullSink` (no database: ``name`` and ``senders`` unused)."""
    return NullSink(batch)


def _policy(batch: int) -> BufferPolicy:
    return BufferPolicy(batch_size=batch, max_delay_s=MAX_DELAY_S, max_buffer_rows=max(100_000, 4 * batch))


@dataclass
class Run:
    """One writer's figures."""

    seconds: float
    cpu_seconds: float
    rows: int
    flushes: list[tuple[float, int]] = field(default_factory=list)
    """(seconds, rows) of each flush."""
    stores: list[tuple[float, int]] = field(default_factory=list)
    """(``time.perf_counter()`` when each flush was stored, its rows), in order."""
    writing_ended: float = 0.0
    """``time.perf_counter()`` when the last write returned, before the final flush."""


@dataclass
class Result:
    """One (sink, processes, batch) measurement."""

    label: str
    processes: int
    senders: int
    batch: int
    events: int
    seconds: float
    rows: int
    writer_cpu: float
    server_cpu: float | None
    flushes: list[tuple[float, int]]
    sustained_rows_per_s: float | None = None

    @property
    def rate(self) -> float:
        """What decides whether the sink keeps up: the sustained rate, or for sharded writers
        (no sustained rate) the whole run's, a lower bound."""
        sustained = self.sustained_events_per_s
        return self.events_per_s if sustained is None else sustained

    @property
    def sustained_events_per_s(self) -> float | None:
        """Scored events per second the store kept up with while the writers wrote."""
        if self.sustained_rows_per_s is None:
            return None
        return self.sustained_rows_per_s * self.events / self.rows

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us_per_event(self) -> float:
        """Writers' plus server's CPU per event, microseconds."""
        return (self.writer_cpu + (self.server_cpu or 0.0)) / self.events * 1e6


def write_all(sink: BufferedSink, per_event: list[list[Any]]) -> Run:
    """Write everything in ``WRITE_EVENTS``-event calls, flush; wall, CPU, rows, flush durations."""
    metrics = sink.metrics
    metrics.recent_flush_seconds.clear()
    metrics.recent_flush_rows.clear()
    metrics.recent_flush_ended.clear()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(per_event), WRITE_EVENTS):
        sink.write([r for records in per_event[i : i + WRITE_EVENTS] for r in records])
    writing_ended = time.perf_counter()
    sink.flush()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    flushes = list(zip(metrics.recent_flush_seconds, metrics.recent_flush_rows, strict=True))
    stores = list(zip(metrics.recent_flush_ended, metrics.recent_flush_rows, strict=True))
    return Run(seconds, cpu, metrics.total_rows_written, flushes, stores, writing_ended)


def sustained_rows_per_s(stores: list[tuple[float, int]], writing_ended: float, batch: int) -> float | None:
    """Rows stored per second between the first and the last size flush stored while the
    writer was still writing; None with fewer than two such flushes.

    ``stores``: (when the flush's last send finished, its rows), in order. A run's own rate
    also counts the start, when the store waits for the first batch, and the end, when the
    writer has stopped and the store finishes the last batch alone: neither happens in a
    stream that goes on. From one stored batch to another, while the writer is still
    encoding, the store and the writer share the cores as they do for good. Size flushes (at
    least an eighth of a batch) are the ends of the window, so the window holds whole batch
    cycles; clock flushes inside it count their rows.

    >>> sustained_rows_per_s([(1.0, 100), (1.2, 5), (2.0, 100), (3.0, 100), (9.0, 100)], 5.0, 100)
    102.5
    """
    during = [(ended, rows) for ended, rows in stores if ended <= writing_ended]
    sizes = [i for i, (_, rows) in enumerate(during) if rows >= batch / 8]
    if len(sizes) < 2:
        return None
    first, last = sizes[0], sizes[-1]
    rows = sum(rows for _, rows in during[first + 1 : last + 1])
    return rows / (during[last][0] - during[first][0])


def row_median(flushes: list[tuple[float, int]]) -> float:
    """The flush duration half the rows saw: the median of (seconds, rows) flushes weighted by rows."""
    half = sum(rows for _, rows in flushes) / 2
    seen = 0
    for seconds, rows in sorted(flushes):
        seen += rows
        if seen >= half:
            return seconds
    return 0.0


def settle_merges(sink: BufferedSink, timeout_s: float = 120.0) -> None:
    """Wait until the store runs no merge of the sink's database: the background merges of a
    run's parts are part of that run's cost, and must not land in the next run's CPU."""
    if isinstance(sink, NullSink):
        return
    database = getattr(sink, "database", "vigie")
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        running = sink.query(f"SELECT count() AS n FROM system.merges WHERE database = '{database}'")[0]["n"]
        quiet = quiet + 1 if int(running) == 0 else 0
        time.sleep(0.2)


def process_cpu(pid: int | None) -> float | None:
    """User plus system CPU seconds of process ``pid`` (all its threads) so far."""
    if pid is None:
        return None
    return cpu_seconds(stat_fields(Path(f"/proc/{pid}/stat")))


def measure_one(
    label: str, opener: Opener, name: str, batch: int, senders: int, per_event: list[list[Any]], pid: int | None
) -> Result:
    """One writer in this process."""
    sink = opener(name, batch, senders)
    try:
        if not isinstance(sink, NullSink):
            create_views(sink.query, sink.profile, getattr(sink, "database", "vigie"))
        server_before = process_cpu(pid)
        run = write_all(sink, per_event)
        cpu = time.process_time()
        settle_merges(sink)  # in the CPU figures, not in the wall time
        run.cpu_seconds += time.process_time() - cpu
        server_after = process_cpu(pid)
    finally:
        sink.close()
    server = None if server_before is None or server_after is None else server_after - server_before
    return Result(
        label,
        1,
        senders,
        batch,
        len(per_event),
        run.seconds,
        run.rows,
        run.cpu_seconds,
        server,
        run.flushes,
        sustained_rows_per_s(run.stores, run.writing_ended, batch),
    )


def intern_field_names(value: Any) -> None:
    """Give unpickled models the interned field names that models a runtime decodes have.

    pickle rebuilds each ``__dict__`` with fresh key strings; the encoder's look-ups by field
    name then compare bytes instead of identities, a cost no runtime pays."""
    if isinstance(value, BaseModel):
        fields = value.__dict__
        object.__setattr__(value, "__dict__", {sys.intern(name): item for name, item in fields.items()})
        for item in fields.values():
            intern_field_names(item)
    elif isinstance(value, list):
        for item in value:
            intern_field_names(item)


# Set before forking: the children inherit the shards and the opener without a pipe.
_SHARED: dict[str, Any] = {}


def _worker(shard: int, name: str, batch: int, senders: int, start: Any, results: Any) -> None:
    # Unpickled here so that the writer owns its records, as a runtime worker does: writing
    # objects inherited from the parent would copy their pages on every reference count change.
    per_event: list[list[Any]] = pickle.loads(_SHARED["shards"][shard])
    intern_field_names(per_event)
    gc.freeze()
    opener: Opener = _SHARED["opener"]
    sink = opener(name, batch, senders)
    try:
        start.wait()
        run = write_all(sink, per_event)
    finally:
        sink.close()
    results.put((shard, run))


def measure_many(
    label: str,
    opener: Opener,
    name: str,
    batch: int,
    senders: int,
    processes: int,
    per_event: list[list[Any]],
    pid: int | None,
) -> Result:
    """``processes`` forked writers, each with its own sink and every ``processes``-th event."""
    context = mp.get_context("fork")
    shards = [pickle.dumps(per_event[k::processes], protocol=pickle.HIGHEST_PROTOCOL) for k in range(processes)]
    _SHARED.update(shards=shards, opener=opener)
    setup = opener(name, batch, 1)  # tables and views exist before the writers race to create them
    if not isinstance(setup, NullSink):
        create_views(setup.query, setup.profile, getattr(setup, "database", "vigie"))
    setup.close()
    start = context.Barrier(processes + 1)
    results = context.Queue()
    workers = [
        context.Process(target=_worker, args=(k, name, batch, senders, start, results)) for k in range(processes)
    ]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    server_before = process_cpu(pid)
    runs = [results.get(timeout=3600)[1] for _ in workers]
    seconds = time.perf_counter() - started
    settling = opener(name, batch, 1)
    try:
        settle_merges(settling)  # the server's merges of these writers' parts count as theirs
    finally:
        settling.close()
    server_after = process_cpu(pid)
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"{label}: a writer exited with code {worker.exitcode}")
    server = None if server_before is None or server_after is None else server_after - server_before
    flushes = [f for run in runs for f in run.flushes]
    writer_cpu = sum(run.cpu_seconds for run in runs)
    rows = sum(run.rows for run in runs)
    # No sustained rate: the writers' stores interleave, and while all of them still write
    # the window is too short to hold whole batch cycles.
    return Result(label, processes, senders, batch, len(per_event), seconds, rows, writer_cpu, server, flushes)


def medians(results: list[Result]) -> list[tuple[Result, list[Result]]]:
    """Each configuration's runs, in the order first measured, with its median run by
    :attr:`Result.rate` (the lower of the two middle ones for an even count)."""
    runs: dict[tuple[str, int, int, int], list[Result]] = {}
    for r in results:
        runs.setdefault((r.label, r.processes, r.senders, r.batch), []).append(r)
    return [(sorted(rs, key=lambda r: r.rate)[(len(rs) - 1) // 2], rs) for rs in runs.values()]


def table_rows(results: list[Result]) -> list[tuple[str, ...]]:
    """One row per configuration: its median run, and with repeats every run's rate."""
    grouped = medians(results)
    repeated = any(len(runs) > 1 for _, runs in grouped)
    header = (
        "sink",
        "writer processes",
        "senders per writer",
        "batch (rows)",
        "rows/s",
        "scored events/s (whole run)",
        "scored events/s sustained (while writing)",
        "CPU us/event (writers + server)",
        "flush p50 (over rows)",
        "flush max",
        f"keeps up with {TARGET_EVENTS_PER_S:,}/s",
    )
    if repeated:
        header += ("sustained (else whole-run) events/s, each run",)
    rows: list[tuple[str, ...]] = [header]
    for r, runs in grouped:
        cpu = f"{r.writer_cpu / r.events * 1e6:,.0f}"
        if r.server_cpu is not None:
            cpu += f" + {r.server_cpu / r.events * 1e6:,.0f}"
        sustained = r.sustained_events_per_s
        verdict = keeps_up(r.rate, r.cpu_us_per_event, os.cpu_count() or 1)
        rows.append(
            (
                r.label,
                str(r.processes),
                str(r.senders),
                f"{r.batch:,}",
                f"{r.rows / r.seconds:,.0f}",
                f"{r.events_per_s:,.0f}",
                "-" if sustained is None else f"{sustained:,.0f}",
                cpu,
                f"{row_median(r.flushes) * 1000:,.0f} ms" if r.flushes else "-",
                f"{max(seconds for seconds, _ in r.flushes) * 1000:,.0f} ms" if r.flushes else "-",
                verdict,
            )
            + ((", ".join(f"{run.rate:,.0f}" for run in runs),) if repeated else ())
        )
    return rows


def keeps_up(rate: float, cpu_us_per_event: float, cores: int) -> str:
    """Whether a sink keeps up with the target for good: the store sustains the rate (scored
    events/s) while the writer writes, and the CPU per event (merges included) fits the
    machine's cores at that rate, so the merges that a short run leaves for later would not
    fall behind.

    >>> keeps_up(61_000.0, 35.0, 2), keeps_up(61_000.0, 45.0, 2), keeps_up(38_000.0, 35.0, 2)
    ('yes', 'no: needs 2.2 cores at this CPU cost, 2 here', 'no: 38,000/s')
    """
    needed = TARGET_EVENTS_PER_S * cpu_us_per_event / 1e6
    if needed > cores:
        return f"no: needs {needed:.1f} cores at this CPU cost, {cores} here"
    if rate < TARGET_EVENTS_PER_S:
        return f"no: {rate:,.0f}/s"
    return "yes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0, help="hours of generated traffic (1,500 arrivals/h)")
    parser.add_argument("--batches", default="5000,20000,100000", help="sink batch sizes (rows), comma-separated")
    parser.add_argument("--processes", default="1,2", help="writer processes for the sharded runs, comma-separated")
    parser.add_argument("--detectors", default="all", help="detectors scoring the stream (as vigie evaluate)")
    parser.add_argument(
        "--senders", default="1,2", help="connections inserting side by side per sink (lanes), comma-separated"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each configuration (each sink's configurations in turn, so a spell of the machine "
        "falls on all of them); the table gives the median run",
    )
    parser.add_argument(
        "--sinks",
        default=",".join(SINKS),
        help=f"sinks to measure, comma-separated, of {', '.join(SINKS)}; a subset is recorded in a section of its own",
    )
    parser.add_argument(
        "--chdb-parts",
        default="compact",
        help="chdb's part formats, comma-separated, of compact (parts below COMPACT_PART_BYTES written compact, "
        "the sink's default) and clickhouse (ClickHouse's own threshold, 10 MiB); run in turn",
    )
    args = parser.parse_args()
    chdb_parts = args.chdb_parts.split(",")
    if not chdb_parts or set(chdb_parts) - set(CHDB_PARTS):
        parser.error(f"--chdb-parts: a comma-separated subset of {', '.join(CHDB_PARTS)}")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    sinks = [name for name in SINKS if name in args.sinks.split(",")]
    if not sinks or set(args.sinks.split(",")) - set(SINKS):
        parser.error(f"--sinks: a comma-separated subset of {', '.join(SINKS)}")
    sender_counts = sorted({int(n) for n in args.senders.split(",")})
    batch_sizes = [int(b) for b in args.batches.split(",")]
    process_counts = sorted({int(p) for p in args.processes.split(",")} - {1})
    load_before = os.getloadavg()[0]

    t = time.perf_counter()
    per_event = scored_stream(args.hours, args.detectors)
    n_events, n_records = len(per_event), sum(len(r) for r in per_event)
    print(f"{n_events:,} events, {n_records:,} records scored in {time.perf_counter() - t:.1f} s")
    # The stream held in memory is the bench's, not the sink's: keep the collector off it.
    gc.freeze()

    results: list[Result] = []

    def report(result: Result) -> None:
        results.append(result)
        r = result
        sustained = "-" if r.sustained_events_per_s is None else f"{r.sustained_events_per_s:,.0f}"
        print(
            f"{r.label:34s} x{r.processes} s{r.senders} batch {r.batch:>7,}: {r.rows / r.seconds:>9,.0f} rows/s "
            f"{r.events_per_s:>8,.0f} events/s ({sustained} sustained), CPU {r.cpu_us_per_event:,.0f} us/event, "
            f"flush p50 {row_median(r.flushes) * 1000:,.0f} ms"
        )

    with tempfile.TemporaryDirectory() as tmp:
        server: ClickHouseServer | None = None
        sharded: list[tuple[str, Opener, int | None]] = []
        if "null" in sinks:
            sharded.append(("no server (rows encoded as Native blocks)", null_sink, None))
        if "native" in sinks and server_installed():
            server = ClickHouseServer(Path(tmp) / "server").start()
            host, port = server.host, server.tcp_port

            def native(name: str, batch: int, senders: int) -> BufferedSink:
                return NativeSink(
                    host,
                    port,
                    name,
                    batch_size=batch,
                    max_delay_s=MAX_DELAY_S,
                    max_buffer_rows=max(100_000, 4 * batch),
                    senders=senders,
                )

            sharded.append(("native, clickhouse-server 18.16", native, server.pid))
        elif "native" in sinks:
            print("clickhouse-server not installed: native sink skipped (deploy/clickhouse/install.sh)")
        try:
            # Forked writers first: no chdb session may be open in a process that forks.
            for label, opener, pid in sharded:
                lanes = sender_counts if opener is not null_sink else [1]
                for run in range(args.repeat):
                    for senders in lanes:
                        for batch in batch_sizes:
                            name = f"bench_{batch}_1_{senders}_{run}"
                            report(measure_one(label, opener, name, batch, senders, per_event, pid))
                    for processes in process_counts:
                        batch, senders = max(batch_sizes), max(lanes)
                        name = f"bench_{batch}_{processes}_{senders}_{run}"
                        report(measure_many(label, opener, name, batch, senders, processes, per_event, pid))
            if server is not None:  # its merges and caches would compete with chdb for the cores
                server.close()
                server = None

            def chdb_opener(parts: str) -> Opener:
                def chdb(name: str, batch: int, senders: int) -> BufferedSink:
                    return ChdbSink(
                        Path(tmp) / "chdb",
                        database=name,
                        batch_size=batch,
                        max_delay_s=MAX_DELAY_S,
                        max_buffer_rows=max(100_000, 4 * batch),
                        senders=senders,
                        compact_part_bytes=CHDB_PARTS[parts],
                    )

                return chdb

            for run in range(args.repeat if "chdb" in sinks else 0):
                for parts in chdb_parts:
                    label = "chdb (embedded 26.9)" + ("" if parts == "compact" else f", {CHDB_PART_LABELS[parts]}")
                    for senders in sender_counts:
                        for batch in batch_sizes:
                            name = f"bench_{batch}_{senders}_{parts}_{run}"
                            report(measure_one(label, chdb_opener(parts), name, batch, senders, per_event, None))
        finally:
            if server is not None:
                server.close()

    rows_per_event = results[0].rows / n_events if results else 0.0
    sizes = ",".join(map(str, batch_sizes))
    subset = "" if sinks == list(SINKS) else f" --sinks {','.join(sinks)}"
    record(
        "sink"
        + ("" if not subset else f", {' and '.join(sinks)} only")
        + (", chdb part formats" if len(chdb_parts) > 1 and "chdb" in sinks else ""),
        command=(
            f".venv/bin/python bench/sink.py --hours {args.hours:g} --batches {sizes} "
            f"--processes {args.processes} --detectors {args.detectors} --senders {args.senders}{subset}"
            + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
            + (f" --chdb-parts {args.chdb_parts}" if chdb_parts != ["compact"] and "chdb" in sinks else "")
        ),
        table=table_rows(results),
        notes=[
            f"{n_events:,} scored events = {n_records:,} records = {rows_per_event:.2f} table rows per event "
            f"(items, scores of the detectors '{args.detectors}' and alerts); {datetime.now(UTC):%Y-%m-%d}, "
            f"Python {platform.python_version()}, {platform.processor() or platform.machine()}.",
            "Columnar sinks: each value is encoded into ClickHouse Native columns as it is written (a "
            "Cython encoder; JSON documents in orjson calls of 4,096 at flush), a flush joins each table's buffers "
            "into one block: chdb reads it with FORMAT Native, the native server as the insert's data packet "
            "(clickhouse-driver opens the insert). Payloads are sent on the sink's sender thread while the "
            "writer goes on; the last flush waits for every send. Senders per writer: connections (chdb "
            "sessions) that insert one flush's tables side by side, a table with its item tables on one of "
            "them (vigie.sinks.base.assign_lanes). 100 events' records per write; a size flush "
            "sends the tables holding an eighth of a batch (scores, ENS and declarations with their items), "
            f"the others go by the production {MAX_DELAY_S:g} s clock; indicator and materialised views in "
            "place. 'no server': chdb's encoding, each flush's blocks dropped. chdb's tables write parts below "
            f"{COMPACT_PART_BYTES >> 20} MiB compact unless the row names another threshold "
            "(vigie.sinks.ddl.COMPACT_PART_BYTES: one file for all "
            "columns, 12 files a part instead of 69 for a wide scores part).",
            "Scored events/s, whole run: all events / time from the first write to the last flush stored, "
            "including the start (the store idle until the first batch is encoded) and the end (the writer "
            "done, the store finishing the last batch alone). Sustained: rows stored per second between the "
            "first and the last batch stored while the writer was still writing, divided by the rows per "
            "event; a stream that goes on has neither start nor end (bench/sink.py sustained_rows_per_s). "
            f"Keeps up: sustained >= {TARGET_EVENTS_PER_S:,}/s (sharded writers: the whole run's rate, their "
            "stores interleave and leave no window of whole batches) and the CPU per event, merges included, "
            "fits this machine's cores at that rate.",
            "CPU us/event: writer processes (chdb's own threads included) + the server process "
            "(/proc/PID/stat), per scored event, including the background merges of the run's parts (each "
            "run waits until system.merges is empty for its database, outside its wall time); a core of this "
            "machine gives 1,000,000 us/s, so "
            f"'needs N cores' = {TARGET_EVENTS_PER_S:,} x CPU us/event / 1e6. On {os.cpu_count()} cores, "
            f"{TARGET_EVENTS_PER_S:,} events/s leaves {os.cpu_count() * 1e6 / TARGET_EVENTS_PER_S:,.0f} us of "
            "CPU per event for writers and store together (and nothing for scoring).",
            "Writer processes > 1: each its own sink and every P-th event (as Kafka partitions), forked, its "
            "shard unpickled in the child (records of its own, field names interned, as a runtime worker "
            "has), started together; "
            "events/s = all events / time until the last writer flushed. chdb: one process per data "
            "directory, so one writer.",
            *(
                [
                    f"Each configuration run {args.repeat} times, each sink's configurations in turn (a spell of "
                    "the machine falls on all of them); each row is the configuration's median run by the rate "
                    "that decides (sustained, else whole-run), the last column every run's."
                ]
                if args.repeat > 1
                else []
            ),
            *(
                [
                    "chdb part formats: each repeat runs every configuration with the sink's compact parts "
                    f"(below {COMPACT_PART_BYTES >> 20} MiB), then with ClickHouse's own threshold (10 MiB: the "
                    "inserts' parts wide, two to four files a column)."
                ]
                if len(chdb_parts) > 1 and "chdb" in sinks
                else []
            ),
            f"{os.cpu_count()} cores shared with other jobs, the server included (1-minute load average "
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end): wall-time rates are lower "
            "bounds and vary between runs; CPU per event is the steadier figure.",
        ],
    )


if __name__ == "__main__":
    main()
