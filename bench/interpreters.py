"""CPU per event of decoding and scoring under different builds of CPython 3.11.

Every interpreter runs the same code: this environment's site-packages and compiled operators,
added to the child with ``site.addsitedir`` (builds of one CPython minor version share its
ABI), on the same generated lines. They take turns, ``--rounds`` times, so a slow spell of the
machine falls on all of them; each stage's figure is an interpreter's best round (CPU time of
the child, what one dedicated core would do) and the table also gives its median.

Why: the engine spends about 70% of its time in the interpreter itself (perf), so how the
interpreter was compiled (profile-guided and link-time optimisation, a static or a shared
libpython) shows directly in the rate. The Makefile builds the environment from the one
that wins here.

    .venv/bin/python bench/interpreters.py --hours 8 --rounds 5 \
        /usr/bin/python3.11 ~/.pyenv/versions/3.11.7/bin/python3.11
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import site
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STAGES = ("decode", "score", "runner")
"""Decoding (pydantic, strict), scoring decoded events in the runner's batches (``process_all``),
and the runner end to end with the sink's Native encoding (``bench/pipeline.py``'s stages)."""


def describe(executable: str) -> str:
    """An interpreter's version and how its ``python`` links libpython, as it reports them."""
    code = "import platform, sys; print(platform.python_version(), sys.version.split('[')[-1].rstrip(']'))"
    version = subprocess.run([executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    linked = "shared libpython" if _links_libpython(executable) else "libpython linked in"
    return f"{executable}: Python {version}, {linked}"


def _links_libpython(executable: str) -> bool:
    """True when the executable loads libpython as a shared library (``ldd`` lists it)."""
    try:
        out = subprocess.run(["ldd", os.path.realpath(executable)], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "libpython" in out


def median_and_best(values: list[float]) -> tuple[float, float]:
    """The median and the smallest of ``values`` (microseconds per event: smaller is better).

    >>> median_and_best([30.0, 10.0, 20.0])
    (20.0, 10.0)
    """
    return statistics.median(values), min(values)


def child(lines_path: str, sitedir: str) -> None:
    """Time the three stages on the lines in ``lines_path``; print microseconds per event as JSON."""
    site.addsitedir(sitedir)
    sys.path.insert(0, str(BENCH))
    from pipeline import EncodingSink  # bench/pipeline.py: the sink's Native encoding, no store

    from vigie.operators import ScoringPipeline, all_detectors
    from vigie.schemas import decode_event
    from vigie.streams.runner import DECODE_BATCH, RUNNER_GC_THRESHOLDS, InProcessRunner, tune_garbage_collector

    tune_garbage_collector(RUNNER_GC_THRESHOLDS)
    lines = Path(lines_path).read_bytes().splitlines()
    n = len(lines)

    def cpu(work: object) -> float:
        gc.collect()
        started = time.process_time()
        work()  # type: ignore[operator]
        return (time.process_time() - started) / n * 1e6

    events: list[object] = []
    decode = cpu(lambda: events.extend(decode_event(raw) for raw in lines))

    def score() -> None:
        pipeline = ScoringPipeline()
        for start in range(0, n, DECODE_BATCH):
            pipeline.process_all(events[start : start + DECODE_BATCH])

    scored = cpu(score)
    runner = cpu(lambda: InProcessRunner(ScoringPipeline(all_detectors()), EncodingSink()).run("bench", iter(lines)))
    print(json.dumps({"decode": decode, "score": scored, "runner": runner, "events": n}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("interpreters", nargs="*", help="python executables (default: this one)")
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=1500.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", metavar="LINES", help=argparse.SUPPRESS)
    parser.add_argument("--sitedir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sitedir)
        return

    from results import record

    from vigie.schemas import encode_event
    from vigie.schemas.generator import GeneratorConfig, generate

    interpreters = args.interpreters or [sys.executable]
    sitedir = sysconfig.get_paths()["purelib"]
    config = GeneratorConfig(seed=7, duration_hours=args.hours, rate_per_hour=args.rate)
    runs: dict[str, dict[str, list[float]]] = {i: {s: [] for s in STAGES} for i in interpreters}
    with tempfile.TemporaryDirectory() as tmp:
        lines_path = Path(tmp) / "lines.jsonl"
        lines_path.write_bytes(b"".join(encode_event(event) + b"\n" for event, _ in generate(config)))
        events = 0
        for round_ in range(args.rounds):
            for interpreter in interpreters:
                command = [interpreter, __file__, "--child", str(lines_path), "--sitedir", sitedir]
                out = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
                events = out["events"]
                for stage in STAGES:
                    runs[interpreter][stage].append(out[stage])
                figures = ", ".join(f"{s} {out[s]:.1f}" for s in STAGES)
                print(f"round {round_ + 1} {interpreter}: {figures} us/event", flush=True)

    header = ("interpreter", *(f"{s} us/event, best (median)" for s in STAGES), "runner events/s (best)")
    table: list[tuple[str, ...]] = [header]
    for interpreter in interpreters:
        cells = []
        for stage in STAGES:
            median, best = median_and_best(runs[interpreter][stage])
            cells.append(f"{best:.1f} ({median:.1f})")
        table.append((describe(interpreter), *cells, f"{1e6 / min(runs[interpreter]['runner']):,.0f}"))
    for row in table:
        print(" | ".join(row))
    record(
        "interpreters",
        command=f".venv/bin/python bench/interpreters.py --hours {args.hours:g} --rounds {args.rounds} "
        + " ".join(interpreters),
        table=table,
        notes=[
            f"{events:,} events, {datetime.now(UTC):%Y-%m-%d}, {platform.processor() or platform.machine()}; "
            f"each interpreter runs this environment's packages and compiled operators ({sitedir}), "
            f"{args.rounds} rounds in turn; CPU time of each child per event.",
            "Stages: decode = pydantic's strict validation of each line; score = the five detectors and the "
            "learned fusion on decoded events, process_all on the runner's batches; runner = `vigie run`'s "
            "in-process runner end to end with the sink's Native encoding and no store (bench/pipeline.py).",
        ],
    )


if __name__ == "__main__":
    main()
