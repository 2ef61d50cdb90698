"""Memory over a long run: peak RSS and learned-state size while streaming millions of events.

Streams a seeded generated stream lazily (the generator emits it in 6-hour blocks; nothing is
held but the events pending in its heap) through one :class:`ScoringPipeline` (every
detector available, learned fusion, every generator outcome fed back as a label) and samples, every
``--every`` events: the process's resident memory, its peak, the size of the checkpoint
(``state_dict`` as JSON) and the number of keys in each part of the state. Bounded state shows
as a plateau once the stream is longer than the longest retention (ENS kept 4 days after
arrival, labels awaited 3 days, idle consignees forgotten after 60 days).

Prints the samples and records them in bench/RESULTS.md under "memory".

Run: .venv/bin/python bench/memory.py [--events 5000000] [--every 500000] [--rate 1500]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import record

from vigie.operators import ScoringPipeline
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.streams.evaluate import build_detectors

EVENTS_PER_CONSIGNMENT_HOUR = 73_026 / (24 * 1500)
"""Events per consignment-hour of the default generator (measured on seed 7, 24 h)."""


def rss_mb() -> float:
    """Current resident set size, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def key_counts(pipeline: ScoringPipeline) -> dict[str, int]:
    counts = {f"store:{name}": len(store) for name, store in pipeline.stores.items()}
    counts["ens registry"] = len(pipeline.ens.arrivals)
    counts["awaiting labels"] = len(pipeline.labels)
    counts["office queues"] = sum(len(q.raised) for q in pipeline.queues.values())
    counts["deadline wake-ups"] = pipeline.timers.pending if pipeline.timers is not None else 0
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--every", type=int, default=500_000)
    parser.add_argument("--rate", type=float, default=1500.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--detectors", default="all", help="'all' (every detector available), 'default' or a list")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    hours = min(8784.0, math.ceil(args.events / (EVENTS_PER_CONSIGNMENT_HOUR * args.rate) * 1.05))
    config = GeneratorConfig(seed=args.seed, duration_hours=hours, rate_per_hour=args.rate)
    pipeline = ScoringPipeline(build_detectors(args.detectors))
    samples: list[tuple[str, ...]] = []
    started = time.perf_counter()
    base_rss = rss_mb()
    n = 0
    print(f"streaming up to {args.events:,} events ({hours:g} h at {args.rate:g}/h); RSS {base_rss:.0f} MiB")
    header = (
        "events",
        "stream days",
        "RSS MiB",
        "peak RSS MiB",
        "checkpoint MiB",
        "ENS registry",
        "awaiting labels",
        "deadline wake-ups pending",
        "detector keys",
        "events/s so far",
    )

    rate = f"{args.rate:g}"

    def save(final: bool) -> None:
        elapsed = time.perf_counter() - started
        progress = "complete" if final else f"in progress ({n:,} of {args.events:,} events so far)"
        record(
            "memory",
            command=f".venv/bin/python bench/memory.py --events {args.events} --every {args.every} --rate {rate}",
            table=[header, *samples],
            notes=[
                f"Run {progress}: generated events streamed lazily (seed {args.seed}, {hours:g} h of arrivals at "
                f"{args.rate:g} consignments/h) through a ScoringPipeline (detectors: "
                f"{', '.join(d.name for d in pipeline.detectors)}; learned fusion), every generator outcome fed back.",
                "checkpoint MiB: size of the JSON state_dict (River models as base64 pickles); RSS after gc.collect(), "
                "and it includes the generator's own heap of pending events (about 300-400 MiB at this rate).",
                f"RSS before streaming: {base_rss:.0f} MiB. Retentions: ENS 4 days after ETA, labels awaited 3 days "
                "(an ENS: 2 days after its ETA), idle consignees and groups 60 days; excise keys: "
                "an ENS's 7 days after its ETA, an import's or consignor's 36 days after its last record, "
                "operators 1 year; deadline wake-ups: one per e-AD until its receipt deadline (6 days) and the "
                "1 h allowance have passed.",
                f"{datetime.now(UTC):%Y-%m-%d}, {elapsed:,.0f} s wall, Python {platform.python_version()}, "
                "one process, 2 cores shared with other jobs (events/s is not a speed benchmark).",
            ],
        )

    for event, _ in generate(config):
        pipeline.process(event)
        n += 1
        if n % args.every == 0 or n == args.events:
            gc.collect()
            t = time.perf_counter()
            state_bytes = len(orjson.dumps(pipeline.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
            dump_s = time.perf_counter() - t
            counts = key_counts(pipeline)
            elapsed = time.perf_counter() - started
            stream_days = (pipeline.watermark - config.start).total_seconds() / 86_400
            row = (
                f"{n:,}",
                f"{stream_days:.1f}",
                f"{rss_mb():,.0f}",
                f"{peak_rss_mb():,.0f}",
                f"{state_bytes / 2**20:,.1f}",
                f"{counts['ens registry']:,}",
                f"{counts['awaiting labels']:,}",
                f"{counts['deadline wake-ups']:,}",
                ", ".join(f"{k.removeprefix('store:')} {v:,}" for k, v in counts.items() if k.startswith("store:")),
                f"{n / elapsed:,.0f}",
            )
            samples.append(row)
            print(" | ".join(row), f"(state dump {dump_s:.1f} s)", flush=True)
            if not args.no_record and n < args.events:
                save(final=False)  # a run stopped early still leaves its figures
        if n >= args.events:
            break
    elapsed = time.perf_counter() - started
    print(f"{n:,} events in {elapsed:,.0f} s; peak RSS {peak_rss_mb():,.0f} MiB")
    if not args.no_record:
        save(final=True)


if __name__ == "__main__":
    main()
