"""In-process pipeline throughput, per core: decode, score, sink; and a plain River + pydantic reference.

Generates a seeded stream once, encodes it to JSON lines in memory, then times on one process:
decoding only; scoring with the default detectors (what `vigie run` runs); the issue's end to
end figure, parse + all five detectors + learned fusion + the sink buffer (the ClickHouse sinks'
write path without the database: records encoded into Native blocks as written, flushed and
dropped, :class:`EncodingSink`); the same for the reference pipeline built from plain
River estimators and pydantic models (bench/reference.py) in the same run; and the whole path
into embedded ClickHouse (chdb) as `vigie run` does it. Prints the figures and records them in
bench/RESULTS.md under "pipeline".

Run: .venv/bin/python bench/pipeline.py [--hours 24] [--rate 1500]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference import ReferencePipeline
from results import record

from vigie.operators import ScoringPipeline, all_detectors
from vigie.schemas import decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.sinks.base import BufferPolicy, NativeBlockSink
from vigie.sinks.chdb_sink import ChdbSink
from vigie.sinks.ddl import MODERN, Table
from vigie.streams.runner import RUNNER_GC_THRESHOLDS, WRITE_BATCH, InProcessRunner, tune_garbage_collector


class EncodingSink(NativeBlockSink):
    """The ClickHouse sinks' write path without the database: what `vigie run` does with a record
    up to the insert.

    Records are encoded into ``Native`` column blocks as they are written (as the chdb and
    native-protocol sinks do, with the chdb sink's flush policy and the modern server's column
    types), a flush joins each table's block, and :meth:`_send`, which would store it, lets it
    go (the sink's own metrics count the rows). Writing per record batch as the in-process runner does
    (``WRITE_BATCH`` events) is :meth:`extend`.
    """

    def __init__(self) -> None:
        super().__init__(MODERN, BufferPolicy(), background=False)
        self.records = 0
        self._records_waiting: list[Any] = []
        self._events = 0

    def extend(self, records: Any) -> None:
        """One event's records (the event, its scores, its alerts): written every ``WRITE_BATCH`` events."""
        self._records_waiting.extend(records)
        self._events += 1
        if self._events % WRITE_BATCH == 0:
            self.drain()

    def drain(self) -> None:
        """Write what is pending and flush it."""
        self.records += len(self._records_waiting)
        self.write(self._records_waiting)
        self._records_waiting = []
        self.flush()

    def _send(self, table: Table, payload: Any, rows: int) -> None:
        pass

    def _disconnect(self) -> None:
        pass

    def query(self, sql: str) -> list[dict[str, Any]]:
        raise RuntimeError("an EncodingSink has no database to query")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rate", type=float, default=1500.0)
    args = parser.parse_args()
    tune_garbage_collector(RUNNER_GC_THRESHOLDS)  # as `vigie run` does; both pipelines gain

    config = GeneratorConfig(seed=7, duration_hours=args.hours, rate_per_hour=args.rate)
    t = time.perf_counter()
    lines = [encode_event(event) for event, _ in generate(config)]
    generation = time.perf_counter() - t
    n = len(lines)
    print(f"{n:,} events generated in {generation:.1f} s ({n / generation:,.0f} events/s)")

    t = time.perf_counter()
    events = [decode_event(raw) for raw in lines]
    decode_s = time.perf_counter() - t

    pipeline = ScoringPipeline()
    t = time.perf_counter()
    for event in events:
        pipeline.process(event)
    score_s = time.perf_counter() - t

    def vigie_all(raw: bytes, sink: EncodingSink, pipeline: ScoringPipeline) -> None:
        event = decode_event(raw)
        result = pipeline.process(event)
        sink.extend([event, *result.scores, *result.alerts])

    full = ScoringPipeline(all_detectors())
    sink = EncodingSink()
    t = time.perf_counter()
    for raw in lines:
        vigie_all(raw, sink, full)
    sink.drain()
    full_s = time.perf_counter() - t
    full_records = sink.records

    reference = ReferencePipeline(EncodingSink())
    t = time.perf_counter()
    for raw in lines:
        reference.process(decode_event(raw))
    reference.buffer.drain()
    reference_s = time.perf_counter() - t
    reference_records = reference.buffer.records

    with tempfile.TemporaryDirectory() as tmp:
        sink = ChdbSink(Path(tmp) / "ch")
        runner = InProcessRunner(ScoringPipeline(), sink)
        t = time.perf_counter()
        summary = runner.run("bench", iter(lines))
        end_to_end_s = time.perf_counter() - t
        sink.close()

    rows = [
        ("decode (pydantic, strict)", n / decode_s),
        ("score, default detectors (all five), learned fusion, events decoded before", n / score_s),
        ("parse + all five detectors + learned fusion + sink buffer (Native encoding)", n / full_s),
        ("reference: parse + plain River estimators + pydantic scores + the same sink buffer", n / reference_s),
        ("end to end into chdb (`vigie run` path, all five detectors, learned fusion)", n / end_to_end_s),
    ]
    for name, rate in rows:
        print(f"{name:45s} {rate:>10,.0f} events/s")
    print(f"scores {summary.scores:,}, alerts {summary.alerts:,}")
    ratio = reference_s / full_s
    print(f"Vigie (all detectors) / reference: {ratio:.2f}x")
    record(
        "pipeline",
        command=f".venv/bin/python bench/pipeline.py --hours {args.hours:g} --rate {args.rate:g}",
        table=[("stage", "events/s (one process)")] + [(name, f"{rate:,.0f}") for name, rate in rows],
        notes=[
            f"{n:,} events ({summary.scores:,} scores, {summary.alerts:,} alerts), "
            f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, "
            f"{platform.processor() or platform.machine()}",
            f"Vigie, all five detectors, against the plain River + pydantic reference in the same run: "
            f"{ratio:.2f}x ({full_records:,} vs {reference_records:,} records written; the reference computes "
            "cruder signals, see bench/reference.py). Targets: 50,000 events/s and 4x the reference.",
            "One Python process, garbage collector tuned as `vigie run` tunes it (vigie.streams.runner."
            "RUNNER_GC_THRESHOLDS, for both pipelines); chdb inserts may use its own threads.",
            "The machine's speed varies by up to 40% between runs (README): compare pipelines within one run.",
        ],
    )


if __name__ == "__main__":
    main()
