"""A digest of everything the default pipeline outputs, and where its time goes, for speed work.

Scores a seeded stream with the default pipeline (all five detectors, learned fusion) and
hashes every score (reason text and fields included), every alert, every fused probability
and the final ``state_dict()`` (the checkpoint format). A change meant only to make the
engine faster must leave the digest unchanged: run this before and after and compare. It
also prints the time per event of each detector and of the rest (pipeline glue and fusion).

Nothing is recorded in bench/RESULTS.md: the digest depends on the code's outputs, so it is
a before/after check, not a figure.

The run keeps every result, so the garbage collector's passes grow with the heap and land in
whichever part happens to allocate: with it on (as the runtimes tune it), a change in one part
can move time into another part's figure. ``--no-gc`` disables it for the run, for per-part
figures that follow the code (2026-11-23: excise read 13 then 25 us/event with the collector
on across a glue-only change, 9.1 then 8.3 with it off).

``--decoded`` scores the events as every runtime gets them, encoded to JSON and decoded: the
digest must be the same, and the times show what decoded objects cost (until 2026-11-23
their times carried pydantic's ``TzInfo``, which made scoring them a tenth slower than
scoring the generator's own objects).

Run: .venv/bin/python bench/digest.py [--hours 8] [--no-state] [--no-gc] [--decoded]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import time
from typing import Any

import orjson

from vigie.operators.pipeline import ScoringPipeline
from vigie.schemas import decode_event, encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.streams.runner import tune_garbage_collector


def timed(detector: Any, totals: dict[str, float]) -> None:
    """Wrap ``detector.process`` so that its wall time adds up in ``totals[detector.name]``."""
    process = detector.process

    def wrapper(event: Any, store: Any) -> Any:
        began = time.perf_counter()
        try:
            return process(event, store)
        finally:
            totals[detector.name] += time.perf_counter() - began

    detector.process = wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0, help="hours of generated traffic (1,500 arrivals/h)")
    parser.add_argument("--no-state", action="store_true", help="leave the final state out of the digest")
    parser.add_argument("--no-gc", action="store_true", help="disable the garbage collector (steadier per-part times)")
    parser.add_argument(
        "--decoded", action="store_true", help="score the events as the runtimes get them: encoded, then decoded"
    )
    args = parser.parse_args()

    if args.no_gc:
        gc.disable()
    else:
        tune_garbage_collector()
    events = [event for event, _ in generate(GeneratorConfig(seed=7, duration_hours=args.hours, rate_per_hour=1500))]
    if args.decoded:
        events = [decode_event(encode_event(event)) for event in events]
    pipeline = ScoringPipeline()
    totals = {detector.name: 0.0 for detector in pipeline.detectors}
    for detector in pipeline.detectors:
        timed(detector, totals)

    began = time.perf_counter()
    results = [pipeline.process(event) for event in events]
    elapsed = time.perf_counter() - began

    digest = hashlib.sha256()
    for result in results:
        for score in result.scores:
            digest.update(encode_event(score))
        for alert in result.alerts:
            digest.update(encode_event(alert))
        digest.update(repr(result.fused_risk).encode())
    if not args.no_state:
        digest.update(orjson.dumps(pipeline.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_SORT_KEYS))

    n = len(events)
    scores = sum(len(r.scores) for r in results)
    alerts = sum(len(r.alerts) for r in results)
    print(f"events {n:,}  scores {scores:,}  alerts {alerts:,}")
    print(f"digest {digest.hexdigest()}")
    print(f"total {elapsed / n * 1e6:.1f} us/event ({n / elapsed:,.0f} events/s)")
    for name, seconds in totals.items():
        print(f"  {name:22s} {seconds / n * 1e6:6.1f} us/event")
    print(f"  {'pipeline glue + fusion':22s} {(elapsed - sum(totals.values())) / n * 1e6:6.1f} us/event")


if __name__ == "__main__":
    main()
