"""The benchmarks' own logic: every script in bench/ imports, and its docstring examples pass.

The benchmarks run by hand (their figures go to bench/RESULTS.md, not into assertions), so
nothing else would notice a script that no longer imports, or a helper that decides a
verdict ("keeps up", a sustained rate, a thread's group) drifting from what its example says.
"""

from __future__ import annotations

import doctest
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(path.stem for path in BENCH.glob("*.py"))


@pytest.fixture(scope="module", autouse=True)
def bench_on_path() -> Iterator[None]:
    # The scripts import each other (results, reference) as top-level modules, as when run; they
    # leave bench/ on sys.path too. Undo both, so that no other test imports a name from bench/.
    path = list(sys.path)
    sys.path.insert(0, str(BENCH))
    yield
    sys.path[:] = path
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").parent == BENCH:
            del sys.modules[name]


def test_bench_has_scripts() -> None:
    assert {"pipeline", "sink", "flink", "kafka_faust", "results"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_doctests(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None and Path(module.__file__).parent == BENCH
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in bench/{name}.py"
    if ">>>" in Path(module.__file__).read_text():
        assert result.attempted > 0, f"bench/{name}.py has examples that doctest did not find"


@pytest.fixture(scope="module")
def generated_lines() -> list[bytes]:
    from vigie.schemas import encode_event
    from vigie.schemas.generator import GeneratorConfig, generate

    return [encode_event(event) for event, _ in generate(GeneratorConfig(seed=7, duration_hours=1))]


@pytest.mark.parametrize("stand_in", ["pipeline.EncodingSink", "sink.NullSink"])
def test_bench_stand_in_sinks_take_a_runner_stream(stand_in: str, generated_lines: list[bytes]) -> None:
    # The benchmarks time the sinks' encoding through stand-ins that drop each flush: they must
    # follow the sink interface as the runner drives it (flushes, send lanes), or the bench fails.
    from vigie.operators import ScoringPipeline
    from vigie.streams.runner import InProcessRunner

    module_name, class_name = stand_in.split(".")
    sink_class = getattr(importlib.import_module(module_name), class_name)
    sink = sink_class() if class_name == "EncodingSink" else sink_class(5_000)
    summary = InProcessRunner(ScoringPipeline(), sink).run("bench", iter(generated_lines))
    sink.close()
    assert summary.scores > 0
    assert sink.metrics.total_rows_written >= len(generated_lines) + summary.scores
