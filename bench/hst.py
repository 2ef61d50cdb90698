"""Half-Space Trees: River's pure-Python implementation against the Cython one, same stream.

Both models get the same seeded stream of 50k events with 8 features in [0, 1] (clusters
plus 3 % scattered outliers) and, for each event, score it then learn it. The Cython model
is timed three ways: one call per event on a row of a float64 array; one call per event
including turning River's dict into that array (what a Python operator pays); and one
``score_learn_many`` call over the whole batch. The scores are checked to be identical to
River's. Prints the rates and ratios and records them in bench/RESULTS.md under "hst".

Run: .venv/bin/python bench/hst.py [--events 50000] [--trees 10] [--height 8] [--window 250]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from river.anomaly import HalfSpaceTrees as RiverHST

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import record

from vigie.operators._hst import HalfSpaceTrees

FEATURES = [f"f{i}" for i in range(8)]


def _stream(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.random((5, len(FEATURES)))
    X = centres[rng.integers(0, 5, n)] + rng.normal(0, 0.05, (n, len(FEATURES)))
    outliers = rng.random(n) < 0.03
    X[outliers] = rng.random((int(outliers.sum()), len(FEATURES)))
    return np.ascontiguousarray(np.clip(X, 0.0, 1.0))


def _timed(run: Callable[[], list[float]], repeat: int) -> tuple[float, list[float]]:
    """Best wall time over ``repeat`` runs, and the scores of the last one."""
    best, scores = float("inf"), []
    for _ in range(repeat):
        t = time.perf_counter()
        scores = run()
        best = min(best, time.perf_counter() - t)
    return best, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--trees", type=int, default=10)
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument("--window", type=int, default=250)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    params = {"n_trees": args.trees, "height": args.height, "window_size": args.window, "seed": args.seed}

    load = os.getloadavg()[0]
    X = _stream(args.events)
    dicts = [dict(zip(FEATURES, row.tolist(), strict=True)) for row in X]
    rows = list(X)

    def river() -> list[float]:
        model = RiverHST(**params)
        out = []
        for x in dicts:
            out.append(model.score_one(x))
            model.learn_one(x)
        return out

    def per_event() -> list[float]:
        model = HalfSpaceTrees(FEATURES, **params)
        out = []
        for x in rows:
            out.append(model.score_one(x))
            model.learn_one(x)
        return out

    def per_event_from_dict() -> list[float]:
        model = HalfSpaceTrees(FEATURES, **params)
        out = []
        for d in dicts:
            x = model.vector(d)
            out.append(model.score_one(x))
            model.learn_one(x)
        return out

    def batch() -> list[float]:
        return HalfSpaceTrees(FEATURES, **params).score_learn_many(X).tolist()

    t_river, expected = _timed(river, 1)
    results = {"river.anomaly.HalfSpaceTrees, dict per event": t_river}
    for label, run in (
        ("Cython, score_one + learn_one per event (array row)", per_event),
        ("Cython, per event incl. dict -> array (vector)", per_event_from_dict),
        ("Cython, score_learn_many (one batch)", batch),
    ):
        seconds, scores = _timed(run, 3)
        if scores != expected:
            raise SystemExit(f"{label}: scores differ from River's")
        results[label] = seconds

    n = args.events
    table: list[tuple[str, ...]] = [("implementation", "events/s (score + learn)", "us/event", "speed-up vs River")]
    for label, seconds in results.items():
        table.append((label, f"{n / seconds:,.0f}", f"{1e6 * seconds / n:.2f}", f"{t_river / seconds:.1f}x"))
    width = max(len(row[0]) for row in table)
    for row in table:
        print(f"{row[0]:<{width}}  {row[1]:>26}  {row[2]:>9}  {row[3]:>18}")

    options = {"events": n, "trees": args.trees, "height": args.height, "window": args.window}
    command = "python bench/hst.py" + "".join(f" --{k} {v}" for k, v in options.items())
    record(
        "hst",
        command,
        table,
        notes=[
            f"{n:,} events, {len(FEATURES)} features, {args.trees} trees of height {args.height}, "
            f"window {args.window}, seed {args.seed}; each event scored then learned.",
            "All four produce identical scores (checked by the benchmark, exact float equality).",
            "Cython times are the best of 3 runs, River's is a single run (it takes seconds).",
            f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, river 0.23.0, "
            f"{platform.processor() or platform.machine()}, one core; 1-minute load average {load:.1f} on "
            f"{os.cpu_count()} cores at the start (a shared machine inflates all times, River's included).",
        ],
    )


if __name__ == "__main__":
    main()
