"""Pipeline-health sampling (vigie.streams.health): what each runtime writes into vigie.pipeline_metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigie.sinks.chdb_sink import ChdbSink
from vigie.streams.health import Counts, HealthReporter, health_reporter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_samples_are_throttled_and_the_final_one_takes_the_rest() -> None:
    seen: list[Counts] = []
    clock = Clock()
    reporter = HealthReporter(seen.append, every_s=10.0, clock=clock)
    assert not reporter.maybe(Counts(events=100))  # not 10 s yet
    clock.now = 10.0
    assert reporter.maybe(Counts(events=200, scores=600, alerts=2, dead_letters=1))
    clock.now = 15.0
    assert not reporter.maybe(Counts(events=300))
    assert reporter.final(Counts(events=350, scores=1000, alerts=3, dead_letters=1))
    assert not reporter.final(Counts(events=350, scores=1000, alerts=3, dead_letters=1)), "nothing new"
    assert seen == [Counts(200, 600, 2, 1), Counts(350, 1000, 3, 1)]


def test_a_failing_store_never_stops_the_runtime(caplog: pytest.LogCaptureFixture) -> None:
    def broken(counts: Counts) -> None:
        raise ConnectionError("store down")

    reporter = HealthReporter(broken, every_s=0.0)
    assert not reporter.maybe(Counts(events=1))
    assert reporter.failures == 1 and reporter.samples == 0
    assert "pipeline-health sample" in caplog.text


def test_samples_land_in_pipeline_metrics_as_deltas(tmp_path: Path) -> None:
    sink = ChdbSink(tmp_path / "ch")
    try:
        reporter = health_reporter(sink, "faust", every_s=0.0)
        assert reporter is not None
        reporter.maybe(Counts(events=10, scores=30, alerts=1))
        reporter.maybe(Counts(events=25, scores=70, alerts=1, dead_letters=2))
        rows = sink.query(
            "SELECT component, events, scores, alerts, dead_letters FROM vigie.pipeline_metrics FINAL ORDER BY at"
        )
    finally:
        sink.close()
    assert [(r["events"], r["scores"], r["alerts"], r["dead_letters"]) for r in rows] == [
        (10, 30, 1, 0),
        (15, 40, 0, 2),
    ]
    assert {r["component"] for r in rows} == {"faust"}


def test_no_reporter_without_a_database() -> None:
    assert health_reporter(None, "faust") is None
    assert health_reporter(object(), "faust") is None
