"""In-process pipeline throughput, per core: decode, score, sink.

Generates a seeded stream once, encodes it to JSON lines in memory, then times each stage
on one process: decoding only; decoding + scoring (all default detectors, fusion, alerts);
and the whole path into embedded ClickHouse (chdb), which is what `vigie run` does.
Prints the figures and records them in bench/RESULTS.md under "pipeline".

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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import record

from vigie.operators import ScoringPipeline
from vigie.schemas import decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.sinks.chdb_sink import ChdbSink
from vigie.streams.runner import InProcessRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rate", type=float, default=1500.0)
    args = parser.parse_args()

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

    with tempfile.TemporaryDirectory() as tmp:
        sink = ChdbSink(Path(tmp) / "ch")
        runner = InProcessRunner(ScoringPipeline(), sink)
        t = time.perf_counter()
        summary = runner.run("bench", iter(lines))
        end_to_end_s = time.perf_counter() - t
        sink.close()

    rows = [
        ("decode (pydantic, strict)", n / decode_s),
        ("score (all detectors, fusion, alerts)", n / score_s),
        ("decode + score", n / (decode_s + score_s)),
        ("end to end into chdb (`vigie run` path)", n / end_to_end_s),
    ]
    for name, rate in rows:
        print(f"{name:45s} {rate:>10,.0f} events/s")
    print(f"scores {summary.scores:,}, alerts {summary.alerts:,}")
    record(
        "pipeline",
        command=f".venv/bin/python bench/pipeline.py --hours {args.hours:g} --rate {args.rate:g}",
        table=[("stage", "events/s (one process)")] + [(name, f"{rate:,.0f}") for name, rate in rows],
        notes=[
            f"{n:,} events ({summary.scores:,} scores, {summary.alerts:,} alerts), "
            f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, "
            f"{platform.processor() or platform.machine()}",
            "One Python process; chdb inserts may use its own threads.",
            "Measured while other test jobs shared the 2 cores: figures are lower bounds.",
        ],
    )


if __name__ == "__main__":
    main()
