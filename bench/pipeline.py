"""In-process pipeline throughput, per core: decode, score, sink; and a plain River + pydantic reference.

Generates a seeded stream once, encodes it to JSON lines in memory, then times on one process:
decoding only; scoring with the default detectors (what `vigie run` runs); the issue's end to
end figure, parse + all five detectors + learned fusion + the sink buffer (records appended,
as a sink holds them until it flushes 20,000, then let go); the same for the reference pipeline built from plain
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
from vigie.sinks.chdb_sink import ChdbSink
from vigie.streams.runner import InProcessRunner, tune_garbage_collector

SINK_BATCH_ROWS = 20_000
"""Records a sink holds before it flushes them (``bench/sink.py`` measures 20,000 to 100,000)."""


class SinkBuffer:
    """Records held as a sink holds them until it flushes ``batch`` of them, then let go.

    A sink encodes each record as it is written and sends a batch per flush, so no record stays
    alive for the whole run. A list kept to the end would not stand for that: the garbage
    collector would walk every record of the run again at each of its full collections.
    """

    def __init__(self, batch: int = SINK_BATCH_ROWS) -> None:
        self.batch = batch
        self.rows: list[Any] = []
        self.flushed = 0

    def append(self, record: Any) -> None:
        self.rows.append(record)

    def extend(self, records: Any) -> None:
        self.rows.extend(records)
        if len(self.rows) >= self.batch:
            self.flushed += len(self.rows)
            self.rows = []

    def __len__(self) -> int:
        return self.flushed + len(self.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rate", type=float, default=1500.0)
    args = parser.parse_args()
    tune_garbage_collector()  # as `vigie run`, the Faust worker and the Flink job do; both pipelines gain

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

    def vigie_all(raw: bytes, buffer: SinkBuffer, pipeline: ScoringPipeline) -> None:
        event = decode_event(raw)
        result = pipeline.process(event)
        buffer.append(event)
        buffer.extend(result.scores)
        buffer.extend(result.alerts)

    full = ScoringPipeline(all_detectors())
    buffer = SinkBuffer()
    t = time.perf_counter()
    for raw in lines:
        vigie_all(raw, buffer, full)
    full_s = time.perf_counter() - t
    full_records = len(buffer)

    reference = ReferencePipeline(SinkBuffer())
    t = time.perf_counter()
    for raw in lines:
        reference.process(decode_event(raw))
    reference_s = time.perf_counter() - t
    reference_records = len(reference.buffer)

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
        ("parse + all five detectors + learned fusion + sink buffer", n / full_s),
        ("reference: parse + plain River estimators + pydantic scores + buffer", n / reference_s),
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
            f"{ratio:.2f}x ({full_records:,} vs {reference_records:,} records buffered; the reference computes "
            "cruder signals, see bench/reference.py). Targets: 50,000 events/s and 4x the reference.",
            "One Python process, garbage collector tuned as the runtimes tune it (vigie.streams.runner."
            "tune_garbage_collector, for both pipelines); chdb inserts may use its own threads.",
            "The machine's speed varies by up to 40% between runs (README): compare pipelines within one run.",
        ],
    )


if __name__ == "__main__":
    main()
